"""Training throughput: Axolotl (as the train stage runs it) vs a plain transformers+peft loop, same data,
same LoRA hyperparameters, same batch and sequence length, with and without sample packing, in one run.

    python3 -m runner setup && python3 benchmarks/train_throughput.py [--recipe recipes/invoice-extraction.yaml] [--steps 12]
    python3 benchmarks/train_throughput.py --precision fp32,bf16    # Axolotl alone, fp32 vs bf16 mixed precision
    python3 benchmarks/train_throughput.py --logits all,labelled     # Axolotl alone, the LM head everywhere or at
                                                                     # trained positions only (train.logits)

It needs the data stage's output of the recipe (run `just run RECIPE --until data` first). Prints tokens/s of
each and the ratio Axolotl / plain loop. Axolotl's time is its train process wall time minus start-up
(model load, dataset, trainer set-up): it reports `train_runtime` for the steps alone.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from runner import env, models, pipeline, proc, recipe, training  # noqa: E402
from runner.adapters import axolotl  # noqa: E402


def axolotl_run(hp: dict, base: Path, data: Path, work: Path, threads: int, seed: int) -> dict:
    cfg = axolotl.build_config(hp, base, data, None, work, seed, {})
    config = axolotl.write_config(cfg, work / "axolotl.yaml")
    axolotl.preprocess(config, work / "pre.log", threads)
    curve = []
    stats = axolotl.train(config, work / "train.log", threads, curve.append)
    summary = next((r for r in curve if "train_runtime" in r), {})
    tokens = max((r.get("tokens/total", 0) for r in curve if "loss" in r), default=0)
    runtime = summary.get("train_runtime") or stats["seconds"]
    losses = [r["loss"] for r in curve if "loss" in r]
    return {"tokens": tokens, "train_runtime_s": runtime, "process_s": stats["seconds"],
            "losses": losses, "s_per_step": round(runtime / len(losses), 2) if losses and runtime else None,
            "tokens_per_s": round(tokens / runtime, 1) if runtime else None}


def plain_run(hp: dict, base: Path, data: Path, work: Path, threads: int, seed: int) -> dict:
    c = {"model": str(base), "data": str(data), "steps": hp["max_steps"], "micro_batch_size": hp["micro_batch_size"],
         "sequence_len": hp["sequence_len"], "lr": hp["learning_rate"], "r": hp["lora"]["r"],
         "alpha": hp["lora"]["alpha"], "dropout": hp["lora"]["dropout"], "seed": seed, "packing": hp["sample_packing"]}
    (work / "plain.json").write_text(json.dumps(c))
    out = subprocess.run([str(env.venv("ml").python), "-m", "runner.adapters.peft_loop", str(work / "plain.json")],
                         cwd=REPO, env=proc.tool_env(threads, {"PYTHONPATH": str(REPO)}), capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default=str(REPO / "recipes" / "invoice-extraction.yaml"))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--precision", help="comma-separated train.precision values: Axolotl alone at each, no packing, "
                                        "and each one's tokens/s over the first's")
    ap.add_argument("--logits", help="comma-separated train.logits values (all, labelled): as --precision, with the "
                                     "recipe's precision; the final losses are printed too (the same loss)")
    a = ap.parse_args()
    r = recipe.load(a.recipe)
    data_out = pipeline.cached_stage(r.data, "data")
    if not data_out:
        raise SystemExit(f"no cached data stage for {a.recipe}: run `just run {a.recipe} --until data` first")
    base = models.base_model_dir(r.data["base_model"])
    rows = []
    if a.precision or a.logits:
        key, values = ("precision", a.precision) if a.precision else ("logits", a.logits)
        first = None
        for value in values.split(","):
            hp = dict(training.variants(r.data["train"])["tuned"][0], max_steps=a.steps, sample_packing=False,
                      **{key: value})
            with tempfile.TemporaryDirectory() as tmp:
                ax = axolotl_run(hp, base, data_out.path("train"), Path(tmp), r.data["threads"], r.data["seed"])
            first = first or ax
            row = {key: value, "precision": hp["precision"], "steps": a.steps, "axolotl": ax,
                   "native_bf16_flags": training.cpu_bf16_flags(),
                   "tokens_per_s_over_first": round(ax["tokens_per_s"] / first["tokens_per_s"], 3)
                   if ax["tokens_per_s"] and first["tokens_per_s"] else None}
            print(json.dumps(row), flush=True)
        print(f"threads={r.data['threads']} cpu_count={os.cpu_count()} at {time.strftime('%Y-%m-%d %H:%M')}")
        return
    for packing in (False, True):
        hp = dict(training.variants(r.data["train"])["tuned"][0], max_steps=a.steps, sample_packing=packing)
        with tempfile.TemporaryDirectory() as tmp:
            ax = axolotl_run(hp, base, data_out.path("train"), Path(tmp), r.data["threads"], r.data["seed"])
            pl = plain_run(hp, base, data_out.path("train"), Path(tmp), r.data["threads"], r.data["seed"])
        row = {"sample_packing": packing, "steps": a.steps, "axolotl": ax, "plain_peft": pl,
               "ratio_axolotl_over_plain": round(ax["tokens_per_s"] / pl["tokens_per_s"], 3)
               if ax["tokens_per_s"] and pl["tokens_per_s"] else None}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"threads={r.data['threads']} cpu_count={os.cpu_count()} at {time.strftime('%Y-%m-%d %H:%M')}")


if __name__ == "__main__":
    main()
