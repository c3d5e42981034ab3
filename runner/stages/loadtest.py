"""loadtest: bring the deployment up from serving.json and measure it.

1. GuideLLM's concurrency ladder (synthetic chat) through the gateway and, for its overhead, straight to the
   primary engine, while CPU/RSS of every process and both /metrics endpoints are sampled
   (runner/serving/resources.py), and a Prometheus server watches it when monitoring.prometheus is on (the
   recipe's alerting rules are generated and checked by promtool in every run: runner/serving/monitoring.py);
   then the task ladder: the task endpoint with test documents until the SLO breaks, against llama-bench's
   single-stream limit (runner/serving/task_load.py); for a cascade, every test document once through the
   deployed model alone, the cheap tier alone and the cascade, scored against its gold (runner/serving/routing_eval.py);
2. the fault drills (runner/serving/drills.py) against the live deployment;
3. with the deployment down, the baseline engine settings at the same load (an optimization's before/after);
4. the SLO verdict per level, the concurrency ceiling, the bottleneck, cost per 1M output tokens, and
   perf_cost.md with its plots."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import psutil

from runner import models, tasks
from runner.adapters import guidellm, llama_cpp, vegeta
from runner.reports import perf_cost
from runner.serving import deploy, drills, monitoring, perf_analysis, resources, routing_eval, task_load
from runner.reports.fmt import Page
from runner.stage import Context, Result, StageError

SECTIONS = ("loadtest", "monitoring", "seed", "threads", "base_model", "task")
INPUTS = ("serve", "data")
RUNS = ("evals", "runner/kinds")  # read by code run outside our imports (lm-eval, the gateway, by path)
TOOLS = ("loadtest", "llama", "gateway", "prometheus")


def ladder(ctx: Context, cfg: dict, target: str, model: str, tokenizer, name: str, api_key: str | None) -> list[dict]:
    report = ctx.out / f"guidellm-{name}.json"
    cmd = guidellm.command(target, model, tokenizer, cfg["concurrency"], cfg["seconds_per_level"],
                           cfg["prompt_tokens"], cfg["output_tokens"], report, ctx.seed, api_key=api_key)
    ctx.progress(f"{name}: ladder {cfg['concurrency']} x {cfg['seconds_per_level']}s against {target}")
    budget = len(cfg["concurrency"]) * (cfg["seconds_per_level"] + 30) + 120
    guidellm.run(cmd, ctx.log(f"guidellm-{name}.log"), ctx.threads, secret=api_key, timeout=budget)
    rows = perf_analysis.judge(guidellm.parse(report), cfg["slo"])
    for r in rows:
        r["usd_per_1m_output_tokens"] = perf_analysis.cost_per_million(r["output_tokens_per_s"],
                                                                       cfg["price_per_hour_usd"])
    return rows


def attach_resources(rows: list[dict] | None, sampler: resources.Sampler, parallel: int) -> None:
    """Each level gets what was sampled during it, and the bottleneck read from that."""
    for r in rows or []:
        if r.get("start_time") and r.get("end_time"):
            r["resources"] = sampler.window(r["start_time"], r["end_time"])
            r["bottleneck"] = perf_analysis.bottleneck(r["resources"], psutil.cpu_count() or 1, parallel)


def measure_baseline(ctx: Context, cfg: dict, serving: dict, tokenizer) -> tuple[dict, list[dict]]:
    """The primary engine alone with the baseline settings, at the baseline's load levels."""
    b = cfg["baseline"]
    missing = [s for s in b["streams"] if s not in cfg["concurrency"]]
    if missing:
        raise StageError(f"loadtest.baseline.streams {missing} are not in loadtest.concurrency "
                         f"{cfg['concurrency']}: there would be no 'after' to compare with")
    settings = {"parallel": b["parallel"] or serving["parallel"], "threads": b["threads"] or serving["threads"]}
    ctx.progress(f"baseline ({b['label']}): {settings} at {b['streams']} streams")
    with llama_cpp.serve(Path(serving["primary"]["gguf"]), ctx.log("llama-server-baseline.log"), settings["threads"],
                         parallel=settings["parallel"], ctx_size=serving["ctx_size"], alias=serving["primary"]["alias"],
                         timeout=serving["ready_timeout_s"]) as (server, _):
        sampler_procs = {"primary-0": lambda: server.process.pid}
        with resources.Sampler(sampler_procs, {"primary-0": server.url}, cfg["sample_interval_s"]) as sampler:
            rows = ladder(ctx, {**cfg, "concurrency": b["streams"]}, server.url, server.alias, tokenizer,
                          "baseline", None)
        attach_resources(rows, sampler, settings["parallel"])
    return settings, rows


