"""The task route's cascade through a real gateway process: a cheap tier answers what it can, and the gateway
escalates to the deployed model when the cheap answer fails the task's contract, when the cheap engine is busy,
or when it is down; every escalation is counted by reason."""
import concurrent.futures as cf
import json
import time

import httpx

from runner.serving import deploy
from tests.fake_engines import VALID_INVOICE, ChatEngine, running
from tests.test_gateway import AUTH, KEY, config


class CheapEngine(ChatEngine):
    """Gets "easy" documents right (after 0.5 s), the rest wrong."""

    def answer(self, request):
        time.sleep(0.5)
        return json.dumps(VALID_INVOICE) if "easy" in request["messages"][-1]["content"] else '{"total": "twelve"}'


class StrongEngine(ChatEngine):
    def answer(self, request):
        return json.dumps(VALID_INVOICE)


def cascade_config(cheap_url, strong_url, busy=True):
    eps = [deploy.Endpoint("primary", strong_url, "tuned-f16", 0, routes=("chat", "task")),
           deploy.Endpoint("cheap", cheap_url, "cheap-q4_k_m", 0, routes=("task",))]
    cfg = config(eps)
    cfg["task"]["cascade"] = {"cheap": "q4_k_m", "cheap_slots": 1, "escalate_when_busy": busy}
    return cfg


def ask(url, route, doc):
    return httpx.post(url + route, headers=AUTH, json={"document": doc}, timeout=30)


def escalations(url, zeros=False):
    text = httpx.get(url + "/metrics").text
    out = {line.split('"')[1]: float(line.split()[-1]) for line in text.splitlines()
           if line.startswith("forge_escalations_total{")}
    return out if zeros else {k: v for k, v in out.items() if v}


def test_the_cheap_tier_answers_first_and_a_contract_failure_escalates(tmp_path):
    with running(CheapEngine) as cheap, running(StrongEngine) as strong:
        cfg = cascade_config(cheap, strong)
        with deploy.start_gateway(cfg, tmp_path, api_keys=KEY) as (url, _):
            route = cfg["task"]["route"]
            # every reason is a series from the start, at 0, so Prometheus' increase() sees the first escalation
            assert escalations(url, zeros=True) == {"contract": 0.0, "cheap_busy": 0.0, "cheap_unavailable": 0.0}
            easy = ask(url, route, "an easy invoice")
            assert easy.status_code == 200
            assert easy.json()["tier"] == "cheap" and easy.json()["model"] == "cheap-q4_k_m"
            assert easy.json()["escalated"] is None
            hard = ask(url, route, "a hard invoice")
            assert hard.status_code == 200 and hard.json()["tier"] == "primary"
            assert "contract" in hard.json()["escalated"] and hard.json()["fallback"] is False
            assert escalations(url) == {"contract": 1.0}
            chat = httpx.post(url + "/v1/chat/completions", headers=AUTH, timeout=30,
                              json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
            assert chat.headers["x-forge-upstream"].startswith("primary")   # the cheap tier serves the task only


def test_a_busy_cheap_tier_sends_the_request_straight_to_the_deployed_model(tmp_path):
    with running(CheapEngine) as cheap, running(StrongEngine) as strong:
        cfg = cascade_config(cheap, strong)
        with deploy.start_gateway(cfg, tmp_path, api_keys=KEY) as (url, _):
            with cf.ThreadPoolExecutor(2) as ex:
                first = ex.submit(ask, url, cfg["task"]["route"], "easy one")
                time.sleep(0.2)   # the cheap engine's only slot is taken
                second = ex.submit(ask, url, cfg["task"]["route"], "easy two")
                a, b = first.result(), second.result()
            assert (a.json()["tier"], b.json()["tier"]) == ("cheap", "primary")
            assert b.json()["escalated"] == "cheap tier busy"
            assert escalations(url) == {"cheap_busy": 1.0}


def test_a_dead_cheap_tier_escalates_and_the_task_is_still_answered(tmp_path):
    with running(StrongEngine) as strong:
        cfg = cascade_config("http://127.0.0.1:9", strong)
        with deploy.start_gateway(cfg, tmp_path, api_keys=KEY) as (url, _):
            r = ask(url, cfg["task"]["route"], "easy")
            assert r.status_code == 200 and r.json()["tier"] == "primary"
            assert escalations(url) == {"cheap_unavailable": 1.0}


def test_variants_are_compared_item_by_item_against_the_reference():
    import numpy as np

    from runner.quality import stats
    from runner.serving import routing_eval
    right = lambda xs: {"exact_match": stats.Metric(np.asarray(xs, dtype=float))}  # noqa: E731
    variants = [{"name": "deployed", "quality": right([1, 1, 1, 0] * 10), "summary": {"documents": 40}},
                {"name": "cascade", "quality": right([1, 1, 0, 0] * 10), "summary": {"documents": 40}}]
    out = routing_eval.compare(variants, "deployed", ["exact_match"], iters=500)
    d = out["cascade"]["vs_deployed"]["exact_match"]
    assert d["diff"] == -0.25 and d["high"] < 0 < 1 - d["p"]     # a quarter of the items lost, clearly
    assert out["deployed"]["vs_deployed"] is None
    assert routing_eval.answer_text({"answer": {"total": 1}}) == '{"total": 1}'
    assert routing_eval.answer_text({"answer": "billing"}) == "billing" and routing_eval.answer_text(None) == ""
