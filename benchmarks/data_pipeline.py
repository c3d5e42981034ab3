"""Data stage throughput and memory, and near dedup against a brute-force baseline (same run).

    python3 -m runner setup core ml && \
    ~/.cache/finetune-forge/venvs/core-*/bin/python benchmarks/data_pipeline.py [--sizes 10000 100000] [--dedup-n 5000]

Prints records/s and peak RSS of the whole data stage (run through the runner, as `just run --until data`
would) per size, then MinHash-LSH near dedup vs exact Jaccard over all pairs on the same records, with the
speed ratio and the LSH recall of the brute-force pairs.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def whole_stage(size: int, datalab: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        recipe = Path(tmp) / "bench.yaml"
        recipe.write_text(f"extends: {REPO / 'recipes' / 'invoice-extraction.yaml'}\nname: bench-data-{size}\n"
                          f"data:\n  generator: {{size: {size}, seed: 5}}\n  datalab: {{enabled: {str(datalab).lower()}}}\n")
        t0 = time.time()
        script = ("import resource, subprocess, sys, json; "
                  "r = subprocess.run(sys.argv[1:]); "
                  "print(json.dumps({'rc': r.returncode, 'maxrss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
        out = subprocess.run([sys.executable, "-c", script, sys.executable, "-m", "runner", "run", str(recipe),
                              "--until", "data", "--force"], cwd=REPO, capture_output=True, text=True,
                             env={**os.environ, "FORGE_RUNS": str(Path(tmp) / "runs")})
        seconds = time.time() - t0
        stats = json.loads(out.stdout.strip().splitlines()[-1])
        if stats["rc"] != 0:
            raise SystemExit(out.stderr[-2000:])
        stage = json.loads(next((Path(tmp) / "runs" / "cache" / "data").glob("*/stage.json")).read_text())
        return {"size": size, "seconds": round(seconds, 1), "stage_seconds": round(stage["seconds"], 1),
                "records_per_s": round(size / stage["seconds"], 1), "peak_rss_mb": round(stats["maxrss_kb"] / 1024, 1),
                "step_seconds": stage["metrics"]["step_seconds"], "kept": stage["metrics"]["records"]}


def dedup_vs_brute_force(n: int) -> dict:
    from runner.datagen import defects, invoice
    from runner.dataprep import dedup
    rates = {k: 0.0 for k in ("exact_duplicate", "empty", "truncated", "wrong_gold", "off_domain", "pii", "secret")}
    recs, _ = defects.inject(invoice.generate(9, n), {**rates, "near_duplicate": 0.06}, 9)
    texts = [r["document"] for r in recs]
    t0 = time.time()
    clusters = dedup.near_clusters(texts, 0.8, 0.1, 5, 128)
    t_lsh = time.time() - t0
    found = {(min(a, b), max(a, b)) for c in clusters for a, b, _ in c["pairs"]}
    t0 = time.time()
    truth = dedup.brute_force_pairs(texts, 0.8, 5)
    t_bf = time.time() - t0
    # single linkage keeps one pair per newly merged record; score recall on records covered
    covered = lambda pairs: {x for p in pairs for x in p}
    return {"records": len(texts), "lsh_seconds": round(t_lsh, 2), "brute_force_seconds": round(t_bf, 2),
            "speedup": round(t_bf / t_lsh, 1), "brute_force_pairs": len(truth),
            "record_recall": round(len(covered(found) & covered(truth)) / max(1, len(covered(truth))), 4),
            "false_pairs": len(found - truth)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="*", default=[10000, 100000])
    ap.add_argument("--dedup-n", type=int, default=5000, help="0: skip the brute-force comparison")
    ap.add_argument("--no-datalab", action="store_true", help="skip cleanlab Datalab (ml venv) in the stage runs")
    a = ap.parse_args()
    if a.dedup_n:
        print(json.dumps({"near_dedup_vs_brute_force": dedup_vs_brute_force(a.dedup_n)}, indent=1), flush=True)
    for size in a.sizes:
        print(json.dumps({"whole_stage": whole_stage(size, not a.no_datalab)}, indent=1), flush=True)
    print(f"(own process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
