"""The task route's load test: the light asyncio driver against real loopback servers (closed loop: bounded
count, concurrency held), one level through a real gateway with answers that pass and fail the task's contract,
and the arithmetic that turns a level into documents/s, cost and a fraction of llama-bench's limit."""
import asyncio
import http.server
import json
import threading
import time

import pytest

from runner.serving import async_driver, deploy, task_load
from tests.fake_engines import VALID_INVOICE, ChatEngine, running
from tests.test_gateway import KEY, config

SLO = {"p99_latency_s": 5, "p95_ttft_s": 2, "max_error_rate": 0.2}


class CountingEngine(http.server.BaseHTTPRequestHandler):
    """Answers after 0.1 s and remembers the most requests it held at once."""
    active = peak = 0
    lock = threading.Lock()

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            CountingEngine.active += 1
            CountingEngine.peak = max(CountingEngine.peak, CountingEngine.active)
        time.sleep(0.1)
        with self.lock:
            CountingEngine.active -= 1
        body = b'{"ok": true, "usage": {"prompt_tokens": 10, "completion_tokens": 5}}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_the_closed_loop_sends_exactly_count_requests_with_at_most_streams_at_once():
    with running(CountingEngine) as url:
        target = async_driver.request_bytes(url + "/anything", {"x": 1})
        t0 = time.time()
        out = asyncio.run(async_driver.closed_loop([target], streams=3, count=10, max_seconds=30))
        took = time.time() - t0
    assert len(out) == 10 and all(s.status == 200 for s in out)
    assert CountingEngine.peak == 3
    assert 0.3 < took < 2.5            # 4 rounds of 0.1 s, not 10 in series
    assert json.loads(out[0].body)["usage"]["completion_tokens"] == 5
    assert all(0 < s.first_byte_s <= s.latency_s for s in out)


def test_the_driver_bounds_time_and_reports_refused_connections():
    with running(CountingEngine) as url:
        target = async_driver.request_bytes(url + "/x", {})
        out = asyncio.run(async_driver.closed_loop([target], streams=1, count=1000, max_seconds=0.5))
    assert 2 <= len(out) <= 8          # stopped by time, not by count
    dead = async_driver.request_bytes("http://127.0.0.1:9/x", {})
    s = asyncio.run(async_driver.one(*dead, timeout_s=2))
    assert s.status == 0 and s.error


class HalfValidEngine(ChatEngine):
    """A valid invoice for documents that say "good", prose otherwise (which fails the contract, constrained too)."""

    def answer(self, request):
        return json.dumps(VALID_INVOICE) if "good" in request["messages"][-1]["content"] else "no idea"


def test_a_level_through_the_gateway_counts_valid_answers_and_prices_documents(tmp_path):
    with running(HalfValidEngine) as engine:
        eps = [deploy.Endpoint("primary", engine, "tuned", 0)]
        cfg = config(eps, constrained_retry=True)
        with deploy.start_gateway(cfg, tmp_path, api_keys=KEY) as (url, _):
            rows, timing = task_load.level(url, cfg["task"]["route"], ["good invoice 1", "bad scan"], KEY, 2, 8, 30,
                                           tmp_path, 30)
    assert len(rows) == 8 and sorted({r["status"] for r in rows}) == [200, 502]
    assert all(r["usage"]["completion_tokens"] == 1 for r in rows if r["status"] == 200)
    level = task_load.summarize(rows, timing, 2, SLO, price_per_hour=0.36, cores=2)
    assert level["answered_valid"] == 4 and level["valid_share"] == 0.5 and level["statuses"] == {"200": 4, "502": 4}
    assert level["error_rate"] == 0.5 and not level["meets_slo"]           # half the documents got no answer
    assert level["documents_per_s"] == pytest.approx(4 / timing["wall_s"], rel=0.01)
    assert level["usd_per_1k_documents"] == pytest.approx(0.36 / (level["documents_per_s"] * 3600) * 1000, rel=0.01)
    assert 0 <= level["driver_cpu_share"] < 0.5 and level["prompt_tokens_mean"] == 5


