"""Run records: runs/<recipe>/<run-id>/manifest.json and one line per run in runs/index.jsonl.

Written at the start (status 'running') and rewritten at the end, so a crash still leaves a record.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from runner import env
from runner.env import REPO


def git_state() -> dict:
    def git(*args):
        r = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--", ".", ":(exclude)reports")   # a published pack is output, not code
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def hardware() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    gpus = []
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=10)
        gpus = [g.strip() for g in r.stdout.splitlines() if g.strip()] if r.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu": cpu,
            "cores": os.cpu_count(), "memory_gib": mem, "gpus": gpus, "python": sys.version.split()[0]}


def package_versions() -> dict:
    """Every venv's packages (pip list), read once per venv and kept beside it."""
    out = {}
    for group in env.project_config()["project"]["optional-dependencies"]:
        v = env.venv(group)
        if not env.is_complete(v.path):
            continue
        cache = v.path / ".forge-packages.json"
        if not cache.exists():
            r = subprocess.run([str(v.python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
                               capture_output=True, text=True)
            if r.returncode != 0:
                continue
            cache.write_text(r.stdout)
        out[group] = {p["name"]: p["version"] for p in json.loads(cache.read_text())}
    lc = env.llama_cpp()
    rec = lc.record()
    out["llama.cpp"] = {"source": lc.sdist, "targets": list(lc.targets), "build_key": lc.key,
                        "build": rec.get("chosen"), "instruction_sets": rec.get("isa"), "why": rec.get("why"),
                        "forced": rec.get("forced"), "build_record": str(lc.build_record)}
    return out


def seeds(recipe: dict) -> dict:
    return {"recipe": recipe["seed"], "data_generator": recipe.get("data", {}).get("generator", {}).get("seed")}


def start(recipe, run_id: str, run_dir: Path, keys: dict) -> dict:
    man = {
        "run_id": run_id, "recipe_name": recipe.name, "recipe_file": str(recipe.path),
        "recipe_files": [str(f) for f in recipe.files], "recipe_hash": recipe.hash, "recipe": recipe.data,
        "status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "finished": None,
        "git": git_state(), "hardware": hardware(), "packages": package_versions(), "seeds": seeds(recipe.data),
        "dataset_version": None, "stage_keys": keys, "stages": {}, "argv": sys.argv[1:],
    }
    _write(run_dir, man)
    return man


def finish(man: dict, run_dir: Path, records: dict, outputs: dict, failure) -> None:
    man["stages"] = {n: {"status": r.status, "cache_hit": r.cache_hit, "seconds": round(r.seconds, 2),
                         "key": r.key, "metrics": r.metrics, "log": r.log, "error": r.error}
                     for n, r in records.items()}
    if "data" in outputs:
        man["dataset_version"] = outputs["data"].metrics.get("dataset_version")
    man["status"] = failure.status if failure else "ok"
    if not failure and any(r.status == "suspect" for r in records.values()):
        man["status"] = "suspect"
    man["failure"] = {"stage": failure.stage, "message": str(failure)} if failure else None
    man["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    _write(run_dir, man)
    index = run_dir.parent.parent / "index.jsonl"
    line = {"run_id": man["run_id"], "recipe": man["recipe_name"], "status": man["status"],
            "recipe_hash": man["recipe_hash"], "dataset_version": man["dataset_version"],
            "commit": man["git"]["commit"], "dirty": man["git"]["dirty"], "started": man["started"],
            "finished": man["finished"], "run_dir": str(run_dir),
            "stages": {n: s["status"] for n, s in man["stages"].items()}}
    with open(index, "a") as f:
        f.write(json.dumps(line) + "\n")


def _write(run_dir: Path, man: dict) -> None:
    tmp = run_dir / ".manifest.json.tmp"
    tmp.write_text(json.dumps(man, indent=2, default=str) + "\n")
    tmp.replace(run_dir / "manifest.json")


def find_run(ref: str) -> Path:
    """A run by folder, run id or report folder."""
    p = Path(ref)
    if (p / "manifest.json").exists():
        return p.resolve()
    hits = sorted(env.runs_root().glob(f"*/{ref}*/manifest.json"))
    if len(hits) == 1:
        return hits[0].parent
    if not hits:
        raise SystemExit(f"no run matches '{ref}' under {env.runs_root()}")
    raise SystemExit(f"'{ref}' matches {len(hits)} runs: " + ", ".join(h.parent.name for h in hits))
