"""A task's files under evals/<task>/ (the lm-eval task YAML and its `!function` module), found and loaded one
way for every caller: the data stage's label checks, the statistics, the decoding check and the gateway.

Standard library only: the gateway's own venv imports it too.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from types import ModuleType

EVALS = Path(__file__).resolve().parent.parent / "evals"


class UnknownTask(LookupError):
    pass


def available() -> list[str]:
    """Task folders: evals/<name>/ holding <name>.yaml."""
    return sorted(p.name for p in EVALS.iterdir() if (p / f"{p.name}.yaml").is_file())


def folder(task: str) -> Path:
    d = EVALS / task
    if not (d / f"{task}.yaml").is_file():
        raise UnknownTask(f"no task '{task}' in {EVALS} (expected {d / f'{task}.yaml'}; tasks there: "
                          f"{', '.join(available()) or 'none'})")
    return d


def task_yaml(task: str) -> Path:
    return folder(task) / f"{task}.yaml"


@functools.lru_cache(maxsize=None)
def utils(task: str) -> ModuleType:
    """The task's `!function` module (evals/<task>/utils.py), imported by path once per process."""
    path = folder(task) / "utils.py"
    spec = importlib.util.spec_from_file_location(f"evals_{task}_utils", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
