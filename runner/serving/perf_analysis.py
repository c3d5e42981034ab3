"""Read a load test: the SLO verdict per level, where throughput stops growing, what the bottleneck is (from the
resources sampled during each level), the gateway's overhead, and a before/after comparison."""
from __future__ import annotations

KNEE_GAIN = 0.10  # throughput growing by less than this from one level to the next = saturated


def judge(rows: list[dict], slo: dict) -> list[dict]:
    for r in rows:
        total = r["requests"]["total"] or 0
        errors = (r["requests"]["errored"] or 0)
        r["error_rate"] = errors / total if total else 1.0
        p99 = r["latency_s"].get("p99")
        p95_ttft = r["ttft_ms"].get("p95")
        r["meets_slo"] = bool(total and p99 is not None and p99 <= slo["p99_latency_s"]
                              and p95_ttft is not None and p95_ttft / 1000 <= slo["p95_ttft_s"]
                              and r["error_rate"] <= slo["max_error_rate"])
    return rows


def cost_per_million(tokens_per_s: float | None, price_per_hour: float) -> float | None:
    if not tokens_per_s:
        return None
    return round(price_per_hour / (tokens_per_s * 3600) * 1e6, 4)


def knee(rows: list[dict]) -> int | None:
    """The level after which throughput grows by less than KNEE_GAIN (None: it grew all the way up)."""
    for a, b in zip(rows, rows[1:]):
        if (a["output_tokens_per_s"] or 0) and (b["output_tokens_per_s"] or 0) < a["output_tokens_per_s"] * (1 + KNEE_GAIN):
            return a["streams"]
    return None


def _mean(res: dict, name: str, key: str) -> float:
    return (res.get(name, {}).get(key) or {}).get("mean") or 0.0


def bottleneck(res: dict, cores: int, parallel: int) -> dict:
    """What limits one level, with the numbers that show it. `res` is a resources.Sampler window."""
    if not res.get("samples"):
        return {"verdict": "unknown", "evidence": ["no resource samples in this level"]}
    engines = [n for n in res if n.startswith("primary-")]
    machine = res["machine_cpu_pct"]["mean"]
    engine_cpu = sum(_mean(res, n, "cpu_pct") for n in engines)
    gateway_cpu = _mean(res, "gateway", "cpu_pct")
    ours = sum(_mean(res, n, "cpu_pct") for n, v in res.items() if isinstance(v, dict) and "cpu_pct" in v)
    other = max(0.0, machine * cores - ours)
    deferred = max((_mean(res, n, "requests_deferred") for n in engines), default=0.0)
    busy = max((_mean(res, n, "slots_busy") for n in engines), default=0.0)
    queued = _mean(res, "gateway", "gateway_queued")
    evidence = [f"machine CPU {machine:.0f}% of {cores} cores; engine {engine_cpu:.0f}%, gateway {gateway_cpu:.0f}%, "
                f"load generator and the rest {other:.0f}% (100% = one core)",
                f"llama-server slots busy {busy:.1f} of {parallel} on average, requests deferred (waiting for a slot) "
                f"{deferred:.1f}; gateway queue {queued:.1f}"]
    if machine >= 85:
        verdict = "cpu"
        if engine_cpu < 0.6 * machine * cores:
            evidence.append("the engine gets under 60% of the busy CPU: the load generator shares these cores, so a "
                            "dedicated server would have more headroom than measured here")
    elif deferred >= 0.5 or busy >= parallel - 0.25:
        verdict = "slots"
    elif queued >= 0.5:
        verdict = "gateway_admission"
    else:
        verdict = "none"
    return {"verdict": verdict, "evidence": evidence, "engine_cpu_pct": round(engine_cpu, 1),
            "gateway_cpu_pct": round(gateway_cpu, 1), "other_cpu_pct": round(other, 1),
            "machine_cpu_pct": machine, "requests_deferred": deferred, "slots_busy": busy, "gateway_queued": queued}


VERDICTS = {
    "cpu": "CPU: the cores are saturated; more slots or streams only queue",
    "slots": "llama-server slots: requests wait for a free slot (raise serve.parallel if the CPU has room)",
    "gateway_admission": "the gateway's admission limit: requests queue at the gateway (raise max_in_flight)",
    "none": "nothing saturated at this level",
    "unknown": "not measured",
}


def overhead(gateway: list[dict], direct: list[dict]) -> list[dict]:
    """Per level: the gateway's added latency (p50, p95) and its throughput relative to the engine alone."""
    out = []
    for g, d in zip(gateway, direct):
        row = {"streams": g["streams"]}
        for q in ("p50", "p95"):
            gv, dv = g["latency_s"].get(q), d["latency_s"].get(q)
            row[f"added_latency_{q}_ms"] = round((gv - dv) * 1000, 1) if gv is not None and dv is not None else None
        gt, dt = g["output_tokens_per_s"], d["output_tokens_per_s"]
        row["throughput_ratio"] = round(gt / dt, 3) if gt and dt else None
        out.append(row)
    return out


def before_after(before: list[dict], after: list[dict]) -> list[dict]:
    """Same load level, baseline settings vs the recipe's: throughput gain and latency change."""
    by = {r["streams"]: r for r in after}
    out = []
    for b in before:
        a = by.get(b["streams"])
        if not a:
            continue
        bt, at = b["output_tokens_per_s"], a["output_tokens_per_s"]
        out.append({"streams": b["streams"],
                    "before": {"output_tokens_per_s": bt, "latency_p95_s": b["latency_s"].get("p95"),
                               "ttft_p95_ms": b["ttft_ms"].get("p95"), "requests_per_s": b["requests_per_s"]},
                    "after": {"output_tokens_per_s": at, "latency_p95_s": a["latency_s"].get("p95"),
                              "ttft_p95_ms": a["ttft_ms"].get("p95"), "requests_per_s": a["requests_per_s"]},
                    "throughput_gain": round(at / bt, 3) if at and bt else None})
    return out


def calibrate_chat(rows: list[dict], bench: dict, prompt_tokens: int, minimum: float) -> dict | None:
    """The chat ladder's calibration point: at one stream, the time llama-bench's speeds predict for a request
    (its uncached prompt tokens at prompt speed, its mean answer at generation speed) over the median latency
    measured through the stack. Below `minimum` the load generator or something else held the cores, and the
    ladder's figures understate the machine."""
    one = next((r for r in rows if r["streams"] == 1), None)
    pp, tg = (bench or {}).get("prompt_tokens_per_s"), (bench or {}).get("gen_tokens_per_s")
    if not one or not pp or not tg or not one.get("requests_per_s") or not (one.get("latency_s") or {}).get("p50"):
        return None
    answer = (one.get("output_tokens_per_s") or 0) / one["requests_per_s"]
    prompt = prompt_tokens * (1 - (one.get("cached_prompt_ratio") or 0))
    predicted = prompt / pp + answer / tg
    ratio = round(predicted / one["latency_s"]["p50"], 3)
    return {"speed_vs_bench": ratio, "min": minimum, "contended": ratio < minimum, "prompt_tokens": round(prompt, 1),
            "answer_tokens": round(answer, 1), "predicted_s": round(predicted, 3),
            "measured_p50_s": round(one["latency_s"]["p50"], 3)}
