"""The task registry: a task is a folder evals/<name>/ whose <name>.yaml is a plain lm-eval task (so
`lm-eval --include_path evals/<name> --tasks <name>` works by hand) and whose `metadata.forge` says what the
runner needs to know about it:

    metadata:
      forge:
        kind: extraction            # extraction | classification | generation
        schema: schema.json         # extraction: the answer's JSON Schema (path relative to the folder)
        slices: [layout, locale]    # data columns the breakdowns, the split strata and the risk pages use

Every stage, report, drill, load test and the gateway read the task from here (`get(recipe["task"])`); no
other module names a task. An unknown name is an error that lists the tasks there are (like lm-eval's).
The gateway's own venv imports this module too (for `utils`): standard library at import time.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

EVALS = Path(__file__).resolve().parent.parent / "evals"
KINDS = ("extraction", "classification", "generation")
HEADLINE = {"extraction": "field_f1", "classification": "accuracy", "generation": "chrf"}  # a kind's first number


class UnknownTask(LookupError):
    pass


class TaskError(ValueError):
    pass


@dataclass(frozen=True)
class Task:
    name: str
    kind: str
    folder: Path
    schema: Path | None
    slices: tuple[str, ...]

    @property
    def lm_eval_yaml(self) -> Path:
        return self.folder / f"{self.name}.yaml"

    @property
    def train_task(self) -> str:
        """The same task scored on training items (the eval stage writes it; overfitting evidence)."""
        return self.name + TRAIN_SUFFIX

    @property
    def headline(self) -> str:
        """The metric a one-line summary of this task's scores names."""
        return HEADLINE[self.kind]

    @property
    def route(self) -> str:
        """The gateway's endpoint for this task."""
        return f"/v1/tasks/{self.name}"

    def schema_json(self) -> dict:
        if self.schema is None:
            raise TaskError(f"{self.lm_eval_yaml}: task '{self.name}' ({self.kind}) has no metadata.forge.schema")
        return json.loads(self.schema.read_text())

    def utils(self) -> ModuleType:
        return utils(self.name)

    def describe(self) -> dict:
        """What the serving config and the manifest record about the task."""
        return {"name": self.name, "kind": self.kind, "route": self.route, "slices": list(self.slices),
                "train_task": self.train_task,
                "schema": str(self.schema) if self.schema else None}


TRAIN_SUFFIX = "_train"


def scored_as(lm_eval_task: str) -> str:
    """The task whose metric definitions score `lm_eval_task`: a task's training-item sample
    (`<name>_train`, see Task.train_task) is scored as the task itself."""
    base = lm_eval_task.removesuffix(TRAIN_SUFFIX)
    return base if base != lm_eval_task and (EVALS / base / f"{base}.yaml").is_file() else lm_eval_task


def lm_eval_tasks() -> list[str]:
    """lm-eval task folders: evals/<name>/ holding <name>.yaml (a recipe's task, or an extra eval task)."""
    return sorted(p.name for p in EVALS.iterdir() if (p / f"{p.name}.yaml").is_file())


def available() -> list[str]:
    """The tasks a recipe can name: lm-eval task folders whose YAML has a metadata.forge block."""
    out = []
    for name in lm_eval_tasks():
        try:
            _forge_block(EVALS / name / f"{name}.yaml")
        except TaskError:
            continue
        out.append(name)
    return out


def folder(task: str) -> Path:
    d = EVALS / task
    if not (d / f"{task}.yaml").is_file():
        raise UnknownTask(f"no task '{task}' in {EVALS} (expected {d / f'{task}.yaml'}; tasks there: "
                          f"{', '.join(lm_eval_tasks()) or 'none'})")
    return d


def task_yaml(task: str) -> Path:
    return folder(task) / f"{task}.yaml"


def _forge_block(path: Path) -> dict:
    """metadata.forge of an lm-eval task YAML (`!function` tags read as plain text)."""
    import yaml  # here, not at the top: the gateway's venv imports this module for `utils` and has no PyYAML
    try:
        doc = yaml.safe_load(re.sub(r"!function\s+", "", path.read_text())) or {}
    except yaml.YAMLError as e:
        raise TaskError(f"{path}: not valid YAML: {e}") from None
    block = (doc.get("metadata") or {}).get("forge") if isinstance(doc, dict) else None
    if not isinstance(block, dict):
        raise TaskError(f"{path}: expected a mapping at metadata.forge (kind, schema, slices)")
    return block


@functools.lru_cache(maxsize=None)
def get(name: str) -> Task:
    """The task called `name`; UnknownTask lists the tasks there are, TaskError names the file and key."""
    if not (EVALS / name / f"{name}.yaml").is_file():
        raise UnknownTask(f"unknown task '{name}': the tasks are {', '.join(available()) or 'none'} "
                          f"(each a folder evals/<name>/ with <name>.yaml holding metadata.forge)")
    d = EVALS / name
    path = d / f"{name}.yaml"
    block = _forge_block(path)
    kind = block.get("kind")
    if kind not in KINDS:
        raise TaskError(f"{path}: metadata.forge.kind: expected one of {', '.join(KINDS)}, found {kind!r}")
    schema = d / block["schema"] if block.get("schema") else None
    if kind == "extraction" and (schema is None or not schema.is_file()):
        raise TaskError(f"{path}: metadata.forge.schema: an extraction task needs its answer's JSON Schema "
                        f"(a file in {d}), found {block.get('schema')!r}")
    slices = block.get("slices") or []
    if not isinstance(slices, list) or not all(isinstance(s, str) for s in slices):
        raise TaskError(f"{path}: metadata.forge.slices: expected a list of column names, found {slices!r}")
    return Task(name=name, kind=kind, folder=d, schema=schema, slices=tuple(slices))


@functools.lru_cache(maxsize=None)
def utils(task: str) -> ModuleType:
    """The task's `!function` module (evals/<task>/utils.py), imported by path once per process."""
    path = folder(task) / "utils.py"
    spec = importlib.util.spec_from_file_location(f"evals_{task}_utils", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
