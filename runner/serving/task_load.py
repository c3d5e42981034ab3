"""The product's workload: `/v1/tasks/<name>` driven with the test split's documents by the light asyncio driver
(runner/serving/async_driver.py, a process of its own whose CPU time is measured), one closed-loop level per
concurrency, climbing until the SLO breaks. Each level: documents/s, latency quantiles, the share of answers that
passed the task's contract, cost per 1,000 documents, and throughput as a multiple of the single-stream limit
llama-bench measures for the same model and threads (prompt and generation speed weighted by the workload's own
prompt/output token mix); the 1-stream level is the calibration point that says whether the measurement was
contended."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from runner import env
from runner.serving import async_driver
from runner.stage import StageError

CALIBRATION_MIN = 0.8   # single stream through the whole stack vs llama-bench's speed: below, the run was contended


def child_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def level(url: str, route: str, docs: list[str], api_key: str, streams: int, count: int, max_seconds: float,
          out: Path, timeout_s: float, name: str | None = None, keep_responses: bool = False) -> tuple[list[dict], dict]:
    """One closed-loop level; (one record per request, {wall_s, driver_cpu_s, start_time, end_time})."""
    spec = out / f"{name or f'task-level-{streams}'}.spec.json"
    samples = out / f"{name or f'task-level-{streams}'}.jsonl"
    spec.write_text(json.dumps({"targets": [{"url": url + route, "body": {"document": d}} for d in docs],
                                "streams": streams, "count": count, "max_seconds": max_seconds,
                                "timeout_s": timeout_s, "keep_responses": keep_responses}))
    cpu0, t0 = child_cpu_s(), time.time()
    p = subprocess.run([sys.executable, "-m", "runner.serving.async_driver", spec, samples], cwd=env.REPO,
                       env={**os.environ, "PYTHONPATH": str(env.REPO), "FORGE_DRIVER_AUTH": api_key},
                       capture_output=True, text=True, timeout=max_seconds + timeout_s + 60)
    t1 = time.time()
    if p.returncode != 0:
        raise StageError(f"the task load driver failed at {streams} streams: {p.stderr[-1500:]}")
    rows = [json.loads(x) for x in samples.read_text().splitlines() if x.strip()]
    return rows, {"wall_s": t1 - t0, "driver_cpu_s": child_cpu_s() - cpu0, "start_time": t0, "end_time": t1}


def single_stream_limit(bench: dict, prompt_tokens: float, completion_tokens: float) -> float | None:
    """Documents/s one stream could reach at llama-bench's speeds: prefill the prompt, then decode the answer."""
    pp, tg = bench.get("prompt_tokens_per_s"), bench.get("gen_tokens_per_s")
    if not (pp and tg and completion_tokens):
        return None
    return 1.0 / (prompt_tokens / pp + completion_tokens / tg)


