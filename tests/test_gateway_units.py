"""Gateway parts that need no server: circuit breaker, routing order, admission control."""
import asyncio

import pytest

from runner.gateway.admission import Admission, Rejected
from runner.gateway.resilience import CircuitBreaker, Router, Upstream


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_breaker_opens_after_threshold_then_half_opens_and_closes_on_success():
    c = Clock()
    b = CircuitBreaker(threshold=2, reset_s=5, clock=c)
    b.failure()
    assert b.state == "closed" and b.allow()
    b.failure()
    assert b.state == "open" and not b.allow()
    c.t = 5.1
    assert b.state == "half_open"
    assert b.allow() and not b.allow()  # exactly one trial request
    b.failure()  # the trial failed: open again, for another reset period
    assert b.state == "open"
    c.t = 10.3
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow() and b.allow()


def test_router_prefers_least_outstanding_primary_then_fallback():
    p0, p1 = Upstream("primary-0", "primary", "u0", "m"), Upstream("primary-1", "primary", "u1", "m")
    fb = Upstream("fallback", "fallback", "uf", "base")
    r = Router([fb, p1, p0])
    assert [u.name for u in r.candidates()] == ["primary-0", "primary-1", "fallback"]
    p0.outstanding = 3
    assert [u.name for u in r.candidates()] == ["primary-1", "primary-0", "fallback"]
    for _ in range(3):
        p1.breaker.failure()
    assert [u.name for u in r.candidates()] == ["primary-0", "fallback"]
    assert [u.name for u in r.candidates(("fallback",))] == ["fallback"]


def test_admission_is_fifo_bounded_and_times_out():
    async def scenario():
        adm = Admission(max_in_flight=1, max_queue=2, queue_timeout_s=0.3)
        order = []
        release = asyncio.Event()

        async def job(name, hold=False):
            async with adm.slot():
                order.append(name)
                if hold:
                    await release.wait()

        first = asyncio.create_task(job("a", hold=True))
        await asyncio.sleep(0.01)
        b, c = asyncio.create_task(job("b")), asyncio.create_task(job("c"))
        await asyncio.sleep(0.01)
        assert adm.in_flight == 1 and adm.queued == 2
        with pytest.raises(Rejected) as full:
            async with adm.slot():
                pass
        assert full.value.status == 429 and full.value.retry_after >= 1
        release.set()
        await asyncio.gather(first, b, c)
        assert order == ["a", "b", "c"] and adm.in_flight == 0 and adm.queued == 0

        # a request that waits past queue_timeout_s gets 503, and the slot accounting stays right
        release.clear()
        holder = asyncio.create_task(job("d", hold=True))
        await asyncio.sleep(0.01)
        with pytest.raises(Rejected) as late:
            async with adm.slot():
                pass
        assert late.value.status == 503
        release.set()
        await holder
        assert adm.in_flight == 0 and adm.queued == 0

    asyncio.run(scenario())


def test_the_default_admission_limit_is_the_engines_slots():
    from runner import recipe as recipes
    from runner.env import REPO
    from runner.serving import deploy
    serve = recipes.load(REPO / "recipes" / "invoice-extraction.yaml").data["serve"]
    assert serve["gateway"]["max_in_flight"] is None
    spec = deploy.spec(serve, REPO / "p.gguf", None, [], 2)
    assert spec["gateway"]["max_in_flight"] == serve["replicas"] * serve["parallel"] == 12  # the recipe serves 12 slots
    spec = deploy.spec({**serve, "replicas": 2, "gateway": {**serve["gateway"], "max_in_flight": 5}},
                       REPO / "p.gguf", None, [], 2)
    assert spec["gateway"]["max_in_flight"] == 5


def test_each_route_falls_back_only_to_a_model_that_serves_it():
    p = Upstream("primary-0", "primary", "u0", "tuned")
    chat_fb = Upstream("fallback-1", "fallback", "u1", "fallback-base", routes=("chat",))
    task_fb = Upstream("fallback-2", "fallback", "u2", "fallback-deployed", routes=("task",))
    r = Router([p, chat_fb, task_fb])
    assert [u.name for u in r.candidates(route="chat")] == ["primary-0", "fallback-1"]
    assert [u.name for u in r.candidates(route="task")] == ["primary-0", "fallback-2"]
    for _ in range(3):
        task_fb.breaker.failure()
    task_fb.breaker.clock = lambda: 1e12  # long after reset_s: half-open, one trial allowed
    assert [u.name for u in r.candidates(route="chat")] == ["primary-0", "fallback-1"]  # the trial is not spent here
    assert [u.name for u in r.candidates(route="task")] == ["primary-0", "fallback-2"]


def test_serve_fallbacks_one_engine_per_model_with_its_routes():
    from runner.stage import StageError
    from runner.stages import serve
    got = serve.fallbacks({"task": "deployed", "chat": "base"}, "d.gguf", "b.gguf")
    assert got == [{"gguf": "b.gguf", "alias": "fallback-base", "routes": ["chat"]},
                   {"gguf": "d.gguf", "alias": "fallback-deployed", "routes": ["task"]}]
    assert serve.fallbacks({"task": "deployed", "chat": "deployed"}, "d.gguf", None) == [
        {"gguf": "d.gguf", "alias": "fallback-deployed", "routes": ["chat", "task"]}]
    assert serve.fallbacks({"task": "none", "chat": "none"}, "d.gguf", "b.gguf") == []
    with pytest.raises(StageError, match="serve.fallback.chat: 'base' has no model"):
        serve.fallbacks({"task": "deployed", "chat": "base"}, "d.gguf", None)
