"""eval: score base and every fine-tuned model with lm-eval custom tasks, through the serving engine, and
turn the per-sample logs into evidence: CIs, paired comparisons, breakdowns, failure cases, gates, quality.md.

Each model is converted to GGUF f16 (llama.cpp's converter), served by llama-server on a free loopback
port, and scored by lm-eval's local-chat-completions with concurrent requests: what is evaluated is what
is deployed. A fidelity check scores a few items of the HF model with lm-eval's `hf` backend and fails the
stage when the two disagree beyond the recipe's tolerance. backend: hf scores the HF folders in process
instead (slow on CPU, for GPU users).
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from runner import models, tasks
from runner.adapters import llama_cpp, lm_eval, sklearn_text
from runner.dataprep.records import sample_split
from runner.quality import eval_analysis as ea
from runner.quality import failure_causes, gates, served_eval
from runner.reports import quality
from runner.reports.fmt import Page
from runner.stage import Context, Result, StageError

SECTIONS = ("task", "eval", "base_model", "seed", "threads", "data")
INPUTS = ("data", "train")
RUNS = ("evals", "runner/kinds")  # read by code run outside our imports (lm-eval, the gateway, by path)
TOOLS = ("ml", "llama")


def fingerprint(recipe: dict) -> str:
    return models.fingerprint(recipe["base_model"])


def model_dir(ctx: Context, name: str):
    if name == "base":
        return models.base_model_dir(ctx.section("base_model"))
    train = ctx.inputs["train"]
    if name not in train.artifacts:
        raise StageError(f"eval.models names '{name}', which the train stage did not produce "
                         f"(trained: {', '.join(sorted(k for k in train.metrics))}; add it to train.variants)")
    return train.path(name)


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def models_of(ctx: Context) -> list[str]:
    """eval.models, or (when empty) base plus every model the train stage produced (tuned, tuned-v2, ...)."""
    return ctx.section("eval")["models"] or ["base"] + [m for m in ctx.inputs["train"].metrics
                                                        if m in ctx.inputs["train"].artifacts]


def plan(ctx: Context, names: list[str]) -> list[dict]:
    """The lm-eval invocations per model: test-split tasks (+ a training-split sample for fine-tuned models)
    with the task's system prompt; the general task without one."""
    cfg, data, task = ctx.section("eval"), ctx.inputs["data"], tasks.of(ctx.recipe)
    tasks_dir = ctx.out / "tasks"
    lm_eval.write_task(task, tasks_dir, data.path("test"), cfg["max_gen_tokens"])
    runs = [{"name": "test", "tasks": [task.name], "system": tasks.system_prompt(ctx.recipe),
             "tuned_tasks": []}]
    if cfg["train_sample"] and any(m != "base" for m in names):
        sample = sample_split(data.path("train"), ctx.out / "train_sample.jsonl", cfg["train_sample"], ctx.seed)
        lm_eval.write_task(task, tasks_dir, sample, cfg["max_gen_tokens"], name=task.train_task)
        runs[0]["tuned_tasks"] = [task.train_task]
    if "ood" in data.artifacts:  # data.split.holdout: scored for every model, reported apart from the test split
        sample = sample_split(data.path("ood"), ctx.out / "ood_sample.jsonl", cfg["ood_sample"] or 10 ** 9,
                                    ctx.seed)
        lm_eval.write_task(task, tasks_dir, sample, cfg["max_gen_tokens"], name=task.ood_task)
        runs[0]["tasks"] = runs[0]["tasks"] + [task.ood_task]
    if cfg["general_task"]:
        lm_eval.write_task(cfg["general_task"], tasks_dir)
        runs.append({"name": "general", "tasks": [cfg["general_task"]], "system": None, "tuned_tasks": []})
    return runs


def tasks_for(name: str, runs: list[dict]) -> list[dict]:
    """The lm-eval invocations for one model: fine-tuned models also score the training-split sample."""
    return [{"name": r["name"], "tasks": r["tasks"] + (r["tuned_tasks"] if name != "base" else []),
             "system": r["system"]} for r in runs]


