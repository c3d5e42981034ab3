"""Validate a generated Axolotl config with Axolotl's own schema (pydantic), offline, for a target machine.

Runs inside the `ml` venv: python -m runner.adapters.axolotl_validate CONFIG.yaml [--gpus N --compute sm_90]
Prints "ok" or Axolotl's validation errors and exits 1. With --gpus the capabilities of that GPU machine are
declared (bf16, n_gpu), so configs meant for a GPU are checked on a CPU-only machine too.
"""
from __future__ import annotations

import argparse
import sys

import yaml


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--gpus", type=int, default=0)
    ap.add_argument("--compute", default="sm_90")
    a = ap.parse_args(argv)
    import torch
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    cfg = DictDefault(yaml.safe_load(open(a.config)))
    env_caps = {"torch_version": str(torch.__version__).split("+", maxsplit=1)[0]}
    caps = ({"bf16": True, "fp8": False, "tf32": True, "n_gpu": a.gpus, "compute_capability": a.compute}
            if a.gpus else {"bf16": False, "fp8": False, "tf32": False, "n_gpu": 0, "compute_capability": None})
    try:
        validate_config(cfg, capabilities=caps, env_capabilities=env_caps)
    except Exception as e:  # pydantic ValidationError or Axolotl's own ValueError checks
        print(f"axolotl rejects {a.config}:\n{e}")
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
