"""DVC adapter (optional): track the cleaned split files in a DVC repository, push them to a remote.

The `dvc` venv is built on first use only (data.dvc.enabled). The repository lives under runs/dvc
(no git needed: `dvc init --no-scm`); each dataset version gets its own folder of .dvc files.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from runner import proc


def track(files: list[Path], version: str, store: Path, remote: str | None, log: Path) -> dict:
    from runner import setup
    dvc = setup.ensure_venv("dvc").bin("dvc")
    e = proc.tool_env(1, {"DVC_NO_ANALYTICS": "1"})
    if not (store / ".dvc").exists():
        store.mkdir(parents=True, exist_ok=True)
        proc.run([dvc, "init", "--no-scm"], log, env=e, cwd=store, what="dvc init")
        proc.run([dvc, "config", "core.analytics", "false"], log, env=e, cwd=store, what="dvc config")
    if remote:
        proc.run([dvc, "remote", "add", "--force", "--default", "forge", remote], log, env=e, cwd=store,
                 what="dvc remote add")
    target = store / "datasets" / version
    target.mkdir(parents=True, exist_ok=True)
    tracked = {}
    for f in files:
        shutil.copy2(f, target / f.name)
        proc.run([dvc, "add", str(target / f.name)], log, env=e, cwd=store, what=f"dvc add {f.name}")
        meta = yaml.safe_load((target / f"{f.name}.dvc").read_text())
        tracked[f.name] = {"dvc_file": str(target / f"{f.name}.dvc"), "md5": meta["outs"][0]["md5"],
                           "size": meta["outs"][0]["size"]}
    if remote:
        proc.run([dvc, "push"], log, env=e, cwd=store, what="dvc push")
    return {"store": str(store), "remote": remote, "files": tracked}
