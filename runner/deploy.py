"""A deployment described by serving.json (written by the serve stage): start it, hand out its endpoints,
stop it. Used by the serve and loadtest stages and by `just serve`."""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from runner.adapters import llama_cpp, sglang
from runner.stage import StageError


@dataclass
class Endpoint:
    role: str       # primary | fallback
    url: str
    model: str
    ready_s: float


def spec(serve_cfg: dict, primary: Path, primary_hf: Path | None, fallback: Path | None, threads: int) -> dict:
    """The serving config: engine, models, and the per-replica settings an operator would tune."""
    return {
        "engine": serve_cfg["engine"], "replicas": serve_cfg["replicas"], "parallel": serve_cfg["parallel"],
        "ctx_size": serve_cfg["ctx_size"], "threads": threads, "ready_timeout_s": serve_cfg["ready_timeout_s"],
        "primary": {"gguf": str(primary), "hf_dir": str(primary_hf) if primary_hf else None, "alias": "primary"},
        "fallback": {"gguf": str(fallback), "alias": "fallback"} if fallback else None,
    }


@contextlib.contextmanager
def start(serving: dict, logs: Path) -> Iterator[list[Endpoint]]:
    if serving["engine"] == "sglang":
        cmd = sglang.launch_command(serving, port=30000)
        if not sglang.available():
            raise StageError("serve.engine is sglang, which needs a CUDA GPU and the sglang package; this machine "
                             f"has neither. The generated launch command is: {' '.join(cmd)}")
        raise StageError("sglang serving runs on GPU machines only; launch: " + " ".join(cmd))  # pragma: no cover
    with contextlib.ExitStack() as stack:
        endpoints = []
        roles = [("primary", serving["primary"], serving["replicas"])]
        if serving.get("fallback"):
            roles.append(("fallback", serving["fallback"], 1))
        for role, model, replicas in roles:
            for i in range(replicas):
                server, ready_s = stack.enter_context(llama_cpp.serve(
                    Path(model["gguf"]), logs / f"llama-server-{role}-{i}.log", serving["threads"],
                    parallel=serving["parallel"], ctx_size=serving["ctx_size"], alias=model["alias"],
                    timeout=serving["ready_timeout_s"]))
                endpoints.append(Endpoint(role, server.url, model["alias"], ready_s))
        yield endpoints


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())
