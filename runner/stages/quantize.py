"""quantize: llama-quantize the tuned model's f16 GGUF (from the eval stage; or the iterate stage's model, see
`source`) to each recipe type, score every quant on the eval stage's test task served the same way (same prompts,
same items), gate each quant on its paired drop against f16 (non-inferiority of its per-field decisions within a
margin), measure size / bits per weight / load time / llama-bench speed / peak RSS, and pick the smallest passing
quant as the deployment model. The base model is quantized too: the fallback model.
"""
from __future__ import annotations

import json
import time

from runner import tasks
from runner.adapters import llama_cpp, lm_eval
from runner.quality import eval_analysis as ea
from runner.quality import served_eval, stats
from runner.reports import quantization as report
from runner.reports.fmt import Page
from runner.stage import Context, Result, StageError

SECTIONS = ("task", "quantize", "threads", "seed", "eval", "data")
INPUTS = ("data", "eval", "iterate")
RUNS = ("evals", "runner/kinds")  # read by code run outside our imports (lm-eval, the gateway, by path)
TOOLS = ("llama", "ml")


def calibration_text(train_file, out):
    """The training split as plain text (document, then the answer), the calibration data for llama-imatrix."""
    rows = [json.loads(x) for x in train_file.read_text().splitlines() if x.strip()]
    out.write_text("\n\n".join(m["content"] for r in rows for m in r["messages"] if m["role"] != "system") + "\n")
    return out


RERUN = report.RERUN  # f16 served again


def served_speed(timing: dict, n: int, concurrency: int) -> dict:
    """End-to-end task speed on the served engine: documents per second over the scoring pass (lm-eval's start
    included), and the engine's mean seconds per document (prompt + generation, from llama-server's counters)."""
    busy = (timing.get("prompt_seconds_total") or 0) + (timing.get("tokens_predicted_seconds_total") or 0)
    wall = timing.get("score_test_s")
    return {"docs_per_s": round(n / wall, 3) if wall else None, "concurrency": concurrency,
            "engine_s_per_doc": round(busy / n, 3) if busy and n else None,
            "prompt_s_per_doc": round(timing["prompt_seconds_total"] / n, 3) if timing.get("prompt_seconds_total") and n
            else None}


def unit_right(rows: list[dict]) -> tuple[list[int], list[int]]:
    """Per item: how many of its unit decisions (fields, the label, the reference) are right, and how many."""
    return ([sum(o == "correct" for o in r["outcomes"].values()) for r in rows],
            [len(r["outcomes"]) for r in rows])


def gate(ref_rows: list[dict], rows: list[dict], cmp: dict, gate_cfg: dict, iters: int, seed: int) -> dict:
    """Non-inferiority of the quant's unit decisions against f16 (same items), plus the optional metric checks:
    each listed metric's drop (f16 - quant) must have a 95% CI upper bound <= max_drop, and no metric listed in
    no_significant_drop may be significantly worse (the 95% CI of quant - f16 wholly below zero)."""
    ref, units = unit_right(ref_rows)
    new, _ = unit_right(rows)
    ni = stats.non_inferiority(ref, new, units, gate_cfg["margin"], gate_cfg["alpha"], gate_cfg["power"], iters, seed)
    reasons = [] if ni["passed"] else [ni["why"]]
    checks = {}
    for m in gate_cfg["metrics"]:
        c = cmp.get(m)
        if not c or c.get("diff") is None:
            reasons.append(f"{m}: no paired result")
            continue
        if c.get("low") is None:
            reasons.append(f"{m}: {c.get('n')} item(s) give no interval to judge the drop by")
            continue
        drop, drop_high = -c["diff"], -c["low"]
        checks[m] = {"drop": round(drop, 4) + 0.0, "drop_ci_high": round(drop_high, 4) + 0.0}
        if drop_high > gate_cfg["max_drop"]:
            reasons.append(f"{m}: drop {drop:+.4f}, CI upper bound {drop_high:+.4f} > allowed {gate_cfg['max_drop']}")
    worse = {}
    for m in gate_cfg.get("no_significant_drop", []):
        c = cmp.get(m)
        if not c or c.get("diff") is None or c.get("high") is None:
            reasons.append(f"{m}: no paired interval to judge it by")
            continue
        if c["high"] < 0:
            worse[m] = {"diff": round(c["diff"], 4) + 0.0, "low": round(c["low"], 4) + 0.0,
                        "high": round(c["high"], 4) + 0.0}
            reasons.append(f"{m}: significantly worse than f16, {c['diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]")
    return {"passed": not reasons, "reasons": reasons, "checks": checks, "worse": worse, "non_inferiority": ni}


