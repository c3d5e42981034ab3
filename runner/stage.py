"""The contract between the runner and a stage module.

A stage module (runner/stages/<name>.py) declares:
  SECTIONS  recipe keys it reads (its cache key covers exactly these)
  INPUTS    upstream stages whose artifacts it reads
  RUNS      repository files or folders it uses other than by import (lm-eval task folders): part of its key;
            the code it imports is found from the source (runner/code_deps.py) and is part of its key too
  TOOLS     venv groups / 'llama' it runs: their build keys are part of its cache key
  run(ctx) -> Result
Stages meet only through artifacts on disk: `ctx.inputs[name]` is the stored output of an upstream stage.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


class StageError(Exception):
    """A stage failed for a reason it can name; `log` points at the delegated tool's log."""

    def __init__(self, message: str, log: Path | None = None):
        self.log = log
        super().__init__(message)


@dataclass
class Result:
    metrics: dict = field(default_factory=dict)
    artifacts: dict = field(default_factory=dict)  # name -> path relative to the stage folder
    status: str = "ok"  # ok | suspect | gated
    notes: list[str] = field(default_factory=list)


@dataclass
class Output:
    """A stored stage output, as downstream stages see it."""
    stage: str
    key: str
    dir: Path
    metrics: dict
    artifacts: dict
    status: str

    def path(self, artifact: str) -> Path:
        if artifact not in self.artifacts:
            raise StageError(f"stage '{self.stage}' output {self.dir} has no artifact '{artifact}' "
                             f"(it has: {', '.join(sorted(self.artifacts)) or 'none'})")
        return self.dir / self.artifacts[artifact]

    @classmethod
    def read(cls, stage: str, key: str, folder: Path) -> "Output":
        rec = json.loads((folder / "stage.json").read_text())
        return cls(stage, key, folder, rec["metrics"], rec["artifacts"], rec["status"])


@dataclass
class Context:
    stage: str
    recipe: dict            # the whole resolved recipe (read only SECTIONS of it)
    out: Path               # write artifacts here; becomes the cached folder on success
    logs: Path              # this run's log folder for the stage
    inputs: dict[str, Output]
    progress: Callable[[str], None]
    run_dir: Path

    @property
    def seed(self) -> int:
        return self.recipe["seed"]

    @property
    def threads(self) -> int:
        return self.recipe["threads"]

    def section(self, name: str | None = None) -> dict:
        return self.recipe[name or self.stage]

    def log(self, name: str) -> Path:
        self.logs.mkdir(parents=True, exist_ok=True)
        return self.logs / name