def test_the_ladder_climbs_until_the_slo_breaks():
    cfg = {"concurrency": [1, 2], "climb": True, "max_streams": 16}
    row = lambda n, ok: {"streams": n, "latency_ok": ok, "meets_slo": False}  # noqa: E731
    assert task_load.next_levels(cfg, []) == 1
    assert task_load.next_levels(cfg, [row(1, True)]) == 2
    assert task_load.next_levels(cfg, [row(1, True), row(2, True)]) == 4
    assert task_load.next_levels(cfg, [row(1, True), row(2, True), row(4, False)]) is None
    assert task_load.next_levels(cfg, [row(1, True), row(2, True), row(4, True), row(8, True), row(16, True)]) is None
    assert task_load.next_levels({**cfg, "climb": False}, [row(1, True), row(2, True)]) is None
    # why it ended: the SLO broke (ceiling found), or max_streams came first (the ceiling is at least the last level)
    assert task_load.stop_reason(cfg, [row(1, True), row(2, True), row(4, False)]) == "slo"
    capped = [row(1, True), row(4, True), row(8, True)]
    assert task_load.next_levels({"concurrency": [1, 4], "climb": True, "max_streams": 8}, capped) is None
    assert task_load.stop_reason({**cfg, "max_streams": 8}, capped) == "max_streams"
    assert task_load.stop_reason({**cfg, "climb": False}, [row(1, True), row(2, True)]) == "listed"


def test_calibration_compares_one_stream_with_llama_bench_at_the_workloads_token_mix():
    bench = {"prompt_tokens_per_s": 1000.0, "gen_tokens_per_s": 50.0}
    # 500 prompt tokens (0.5 s) + 100 answer tokens (2 s): 0.4 documents/s is the single-stream limit
    assert task_load.single_stream_limit(bench, 500, 100) == pytest.approx(0.4)
    answer = lambda latency, status=200: {"status": status, "latency_s": latency,  # noqa: E731
                                          "usage": {"prompt_tokens": 500, "completion_tokens": 100}}
    # predicted 2.5 s each; latencies 2.5, 3.125, 5.0 (a retried one) and a refused one: the median ratio is 0.8
    rows = [answer(2.5), answer(3.125), answer(5.0), answer(9.0, 502)]
    assert task_load.speed_vs_bench(rows, bench) == 0.8
    level = task_load.summarize(rows, {"wall_s": 20.0, "driver_cpu_s": 0.1, "start_time": 0, "end_time": 20}, 1,
                                {"p99_latency_s": 10, "max_error_rate": 0.01}, 0.1, 2, bench)
    assert level["speed_vs_bench"] == 0.8 and level["answers_per_s"] == 0.2 and level["p99_all_answered_s"] == 9.0
    # the generations' shape counts the refused answer's too; a 502 that says what its two failed generations
    # cost counts as two
    assert level["generations"] == 4 and level["generation_tokens_mean"] == [500.0, 100.0]
    spent = {"status": 502, "latency_s": 9.0, "usage": {"prompt_tokens": 1100, "completion_tokens": 140, "generations": 2}}
    two = task_load.summarize(rows[:3] + [spent], {"wall_s": 20.0, "driver_cpu_s": 0.1, "start_time": 0,
                                                    "end_time": 20}, 1, {"p99_latency_s": 10, "max_error_rate": 0.01},
                              0.1, 2, bench)
    assert two["generations"] == 5 and two["generation_tokens_mean"] == [520.0, 88.0]
    assert two["prompt_tokens_mean"] == 500.0      # the valid answers' own means are unchanged
    assert level["latency_ok"] and not level["meets_slo"]               # fast enough, but a quarter refused
    levels = [level, {"streams": 2, "documents_per_s": 0.5, "prompt_tokens_mean": 500, "completion_tokens_mean": 100}]
    cal = task_load.calibrate(levels, bench)
    assert cal["speed_vs_bench"] == 0.8 and cal["contended"] is False
    assert levels[0]["x_single_stream_limit"] == 0.375 and levels[1]["x_single_stream_limit"] == 1.25
    level["speed_vs_bench"] = 0.62
    assert task_load.calibrate(levels, bench)["contended"] is True
    assert task_load.calibrate([{**level, "speed_vs_bench": None}], {})["contended"] is None   # no llama-bench


