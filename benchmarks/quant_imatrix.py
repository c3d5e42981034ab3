"""Does an importance matrix change what a quant type loses? Quantize a run's tuned f16 GGUF to each type with and
without llama-imatrix (calibrated on the run's training split, as quantize.imatrix does), score every file on
the run's test split (the task written as the eval stage writes it) through llama-server + lm-eval (as the quantize stage does), and compare each with
the eval stage's f16 answers on the same items: the non-inferiority statistics of the quantize gate, plus
prompt and decode speed from the server's counters.

    python3 -m runner setup && python3 benchmarks/quant_imatrix.py --run-dir runs/invoice-extraction/<run>
        [--types q5_k_m,q4_k_m] [--chunks 32] [--concurrency 2]

Prints one JSON line per (type, imatrix on/off).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from runner import tasks as registry  # noqa: E402
from runner.adapters import llama_cpp, lm_eval  # noqa: E402
from runner.quality import eval_analysis as ea  # noqa: E402
from runner.quality import served_eval, stats  # noqa: E402
from runner.stages import quantize  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--types", default="q5_k_m,q4_k_m")
    ap.add_argument("--chunks", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    manifest = json.loads((args.run_dir / "manifest.json").read_text())
    recipe = manifest["recipe"]
    task = registry.of(recipe)
    stages = args.run_dir / "stages"
    f16 = stages / "eval" / "tuned" / "model-f16.gguf"
    ref = ea.item_details(ea.read_samples(stages / "eval" / "tuned" / f"samples_{task.name}.jsonl"), task, [250, 400])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tasks_dir = lm_eval.write_task(task, tmp / "tasks", stages / "data" / "test.jsonl", recipe["eval"]["max_gen_tokens"])
        calib = quantize.calibration_text(stages / "data" / "train.jsonl", tmp / "calibration.txt")
        imat = llama_cpp.imatrix(f16, calib, tmp / "imatrix.gguf", tmp / "imatrix.log", args.threads, args.chunks, 512)
        for qtype in args.types.split(","):
            for use in (None, imat):
                name = f"{qtype}-{'imatrix' if use else 'plain'}"
                dst = tmp / f"{name}.gguf"
                llama_cpp.quantize(f16, dst, qtype, tmp / f"{name}.log", args.threads, use)
                out = tmp / name
                timing = served_eval.score(dst, name, [{"name": "test", "tasks": [task.name],
                                                        "system": registry.system_prompt(recipe)}],
                                           tasks_dir, out, lambda n: tmp / n, lambda _m: None,
                                           threads=args.threads, concurrency=args.concurrency, ctx_size=4096,
                                           limit=0, seed=recipe["seed"])
                _, samples = lm_eval.read_results(out / "lm_eval" / "test", task.name, tmp / "x.log")
                rows = ea.item_details(samples, task, [250, 400])
                right_ref, units = quantize.unit_right(ref)
                right, _ = quantize.unit_right(rows)
                ni = stats.non_inferiority(right_ref, right, units, 0.02)
                n = len(rows)
                print(json.dumps({"type": qtype, "imatrix": bool(use), "items": n, "bytes": dst.stat().st_size,
                                  "f16_share": round(ni["ref_share"], 4), "share": round(ni["new_share"], 4),
                                  "drop": round(ni["drop"], 4), "upper": round(ni["upper"], 4),
                                  "items_differ": ni["discordant_items"],
                                  "prompt_tok_s": round(timing["prompt_tokens_total"] / timing["prompt_seconds_total"], 1),
                                  "decode_tok_s": round(timing["tokens_predicted_total"] /
                                                        timing["tokens_predicted_seconds_total"], 1)}), flush=True)


if __name__ == "__main__":
    main()