def constant_rate(ctx: Context, cfg: dict, dep: deploy.Deployment, route: str | None) -> list[dict] | None:
    """vegeta attacks on the task endpoint, one per rate, when vegeta is wanted and present."""
    v = cfg["vegeta"]
    if v["enabled"] is False or not dep.gateway_url or not route:
        return None
    if not vegeta.available():
        if v["enabled"] is True:
            raise StageError("loadtest.vegeta.enabled is true but `vegeta` is not on PATH "
                             "(https://github.com/tsenart/vegeta/releases)")
        return None
    lines = ctx.inputs["data"].path("test").read_text().splitlines()[:v["documents"]]
    docs = [json.loads(line)["document"] for line in lines]
    rows = []
    for rate in v["rates"]:
        ctx.progress(f"vegeta: {rate:g} task requests/s for {v['seconds']:g}s")
        rows.append(vegeta.attack(dep.gateway_url + route, dep.api_key, docs, rate, v["seconds"],
                                  v["timeout_s"], ctx.out, ctx.log(f"vegeta-{rate:g}.log")))
    return rows


def sampled(dep: deploy.Deployment) -> tuple[dict, dict]:
    """What the resource sampler watches in a deployment: each engine's current pid and every /metrics URL."""
    procs = {f"{e.role}-{i}": (lambda e=e: e.engine.pid if e.engine else None) for i, e in enumerate(dep.endpoints)}
    urls = {f"{e.role}-{i}": e.url for i, e in enumerate(dep.endpoints)}
    if dep.gateway_url:
        procs["gateway"], urls["gateway"] = (lambda: dep.gateway_pid), dep.gateway_url
    return procs, urls


def engines_snapshot(dep: deploy.Deployment) -> dict:
    """Each engine's pid and cumulative work counters (its own /metrics), keyed like the resource samples."""
    return {f"{e.role}-{i}": {"pid": e.engine.pid if e.engine else None, **resources.engine_counters(e.url)}
            for i, e in enumerate(dep.endpoints)}


def measured_ladder(ctx: Context, cfg: dict, serving: dict, tokenizer, through: str,
                    watch: tuple[Path, float] | None = None) -> tuple[list[dict], list, list, dict, dict | None]:
    """One ladder against a deployment started for it alone: every ladder replays the same seeded prompts, so
    an engine kept from an earlier ladder would serve them from its prompt cache (measured: 285 of 286 prompt
    tokens cached, TTFT 23 ms instead of 250 ms) and the comparison would be meaningless. The engines' own
    counters at the start prove it: a fresh engine has processed only its readiness probe.
    watch: (rule file, scrape interval): a Prometheus server scrapes the deployment during the ladder, and the
    ladder's figures are cross-checked against its queries."""
    cross = None
    if through == "direct":  # the primary alone: no gateway or fallback engines to start and sample
        serving = {**serving, "gateway": None, "fallbacks": [], "fallback": None, "cheap": None}
    with deploy.up(serving, ctx.logs / f"ladder-{through}") as dep, contextlib.ExitStack() as stack:
        prom = stack.enter_context(monitoring.watching(dep, watch[0], ctx.logs / "prometheus", watch[1])) \
            if watch else None
        procs, urls = sampled(dep)
        engines = {"at_start": engines_snapshot(dep)}
        with resources.Sampler(procs, urls, cfg["sample_interval_s"]) as sampler:
            if through == "gateway":
                rows = ladder(ctx, cfg, dep.gateway_url, serving.get("served_model", dep.primary.model), tokenizer,
                              "gateway", dep.api_key)
            else:
                rows = ladder(ctx, cfg, dep.primary.url, dep.primary.model, tokenizer, "direct", None)
        engines["at_end"] = engines_snapshot(dep)
        restarts = dep.restarts()
        if prom:
            ctx.progress("Prometheus: the ladder's figures cross-checked against its queries")
            cross = monitoring.cross_check(prom, rows, "chat", watch[1])
    attach_resources(rows, sampler, serving["parallel"])
    return rows, sampler.samples, restarts, engines, cross


