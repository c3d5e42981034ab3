"""Metrics for the invoice_extraction task (lm-eval `!function` hooks). Pure Python: no imports outside stdlib
except jsonschema, so the same file scores predictions anywhere."""
from __future__ import annotations

import datetime as dt
import json
import re
import unicodedata
from pathlib import Path

FIELDS = ("invoice_number", "invoice_date", "due_date", "seller", "buyer", "currency", "subtotal", "tax", "total")
NUMBERS = ("subtotal", "tax", "total")
DATES = ("invoice_date", "due_date")
BINARY_METRICS = ("json_valid", "schema_valid", "exact_match")  # 0/1 per item: McNemar applies
FRACTIONAL_METRICS = ("field_accuracy",)
SCHEMA_PATH = Path(__file__).resolve().parent / "schema.json"


def doc_to_text(doc: dict) -> str:
    return doc["document"]


def gold_of(doc: dict) -> dict:
    """The gold object (stored as JSON text in the split files)."""
    g = doc["gold"]
    return json.loads(g) if isinstance(g, str) else g


def doc_to_target(doc: dict) -> str:
    return json.dumps(gold_of(doc), ensure_ascii=False)


def parse_prediction(text: str):
    """The JSON object a model answered with (a ```json fence is tolerated), or None."""
    t = text.strip()
    fence = re.match(r"^```(?:json)?\s*(.*?)\s*```$", t, re.S)
    if fence:
        t = fence.group(1)
    try:
        obj = json.loads(t)
    except (json.JSONDecodeError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _schema_validator():
    global _VALIDATOR
    try:
        return _VALIDATOR
    except NameError:
        pass
    try:
        from jsonschema import Draft202012Validator
        _VALIDATOR = Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
    except ImportError:  # pragma: no cover - jsonschema ships with every venv of this project
        _VALIDATOR = None
    return _VALIDATOR


def _text(v) -> str:
    return " ".join(unicodedata.normalize("NFKC", str(v)).casefold().split())


def normalize(field: str, value):
    """Canonical form for comparison: ISO dates, numbers rounded to cents, names case/space-folded."""
    if value is None:
        return None
    if field in NUMBERS:
        try:
            return round(float(str(value).replace(",", "").replace(" ", "")), 2)
        except ValueError:
            return _text(value)
    if field in DATES:
        try:
            return dt.date.fromisoformat(str(value).strip()).isoformat()
        except ValueError:
            return _text(value)
    if field == "currency":
        return str(value).strip().upper()
    return _text(value)


def field_scores(gold: dict, pred: dict | None) -> dict:
    pred = pred or {}
    out = {}
    for f in FIELDS:
        g, p = normalize(f, gold.get(f)), normalize(f, pred.get(f))
        out[f] = int(g == p)
    return out


def _number_forms(x: float) -> set[str]:
    forms = set()
    for dec in (0, 2):
        s = f"{x:,.{dec}f}"
        if dec == 0 and abs(x - round(x)) > 1e-9:
            continue
        forms |= {s, s.replace(",", ""), s.replace(",", "\x00").replace(".", ",").replace("\x00", "."),
                  s.replace(",", " ").replace(".", ","), s.replace(",", "'")}
    return forms


def grounded(field: str, value, document: str) -> bool:
    """Does a predicted value occur in the document (allowing local number/date formats)?"""
    doc = _text(document)
    if field in NUMBERS:
        try:
            return any(f in document for f in _number_forms(float(value)))
        except (TypeError, ValueError):
            return False
    if field in DATES:
        try:
            d = dt.date.fromisoformat(str(value))
        except ValueError:
            return False
        forms = {d.isoformat(), d.strftime("%d.%m.%Y"), d.strftime("%d/%m/%Y"), d.strftime("%m/%d/%Y"),
                 d.strftime("%d %B %Y"), d.strftime("%Y年%m月%d日")}
        return any(f.casefold() in doc for f in forms)
    if field == "currency":
        symbols = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "CHF": "chf"}
        v = str(value).upper()
        return v.casefold() in doc or symbols.get(v, "\x00") in doc
    return _text(value) in doc


def field_outcomes(gold: dict, pred: dict | None, document: str) -> dict[str, str]:
    """Per field, one of: correct | missing (gold has a value, none predicted) | spurious (a value where gold is
    null) | format_error (the value breaks the task schema) | hallucinated (wrong and not in the document) |
    wrong_value (wrong but present in the document: the wrong span) | invalid_json (no object parsed)."""
    if pred is None:
        return {f: "invalid_json" if gold.get(f) is not None else "correct" for f in FIELDS}
    props = json.loads(SCHEMA_PATH.read_text())["properties"]
    out = {}
    for f in FIELDS:
        g, raw = normalize(f, gold.get(f)), pred.get(f)
        p = normalize(f, raw)
        if p == g:
            out[f] = "correct"
        elif p is None:
            out[f] = "missing"
        elif g is None:
            out[f] = "spurious"
        elif not _field_valid(props[f], raw):
            out[f] = "format_error"
        elif not grounded(f, raw, document):
            out[f] = "hallucinated"
        else:
            out[f] = "wrong_value"
    return out


def _field_valid(schema: dict, value) -> bool:
    v = _schema_validator()
    if v is None:  # pragma: no cover
        return True
    return type(v)(schema).is_valid(value)


def field_counts(gold: dict, pred: dict | None) -> dict[str, tuple[int, int, int]]:
    """Per field (tp, fp, fn) after normalization: a wrong non-null prediction counts as fp, and as fn too
    when gold has a value."""
    out = {}
    for f in FIELDS:
        g = normalize(f, gold.get(f))
        p = normalize(f, (pred or {}).get(f))
        if p is not None and p == g:
            out[f] = (1, 0, 0)
        elif p is not None:
            out[f] = (0, 1, int(g is not None))
        else:
            out[f] = (0, 0, int(g is not None))
    return out


def process_results(doc: dict, results: list[str]) -> dict:
    text = results[0] if results else ""
    pred = parse_prediction(text)
    gold = gold_of(doc)
    v = _schema_validator()
    schema_ok = pred is not None and (v is None or v.is_valid(pred))
    scores = field_scores(gold, pred)
    counts = field_counts(gold, pred)
    g_total = g_hits = 0
    for f in FIELDS:
        if normalize(f, (pred or {}).get(f)) is not None:
            g_total += 1
            g_hits += int(grounded(f, pred[f], doc["document"]))
    return {
        "json_valid": int(pred is not None),
        "schema_valid": int(schema_ok),
        "field_accuracy": sum(scores.values()) / len(FIELDS),
        "field_f1": tuple(map(sum, zip(*counts.values()))),
        "field_f1_macro": [counts[f] for f in FIELDS],
        "exact_match": int(all(scores.values())),
        "grounding_rate": (g_hits, g_total),
    }


def micro_f1(items: list) -> float:
    tp = sum(i[0] for i in items)
    fp = sum(i[1] for i in items)
    fn = sum(i[2] for i in items)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def macro_f1(items: list) -> float:
    """Mean over fields of each field's F1 (fields with no gold and no predicted value anywhere are skipped)."""
    f1s = []
    for per_field in zip(*items):
        tp, fp, fn = (sum(c[i] for c in per_field) for i in range(3))
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s) if f1s else 0.0


def grounding_rate(items: list) -> float:
    """Share of predicted non-null values found in the document; NaN when nothing was predicted (a model
    that answers nothing has no grounding rate, not a perfect one)."""
    hits = sum(i[0] for i in items)
    total = sum(i[1] for i in items)
    return hits / total if total else float("nan")
