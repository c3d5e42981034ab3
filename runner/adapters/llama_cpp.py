"""llama.cpp adapter: HF -> GGUF conversion, llama-quantize, llama-perplexity (KL divergence), llama-bench and
llama-batched-bench, and llama-server processes.

Quirks kept here: thread count is always explicit (-t/-tb; on 2 cores an oversubscribed server decodes
>10x slower); servers bind to 127.0.0.1 only; readiness means /health answers 200 *and* one real
completion returns (llama-server's /health is ok even while every slot is busy).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from runner import env, llama_build, proc
from runner.llama_build import QUANT_TYPES, free_port
from runner.stage import StageError


def convert(hf_dir: Path, out_file: Path, log: Path, outtype: str = "f16") -> Path:
    """HF folder -> GGUF with llama.cpp's own converter (vendored source, its own gguf-py)."""
    lc = env.llama_cpp()
    ml = env.venv("ml")
    e = proc.tool_env(os.cpu_count() or 1, {"PYTHONPATH": str(lc.gguf_py), "NO_LOCAL_GGUF": ""})
    proc.run([ml.python, lc.converter, hf_dir, "--outfile", out_file, "--outtype", outtype], log, env=e,
             what=f"convert_hf_to_gguf ({hf_dir.name})")
    if not out_file.exists():
        raise StageError(f"convert_hf_to_gguf wrote no file {out_file}", log=log)
    return out_file


LEGACY_TYPES = ("q5_1", "q4_1")  # not offered to recipes; measured by benchmarks/quant_kld.py


def quantize(src: Path, dst: Path, qtype: str, log: Path, threads: int, imatrix: Path | None = None,
             pure: bool = False, token_embedding_type: str | None = None) -> Path:
    """llama-quantize `src` to `qtype`. pure: every tensor to that type (no k-quant mixture);
    token_embedding_type: keep the token embeddings (SmolLM2's tied output too) at that type."""
    if qtype not in QUANT_TYPES + LEGACY_TYPES:
        raise StageError(f"unknown quant type '{qtype}' for {src.name}; supported: {', '.join(QUANT_TYPES)}")
    extra = ["--imatrix", imatrix] if imatrix else []
    extra += ["--pure"] if pure else []
    extra += ["--token-embedding-type", token_embedding_type] if token_embedding_type else []
    proc.run([env.llama_cpp().bin("llama-quantize"), *extra, src, dst, qtype.upper(), str(threads)], log,
             what=f"llama-quantize {qtype}")
    return dst


def quant_mix(log: Path) -> dict:
    """What llama-quantize actually wrote, from its log: tensors per type (f32 norms kept as they are) and how
    many fell back from the requested k-quant (rows not divisible by 256: SmolLM2's 576-wide layers)."""
    types: dict[str, int] = {}
    fallbacks = 0
    for line in log.read_text(errors="replace").splitlines():
        m = re.search(r"converting to (\w+)", line) or re.search(r"type =\s+(\w+), size", line)
        if line.startswith("[") and m:
            types[m.group(1)] = types.get(m.group(1), 0) + 1
        if "falling back to" in line:
            fallbacks += 1
    return {"tensor_types": dict(sorted(types.items(), key=lambda kv: -kv[1])), "fallbacks": fallbacks}


def imatrix(gguf: Path, text_file: Path, out: Path, log: Path, threads: int, chunks: int, ctx_size: int) -> Path:
    """An importance matrix of `gguf` over calibration text (llama-imatrix, built on first use)."""
    from runner import setup
    binary = setup.ensure_llama_target("llama-imatrix")
    proc.run([binary, "-m", gguf, "-f", text_file, "-o", out, "-t", str(threads), "--chunks", str(chunks),
              "-c", str(ctx_size), "--no-ppl"], log, what="llama-imatrix")
    if not out.exists():
        raise StageError(f"llama-imatrix wrote no {out}", log=log)
    return out


