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


def cascade_serving():
    eng = {"engine": "llama-server", "replicas": 1, "parallel": 4, "ctx_size": 2048, "threads": 1,
           "ready_timeout_s": 60, "sglang": {}, "engine_args": [], "fallback_threads": None}
    return {**eng, "model_type": "f16", "primary": {"gguf": "/m/tuned-f16.gguf", "hf_dir": None, "alias": "primary"},
            "cheap": {"gguf": "/m/tuned-q8_0.gguf", "alias": "cheap-q8_0", "routes": ["task"], "type": "q8_0",
                      "threads": 1},
            "fallbacks": [{"gguf": "/m/base-q8_0.gguf", "alias": "fallback-base", "routes": ["chat"]}],
            "gateway": {"enabled": True, "max_in_flight": 4},
            "task": {"route": "/v1/tasks/t", "cascade": {"cheap": "q8_0", "cheap_slots": 4, "escalate_when_busy": True}}}


def test_a_cascade_is_compared_with_each_of_its_models_alone_on_the_whole_machine():
    from runner.serving import routing_eval
    serving = cascade_serving()
    (k1, l1, deployed), (k2, l2, cheap), (k3, l3, both) = routing_eval.plan(serving, threads=2)
    assert (k1, k2, k3) == ("deployed", "cheap", "cascade")
    assert (l1, l2, l3) == ("f16 alone, 2 threads", "q8_0 alone, 2 threads", "cascade q8_0 → f16, 1 + 1 threads")
    for alone, gguf in ((deployed, "/m/tuned-f16.gguf"), (cheap, "/m/tuned-q8_0.gguf")):
        assert alone["primary"]["gguf"] == gguf and alone["threads"] == 2   # one engine, the whole machine
        assert alone["cheap"] is None and alone["fallbacks"] == [] and "cascade" not in alone["task"]
        assert alone["gateway"]["max_in_flight"] == 4
    assert both["cheap"]["gguf"] == "/m/tuned-q8_0.gguf" and both["fallbacks"] == []   # the policy alone, no fallback
    assert (both["threads"], both["cheap"]["threads"]) == (1, 1) and both["gateway"]["max_in_flight"] == 8
    assert serving["fallbacks"] and serving["cheap"]["threads"] == 1   # the deployment's own spec is untouched
    single = routing_eval.alone(serving, "/m/tuned-f16.gguf", 2)
    try:
        routing_eval.plan(single, 2)
        raise AssertionError("a single deployment has no cascade to compare")
    except ValueError as e:
        assert "not a cascade" in str(e)
    built = routing_eval.cascade(single, "/m/tuned-q4_k_m.gguf", (1, 1))   # benchmarks/routing_cascade.py's way
    assert built["task"]["cascade"]["cheap"] == "tuned-q4_k_m" and built["cheap"]["threads"] == 1


def routing_metrics(cascade_docs_s, cascade_usd, diff):
    def variant(docs_s, usd, vs=None, tiers=None):
        return {"documents": 40, "answered_valid": 38, "documents_per_s": docs_s, "usd_per_1k_documents": usd,
                "latency_s": {"p50": 1.0, "p95": 2.0, "p99": 2.5}, "exact_match": 0.7, "tiers": tiers,
                "escalations": {"contract": 3} if tiers else None, "vs_deployed": vs}
    d = {"exact_match": diff}
    return {"documents": 40, "streams": 2, "headline": "exact_match", "route": "/v1/tasks/t", "metrics": ["exact_match"],
            "reference": "deployed",
            "labels": {"deployed": "f16 alone, 2 threads", "cheap": "q8_0 alone, 2 threads",
                       "cascade": "cascade q8_0 → f16, 1 + 1 threads"},
            "variants": {"deployed": variant(1.0, 0.03), "cheap": variant(1.2, 0.025, d),
                         "cascade": variant(cascade_docs_s, cascade_usd, d, {"cheap": 35, "primary": 3})}}


def with_spread(m, spread):
    return {**m, "relative_spread": spread}


def test_the_routing_section_says_whether_the_cascade_pays_from_its_own_numbers():
    from runner.reports import perf_cost
    noise = {"diff": -0.025, "low": -0.1, "high": 0.05, "p": 0.5, "n": 40}
    loss = {"diff": -0.2, "low": -0.3, "high": -0.1, "p": 0.002, "n": 40}
    # one pass per variant: a cost difference inside the task ladder's measured spread (or with none measured) is no claim
    assert "less than the 30% run-to-run spread" in perf_cost.routing_verdict(with_spread(routing_metrics(0.8, 0.0375, noise), 0.3))
    assert "no spread measured" in perf_cost.routing_verdict(routing_metrics(0.8, 0.0375, noise))
    dear = perf_cost.routing_verdict(with_spread(routing_metrics(0.8, 0.0375, noise), 0.05))
    assert dear.startswith("cascade q8_0 → f16, 1 + 1 threads answered 0.80x the valid documents/s of f16 alone")
    assert "at 1.25x its cost" in dear and "not distinguishable from" in dear and "does not pay" in dear
    cheap_but_worse = perf_cost.routing_verdict(with_spread(routing_metrics(1.25, 0.024, loss), 0.05))
    assert "**significantly lower** than" in cheap_but_worse and "cheaper per valid document but loses exact_match" in cheap_but_worse
    good = perf_cost.routing_verdict(with_spread(routing_metrics(1.25, 0.024, noise), 0.05))
    assert "at no significant loss of exact_match" in good
    md = "\n".join(perf_cost.routing_section(routing_metrics(0.8, 0.0375, noise)))
    assert "| cascade q8_0 → f16, 1 + 1 threads | 38 / 40 | 0.700 | 0.800 | 1.00 / 2.00 / 2.50 | 0.0375 | cheap 35, " \
           "primary 3 (escalated: contract 3) |" in md
    assert "- q8_0 alone, 2 threads − f16 alone, 2 threads: exact_match -0.025 [-0.100, +0.050], p 0.50." in md