def speed_vs_bench(rows: list[dict], bench: dict) -> float | None:
    """Median over valid answers of (the time llama-bench's speeds predict for the answer's own prompt and output
    tokens) / (its latency through the whole stack): 1.0 means the stack added nothing. An answer that needed
    the constrained retry took two generations, so it pulls the ratio down; the median is robust to a few."""
    pp, tg = bench.get("prompt_tokens_per_s"), bench.get("gen_tokens_per_s")
    ratios = sorted((u["prompt_tokens"] / pp + u["completion_tokens"] / tg) / r["latency_s"]
                    for r in rows if r["status"] == 200 and (u := r.get("usage")) and r.get("latency_s")
                    and u.get("prompt_tokens") is not None and u.get("completion_tokens")) if pp and tg else []
    return round(ratios[len(ratios) // 2], 3) if ratios else None


def summarize(rows: list[dict], timing: dict, streams: int, slo: dict, price_per_hour: float, cores: int,
              bench: dict | None = None) -> dict:
    """One level. Two verdicts: `latency_ok` (p99 of every answered request, valid or refused by the contract, and
    transport errors within the SLO: the capacity question, which the ladder climbs on) and `meets_slo` (also
    counting answers that failed the task's contract as errors: what a client sees)."""
    ok = [r for r in rows if r["status"] == 200]
    answered = [r for r in rows if r["status"] in (200, 502)]
    lat = [r["latency_s"] for r in ok]
    q = async_driver.quantiles(lat)
    n = len(rows)
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    prompt = mean([r["usage"]["prompt_tokens"] for r in ok if r.get("usage")])
    completion = mean([r["usage"]["completion_tokens"] for r in ok if r.get("usage")])
    # every generation the engine ran for the level, refused answers included (a 502 reports its generations)
    gens = [(u.get("generations") or 1, u.get("prompt_tokens") or 0, u.get("completion_tokens") or 0)
            for r in answered if isinstance(u := r.get("usage"), dict)]
    n_gen = sum(g[0] for g in gens)
    docs_s = len(ok) / timing["wall_s"] if timing["wall_s"] else None
    error_rate = (n - len(ok)) / n if n else 1.0
    p99_all = async_driver.quantiles([r["latency_s"] for r in answered])["p99"]
    transport = (n - len(answered)) / n if n else 1.0
    latency_ok = bool(answered and p99_all is not None and p99_all <= slo["p99_latency_s"]
                      and transport <= slo["max_error_rate"])
    return {
        "streams": streams, "requests": n, "answered_valid": len(ok), "statuses": statuses,
        "valid_share": round(len(ok) / n, 4) if n else None, "error_rate": round(error_rate, 4),
        "documents_per_s": round(docs_s, 3) if docs_s else None,
        "latency_s": {k: (round(v, 3) if v is not None else None) for k, v in q.items()},
        "latency_samples": len(lat), "p99_all_answered_s": round(p99_all, 3) if p99_all is not None else None,
        "answers_per_s": round(len(answered) / timing["wall_s"], 3) if timing["wall_s"] else None,
        "speed_vs_bench": speed_vs_bench(rows, bench or {}),
        "prompt_tokens_mean": round(prompt, 1) if prompt else None,
        "completion_tokens_mean": round(completion, 1) if completion else None,
        "generations": n_gen,
        "generation_tokens_mean": [round(sum(g[1] for g in gens) / n_gen, 1),
                                   round(sum(g[2] for g in gens) / n_gen, 1)] if n_gen else None,
        "output_tokens_per_s": round(docs_s * completion, 2) if docs_s and completion else None,
        "usd_per_1k_documents": round(price_per_hour / (docs_s * 3600) * 1000, 5) if docs_s else None,
        "driver_cpu_share": round(timing["driver_cpu_s"] / (timing["wall_s"] * cores), 4) if timing["wall_s"] else None,
        "wall_s": round(timing["wall_s"], 1), "start_time": timing["start_time"], "end_time": timing["end_time"],
        "latency_ok": latency_ok, "meets_slo": latency_ok and error_rate <= slo["max_error_rate"],
    }


def next_levels(cfg: dict, done: list[dict]) -> int | None:
    """The next concurrency: the configured ones first, then doubling while the last one kept the latency SLO
    (up to max_streams), so the ladder climbs until it breaks; answers failing the contract do not stop the climb
    (more streams do not make them rarer)."""
    tried = [r["streams"] for r in done]
    for c in cfg["concurrency"]:
        if c not in tried:
            return c
    if cfg["climb"] and done and done[-1]["latency_ok"] and done[-1]["streams"] * 2 <= cfg["max_streams"]:
        return done[-1]["streams"] * 2
    return None


def best_level(levels: list[dict]) -> dict | None:
    """The level with the most valid documents/s among those that kept the latency SLO."""
    within = [r for r in levels if r["latency_ok"]]
    return max(within, key=lambda r: r["documents_per_s"] or 0) if within else None


def repeated(first: dict, repeats: list[dict], rows: list[list[dict]]) -> dict:
    """The best level and its repeats (same streams, same deployment) together: each run's valid documents/s and
    their spread (max − min: the run-to-run noise any claimed gain has to exceed), and latency quantiles over the
    valid answers of all of them (a p99 resting on more samples than one level's)."""
    runs = [first, *repeats]
    docs = [r["documents_per_s"] for r in runs if r["documents_per_s"] is not None]
    ok = [x["latency_s"] for rs in rows for x in rs if x["status"] == 200]
    answered = [x["latency_s"] for rs in rows for x in rs if x["status"] in (200, 502)]
    q = async_driver.quantiles(ok)
    return {"streams": first["streams"], "runs": len(runs), "documents_per_s": docs,
            "documents_per_s_spread": round(max(docs) - min(docs), 3) if docs else None,
            "valid_share": [r["valid_share"] for r in runs], "requests": sum(r["requests"] for r in runs),
            "latency_s": {k: (round(v, 3) if v is not None else None) for k, v in q.items()},
            "latency_samples": len(ok),
            "p99_all_answered_s": async_driver.quantiles(answered)["p99"],
            "latency_ok": [r["latency_ok"] for r in runs]}


def stop_reason(cfg: dict, done: list[dict]) -> str:
    """Why the ladder ended: 'slo' (its last level broke the latency SLO, so the ceiling was found), 'max_streams'
    (the last level kept it but doubling would pass max_streams: the ceiling is at least that level), or 'listed'
    (no climbing: only the configured levels ran)."""
    if done and not done[-1]["latency_ok"]:
        return "slo"
    return "max_streams" if cfg["climb"] else "listed"


def batch_sizes(levels: list[dict], slots: int) -> list[int]:
    """The engine batch each level could form (its streams, capped by the engine's slots), and 1."""
    return sorted({1} | {min(r["streams"], slots) for r in levels})


def against_engine(levels: list[dict], engine_rows: list[dict], slots: int) -> dict:
    """Each level beside what the engine alone finishes with the same batch in lockstep (llama-batched-bench at
    the ladder's mean prompt and answer tokens): `engine_x_one` is what batching alone gains on this machine for
    this model and shape, `x_engine` the level's answers/s over the lockstep rate (continuous batching, which
    decodes one stream inside another's prompt batch, can exceed it; contract retries cost against it)."""
    by_b = {r["sequences"]: r for r in engine_rows}
    one = (by_b.get(1) or {}).get("documents_per_s")
    for r in levels:
        e = by_b.get(min(r["streams"], slots)) or {}
        d = e.get("documents_per_s")
        r["engine_batch"] = e.get("sequences")
        r["engine_documents_per_s"] = d
        r["engine_x_one"] = round(d / one, 3) if d and one else None
        r["x_engine"] = round(r["answers_per_s"] / d, 3) if d and r.get("answers_per_s") else None
    return {"rows": engine_rows, "slots": slots,
            "max_x_one": max((round(e["documents_per_s"] / one, 3) for e in engine_rows
                              if e.get("documents_per_s") and one), default=None)}


def mean_tokens(levels: list[dict]) -> tuple[int, int]:
    """The prompt and answer tokens of the ladder's generations, refused answers included, weighted by each level's
    generations: the batched bench's shape."""
    w = [(r["generations"], *r["generation_tokens_mean"]) for r in levels
         if r.get("generations") and r.get("generation_tokens_mean")]
    n = sum(x[0] for x in w)
    if not n:
        return 0, 0
    return round(sum(x[0] * x[1] for x in w) / n), round(sum(x[0] * x[2] for x in w) / n)


def calibrate(levels: list[dict], bench: dict) -> dict:
    """Each level's valid documents/s against the single-stream limit at llama-bench's speeds for the level's
    own token mix (a throughput view: answers that failed the contract cost generations and count for nothing);
    the calibration verdict is the 1-stream level's per-answer speed (speed_vs_bench): below CALIBRATION_MIN
    the stack or something else on the cores slowed single-stream decoding, and the figures understate the
    machine."""
    for r in levels:
        lim = single_stream_limit(bench, r["prompt_tokens_mean"] or 0, r["completion_tokens_mean"] or 0)
        r["single_stream_limit_docs_per_s"] = round(lim, 3) if lim else None
        r["x_single_stream_limit"] = round(r["documents_per_s"] / lim, 3) if lim and r["documents_per_s"] else None
    one = next((r for r in levels if r["streams"] == 1), None)
    ratio = one.get("speed_vs_bench") if one else None
    return {"bench": bench, "speed_vs_bench": ratio, "min": CALIBRATION_MIN,
            "contended": None if ratio is None else ratio < CALIBRATION_MIN}
