"""Label quality for the task, judged by the task kind's own `check_gold` (runner/kinds/): extraction gold must
validate against the schema, keep the consistency rules and be grounded in the document (the same
normalization the evaluation uses for its hallucination signal); classification gold must be one of the
labels; a generation reference must not be empty."""
from __future__ import annotations

from runner.tasks import Task

POLICY_KEY = {"invalid": "schema_invalid", "ungrounded": "ungrounded"}  # problem category -> data.labels key


def check(task: Task, document: str, gold) -> list[tuple[str, str]]:
    """Problems with one record's gold answer as (data.labels policy key, message); empty: fine."""
    return [(POLICY_KEY[c], msg) for c, msg in task.scorer.check_gold(task.spec, document, gold)]
