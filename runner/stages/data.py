"""data: generate or ingest records, normalize, drop exact duplicates and over-long records,
split deterministically (stratified by layout and locale), write chat JSONL, version the result."""
from __future__ import annotations

import hashlib
import json
import random
import re
import unicodedata
from collections import Counter, defaultdict

from runner import models
from runner.datagen import invoice
from runner.stage import Context, Result, StageError

SECTIONS = ("data", "base_model", "seed")
INPUTS = ()
CODE = ("runner/datagen/invoice.py",)
GENERATORS = {"invoice": invoice.generate}


def fingerprint(recipe: dict) -> str:
    return models.fingerprint(recipe["base_model"])  # token lengths depend on the tokenizer


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFC", text)
    text = re.sub(r"<[^>]+>", " ", text)
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def to_chat(rec: dict, system_prompt: str) -> dict:
    """A chat record for Axolotl (messages) and lm-eval (document, gold). `gold` is JSON text: the
    datasets JSON loader would otherwise turn ISO date strings into timestamps."""
    answer = json.dumps(rec["gold"], ensure_ascii=False)
    return {
        "id": rec["id"], "layout": rec["layout"], "locale": rec["locale"], "document": rec["document"],
        "gold": answer,
        "messages": [{"role": "system", "content": system_prompt},
                     {"role": "user", "content": rec["document"]},
                     {"role": "assistant", "content": answer}],
    }


def split(records: list[dict], fractions: dict, seed: int) -> dict[str, list[dict]]:
    """Seeded, stratified by (layout, locale). Each stratum is shuffled and cut by the fractions; the
    fractional remainders carry over from stratum to stratum, so small strata still feed every split and the
    overall sizes match the fractions."""
    strata = defaultdict(list)
    for r in records:
        strata[(r["layout"], r["locale"])].append(r)
    out: dict[str, list[dict]] = {"train": [], "eval": [], "test": []}
    rng = random.Random(seed)
    want = {"test": 0.0, "eval": 0.0}
    for key in sorted(strata):
        group = strata[key]
        rng.shuffle(group)
        cut = {}
        for name in ("test", "eval"):
            want[name] += len(group) * fractions[name]
            cut[name] = int(want[name] + 1e-9) - len(out[name])
        n_test = min(cut["test"], len(group))
        n_eval = min(cut["eval"], len(group) - n_test)
        out["test"] += group[:n_test]
        out["eval"] += group[n_test:n_test + n_eval]
        out["train"] += group[n_test + n_eval:]
    for recs in out.values():
        recs.sort(key=lambda r: r["id"])
    return out


def run(ctx: Context) -> Result:
    cfg = ctx.section("data")
    total = sum(cfg["split"].values())
    if abs(total - 1.0) > 1e-6:
        raise StageError(f"data.split: fractions must add up to 1.0, found {total:g}")
    gen = cfg["generator"]
    ctx.progress(f"generating {gen['size']} records ({gen['name']}, seed {gen['seed']})")
    raw = GENERATORS[gen["name"]](gen["seed"], gen["size"])
    counts = {"raw": len(raw)}
    removed: list[dict] = []

    for r in raw:
        r["document"] = normalize(r["document"])
    seen: dict[str, str] = {}
    unique = []
    for r in raw:
        h = hashlib.sha256(r["document"].lower().encode()).hexdigest()
        if h in seen:
            removed.append({"id": r["id"], "step": "exact_dedup", "reason": f"same text as {seen[h]}"})
            continue
        seen[h] = r["id"]
        unique.append(r)
    counts["after_exact_dedup"] = len(unique)

    from tokenizers import Tokenizer
    tok_file = models.base_model_dir(ctx.section("base_model")) / "tokenizer.json"
    if not tok_file.exists():
        raise StageError(f"base model has no tokenizer.json: {tok_file}")
    tok = Tokenizer.from_file(str(tok_file))
    chats = [to_chat(r, cfg["system_prompt"]) for r in unique]
    kept = []
    for c in chats:
        n = sum(len(tok.encode(m["content"]).ids) + 4 for m in c["messages"])
        c["tokens"] = n
        if n > cfg["max_tokens"]:
            removed.append({"id": c["id"], "step": "length", "reason": f"{n} tokens > data.max_tokens {cfg['max_tokens']}"})
            continue
        kept.append(c)
    counts["after_length_filter"] = len(kept)

    parts = split(kept, cfg["split"], ctx.seed)
    files, digests = {}, {}
    for name, recs in parts.items():
        if not recs and name in ("train", "test"):
            raise StageError(f"split '{name}' is empty: raise data.generator.size or the split fraction")
        path = ctx.out / f"{name}.jsonl"
        with open(path, "w") as f:
            for r in recs:
                f.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
        files[name] = path.name
        digests[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    version = hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:12]
    tokens = {n: [r["tokens"] for r in recs] for n, recs in parts.items()}
    dataset = {
        "version": version, "files": {n: {"path": files[n], "sha256": digests[n], "records": len(parts[n])}
                                      for n in parts},
        "generator": gen, "cleaning": {k: cfg[k] for k in ("max_tokens", "split")}, "counts": counts,
        "removed": removed,
    }
    (ctx.out / "dataset.json").write_text(json.dumps(dataset, indent=2, ensure_ascii=False) + "\n")
    metrics = {
        "dataset_version": version, "counts": counts, "records": {n: len(r) for n, r in parts.items()},
        "removed_by_step": dict(Counter(r["step"] for r in removed)),
        "tokens_mean": {n: round(sum(t) / len(t), 1) for n, t in tokens.items() if t},
        "tokens_max": {n: max(t) for n, t in tokens.items() if t},
        "train_tokens": sum(tokens["train"]),
        "layouts": dict(Counter(r["layout"] for r in kept)), "locales": dict(Counter(r["locale"] for r in kept)),
    }
    return Result(metrics=metrics, artifacts={**files, "dataset": "dataset.json"},
                  notes=[f"version {version}", f"{len(parts['train'])}/{len(parts['eval'])}/{len(parts['test'])} train/eval/test"])
