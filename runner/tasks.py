"""The task registry: a task is a folder <root>/<name>/ whose <name>.yaml holds `metadata.forge`, what the runner
needs to know about it; the roots are the repository's evals/ plus the recipe's `task_paths` (like lm-eval's
--include_path, searched first). A task of a known kind is configuration only:

    task: ticket_routing
    metadata:
      forge:
        kind: classification        # extraction | classification | generation (runner/kinds/)
        system_prompt: Route the customer message to one team. Answer with the team's name only.
        labels: [billing, ...]      # the kind's own keys: extraction `schema`, `rules`, `aliases`;
        slices: [language]          #   classification `labels`; generation `min_chrf`
                                    # slices: data columns the breakdowns, split strata and risk pages use

The scoring, metrics and lm-eval hooks are the kind's (runner/kinds/<kind>.py and <kind>.yaml); the task YAML
may override any lm-eval key (generation_kwargs, metric_list, ...). `lm_eval_config()` is the merged task,
and the eval stage writes it as a plain lm-eval task. Every stage, report, drill, load test and the gateway
read the task from here (`of(recipe)`); no other module names a task. An unknown name is an error that lists
the tasks there are. Standard library at import time (PyYAML is imported where a YAML is read).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from runner import kinds

EVALS = Path(__file__).resolve().parent.parent / "evals"
KINDS = kinds.KINDS
HEADLINE = {"extraction": "field_f1", "classification": "accuracy", "generation": "chrf"}  # a kind's first number
TRAIN_SUFFIX = "_train"
OOD_SUFFIX = "_ood"


class UnknownTask(LookupError):
    pass


class TaskError(ValueError):
    pass


@dataclass(frozen=True)
class Task:
    name: str
    kind: str
    folder: Path
    slices: tuple[str, ...]
    spec: dict = field(compare=False, hash=False)  # the resolved metadata.forge: kind, slices and the kind's keys

    @property
    def lm_eval_yaml(self) -> Path:
        return self.folder / f"{self.name}.yaml"

    @property
    def train_task(self) -> str:
        """The same task scored on training items (the eval stage writes it; overfitting evidence)."""
        return self.name + TRAIN_SUFFIX

    @property
    def ood_task(self) -> str:
        """The same task scored on the out-of-distribution split (data.split.holdout)."""
        return self.name + OOD_SUFFIX

    @property
    def headline(self) -> str:
        """The metric a one-line summary of this task's scores names."""
        return HEADLINE[self.kind]

    @property
    def route(self) -> str:
        """The gateway's endpoint for this task."""
        return f"/v1/tasks/{self.name}"

    @property
    def scorer(self) -> ModuleType:
        """The kind's module: parsing, checks, per-item scores, outcomes, constrained decoding."""
        return kinds.module(self.kind)

    @property
    def schema(self) -> dict | None:
        return self.spec.get("schema")

    def lm_eval_config(self) -> dict:
        """The task as lm-eval sees it: the kind's base config overridden by the task's YAML (`!function`
        targets as "module.function" text)."""
        return {**_read_yaml(kinds.base_yaml(self.kind)), **_read_yaml(self.lm_eval_yaml)}

    def metrics(self) -> dict[str, str]:
        """metric name -> aggregation ("mean" or the `!function` target)."""
        return {m["metric"]: str(m.get("aggregation", "mean")) for m in self.lm_eval_config().get("metric_list", [])}

    def files(self) -> dict[str, str]:
        """sha256[:16] of every file in the task's folder (part of the cache keys of the stages that read it)."""
        return {str(p.relative_to(self.folder)): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
                for p in sorted(self.folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}

    def describe(self) -> dict:
        """What the serving config, the manifest and the reports record about the task."""
        return {"name": self.name, "kind": self.kind, "route": self.route, "slices": list(self.slices),
                "train_task": self.train_task, "ood_task": self.ood_task, "headline": self.headline, "unit": self.scorer.UNIT,
                "metrics": list(self.metrics()), "key_metrics": list(self.scorer.KEY_METRICS),
                "folder": str(self.folder), "spec": self.spec}


@dataclass(frozen=True)
class Scoring:
    """How an lm-eval task's per-item values aggregate: what the statistics need of any task, ours or plain."""
    metrics: dict  # name -> aggregation
    binary: frozenset
    fractional: frozenset


def _read_yaml(path: Path) -> dict:
    import yaml
    try:
        doc = yaml.safe_load(re.sub(r"!function\s+", "", path.read_text())) or {}
    except yaml.YAMLError as e:
        raise TaskError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise TaskError(f"{path}: expected a mapping (an lm-eval task)")
    return doc


def roots(paths=()) -> list[Path]:
    return [Path(p) for p in paths] + [EVALS]


def _find(name: str, paths=()) -> Path | None:
    for r in roots(paths):
        if (r / name / f"{name}.yaml").is_file():
            return r / name
    return None


def lm_eval_tasks(paths=()) -> list[str]:
    """lm-eval task folders: <root>/<name>/ holding <name>.yaml (a recipe's task, or an extra eval task)."""
    return sorted({p.name for r in roots(paths) if r.is_dir() for p in r.iterdir() if (p / f"{p.name}.yaml").is_file()})


def available(paths=()) -> list[str]:
    """The tasks a recipe can name: task folders whose YAML has a metadata.forge block."""
    out = []
    for name in lm_eval_tasks(paths):
        try:
            _forge_block(_find(name, paths) / f"{name}.yaml")
        except TaskError:
            continue
        out.append(name)
    return out


def folder(task: str, paths=()) -> Path:
    d = _find(task, paths)
    if d is None:
        raise UnknownTask(f"no task '{task}' in {', '.join(map(str, roots(paths)))} (expected <root>/{task}/{task}.yaml;"
                          f" tasks there: {', '.join(lm_eval_tasks(paths)) or 'none'})")
    return d


def task_yaml(task: str, paths=()) -> Path:
    return folder(task, paths) / f"{task}.yaml"


def _forge_block(path: Path) -> dict:
    block = (_read_yaml(path).get("metadata") or {}).get("forge")
    if not isinstance(block, dict):
        raise TaskError(f"{path}: expected a mapping at metadata.forge (kind, slices and the kind's keys)")
    return block


@functools.lru_cache(maxsize=None)
def get(name: str, paths: tuple = ()) -> Task:
    """The task called `name`; UnknownTask lists the tasks there are, TaskError names the file and key."""
    d = _find(name, paths)
    if d is None:
        raise UnknownTask(f"unknown task '{name}': the tasks are {', '.join(available(paths)) or 'none'} "
                          f"(each a folder <root>/<name>/ with <name>.yaml holding metadata.forge; roots: "
                          f"{', '.join(map(str, roots(paths)))})")
    path = d / f"{name}.yaml"
    if _read_yaml(path).get("task") != name:
        raise TaskError(f"{path}: task: expected '{name}' (the folder's name)")
    block = _forge_block(path)
    kind = block.get("kind")
    if kind not in KINDS:
        raise TaskError(f"{path}: metadata.forge.kind: expected one of {', '.join(KINDS)}, found {kind!r}")
    slices = block.get("slices") or []
    if not isinstance(slices, list) or not all(isinstance(s, str) for s in slices):
        raise TaskError(f"{path}: metadata.forge.slices: expected a list of column names, found {slices!r}")
    try:
        own = kinds.module(kind).resolve(block, d)
    except ValueError as e:
        raise TaskError(f"{path}: {e}") from None
    prompt = block.get("system_prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise TaskError(f"{path}: metadata.forge.system_prompt: expected the task's instruction to the model "
                        f"(non-empty text), found {prompt!r}")
    spec = {"kind": kind, "slices": slices, "system_prompt": prompt.strip(), **own}
    return Task(name=name, kind=kind, folder=d, slices=tuple(slices), spec=spec)


def system_prompt(recipe: dict) -> str:
    """The instruction every prompt starts with: data.system_prompt when the recipe sets one, else the task's."""
    return (recipe.get("data") or {}).get("system_prompt") or of(recipe).spec["system_prompt"]


def of(recipe: dict) -> Task:
    """The recipe's task (searched in its task_paths, then evals/)."""
    return get(recipe["task"], tuple(recipe.get("task_paths") or ()))


def scored_as(lm_eval_task: str, paths=()) -> str:
    """The task whose metric definitions score `lm_eval_task`: a task's training-item sample
    (`<name>_train`, see Task.train_task) and its out-of-distribution sample (`<name>_ood`) are scored as the
    task itself."""
    for suffix in (TRAIN_SUFFIX, OOD_SUFFIX):
        base = lm_eval_task.removesuffix(suffix)
        if base != lm_eval_task and _find(base, paths):
            return base
    return lm_eval_task


@functools.lru_cache(maxsize=None)
def scoring(lm_eval_task: str, paths: tuple = ()) -> Scoring:
    """The metrics of any lm-eval task under the roots: a registry task's come from its kind; a plain lm-eval
    task's (e.g. the forgetting check) from its YAML and its utils.py (BINARY_METRICS, FRACTIONAL_METRICS)."""
    name = scored_as(lm_eval_task, paths)
    path = task_yaml(name, paths)
    if "forge" in (_read_yaml(path).get("metadata") or {}):
        t = get(name, paths)
        mod, metrics = t.scorer, t.metrics()
    else:
        mod = utils(name, paths)
        metrics = {m["metric"]: str(m.get("aggregation", "mean")) for m in _read_yaml(path).get("metric_list", [])}
    return Scoring(metrics=metrics, binary=frozenset(getattr(mod, "BINARY_METRICS", ())),
                   fractional=frozenset(getattr(mod, "FRACTIONAL_METRICS", ())))


@functools.lru_cache(maxsize=None)
def utils(task: str, paths: tuple = ()) -> ModuleType:
    """A plain lm-eval task's `!function` module (<root>/<task>/utils.py), imported by path once per process."""
    path = folder(task, paths) / "utils.py"
    spec = importlib.util.spec_from_file_location(f"evals_{task}_utils", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
