"""SGLang adapter: the GPU serving engine. Builds the launch commands (one `sglang.launch_server` per replica,
tensor parallel from the recipe, and `sglang_router.launch_router` in front when there are several replicas);
runs them only where CUDA and the sglang package exist (never on the CPU machines this project is developed on).

SGLang serves the merged Hugging Face model (the f16 weights the GGUF quants were made from): the GGUF quant
chosen for llama-server does not apply to it."""
from __future__ import annotations

import importlib.util
import shutil


def available() -> bool:
    return shutil.which("nvidia-smi") is not None and importlib.util.find_spec("sglang") is not None


def launch_command(serving: dict, port: int) -> list[str]:
    sg = serving.get("sglang") or {}
    model = serving["primary"].get("hf_dir")
    if not model:
        raise ValueError("SGLang serves a Hugging Face model directory; this deployment has only a GGUF "
                         f"({serving['primary']['gguf']})")
    cmd = ["python", "-m", "sglang.launch_server", "--model-path", model, "--host", "127.0.0.1",
           "--port", str(port), "--tp-size", str(sg.get("tp_size", 1)),
           "--served-model-name", serving["primary"]["alias"], "--context-length", str(serving["ctx_size"]),
           "--max-running-requests", str(sg.get("max_running_requests") or serving["parallel"]), "--enable-metrics"]
    if sg.get("mem_fraction_static") is not None:
        cmd += ["--mem-fraction-static", str(sg["mem_fraction_static"])]
    return cmd + [str(a) for a in sg.get("extra_args", [])]


def router_command(worker_urls: list[str], port: int, policy: str = "cache_aware") -> list[str]:
    return ["python", "-m", "sglang_router.launch_router", "--worker-urls", *worker_urls,
            "--policy", policy, "--host", "127.0.0.1", "--port", str(port)]


def plan(serving: dict, ports: list[int], router_port: int) -> dict:
    """Every process a GPU deployment starts: replicas (each with its own CUDA_VISIBLE_DEVICES slice of
    tp_size GPUs) and, for more than one replica, the router the gateway then talks to."""
    sg = serving.get("sglang") or {}
    tp = sg.get("tp_size", 1)
    replicas = [{"command": launch_command(serving, p), "url": f"http://127.0.0.1:{p}",
                 "env": {"CUDA_VISIBLE_DEVICES": ",".join(str(i * tp + j) for j in range(tp))}}
                for i, p in enumerate(ports[:serving["replicas"]])]
    router = None
    if len(replicas) > 1:
        router = {"command": router_command([r["url"] for r in replicas], router_port,
                                            sg.get("router_policy", "cache_aware")),
                  "url": f"http://127.0.0.1:{router_port}"}
    return {"replicas": replicas, "router": router,
            "endpoint": router["url"] if router else replicas[0]["url"], "gpus": tp * len(replicas)}
