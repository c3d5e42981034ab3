"""Hard-example mining: from a pool the tuned model was scored on, the items it got wrong, chosen so that every
failure cause it showed is represented (the causes are the task kind's, as in failure analysis).

Causes take turns, the rarest first, each giving its next item (the one with the most wrong units), until the
budget is spent: a cause with 5 pool cases is not crowded out by one with 60.
"""
from __future__ import annotations

from collections import Counter


def select(rows: list[dict], budget: int) -> tuple[list[dict], dict]:
    """rows: item rows with "causes" ({unit: cause}); returns (the chosen rows, per cause {"pool_items",
    "chosen"}); a row counts for every cause it shows."""
    by_cause: dict[str, list[dict]] = {}
    for r in rows:
        for c in sorted(set(r["causes"].values())):
            by_cause.setdefault(c, []).append(r)
    for items in by_cause.values():
        items.sort(key=lambda r: (-len(r["causes"]), str(r["id"])))
    order = sorted(by_cause, key=lambda c: (len(by_cause[c]), c))
    chosen: list[dict] = []
    seen: set = set()
    cursor = {c: 0 for c in order}
    while len(chosen) < budget and any(cursor[c] < len(by_cause[c]) for c in order):
        for c in order:
            items = by_cause[c]
            while cursor[c] < len(items) and items[cursor[c]]["id"] in seen:
                cursor[c] += 1
            if cursor[c] < len(items) and len(chosen) < budget:
                chosen.append(items[cursor[c]])
                seen.add(items[cursor[c]]["id"])
                cursor[c] += 1
    counts = Counter(c for r in chosen for c in set(r["causes"].values()))
    summary = {c: {"pool_items": len(by_cause[c]), "chosen": counts.get(c, 0)} for c in order}
    return chosen, summary
