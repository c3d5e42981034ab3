"""Monitoring a deployment with Prometheus: the recipe's alerting and recording rules written, checked and
unit-tested by promtool; a Prometheus server scraping a live deployment; and the load test's figures
cross-checked against Prometheus' own view of the same window."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Iterator

from runner import setup
from runner.adapters import llama_cpp, prometheus
from runner.serving import deploy
from runner.stage import StageError


def binary(name: str) -> Path:
    """promtool or prometheus from the pinned Debian package (set up on first use)."""
    try:
        return setup.ensure_debian_package("prometheus").bin(name)
    except SystemExit as e:
        raise StageError(str(e)) from None


def limits_of(serving: dict) -> dict:
    gw = serving.get("gateway") or {}
    return {"max_queue": gw.get("max_queue", 0), "max_in_flight": gw.get("max_in_flight")}


def checked_rules(out: Path, slo: dict, serving: dict, mon: dict) -> dict:
    """Write the rules and their tests under `out`; promtool checks and tests them, and a failure stops the
    stage (rules that do not load, or alerts that do not fire on their own breach, watch nothing)."""
    try:
        rules_path, tests_path = prometheus.write_rules(out, slo, limits_of(serving), mon)
    except ValueError as e:
        raise StageError(f"monitoring rules from loadtest.slo: {e}") from None
    promtool = binary("promtool")
    check = prometheus.check_rules(promtool, rules_path)
    tests = prometheus.test_rules(promtool, tests_path)
    if not (check["ok"] and tests["ok"]):
        raise StageError(f"the generated Prometheus rules failed promtool ({rules_path}):\n"
                         f"{check['output']}\n{tests['output'][-2000:]}")
    alerts = prometheus.alerts(slo, limits_of(serving), mon)
    return {"rules_file": rules_path.name, "tests_file": tests_path.name,
            "alerts": [{"name": a.name, "expr": a.expr, "for_s": a.for_s, "severity": a.severity,
                        "summary": a.summary} for a in alerts],
            "recording_rules": [r["record"] for r in prometheus.recording_rules(mon)],
            "promtool": {"check": check["output"], "test": tests["output"],
                         "test_cases": 2 * len(alerts)}}


@contextlib.contextmanager
def watching(dep: deploy.Deployment, rules_path: Path, workdir: Path, interval_s: float,
             port: int | None = None) -> Iterator[prometheus.Server]:
    """A Prometheus server scraping `dep`'s gateway and engines with the rule file, until the block exits."""
    engines = {f"{e.role}-{i}": e.url for i, e in enumerate(dep.endpoints)}
    cfg = prometheus.scrape_config(dep.gateway_url, engines, rules_path.resolve(), interval_s)
    try:
        with prometheus.server(binary("prometheus"), cfg, workdir, port or llama_cpp.free_port()) as srv:
            deadline = time.time() + 10 * interval_s + 10   # every target scraped once before the load starts
            while time.time() < deadline and not (srv.targets_up() and all(srv.targets_up().values())):
                time.sleep(interval_s / 2)
            yield srv
    except RuntimeError as e:
        raise StageError(str(e), log=workdir / "prometheus.log") from None


def cross_check(srv: prometheus.Server, rows: list[dict], route: str, interval_s: float) -> dict:
    """Prometheus' figures for each load level's window beside the load generator's: requests counted by the
    gateway, p50/p99 latency estimated from its histogram buckets, peak in-flight/queued, engine slots busy;
    then every alert that was pending or firing during the ladder."""
    time.sleep(2 * interval_s + 0.5)  # the last level's final scrape and rule evaluation
    sel = f'route="{route}"'
    total = f"sum(forge_requests_total{{{sel}}})"
    levels = []
    timed = [r for r in rows if r.get("start_time") and r.get("end_time")]
    for i, r in enumerate(timed):
        # A request is counted at the first scrape after it completes: each level's count is read at its start
        # and one scrape interval after its end (so its last completions are in), but never past the next
        # level's start, so no request is counted twice.
        s, e = r["start_time"], r["end_time"]
        end = e + interval_s + 0.25
        if i + 1 < len(timed):
            end = min(end, timed[i + 1]["start_time"])
        span = f"{max(1, int(round(end - s)))}s"
        before, after = srv.scalar(total, s) or 0.0, srv.scalar(total, end) or 0.0
        quant = lambda q: srv.scalar(f"histogram_quantile({q}, sum by (le) (increase("  # noqa: E731
                                     f"forge_request_latency_seconds_bucket{{{sel}}}[{span}])))", end)
        g = r.get("requests") or {}
        levels.append({
            "streams": r["streams"],
            "requests_generator": g.get("total"),
            "requests_generator_completed": (g.get("successful") or 0) + (g.get("errored") or 0),
            "requests_prometheus": round(after - before),
            "p50_s_generator": (r.get("latency_s") or {}).get("p50"), "p50_s_prometheus": quant(0.5),
            "p99_s_generator": (r.get("latency_s") or {}).get("p99"), "p99_s_prometheus": quant(0.99),
            "in_flight_peak": srv.scalar(f"max_over_time(forge_in_flight[{span}])", end),
            "queued_peak": srv.scalar(f"max_over_time(forge_queued[{span}])", end),
            "engine_slots_busy_peak": srv.scalar(f"max(max_over_time(llamacpp:requests_processing[{span}]))", end),
        })
    first = min((r["start_time"] for r in rows if r.get("start_time")), default=None)
    alerts = []
    if first:
        span = f"{max(1, int(round(time.time() - first)))}s"
        seen = srv.query(f"max_over_time(ALERTS[{span}])")
        alerts = sorted({(a["metric"].get("alertname"), a["metric"].get("alertstate")) for a in seen})
    return {"scrape_interval_s": interval_s, "route": route, "levels": levels,
            "alerts_seen": [{"alert": n, "state": st} for n, st in alerts], "targets_up": srv.targets_up()}
