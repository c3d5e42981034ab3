"""loadtest: bring the deployment up from serving.json, drive its primary endpoint over the recipe's
concurrency ladder with GuideLLM, judge each level against the SLO, derive cost per 1M output tokens."""
from __future__ import annotations

import json

from runner import deploy, models
from runner.adapters import guidellm
from runner.stage import Context, Result

SECTIONS = ("loadtest", "seed", "threads", "base_model")
INPUTS = ("serve",)
CODE = ("runner/deploy.py", "runner/adapters/guidellm.py")
TOOLS = ("loadtest", "llama")


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


def run(ctx: Context) -> Result:
    cfg = ctx.section("loadtest")
    serving = deploy.load(ctx.inputs["serve"].path("serving"))
    tokenizer = models.base_model_dir(ctx.section("base_model"))
    report = ctx.out / "guidellm.json"
    with deploy.start(serving, ctx.logs) as endpoints:
        primary = next(e for e in endpoints if e.role == "primary")
        cmd = guidellm.command(primary.url, primary.model, tokenizer, cfg["concurrency"], cfg["seconds_per_level"],
                               cfg["prompt_tokens"], cfg["output_tokens"], report, ctx.seed)
        ctx.progress(f"ladder {cfg['concurrency']} x {cfg['seconds_per_level']}s against {primary.url}")
        guidellm.run(cmd, ctx.log("guidellm.log"), ctx.threads)
    rows = judge(guidellm.parse(report), cfg["slo"])
    for r in rows:
        r["usd_per_1m_output_tokens"] = cost_per_million(r["output_tokens_per_s"], cfg["price_per_hour_usd"])
    passing = [r for r in rows if r["meets_slo"]]
    ceiling = max((r["streams"] for r in passing), default=None)
    best = max(rows, key=lambda r: r["output_tokens_per_s"] or 0)
    (ctx.out / "levels.json").write_text(json.dumps(rows, indent=2) + "\n")
    metrics = {"levels": rows, "concurrency_ceiling": ceiling, "slo": cfg["slo"],
               "peak_output_tokens_per_s": best["output_tokens_per_s"], "peak_at_streams": best["streams"],
               "usd_per_1m_output_tokens_at_ceiling": next((r["usd_per_1m_output_tokens"] for r in rows
                                                            if r["streams"] == ceiling), None)}
    return Result(metrics=metrics, artifacts={"guidellm": "guidellm.json", "levels": "levels.json"},
                  notes=[f"SLO ceiling: {ceiling if ceiling is not None else 'none'} concurrent streams",
                         f"peak {best['output_tokens_per_s'] or 0:.1f} output tok/s at {best['streams']} streams"])
