"""Data stage throughput and memory on both engines, and near dedup against a brute-force baseline (same run).

    python3 -m runner setup core ml && \
    ~/.cache/finetune-forge/venvs/core-*/bin/python benchmarks/data_pipeline.py \
        [--sizes 10000 100000] [--engines local ray] [--dedup-n 5000] [--no-datalab]

Per size and engine: the whole data stage run through the runner (`just run --until data` on the default recipe
with `data.generator.size` and `data.engine` set; default defect rates), its wall seconds and records/s, the
stage's own peak memory (every process of it: workers and Ray's included, sampled by the stage), each step's
records/s, the near-duplicate recall against the injected ground truth, and the engine's time as a ratio of the
local engine's at the same size. Then MinHash-LSH near dedup vs exact Jaccard over all pairs on the same records,
with the speed ratio and the LSH recall of the brute-force pairs.
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


def whole_stage(size: int, engine: str, datalab: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        recipe = Path(tmp) / "bench.yaml"
        recipe.write_text(f"extends: {REPO / 'recipes' / 'invoice-extraction.yaml'}\nname: bench-data-{size}\n"
                          f"data:\n  engine: {engine}\n  generator: {{size: {size}, seed: 5}}\n"
                          f"  datalab: {{enabled: {str(datalab).lower()}}}\n")
        t0 = time.time()
        out = subprocess.run([sys.executable, "-m", "runner", "run", str(recipe), "--until", "data", "--force"],
                             cwd=REPO, capture_output=True, text=True, env={**os.environ, "FORGE_RUNS": str(Path(tmp) / "runs")})
        seconds = time.time() - t0
        if out.returncode != 0:
            raise SystemExit(out.stdout[-2000:] + out.stderr[-2000:])
        stage = json.loads(next((Path(tmp) / "runs" / "cache" / "data").glob("*/stage.json")).read_text())
        m = stage["metrics"]
        near = m["detectors"]["near_duplicate"]
        return {"size": size, "engine": engine, "workers": m["engine"]["workers"], "seconds": round(seconds, 1),
                "stage_seconds": round(stage["seconds"], 1), "records_per_s": round(size / stage["seconds"], 1),
                "peak_rss_mb": m["peak_rss_mb"], "dataset_version": m["dataset_version"],
                "near_dup_recall": near["recall"], "near_dup_precision": near["precision"],
                "near_dup_truth": near["truth"],
                "steps": {k: v["records_per_s"] for k, v in m["throughput"].items()},
                "step_peak_mb": {k: v["peak_mb"] for k, v in m["throughput"].items()},
                "step_seconds": m["step_seconds"], "cpu_seconds": m["engine"]["cpu_seconds"], "kept": m["records"]}


def dedup_vs_brute_force(n: int) -> dict:
    from runner.datagen import defects, invoice
    from runner.dataprep import dedup, engine
    rates = {k: 0.0 for k in ("exact_duplicate", "empty", "truncated", "wrong_gold", "off_domain", "pii", "secret")}
    recs, _ = defects.inject(invoice.generate(9, n), {**rates, "near_duplicate": 0.06}, 9)
    texts = [r["document"] for r in recs]
    t0 = time.time()
    clusters = dedup.near_clusters(texts, 0.8, 0.1, 5, 128, engine.Local(1))
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
    ap.add_argument("--engines", nargs="*", default=["local", "ray"], choices=["local", "ray"])
    ap.add_argument("--dedup-n", type=int, default=5000, help="0: skip the brute-force comparison")
    ap.add_argument("--no-datalab", action="store_true", help="skip cleanlab Datalab (ml venv) in the stage runs")
    a = ap.parse_args()
    if a.dedup_n:
        print(json.dumps({"near_dedup_vs_brute_force": dedup_vs_brute_force(a.dedup_n)}, indent=1), flush=True)
    for size in a.sizes:
        base = None
        for engine in a.engines:
            r = whole_stage(size, engine, not a.no_datalab)
            if engine == "local":
                base = r
            elif base:
                r["time_vs_local"] = round(r["stage_seconds"] / base["stage_seconds"], 2)
                r["same_dataset_version"] = r["dataset_version"] == base["dataset_version"]
            print(json.dumps({"whole_stage": r}, indent=1), flush=True)
    print(f"(own process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
