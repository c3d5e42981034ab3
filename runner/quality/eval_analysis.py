"""From lm-eval's per-sample logs to evidence: metrics with bootstrap CIs, paired comparisons against the
baseline, breakdowns by field and slice, and harvested failure cases.

How each metric aggregates is read from the task's own YAML (`aggregation: mean` or `!function
utils.<name>`), so the intervals here are computed on exactly what lm-eval aggregates, and every point value
is cross-checked against lm-eval's own result.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from runner import tasks
from runner.quality import stats
from runner.stage import StageError

# task-YAML aggregation (the `!function` target's function name) -> how per-item values combine
AGGREGATIONS = {"mean": None, "micro_f1": stats.micro_f1, "macro_f1": stats.macro_f1, "grounding_rate": stats.rate}


def aggregation(task: str, metric: str, agg: str):
    key = agg.rsplit(".", 1)[-1]
    if key not in AGGREGATIONS:
        raise StageError(f"task {task}: metric '{metric}' aggregates with '{agg}', which the statistics do not know "
                         f"(known: {', '.join(AGGREGATIONS)})")
    return key


def by_doc(samples: list[dict]) -> dict[int, dict]:
    return {s["doc_id"]: s for s in samples}


def response(sample: dict) -> str:
    r = sample.get("filtered_resps") or sample.get("resps") or [""]
    while isinstance(r, list):
        r = r[0] if r else ""
    return str(r)


def metric_values(samples: list[dict], name: str, agg: str) -> stats.Metric:
    vals = [s[name] for s in samples]
    fn = AGGREGATIONS[agg.rsplit(".", 1)[-1]]
    if fn is None:
        return stats.Metric(np.asarray(vals, dtype=float))
    arr = np.asarray([np.ravel(v) for v in vals], dtype=float)
    return stats.Metric(arr, fn)


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return abs(a - b) < 1e-6


def summarize(task: str, scoring: tasks.Scoring, samples: list[dict], lm_eval_agg: dict, iters: int,
              seed: int) -> dict:
    """metric -> {value, low, high, n}; the point value must equal lm-eval's aggregate."""
    out = {}
    for name, agg in scoring.metrics.items():
        aggregation(task, name, agg)
        m = metric_values(samples, name, agg)
        ci = stats.bootstrap(m, iters, seed)
        theirs = lm_eval_agg.get(name)
        ours = m.point() if len(samples) else None
        if theirs is not None and ours is not None and not _same(float(theirs), ours):
            raise StageError(f"{task}/{name}: re-aggregated per-sample value {ours} differs from lm-eval's {theirs}")
        out[name] = ci
    return out


def restrict(samples: list[dict], like: list[dict]) -> list[dict]:
    """The samples of the items that `like` has (a model scored on every item, against one scored on fewer)."""
    ids = {s["doc_id"] for s in like}
    return [s for s in samples if s["doc_id"] in ids]


def compare(task: str, scoring: tasks.Scoring, base: list[dict], other: list[dict], iters: int, seed: int,
            level: float = 0.95) -> dict:
    """metric -> paired difference (other - base) with CI (at `level`) and p-value; binary metrics add McNemar."""
    a, b = by_doc(base), by_doc(other)
    ids = sorted(a)
    if sorted(b) != ids:
        raise StageError(f"{task}: the models were scored on different items ({len(a)} vs {len(b)}); "
                         "paired statistics need the same items")
    sa, sb = [a[i] for i in ids], [b[i] for i in ids]
    out = {}
    for name, agg in scoring.metrics.items():
        aggregation(task, name, agg)
        if any(name not in s for s in sa + sb):  # a run recorded before the metric existed: nothing to pair
            continue
        ma, mb = metric_values(sa, name, agg), metric_values(sb, name, agg)
        cmp = stats.paired(ma, mb, iters, seed, level)
        if name in scoring.binary or (agg == "mean" and name not in scoring.fractional and
                                            set(np.unique(np.concatenate([ma.values, mb.values]))) <= {0.0, 1.0}):
            cmp["mcnemar"] = stats.mcnemar(ma.values, mb.values)
        cmp["improved"] = bool(stats.significant(cmp) and cmp["low"] > 0)
        cmp["worse"] = bool(stats.significant(cmp) and cmp["high"] < 0)
        out[name] = cmp
    return out


# ---- the recipe's task: per-item detail, breakdowns, failure cases ------------------------------------

def length_bucket(chars: int, edges: list[int]) -> str:
    for i, e in enumerate(edges):
        if chars < e:
            return f"<{e}" if i == 0 else f"{edges[i - 1]}–{e - 1}"
    return f">={edges[-1]}"


def _bucket_order(label: str):
    """'<250' < '250–399' < '>=400': by the first number in the label, '<' first."""
    digits = "".join(c if c.isdigit() else " " for c in label).split()
    return (0 if label.startswith("<") else 2 if label.startswith(">") else 1, int(digits[0]) if digits else 0)


def item_details(samples: list[dict], task: tasks.Task, edges: list[int]) -> list[dict]:
    """One row per test item: its values of the task's slice columns, length bucket, per-unit outcomes (fields,
    the gold class, the reference), its headline value as lm-eval logged it (for slice breakdowns)."""
    rows, scorer = [], task.scorer
    for s in sorted(samples, key=lambda s: s["doc_id"]):
        doc = s["doc"]
        text = response(s)
        rows.append({
            "doc_id": s["doc_id"], "id": doc.get("id"), "slices": {c: str(doc.get(c, "?")) for c in task.slices},
            "length": length_bucket(len(doc["document"]), edges),
            "outcomes": scorer.outcomes(task.spec, doc, text, s), "causes": scorer.causes(task.spec, doc, text, s),
            "headline": s[task.headline], "document": doc["document"], "gold": scorer.gold_of(doc),
            "prediction": text,
        })
    return rows


