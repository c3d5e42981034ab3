"""A whole deployment (supervised llama-servers with the tiny model + the gateway) on loopback: the supervisor
restarts a killed engine, the resource sampler sees every process and gauge, and the three fault drills pass
for the right reasons."""
import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from runner import tasks
from runner.adapters import llama_cpp
from runner.serving import deploy, drills, resources, supervisor
from tests.fake_engines import VALID_INVOICE, ChatEngine, running

GATEWAY = {"enabled": True, "max_in_flight": 2, "max_queue": 2, "queue_timeout_s": 20, "upstream_timeout_s": 30,
           "max_tokens": 64, "max_body_bytes": 20000, "breaker": {"threshold": 2, "reset_s": 2.0},
           "api_keys_env": "FORGE_TEST_KEYS"}


@pytest.fixture(scope="module")
def deployment(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("deploy")
    gguf = llama_cpp.convert(tiny_model, out / "tiny-f16.gguf", out / "convert.log")
    serving = {"engine": "llama-server", "replicas": 1, "parallel": 2, "ctx_size": 512, "threads": 1,
               "ready_timeout_s": 60, "primary": {"gguf": str(gguf), "alias": "tuned"},
               "fallback": {"gguf": str(gguf), "alias": "base"}, "gateway": GATEWAY, "task": None,
               "served_model": "tiny"}
    with deploy.up(serving, out / "logs") as dep:
        yield dep, serving


def test_supervisor_restarts_a_killed_engine_on_its_port(deployment):
    dep, _ = deployment
    fallback = next(e for e in dep.endpoints if e.role == "fallback")
    engine, before, old_pid = fallback.engine, len(fallback.engine.events), fallback.engine.pid
    os.killpg(old_pid, signal.SIGKILL)
    event = supervisor.wait_for_restart(engine, before, 60)
    assert event and event["exit_code"] == -signal.SIGKILL and event["recovered_s"] < 30, event
    assert engine.pid and engine.pid != old_pid
    status, body = llama_cpp.http_json(fallback.url + "/v1/chat/completions",
                                       {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert status == 200 and body["choices"]
    assert dep.restarts()[-1]["engine"] == "fallback-1"


def test_sampler_sees_each_process_and_both_metrics_endpoints(deployment):
    dep, _ = deployment
    procs = {"primary-0": lambda: dep.primary.engine.pid, "gateway": lambda: dep.gateway_pid}
    urls = {"primary-0": dep.primary.url, "gateway": dep.gateway_url}
    with resources.Sampler(procs, urls, interval_s=0.2) as s:
        t0 = time.time()
        with httpx.Client(timeout=60) as c:
            while time.time() - t0 < 2.5:  # keep the engine busy across several samples
                c.post(dep.gateway_url + "/v1/chat/completions", headers={"Authorization": f"Bearer {dep.api_key}"},
                       json={"messages": [{"role": "user", "content": "Count to twenty."}], "max_tokens": 48})
        time.sleep(0.5)
    w = s.window(t0, time.time())
    assert w["samples"] >= 2
    assert w["primary-0"]["rss_mb"]["max"] > 5 and w["gateway"]["rss_mb"]["max"] > 20
    assert w["primary-0"]["cpu_pct"]["max"] > 0
    assert {"slots_busy", "requests_deferred"} <= set(w["primary-0"])
    assert {"gateway_in_flight", "gateway_queued"} <= set(w["gateway"])
    assert s.window(0, 1) == {"samples": 0}


def test_malformed_drill_gets_4xx_json_errors_for_every_kind(deployment):
    dep, serving = deployment
    res = drills.malformed(dep, serving)
    by = {r["request"]: r["status"] for r in res["requests"]}
    assert res["passed"], res
    assert by["invalid JSON"] == 400 and by["no API key"] == 401 and by["unknown model"] == 404
    assert by["body over the size limit"] == 413 and by["unknown route"] == 404
    assert res["healthz_after"] == 200 and res["good_request_after"] == 200


def test_overload_drill_sheds_with_429_and_keeps_memory_flat(deployment):
    dep, serving = deployment
    res = drills.overload(dep, serving["gateway"], bursts=2)
    assert res["passed"], res
    for burst in res["bursts"]:
        assert burst["sent"] == 8 and burst["statuses"].get("429", 0) >= 1 and burst["statuses"].get("200", 0) >= 2


def test_kill_primary_drill_falls_back_then_recovers(deployment):
    dep, _ = deployment
    res = drills.kill_primary(dep, workers=2, kill_after_s=1.5, timeout_s=60)
    assert res["passed"], res
    assert res["errors_after_kill"] == 0 and res["answered_by_fallback"] >= 1
    assert res["engine_restarted_s"] is not None and res["primary_answers_again_s"] >= res["engine_restarted_s"] - 1
    assert res["circuit_after"] == "closed"


def test_supervisor_backs_off_while_restarts_keep_failing(deployment, tmp_path):
    """An engine whose model file disappears cannot come back: each failed restart is recorded and the wait
    before the next one doubles (up to the cap), instead of a hot restart loop."""
    _, serving = deployment
    gguf = tmp_path / "doomed.gguf"
    gguf.write_bytes(Path(serving["primary"]["gguf"]).read_bytes())
    engine = supervisor.SupervisedServer(
        llama_cpp.Server(gguf, llama_cpp.free_port(), 1, 1, 256, "doomed", log=tmp_path / "doomed.log"),
        ready_timeout=30, backoff_s=0.2, backoff_max_s=0.8)
    engine.start()
    try:
        gguf.unlink()
        os.killpg(engine.pid, signal.SIGKILL)
        deadline = time.time() + 60
        while len(engine.events) < 4 and time.time() < deadline:
            time.sleep(0.1)
    finally:
        engine.stop()
    events = engine.events
    assert len(events) >= 4 and all("error" in e and "recovered_s" not in e for e in events), events
    assert [e["backoff_s"] for e in events[:4]] == [0.2, 0.4, 0.8, 0.8]
    assert engine.restarts == 0 and "[supervisor] llama-server exited" in (tmp_path / "doomed.log").read_text()


class TaskFallback(ChatEngine):
    """A task-route fallback that always answers within the invoice task's contract (the tiny random model
    cannot), so the drill's task accounting has something valid to count."""

    def answer(self, request):
        return json.dumps(VALID_INVOICE)


def test_kill_drill_on_the_task_route_counts_valid_answers_while_the_primary_is_down(tiny_model, tmp_path):
    gguf = llama_cpp.convert(tiny_model, tmp_path / "tiny-f16.gguf", tmp_path / "convert.log")
    serving = {"engine": "llama-server", "replicas": 1, "parallel": 2, "ctx_size": 512, "threads": 1,
               "ready_timeout_s": 60, "primary": {"gguf": str(gguf), "alias": "tuned"},
               "fallbacks": [{"gguf": str(gguf), "alias": "fallback-base", "routes": ["chat"]}]}
    task = {**tasks.get("invoice_extraction").describe(), "system_prompt": "Extract.", "max_tokens": 48,
            "constrained": False, "constrained_retry": False}
    with running(TaskFallback) as fallback, deploy.start(serving, tmp_path / "logs") as endpoints:
        endpoints = endpoints + [deploy.Endpoint("fallback", fallback, "fallback-deployed", 0, None, ("task",))]
        cfg = deploy.gateway_config(endpoints, GATEWAY, task, "tiny")
        with deploy.start_gateway(cfg, tmp_path / "logs", api_keys="k") as (url, pid):
            dep = deploy.Deployment(endpoints, url, "k", pid.pid)
            docs = ["Invoice INV-1 from Acme to Beta, total 12.00 EUR", "Invoice INV-2, total 7 EUR"]
            res = drills.kill_primary(dep, workers=2, kill_after_s=1.5, timeout_s=60,
                                      task={"route": task["route"], "documents": docs}, task_workers=2, rounds=2)
    assert res["passed"], res  # the chat side as before: the chat fallback answered, the primary came back
    # killed twice, and back twice: each round waits for the restarted primary before the next kill
    assert res["rounds"] == 2 and len(res["per_round"]) == 2
    assert all(r["engine_restarted_s"] and r["primary_answers_again_s"] for r in res["per_round"]), res["per_round"]
    assert res["primary_answers_again_s"] == max(r["primary_answers_again_s"] for r in res["per_round"])
    t = res["task"]
    assert t["workers"] == 2 and t["requests"] == sum(t["statuses"].values()) > 0
    # before the kill the random primary breaks the contract and the task fallback answers: every answer valid
    assert t["while_primary_down"] >= 1 and t["valid_while_down"] == t["while_primary_down"]
    assert t["valid_share_while_down"] == 1.0 and t["answered_by_fallback"] >= 1
    low, high = t["valid_share_while_down_ci"]  # Wilson: all valid still leaves room below 1 at small n
    assert 0 < low < 1.0 and high == 1.0
