"""Fault drills against a live deployment (engines under supervision + gateway), each one measured:

- kill_primary: under load, SIGKILL the primary engine. Requests must keep being answered (by the fallback),
  the supervisor must restart the engine, and the primary must answer again once its circuit closes. With task
  documents, task requests run beside the chat load, and the share answered with a valid answer while the
  primary is down is measured (the fallback must be able to do the task, not just answer).
- overload: bursts of concurrent requests past max_in_flight + max_queue. The excess gets 429 with
  Retry-After, nothing crashes, and the gateway's memory stays flat from burst to burst.
- malformed: a batch of bad requests, each of which must get a 4xx with an OpenAI-style JSON error, after
  which the service is still healthy.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil

from runner.quality import stats
from runner.serving import supervisor
from runner.serving.deploy import Deployment

CHAT = {"messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 12, "temperature": 0}


def _post(client: httpx.Client, url: str, key: str, body: dict | None = None, content: bytes | None = None,
          headers: dict | None = None) -> dict:
    t0 = time.time()
    try:
        r = client.post(url, json=body if content is None else None, content=content,
                        headers={"Authorization": f"Bearer {key}", **(headers or {})})
        try:
            data = r.json()
        except ValueError:
            data = None
        return {"t": t0, "s": time.time() - t0, "status": r.status_code, "upstream": r.headers.get("x-forge-upstream"),
                "retry_after": r.headers.get("retry-after"), "json_error": isinstance(data, dict) and
                isinstance(data.get("error"), dict) and "message" in data["error"]}
    except httpx.HTTPError as e:
        return {"t": t0, "s": time.time() - t0, "status": None, "error": type(e).__name__}


def _circuit(gateway_url: str, upstream: str) -> float | None:
    try:
        text = httpx.get(gateway_url + "/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith(f'forge_circuit_state{{upstream="{upstream}"}}'):
            return float(line.split()[-1])
    return None


def kill_primary(dep: Deployment, workers: int = 3, kill_after_s: float = 3.0, timeout_s: float = 60.0,
                 task: dict | None = None, task_workers: int | None = None, rounds: int = 1) -> dict:
    """Load from `workers` chat threads (and `task_workers` task threads when `task` has a route and documents);
    `rounds` times: kill the first primary engine (primary-0) after `kill_after_s`, wait until it has answered
    through the gateway again, then 3 s more. Meanwhile the other replicas or the fallbacks must answer everything.
    Several rounds put more task requests into outages than one (a task answer takes seconds)."""
    primary = dep.primary
    engine = primary.engine
    url = dep.gateway_url + "/v1/chat/completions"
    results: list[dict] = []
    stop = threading.Event()
    outages: list[dict] = []

    def worker():
        with httpx.Client(timeout=60) as c:
            while not stop.is_set():
                results.append(dict(_post(c, url, dep.api_key, CHAT), kind="chat"))

    def task_worker(offset: int, docs=(task or {}).get("documents") or [""]):
        i = offset
        with httpx.Client(timeout=120) as c:
            while not stop.is_set():
                r = _post(c, dep.gateway_url + task["route"], dep.api_key, {"document": docs[i % len(docs)]})
                results.append(dict(r, kind="task"))
                i += 1

    t_start = time.time()
    n_task = (max(1, workers // 2) if task_workers is None else task_workers) if task else 0
    with ThreadPoolExecutor(workers + n_task) as pool:
        for _ in range(workers):
            pool.submit(worker)
        for k in range(n_task):  # each client starts at another document, so they do not send the same ones
            pool.submit(task_worker, k * 7)
        for _ in range(rounds):
            time.sleep(kill_after_s)
            before = len(engine.events)
            outage = {"killed_at": time.time()}
            outages.append(outage)
            os.killpg(engine.pid, signal.SIGKILL)
            outage["event"] = supervisor.wait_for_restart(engine, before, timeout_s)
            # until the primary answers through the gateway again (its circuit half-opens after reset_s), 3 s more
            deadline = time.time() + timeout_s
            while time.time() < deadline:
                back = [r for r in list(results) if r["t"] > outage["killed_at"] and r["kind"] == "chat"
                        and r.get("upstream") == "primary-0"]
                if back:
                    outage["back_at"] = back[0]["t"] + back[0]["s"]
                    time.sleep(3)
                    break
                time.sleep(0.2)
            if "back_at" not in outage:
                break
        stop.set()
    killed = outages[0]["killed_at"]

    def while_down(rows):
        return [r for r in rows if any(o["killed_at"] <= r["t"] < o.get("back_at", float("inf")) for o in outages)]

    tasks_sent = [r for r in results if r["kind"] == "task"]
    results = [r for r in results if r["kind"] == "chat"]
    after = [r for r in results if r["t"] >= killed]
    during = while_down(after)
    statuses = Counter(str(r["status"]) for r in results)
    fallback_answers = [r for r in after if (r.get("upstream") or "").startswith("fallback")]
    others = [r for r in during if r["status"] == 200 and r.get("upstream") != "primary-0"]
    circuit = _circuit(dep.gateway_url, "primary-0")
    restarts = [o["event"].get("recovered_s") if o["event"] else None for o in outages]
    backs = [round(o["back_at"] - o["killed_at"], 2) if "back_at" in o else None for o in outages]
    out = {
        "workers": workers, "rounds": len(outages), "requests": len(results), "statuses": dict(statuses),
        "errors": sum(1 for r in results if r["status"] != 200),
        "errors_after_kill": sum(1 for r in after if r["status"] != 200),
        "answered_by_fallback": len(fallback_answers),
        "answered_by_others_while_down": len(others),
        "first_fallback_answer_s": round(min(r["t"] + r["s"] for r in fallback_answers) - killed, 2)
        if fallback_answers else None,
        # the slowest round: what an operator must plan for
        "engine_restarted_s": None if None in restarts else max(restarts),
        "engine_restart_error": next((o["event"].get("error") if o["event"] else "no restart within the timeout"
                                      for o in outages if not o["event"] or o["event"].get("error")), None),
        "primary_answers_again_s": None if None in backs else max(backs),
        "per_round": [{"engine_restarted_s": r, "primary_answers_again_s": b} for r, b in zip(restarts, backs)],
        "requests_while_primary_down": len(during),
        "latency_p50_while_down_s": stats.nearest_rank([r["s"] for r in during if r["status"] == 200], 0.5),
        "latency_p50_before_kill_s": stats.nearest_rank([r["s"] for r in results
                                                   if r["t"] + r["s"] < killed and r["status"] == 200], 0.5),
        "circuit_after": {0.0: "closed", 1.0: "half-open", 2.0: "open"}.get(circuit, circuit),
        "seconds": round(time.time() - t_start, 1),
    }
    out["passed"] = bool(out["errors_after_kill"] == 0 and len(others) > 0
                         and out["primary_answers_again_s"] is not None and out["circuit_after"] == "closed")
    if task:  # the task route under the same outages: 200 means an answer that passed the task's contract
        down = while_down(tasks_sent)
        valid = [r for r in down if r["status"] == 200]
        before = [r for r in tasks_sent if r["t"] < killed]
        out["task"] = {"route": task["route"], "workers": n_task, "requests": len(tasks_sent),
                       "statuses": dict(Counter(str(r["status"]) for r in tasks_sent)),
                       "while_primary_down": len(down), "valid_while_down": len(valid),
                       "valid_share_while_down": round(len(valid) / len(down), 3) if down else None,
                       "valid_share_while_down_ci": stats.proportion_ci(len(valid), len(down)),
                       "valid_share_all": round(sum(r["status"] == 200 for r in tasks_sent) / len(tasks_sent), 3)
                       if tasks_sent else None,
                       "answered_by_fallback": sum(1 for r in tasks_sent if r["t"] >= killed
                                                   and (r.get("upstream") or "").startswith("fallback")),
                       "valid_share_before_kill": round(sum(r["status"] == 200 for r in before)
                                                        / max(1, len(before)), 3)}
    return out


def overload(dep: Deployment, limits: dict, bursts: int = 3, factor: float = 2.0) -> dict:
    """`bursts` rounds of factor x (max_in_flight + max_queue) simultaneous requests."""
    capacity = limits["max_in_flight"] + limits["max_queue"]
    n = max(int(capacity * factor), capacity + 4)
    url = dep.gateway_url + "/v1/chat/completions"
    gw = psutil.Process(dep.gateway_pid)
    rss = [round(gw.memory_info().rss / 2**20, 1)]
    rounds = []
    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=n + 8)) as c:
        for _ in range(bursts):
            # every request leaves at once: threads that start one by one spread a burst over tens of ms, and a
            # fast engine then answers the first ones before the last arrive (seen: 8 sent, 8 admitted, no 429)
            start = threading.Barrier(n)

            def one(_, start=start):
                try:
                    start.wait(timeout=30)
                except threading.BrokenBarrierError:
                    pass
                return _post(c, url, dep.api_key, CHAT)

            with ThreadPoolExecutor(n) as pool:
                res = list(pool.map(one, range(n)))
            st = Counter(str(r["status"]) for r in res)
            rounds.append({"sent": n, "statuses": dict(st),
                           "429_with_retry_after": sum(1 for r in res if r["status"] == 429 and r["retry_after"]),
                           "p95_accepted_s": stats.nearest_rank([r["s"] for r in res if r["status"] == 200], 0.95)})
            rss.append(round(gw.memory_info().rss / 2**20, 1))
    healthy = httpx.get(dep.gateway_url + "/healthz", timeout=5).status_code == 200
    growth = rss[-1] - rss[1] if len(rss) > 2 else 0.0
    out = {"capacity": capacity, "bursts": rounds, "gateway_rss_mb": rss, "rss_growth_after_first_burst_mb":
           round(growth, 1), "healthy_after": healthy}
    out["passed"] = bool(healthy and all(r["statuses"].get("429", 0) > 0 and
                                         r["429_with_retry_after"] == r["statuses"].get("429", 0)
                                         and set(r["statuses"]) <= {"200", "429", "503"} for r in rounds)
                         and growth < max(16.0, 0.1 * rss[1]))
    return out


def bad_requests(ctx_tokens: int, max_tokens_cap: int, body_limit: int,
                 task_route: str | None) -> list[tuple[str, str, dict]]:
    """(name, route, request kwargs) for every kind of bad input the gateway must refuse with a 4xx."""
    msg = [{"role": "user", "content": "hi"}]
    return [
        ("invalid JSON", "/v1/chat/completions", {"content": b"{not json"}),
        ("JSON array body", "/v1/chat/completions", {"content": b"[1, 2]"}),
        ("no messages", "/v1/chat/completions", {"body": {"max_tokens": 4}}),
        ("messages not a list", "/v1/chat/completions", {"body": {"messages": "hi"}}),
        ("message without role", "/v1/chat/completions", {"body": {"messages": [{"content": "hi"}]}}),
        ("max_tokens over the cap", "/v1/chat/completions", {"body": {"messages": msg, "max_tokens": 10_000_000}}),
        ("negative max_tokens", "/v1/chat/completions", {"body": {"messages": msg, "max_tokens": -1}}),
        ("max_tokens a string", "/v1/chat/completions", {"body": {"messages": msg, "max_tokens": "many"}}),
        ("temperature a string", "/v1/chat/completions", {"body": {"messages": msg, "temperature": "hot"}}),
        ("unknown model", "/v1/chat/completions", {"body": {"messages": msg, "model": "gpt-17"}}),
        ("prompt over the context", "/v1/chat/completions",
         {"body": {"messages": [{"role": "user", "content": "word " * (ctx_tokens * 2)}], "max_tokens": 4}}),
        ("body over the size limit", "/v1/chat/completions", {"content": b'{"messages": "' + b"x" * body_limit + b'"}'}),
        ("no API key", "/v1/chat/completions", {"body": {"messages": msg}, "no_key": True}),
        ("wrong API key", "/v1/chat/completions", {"body": {"messages": msg}, "key": "not-the-key"}),
        ("unknown route", "/v1/embeddings", {"body": {"input": "hi"}}),
        ("unknown task", "/v1/tasks/no-such-task", {"body": {"document": "hi"}}),
    ] + ([("task without document", task_route, {"body": {}}),
          ("task document not a string", task_route, {"body": {"document": 42}})] if task_route else [])


def malformed(dep: Deployment, serving: dict) -> dict:
    gw = serving["gateway"]
    rows = []
    with httpx.Client(timeout=60) as c:
        for name, route, kw in bad_requests(serving["ctx_size"], gw["max_tokens"], gw["max_body_bytes"],
                                               (serving.get("task") or {}).get("route")):
            headers = {} if kw.get("no_key") else {"Authorization": f"Bearer {kw.get('key', dep.api_key)}"}
            if "content" in kw:
                headers["Content-Type"] = "application/json"
            r = c.post(dep.gateway_url + route, json=kw.get("body") if "content" not in kw else None,
                       content=kw.get("content"), headers=headers)
            try:
                data = r.json()
            except ValueError:
                data = None
            ok_body = isinstance(data, dict) and isinstance(data.get("error"), dict) and "message" in data["error"]
            rows.append({"request": name, "status": r.status_code, "json_error": ok_body,
                         "passed": 400 <= r.status_code < 500 and ok_body})
        health = c.get(dep.gateway_url + "/healthz").status_code
        ready = c.get(dep.gateway_url + "/readyz").json().get("status")
        good = _post(c, dep.gateway_url + "/v1/chat/completions", dep.api_key, CHAT)["status"]
    return {"requests": rows, "healthz_after": health, "readyz_after": ready, "good_request_after": good,
            "passed": all(r["passed"] for r in rows) and health == 200 and ready == "ready" and good == 200}


def run_all(dep: Deployment, serving: dict, cfg: dict, progress=lambda m: None,
            documents: list[str] | None = None) -> dict:
    """documents: task documents; with them (and a task route) the kill drill sends task requests too."""
    out = {}
    if "malformed" in cfg["drills"]:
        progress("drill: a batch of malformed requests")
        out["malformed"] = malformed(dep, serving)
    if "overload" in cfg["drills"]:
        progress("drill: overload past the admission limit")
        out["overload"] = overload(dep, serving["gateway"], bursts=cfg["overload_bursts"])
    if "kill_primary" in cfg["drills"]:
        if not dep.primary.engine:
            out["kill_primary"] = {"skipped": "the primary engine is not a supervised llama-server"}
        elif len(dep.endpoints) > 1:
            progress("drill: kill the primary engine under load")
            route = (serving.get("task") or {}).get("route")
            out["kill_primary"] = kill_primary(dep, workers=cfg["kill_workers"], timeout_s=cfg["timeout_s"],
                                               task={"route": route, "documents": documents}
                                               if route and documents else None,
                                               task_workers=cfg["kill_task_workers"], rounds=cfg["kill_rounds"])
        else:
            out["kill_primary"] = {"skipped": "nothing else is deployed to answer while the primary is down"}
    return out
