"""What every task kind shares: the lm-eval dataset loader that hands each doc its task's resolved spec, the
spec lookup, text folding, and the doc accessors.

The kind modules are lm-eval `!function` targets (loaded by file path from runner/kinds/<kind>.yaml) and are
imported by the runner, the data stage and the gateway: standard library only at import time.

A doc is one row of a split the data stage wrote: `id`, `document` (the input), `gold` (the reference answer:
JSON text for extraction, a label, or a reference text) and the task's slice columns. lm-eval hands a
`process_results` hook only the doc, so the loader below adds `task_spec` (the task's metadata.forge block,
resolved by runner/tasks.py: schema inlined, labels, rules) to every doc.
"""
from __future__ import annotations

import functools
import json
import unicodedata

SPEC_COLUMN = "task_spec"


def load_docs(**kwargs):
    """lm-eval `custom_dataset`: the JSON split(s) in `data_files`, each doc carrying the task's spec. lm-eval
    passes the task's `metadata` (with `forge`, the resolved spec) and its `dataset_kwargs` as keywords."""
    import datasets
    forge = kwargs.get("forge")
    if not isinstance(forge, dict) or "kind" not in forge:
        raise ValueError("metadata.forge (the resolved task spec) is missing: run the task YAML the eval stage "
                         "writes (runs/<run>/stages/eval/tasks/), which inlines it")
    spec = json.dumps(forge, sort_keys=True, ensure_ascii=False)
    ds = datasets.load_dataset("json", data_files=kwargs["data_files"])
    return ds.map(lambda _: {SPEC_COLUMN: spec})


@functools.lru_cache(maxsize=16)
def _parse_spec(text: str) -> dict:
    return json.loads(text)


def spec_of(doc: dict) -> dict:
    s = doc.get(SPEC_COLUMN)
    if s is None:
        raise KeyError(f"doc has no '{SPEC_COLUMN}' (it was not loaded through runner.kinds.common.load_docs)")
    return _parse_spec(s) if isinstance(s, str) else s


def fold(text) -> str:
    """Unicode-compatibility-normalized, case-folded, whitespace-collapsed text."""
    return " ".join(unicodedata.normalize("NFKC", str(text)).casefold().split())


def doc_to_text(doc: dict) -> str:
    return doc["document"]


def gold_text(doc: dict) -> str:
    """A text answer's gold (classification: the label; generation: the reference); also lm-eval's doc_to_target."""
    return str(doc["gold"])


def first_response(results) -> str:
    return results[0] if results else ""


# ---- aggregations shared by the kinds (lm-eval `!function common.<name>`; runner/quality/stats.py has their
# vectorized twins for the bootstrap) ---------------------------------------------------------------

def micro_f1(items: list) -> float:
    tp = sum(i[0] for i in items)
    fp = sum(i[1] for i in items)
    fn = sum(i[2] for i in items)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def macro_f1(items: list) -> float:
    """Mean over units (fields, classes) of each unit's F1; units with no gold and no prediction are skipped."""
    f1s = []
    for per_unit in zip(*items):
        tp, fp, fn = (sum(c[i] for c in per_unit) for i in range(3))
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s) if f1s else 0.0
