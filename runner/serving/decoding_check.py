"""What constrained decoding does to the task endpoint: the same test documents sent to the deployed engine
with the exact request the gateway builds, once free and once with the task's output contract (extraction:
its JSON Schema; classification: its labels) as llama-server's `response_format` (it compiles it to a
grammar), scored with the task kind's own scorer. A kind with nothing to constrain (generation) is not
measured: there is no constrained side to compare with (and its scorer needs the ml venv)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from runner import tasks
from runner.adapters import llama_cpp
from runner.quality import eval_analysis as ea
from runner.quality.stats import nearest_rank


def measure(url: str, docs: list[dict], system_prompt: str, max_tokens: int, task: tasks.Task) -> dict:
    scorer, spec = task.scorer, task.spec
    metrics = task.metrics()
    fmt = scorer.response_format(spec)
    out: dict = {"headline": task.headline, "constrainable": fmt is not None}
    for mode in ("free", "constrained") if fmt else ():
        rows, lat, errors, valid = [], [], [], 0
        for doc in docs:
            body = {"messages": [{"role": "system", "content": system_prompt},
                                 {"role": "user", "content": doc["document"]}],
                    "max_tokens": max_tokens, "temperature": 0}
            if mode == "constrained":
                body["response_format"] = fmt
            t0 = time.time()
            status, data = llama_cpp.http_json(url + "/v1/chat/completions", body, timeout=300)
            if status != 200:
                errors.append(f"HTTP {status}: {json.dumps(data)[:200]}")
                continue
            lat.append(time.time() - t0)
            text = data["choices"][0]["message"].get("content") or ""
            r = scorer.score(spec, doc, text)
            valid += int(not scorer.check_answer(spec, text)[1])
            r["completion_tokens"] = (data.get("usage") or {}).get("completion_tokens")
            rows.append(r)
        n = len(rows)
        scores = {k: (round(ea.metric_values(rows, k, agg).point(), 3) if n else None) for k, agg in metrics.items()}
        out[mode] = {
            "n": n, "errors": errors[:3], "error_count": len(errors), **scores,
            "valid": round(valid / n, 3) if n else None,
            "latency_p50_s": nearest_rank(lat, 0.5), "latency_p95_s": nearest_rank(lat, 0.95),
            "completion_tokens_mean": round(sum(r["completion_tokens"] or 0 for r in rows) / n, 1) if n else None,
        }
    return out


def load_docs(test_jsonl: Path, n: int) -> list[dict]:
    return [json.loads(line) for line in test_jsonl.read_text().splitlines()[:n]]
