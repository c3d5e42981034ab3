"""Resolve the recipe's base_model section to a local Hugging Face folder, and fingerprint it."""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from runner import env
from runner.stage import StageError


def base_model_dir(section: dict) -> Path:
    src = section["source"]
    if src == "package":
        models = env.base_models()
        if section["name"] not in models:
            raise StageError(f"base_model.name '{section['name']}' is not a packaged model; "
                             f"choose from: {', '.join(models)}")
        bm = models[section["name"]]
        if not env.is_complete(bm.path):
            from runner import setup
            setup.ensure_base_model(section["name"])
        return bm.hf_dir
    if src == "path":
        p = Path(section["path"]).expanduser().resolve()
        if not (p / "config.json").exists():
            raise StageError(f"base_model.path: {p} is not a Hugging Face model folder (no config.json)")
        return p
    return hub_snapshot(section["hub_id"])


def hub_snapshot(hub_id: str) -> Path:
    """Download a hub model once into the cache (needs network: with HF_HUB_OFFLINE=1 it fails, clearly)."""
    import os
    import subprocess

    out = env.cache_root() / "models" / ("hub-" + hub_id.replace("/", "--"))
    if env.is_complete(out):
        return out / "hf"
    ml = env.venv("ml")
    r = subprocess.run([str(ml.python), "-m", "runner.adapters.hf_export", "fetch", "--hub-id", hub_id,
                        "--out", str(out / "hf")], cwd=env.REPO, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(env.REPO)})
    if r.returncode != 0:
        offline = " (HF_HUB_OFFLINE=1 is set: unset it, or point base_model at a local folder with source: path)" \
            if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        raise StageError(f"base_model.hub_id '{hub_id}' could not be downloaded{offline}: "
                         f"{(r.stderr.strip().splitlines() or ['?'])[-1]}")
    env.done_marker(out).write_text("ok\n")
    return out / "hf"


@lru_cache(maxsize=8)
def _fingerprint_dir(path: str, stamp: tuple) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(path).iterdir()):
        if f.is_file() and not f.name.startswith("."):
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def fingerprint(section: dict) -> str:
    """Content hash of the base model folder (cache keys change when the weights do)."""
    if section["source"] == "hub":
        return json.dumps(section, sort_keys=True)
    d = base_model_dir(section)
    stamp = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(d.iterdir()) if f.is_file())
    return _fingerprint_dir(str(d), stamp)
