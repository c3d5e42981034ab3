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
    # hub: resolved by the tools themselves (needs network; HF_HUB_OFFLINE=1 makes them fail clearly)
    from huggingface_hub import snapshot_download  # pragma: no cover - needs network
    return Path(snapshot_download(section["hub_id"]))


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
