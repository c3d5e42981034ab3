"""`just status RECIPE`: per stage, cached or stale, and for a stale stage what moved (like `dvc status`).

A stage is cached when the store holds an output under the key the recipe and the code give it now. A stale
stage is compared with the dependencies recorded beside its last output for this recipe (stage.json `deps`,
found through the newest run manifests): which recipe section, upstream input, file or tool changed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from runner import pipeline, progress
from runner.env import runs_root
from runner.recipe import Recipe

KEPT = ("ok", "cached", "suspect", "gated")  # statuses whose stage output is stored
MAX_FILES = 6  # changed files named per stage before "and N more"


@dataclass
class StageStatus:
    stage: str
    key: str
    state: str  # cached | stale
    reasons: list[str] = field(default_factory=list)


def last_deps(recipe_name: str) -> dict[str, dict]:
    """For each stage, the deps recorded with its newest stored output among this recipe's runs."""
    found: dict[str, dict] = {}
    folder = runs_root() / recipe_name
    manifests = sorted(folder.glob("*/manifest.json"), reverse=True) if folder.is_dir() else []
    for path in manifests:
        try:
            stages = json.loads(path.read_text()).get("stages") or {}
        except (OSError, ValueError):
            continue
        for name, rec in stages.items():
            if name in found or rec.get("status") not in KEPT or not rec.get("key"):
                continue
            record = pipeline.store_dir(name, rec["key"]) / "stage.json"
            if record.exists():
                deps = json.loads(record.read_text()).get("deps")
                if deps is not None:
                    found[name] = deps
    return found


def changes(old: dict, new: dict) -> list[str]:
    """What differs between two deps records, in words."""
    out = []
    for part, noun in (("sections", "recipe section"), ("inputs", "input"), ("task", "task file"), ("tools", "tool")):
        a, b = old.get(part) or {}, new.get(part) or {}
        for name in sorted(set(a) | set(b)):
            if a.get(name) != b.get(name):
                verb = "changed" if name in a and name in b else ("added" if name in b else "no longer used")
                out.append(f"{noun} '{name}' {verb}")
    a, b = old.get("code") or {}, new.get("code") or {}
    files = [f"file {f} " + ("changed" if f in a and f in b else "added" if f in b else "no longer used")
             for f in sorted(set(a) | set(b)) if a.get(f) != b.get(f)]
    out += files[:MAX_FILES] + ([f"and {len(files) - MAX_FILES} more files"] if len(files) > MAX_FILES else [])
    if old.get("fingerprint") != new.get("fingerprint"):
        out.append("base model or source data files changed (fingerprint)")
    return out or ["its earlier output was recorded under another key format"]


def check(recipe: Recipe) -> list[StageStatus]:
    earlier = last_deps(recipe.name)
    rows = []
    for name, (key, deps) in pipeline.plan_deps(recipe.data).items():
        if pipeline.cached(name, key):
            rows.append(StageStatus(name, key, "cached"))
        elif name in earlier:
            rows.append(StageStatus(name, key, "stale", changes(earlier[name], deps)))
        else:
            rows.append(StageStatus(name, key, "stale", ["no stored output for this recipe yet"]))
    return rows


def render(rows: list[StageStatus]) -> str:
    table = [[r.stage, r.state, r.key[:10], "; ".join(r.reasons)] for r in rows]
    stale = [r.stage for r in rows if r.state == "stale"]
    tail = (f"\n\nstale: {', '.join(stale)} (`just run` re-runs these)" if stale
            else "\n\nevery stage is cached: `just run` would redo nothing")
    return progress.table(table, ["stage", "state", "key", "why"]) + tail
