"""Label quality for the task: gold must validate against the task schema, and every non-null gold value
must be grounded in the document (normalization-aware: the task's own `grounded` from evals/<task>/utils.py,
the same function the evaluation uses for its hallucination signal)."""
from __future__ import annotations

from functools import lru_cache

from jsonschema import Draft202012Validator

from runner.tasks import Task


@lru_cache(maxsize=8)
def schema_validator(task: Task) -> Draft202012Validator:
    return Draft202012Validator(task.schema_json())


def check(task: Task, document: str, gold) -> list[str]:
    """Problems with one record's gold answer (empty list: fine)."""
    if not isinstance(gold, dict):
        return [f"gold is not a JSON object ({type(gold).__name__})"]
    errors = [f"schema: {e.json_path}: {e.message}" for e in schema_validator(task).iter_errors(gold)]
    if errors:
        return errors
    utils = task.utils()
    return [f"ungrounded: {k}={v!r} not found in the document" for k, v in gold.items()
            if v is not None and not utils.grounded(k, v, document)]
