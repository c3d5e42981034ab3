"""How llama.cpp is built for the CPU it lands on: a ladder of build configurations, each proven by a self-test.

Why: `-march=native` (ggml's default) compiles every instruction set the CPU reports, AMX included, and on an AMX
Xeon with GCC 12 every quantized model died with SIGILL on its first batched prompt (the compiler drops ggml's tile
configuration: docs/dossiers/llama-cpp-amx-sigill.md). A build can only be trusted once it ran. So set-up builds the first configuration of
`[tool.forge.llama_cpp] builds` that this CPU can take, then quantizes a small real model to every quant type a
recipe can ask for and runs each through llama-bench and a batched llama-server completion. Anything that crashes,
hangs or errs sends the ladder to the next, safer configuration (an incremental rebuild: only ggml-cpu is
compiled per configuration). What was tried and why the winner won is written to build.json beside the tools.

Stdlib only: it runs before any venv exists.
"""
from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# The quant types llama-quantize is asked for (the quantize stage's choices); the self-test runs every one.
QUANT_TYPES = ("q8_0", "q6_k", "q5_k_m", "q5_k_s", "q5_0", "q4_k_m", "q4_k_s", "q4_0", "q3_k_m", "q2_k")

# ggml's x86 instruction-set options (ggml/CMakeLists.txt) and the /proc/cpuinfo flags each one compiles for.
X86_ISA = {
    "sse4_2": ("GGML_SSE42", ("sse4_2",)),
    "avx": ("GGML_AVX", ("avx",)),
    "avx2": ("GGML_AVX2", ("avx2",)),
    "fma": ("GGML_FMA", ("fma",)),
    "f16c": ("GGML_F16C", ("f16c",)),
    "bmi2": ("GGML_BMI2", ("bmi2",)),
    "avx_vnni": ("GGML_AVX_VNNI", ("avx_vnni",)),
    "avx512": ("GGML_AVX512", ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")),
    "avx512_vbmi": ("GGML_AVX512_VBMI", ("avx512vbmi",)),
    "avx512_vnni": ("GGML_AVX512_VNNI", ("avx512_vnni",)),
    "avx512_bf16": ("GGML_AVX512_BF16", ("avx512_bf16",)),
    "amx_tile": ("GGML_AMX_TILE", ("amx_tile",)),
    "amx_int8": ("GGML_AMX_INT8", ("amx_int8",)),
    "amx_bf16": ("GGML_AMX_BF16", ("amx_bf16",)),
}
# Every configuration: static tools, no tests/examples, and nothing fetched while building (llama-server's web UI
# is otherwise downloaded from huggingface.co at build time; we run it with --no-webui).
BASE_CMAKE = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
              "-DLLAMA_BUILD_EXAMPLES=OFF", "-DBUILD_SHARED_LIBS=OFF", "-DGGML_CCACHE=OFF",
              "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_BUILD_UI=OFF"]
FORCE_ENV = "FORGE_LLAMA_BUILD"
# ~170 tokens of plain prose: long enough that prompt processing runs as one batched matrix multiply
PROMPT = ("The quarterly report lists every invoice received by the finance team, the supplier who sent it, the "
          "date it arrived, the amount due in its own currency and the date by which it must be paid. ") * 5


class BuildFailed(SystemExit):
    """No configuration survived; the message lists each one with its flags and what went wrong."""


@dataclass
class Rung:
    name: str
    cmake: list[str]              # configuration-specific -D options
    isa: list[str]                # instruction sets it compiles for ("native" where the compiler decides)
    skipped: str | None = None    # why it is not tried on this machine


