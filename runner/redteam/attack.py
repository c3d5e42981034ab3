"""Send the attack suite to a live gateway on loopback: bounded in count (the cases) and time (a timeout per request),
a few at a time; the malformed bodies last, one by one, each followed by a health probe."""
from __future__ import annotations

import concurrent.futures as cf
import json
import time


def _body(resp) -> dict | str:
    try:
        return resp.json()
    except ValueError:
        return resp.text[:500]


def send(url: str, api_key: str, task_route: str, cases: list[dict], concurrency: int, timeout_s: float,
         max_tokens: int, tag: str) -> dict[str, dict]:
    """{case id: {status, body, latency_s, request_id, healthy_after?}}; the request id (tag + case id) joins the
    gateway's audit log."""
    import httpx

    auth = {"Authorization": f"Bearer {api_key}"}
    out: dict[str, dict] = {}

    def one(case: dict, client) -> dict:
        rid = f"{tag}-{case['id']}"
        headers = {**auth, "X-Request-Id": rid}
        t0 = time.monotonic()
        try:
            if case["route"] == "task":
                r = client.post(url + task_route, headers=headers, json={"document": case["document"]})
            elif case["route"] == "chat":
                r = client.post(url + "/v1/chat/completions", headers=headers,
                                json={"messages": case["messages"], "max_tokens": max_tokens, "temperature": 0})
            else:
                path = task_route if case["route"] == "task_raw" else "/v1/chat/completions"
                r = client.post(url + path, headers={**headers, "Content-Type": "application/json"},
                                content=case["body"])
            return {"status": r.status_code, "body": _body(r), "latency_s": round(time.monotonic() - t0, 3),
                    "request_id": rid}
        except httpx.HTTPError as e:
            return {"status": None, "body": f"{type(e).__name__}: {e}"[:300],
                    "latency_s": round(time.monotonic() - t0, 3), "request_id": rid}

    with httpx.Client(timeout=timeout_s) as client:
        model_cases = [c for c in cases if not c["route"].endswith("_raw")]
        with cf.ThreadPoolExecutor(concurrency) as pool:
            for case, res in zip(model_cases, pool.map(lambda c: one(c, client), model_cases)):
                out[case["id"]] = res
        for case in cases:
            if case["route"].endswith("_raw"):
                res = one(case, client)
                try:
                    res["healthy_after"] = client.get(url + "/healthz", timeout=10).status_code == 200
                except httpx.HTTPError:
                    res["healthy_after"] = False
                out[case["id"]] = res
    return out


def delivered_text(result: dict) -> str:
    """What the client received, as text: a chat answer's content, a task answer (JSON), or the error body."""
    body = result.get("body")
    if not isinstance(body, dict):
        return body or ""
    if "choices" in body:
        return "\n".join(((c.get("message") or {}).get("content") or "") for c in body["choices"])
    if "answer" in body:
        a = body["answer"]
        return a if isinstance(a, str) else json.dumps(a, ensure_ascii=False)
    return json.dumps(body, ensure_ascii=False)
