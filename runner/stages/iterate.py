"""iterate: automated iteration from failures (tuned-v2). Off unless `iterate.enabled` (`just iterate RECIPE`).

1. Pool: more records from the recipe's generator, past its corpus, cleaned by the recipe's data policy, with
   held-out slices and near-duplicates of eval/test/ood records dropped (runner/dataprep/pool.py).
2. Mine: the tuned model (its f16 GGUF, served by llama-server, scored by lm-eval as in the eval stage) answers
   the pool; the items it gets wrong are chosen so that every failure cause it shows is represented
   (runner/quality/mining.py). iterate.targeted adds fresh generated records whose gold matches a declared
   pattern (the one behind a cause the failure analysis named, e.g. a document with no subtotal).
3. Train `iterate.name` (tuned-v2) from the same base with Axolotl on the training split plus the mined items
   (`iterate.repeat` times each), tuned's hyperparameters unless `iterate.train` overrides some.
4. Score base, tuned and tuned-v2 side by side on the same test items (and the ood split, and the forgetting
   check for the two fine-tuned models), pair them, count failure causes per model, judge `iterate.gates`
   (tuned-v2 against tuned or base), and keep tuned-v2 only when every gate passes. iteration.md shows it.
"""
from __future__ import annotations

import json
import time

from tokenizers import Tokenizer

from runner import models, tasks, training
from runner.adapters import axolotl, llama_cpp, lm_eval
from runner.dataprep import pool as pool_mod
from runner.dataprep import records
from runner.quality import eval_analysis as ea
from runner.quality import failure_causes, gates, mining, served_eval
from runner.reports import iteration as report
from runner.reports.fmt import Page
from runner.stage import Context, Result, StageError

SECTIONS = ("iterate", "task", "data", "train", "eval", "base_model", "seed", "threads")
INPUTS = ("data", "train")
RUNS = ("evals", "runner/kinds")
TOOLS = ("core", "ml", "llama")


def fingerprint(recipe: dict) -> str:
    return models.fingerprint(recipe["base_model"])


def clean(ctx: Context, task: tasks.Task, raw: list[dict]) -> tuple[list[dict], dict]:
    """Generated records through the data section's policy, away from the eval, test and ood records (pool.clean)."""
    data = ctx.inputs["data"]
    tok = Tokenizer.from_file(str(models.base_model_dir(ctx.section("base_model")) / "tokenizer.json"))
    held = [json.loads(x) for split in ("eval", "test", "ood") if split in data.artifacts
            for x in data.path(split).read_text().splitlines() if x.strip()]
    system = tasks.system_prompt(ctx.recipe)
    return pool_mod.clean(
        raw, ctx.section("data"), task, to_chat=lambda r: records.to_chat(r, system, task),
        count_tokens=lambda c: sum(len(tok.encode(m["content"]).ids) + 4 for m in c["messages"]), held_out=held)


def build_pool(ctx: Context, task: tasks.Task) -> tuple[list[dict], dict]:
    cfg, data_cfg = ctx.section("iterate"), ctx.section("data")
    ctx.progress(f"pool: generating {cfg['pool']} records")
    raw = pool_mod.generate(data_cfg, cfg["pool"])
    ctx.progress(f"pool: cleaning {len(raw)} records (the data section's policy)")
    kept, removed = clean(ctx, task, raw)
    if not kept:
        raise StageError(f"iterate.pool: none of the {len(raw)} pool records survived cleaning ({removed})")
    return kept, {"generated": len(raw), "removed": removed, "kept": len(kept)}


def build_targeted(ctx: Context, task: tasks.Task) -> tuple[list[dict], list[dict]]:
    """iterate.targeted: fresh generated records (after the pool) whose gold matches each entry's `where`."""
    return pool_mod.targeted(ctx.section("data"), ctx.section("iterate")["targeted"], task, ctx.section("iterate")["pool"],
                             lambda raw: clean(ctx, task, raw), "iterate.targeted", ctx.progress)


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))