def source(model: str, ev, it) -> tuple[str, object]:
    """The model to quantize and the stage output that holds its f16 GGUF and its test answers. `model` is
    quantize.model: a model the eval stage served ('tuned', a train variant), the iterate stage's model by its
    name, or 'kept': the one the iterate stage kept (tuned when the loop is off or its model failed its gates)."""
    if model == "kept":
        model = it.metrics.get("kept", "tuned") if it.metrics.get("enabled") else "tuned"
    for out in (ev, it):
        if f"{model}-f16" in out.artifacts:
            return model, out
    iterated = it.metrics.get("name") if it.metrics.get("enabled") else None
    raise StageError(f"quantize.model '{model}' has no f16 GGUF from the eval stage"
                     + (f" nor the iterate stage (its model is '{iterated}')" if iterated else "")
                     + "; add it to eval.models (with eval.backend: llama-server), or name the iterate stage's model "
                       "(or 'kept') with iterate.enabled: true")


def run(ctx: Context) -> Result:
    cfg, ecfg = ctx.section("quantize"), ctx.section("eval")
    task = tasks.of(ctx.recipe)
    scoring = tasks.scoring(task.name, tuple(ctx.recipe.get("task_paths") or ()))
    ev = ctx.inputs["eval"]
    for key in ("metrics", "no_significant_drop"):
        unknown = [m for m in cfg["gate"][key] if m not in scoring.metrics]
        if unknown:
            raise StageError(f"quantize.gate.{key}: {', '.join(unknown)} is not a metric of task '{task.name}' "
                             f"({task.kind}: {', '.join(scoring.metrics)})")
    model, src = source(cfg["model"], ev, ctx.inputs["iterate"])
    unknown = [t for t in cfg["types"] if t not in llama_cpp.QUANT_TYPES]
    if unknown:
        raise StageError(f"quantize.types: unknown type(s) {', '.join(unknown)} for {src.path(f'{model}-f16')}; "
                         f"supported: {', '.join(llama_cpp.QUANT_TYPES)}")
    f16 = src.path(f"{model}-f16")
    f16_samples = ea.read_samples(src.path(f"{model}-samples-{task.name}"))
    system = tasks.system_prompt(ctx.recipe)
    variants = {"f16": f16}
    served = (ev.metrics["models"] if src is ev else src.metrics["timings"]).get(model, {})
    files = {"f16": {"path": str(f16), "bytes": f16.stat().st_size, "load_s": served.get("server_ready_s"),
                     "peak_rss_mb": served.get("server_peak_rss_mb")}}
    artifacts: dict = {}
    imatrix = None
    if cfg["imatrix"]["enabled"]:
        ctx.progress("llama-imatrix over the training split")
        t0 = time.time()
        imatrix = llama_cpp.imatrix(f16, calibration_text(ctx.inputs["data"].path("train"), ctx.out / "calibration.txt"),
                                    ctx.out / "imatrix.gguf", ctx.log("llama-imatrix.log"), ctx.threads,
                                    cfg["imatrix"]["chunks"], cfg["imatrix"]["ctx_size"])
        files["f16"]["imatrix_s"] = round(time.time() - t0, 1)
        artifacts["imatrix"] = "imatrix.gguf"
    for qtype in cfg["types"]:
        ctx.progress(f"{model} -> {qtype}")
        dst = ctx.out / f"{model}-{qtype}.gguf"
        t0 = time.time()
        llama_cpp.quantize(f16, dst, qtype, ctx.log(f"quantize-{qtype}.log"), ctx.threads, imatrix)
        files[qtype] = {"path": dst.name, "bytes": dst.stat().st_size, "seconds": round(time.time() - t0, 2),
                        "ratio_vs_f16": round(dst.stat().st_size / f16.stat().st_size, 3),
                        **llama_cpp.quant_mix(ctx.log(f"quantize-{qtype}.log"))}
        artifacts[qtype] = dst.name
        variants[qtype] = dst

    # speed: llama-bench, same threads for all
    bcfg = cfg["bench"]
    for name, path in variants.items():
        if bcfg["repetitions"]:
            ctx.progress(f"llama-bench {name}")
            files[name]["bench"] = llama_cpp.bench(path, ctx.log(f"llama-bench-{name}.log"), ctx.threads,
                                                   bcfg["prompt_tokens"], bcfg["gen_tokens"], bcfg["repetitions"])

    # quality: every quant on the eval stage's test task, same prompts and items, paired against f16
    quality: dict = {"f16": {"ci": ea.summarize(task.name, scoring, f16_samples, {}, ecfg["bootstrap_iters"], ctx.seed)}}
    details = {"f16": ea.item_details(f16_samples, task, ecfg["length_buckets_chars"])}
    verdicts = {}
    if cfg["evaluate"]:
        tasks_dir = ev.path("tasks")
        f16_ids = sorted(s["doc_id"] for s in f16_samples)
        slots = cfg["scoring_slots"]
        # f16 is served again first, the same way as the quants (quantize.scoring_slots): the gate's reference, its
        # speed side by side with theirs, and against the eval stage's answers (eval.concurrency slots) what
        # batching alone changes. On one slot every scoring of a file gives the same answers: the verdict repeats.
        for qtype in [RERUN] + cfg["types"]:
            out = ctx.out / qtype
            out.mkdir()
            timing = served_eval.score(f16 if qtype == RERUN else variants[qtype], qtype,
                                       [{"name": "test", "tasks": [task.name], "system": system}],
                                       tasks_dir, out, ctx.log, ctx.progress, threads=ctx.threads,
                                       concurrency=slots, ctx_size=ecfg["ctx_size"], limit=ecfg["limit"],
                                       seed=ctx.seed)
            agg, samples = lm_eval.read_results(out / "lm_eval" / "test", task.name, ctx.log(f"lm-eval-{qtype}-test.log"))
            if sorted(s["doc_id"] for s in samples) != f16_ids:
                raise StageError(f"{qtype} was scored on different items than f16 (eval.limit changed?)")
            (out / f"samples_{task.name}.jsonl").write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
            artifacts[f"{qtype}-samples"] = f"{qtype}/samples_{task.name}.jsonl"
            ref = f16_samples if qtype == RERUN else quality[RERUN]["samples"]
            quality[qtype] = {"ci": ea.summarize(task.name, scoring, samples, agg, ecfg["bootstrap_iters"], ctx.seed),
                              "vs_f16": ea.compare(task.name, scoring, ref, samples, ecfg["bootstrap_iters"], ctx.seed),
                              "served": served_speed(timing, len(samples), slots), **timing}
            d = ea.item_details(samples, task, ecfg["length_buckets_chars"])
            if qtype == RERUN:
                v = gate(details["f16"], d, quality[qtype]["vs_f16"], cfg["gate"], ecfg["bootstrap_iters"], ctx.seed)
                quality[RERUN].update(noise=v["non_inferiority"], vs_eval=quality[RERUN].pop("vs_f16"),
                                      eval_slots=ecfg["concurrency"], samples=samples)
                # the reference from here on: f16 scored as the quants are
                quality["f16"] = {"ci": quality[RERUN]["ci"], "scored": f"quantize stage, {slots} slot(s)"}
                details["f16"] = d
                continue
            details[qtype] = d
            v = gate(details["f16"], d, quality[qtype]["vs_f16"], cfg["gate"], ecfg["bootstrap_iters"], ctx.seed)
            files[qtype]["load_s"] = timing["server_ready_s"]
            files[qtype]["peak_rss_mb"] = timing["server_peak_rss_mb"]
            verdicts[qtype] = v
            ctx.progress(f"{qtype}: {'passes' if v['passed'] else 'fails'} the regression gate")
        quality[RERUN].pop("samples", None)

    # choose the deployment model: the smallest quant that passes (f16 when none does)
    passing = [t for t in cfg["types"] if verdicts.get(t, {"passed": not cfg["evaluate"]})["passed"]]
    chosen = min(passing, key=lambda t: files[t]["bytes"]) if passing else "f16"
    smallest = min(cfg["types"], key=lambda t: files[t]["bytes"])
    why = (f"{chosen} is the smallest of the quants that pass the gate ({', '.join(passing)})" if passing and
           cfg["evaluate"] else f"{chosen} is the smallest quant (quantize.evaluate is off: not gated)" if passing
           else f"no quant passes the gate ({'; '.join(t + ': ' + ', '.join(v['reasons']) for t, v in verdicts.items())}); "
                "deploying f16")

    fallback = None
    if "base-f16" in ev.artifacts:
        ftype = cfg["fallback_type"] or smallest
        dst = ctx.out / f"base-{ftype}.gguf"
        ctx.progress(f"base -> {ftype} (fallback model)")
        llama_cpp.quantize(ev.path("base-f16"), dst, ftype, ctx.log(f"quantize-base-{ftype}.log"), ctx.threads)
        artifacts["fallback"] = dst.name
        fallback = {"path": dst.name, "type": ftype, "bytes": dst.stat().st_size}

    analysis = report.analysis(details, quality, ecfg["bootstrap_iters"], ctx.seed, task) if cfg["evaluate"] else {}
    metrics = {"model": model, "model_from": src.stage, "task": task.describe(),
               "hf_model": str(src.path(model)) if model in src.artifacts else None,  # its merged HF folder (SGLang)
               "files": files, "quality": {t: {k: v for k, v in q.items()} for t, q in quality.items()},
               "gate": cfg["gate"], "verdicts": verdicts, "chosen": chosen, "chosen_why": why, "smallest": smallest,
               "fallback": fallback}
    artifacts.update(report.write(Page(ctx.out, metrics, analysis, ctx.recipe)))
    (ctx.out / "quant_analysis.json").write_text(json.dumps(analysis, indent=1, ensure_ascii=False))
    artifacts["analysis"] = "quant_analysis.json"
    notes = [f"{t}: {files[t]['bytes'] / 1e6:.1f} MB" + (f", {'pass' if verdicts[t]['passed'] else 'FAIL'}"
                                                         if t in verdicts else "") for t in cfg["types"]]
    notes.append(f"deploy {chosen}")
    return Result(metrics=metrics, artifacts=artifacts, notes=notes)