def test_the_best_level_and_its_repeats_pool_their_answers_and_state_the_spread():
    lvl = lambda n, docs, ok: {"streams": n, "documents_per_s": docs, "latency_ok": ok, "valid_share": 0.8,  # noqa: E731
                               "requests": 4}
    levels = [lvl(1, 0.6, True), lvl(4, 0.8, True), lvl(8, 0.9, False)]
    best = task_load.best_level(levels)
    assert best["streams"] == 4                       # 8 was faster but broke the latency SLO
    assert task_load.best_level([lvl(1, 0.6, False)]) is None
    rows = lambda lats: [{"status": 200, "latency_s": x} for x in lats] + [{"status": 502, "latency_s": 9.0}]  # noqa: E731
    rep = task_load.repeated(best, [lvl(4, 0.7, True)], [rows([1.0, 2.0, 3.0]), rows([4.0, 5.0, 6.0])])
    assert rep["runs"] == 2 and rep["documents_per_s"] == [0.8, 0.7] and rep["documents_per_s_spread"] == 0.1
    assert rep["latency_samples"] == 6 and rep["latency_s"]["p50"] == 3.0 and rep["latency_s"]["p99"] == 6.0
    assert rep["p99_all_answered_s"] == 9.0 and rep["requests"] == 8


# two lines as llama-batched-bench --output-format jsonl prints them (the tool's log lines around them are skipped)
BATCHED_BENCH = """main: n_kv_max = 3488, n_batch = 2048
{"n_kv_max": 3488, "n_batch": 2048, "n_ubatch": 512, "flash_attn": -1, "is_pp_shared": 0, "n_gpu_layers": -1, "n_threads": 2, "n_threads_batch": 2, "pp": 280, "tg": 124, "pl": 1, "n_kv": 404, "t_pp": 0.250000, "speed_pp": 1120.000000, "t_tg": 0.850000, "speed_tg": 145.882353, "t": 1.100000, "speed": 367.272727}
{"n_kv_max": 3488, "n_batch": 2048, "n_ubatch": 512, "flash_attn": -1, "is_pp_shared": 0, "n_gpu_layers": -1, "n_threads": 2, "n_threads_batch": 2, "pp": 280, "tg": 124, "pl": 8, "n_kv": 3232, "t_pp": 2.150000, "speed_pp": 1041.860465, "t_tg": 3.570000, "speed_tg": 277.871148, "t": 5.720000, "speed": 565.034965}
llama_perf_context_print:        load time =      40.12 ms
"""


def test_the_engines_batched_ceiling_is_read_from_llama_batched_bench_and_set_beside_each_level():
    from runner.adapters import llama_cpp
    rows = llama_cpp.batched_bench_rows(BATCHED_BENCH)
    assert [r["sequences"] for r in rows] == [1, 8]
    assert rows[0]["documents_per_s"] == pytest.approx(1 / 1.1, abs=1e-4)
    assert rows[1]["documents_per_s"] == pytest.approx(8 / 5.72, abs=1e-4) and rows[1]["gen_tokens_per_s"] == 277.9
    lvl = lambda n, answers, gens, p, a: {"streams": n, "answers_per_s": answers, "generations": gens,  # noqa: E731
                                          "generation_tokens_mean": [p, a]}
    levels = [lvl(1, 0.8, 100, 270.0, 120.0), lvl(16, 1.2, 300, 290.0, 127.0)]
    assert task_load.mean_tokens(levels) == (285, 125)            # weighted by generations
    assert task_load.batch_sizes(levels, 8) == [1, 8]              # 16 streams, 8 slots: the engine batches 8
    engine = task_load.against_engine(levels, rows, 8)
    one, sixteen = levels
    assert one["engine_batch"] == 1 and one["engine_x_one"] == 1.0 and one["x_engine"] == pytest.approx(0.88, abs=1e-3)
    assert sixteen["engine_batch"] == 8 and sixteen["engine_x_one"] == pytest.approx(1.538, abs=1e-3)
    assert sixteen["x_engine"] == pytest.approx(1.2 / (8 / 5.72), abs=1e-3)
    assert engine["max_x_one"] == pytest.approx(1.538, abs=1e-3) and engine["slots"] == 8
    # a level whose batch the bench did not run is left without a ceiling, not given another batch's
    lone = [lvl(4, 1.0, 10, 280.0, 124.0)]
    task_load.against_engine(lone, rows, 8)
    assert lone[0]["engine_documents_per_s"] is None and lone[0]["x_engine"] is None
