"""What constrained decoding does to the task endpoint: the same test documents sent to the deployed engine
with the exact request the gateway builds, once free and once with the task's JSON Schema as llama-server's
`response_format` (it compiles the schema to a grammar), scored with the task's own scorer (evals/)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from runner import tasks
from runner.adapters import llama_cpp
from runner.serving.perf_analysis import nearest_rank


def measure(url: str, docs: list[dict], system_prompt: str, max_tokens: int, schema: dict, task: str) -> dict:
    utils = tasks.utils(task)
    out = {}
    for mode in ("free", "json_schema"):
        rows, lat, errors = [], [], []
        for doc in docs:
            body = {"messages": [{"role": "system", "content": system_prompt},
                                 {"role": "user", "content": doc["document"]}],
                    "max_tokens": max_tokens, "temperature": 0}
            if mode == "json_schema":
                body["response_format"] = {"type": "json_object", "schema": schema}
            t0 = time.time()
            status, data = llama_cpp.http_json(url + "/v1/chat/completions", body, timeout=300)
            if status != 200:
                errors.append(f"HTTP {status}: {json.dumps(data)[:200]}")
                continue
            lat.append(time.time() - t0)
            text = data["choices"][0]["message"].get("content") or ""
            r = utils.process_results(doc, [text])
            r["completion_tokens"] = (data.get("usage") or {}).get("completion_tokens")
            rows.append(r)
        n = len(rows)
        out[mode] = {
            "n": n, "errors": errors[:3], "error_count": len(errors),
            "json_valid": round(sum(r["json_valid"] for r in rows) / n, 3) if n else None,
            "schema_valid": round(sum(r["schema_valid"] for r in rows) / n, 3) if n else None,
            "field_accuracy": round(sum(r["field_accuracy"] for r in rows) / n, 3) if n else None,
            "field_f1": round(utils.micro_f1([r["field_f1"] for r in rows]), 3) if n else None,
            "exact_match": round(sum(r["exact_match"] for r in rows) / n, 3) if n else None,
            "latency_p50_s": nearest_rank(lat, 0.5), "latency_p95_s": nearest_rank(lat, 0.95),
            "completion_tokens_mean": round(sum(r["completion_tokens"] or 0 for r in rows) / n, 1) if n else None,
        }
    return out


def load_docs(test_jsonl: Path, n: int) -> list[dict]:
    return [json.loads(line) for line in test_jsonl.read_text().splitlines()[:n]]