def breakdowns(details: dict[str, list[dict]], baseline: str, iters: int, seed: int, task: tasks.Task) -> dict:
    """Per unit (extraction: each field's accuracy; classification: each gold class's accuracy, i.e. recall)
    and per value of each slice column and length bucket (the task's headline metric, aggregated as lm-eval
    does): each model's value with CI, and each model's paired difference against the baseline."""
    models = list(details)
    unit = task.scorer.UNIT
    agg = task.metrics()[task.headline]
    out: dict = {**({unit: {}} if unit else {}), **{c: {} for c in task.slices}, "length": {}}
    first = details[models[0]] if models else []
    if unit:
        units = sorted({u for r in first for u in r["outcomes"]}) if unit == "class" else \
            list(first[0]["outcomes"]) if first else []
        for u in units:
            vals = {m: stats.Metric(np.asarray([r["outcomes"][u] == "correct" for r in rows if u in r["outcomes"]],
                                               dtype=float)) for m, rows in details.items()}
            out[unit][u] = _slice_stats(vals, baseline, iters, seed)

    def value(r: dict, dim: str) -> str:
        return r["length"] if dim == "length" else r["slices"][dim]

    for dim in (*task.slices, "length"):
        keys = sorted({value(r, dim) for r in first}, key=_bucket_order if dim == "length" else str)
        for k in keys:
            vals = {m: metric_values([{"v": r["headline"]} for r in rows if value(r, dim) == k], "v", agg)
                    for m, rows in details.items()}
            out[dim][k] = _slice_stats(vals, baseline, iters, seed)
    return out


def confusion(rows: list[dict], labels: list[str], task: tasks.Task) -> dict:
    """Classification: the confusion matrix (gold -> predicted, 'invalid' for an answer that is no label) and
    per-class precision, recall and F1."""
    cols = [*labels, "invalid"]
    matrix = {g: {p: 0 for p in cols} for g in labels}
    for r in rows:
        gold = next(iter(r["outcomes"]))
        pred = task.scorer.parse_label(task.spec, r["prediction"]) or "invalid"
        if gold in matrix:
            matrix[gold][pred] += 1
    per = {}
    for lab in labels:
        tp = matrix[lab][lab]
        predicted = sum(matrix[g][lab] for g in labels)
        actual = sum(matrix[lab].values())
        p = tp / predicted if predicted else None
        rc = tp / actual if actual else None
        per[lab] = {"precision": p, "recall": rc, "support": actual,
                    "f1": 2 * p * rc / (p + rc) if p and rc else 0.0 if actual or predicted else None}
    return {"labels": labels, "matrix": matrix, "per_class": per}


def _slice_stats(vals: dict[str, stats.Metric], baseline: str, iters: int, seed: int) -> dict:
    row = {m: stats.bootstrap(v, iters, seed) for m, v in vals.items()}
    if baseline in vals:
        for m, v in vals.items():
            if m != baseline:
                row[f"{m}-vs-{baseline}"] = stats.paired(vals[baseline], v, iters, seed)
    return row


def item_category(outcomes: dict[str, str], order: tuple[str, ...]) -> str | None:
    """The item's failure category: the most severe unit outcome (None when every unit is right)."""
    seen = set(outcomes.values())
    for cat in order:
        if cat in seen:
            return cat
    return None


def failure_cases(model_rows: list[dict], base_rows: list[dict] | None, task: tasks.Task, limit: int) -> tuple[dict, list]:
    """(counts per category over units and items, the harvested cases): every item the model got wrong,
    those where it scored below the baseline first, then by how many units it missed."""
    order = task.scorer.OUTCOME_ORDER
    base = {r["doc_id"]: r for r in base_rows or []}
    unit_counts: dict[str, int] = {c: 0 for c in order}
    item_counts: dict[str, int] = {c: 0 for c in order}
    by_unit: dict[str, dict[str, int]] = {c: {} for c in order}
    cases = []
    for r in model_rows:
        for f, o in r["outcomes"].items():
            if o != "correct":
                unit_counts[o] += 1
                by_unit[o][f] = by_unit[o].get(f, 0) + 1
        cat = item_category(r["outcomes"], order)
        if cat is None:
            continue
        item_counts[cat] += 1
        right = sum(o == "correct" for o in r["outcomes"].values())
        b = base.get(r["doc_id"])
        base_right = sum(o == "correct" for o in b["outcomes"].values()) if b else None
        cases.append({
            "id": r["id"], "doc_id": r["doc_id"], "category": cat, "slices": r["slices"],
            "fields_right": right, "baseline_fields_right": base_right,
            "worse_than_baseline": base_right is not None and right < base_right,
            "wrong_fields": {f: o for f, o in r["outcomes"].items() if o != "correct"},
            "document": r["document"], "gold": r["gold"], "prediction": r["prediction"],
        })
    cases.sort(key=lambda c: (not c["worse_than_baseline"], c["fields_right"], c["doc_id"]))
    return {"fields": unit_counts, "items": item_counts, "by_field": by_unit}, cases[:limit]


def read_samples(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
