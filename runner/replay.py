"""Replay evaluation: judge a candidate on what users actually sent, not only on the fixed test split.

- `just replay RECIPE --log CAPTURE --candidate RUN`: every request in a capture file (written by the gateway with
  `serve.capture`, documents PII-redacted by the output policy) is sent to the candidate run's deployment, started
  here on loopback; its answers are compared with what production answered.
- `just replay RECIPE --shadow-log FILE`: the same comparison read from a shadow log (the gateway mirrored live
  requests to the candidate: runner/gateway/shadow.py); nothing is sent.

Compared, paired on the same requests: agreement (the task kind's own comparison of two answers) with a Wilson
interval; the share of answers that pass the task's contract (exact McNemar); the task's headline metric where a
request's document is one of the recipe's labelled records (matched by the SHA-256 of the original document;
paired bootstrap); latency percentiles of each side. A gate decides: agreement at least `min_agreement`, validity
not significantly lower, the headline metric not lower by more than `max_drop` (interval bound). The page goes into
the candidate's evidence pack (replay.md).
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from runner import tasks
from runner.governance import audit
from runner.quality import eval_analysis, stats


def percentiles(values: list[float]) -> dict:
    v = [x for x in values if x is not None]
    return {**{f"p{round(q * 100)}": stats.nearest_rank(v, q, 1) for q in (0.5, 0.95, 0.99)}, "n": len(v)}


def gold_by_hash(split_files: list[Path]) -> dict[str, dict]:
    """sha256 of a labelled record's document -> the record (its gold), over the run's data splits."""
    out = {}
    for f in split_files:
        if f.exists():
            for line in f.read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    out[hashlib.sha256(r["document"].encode()).hexdigest()] = r
    return out


def send(url: str, api_key: str, route: str, captured: list[dict], concurrency: int, timeout_s: float) -> list[dict]:
    """The captured documents to the candidate's task route; {status, answer, latency_ms} per request, in order."""
    import httpx

    def one(line: dict, client) -> dict:
        t0 = time.monotonic()
        try:
            r = client.post(url + route, json={"document": line["document"]},
                            headers={"Authorization": f"Bearer {api_key}", "X-Request-Id": f"replay-{line['request_id']}"})
            body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
            return {"status": r.status_code, "answer": body.get("answer"), "model": body.get("model"),
                    "latency_ms": round((time.monotonic() - t0) * 1000, 1),
                    "problem": None if r.status_code == 200 else ((body.get("error") or {}).get("message") or "")[:200]}
        except httpx.HTTPError as e:
            return {"status": None, "answer": None, "latency_ms": round((time.monotonic() - t0) * 1000, 1),
                    "problem": f"{type(e).__name__}: {e}"[:200]}

    with httpx.Client(timeout=timeout_s) as client, cf.ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda x: one(x, client), captured))


def pairs_from_capture(captured: list[dict], answers: list[dict], kind, spec) -> list[dict]:
    out = []
    for line, cand in zip(captured, answers):
        valid = cand["status"] == 200 and cand["answer"] is not None
        if valid:   # what the gateway delivered passed the contract; check again here, as the shadow does
            text = cand["answer"] if isinstance(cand["answer"], str) else json.dumps(cand["answer"])
            valid = not kind.check_answer(spec, text)[1]
        out.append({"request_id": line["request_id"], "document_sha256": line.get("document_sha256"),
                    "production": {"answer": line.get("answer"), "valid": line.get("status", 200) == 200,
                                   "latency_ms": line.get("latency_ms"), "model": line.get("model")},
                    "candidate": {"answer": cand["answer"], "valid": valid, "latency_ms": cand["latency_ms"],
                                  "model": cand.get("model"), "status": cand["status"], "problem": cand.get("problem")}})
    return out


def pairs_from_shadow(lines: list[dict]) -> list[dict]:
    return [{"request_id": x["request_id"], "document_sha256": x.get("document_sha256"),
             "production": {"answer": x["primary"].get("answer"), "valid": True,
                            "latency_ms": x["primary"].get("latency_ms"), "model": x["primary"].get("model")},
             "candidate": {k: x["candidate"].get(k) for k in ("answer", "valid", "latency_ms", "model", "status",
                                                               "problem")}} for x in lines]


def compare(pairs: list[dict], task, gold: dict[str, dict], gate: dict, iters: int = 2000, seed: int = 0) -> dict:
    kind, spec = task.scorer, task.spec
    n = len(pairs)
    agree = [bool(p["candidate"]["valid"] and p["production"]["valid"] and
                  kind.agree(spec, p["production"]["answer"], p["candidate"]["answer"])) for p in pairs]
    prod_valid = np.array([bool(p["production"]["valid"]) for p in pairs])
    cand_valid = np.array([bool(p["candidate"]["valid"]) for p in pairs])
    mc = stats.mcnemar(prod_valid, cand_valid) if n else {"b_only": 0, "a_only": 0, "p": 1.0}
    result = {"requests": n, "agreement": {"agree": sum(agree), "n": n, "rate": round(sum(agree) / n, 4) if n else None,
                                           "ci": stats.proportion_ci(sum(agree), n)},
              "validity": {"production": int(prod_valid.sum()), "candidate": int(cand_valid.sum()), "n": n,
                           "only_candidate": mc["b_only"], "only_production": mc["a_only"], "p": round(mc["p"], 4)},
              "latency_ms": {"production": percentiles([p["production"]["latency_ms"] for p in pairs]),
                             "candidate": percentiles([p["candidate"]["latency_ms"] for p in pairs])},
              "disagreements": [{"request_id": p["request_id"], "production": p["production"]["answer"],
                                 "candidate": p["candidate"]["answer"], "problem": p["candidate"].get("problem")}
                                for p, a in zip(pairs, agree) if not a][:8]}
    labelled = [(p, gold[p["document_sha256"]]) for p in pairs if p.get("document_sha256") in gold]
    metric = task.headline
    if labelled:
        def as_text(a):
            return "" if a is None else a if isinstance(a, str) else json.dumps(a, ensure_ascii=False)
        agg = task.metrics().get(metric, "mean")
        side = {s: eval_analysis.metric_values([kind.score(spec, doc, as_text(p[s]["answer"])) for p, doc in labelled],
                                               metric, agg) for s in ("production", "candidate")}
        cmp = stats.paired(side["production"], side["candidate"], iters, seed)
        result["gold"] = {"metric": metric, "n": len(labelled), "production": round(side["production"].point(), 4),
                          "candidate": round(side["candidate"].point(), 4), "diff": cmp}
    checks = []
    a = result["agreement"]
    if a["rate"] is not None:
        checks.append({"check": f"agreement >= {gate['min_agreement']}", "passed": a["rate"] >= gate["min_agreement"],
                       "value": a["rate"]})
    v = result["validity"]
    worse = v["candidate"] < v["production"] and v["p"] < 0.05
    checks.append({"check": "contract validity not significantly lower (McNemar p < 0.05)", "passed": not worse,
                   "value": f"{v['candidate']}/{n} vs {v['production']}/{n}, p {v['p']}"})
    if "gold" in result and result["gold"]["diff"].get("low") is not None:
        low = result["gold"]["diff"]["low"]
        checks.append({"check": f"{metric} drop within {gate['max_drop']} (interval's lower bound)",
                       "passed": low >= -gate["max_drop"], "value": round(low, 4)})
    result["gate"] = {"checks": checks, "passed": all(c["passed"] for c in checks)}
    return result


def read_log(path: str | Path) -> list[dict]:
    return audit.read(path)


def task_of(recipe: dict):
    return tasks.of(recipe)
