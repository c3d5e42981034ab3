"""The data stage on both engines (data.engine: local | ray): the same 3,000 generated records (default defect
rates) must give the same kept records, the same dataset version, the same removals with the same reasons, the
same findings, flags, clusters and detector scores. The Ray run is traced: its local cluster connects to nothing
but this machine's loopback, and it is stopped with the stage."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests import egress

REPO = Path(__file__).resolve().parent.parent
SIZE = 3000


def run_data(engine: str, tmp: Path, trace: Path | None = None) -> tuple[dict, Path]:
    recipe = tmp / f"{engine}.yaml"
    recipe.write_text(f"extends: {REPO / 'recipes' / 'invoice-extraction.yaml'}\nname: engines-{engine}\n"
                      f"data:\n  engine: {engine}\n  generator: {{size: {SIZE}, seed: 13}}\n"
                      "  datalab: {enabled: false}\n")
    runs = tmp / f"runs-{engine}"
    cmd = [sys.executable, "-m", "runner", "run", str(recipe), "--until", "data"]
    r = subprocess.run(egress.traced(cmd, trace) if trace else cmd, cwd=REPO, capture_output=True, text=True,
                       timeout=900, env={**os.environ, "FORGE_RUNS": str(runs)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = next((runs / "cache" / "data").glob("*/stage.json")).parent
    return json.loads((out / "stage.json").read_text())["metrics"], out


def lines(path: Path) -> list:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("engines")
    trace = tmp / "ray.trace"
    return run_data("local", tmp), run_data("ray", tmp, trace), trace


def test_both_engines_give_the_same_dataset_and_audit(both):
    (ml, local), (mr, ray), _ = both
    assert ml["engine"]["engine"] == "local" and mr["engine"]["engine"] == "ray"
    assert mr["engine"]["cluster"] == "local" and mr["engine"]["workers"] >= 1
    assert ml["dataset_version"] == mr["dataset_version"]
    for name in ("train", "eval", "test", "ood"):
        assert (local / f"{name}.jsonl").read_bytes() == (ray / f"{name}.jsonl").read_bytes(), name
    assert sorted(map(json.dumps, lines(local / "removed.jsonl"))) == sorted(map(json.dumps, lines(ray / "removed.jsonl")))
    for name in ("findings.json", "clusters.json"):
        assert json.loads((local / name).read_text()) == json.loads((ray / name).read_text()), name
    assert lines(local / "flags.jsonl") == lines(ray / "flags.jsonl")
    for key in ("counts", "records", "removed_by_step", "flagged_by_step", "pii_findings", "detectors",
                "leakage_removed", "near_duplicate_clusters"):
        assert ml[key] == mr[key], key
    # something was found by every step, so the comparison covers each of them
    assert all(ml["removed_by_step"].get(s) for s in ("empty", "exact_dedup", "near_dedup", "pii", "labels"))
    assert ml["near_duplicate_clusters"] > 20 and ml["pii_findings"]


def test_each_step_reports_its_rate_and_the_stage_its_peak_memory(both):
    (ml, local), (mr, _), _ = both
    for m in (ml, mr):
        rates = m["throughput"]
        assert {"normalize+min_chars", "exact_dedup", "near_dedup", "pii", "labels", "length"} <= set(rates)
        assert rates["pii"]["records_in"] > 2000 and rates["pii"]["records_per_s"] > 0
        assert m["peak_rss_mb"] > 100 and m["engine"]["cpu_seconds"]["scan_and_check"] > 0
    audit = (local / "data_audit.md").read_text()
    assert "records/s" in audit and "peak memory" in audit


def test_ray_cluster_stays_on_loopback_and_is_stopped(both):
    _, _, trace = both
    assert trace.stat().st_size > 0 and egress.outbound(trace) == []
    left = [p.info["name"] for p in psutil.process_iter(["name"]) if p.info["name"] in ("raylet", "gcs_server")]
    assert left == []
