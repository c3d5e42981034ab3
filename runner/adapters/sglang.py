"""SGLang adapter: the GPU serving engine. Builds the launch commands; runs only where CUDA and the
sglang package exist (never on the CPU machines this project is developed on)."""
from __future__ import annotations

import importlib.util
import shutil


def available() -> bool:
    return shutil.which("nvidia-smi") is not None and importlib.util.find_spec("sglang") is not None


def launch_command(serving: dict, port: int, tp: int = 1) -> list[str]:
    model = serving["primary"].get("hf_dir") or serving["primary"]["gguf"]
    return ["python", "-m", "sglang.launch_server", "--model-path", model, "--host", "127.0.0.1",
            "--port", str(port), "--tp", str(tp), "--served-model-name", serving["primary"]["alias"],
            "--enable-metrics"]


def router_command(worker_urls: list[str], port: int) -> list[str]:
    return ["python", "-m", "sglang_router.launch_router", "--worker-urls", *worker_urls,
            "--host", "127.0.0.1", "--port", str(port)]