def task_ladder(ctx: Context, cfg: dict, serving: dict, route: str) -> dict:
    """The task endpoint with test documents, level by level until the SLO breaks, in a deployment of its own;
    llama-bench first (nothing else running) for the single-stream limit the levels are compared with."""
    t = cfg["task_ladder"]
    docs = [json.loads(x)["document"] for x in ctx.inputs["data"].path("test").read_text().splitlines()
            if x.strip()][:t["documents"]]
    bench = {}
    # the model that answers first: a cascade's cheap tier (on its own threads), else the deployed model
    first = serving.get("cheap") or serving["primary"]
    first_threads = (serving.get("cheap") or {}).get("threads") or serving["threads"]
    if serving["engine"] == "llama-server":
        ctx.progress(f"llama-bench on {Path(first['gguf']).name}, {first_threads} threads: the single-stream limit")
        bench = llama_cpp.bench(Path(first["gguf"]), ctx.log("llama-bench-task.log"), first_threads,
                                256, 64, t["bench_repetitions"])
        bench["model"] = Path(first["gguf"]).name
    levels: list[dict] = []
    rows_at: dict[int, list[dict]] = {}
    repeats: list[dict] = []

    def run_level(streams: int, name: str | None = None) -> dict:
        rows, timing = task_load.level(dep.gateway_url, route, docs, dep.api_key, streams, t["requests_per_level"],
                                       t["max_seconds_per_level"], ctx.out, t["timeout_s"], name=name)
        rows_at.setdefault(streams, []).append(rows)
        return task_load.summarize(rows, timing, streams, cfg["slo"], cfg["price_per_hour_usd"],
                                   psutil.cpu_count() or 1, bench)

    with deploy.up(serving, ctx.logs / "task-ladder") as dep:
        procs, urls = sampled(dep)
        with resources.Sampler(procs, urls, cfg["sample_interval_s"]) as sampler:
            while (streams := task_load.next_levels(t, levels)) is not None:
                ctx.progress(f"task route {route}: {streams} stream(s), up to {t['requests_per_level']} documents "
                             f"or {t['max_seconds_per_level']:g}s")
                levels.append(run_level(streams))
            at = task_load.best_level(levels)
            for i in range(t["repeat_best"] if at else 0):
                ctx.progress(f"task route {route}: the best level ({at['streams']} streams) again, {i + 1} of "
                             f"{t['repeat_best']}: its spread")
                repeats.append(run_level(at["streams"], name=f"task-level-{at['streams']}-repeat-{i + 1}"))
        restarts = dep.restarts()
    attach_resources(levels + repeats, sampler, serving["parallel"])
    calibration = task_load.calibrate(levels, bench)
    engine = None
    prompt, answer = task_load.mean_tokens(levels)
    if serving["engine"] == "llama-server" and serving["replicas"] == 1 and prompt and answer:
        sizes = task_load.batch_sizes(levels, serving["parallel"])
        ctx.progress(f"llama-batched-bench on {Path(first['gguf']).name}: {', '.join(map(str, sizes))} sequences of "
                     f"{prompt} + {answer} tokens in lockstep, what batching alone gives on these cores")
        engine = task_load.against_engine(levels + repeats, llama_cpp.batched_bench(
            Path(first["gguf"]), ctx.log("llama-batched-bench-task.log"), first_threads, prompt,
            answer, sizes), serving["parallel"])
        engine["model"] = Path(first["gguf"]).name
    within = [r for r in levels if r["latency_ok"]]
    one = next((r for r in levels if r["streams"] == 1), None)
    return {"route": route, "documents": len(docs), "levels": levels, "calibration": calibration, "engine": engine,
            "ceiling_streams": max((r["streams"] for r in within), default=None),
            "stopped_by": task_load.stop_reason(t, levels), "max_streams": t["max_streams"],
            "meets_slo_streams": [r["streams"] for r in levels if r["meets_slo"]],
            "best_at_slo": {"streams": at["streams"], "documents_per_s": at["documents_per_s"],
                            "valid_share": at["valid_share"], "usd_per_1k_documents": at["usd_per_1k_documents"],
                            "x_one_stream": round(at["documents_per_s"] / one["documents_per_s"], 3)
                            if one and one["documents_per_s"] else None,
                            "engine_x_one": at.get("engine_x_one"), "x_engine": at.get("x_engine")} if at else None,
            "best_repeated": task_load.repeated(at, repeats, rows_at[at["streams"]]) if at and repeats else None,
            "repeats": repeats,
            "engine_restarts": restarts}


