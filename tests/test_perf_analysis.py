"""Reading a load test without a server: SLO verdicts, the throughput knee, the bottleneck rules, overhead,
before/after, the /metrics gauge parser, and perf_cost.md rendered from those numbers."""
from runner.reports import fmt, perf_cost
from runner.serving import perf_analysis as pa
from runner.serving import resources


def level(streams, tps, p99=1.0, ttft_p95=200.0, errored=0, total=20):
    return {"streams": streams, "requests_per_s": tps / 50, "output_tokens_per_s": tps,
            "latency_s": {"p50": p99 / 2, "p95": p99 * 0.9, "p99": p99}, "ttft_ms": {"p50": 100.0, "p95": ttft_p95,
                                                                                  "p99": ttft_p95 * 1.2},
            "itl_ms": {"p50": 20.0}, "requests": {"errored": errored, "total": total}}


def test_judge_applies_every_slo_term():
    slo = {"p99_latency_s": 2.0, "p95_ttft_s": 0.5, "max_error_rate": 0.05}
    rows = pa.judge([level(1, 50), level(2, 80, p99=2.5), level(4, 90, ttft_p95=600), level(8, 95, errored=2),
                     level(16, 0, total=0)], slo)
    assert [r["meets_slo"] for r in rows] == [True, False, False, False, False]
    assert rows[3]["error_rate"] == 0.1 and rows[4]["error_rate"] == 1.0


def test_knee_is_where_throughput_stops_growing():
    assert pa.knee([level(1, 50), level(2, 90), level(4, 95), level(8, 96)]) == 2
    assert pa.knee([level(1, 50), level(2, 90), level(4, 160)]) is None
    assert pa.knee([level(1, 50), level(2, 40)]) == 1


def test_cost_per_million_output_tokens():
    assert pa.cost_per_million(100.0, 0.36) == 1.0
    assert pa.cost_per_million(None, 0.36) is None and pa.cost_per_million(0.0, 1.0) is None


def window(machine, engine, gateway, deferred=0.0, busy=1.0, queued=0.0):
    return {"samples": 10, "machine_cpu_pct": {"mean": machine, "max": machine},
            "primary-0": {"cpu_pct": {"mean": engine}, "requests_deferred": {"mean": deferred},
                          "slots_busy": {"mean": busy}, "rss_mb": {"mean": 300, "max": 310}},
            "gateway": {"cpu_pct": {"mean": gateway}, "gateway_queued": {"mean": queued}}}


def test_bottleneck_rules_and_their_evidence():
    cpu = pa.bottleneck(window(95, 120, 10), cores=2, parallel=2)
    assert cpu["verdict"] == "cpu" and cpu["other_cpu_pct"] == 60.0  # 190 - 120 - 10
    assert "load generator" in " ".join(cpu["evidence"]) and "under 60%" not in " ".join(cpu["evidence"])
    shared = pa.bottleneck(window(95, 90, 10), cores=2, parallel=2)
    assert any("under 60%" in e for e in shared["evidence"])
    assert pa.bottleneck(window(50, 90, 5, deferred=1.5), 2, 2)["verdict"] == "slots"
    assert pa.bottleneck(window(50, 90, 5, busy=2.0), 2, 2)["verdict"] == "slots"
    assert pa.bottleneck(window(50, 90, 5, busy=1.0, queued=3.0), 2, 2)["verdict"] == "gateway_admission"
    assert pa.bottleneck(window(30, 50, 5), 2, 4)["verdict"] == "none"
    assert pa.bottleneck({"samples": 0}, 2, 2)["verdict"] == "unknown"


def test_overhead_and_before_after():
    g, d = [level(1, 45, p99=1.2), level(2, 80)], [level(1, 50, p99=1.0), level(2, 80)]
    o = pa.overhead(g, d)
    assert o[0]["throughput_ratio"] == 0.9 and o[0]["added_latency_p50_ms"] == 100.0 and o[1]["throughput_ratio"] == 1.0
    ba = pa.before_after([level(4, 40), level(8, 10)], [level(1, 50), level(4, 100)])
    assert len(ba) == 1 and ba[0]["streams"] == 4 and ba[0]["throughput_gain"] == 2.5


def test_gauges_are_read_from_prometheus_text():
    text = ("# HELP llamacpp:requests_deferred x\n# TYPE llamacpp:requests_deferred gauge\n"
            "llamacpp:requests_deferred 3\nllamacpp:requests_processing 2\n"
            "forge_in_flight 4.0\nforge_queued 1.0\nforge_circuit_state{upstream=\"primary-0\"} 0.0\n")
    assert resources.parse_gauges(text) == {"requests_deferred": 3.0, "slots_busy": 2.0, "gateway_in_flight": 4.0,
                                            "gateway_queued": 1.0}


