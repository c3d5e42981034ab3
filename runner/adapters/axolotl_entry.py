"""Run an Axolotl CLI module with every RNG seeded first (inside the `ml` venv).

    python -m runner.adapters.axolotl_entry axolotl.cli.train CONFIG.yaml [args...]

Why: Axolotl creates the LoRA adapter before the HF Trainer calls set_seed(cfg.seed), so LoRA's A matrices were
initialized from an unseeded RNG and two runs of the same config gave different gradients from step 1 on
(tiny recipe, dropout 0, learning rate 0 at step 1: same loss, grad norm 0.533 vs 0.601). Seeding python,
numpy and torch with the config's seed before Axolotl starts makes the initialization, and so the curve, repeat.
"""
from __future__ import annotations

import runpy
import sys

import yaml


def main() -> None:
    module, config = sys.argv[1], sys.argv[2]
    seed = (yaml.safe_load(open(config)) or {}).get("seed")
    if seed is not None:
        from transformers import set_seed
        set_seed(int(seed))
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