def cpu_flag_set(cpuinfo: str | None = None) -> set[str]:
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def plan(configs: list[dict], flags: set[str], machine: str, start: str | None = None) -> list[Rung]:
    """The ladder for this CPU: each configuration's cmake options, or why it is skipped here."""
    names = [c["name"] for c in configs]
    if start and start not in names:
        raise SystemExit(f"[setup] ${FORCE_ENV}={start} names no llama.cpp build; choose from: {', '.join(names)}")
    x86 = machine in ("x86_64", "AMD64", "i686", "i386")
    have = [k for k, (_, needs) in X86_ISA.items() if all(f in flags for f in needs)] if x86 else []
    rungs: list[Rung] = []
    seen: dict[tuple, str] = {}
    reached = start is None
    for c in configs:
        reached = reached or c["name"] == start
        if c["isa"] == "all":
            isa = [k for k in have if k not in c.get("without", ())]
        else:
            isa = list(c["isa"])
        rung = Rung(c["name"], [], isa)
        if not reached:
            rung.skipped = f"${FORCE_ENV}={start} starts the ladder further down"
        elif not x86:
            if c["isa"] == "all":
                rung.cmake, rung.isa = ["-DGGML_NATIVE=ON"], ["native"]
            elif isa:
                rung.skipped = f"x86 instruction sets on a {machine} CPU"
            else:
                rung.cmake = ["-DGGML_NATIVE=OFF"]
        else:
            unknown = [k for k in isa if k not in X86_ISA]
            lacking = [k for k in isa if k in X86_ISA and k not in have]
            if unknown:
                raise SystemExit(f"[setup] llama.cpp build '{c['name']}' names unknown instruction sets {unknown}; "
                                 f"known: {', '.join(X86_ISA)}")
            if lacking:
                rung.skipped = f"this CPU lacks {', '.join(lacking)}"
            rung.cmake = ["-DGGML_NATIVE=OFF"] + [f"-D{opt}={'ON' if k in isa else 'OFF'}"
                                                  for k, (opt, _) in X86_ISA.items()]
        if not rung.skipped:
            same = seen.get(tuple(rung.cmake))
            if same:
                rung.skipped = f"the same build as '{same}' on this CPU"
            else:
                seen[tuple(rung.cmake)] = rung.name
        rungs.append(rung)
    return rungs


def describe_exit(rc: int | None) -> str:
    if rc is None:
        return "hung (stopped after its time limit)"
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        what = {"SIGILL": " (illegal instruction)", "SIGSEGV": " (segmentation fault)", "SIGBUS": " (bus error)",
                "SIGFPE": " (arithmetic fault)", "SIGABRT": " (aborted)"}.get(name, "")
        return f"killed by {name}{what}"
    return f"exit code {rc}"


def run_tool(cmd: list, log: Path, timeout: float, stdout: Path | None = None) -> tuple[int | None, float]:
    """Run to completion (stderr, and stdout unless `stdout` names a file, appended to `log`): (exit code or None
    when it ran past `timeout` and was killed, seconds)."""
    t0 = time.time()
    with open(log, "a") as out, open(stdout or os.devnull, "w") as std:
        out.write("$ " + " ".join(map(str, cmd)) + "\n")
        out.flush()
        p = subprocess.Popen([str(c) for c in cmd], stdout=std if stdout else out, stderr=out,
                             start_new_session=True)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            rc = None
    return rc, round(time.time() - t0, 2)


def bench_speeds(output: str) -> dict:
    """llama-bench's `-o json` output -> prompt and generation tokens/s (mean and stddev over its repetitions)."""
    res = {}
    for r in json.loads(output):
        kind = "prompt" if r["n_prompt"] and not r["n_gen"] else "gen"
        res[f"{kind}_tokens_per_s"], res[f"{kind}_tokens_per_s_std"] = round(r["avg_ts"], 2), round(r["stddev_ts"], 2)
    return res


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict, timeout: float) -> tuple[int | None, dict | str]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")[:200]
    except (OSError, ValueError) as e:
        return None, f"{type(e).__name__}: {e}"


