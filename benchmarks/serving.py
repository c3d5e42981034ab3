"""Serving benchmark, everything measured in one run on the recipe's deployment model:

1. the GuideLLM concurrency ladder through the gateway vs straight to llama-server (the gateway's overhead);
2. llama-server vs llama-cpp-python's bundled server (`python -m llama_cpp.server`, same GGUF, same thread
   count) at concurrency 1 and 4: continuous batching over slots vs one request at a time.

    python3 -m runner setup && python3 benchmarks/serving.py [--recipe recipes/invoice-extraction.yaml]
        [--levels 1,2,4] [--seconds 20] [--parts gateway,engines]

Needs the recipe's serve stage in the cache (`just run RECIPE --until serve`). Part 2 builds the
`llamacpp-server` venv on first use (llama-cpp-python compiles its own llama.cpp: minutes). Prints one JSON
line per comparison and a summary with ratios. Nothing else should run on the machine meanwhile.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from runner import models, pipeline, proc, recipe, setup  # noqa: E402
from runner.adapters import guidellm, llama_cpp  # noqa: E402
from runner.serving import deploy
from runner.serving.perf_analysis import overhead  # noqa: E402


def ladder(target: str, model: str, tokenizer: Path, levels: list[int], seconds: float, cfg: dict, out: Path,
           threads: int, seed: int, api_key: str | None = None, validate: bool = True,
           request_format: str | None = None) -> list[dict]:
    report = out.with_suffix(".json")
    cmd = guidellm.command(target, model, tokenizer, levels, seconds, cfg["prompt_tokens"], cfg["output_tokens"],
                           report, seed, api_key=api_key, validate=validate, request_format=request_format)
    guidellm.run(cmd, out.with_suffix(".log"), threads, secret=api_key,
                 timeout=len(levels) * (seconds + 30) + 120)
    return guidellm.parse(report)


def brief(rows: list[dict]) -> list[dict]:
    return [{"streams": r["streams"], "output_tokens_per_s": round(r["output_tokens_per_s"] or 0, 2),
             "latency_p50_s": r["latency_s"].get("p50"), "latency_p95_s": r["latency_s"].get("p95"),
             "ttft_p95_ms": r["ttft_ms"].get("p95"), "errored": r["requests"]["errored"]} for r in rows]


def python_server(gguf: Path, port: int, threads: int, ctx: int, log: Path):
    v = setup.ensure_venv("llamacpp-server")
    cmd = [v.python, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1", "--port", str(port),
           "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", str(ctx),
           "--model_alias", "model",
           # by default a new request interrupts the running one (truncated answers counted as throughput)
           "--interrupt_requests", "False"]
    return proc.background(cmd, log, env=proc.tool_env(threads))


def wait_http(url: str, timeout: float = 120) -> float:
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            status, _ = llama_cpp.http_json(url + "/v1/models", timeout=2)
            if status == 200:
                return time.time() - t0
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not come up in {timeout}s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default=str(REPO / "recipes" / "invoice-extraction.yaml"))
    ap.add_argument("--levels", default="1,2,4")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--parts", default="gateway,engines", help="gateway (vs direct), engines (vs llama-cpp-python)")
    a = ap.parse_args()
    r = recipe.load(a.recipe)
    serve = pipeline.cached_stage(r.data, "serve")
    if not serve:
        raise SystemExit(f"no cached serve stage for {a.recipe}: run `just run {a.recipe} --until serve` first")
    serving = deploy.load(serve.path("serving"))
    cfg, threads, seed = r.data["loadtest"], r.data["threads"], r.data["seed"]
    tokenizer = models.base_model_dir(r.data["base_model"])
    levels = [int(x) for x in a.levels.split(",")]
    summary = {"model": serving.get("model_type"), "threads": threads, "parallel": serving["parallel"],
               "levels": levels, "seconds_per_level": a.seconds}
    parts = a.parts.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        serving = {**serving, "fallback": None}  # the overhead of the gateway itself, one engine behind it
        if "gateway" in parts:
            gateway_vs_direct(serving, tokenizer, levels, a.seconds, cfg, tmp, threads, seed, summary)
        if "engines" in parts:
            engines_compared(serving, tokenizer, a.seconds, cfg, tmp, threads, seed, summary)
    print(json.dumps({"summary": summary}))
    print(f"cpu_count={os.cpu_count()} at {time.strftime('%Y-%m-%d %H:%M')}")


def gateway_vs_direct(serving, tokenizer, levels, seconds, cfg, tmp, threads, seed, summary) -> None:
    """The same ladder through the gateway and straight to the engine, each on a fresh deployment (both replay the
    same seeded prompts; a warm engine would serve the second from its prompt cache)."""
    with deploy.up(serving, tmp / "logs-gateway") as dep:
        via = ladder(dep.gateway_url, serving.get("served_model", "model"), tokenizer, levels, seconds, cfg,
                     tmp / "gateway", threads, seed, api_key=dep.api_key)
    with deploy.up(serving, tmp / "logs-direct") as dep:
        direct = ladder(dep.primary.url, dep.primary.model, tokenizer, levels, seconds, cfg, tmp / "direct",
                        threads, seed)
    print(json.dumps({"comparison": "gateway_vs_direct", "gateway": brief(via), "direct": brief(direct),
                      "overhead": overhead(via, direct)}), flush=True)
    summary["gateway_throughput_ratio"] = {o["streams"]: o["throughput_ratio"] for o in overhead(via, direct)}
    summary["gateway_added_p50_ms"] = {o["streams"]: o["added_latency_p50_ms"] for o in overhead(via, direct)}


def engines_compared(serving, tokenizer, seconds, cfg, tmp, threads, seed, summary) -> None:
    """llama-server (4 slots, continuous batching) vs llama-cpp-python's server (one sequence at a time), same GGUF
    and threads, plain-text completions for both (llama-cpp-python's chat formatter fails on content-part lists)."""
    gguf = Path(serving["primary"]["gguf"])
    engines = {}
    with llama_cpp.serve(gguf, tmp / "llama-server.log", threads, parallel=max(4, serving["parallel"]),
                         ctx_size=serving["ctx_size"], alias="model") as (server, _):
        engines["llama-server"] = brief(ladder(server.url, "model", tokenizer, [1, 4], seconds, cfg,
                                               tmp / "llama-server", threads, seed, request_format="/v1/completions"))
    port = llama_cpp.free_port()
    with python_server(gguf, port, threads, serving["ctx_size"] * 4, tmp / "llama-cpp-python.log"):
        url = f"http://127.0.0.1:{port}"
        wait_http(url)
        engines["llama-cpp-python"] = brief(ladder(url, "model", tokenizer, [1, 4], seconds, cfg,
                                                   tmp / "llama-cpp-python", threads, seed, validate=False,
                                                   request_format="/v1/completions"))
    print(json.dumps({"comparison": "llama_server_vs_llama_cpp_python", **engines}), flush=True)
    for i, streams in enumerate((1, 4)):
        ls, lp = engines["llama-server"][i], engines["llama-cpp-python"][i]
        summary[f"llama_server_over_python_tok_s_at_{streams}"] = round(
            ls["output_tokens_per_s"] / lp["output_tokens_per_s"], 2) if lp["output_tokens_per_s"] else None


if __name__ == "__main__":
    main()