def fit(ctx: Context, name: str, train_file, hp: dict, passthrough: dict) -> dict:
    """Axolotl preprocess, train and merge of one model, as the train stage does it; returns its summary."""
    section, out = ctx.section("train"), ctx.out / name
    f = training.fit(name, hp, passthrough, base_dir=models.base_model_dir(ctx.section("base_model")),
                     train_file=train_file, eval_rows=ctx.inputs["data"].path("eval").read_text().splitlines(),
                     out=out, seed=ctx.seed, section=section, logs=ctx.log, progress=ctx.progress, threads=ctx.threads)
    if f.check == "failed":
        raise StageError(f"training '{name}' failed: {'; '.join(f.findings)}", log=f.log)
    training.merge(name, f, out, ctx.log, ctx.progress, ctx.threads)
    return training.summary(hp, f, section)


def score(ctx: Context, name: str, hf_dir, runs: list[dict], keep_gguf: bool = False) -> tuple[dict, dict, dict]:
    """Serve one model's f16 GGUF and run lm-eval on `runs`; (timing, task -> samples, task -> lm-eval's
    aggregates). keep_gguf: leave the f16 GGUF in place (the iterated model's, for the quantize stage)."""
    cfg, out = ctx.section("eval"), ctx.out / name
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    ctx.progress(f"{name}: converting to GGUF f16")
    gguf = llama_cpp.convert(hf_dir, out / "model-f16.gguf", ctx.log(f"convert-{name}.log"))
    timing = served_eval.score(gguf, name, runs, ctx.out / "tasks", out, ctx.log, ctx.progress, threads=ctx.threads,
                               concurrency=cfg["concurrency"], ctx_size=cfg["ctx_size"], limit=cfg["limit"],
                               seed=ctx.seed)
    got, aggs = {}, {}
    for r in runs:
        for t in r["tasks"]:
            aggs[t], samples = lm_eval.read_results(out / "lm_eval" / r["name"], t, ctx.log(f"lm-eval-{name}-{r['name']}.log"))
            if not samples:
                raise StageError(f"lm-eval logged no samples for model '{name}' on {t}")
            got[t] = samples
            write_jsonl(out / f"samples_{t}.jsonl", samples)
    if not keep_gguf:
        (out / "model-f16.gguf").unlink()  # 270 MB per model; the train stage's merged folder is the model
    return {**timing, "seconds": round(time.time() - t0, 1)}, got, aggs


def model_hparams(ctx: Context) -> tuple[dict, dict]:
    """tuned's hyperparameters and Axolotl passthrough, with iterate.train applied."""
    hp, passthrough = training.variants(ctx.section("train"))["tuned"]
    over = dict(ctx.section("iterate")["train"])
    passthrough = axolotl.deep_merge(passthrough, over.pop("axolotl", {}))
    unknown = sorted(set(over) - set(training.HYPER_KEYS))
    if unknown:
        raise StageError(f"iterate.train: {', '.join(unknown)} is not a train key "
                         f"(expected some of: {', '.join(training.HYPER_KEYS)}, axolotl)")
    return axolotl.deep_merge(hp, over), passthrough