def kl_divergence(gguf: Path, text_file: Path, base: Path, log: Path, threads: int, ctx_size: int = 512,
                  reference: bool = False) -> dict:
    """llama-perplexity over `text_file`. reference: save this model's logits to `base` (the f16 run); otherwise
    compare this model's token distributions with `base`'s: KL divergence, same top token, perplexity ratio."""
    from runner import setup
    binary = setup.ensure_llama_target("llama-perplexity")
    mode = [] if reference else ["--kl-divergence"]
    proc.run([binary, "-m", gguf, "-f", text_file, "-c", str(ctx_size), "-t", str(threads), "-tb", str(threads),
              "--kl-divergence-base", base, *mode], log, what=f"llama-perplexity {gguf.name}")
    if reference:
        if not base.exists():
            raise StageError(f"llama-perplexity wrote no logits file {base}", log=log)
        return {}
    stats = kld_stats(log.read_text(errors="replace"))
    if "mean_kld" not in stats:
        raise StageError(f"llama-perplexity printed no KL divergence statistics for {gguf.name}", log=log)
    return stats


def kld_stats(text: str) -> dict:
    """llama-perplexity's KL-divergence summary: mean KLD (nats per token), its 99th percentile and maximum,
    the share of tokens whose most likely next token is the reference's, and PPL(quant)/PPL(reference)."""
    pats = {"mean_kld": r"Mean\s+KLD:\s+(-?[\d.]+)", "kld_p99": r"99\.0%\s+KLD:\s+(-?[\d.]+)",
            "kld_max": r"Maximum KLD:\s+(-?[\d.]+)", "same_top_pct": r"Same top p:\s+([\d.]+)",
            "same_top_pct_se": r"Same top p:\s+[\d.]+\s+±\s+([\d.]+)",
            "ppl_ratio": r"Mean PPL\(Q\)/PPL\(base\)\s+:\s+([\d.]+)", "rms_dp_pct": r"RMS Δp\s+:\s+([\d.]+)"}
    out = {}
    for key, pat in pats.items():
        m = re.search(pat, text)
        if m:
            out[key] = float(m.group(1))
    return out


def crashed(server: Server) -> str | None:
    """A sentence saying the server died (with its exit code and log tail), or None while it runs."""
    p = server.process
    if p is None or p.poll() is None:
        return None
    return (f"llama-server for {server.gguf.name} (alias {server.alias}) exited with code {p.returncode}; "
            f"its log {server.log}:\n{proc.tail(server.log) if server.log else ''}")


def peak_rss_mb(server: Server) -> float | None:
    """The running server's peak resident memory (VmHWM), in MB; None where /proc cannot tell."""
    try:
        for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, AttributeError, ValueError):
        pass
    return None


def bench(gguf: Path, log: Path, threads: int, prompt_tokens: int, gen_tokens: int, repetitions: int) -> dict:
    """llama-bench prompt-processing and generation speed (tokens/s, mean and stddev over repetitions)."""
    cmd = [env.llama_cpp().bin("llama-bench"), "-m", gguf, "-p", str(prompt_tokens), "-n", str(gen_tokens),
           "-t", str(threads), "-r", str(repetitions), "-o", "json"]
    out_file = log.with_suffix(".json")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as err, open(out_file, "w") as out:
        err.write("$ " + " ".join(map(str, cmd)) + "\n")
        err.flush()
        rc = subprocess.run([str(c) for c in cmd], stdout=out, stderr=err).returncode
    if rc != 0:
        raise StageError(f"llama-bench could not run {gguf.name} ({llama_build.describe_exit(rc)}; the llama.cpp "
                         f"build record: {env.llama_cpp().build_record})\n{proc.tail(log)}", log=log)
    try:
        rows = json.loads(out_file.read_text())
    except json.JSONDecodeError:
        raise StageError(f"llama-bench printed no JSON for {gguf.name}; see {out_file}", log=log) from None
    return {"model_bytes": rows[0]["model_size"], "params": rows[0]["model_n_params"],
            "bits_per_weight": round(rows[0]["model_size"] * 8 / rows[0]["model_n_params"], 3), "threads": threads,
            **llama_build.bench_speeds(out_file.read_text())}


