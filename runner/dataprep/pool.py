"""More records from the recipe's generator, past the end of its corpus: a pool of candidate training records for
automated iteration, and targeted records (iterate.targeted, data.generator.targeted) whose gold matches a declared
pattern. A generator seeds each record by its index, so these are new documents; they are cleaned by the recipe's
own data policy and kept away from everything the model is judged on.

Each candidate goes through the data section's normalization, PII policy, label checks and token limit, as
the corpus did; a record in a held-out slice (data.split.holdout) is dropped, so the out-of-distribution split
stays unseen; and a record that near-duplicates an eval, test or ood record (the data stage's leakage rule) is
dropped. What each step removed is counted.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Callable

from runner.dataprep import dedup, labels
from runner.dataprep import engine as engines
from runner.governance import pii
from runner.dataprep import records
from runner.dataprep.records import normalize
from runner.stage import StageError


def generate(data_cfg: dict, size: int, start: int = 0) -> list[dict]:
    """`size` records of the recipe's generator after its corpus (indices corpus + start .. corpus + start + size)."""
    gen = data_cfg["generator"]
    if data_cfg["sources"]:
        raise StageError("iterate.pool: mining a pool needs data.generator (the recipe reads data.sources; a pool "
                         "of the user's own unlabelled records cannot be scored)")
    return records.generate(data_cfg, size, start=gen["size"] + start)


def matches(record: dict, where: dict) -> bool:
    """Whether the record has every value `where` names: a key of its gold answer (None: the document states no
    such value), else a key of the record itself (a slice such as layout); a list names alternatives."""
    gold = record["gold"] if isinstance(record.get("gold"), dict) else {}
    for key, want in where.items():
        have = gold[key] if key in gold else record.get(key)
        if have not in (want if isinstance(want, list) else [want]):
            return False
    return True


# data.generator.targeted reads the generator from here on (past the corpus), far past any iterate pool
TRAIN_TARGETED_START = 1_000_000


def matching(data_cfg: dict, start: int, where: dict, size: int, scan: int, at: str) -> tuple[list[dict], int, int]:
    """Records past the corpus from index `start` on: `scan` of them, those that match `where`; returns (the first
    2 * size matches, so that cleaning can drop some; records scanned; records that matched). `at`: the recipe
    path, for errors."""
    raw = generate(data_cfg, scan, start)
    known = {k for r in raw for k in (*r, *(r["gold"] if isinstance(r.get("gold"), dict) else {}))}
    unknown = sorted(set(where) - known)
    if unknown:
        raise StageError(f"{at}.where: '{unknown[0]}' is neither a gold field nor a record key of the generator's "
                         f"records (expected some of: {', '.join(sorted(known))})")
    hits = [r for r in raw if matches(r, where)]
    return hits[:2 * size], len(raw), len(hits)


def targeted(data_cfg: dict, entries: list[dict], task, start: int, clean: Callable[[list[dict]], tuple],
             at: str, progress: Callable[[str], None] = lambda s: None) -> tuple[list[dict], list[dict]]:
    """Generated records aimed at failure patterns (iterate.targeted, data.generator.targeted): per entry, records
    from index `start` on (each entry reads further) whose gold matches its `where`, through `clean` (raw records
    -> (chat records kept, removed per step)), its `size` of them kept; (the chat records, per entry what was
    added)."""
    rows, counts = [], []
    for i, t in enumerate(entries):
        path = f"{at}[{i}]"
        if t.get("cause") and t["cause"] not in task.scorer.CAUSES:
            raise StageError(f"{path}.cause: '{t['cause']}' is not a failure cause of the {task.kind} kind "
                             f"(expected one of: {', '.join(task.scorer.CAUSES)})")
        first = start
        hits, scanned, matched = matching(data_cfg, start, t["where"], t["size"], t["scan"], path)
        start += scanned  # the next entry reads further records, so no record is added twice
        kept, removed = clean(hits)
        if not kept:
            raise StageError(f"{path}: no generated record matching {json.dumps(t['where'])} survived (scanned "
                             f"{scanned}, {matched} matched, cleaning removed {removed}); raise {path}.scan or "
                             "loosen where")
        rows += kept[:t["size"]]
        counts.append({"cause": t.get("cause"), "where": t["where"], "size": t["size"], "start": first, "scanned": scanned,
                       "matched": matched, "cleaned": len(hits), "removed": removed, "added": len(kept[:t["size"]])})
        progress(f"targeted {path}: {counts[-1]['added']} records matching {json.dumps(t['where'])}")
    return rows, counts


def clean(records: list[dict], data_cfg: dict, task, *, to_chat: Callable[[dict], dict],
          count_tokens: Callable[[dict], int], held_out: list[dict], engine=None,
          signatures: dict | None = None) -> tuple[list[dict], dict]:
    """(chat records that passed, {step: records removed}). `held_out`: the chat records of the eval, test and
    ood splits. `engine`: where the leakage check runs (runner/dataprep/engine.py; None: in this process);
    `signatures`: MinHash signatures already made, by text."""
    removed: Counter = Counter()
    holdout = {c: {str(v) for v in vs} for c, vs in (data_cfg["split"]["holdout"] or {}).items()}
    kept = []
    for r in records:
        r = dict(r, document=normalize(r["document"], data_cfg["normalize"]))
        if len(r["document"]) < data_cfg["normalize"]["min_chars"]:
            removed["empty"] += 1
            continue
        if any(str(r.get(c)) in vs for c, vs in holdout.items()):
            removed["held_out_slice"] += 1
            continue
        if data_cfg["pii"]["enabled"]:
            found = pii.scan(r["document"])
            if found:
                text, action = pii.apply_policy(r["document"], found, data_cfg["pii"]["policy"])
                if action == "drop":
                    removed["pii"] += 1
                    continue
                r["document"] = text
        problems = labels.check(task, r["document"], r["gold"])
        if problems and data_cfg["labels"][problems[0][0]] == "drop":
            removed["labels"] += 1
            continue
        chat = to_chat(r)
        chat["tokens"] = count_tokens(chat)
        if chat["tokens"] > data_cfg["max_tokens"]:
            removed["length"] += 1
            continue
        kept.append(chat)
    dd = data_cfg["dedup"]
    if kept and held_out:
        hits = dedup.leakage([c["document"] for c in held_out], [c["document"] for c in kept],
                             dd["leakage_jaccard"], dd["shingle_chars"], dd["num_perm"], engine or engines.Local(1),
                             signatures)
        removed["leakage"] += len(hits)
        kept = [c for j, c in enumerate(kept) if j not in hits]
    return kept, dict(removed)
