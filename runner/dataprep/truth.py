"""Score the data stage's detectors against the generator's ground truth (injected defects and printed PII)."""
from __future__ import annotations

import re


def _pr(detected: set, truth: set) -> dict:
    tp = len(detected & truth)
    return {"truth": len(truth), "detected": len(detected), "true_positives": tp,
            "recall": round(tp / len(truth), 4) if truth else None,
            "precision": round(tp / len(detected), 4) if detected else None}


def _pr_contains(detected: set, truth: set) -> dict:
    """Like _pr on (record id, value) pairs, where a detection matches a truth value in the same record if one
    contains the other (a detector may take a slightly wider or narrower span than the generator printed)."""
    by_id: dict[str, list[str]] = {}
    for rec_id, value in truth:
        by_id.setdefault(rec_id, []).append(value)
    det_by_id: dict[str, list[str]] = {}
    for rec_id, value in detected:
        det_by_id.setdefault(rec_id, []).append(value)
    match = lambda a, b: a in b or b in a
    found = {(i, v) for i, v in truth if any(match(v, d) for d in det_by_id.get(i, ()))}
    right = {(i, v) for i, v in detected if any(match(t, v) for t in by_id.get(i, ()))}
    return {"truth": len(truth), "detected": len(detected), "true_positives": len(found),
            "recall": round(len(found) / len(truth), 4) if truth else None,
            "precision": round(len(right) / len(detected), 4) if detected else None}


def _norm_value(kind: str, value: str) -> str:
    if kind in ("phone", "credit_card", "iban"):
        return re.sub(r"[^0-9A-Za-z]", "", value).upper()
    return value.strip().lower()


def score(truth: list[dict], removed: dict[str, dict], flagged: dict[str, set], pii_truth: dict[str, list[dict]],
          findings: dict[str, list[dict]], reached: dict[str, set], near_target: float,
          outliers: set[str]) -> dict:
    """`removed`: id -> {"step", ...}; `flagged`: step -> ids flagged (kept); `reached`: step -> ids that were
    still in the set when it ran. Returns recall/precision per detector."""
    by_type: dict[str, set] = {}
    for t in truth:
        by_type.setdefault(t["type"], set()).add(t["id"])
    removed_at = lambda step: {i for i, r in removed.items() if r["step"] == step}
    out = {}
    out["empty"] = _pr(removed_at("empty"), by_type.get("empty", set()))
    # duplicates are scored as pairs: dedup keeps whichever copy comes first, so either member may be removed
    group = {}  # record id -> its source id (the source itself and all its injected copies share one group)
    for t in truth:
        if t["type"] in ("exact_duplicate", "near_duplicate"):
            group[t["id"]] = t["of"]
            group.setdefault(t["of"], t["of"])
    same = lambda a, b: a in group and b in group and group[a] == group[b]
    for kind, step in (("exact_duplicate", "exact_dedup"), ("near_duplicate", "near_dedup")):
        pairs = [t for t in truth if t["type"] == kind and t["id"] in reached[step] and t["of"] in reached[step]]
        if kind == "near_duplicate":
            pairs = [t for t in pairs if t.get("jaccard_seen", t["jaccard"]) >= near_target]
        hits = [t for t in pairs if any(r["step"] == step and r["id"] in (t["id"], t["of"]) and same(r["id"], r["of"])
                                        for r in (removed.get(t["id"]), removed.get(t["of"])) if r)]
        detected = [r for r in removed.values() if r["step"] == step]
        right = [r for r in detected if same(r["id"], r["of"])]
        out[kind] = {"truth": len(pairs), "detected": len(detected), "true_positives": len(hits),
                     "recall": round(len(hits) / len(pairs), 4) if pairs else None,
                     "precision": round(len(right) / len(detected), 4) if detected else None}
    out["near_duplicate"]["below_target_injected"] = sum(1 for t in truth if t["type"] == "near_duplicate"
                                                         and t.get("jaccard_seen", t["jaccard"]) < near_target)
    # PII / secrets, per type, on records that reached the scan
    for kind in ("email", "phone", "iban", "credit_card", "secret"):
        t_set = {(i, _norm_value(kind, p["value"])) for i, ps in pii_truth.items() if i in reached["pii"]
                 for p in ps if p["type"] == kind}
        d_set = {(i, _norm_value(kind, f["value"])) for i, fs in findings.items() for f in fs if f["type"] == kind}
        out[f"pii_{kind}"] = _pr_contains(d_set, t_set)
    label_truth = (by_type.get("wrong_gold", set()) | by_type.get("truncated", set())) & reached["labels"]
    label_detected = removed_at("labels") | flagged.get("labels", set())
    out["labels"] = _pr(label_detected, label_truth)
    # near/exact copies of defective records and near copies whose edits cut a gold value are right to catch too
    injected = {t["id"] for t in truth}
    out["labels"]["precision_any_defect"] = (round(len(label_detected & injected) / len(label_detected), 4)
                                             if label_detected else None)
    out["off_domain"] = _pr(outliers, by_type.get("off_domain", set()) & reached.get("datalab", set()))
    return out