def batched_bench(gguf: Path, log: Path, threads: int, prompt_tokens: int, gen_tokens: int,
                  sequences: list[int]) -> list[dict]:
    """llama-batched-bench (built on first use): for each B in `sequences`, B sequences prefill `prompt_tokens`
    each and then decode `gen_tokens` each in lockstep, in one context with nothing else running. What batching
    alone can give on this machine: B=1 is one stream, every B finishes B documents in its `t` seconds."""
    from runner import setup
    binary = setup.ensure_llama_target("llama-batched-bench")
    n = sorted(set(sequences))
    ctx = max(n) * (prompt_tokens + gen_tokens) + 256
    proc.run([binary, "-m", gguf, "-t", str(threads), "-tb", str(threads), "-c", str(ctx), "-b", "2048",
              "-npp", str(prompt_tokens), "-ntg", str(gen_tokens), "-npl", ",".join(map(str, n)),
              "--output-format", "jsonl"], log, what=f"llama-batched-bench {gguf.name}")
    rows = batched_bench_rows(log.read_text(errors="replace"))
    if sorted(r["sequences"] for r in rows) != n:
        raise StageError(f"llama-batched-bench printed {len(rows)} result lines for {len(n)} batch sizes "
                         f"({gguf.name})", log=log)
    return rows


def batched_bench_rows(text: str) -> list[dict]:
    """llama-batched-bench's `--output-format jsonl` lines -> per batch size: seconds to prefill and to decode,
    tokens/s, and documents/s (B documents in the whole time)."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{") or '"pl"' not in line:
            continue
        r = json.loads(line)
        rows.append({"sequences": r["pl"], "prompt_tokens": r["pp"], "gen_tokens": r["tg"],
                     "prompt_s": round(r["t_pp"], 3), "gen_s": round(r["t_tg"], 3), "seconds": round(r["t"], 3),
                     "prompt_tokens_per_s": round(r["speed_pp"], 1), "gen_tokens_per_s": round(r["speed_tg"], 1),
                     "documents_per_s": round(r["pl"] / r["t"], 4) if r["t"] > 0 else None})
    return rows


@dataclass
class Server:
    gguf: Path
    port: int
    threads: int
    parallel: int
    ctx_size: int
    alias: str
    process: object = None  # the running Popen, set by serve()
    log: Path | None = None
    extra_args: tuple = ()  # more llama-server flags from the recipe (serve.engine_args)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [str(env.llama_cpp().bin("llama-server")), "-m", str(self.gguf), "--host", "127.0.0.1",
                "--port", str(self.port), "-t", str(self.threads), "-tb", str(self.threads),
                "--parallel", str(self.parallel), "-c", str(self.ctx_size * self.parallel), "--cont-batching",
                "--metrics", "--alias", self.alias, "--no-webui", "--jinja", *map(str, self.extra_args)]


def http_json(url: str, body: dict | None = None, timeout: float = 30.0) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"{}")
        except json.JSONDecodeError:
            return e.code, {}


def wait_ready(server: Server, process, log: Path, timeout: float) -> float:
    """Seconds until /health is 200 and one real completion comes back."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if process.poll() is not None:
            raise StageError(f"llama-server for {server.gguf.name} exited with code {process.returncode} "
                             f"before it was ready\n{proc.tail(log)}", log=log)
        try:
            status, _ = http_json(server.url + "/health", timeout=2)
            if status == 200:
                status, body = http_json(server.url + "/v1/chat/completions", {
                    "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "temperature": 0}, timeout=60)
                if status == 200 and body.get("choices"):
                    return time.time() - t0
                if status != 503:  # 503 = still loading; anything else will not get better by waiting
                    raise StageError(f"llama-server for {server.gguf.name} is up but cannot generate: HTTP {status} "
                                     f"{json.dumps(body)[:300]}", log=log)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.25)
    raise StageError(f"llama-server for {server.gguf.name} not ready after {timeout:.0f}s", log=log)


@contextlib.contextmanager
def serve(gguf: Path, log: Path, threads: int, parallel: int = 1, ctx_size: int = 4096, alias: str = "model",
          timeout: float = 120.0) -> Iterator[tuple[Server, float]]:
    """A llama-server on a free loopback port; yields (server, seconds to ready); stopped on exit."""
    server = Server(gguf, free_port(), threads, parallel, ctx_size, alias, log=log)
    with proc.background(server.command(), log) as p:
        server.process = p
        ready_s = wait_ready(server, p, log, timeout)
        yield server, ready_s
