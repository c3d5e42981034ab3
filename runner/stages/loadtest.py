"""loadtest: bring the deployment up from serving.json, drive the gateway (and, for comparison, the primary
engine directly) over the recipe's concurrency ladder with GuideLLM, judge each level against the SLO, derive
cost per 1M output tokens and the gateway's overhead."""
from __future__ import annotations

import json

from runner import deploy, models
from runner.adapters import guidellm
from runner.stage import Context, Result

SECTIONS = ("loadtest", "seed", "threads", "base_model")
INPUTS = ("serve",)
CODE = ("runner/deploy.py", "runner/adapters/guidellm.py", "runner/gateway/app.py", "runner/gateway/admission.py",
        "runner/gateway/resilience.py")
TOOLS = ("loadtest", "llama", "gateway")


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


def ladder(ctx: Context, cfg: dict, target: str, model: str, tokenizer, name: str, api_key: str | None) -> list[dict]:
    report = ctx.out / f"guidellm-{name}.json"
    cmd = guidellm.command(target, model, tokenizer, cfg["concurrency"], cfg["seconds_per_level"],
                           cfg["prompt_tokens"], cfg["output_tokens"], report, ctx.seed, api_key=api_key)
    ctx.progress(f"{name}: ladder {cfg['concurrency']} x {cfg['seconds_per_level']}s against {target}")
    budget = len(cfg["concurrency"]) * (cfg["seconds_per_level"] + 30) + 120
    guidellm.run(cmd, ctx.log(f"guidellm-{name}.log"), ctx.threads, secret=api_key, timeout=budget)
    rows = judge(guidellm.parse(report), cfg["slo"])
    for r in rows:
        r["usd_per_1m_output_tokens"] = cost_per_million(r["output_tokens_per_s"], cfg["price_per_hour_usd"])
    return rows


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


def run(ctx: Context) -> Result:
    cfg = ctx.section("loadtest")
    serving = deploy.load(ctx.inputs["serve"].path("serving"))
    tokenizer = models.base_model_dir(ctx.section("base_model"))
    direct = None
    with deploy.up(serving, ctx.logs) as dep:
        if dep.gateway_url:
            rows = ladder(ctx, cfg, dep.gateway_url, serving.get("served_model", dep.primary.model), tokenizer,
                          "gateway", dep.api_key)
            if cfg["direct_comparison"]:
                direct = ladder(ctx, cfg, dep.primary.url, dep.primary.model, tokenizer, "direct", None)
        else:
            rows = ladder(ctx, cfg, dep.primary.url, dep.primary.model, tokenizer, "direct", None)
    passing = [r for r in rows if r["meets_slo"]]
    ceiling = max((r["streams"] for r in passing), default=None)
    best = max(rows, key=lambda r: r["output_tokens_per_s"] or 0)
    (ctx.out / "levels.json").write_text(json.dumps({"through": "gateway" if dep.gateway_url else "direct",
                                                     "levels": rows, "direct": direct}, indent=2) + "\n")
    metrics = {"through": "gateway" if dep.gateway_url else "direct", "levels": rows, "direct_levels": direct,
               "gateway_overhead": overhead(rows, direct) if direct else None,
               "concurrency_ceiling": ceiling, "slo": cfg["slo"],
               "peak_output_tokens_per_s": best["output_tokens_per_s"], "peak_at_streams": best["streams"],
               "usd_per_1m_output_tokens_at_ceiling": next((r["usd_per_1m_output_tokens"] for r in rows
                                                            if r["streams"] == ceiling), None)}
    arts = {"levels": "levels.json"}
    arts.update({f"guidellm-{n}": f"guidellm-{n}.json" for n in ("gateway", "direct")
                 if (ctx.out / f"guidellm-{n}.json").exists()})
    return Result(metrics=metrics, artifacts=arts,
                  notes=[f"SLO ceiling: {ceiling if ceiling is not None else 'none'} concurrent streams",
                         f"peak {best['output_tokens_per_s'] or 0:.1f} output tok/s at {best['streams']} streams"])
