"""GuideLLM adapter: a concurrency ladder against an OpenAI-compatible endpoint; parse its JSON report.

Quirks kept here: lists inside `--profile kind=concurrent,streams=[...]` do not parse, so the ladder goes
through `--override profile.streams 1,2,4`; the tokenizer is a local folder (no hub).
"""
from __future__ import annotations

import json
from pathlib import Path

from runner import env, proc
from runner.stage import StageError


def command(target: str, model: str, tokenizer_dir: Path, levels: list[int], seconds: float, prompt_tokens: int,
            output_tokens: int, out_json: Path, seed: int, api_key: str | None = None, validate: bool = True,
            request_format: str | None = None) -> list:
    """validate=False: skip GuideLLM's GET /health probe (servers without that route, e.g. llama-cpp-python's).
    request_format="/v1/completions": plain-text prompts (llama-cpp-python's chat formatter fails on the
    content-part lists GuideLLM sends to /v1/chat/completions)."""
    lt = env.venv("loadtest")
    backend = f"kind=openai_http,target={target},model={model}" + (f",api_key={api_key}" if api_key else "") \
        + ("" if validate else ",validate_backend=false") + (f",request_format={request_format}" if request_format else "")
    return [lt.bin("guidellm"), "run",
            "--backend", backend,
            "--tokenizer", f"kind=hf_auto,model={tokenizer_dir}",
            "--data", f"kind=synthetic_text,prompt_tokens={prompt_tokens},output_tokens={output_tokens}",
            "--profile", f"kind=concurrent,streams={levels[0]}",
            "--override", "profile.streams", ",".join(map(str, levels)),
            "--constraint", f"kind=max_duration,seconds={seconds:g}",
            "--seed", f"kind=static,value={seed}",
            "--output", f"kind=json,path={out_json}",
            "--disable-console-interactive"]


def run(cmd: list, log: Path, threads: int, on_line=None, secret: str | None = None,
        timeout: float | None = None) -> None:
    """Run GuideLLM within `timeout`; one retry when it is stopped for running over (seen once here: a run
    that sat idle at start-up with no connection open, while the same command had just run fine)."""
    e = proc.tool_env(threads, {"GUIDELLM__LOGGING__DISABLED": "true"})
    try:
        proc.run(cmd, log, env=e, on_line=on_line, what="guidellm", redact=(secret,) if secret else (),
                 timeout=timeout)
    except StageError as err:
        if not timeout or "ran past" not in str(err):
            raise
        proc.run(cmd, log, env=e, on_line=on_line, what="guidellm (retry)", redact=(secret,) if secret else (),
                 timeout=timeout)


def _dist(d: dict | None) -> dict:
    """GuideLLM's distribution summary -> mean/p50/p95/p99 (seconds or ms, as it reports them)."""
    if not d:
        return {}
    s = d.get("successful", d)
    pct = s.get("percentiles", {})
    return {"mean": s.get("mean"), "p50": pct.get("p50", s.get("median")), "p95": pct.get("p95"),
            "p99": pct.get("p99"), "count": s.get("count")}


def cached_ratio(requests: list[dict]) -> float | None:
    """Share of prompt tokens the server took from its prompt cache (usage.prompt_tokens_details.cached_tokens,
    as GuideLLM records it per request): near 1 means the prompts were seen before and prefill was skipped."""
    pairs = [(r.get("cached_tokens"), r.get("prompt_tokens")) for r in requests]
    pairs = [(c, p) for c, p in pairs if c is not None and p]
    return round(sum(c for c, _ in pairs) / sum(p for _, p in pairs), 3) if pairs else None


def parse(report: Path) -> list[dict]:
    """One row per concurrency level: throughput, latency/TTFT/ITL percentiles, errors."""
    if not report.exists():
        raise StageError(f"guidellm wrote no report at {report}")
    data = json.loads(report.read_text())
    rows = []
    for b in data.get("benchmarks", []):
        m = b.get("metrics", {})
        strategy = b.get("scheduler", {}).get("strategy", b.get("config", {}).get("strategy", {}))
        totals = m.get("request_totals", b.get("request_totals", {})) or {}
        rows.append({
            "streams": strategy.get("streams"),
            "requests_per_s": _dist(m.get("requests_per_second")).get("mean"),
            "output_tokens_per_s": _dist(m.get("output_tokens_per_second")).get("mean"),
            "latency_s": _dist(m.get("request_latency")),
            "ttft_ms": _dist(m.get("time_to_first_token_ms")),
            "itl_ms": _dist(m.get("inter_token_latency_ms")),
            "requests": {"successful": totals.get("successful"), "errored": totals.get("errored"),
                         "incomplete": totals.get("incomplete"), "total": totals.get("total")},
            "start_time": b.get("start_time"), "end_time": b.get("end_time"),
            "cached_prompt_ratio": cached_ratio((b.get("requests") or {}).get("successful") or []),
        })
    if not rows:
        raise StageError(f"guidellm report {report} holds no benchmarks")
    return rows