def test_the_chat_ladder_is_calibrated_against_llama_bench_at_one_stream():
    bench = {"prompt_tokens_per_s": 1000.0, "gen_tokens_per_s": 100.0}
    one = {**level(1, 100), "requests_per_s": 1.0, "cached_prompt_ratio": 0.5}    # 100 answer tokens a request
    one["latency_s"]["p50"] = 1.25
    # 256 prompt tokens, half from the cache: 0.128 s; 100 answer tokens: 1.0 s; measured 1.25 s -> 0.902
    cal = pa.calibrate_chat([one, level(2, 150)], bench, 256, 0.8)
    assert cal["predicted_s"] == 1.128 and cal["speed_vs_bench"] == 0.902 and cal["contended"] is False
    one["latency_s"]["p50"] = 2.0
    assert pa.calibrate_chat([one], bench, 256, 0.8)["contended"] is True              # 0.564: something held the cores
    assert pa.calibrate_chat([one], {}, 256, 0.8) is None and pa.calibrate_chat([level(2, 150)], bench, 256, 0.8) is None


def test_perf_cost_report_states_ceiling_bottleneck_and_drills(tmp_path):
    rows = pa.judge([level(1, 50), level(2, 90, p99=3.0)], {"p99_latency_s": 2.0, "p95_ttft_s": 1, "max_error_rate": 0})
    for r in rows:
        r["usd_per_1m_output_tokens"] = pa.cost_per_million(r["output_tokens_per_s"], 0.1)
        r["resources"] = window(95, 120, 10)
        r["bottleneck"] = pa.bottleneck(r["resources"], 2, 2)
    metrics = {"through": "gateway", "levels": rows, "direct_levels": None, "gateway_overhead": None,
               "concurrency_ceiling": 1, "slo": {"p99_latency_s": 2.0, "p95_ttft_s": 1, "max_error_rate": 0},
               "throughput_knee_streams": None, "bottleneck": {"at_streams": 2, **rows[1]["bottleneck"]},
               "peak_output_tokens_per_s": 90, "peak_at_streams": 2, "usd_per_1m_output_tokens_at_ceiling": 0.556,
               "price_per_hour_usd": 0.1, "baseline": None, "engine_restarts": [], "cores": 2,
               "serving": {"engine": "llama-server", "replicas": 1, "parallel": 2, "threads": 2}, "model_type": "f16",
               "chat_calibration": {"speed_vs_bench": 0.62, "min": 0.8, "contended": True, "prompt_tokens": 240.0,
                                    "answer_tokens": 96.0, "predicted_s": 0.8, "measured_p50_s": 1.29},
               "drills": {"malformed": {"passed": False, "requests": [{"request": "invalid JSON", "status": 500,
                                                                         "json_error": False, "passed": False}],
                                        "healthz_after": 200, "readyz_after": "ready", "good_request_after": 200}}}
    arts = perf_cost.write(fmt.Page(tmp_path, metrics))
    md = (tmp_path / "perf_cost.md").read_text()
    assert arts["perf_cost_png"] == "perf_cost.png" and (tmp_path / "perf_cost.png").stat().st_size > 10_000
    assert "**1 concurrent stream**" in md and "$0.556" in md and "**misses**" in md
    assert "CPU: the cores are saturated" in md and "**failed**" in md and "invalid JSON 500" in md
    assert "**62% of llama-bench's speed**" in md and "**the measurement was contended**" in md


def test_vegeta_targets_and_report_parsing(tmp_path):
    import base64
    import json

    from runner.adapters import vegeta
    lines = vegeta.targets("http://127.0.0.1:1/v1/tasks/invoice_extraction", "k3y", ["Invoice A", "Invoice B"]).splitlines()
    t = json.loads(lines[1])
    assert t["method"] == "POST" and t["header"]["Authorization"] == ["Bearer k3y"]
    assert json.loads(base64.b64decode(t["body"])) == {"document": "Invoice B"}
    cmd = vegeta.attack_command(tmp_path / "t.jsonl", 0.5, 20, 60, tmp_path / "r.bin")
    assert cmd[:2] == ["vegeta", "attack"] and "-rate=0.5/s" in cmd and "-duration=20s" in cmd
    # the report format documented in vegeta's README (durations in nanoseconds)
    report = {"latencies": {"total": 237119463, "mean": 2371194, "50th": 2854306, "90th": 3228223, "95th": 3478629,
                            "99th": 3530000, "max": 3660505, "min": 1949582}, "requests": 100,
              "rate": 101.01, "throughput": 101.0, "success": 0.98, "status_codes": {"200": 98, "429": 2},
              "errors": ["429 Too Many Requests"]}
    row = vegeta.parse(report, 100)
    assert row["latency_s"]["p99"] == 0.0035 and row["latency_s"]["p50"] == 0.0029
    assert row["status_codes"] == {"200": 98, "429": 2} and row["success_ratio"] == 0.98
