"""serve: pick the deployment model, write serving.json, and prove the deployment comes up and answers
(start it, wait for readiness, one real task request per endpoint, stop it)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from runner import deploy
from runner.adapters import llama_cpp
from runner.stage import Context, Result, StageError

SECTIONS = ("serve", "threads", "data")
INPUTS = ("data", "train", "eval", "quantize")
CODE = ("runner/deploy.py", "runner/adapters/llama_cpp.py", "runner/adapters/sglang.py")
TOOLS = ("llama",)


def choose_model(cfg: dict, quant) -> tuple[str, object]:
    choice = cfg["model"]
    if choice == "chosen":
        choice = quant.metrics.get("chosen", quant.metrics["smallest"])
    if choice == "smallest":
        choice = quant.metrics["smallest"]
    if choice == "f16":
        return "f16", Path(quant.metrics["files"]["f16"]["path"])
    if choice not in quant.metrics["files"]:
        raise StageError(f"serve.model '{cfg['model']}' is not among the quantized models "
                         f"({', '.join(quant.metrics['files'])}, chosen, smallest)")
    return choice, quant.path(choice)


def run(ctx: Context) -> Result:
    cfg = ctx.section("serve")
    quant = ctx.inputs["quantize"]
    qtype, gguf = choose_model(cfg, quant)
    model_name = quant.metrics["model"]
    hf_dir = ctx.inputs["train"].path(model_name) if model_name in ctx.inputs["train"].artifacts else None
    fallback = quant.path("fallback") if "fallback" in quant.artifacts else None
    serving = deploy.spec(cfg, gguf, hf_dir, fallback, ctx.threads)
    serving["model_type"] = qtype
    serving["system_prompt"] = ctx.section("data")["system_prompt"]
    (ctx.out / "serving.json").write_text(json.dumps(serving, indent=2) + "\n")
    doc = json.loads(ctx.inputs["data"].path("test").read_text().splitlines()[0])
    checks = []
    with deploy.start(serving, ctx.logs) as endpoints:
        for ep in endpoints:
            t0 = time.time()
            status, body = llama_cpp.http_json(ep.url + "/v1/chat/completions", {
                "messages": [{"role": "system", "content": serving["system_prompt"]},
                             {"role": "user", "content": doc["document"]}],
                "max_tokens": 200, "temperature": 0}, timeout=120)
            latency = time.time() - t0
            text = body.get("choices", [{}])[0].get("message", {}).get("content", "") if status == 200 else ""
            try:
                parsed = isinstance(json.loads(text), dict)
            except (json.JSONDecodeError, TypeError):
                parsed = False
            if status != 200:
                raise StageError(f"{ep.role} endpoint {ep.url} answered HTTP {status}: {body}", log=ctx.logs)
            checks.append({"role": ep.role, "url": ep.url, "ready_s": round(ep.ready_s, 2),
                           "task_latency_s": round(latency, 2), "answer_is_json": parsed,
                           "completion_tokens": body.get("usage", {}).get("completion_tokens")})
            ctx.progress(f"{ep.role} ready in {ep.ready_s:.1f}s, task answered in {latency:.1f}s")
    return Result(metrics={"model_type": qtype, "model": model_name, "endpoints": checks,
                           "engine": cfg["engine"], "replicas": cfg["replicas"], "parallel": cfg["parallel"]},
                  artifacts={"serving": "serving.json"},
                  notes=[f"{model_name} {qtype} on {cfg['engine']} x{cfg['replicas']}"])
