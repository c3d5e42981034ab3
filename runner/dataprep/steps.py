"""The data stage's per-record work as batch functions, which an engine (runner/dataprep/engine.py) runs on the
stage's workers: each takes a list and returns one result per item, and takes only plain, picklable arguments.
The stage applies the results in record order, so what it keeps, removes and flags does not depend on where they
ran. Each function reads the records it is given and nothing else."""
from __future__ import annotations

import time
from functools import lru_cache

from runner import tasks
from runner.dataprep import dedup, labels, records
from runner.governance import pii


def generate(spans: list[tuple[int, int]], data_cfg: dict) -> list[list[dict]]:
    """Per (start, size) span, the recipe generator's records start .. start + size - 1 (seeded by index, so any
    split of the range into spans gives the same records)."""
    return [records.generate(data_cfg, size, start) for start, size in spans]


def prepare(recs: list[dict], normalize: dict, k: int, num_perm: int, near: bool) -> list[dict]:
    """Per record: the normalized document, the hash of its text for exact dedup and (near) its MinHash
    signature; `cpu` says how long each part took (seconds, this batch)."""
    out, cpu = [], {"normalize": 0.0, "minhash": 0.0}
    t0 = time.process_time()
    docs = [records.normalize(r["document"], normalize) for r in recs]
    hashes = dedup.hash_batch(docs)
    t1 = time.process_time()
    sigs = dedup.signatures(docs, k, num_perm) if near else [None] * len(docs)
    cpu["normalize"], cpu["minhash"] = t1 - t0, time.process_time() - t1
    for d, h, s in zip(docs, hashes, sigs):
        out.append({"document": d, "hash": h, "sig": s})
    if out:
        out[0]["cpu"] = cpu
    return out


@lru_cache(maxsize=4)
def _tokenizer(path: str):
    from tokenizers import Tokenizer
    return Tokenizer.from_file(path)


def chat_tokens(chats: list[dict], tok_file: str) -> list[int]:
    """Tokens of each chat record as the trainer sees it: every message's content plus 4 for its template. Each
    distinct content is encoded once (the system prompt is the same in every record)."""
    tok = _tokenizer(tok_file)
    distinct = list(dict.fromkeys(m["content"] for c in chats for m in c["messages"]))
    length = dict(zip(distinct, (len(e.ids) for e in tok.encode_batch(distinct, add_special_tokens=True))))
    return [sum(length[m["content"]] + 4 for m in c["messages"]) for c in chats]


def scan_and_check(recs: list[dict], policy: dict | None, task_name: str, task_paths: tuple, system: str,
                   tok_file: str) -> list[dict]:
    """Per record, what the PII, label and length steps decide, each on what the step before left:
    `findings` and the policy's `action` and redacted `document` (policy None: no scan), the gold's `problems`
    (data.labels keys and messages), and the chat record with its `tokens`. Only the finding types the policy
    does not keep are looked for. `document` is None when the policy left it as it was."""
    task = tasks.get(task_name, task_paths)
    cpu = {"pii": 0.0, "labels": 0.0, "length": 0.0}
    t0 = time.process_time()
    out = [{"document": r["document"], "action": "keep", "findings": []} for r in recs]
    if policy is not None:
        types = tuple(t for t in pii.TYPES if policy.get(t, "flag") != "keep")
        for o, found in zip(out, pii.scan_many([r["document"] for r in recs], types) if types else [[]] * len(recs)):
            if found:
                o["document"], o["action"] = pii.apply_policy(o["document"], found, policy)
                o["findings"] = [{"type": f.type, "value": f.value, "detector": f.detector,
                                  "action": policy.get(f.type, "flag")} for f in found]
    t1 = time.process_time()
    for r, o in zip(recs, out):
        o["problems"] = labels.check(task, o["document"], r["gold"])
    t2 = time.process_time()
    chats = [records.to_chat(dict(r, document=o["document"]), system, task) for r, o in zip(recs, out)]
    for r, o, c, n in zip(recs, out, chats, chat_tokens(chats, tok_file) if chats else []):
        c["tokens"], c["chars"] = n, len(c["document"])
        o["chat"] = c
        if o["document"] is r["document"]:   # unchanged: not sent back twice
            o["document"] = None
    cpu.update(pii=t1 - t0, labels=t2 - t1, length=time.process_time() - t2)
    if out:
        out[0]["cpu"] = cpu
    return out
