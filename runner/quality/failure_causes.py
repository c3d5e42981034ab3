"""Failure analysis with causes: why each wrong unit (field, label, reference) is wrong, counted per model with
intervals, paired between models on the same items, grounded in where the cases concentrate, with examples.

The causes themselves are the task kind's (`causes()` and `CAUSES` in runner/kinds/<kind>.py); each item row
(runner/quality/eval_analysis.item_details) carries them. A cause's rate is the share of test items with at
least one unit wrong for that cause. Its "why" is read from the data: the slice value where the cause
concentrates most (lift over the test split), and that value's share of the training split, so a reader sees
"7 of 9 cases are en_US, 11% of the test items and 9% of what the model was trained on".
"""
from __future__ import annotations

import numpy as np

from runner.quality import stats


MIN_LIFT = 1.5  # a slice value "concentrates" a cause when its share of the cases is 1.5x its share of the items


def describe(cause: str, texts: dict[str, str]) -> str:
    """A cause's meaning; a parameterized cause ("confused_with:shipping") reads its family's text."""
    return texts.get(cause) or texts.get(cause.split(":", 1)[0], "")


def _has(rows: list[dict], cause: str) -> np.ndarray:
    return np.asarray([cause in r["causes"].values() for r in rows], dtype=float)


def concentration(rows: list[dict], cause: str, slices: list[str], train_rows: list[dict]) -> dict | None:
    """The slice value where the cause's items concentrate most (the highest lift, at least MIN_LIFT, with at
    least two cases); None when the cause is spread evenly."""
    hit = [r for r in rows if cause in r["causes"].values()]
    if len(hit) < 2:
        return None
    best = None
    for col in slices:
        for value in sorted({r["slices"][col] for r in hit}):
            cases = sum(r["slices"][col] == value for r in hit)
            test_share = sum(r["slices"][col] == value for r in rows) / len(rows)
            lift = (cases / len(hit)) / test_share
            if cases >= 2 and lift >= MIN_LIFT and (best is None or lift > best["lift"]):
                train = [str(t.get(col, "?")) for t in train_rows]
                best = {"column": col, "value": value, "cases": cases, "of": len(hit), "lift": round(lift, 2),
                        "test_share": round(test_share, 3),
                        "train_share": round(train.count(value) / len(train), 3) if train else None}
    return best


def analyze(details: dict[str, list[dict]], texts: dict[str, str], slices: list[str], train_rows: list[dict],
            pairs: list[tuple[str, str]], focus: str | None, iters: int, seed: int, examples: int = 3) -> dict:
    """details: model -> item rows (every item, or a first look's for a prompting baseline stopped early); pairs: (model, against) paired per cause;
    focus: the model whose cases explain each cause and give its examples (others fill in when it has too few)."""
    order = {c: i for i, c in enumerate(texts)}
    seen = sorted({c for rows in details.values() for r in rows for c in r["causes"].values()},
                  key=lambda c: (order.get(c.split(":", 1)[0], len(order)), c))
    models = {}
    for m, rows in details.items():
        by = {}
        for c in seen:
            units: dict[str, int] = {}
            for r in rows:
                for u, cu in r["causes"].items():
                    if cu == c:
                        units[u] = units.get(u, 0) + 1
            has = _has(rows, c)
            by[c] = {"items": int(has.sum()), "units": sum(units.values()), "by_unit": units,
                     "rate": stats.bootstrap(stats.Metric(has), iters, seed)}
        models[m] = {"n": len(rows), "items_wrong": sum(bool(r["causes"]) for r in rows), "by_cause": by}
    changes = {}
    for m, b in pairs:
        if m in details and b in details:
            # on the items both have (a prompting baseline stopped early has the first look's only)
            ids = {r["doc_id"] for r in details[m]} & {r["doc_id"] for r in details[b]}
            rm, rb = ([r for r in sorted(details[x], key=lambda r: r["doc_id"]) if r["doc_id"] in ids] for x in (m, b))
            changes[f"{m}-vs-{b}"] = {c: stats.paired(stats.Metric(_has(rb, c)), stats.Metric(_has(rm, c)), iters, seed)
                                      for c in seen}
    why, shown = {}, {}
    ranked = ([focus] if focus in details else []) + [m for m in details if m != focus]
    for c in seen:
        if focus in details:
            why[c] = concentration(details[focus], c, slices, train_rows)
        shown[c] = []
        for m in ranked:
            for r in details[m]:
                u = next((u for u, cu in r["causes"].items() if cu == c), None)
                if u is not None and len(shown[c]) < examples and r["id"] not in {e["id"] for e in shown[c]}:
                    shown[c].append({"model": m, "id": r["id"], "unit": u, "slices": r["slices"],
                                     "gold": _value(r["gold"], u), "answer": _answer(r["prediction"], u)})
    return {"causes": {c: describe(c, texts) for c in seen}, "models": models, "changes": changes, "why": why,
            "examples": shown, "focus": focus}


def _value(gold, unit: str):
    return gold.get(unit) if isinstance(gold, dict) else gold


def _answer(text: str, unit: str):
    """The answered value of one unit (a field of a JSON answer), else the answer's start."""
    import json
    try:
        obj = json.loads(text.strip())
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        return obj.get(unit)
    return text.strip().replace("\n", " ")[:120]
