"""Score one GGUF with lm-eval through a llama-server started for it (the eval and quantize stages share
this): readiness awaited, each lm-eval invocation run against it, a crash named with the server's log, token
counters and the server's peak memory read before it is stopped."""
from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path
from typing import Callable

from runner.adapters import llama_cpp, lm_eval
from runner.stage import StageError


def scrape_tokens(url: str) -> dict:
    """Prompt/predicted token counters and the engine's seconds spent on each (summed over requests) from
    llama-server's Prometheus /metrics."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for key in ("prompt_tokens_total", "tokens_predicted_total", "prompt_seconds_total",
                "tokens_predicted_seconds_total"):
        m = re.search(rf"^llamacpp:{key}\s+([\d.e+]+)", text, re.M)
        if m:
            out[key] = float(m.group(1))
    return out


def score(gguf: Path, alias: str, runs: list[dict], tasks_dir: Path, out: Path, logs: Callable[[str], Path],
          progress: Callable[[str], None], *, threads: int, concurrency: int, ctx_size: int, limit: int,
          seed: int, samples: dict | None = None) -> dict:
    """runs: [{"name", "tasks", "system"}]; lm-eval writes under out/lm_eval/<name>. Returns timings,
    llama-server's token counters and its peak RSS."""
    timing: dict = {}
    t0 = time.time()
    with llama_cpp.serve(gguf, logs(f"llama-server-{alias}.log"), threads, parallel=concurrency, ctx_size=ctx_size,
                         alias=alias) as (server, ready_s):
        timing["server_ready_s"] = round(ready_s, 2)
        progress(f"{alias}: llama-server ready in {ready_s:.1f}s; scoring")
        for r in runs:
            log = logs(f"lm-eval-{alias}-{r['name']}.log")
            cmd = lm_eval.command_server(r["tasks"], tasks_dir, server.url, alias, concurrency, r["system"],
                                         out / "lm_eval" / r["name"], limit, seed, samples)
            t1 = time.time()
            try:
                lm_eval.run(cmd, log, threads,
                            on_line=lambda l, n=alias: progress(f"{n}: {l[-90:]}") if "%" in l else None)
            except StageError as e:
                died = llama_cpp.crashed(server)
                raise StageError(f"scoring model '{alias}' failed (lm-eval log {log}; server log {server.log}): "
                                 + (died or str(e)), log=log) from None
            if died := llama_cpp.crashed(server):
                raise StageError(f"scoring model '{alias}': {died}", log=server.log)
            timing[f"score_{r['name']}_s"] = round(time.time() - t1, 1)
        timing.update(scrape_tokens(server.url))
        timing["server_peak_rss_mb"] = llama_cpp.peak_rss_mb(server)
    timing["serve_and_score_s"] = round(time.time() - t0, 1)
    return timing


def combine(first: dict, second: dict) -> dict:
    """One model scored in two parts (two llama-server processes): times and token counters add up, the peak
    memory is the larger of the two peaks."""
    out = dict(first)
    for k, v in second.items():
        a = out.get(k)
        if isinstance(a, (int, float)) and isinstance(v, (int, float)):
            out[k] = max(a, v) if k == "server_peak_rss_mb" else round(a + v, 2)
        elif a is None:
            out[k] = v
    return out
