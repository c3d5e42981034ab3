"""Task kinds: how a kind's answers are parsed, checked, scored and constrained (one module per kind, each an
lm-eval `!function` target with its base task config beside it as <kind>.yaml). Standard library at import."""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

KINDS = ("extraction", "classification", "generation")
HERE = Path(__file__).resolve().parent


def module(kind: str) -> ModuleType:
    if kind not in KINDS:
        raise ValueError(f"unknown task kind {kind!r} (kinds: {', '.join(KINDS)})")
    return importlib.import_module(f"runner.kinds.{kind}")


def base_yaml(kind: str) -> Path:
    """The kind's lm-eval base config (its !function hooks resolve against this folder)."""
    return HERE / f"{kind}.yaml"
