"""Scoring for general_instructions: an answer is right when one of the accepted answers occurs in it as a
whole word or phrase (case- and width-folded). `answered_as_json` counts answers that came back as a JSON
object: the tell-tale of a fine-tune that now answers everything in its task's format."""
from __future__ import annotations

import json
import re
import unicodedata

BINARY_METRICS = ("accuracy", "answered_as_json")


def _fold(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", str(text)).casefold().split())


def doc_to_text(doc: dict) -> str:
    return doc["question"]


def doc_to_target(doc: dict) -> str:
    return doc["answers"][0]


def correct(answer: str, accepted: list[str]) -> bool:
    text = _fold(answer)
    return any(re.search(rf"(?<!\w){re.escape(_fold(a))}(?!\w)", text) for a in accepted)


def looks_like_json(answer: str) -> bool:
    t = answer.strip().removeprefix("```json").removeprefix("```").strip()
    if not t.startswith("{"):
        return False
    try:
        json.loads(t.removesuffix("```").strip())
        return True
    except ValueError:
        return t.startswith('{"')


def process_results(doc: dict, results: list[str]) -> dict:
    answer = results[0] if results else ""
    return {"accuracy": int(correct(answer, doc["answers"])), "answered_as_json": int(looks_like_json(answer))}
