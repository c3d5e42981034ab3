"""What a record is on its way in: the generators a recipe can name, the text normalization of the data policy,
the chat record that Axolotl trains on and lm-eval scores, and a seeded sample of a split file. The data stage
and the iteration pool both build their records with these, so a pool record is made exactly as a corpus
record is."""
from __future__ import annotations

import html
import random
import re
import unicodedata

from runner import tasks
from runner.datagen import invoice

GENERATORS = {"invoice": invoice.generate}


def generate(data_cfg: dict, size: int, start: int = 0) -> list[dict]:
    """Records start .. start + size - 1 of the recipe's generator, with its variation (if any); the held-out
    slices (data.split.holdout) are never varied, so the out-of-distribution split keeps the corpus's one form."""
    gen = data_cfg["generator"]
    variation = gen.get("variation") or {}
    if any(variation.get(k) for k in ("foreign_currency", "label_synonyms")):
        variation = dict(variation, skip=data_cfg["split"].get("holdout") or {})
    else:
        variation = None
    return GENERATORS[gen["name"]](gen["seed"], size, start=start, variation=variation)


def normalize(text: str, cfg: dict) -> str:
    if cfg["strip_html"]:
        text = html.unescape(re.sub(r"<[^>]+>", " ", text))
    if cfg["unicode"] != "none":
        text = unicodedata.normalize(cfg["unicode"], text)
    if cfg["collapse_whitespace"]:
        text = re.sub(r"[ \t]+", " ", text)
        text = re.sub(r" *\n *", "\n", text)
        text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return text


def to_chat(rec: dict, system_prompt: str, task: tasks.Task) -> dict:
    """A chat record for Axolotl (messages) and lm-eval (document, gold), with the task's slice columns. `gold`
    is text (extraction: JSON text; the datasets JSON loader would otherwise turn ISO dates into timestamps)."""
    answer, slices = task.scorer.answer_text(rec["gold"]), task.slices
    return {
        "id": rec["id"], **({"group": rec["group"]} if "group" in rec else {}),
        **{c: rec.get(c, "?") for c in slices}, "document": rec["document"],
        "gold": answer,
        "messages": [{"role": "system", "content": system_prompt},
                     {"role": "user", "content": rec["document"]},
                     {"role": "assistant", "content": answer}],
    }


def sample_split(split_file, out_file, n: int, seed: int):
    """A seeded sample of n rows of a split file (all of them, shuffled, when it has fewer)."""
    rows = [x for x in split_file.read_text().splitlines() if x.strip()]
    rows = random.Random(seed).sample(rows, min(n, len(rows)))
    out_file.write_text("\n".join(rows) + "\n")
    return out_file