def routing_comparison(ctx: Context, cfg: dict, serving: dict) -> dict | None:
    """A cascade against each of its models alone, on the same test documents (each deployment in turn)."""
    rc = cfg["routing_comparison"]
    if not (rc["enabled"] and serving.get("cheap") and serving.get("gateway")):
        return None
    task = tasks.of(ctx.recipe)
    docs = [json.loads(x) for x in ctx.inputs["data"].path("test").read_text().splitlines() if x.strip()]
    docs = docs[:rc["documents"]] if rc["documents"] else docs
    variants, labels = [], {}
    for key, label, spec in routing_eval.plan(serving, ctx.threads):
        ctx.progress(f"routing: {label}, {len(docs)} test documents once, {rc['streams']} streams")
        labels[key] = label
        variants.append(routing_eval.run_variant(key, spec, docs, task, rc["streams"], ctx.out / "routing",
                                                 cfg["price_per_hour_usd"], rc["timeout_s"], logs=ctx.logs))
    return {"documents": len(docs), "streams": rc["streams"], "headline": task.headline, "labels": labels,
            "route": serving["task"]["route"], "metrics": list(task.metrics()), "reference": "deployed", "variants": routing_eval.compare(variants, "deployed", list(task.metrics()))}


def run(ctx: Context) -> Result:
    cfg, mon = ctx.section("loadtest"), ctx.section("monitoring")
    serving = deploy.load(ctx.inputs["serve"].path("serving"))
    tokenizer = models.base_model_dir(ctx.section("base_model"))
    direct = drill_results = task_attacks = None
    has_gateway = bool(serving.get("gateway"))
    through = "gateway" if has_gateway else "direct"
    monitor = monitoring.checked_rules(ctx.out, cfg["slo"], serving, mon)
    ctx.progress(f"Prometheus rules: {len(monitor['alerts'])} alerts, {len(monitor['recording_rules'])} recording "
                 f"rules; promtool check and {monitor['promtool']['test_cases']} rule tests passed")
    watch = (ctx.out / monitor["rules_file"], min(mon["scrape_interval_s"], 0.5)) if mon["prometheus"] and has_gateway \
        else None
    rows, samples, restarts, engines, monitor["cross_check"] = measured_ladder(ctx, cfg, serving, tokenizer, through,
                                                                               watch)
    ladders = {through: engines}
    if has_gateway and cfg["direct_comparison"]:
        direct, more, more_restarts, ladders["direct"], _ = measured_ladder(ctx, cfg, serving, tokenizer, "direct")
        samples, restarts = samples + more, restarts + more_restarts
    (ctx.out / "resource_samples.json").write_text(json.dumps(samples) + "\n")
    route = (serving.get("task") or {}).get("route")
    tasks_measured = task_ladder(ctx, cfg, serving, route) if has_gateway and route and cfg["task_ladder"]["enabled"] \
        else None
    restarts += (tasks_measured or {}).get("engine_restarts") or []
    routing = routing_comparison(ctx, cfg, serving)
    rep = (tasks_measured or {}).get("best_repeated")
    if routing and rep and rep.get("documents_per_s_spread") is not None and rep["documents_per_s"]:
        # the task ladder's best level run twice: the noise a one-pass difference between variants has to exceed
        routing["relative_spread"] = round(rep["documents_per_s_spread"] / min(rep["documents_per_s"]), 4)
    # the chat route goes to the deployed model: the task ladder's figures serve unless a cascade's cheap tier had them
    bench = None if serving.get("cheap") else ((tasks_measured or {}).get("calibration") or {}).get("bench")
    if not bench and serving["engine"] == "llama-server":  # nothing else running: the deployments are down
        ctx.progress(f"llama-bench on the deployed model, {serving['threads']} threads: the chat ladder's calibration")
        bench = llama_cpp.bench(Path(serving["primary"]["gguf"]), ctx.log("llama-bench-chat.log"), serving["threads"],
                                256, 64, cfg["task_ladder"]["bench_repetitions"])
    chat_calibration = perf_analysis.calibrate_chat(rows, bench, cfg["prompt_tokens"], task_load.CALIBRATION_MIN)
    wants_vegeta = cfg["vegeta"]["enabled"] is True or (cfg["vegeta"]["enabled"] == "auto" and vegeta.available())
    if has_gateway and (cfg["drills"]["enabled"] or wants_vegeta):
        with deploy.up(serving, ctx.logs / "drills") as dep:
            task_attacks = constant_rate(ctx, cfg, dep, route)
            if cfg["drills"]["enabled"]:
                docs = [json.loads(x)["document"] for x in ctx.inputs["data"].path("test").read_text().splitlines()
                        if x.strip()][:32]
                drill_results = drills.run_all(dep, serving, cfg["drills"], ctx.progress, docs)
            restarts += dep.restarts()
    baseline = None
    if cfg["baseline"]["enabled"]:
        settings, before = measure_baseline(ctx, cfg, serving, tokenizer)
        after, how = (direct, "the direct ladder") if direct else (rows, "the ladder") if through == "direct" else \
            (None, "the engine alone at the baseline's levels, measured next")
        if after is None:  # no direct ladder (loadtest.direct_comparison: false): like for like, engine against engine
            after, _, more_restarts, ladders["after"], _ = measured_ladder(
                ctx, {**cfg, "concurrency": cfg["baseline"]["streams"]}, serving, tokenizer, "direct")
            restarts += more_restarts
        baseline = {"label": cfg["baseline"]["label"], "before_settings": settings,
                    "after_settings": {"parallel": serving["parallel"], "threads": serving["threads"]},
                    "after": how, "levels": before, "comparison": perf_analysis.before_after(before, after)}

    passing = [r for r in rows if r["meets_slo"]]
    ceiling = max((r["streams"] for r in passing), default=None)
    best = max(rows, key=lambda r: r["output_tokens_per_s"] or 0)
    knee = perf_analysis.knee(rows)
    at = next((r for r in rows if r["streams"] == (knee or rows[-1]["streams"])), rows[-1])
    metrics = {"through": through, "levels": rows, "direct_levels": direct,
               "gateway_overhead": perf_analysis.overhead(rows, direct) if direct else None,
               "concurrency_ceiling": ceiling, "slo": cfg["slo"], "throughput_knee_streams": knee,
               "bottleneck": {"at_streams": at["streams"], **at.get("bottleneck", {"verdict": "unknown"})},
               "peak_output_tokens_per_s": best["output_tokens_per_s"], "peak_at_streams": best["streams"],
               "usd_per_1m_output_tokens_at_ceiling": next((r["usd_per_1m_output_tokens"] for r in rows
                                                            if r["streams"] == ceiling), None),
               "price_per_hour_usd": cfg["price_per_hour_usd"], "baseline": baseline, "drills": drill_results,
               "vegeta": task_attacks, "ladder_engines": ladders, "monitoring": monitor, "task_ladder": tasks_measured,
               "chat_calibration": chat_calibration, "routing": routing,
               "engine_restarts": restarts, "serving": {k: serving[k] for k in ("engine", "replicas", "parallel",
                                                                                "threads", "ctx_size")},
               "model_type": serving.get("model_type"), "cores": psutil.cpu_count()}
    (ctx.out / "levels.json").write_text(json.dumps({"through": through, "levels": rows, "direct": direct,
                                                     "baseline": baseline, "task_ladder": tasks_measured,
                                                     "routing": routing},
                                                    indent=2) + "\n")
    arts = {"levels": "levels.json", "resource_samples": "resource_samples.json",
            "prometheus_rules": monitor["rules_file"], "prometheus_rules_test": monitor["tests_file"]}
    arts.update({f"guidellm-{n}": f"guidellm-{n}.json" for n in ("gateway", "direct", "baseline")
                 if (ctx.out / f"guidellm-{n}.json").exists()})
    arts.update(perf_cost.write(Page(ctx.out, metrics, recipe=ctx.recipe)))
    notes = [f"SLO ceiling: {ceiling if ceiling is not None else 'none'} concurrent streams",
             f"peak {best['output_tokens_per_s'] or 0:.1f} output tok/s at {best['streams']} streams; bottleneck: "
             f"{metrics['bottleneck']['verdict']}"]
    failed = [n for n, d in (drill_results or {}).items() if d.get("passed") is False]
    if failed:
        metrics["gate_summary"] = "fault drills failed: " + ", ".join(failed) + " (see perf_cost.md)"
        return Result(metrics=metrics, artifacts=arts, status="gated", notes=notes + [metrics["gate_summary"]])
    return Result(metrics=metrics, artifacts=arts, notes=notes)
