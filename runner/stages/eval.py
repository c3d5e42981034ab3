"""eval: score base and tuned models with lm-eval on the test split, through the serving engine.

Each model is converted to GGUF f16 (llama.cpp's converter), served by llama-server on a free loopback
port, and scored by lm-eval's local-chat-completions with concurrent requests: what is evaluated is what
is deployed. backend: hf scores the HF folder in process instead (slow on CPU, for GPU users).
"""
from __future__ import annotations

import json
import re
import time
import urllib.request

from runner import models
from runner.adapters import llama_cpp, lm_eval
from runner.stage import Context, Result, StageError

SECTIONS = ("eval", "base_model", "seed", "threads", "data")
INPUTS = ("data", "train")
CODE = ("runner/adapters/llama_cpp.py", "runner/adapters/lm_eval.py", "evals/invoice_extraction/utils.py",
        "evals/invoice_extraction/invoice_extraction.yaml")
TOOLS = ("ml", "llama")


def fingerprint(recipe: dict) -> str:
    return models.fingerprint(recipe["base_model"])


def model_dir(ctx: Context, name: str):
    if name == "base":
        return models.base_model_dir(ctx.section("base_model"))
    train = ctx.inputs["train"]
    if name not in train.artifacts:
        raise StageError(f"eval.models names '{name}', which the train stage did not produce "
                         f"(trained: {', '.join(sorted(k for k in train.metrics))}; add it to train.variants)")
    return train.path(name)


def scrape_tokens(url: str) -> dict:
    """Prompt/predicted token counters from llama-server's Prometheus /metrics."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for key in ("prompt_tokens_total", "tokens_predicted_total"):
        m = re.search(rf"^llamacpp:{key}\s+([\d.e+]+)", text, re.M)
        if m:
            out[key] = float(m.group(1))
    return out


def run(ctx: Context) -> Result:
    cfg = ctx.section("eval")
    system_prompt = ctx.section("data")["system_prompt"]
    test_file = ctx.inputs["data"].path("test")
    task_dir = ctx.out / "tasks"
    for task in cfg["tasks"]:
        lm_eval.write_task(task, test_file, task_dir, cfg["max_gen_tokens"])
    metrics: dict = {"models": {}, "backend": cfg["backend"]}
    artifacts: dict = {"tasks": "tasks"}
    for name in cfg["models"]:
        hf_dir = model_dir(ctx, name)
        out = ctx.out / name
        out.mkdir(parents=True)
        t0 = time.time()
        if cfg["backend"] == "llama-server":
            ctx.progress(f"{name}: converting to GGUF f16")
            gguf = llama_cpp.convert(hf_dir, out / "model-f16.gguf", ctx.log(f"convert-{name}.log"))
            artifacts[f"{name}-f16"] = f"{name}/model-f16.gguf"
            convert_s = time.time() - t0
            server_log = ctx.log(f"llama-server-{name}.log")
            with llama_cpp.serve(gguf, server_log, ctx.threads, parallel=cfg["concurrency"], ctx_size=cfg["ctx_size"],
                                 alias=name) as (server, ready_s):
                ctx.progress(f"{name}: llama-server ready in {ready_s:.1f}s; scoring")
                cmd = lm_eval.command_server(cfg["tasks"], task_dir, server.url, name, cfg["concurrency"],
                                             system_prompt, out / "lm_eval", cfg["limit"], ctx.seed)
                t1 = time.time()
                lm_eval.run(cmd, ctx.log(f"lm-eval-{name}.log"), ctx.threads,
                            on_line=lambda l, n=name: ctx.progress(f"{n}: {l[-90:]}") if "%" in l else None)
                score_s = time.time() - t1
                tokens = scrape_tokens(server.url)
            timing = {"convert_s": round(convert_s, 1), "server_ready_s": round(ready_s, 2),
                      "score_s": round(score_s, 1), **tokens}
        else:
            cmd = lm_eval.command_hf(cfg["tasks"], task_dir, hf_dir, system_prompt, out / "lm_eval", cfg["limit"],
                                     ctx.seed)
            lm_eval.run(cmd, ctx.log(f"lm-eval-{name}.log"), ctx.threads)
            timing = {"score_s": round(time.time() - t0, 1)}
        per_task = {}
        for task in cfg["tasks"]:
            task_metrics, samples = lm_eval.read_results(out / "lm_eval", task, ctx.log(f"lm-eval-{name}.log"))
            answers = [s.get("filtered_resps", [""])[0] if s.get("filtered_resps") else "" for s in samples]
            if samples and not any(str(a).strip() for a in answers):
                raise StageError(f"model '{name}' answered every {task} item with empty text; "
                                 f"see {ctx.log(f'llama-server-{name}.log')}", log=ctx.log(f"lm-eval-{name}.log"))
            per_task[task] = {**task_metrics, "samples": len(samples)}
            (out / f"samples_{task}.jsonl").write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
            artifacts[f"{name}-samples-{task}"] = f"{name}/samples_{task}.jsonl"
        metrics["models"][name] = {"tasks": per_task, "seconds": round(time.time() - t0, 1), **timing}
    # Differences against base, per task metric.
    if "base" in metrics["models"]:
        base = metrics["models"]["base"]["tasks"]
        metrics["delta_vs_base"] = {
            m: {t: {k: round(v - base[t][k], 4) for k, v in tm.items() if isinstance(v, (int, float)) and k in base[t]
                    and k != "samples"} for t, tm in d["tasks"].items()}
            for m, d in metrics["models"].items() if m != "base"}
    notes = []
    for m, d in metrics["models"].items():
        t = d["tasks"].get("invoice_extraction")
        if t:
            notes.append(f"{m}: field_f1 {t['field_f1']:.3f} json_valid {t['json_valid']:.2f}")
    return Result(metrics=metrics, artifacts=artifacts, notes=notes)