def serve_batched(server_bin: Path, gguf: Path, log: Path, threads: int, timeout: float) -> dict:
    """llama-server with two slots: two long prompts at once (batched prompt processing, then batched decode).
    Passes when both answer and the server is still alive."""
    port = free_port()
    cmd = [server_bin, "-m", gguf, "--host", "127.0.0.1", "--port", port, "-t", threads, "-tb", threads,
           "--parallel", 2, "-c", 2048, "--no-webui"]
    t0 = time.time()
    with open(log, "a") as out:
        out.write("$ " + " ".join(map(str, cmd)) + "\n")
        out.flush()
        p = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        while True:
            if p.poll() is not None:
                return {"ok": False, "error": f"llama-server {describe_exit(p.returncode)} while loading"}
            if time.time() - t0 > timeout:
                return {"ok": False, "error": "llama-server not healthy within its time limit"}
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        answers: list = [None, None]

        def ask(i: int) -> None:
            answers[i] = _post(base + "/completion", {"prompt": f"Request {i}. {PROMPT}", "n_predict": 8,
                                                      "temperature": 0, "cache_prompt": False}, timeout)
        threads_ = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
        for t in threads_:
            t.start()
        for t in threads_:
            t.join()
        if p.poll() is not None:
            return {"ok": False, "error": f"llama-server {describe_exit(p.returncode)} on a batched prompt"}
        bad = [a for a in answers if a[0] != 200 or not isinstance(a[1], dict) or "content" not in a[1]]
        if bad:
            return {"ok": False, "error": f"llama-server answered {bad[0][0]}: {str(bad[0][1])[:200]}"}
        prompt_tokens = [a[1].get("tokens_evaluated") for a in answers]
        return {"ok": True, "s": round(time.time() - t0, 2), "prompt_tokens": prompt_tokens}
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def selftest(bin_dir: Path, model: Path, quant_types: list[str], log_dir: Path, threads: int,
             timeout: float = 300.0) -> dict:
    """Every quant type of `model` through llama-quantize, llama-bench (a 64-token batched prompt, 4 generated
    tokens) and a batched llama-server completion. `passed` only when nothing crashed, hung or erred."""
    log_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    results: dict[str, dict] = {}
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="forge-selftest-") as tmp:
        for qt in quant_types:
            log = log_dir / f"{qt}.log"
            log.write_text("")
            q = Path(tmp) / f"selftest-{qt}.gguf"
            row: dict = {}
            rc, s = run_tool([bin_dir / "llama-quantize", "--allow-requantize", model, q, qt.upper(), threads],
                             log, timeout)
            row["quantize"] = {"ok": rc == 0, "s": s}
            if rc != 0:
                failures.append(f"llama-quantize {qt}: {describe_exit(rc)}")
                results[qt] = row
                continue
            bench_json = log_dir / f"{qt}-bench.json"
            rc, s = run_tool([bin_dir / "llama-bench", "-m", q, "-p", 64, "-n", 4, "-r", 1, "-t", threads,
                              "-o", "json"], log, timeout, stdout=bench_json)
            row["bench"] = {"ok": rc == 0, "s": s}
            if rc == 0:
                try:
                    row["bench"].update(bench_speeds(bench_json.read_text()))
                except (ValueError, KeyError, TypeError, IndexError):
                    row["bench"]["ok"] = False
                    failures.append(f"llama-bench {qt}: printed no JSON")
            else:
                failures.append(f"llama-bench {qt}: {describe_exit(rc)}")
            row["server"] = serve_batched(bin_dir / "llama-server", q, log, threads, timeout)
            if not row["server"]["ok"]:
                failures.append(f"llama-server {qt}: {row['server']['error']}")
            results[qt] = row
            q.unlink(missing_ok=True)
    return {"passed": not failures, "failures": failures, "quant_types": results, "threads": threads,
            "model": model.name, "seconds": round(time.time() - t0, 1)}


@dataclass
class Ladder:
    """Try each rung: build it, self-test it, stop at the first that passes."""
    rungs: list[Rung]
    build: Callable[[Rung], Path]           # -> the folder holding the built binaries; raises on a failed build
    test: Callable[[Rung, Path], dict]      # -> a selftest() result
    log: Callable[[str], None] = print
    tried: list[dict] = field(default_factory=list)

    def climb(self) -> dict:
        live = [r for r in self.rungs if not r.skipped]
        for r in self.rungs:
            entry = {"name": r.name, "cmake": r.cmake, "isa": r.isa}
            self.tried.append(entry)
            if r.skipped:
                entry["skipped"] = r.skipped
                continue
            self.log(f"llama.cpp build '{r.name}': {', '.join(r.isa) or 'no optional instruction sets'}")
            t0 = time.time()
            try:
                bin_dir = self.build(r)
            except SystemExit as e:
                entry.update(build_s=round(time.time() - t0, 1), passed=False, failures=[f"build failed: {e}"])
            else:
                entry["build_s"] = round(time.time() - t0, 1)
                self.log(f"self-testing '{r.name}' (every quant type through llama-bench and llama-server)")
                result = self.test(r, bin_dir)
                entry.update(passed=result["passed"], failures=result["failures"], selftest=result)
            if entry["passed"]:
                return {"chosen": r.name, "cmake": r.cmake, "isa": r.isa, "tried": self.tried,
                        "why": self.why(r.name)}
            later = live[live.index(r) + 1:]
            self.log(f"llama.cpp build '{r.name}' FAILED its self-test: {'; '.join(entry['failures'][:4])}"
                     + (f"; rebuilding with the next safer configuration, '{later[0].name}'" if later else ""))
        lines = [f"  {t['name']}: {t.get('skipped') or '; '.join(t['failures'][:6])}\n"
                 f"      cmake {' '.join(t['cmake']) or '(default)'}" for t in self.tried]
        raise BuildFailed("[setup] no llama.cpp build configuration passed its self-test on this CPU "
                          f"({platform.machine()}). Tried:\n" + "\n".join(lines) +
                          f"\n[setup] force one with ${FORCE_ENV}=<name>, or report the failures above.")

    def why(self, chosen: str) -> str:
        before = [t for t in self.tried if t["name"] != chosen]
        if not before:
            return "the first configuration; it passed its self-test"
        parts = [f"'{t['name']}' {t['skipped']}" if t.get("skipped") else
                 f"'{t['name']}' failed its self-test ({'; '.join(t['failures'][:2])})" for t in before]
        return "; ".join(parts)