def run(ctx: Context) -> Result:
    cfg = ctx.section("iterate")
    if not cfg["enabled"]:
        return Result(metrics={"enabled": False}, notes=["off (`just iterate RECIPE` runs it)"])
    ecfg, task, data, train = ctx.section("eval"), tasks.of(ctx.recipe), ctx.inputs["data"], ctx.inputs["train"]
    name, paths = cfg["name"], tuple(ctx.recipe.get("task_paths") or ())
    if name in train.artifacts or name in ("base", "tuned"):
        raise StageError(f"iterate.name: '{name}' is already a model of this recipe (train.variants); name the "
                         "iterated model otherwise")
    if "tuned" not in train.artifacts:
        raise StageError("iterate: the train stage produced no 'tuned' model to iterate on")
    bad = [g.get("baseline", "base") for g in cfg["gates"] if g.get("baseline", "base") not in ("base", "tuned")]
    if bad:
        raise StageError(f"iterate.gates: baseline '{bad[0]}' is not one of base, tuned")
    hp, passthrough = model_hparams(ctx)
    t_start = time.time()
    main, ood = task.name, task.ood_task
    pool_task = task.train_task  # the pool is scored as training-like items (scored_as maps it to the task)
    system = tasks.system_prompt(ctx.recipe)

    # 1. the pool
    pool, pool_counts = build_pool(ctx, task)
    write_jsonl(ctx.out / "pool.jsonl", pool)

    # the lm-eval tasks: test, ood (a sample, as the eval stage takes it), the pool, the forgetting check
    tasks_dir = ctx.out / "tasks"
    lm_eval.write_task(task, tasks_dir, data.path("test"), ecfg["max_gen_tokens"])
    lm_eval.write_task(task, tasks_dir, ctx.out / "pool.jsonl", ecfg["max_gen_tokens"], name=pool_task)
    judged = [main]
    if "ood" in data.artifacts:
        sample = records.sample_split(data.path("ood"), ctx.out / "ood_sample.jsonl", ecfg["ood_sample"] or 10 ** 9,
                                         ctx.seed)  # the eval stage's sample: the same items
        lm_eval.write_task(task, tasks_dir, sample, ecfg["max_gen_tokens"], name=ood)
        judged.append(ood)
    general = ecfg["general_task"]
    if general:
        lm_eval.write_task(general, tasks_dir)

    def runs(extra: list[str], with_general: bool) -> list[dict]:
        r = [{"name": "test", "tasks": judged + extra, "system": system}]
        return r + ([{"name": "general", "tasks": [general], "system": None}] if general and with_general else [])

    # 2. mine: tuned on the pool (and on everything judged, side by side with the others)
    timings, samples, aggs = {}, {}, {}
    timings["tuned"], samples["tuned"], aggs["tuned"] = score(ctx, "tuned", train.path("tuned"), runs([pool_task], True))
    edges = ecfg["length_buckets_chars"]
    pool_rows = ea.item_details(samples["tuned"][pool_task], task, edges)
    chosen, by_cause = mining.select([r for r in pool_rows if r["causes"]], cfg["max_added"])
    if not chosen:
        raise StageError(f"iterate: tuned answered all {len(pool_rows)} pool items without a failure cause, so there "
                         "is nothing to mine (raise iterate.pool to look further)")
    chosen_ids = {r["id"] for r in chosen}
    mined = [c for c in pool if c["id"] in chosen_ids]
    write_jsonl(ctx.out / "mined.jsonl", mined)
    aimed, aimed_counts = build_targeted(ctx, task)
    write_jsonl(ctx.out / "targeted.jsonl", aimed)
    train_rows = [json.loads(x) for x in data.path("train").read_text().splitlines() if x.strip()]
    train_file = ctx.out / "train_v2.jsonl"
    write_jsonl(train_file, train_rows + mined * cfg["repeat"] + aimed)

    # 3. train tuned-v2 from the same base
    (ctx.out / name).mkdir(parents=True)
    trained = fit(ctx, name, train_file, hp, passthrough)

    # 4. score base and tuned-v2 on the same items; pair; causes; gates
    timings["base"], samples["base"], aggs["base"] = score(ctx, "base", models.base_model_dir(ctx.section("base_model")),
                                             runs([], False))
    timings[name], samples[name], aggs[name] = score(ctx, name, ctx.out / name / "merged", runs([], True),
                                                     keep_gguf=True)
    iters, seed = ecfg["bootstrap_iters"], ctx.seed
    scored = {m: {t: ea.summarize(t, tasks.scoring(t, paths), s, aggs[m][t], iters, seed) for t, s in got.items()}
              for m, got in samples.items()}
    cmp = {}
    for a, b in (("base", "tuned"), ("base", name), ("tuned", name)):
        cmp[f"{b}-vs-{a}"] = {t: ea.compare(t, tasks.scoring(t, paths), samples[a][t], samples[b][t], iters, seed)
                              for t in samples[a] if t in samples[b] and t != pool_task}
    details = {m: ea.item_details(samples[m][main], task, edges) for m in ("base", "tuned", name)}
    causes = failure_causes.analyze(details, task.scorer.CAUSES, task.slices, train_rows,
                                    [(name, "tuned"), ("tuned", "base"), (name, "base")], name, iters, seed,
                                    ecfg["cause_examples"])
    ood_causes = None
    if ood in judged:
        ood_details = {m: ea.item_details(samples[m][ood], task, edges) for m in ("tuned", name)}
        ood_causes = failure_causes.analyze(ood_details, task.scorer.CAUSES, task.slices, train_rows,
                                            [(name, "tuned")], name, iters, seed, 0)
    unit = task.scorer.UNIT or ""
    fields = {}
    if unit:
        for against in ("base", "tuned"):
            fields[against] = ea.breakdowns({against: details[against], name: details[name]}, against, iters, seed,
                                            task).get(unit, {})
    gate_list = cfg["gates"] or [{"metric": task.headline, "baseline": "tuned", "min_gain": 0.0, "significant": True}]
    vs = {"base": {name: cmp[f"{name}-vs-base"]}, "tuned": {name: cmp[f"{name}-vs-tuned"]}}
    verdicts = gates.judge(gate_list, vs, fields, [name], main)
    kept = name if verdicts and all(v["passed"] for v in verdicts) else "tuned"
    metrics = {
        "enabled": True, "name": name, "kept": kept, "task": task.describe(), "judged_tasks": judged,
        "general_task": general, "pool": pool_counts, "mined": {"items": len(mined), "repeat": cfg["repeat"],
                                                                "pool_items_wrong": sum(bool(r["causes"]) for r in pool_rows),
                                                                "pool_items": len(pool_rows), "by_cause": by_cause},
        "targeted": aimed_counts,
        "train_records": {"tuned": len(train_rows), name: len(train_rows) + len(mined) * cfg["repeat"] + len(aimed)},
        "training": trained, "scores": scored, "comparisons": cmp, "gates": verdicts,
        "gates_declared": gate_list, "timings": timings, "seconds": round(time.time() - t_start, 1),
        "dataset_version": data.metrics.get("dataset_version"),
    }
    analysis = {"causes": causes, "ood_causes": ood_causes, "fields": fields,
                "curves": {"tuned": _curve(train.dir / train.artifacts.get("tuned-curve", "-")),
                           name: _curve(ctx.out / name / "curve.jsonl")}}
    (ctx.out / "analysis.json").write_text(json.dumps(analysis, indent=1, ensure_ascii=False, default=str))
    written = report.write(Page(ctx.out, metrics, analysis, ctx.recipe))
    # what the quantize stage needs to take the iterated model on (quantize.model: kept, or its name): its f16 GGUF
    # and its answers on the test items, to pair every quant's answers with
    artifacts = {"pool": "pool.jsonl", "mined": "mined.jsonl", "targeted": "targeted.jsonl", "train_v2": train_file.name, name: f"{name}/merged",
                 f"{name}-f16": f"{name}/model-f16.gguf", f"{name}-samples-{main}": f"{name}/samples_{main}.jsonl",
                 f"{name}-adapter": f"{name}/adapter", f"{name}-config": f"{name}/axolotl.yaml",
                 f"{name}-curve": f"{name}/curve.jsonl", "analysis": "analysis.json", **written}
    head = cmp[f"{name}-vs-tuned"].get(main, {}).get(task.headline, {})
    notes = [f"mined {len(mined)} of {len(pool)} pool items", f"{name} - tuned {task.headline} {head.get('diff', 0):+.3f}",
             f"kept: {kept}"]
    return Result(metrics=metrics, artifacts=artifacts, notes=notes)


def _curve(path) -> list[dict]:
    try:
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    except OSError:
        return []
