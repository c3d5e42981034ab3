"""quantize: llama-quantize the chosen model's f16 GGUF (from the eval stage) to each recipe type,
and the base model's too (the deployment's fallback model)."""
from __future__ import annotations

import time

from runner.adapters import llama_cpp
from runner.stage import Context, Result, StageError

SECTIONS = ("quantize", "threads")
INPUTS = ("eval",)
CODE = ("runner/adapters/llama_cpp.py",)
TOOLS = ("llama",)


def run(ctx: Context) -> Result:
    cfg = ctx.section("quantize")
    ev = ctx.inputs["eval"]
    if f"{cfg['model']}-f16" not in ev.artifacts:
        raise StageError(f"quantize.model '{cfg['model']}' has no f16 GGUF from the eval stage; "
                         f"add it to eval.models (and use eval.backend: llama-server)")
    f16 = ev.path(f"{cfg['model']}-f16")
    files = {"f16": {"path": str(f16), "bytes": f16.stat().st_size}}
    artifacts = {}
    for qtype in cfg["types"]:
        ctx.progress(f"{cfg['model']} -> {qtype}")
        dst = ctx.out / f"{cfg['model']}-{qtype}.gguf"
        t0 = time.time()
        llama_cpp.quantize(f16, dst, qtype, ctx.log(f"quantize-{qtype}.log"), ctx.threads)
        files[qtype] = {"path": dst.name, "bytes": dst.stat().st_size, "seconds": round(time.time() - t0, 2),
                        "ratio_vs_f16": round(dst.stat().st_size / f16.stat().st_size, 3)}
        artifacts[qtype] = dst.name
    fallback = None
    smallest = min(cfg["types"], key=lambda t: files[t]["bytes"])
    if "base-f16" in ev.artifacts:
        dst = ctx.out / f"base-{smallest}.gguf"
        ctx.progress(f"base -> {smallest} (fallback model)")
        llama_cpp.quantize(ev.path("base-f16"), dst, smallest, ctx.log(f"quantize-base-{smallest}.log"), ctx.threads)
        artifacts["fallback"] = dst.name
        fallback = {"path": dst.name, "type": smallest, "bytes": dst.stat().st_size}
    return Result(metrics={"model": cfg["model"], "files": files, "smallest": smallest, "fallback": fallback},
                  artifacts=artifacts,
                  notes=[f"{t}: {files[t]['bytes'] / 1e6:.1f} MB" for t in cfg["types"]])