def score_served(ctx: Context, name: str, hf_dir, out, runs: list[dict]) -> dict:
    cfg = ctx.section("eval")
    t0 = time.time()
    ctx.progress(f"{name}: converting to GGUF f16")
    gguf = llama_cpp.convert(hf_dir, out / "model-f16.gguf", ctx.log(f"convert-{name}.log"))
    timing = {"convert_s": round(time.time() - t0, 1), "model_sha256": sha256(gguf)}
    timing.update(served_eval.score(gguf, name, tasks_for(name, runs), ctx.out / "tasks", out, ctx.log, ctx.progress,
                                    threads=ctx.threads, concurrency=cfg["concurrency"], ctx_size=cfg["ctx_size"],
                                    limit=cfg["limit"], seed=ctx.seed))
    timing["seconds"] = round(time.time() - t0, 1)
    return timing


def score_hf(ctx: Context, name: str, hf_dir, out, runs: list[dict], limit: int, tag: str = "") -> dict:
    t0 = time.time()
    for r in tasks_for(name, runs):
        cmd = lm_eval.command_hf(r["tasks"], ctx.out / "tasks", hf_dir, r["system"], out / "lm_eval" / r["name"],
                                 limit, ctx.seed)
        log = ctx.log(f"lm-eval-hf-{name}{tag}-{r['name']}.log" if tag else f"lm-eval-{name}-{r['name']}.log")
        lm_eval.run(cmd, log, ctx.threads,
                    on_line=lambda l, n=name: ctx.progress(f"{n} (hf{tag}): {l[-80:]}") if "%" in l else None)
    return {"seconds": round(time.time() - t0, 1)}


def collect(ctx: Context, name: str, out, runs: list[dict]) -> dict[str, dict]:
    """task -> {"agg": lm-eval's aggregates, "samples": per-sample records}; empty answers fail loudly, except a
    fine-tuned model's on the general task: that is what total forgetting looks like, measured and reported (the
    base model answering nothing there still fails: then the serving is broken)."""
    got = {}
    general = ctx.section("eval")["general_task"]
    for r in tasks_for(name, runs):
        for task in r["tasks"]:
            log = ctx.log(f"lm-eval-{name}-{r['name']}.log")
            agg, samples = lm_eval.read_results(out / "lm_eval" / r["name"], task, log)
            forgot = name != "base" and task == general
            if samples and not forgot and not any(ea.response(s).strip() for s in samples):
                raise StageError(f"model '{name}' answered every {task} item with empty text; "
                                 f"see {ctx.log(f'llama-server-{name}.log')}", log=log)
            if not samples:
                raise StageError(f"lm-eval logged no samples for model '{name}' on {task}", log=log)
            got[task] = {"agg": agg, "samples": samples}
    return got


