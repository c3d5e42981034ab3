"""Label quality for the task: gold must validate against the task schema, and every non-null gold value
must be grounded in the document (normalization-aware: the task's own `grounded` from evals/<task>/utils.py,
the same function the evaluation uses for its hallucination signal)."""
from __future__ import annotations

import json
from functools import lru_cache

from jsonschema import Draft202012Validator

from runner import task_files
from runner.env import REPO


@lru_cache(maxsize=4)
def schema_validator(task: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads((REPO / "schemas" / "tasks" / f"{task}.schema.json").read_text()))


def check(task: str, document: str, gold) -> list[str]:
    """Problems with one record's gold answer (empty list: fine)."""
    if not isinstance(gold, dict):
        return [f"gold is not a JSON object ({type(gold).__name__})"]
    errors = [f"schema: {e.json_path}: {e.message}" for e in schema_validator(task).iter_errors(gold)]
    if errors:
        return errors
    utils = task_files.utils(f"{task}_extraction")
    return [f"ungrounded: {k}={v!r} not found in the document" for k, v in gold.items()
            if v is not None and not utils.grounded(k, v, document)]
