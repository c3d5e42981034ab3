"""What each llama.cpp build configuration costs on this CPU: the configurations set-up's ladder would try here,
plus ggml's own default (`GGML_NATIVE=ON`, the compiler's -march=native), each run through llama-bench on the same
GGUFs with the same settings in one session. A configuration whose binary crashes is reported as such.

    python3 -m runner setup llama && python3 benchmarks/llama_builds.py [--types f16,q8_0,q4_k_m]
        [--threads 2] [--prompt 256] [--gen 64] [--reps 3]

Builds in its own tree beside the kept build (`<llama.cpp cache>/bench-build`): the first call compiles everything
once (minutes); then each configuration recompiles only ggml-cpu. The kept build is never touched. Prints one JSON
line per configuration and type (prompt and generation tokens/s, mean and stddev over --reps) and the ratio to the
kept build.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from runner import llama_build, setup  # noqa: E402


def bench(binary: Path, gguf: Path, a, log: Path) -> dict:
    cmd = [binary, "-m", gguf, "-p", a.prompt, "-n", a.gen, "-r", a.reps, "-t", a.threads, "-o", "json"]
    out = log.with_suffix(".json")
    rc, _ = llama_build.run_tool(cmd, log, timeout=1800, stdout=out)
    if rc != 0:
        return {"error": llama_build.describe_exit(rc)}
    return llama_build.bench_speeds(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", default="f16,q8_0,q4_k_m")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    lc = setup.ensure_llama_cpp()
    kept = lc.record()["chosen"]
    model = setup.ensure_base_gguf(lc.selftest_model)
    rungs = [r for r in llama_build.plan(list(lc.builds), llama_build.cpu_flag_set(), platform.machine())
             if not r.skipped]
    rungs.append(llama_build.Rung("march-native (ggml default)", ["-DGGML_NATIVE=ON"], ["native"]))
    tree, logs = lc.path / "bench-build", Path(tempfile.mkdtemp(prefix="forge-llama-builds-"))
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ggufs = {}
        for t in a.types.split(","):
            ggufs[t] = Path(tmp) / f"{t}.gguf"
            subprocess.run([lc.bin("llama-quantize"), "--allow-requantize", model, ggufs[t], t.upper(), str(a.threads)],
                           check=True, capture_output=True)
        for r in rungs:
            t0 = time.time()
            setup.run_logged(["cmake", "-S", lc.source, "-B", tree, *llama_build.BASE_CMAKE, *r.cmake], logs / "build.log")
            setup.run_logged(["cmake", "--build", tree, "-j", str(os.cpu_count() or 2), "--target", "llama-bench"],
                             logs / "build.log")
            binary = Path(tmp) / f"llama-bench-{len(results)}"
            shutil.copy2(tree / "bin" / "llama-bench", binary)
            built_s = round(time.time() - t0, 1)
            results[r.name] = {}
            for t, g in ggufs.items():
                row = bench(binary, g, a, logs / f"{len(results)}-{t}.log")
                results[r.name][t] = row
                print(json.dumps({"build": r.name, "kept": r.name == kept, "type": t, "build_s": built_s, **row}),
                      flush=True)
    base = results.get(kept, {})
    for name, rows in results.items():
        for t, row in rows.items():
            if "error" in row or "error" in base.get(t, {"error": 1}):
                continue
            print(json.dumps({"build": name, "type": t, "vs_kept": {
                k: round(row[k] / base[t][k], 3) for k in ("prompt_tokens_per_s", "gen_tokens_per_s")}}))
    print(f"logs: {logs}", file=sys.stderr)


if __name__ == "__main__":
    main()