def fidelity(ctx: Context, name: str, hf_dir, served: list[dict], runs: list[dict]) -> dict:
    """Score the first N test items of the HF model in process (lm-eval hf) and compare with the served GGUF."""
    fcfg, task = ctx.section("eval")["fidelity"], tasks.of(ctx.recipe)
    out = ctx.out / name / "fidelity"
    test_run = [dict(runs[0], tuned_tasks=[])]
    ctx.progress(f"{name}: fidelity check, {fcfg['samples']} items through lm-eval's hf backend")
    timing = score_hf(ctx, name, hf_dir, out, test_run, fcfg["samples"], tag="-fidelity")
    _, hf_samples = lm_eval.read_results(out / "lm_eval" / "test", task.name,
                                         ctx.log(f"lm-eval-hf-{name}-fidelity-test.log"))
    edges = ctx.section("eval")["length_buckets_chars"]
    hf_rows = {r["doc_id"]: r for r in ea.item_details(hf_samples, task, edges)}
    gg_rows = {r["doc_id"]: r for r in ea.item_details(served, task, edges) if r["doc_id"] in hf_rows}
    pairs = mismatched = same_text = 0
    items = []
    for i, h in hf_rows.items():
        g = gg_rows[i]
        diff = [f for f in h["outcomes"] if (h["outcomes"][f] == "correct") != (g["outcomes"][f] == "correct")]
        pairs += len(h["outcomes"])
        mismatched += len(diff)
        same_text += int(h["prediction"].strip() == g["prediction"].strip())
        items.append({"doc_id": i, "fields_judged_differently": diff, "same_text": h["prediction"].strip() ==
                      g["prediction"].strip(), "hf": h["prediction"], "gguf": g["prediction"]})
    result = {"model": name, "items": len(hf_rows), "field_disagreement": round(mismatched / pairs, 4) if pairs else 0.0,
              "identical_text": same_text, "tolerance": fcfg["max_field_disagreement"], "seconds": timing["seconds"],
              "detail": items}
    (out / "fidelity.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    if result["field_disagreement"] > fcfg["max_field_disagreement"]:
        raise StageError(f"fidelity check failed for '{name}': the served f16 GGUF and the HF model judge "
                         f"{result['field_disagreement']:.1%} of (item, field) pairs differently (tolerance "
                         f"{fcfg['max_field_disagreement']:.0%}); details {out / 'fidelity.json'}")
    return result


def score_baselines(ctx: Context, names: list[str], iters: int, tuned_samples: dict[str, list[dict]]
                    ) -> tuple[dict, dict, dict, dict | None]:
    """The prompting baselines (eval.baselines): the base model's f16 GGUF served again, the test task written
    with k few-shot examples from the training split and/or the task's answer contract as llama-server's
    response_format. With eval.baselines_stop_early, every baseline is first scored on the first `after` test items
    and on the rest only when a gate naming a prompting baseline is not decided there (runner.quality.gates.settled).
    Returns (metrics per baseline, samples per baseline, artifacts, the early-stop record or None)."""
    cfg, data, task = ctx.section("eval"), ctx.inputs["data"], tasks.of(ctx.recipe)
    if not cfg["baselines"]:
        return {}, {}, {}, None
    if cfg["backend"] != "llama-server" or "base" not in names:
        raise StageError("eval.baselines are scored by serving the base model's GGUF: they need eval.backend "
                         f"llama-server and 'base' among the models (backend {cfg['backend']}, models "
                         f"{', '.join(names)})")
    scoring = tasks.scoring(task.name, tuple(ctx.recipe.get("task_paths") or ()))
    contract = task.scorer.response_format(task.spec)
    prepared = []
    for i, b in enumerate(cfg["baselines"]):
        name = b["name"]
        if name in names or name in [p[0]["name"] for p in prepared]:
            raise StageError(f"eval.baselines[{i}].name: '{name}' is already the name of a model or baseline")
        if b["constrained"] and contract is None:
            raise StageError(f"eval.baselines[{i}].constrained: a {task.kind} task has no answer contract to "
                             "constrain decoding to (only extraction and classification do)")
        tasks_dir = ctx.out / "baseline_tasks" / name  # not under tasks/: lm-eval reads include paths recursively
        lm_eval.write_task(task, tasks_dir, data.path("test"), cfg["max_gen_tokens"], shots=b["shots"],
                           shots_file=data.path("train"), response_format=contract if b["constrained"] else None)
        (ctx.out / name).mkdir(parents=True)
        prepared.append((b, tasks_dir))
    n_test = sum(1 for line in data.path("test").read_text().splitlines() if line.strip())
    n_test = min(n_test, cfg["limit"]) if cfg["limit"] else n_test  # the items every model is scored on
    stop = cfg["baselines_stop_early"]
    first = stop["after"] if 0 < stop["after"] < n_test else 0
    parts: dict[str, list] = {}
    seconds: dict[str, float] = {}
    timings: dict[str, dict] = {}

    def score(b: dict, tasks_dir: Path, out: Path, limit: int, samples: dict | None, part: str = "") -> None:
        name = b["name"]
        logs = (lambda n: ctx.log(n.removesuffix(".log") + f"-{part}.log")) if part else ctx.log  # keeps part 1's
        t0 = time.time()
        got = served_eval.score(
            ctx.out / "base" / "model-f16.gguf", name,
            [{"name": "test", "tasks": [task.name], "system": b.get("system_prompt") or tasks.system_prompt(ctx.recipe)}],
            tasks_dir, out,
            logs, ctx.progress, threads=ctx.threads, concurrency=cfg["concurrency"], ctx_size=cfg["ctx_size"],
            limit=limit, seed=ctx.seed, samples=samples)
        timings[name] = served_eval.combine(timings[name], got) if name in timings else got
        seconds[name] = seconds.get(name, 0.0) + time.time() - t0
        parts.setdefault(name, []).append(
            lm_eval.read_results(out / "lm_eval" / "test", task.name, logs(f"lm-eval-{name}-test.log")))

    for b, tasks_dir in prepared:
        score(b, tasks_dir, ctx.out / b["name"], first or cfg["limit"], None)
    early = None
    if first:
        level = stop["level"]
        interim = {b: {m: {task.name: ea.compare(task.name, scoring, got[0][1], ea.restrict(ts, got[0][1]), iters,
                                                 ctx.seed, level)} for m, ts in tuned_samples.items()}
                   for b, got in parts.items()}
        done, checks = gates.settled(cfg["gates"], interim, list(parts), list(tuned_samples), task.name, level)
        early = {"after": first, "of": n_test, "level": level, "stopped": done, "checks": checks}
        ctx.progress(f"baselines: {'every gate decided' if done else 'a gate undecided'} after {first} of {n_test} "
                     f"items at {level:.1%}" + ("" if done else "; scoring the rest"))
        if not done:
            for b, tasks_dir in prepared:
                score(b, tasks_dir, ctx.out / b["name"] / "rest", 0, {task.name: list(range(first, n_test))},
                      "rest")
    got, samples_of, artifacts = {}, {}, {}
    for b, _ in prepared:
        name = b["name"]
        samples = sorted((s for _, part in parts[name] for s in part), key=lambda s: s["doc_id"])
        agg = parts[name][0][0] if len(parts[name]) == 1 else {}  # two parts: lm-eval's aggregate is of one of them
        (ctx.out / name / f"samples_{task.name}.jsonl").write_text(
            "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
        artifacts[f"{name}-samples-{task.name}"] = f"{name}/samples_{task.name}.jsonl"
        ci = ea.summarize(task.name, scoring, samples, agg, iters, ctx.seed)
        got[name] = {"shots": b["shots"], "constrained": b["constrained"], "own_prompt": bool(b.get("system_prompt")),
                     "seconds": round(seconds[name], 1),
                     "tasks": {task.name: {k: v["value"] for k, v in ci.items()} | {"samples": len(samples), "ci": ci}},
                     **timings[name]}
        samples_of[name] = samples
    return got, samples_of, artifacts, early


def score_classical(ctx: Context, names: list[str]) -> tuple[dict, list[dict]]:
    """eval.classical_baseline: scikit-learn's TF-IDF + logistic regression (runner/adapters/sklearn_text.py)
    fitted on the training split (C chosen on the eval split), its test answers written as lm-eval-like samples
    (doc_id = the item's position in the test split, the kind's per-item metrics) so that the same statistics
    pair it with every model. Returns (its metrics, its samples)."""
    cfg, data, task = ctx.section("eval")["classical_baseline"], ctx.inputs["data"], tasks.of(ctx.recipe)
    if task.kind != "classification":
        raise StageError(f"eval.classical_baseline: a text classifier needs a classification task; "
                         f"{task.name} is {task.kind}")
    if cfg["name"] in names or cfg["name"] in [b["name"] for b in ctx.section("eval")["baselines"]]:
        raise StageError(f"eval.classical_baseline.name: '{cfg['name']}' is already the name of a model or baseline")

    def rows(split: str) -> list[dict]:
        return [json.loads(x) for x in data.path(split).read_text().splitlines() if x.strip()] \
            if split in data.artifacts else []

    train, dev, test = rows("train"), rows("eval"), rows("test")
    labels = lambda rs: [task.scorer.parse_label(task.spec, task.scorer.gold_of(r)) for r in rs]  # noqa: E731
    ctx.progress(f"{cfg['name']}: fitting on {len(train)} training items, C from {cfg['C']} on {len(dev)} eval items")
    got = sklearn_text.run(([r["document"] for r in train], labels(train)),
                           ([r["document"] for r in dev], labels(dev)), [r["document"] for r in test],
                           cfg, ctx.seed, ctx.out / cfg["name"], ctx.log(f"{cfg['name']}.log"), ctx.threads)
    samples = [{"doc_id": i, "doc": r, "target": task.scorer.gold_of(r), "filtered_resps": [p],
                **task.scorer.score(task.spec, r, p)} for i, (r, p) in enumerate(zip(test, got["predictions"]))]
    limit = ctx.section("eval")["limit"]
    samples = samples[:limit] if limit else samples   # the items lm-eval scored the models on
    (ctx.out / cfg["name"] / "samples.jsonl").write_text(
        "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
    ci = ea.summarize(task.name, tasks.scoring(task.name, tuple(ctx.recipe.get("task_paths") or ())), samples, {},
                      ctx.section("eval")["bootstrap_iters"], ctx.seed)
    settings = {k: cfg[k] for k in ("analyzer", "ngram_range", "max_features", "sublinear_tf", "class_weight")}
    return ({"name": cfg["name"], "tool": "scikit-learn TfidfVectorizer + LogisticRegression", "settings": settings,
             "C": got["C"], "C_grid": cfg["C"], "dev_accuracy": got["dev_accuracy"], "features": got["features"],
             "train_items": len(train), "seconds": got["seconds"],
             "tasks": {task.name: {k: v["value"] for k, v in ci.items()} | {"samples": len(samples), "ci": ci}}},
            samples)


def strongest(metrics: dict, task: tasks.Task, base_on_their_items: float | None = None) -> dict:
    """The strongest prompting baseline (base included) by the task's headline metric on the test split; when the
    prompting baselines stopped early, base's value on their items (`base_on_their_items`) is the one compared."""
    scored = {"base": metrics["models"]["base"], **metrics["baselines"]}
    vals = {n: d["tasks"][task.name][task.headline] for n, d in scored.items()
            if d["tasks"].get(task.name, {}).get(task.headline) is not None}
    if base_on_their_items is not None:
        vals["base"] = base_on_their_items
    name = max(vals, key=vals.get) if vals else "base"
    return {"name": name, "metric": task.headline, "value": vals.get(name)}


def pii_in_outputs(rows: list[dict], task: tasks.Task) -> dict:
    """PII-like spans (e-mail, phone, IBAN, card, secrets) in a model's answers, copied from the document or
    not. When the answer parses, only its string values are scanned: amounts are numbers by the task schema,
    and a phone recognizer reads "16890.21" as a phone number."""
    from runner.governance import pii
    found = {"answers_with_pii": 0, "copied_from_document": 0, "not_in_document": 0, "by_type": {}, "examples": []}
    for r in rows:
        texts = task.scorer.answer_strings(task.spec, r["prediction"])
        hits = [h for t in texts for h in pii.scan(t)]
        if not hits:
            continue
        found["answers_with_pii"] += 1
        for h in hits:
            found["by_type"][h.type] = found["by_type"].get(h.type, 0) + 1
            key = "copied_from_document" if h.value in r["document"] else "not_in_document"
            found[key] += 1
            if len(found["examples"]) < 5:  # masked: a report must not spread what it warns about
                found["examples"].append({"id": r["id"], "type": h.type, "where": key,
                                          "masked": h.value[:2] + "…" + f"({len(h.value)} chars)"})
    return found


def run(ctx: Context) -> Result:
    cfg = ctx.section("eval")
    task = tasks.of(ctx.recipe)
    paths = tuple(ctx.recipe.get("task_paths") or ())
    main, train_task = task.name, task.train_task
    iters, seed = cfg["bootstrap_iters"], ctx.seed
    names = models_of(ctx)
    runs = plan(ctx, names)
    tuned = [m for m in names if m != "base"]
    baseline = "base" if "base" in names else None
    results: dict[str, dict] = {}
    metrics: dict = {"task": task.describe(), "general_task": cfg["general_task"], "backend": cfg["backend"],
                     "models": {}, "dataset_version":
                     ctx.inputs["data"].metrics.get("dataset_version")}
    artifacts: dict = {"tasks": "tasks"}
    for name in names:
        hf_dir = model_dir(ctx, name)
        out = ctx.out / name
        out.mkdir(parents=True)
        if cfg["backend"] == "llama-server":
            timing = score_served(ctx, name, hf_dir, out, runs)
            artifacts[f"{name}-f16"] = f"{name}/model-f16.gguf"
        else:
            timing = score_hf(ctx, name, hf_dir, out, runs, cfg["limit"])
        results[name] = collect(ctx, name, out, runs)
        scored = {}
        for t, got in results[name].items():
            (out / f"samples_{t}.jsonl").write_text(
                "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in got["samples"]))
            artifacts[f"{name}-samples-{t}"] = f"{name}/samples_{t}.jsonl"
            ci = ea.summarize(t, tasks.scoring(t, paths), got["samples"], got["agg"], iters, seed)
            scored[t] = {k: v["value"] for k, v in ci.items()} | {"samples": len(got["samples"]), "ci": ci,
                                                                  "empty_answers": sum(not ea.response(x).strip()
                                                                                       for x in got["samples"])}
        metrics["models"][name] = {"tasks": scored, **timing}

    # prompting baselines (few-shot, constrained decoding) on the same test items
    metrics["baselines"], baseline_samples, more, early = score_baselines(
        ctx, names, iters, {m: results[m][main]["samples"] for m in tuned if main in results[m]})
    artifacts.update(more)
    if early:
        metrics["baselines_stop_early"] = early

    classical = None
    if cfg["classical_baseline"]["enabled"]:   # never a gate, never "strongest": reported beside them
        metrics["classical_baseline"], classical = score_classical(ctx, names)
        artifacts["classical-samples"] = f"{cfg['classical_baseline']['name']}/samples.jsonl"
        metrics["classical_comparisons"] = {
            m: ea.compare(main, tasks.scoring(main, paths), ea.restrict(classical, results[m][main]["samples"]),
                          results[m][main]["samples"], iters, seed) for m in tuned if main in results[m]}

    # paired comparisons against the baseline, per task; against every prompting baseline on the recipe's task
    comparisons, vs = {}, {}
    if baseline:
        for m in tuned:
            comparisons[m] = {t: ea.compare(t, tasks.scoring(t, paths), results[baseline][t]["samples"],
                                            results[m][t]["samples"], iters, seed)
                              for t in results[baseline] if t in results[m]}
        vs = {"base": comparisons}
        for b, samples in baseline_samples.items():  # on the baseline's items (all, or the first look's)
            vs[b] = {m: {main: ea.compare(main, tasks.scoring(main, paths), samples,
                                          ea.restrict(results[m][main]["samples"], samples), iters, seed)}
                     for m in tuned if main in results[m]}
        base_there = None
        if early and early["stopped"] and main in results[baseline]:
            there = ea.restrict(results[baseline][main]["samples"], next(iter(baseline_samples.values())))
            base_there = ea.metric_values(there, task.headline,
                                          tasks.scoring(main, paths).metrics[task.headline]).point()
        metrics["strongest_baseline"] = strongest(metrics, task, base_there)
        metrics["baseline_comparisons"] = {b: {m: c[main] for m, c in per.items() if main in c}
                                           for b, per in vs.items()}
    metrics["comparisons"] = comparisons

    # the recipe's task: per-item detail, breakdowns by field and slice, failure cases, PII in outputs, train/test gap
    edges = cfg["length_buckets_chars"]
    details = {m: ea.item_details(results[m][main]["samples"], task, edges) for m in names if main in results[m]}
    baseline_details = {b: ea.item_details(s, task, edges) for b, s in baseline_samples.items()}
    analysis = {"breakdowns": ea.breakdowns(details, baseline or "", iters, seed, task) if details else {},
                "failures": {}, "pii": {m: pii_in_outputs(rows, task) for m, rows in details.items()}, "gap": {}}
    if details:
        pairs = [(m, b) for m in tuned for b in dict.fromkeys([baseline, metrics.get("strongest_baseline", {}).get("name")])
                 if b]
        train_rows = [json.loads(x) for x in ctx.inputs["data"].path("train").read_text().splitlines() if x.strip()]
        analysis["causes"] = failure_causes.analyze({**details, **baseline_details}, task.scorer.CAUSES, task.slices,
                                                    train_rows, pairs, tuned[0] if tuned else None, iters, seed,
                                                    cfg["cause_examples"])
    if classical is not None:   # per slice (language, ...) and per class: every model against the classical one
        cname = cfg["classical_baseline"]["name"]
        crows = ea.item_details(classical, task, edges)
        analysis["classical"] = {"name": cname, "breakdowns": ea.breakdowns(
            {cname: crows, **{m: details[m] for m in names if m in details}}, cname, iters, seed, task)}
    if task.kind == "classification":
        analysis["confusion"] = {m: ea.confusion(rows, task.spec["labels"], task) for m, rows in details.items()}
        if classical is not None:
            analysis["confusion"][cfg["classical_baseline"]["name"]] = ea.confusion(crows, task.spec["labels"], task)
    for m in tuned:
        if m in details:
            counts, cases = ea.failure_cases(details[m], details.get(baseline), task, cfg["failure_cases"])
            analysis["failures"][m] = {"counts": counts, "cases": cases}
        tt = metrics["models"][m]["tasks"]
        if train_task in tt and main in tt:
            analysis["gap"][m] = {k: {"train": tt[train_task]["ci"][k], "test": tt[main]["ci"][k]}
                                  for k in task.scorer.KEY_METRICS}

    # fidelity: served GGUF vs HF model
    metrics["fidelity"] = {}
    if cfg["backend"] == "llama-server" and cfg["fidelity"]["samples"]:
        for m in cfg["fidelity"]["models"]:
            if m in names:
                metrics["fidelity"][m] = {k: v for k, v in fidelity(ctx, m, model_dir(ctx, m),
                                          results[m][main]["samples"], runs).items() if k != "detail"}
                artifacts[f"{m}-fidelity"] = f"{m}/fidelity/fidelity.json"

    # gates
    verdicts = []
    if cfg["gates"]:
        if not baseline:
            raise StageError("eval.gates compare against a baseline, but eval.models has no 'base'")
        unit = task.scorer.UNIT or ""
        named = {"strongest": metrics["strongest_baseline"]["name"]}
        units = {"base": analysis["breakdowns"].get(unit, {})}
        for g in cfg["gates"]:
            b = named.get(g["baseline"], g["baseline"])
            if g.get("per_field") and b not in units and b in baseline_details:
                units[b] = ea.breakdowns({b: baseline_details[b], **{m: details[m] for m in tuned}}, b, iters, seed,
                                         task).get(unit, {})
        verdicts = gates.judge(cfg["gates"], vs, units, tuned, main, named)
    metrics["gates"] = verdicts
    # llama-server batches concurrent requests across its slots and its kernels are not batch-invariant, so
    # greedy answers are bit-exact from run to run only with one slot (llama.cpp issues #6950, #7052)
    metrics["bit_reproducible"] = cfg["backend"] != "llama-server" or cfg["concurrency"] == 1
    (ctx.out / "analysis.json").write_text(json.dumps(analysis, indent=1, ensure_ascii=False, default=str))
    artifacts["analysis"] = "analysis.json"
    written = quality.write(Page(ctx.out, metrics, analysis, ctx.recipe))
    artifacts.update(written)

    notes = []
    for m, d in metrics["models"].items():
        t = d["tasks"].get(main)
        if t and t.get(task.headline) is not None:
            notes.append(f"{m}: {task.headline} {t[task.headline]:.3f}")
    failed = [v for v in verdicts if not v["passed"]]
    if failed:
        notes += [f"gate failed: {v['model']} {v['what']}: {'; '.join(v['reasons'])}" for v in failed]
        metrics["gate_summary"] = "eval gates failed: " + " | ".join(
            f"{v['model']} {v['what']}: {'; '.join(v['reasons'])}" for v in failed)
        return Result(metrics=metrics, artifacts=artifacts, status="gated", notes=notes)
    return Result(metrics=metrics, artifacts=artifacts, notes=notes)
