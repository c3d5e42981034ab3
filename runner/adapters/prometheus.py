"""Prometheus adapter: alerting and recording rules generated from the recipe's SLO and limits, their unit tests
(for `promtool test rules`: every alert gets a series that breaches its threshold and must fire, and a calm
one that must not), `promtool check rules` / `test rules`, the scrape config for a deployment, a Prometheus
server on loopback, and its query API. The binaries come from Debian's prometheus package, unpacked into the
user cache (runner/setup.py)."""
from __future__ import annotations

import contextlib
import json
import math
import subprocess
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from runner.gateway.metrics_spec import LATENCY_BUCKETS, TTFT_BUCKETS

GATEWAY_JOB, ENGINES_JOB = "forge-gateway", "forge-engines"
ROUTES = 'route=~"chat|task"'  # the serving routes (not /metrics, /healthz, /readyz)


def duration(seconds: float) -> str:
    """Seconds as a Prometheus duration ("5m", "90s", "1h")."""
    s = int(round(seconds))
    for unit, n in (("h", 3600), ("m", 60)):
        if s and s % n == 0:
            return f"{s // n}{unit}"
    return f"{s}s"


@dataclass
class Alert:
    """One alerting rule plus the synthetic series its unit test feeds promtool: `breach` must fire it with
    `labels` (besides severity), `calm` must not."""
    name: str
    expr: str
    for_s: int
    severity: str
    summary: str
    breach: list[tuple[str, str]]
    calm: list[tuple[str, str]]
    labels: dict = field(default_factory=dict)
    eval_s: int | None = None      # when to look (default: window + for + two steps)

    def rule(self) -> dict:
        return {"alert": self.name, "expr": self.expr, "for": duration(self.for_s),
                "labels": {"severity": self.severity}, "annotations": {"summary": self.summary}}


def _counter(series: str, per_step: float, steps: int) -> tuple[str, str]:
    return series, f"0+{per_step:g}x{steps}"


def _gauge(series: str, value: float, steps: int) -> tuple[str, str]:
    return series, f"{value:g}+0x{steps}"


def _histogram(name: str, labels: str, buckets: tuple, observed: float, per_step: int, steps: int) -> list:
    """A histogram whose every observation is `observed` seconds, `per_step` of them each step."""
    out = []
    for le in [*buckets, "+Inf"]:
        inside = le == "+Inf" or observed <= le
        out.append(_counter(f'{name}_bucket{{{labels},le="{le}"}}', per_step if inside else 0, steps))
    out.append(_counter(f"{name}_count{{{labels}}}", per_step, steps))
    return out


def _ratio_counts(threshold: float, total: int = 1000) -> tuple[int, int]:
    """(bad per step in the breach, bad per step in the calm) out of `total` good ones: a share well above and
    well below `threshold`."""
    above = min(max(2 * threshold, 0.01), (1 + threshold) / 2)
    bad = math.ceil(total * above / (1 - above)) if above < 1 else total * 10
    calm = math.floor(total * (threshold / 2) / (1 - threshold / 2)) if threshold < 1 else 0
    return bad, calm


def _quantile_case(threshold: float, buckets: tuple, what: str) -> tuple[float, float]:
    """An observed value whose bucket lies wholly above `threshold` (breach) and one well below (calm)."""
    above = [b for b in buckets if b > threshold]
    lower = [b for b in buckets if b <= threshold]
    if len(above) < 2:
        raise ValueError(f"the {what} threshold {threshold} s is at or beyond the gateway's largest histogram "
                         f"bucket ({buckets[-1]} s): no alert could see it")
    if not lower:
        raise ValueError(f"the {what} threshold {threshold} s is below the gateway's smallest histogram bucket "
                         f"({buckets[0]} s)")
    return (above[0] + above[1]) / 2, lower[0] / 2


def alerts(slo: dict, limits: dict, mon: dict) -> list[Alert]:
    """The alerts that follow from the SLO (loadtest.slo), the gateway's limits and the monitoring section."""
    w, f = duration(mon["window_s"]), mon["for_s"]
    steps = (mon["window_s"] + max(f, 60)) // step_s(mon) + 10
    ok = lambda route: f'forge_requests_total{{route="{route}",model="primary",status="200"}}'  # noqa: E731
    A = []
    bad, calm = _ratio_counts(slo["max_error_rate"])
    if slo["max_error_rate"] < 1:
        A.append(Alert(
            "ForgeErrorRatioHigh", f"forge:error_ratio:rate{w} > {slo['max_error_rate']:g}", f, "page",
            f"More than {slo['max_error_rate']:.1%} of requests on a route answered 5xx (loadtest.slo.max_error_rate)",
            [_counter(ok("task"), 1000, steps),
             _counter('forge_requests_total{route="task",model="primary",status="502"}', bad, steps)],
            [_counter(ok("task"), 1000, steps),
             _counter('forge_requests_total{route="task",model="primary",status="502"}', calm, steps)],
            {"route": "task"}))
    hi, lo = _quantile_case(slo["p99_latency_s"], LATENCY_BUCKETS, "p99 latency")
    A.append(Alert(
        "ForgeLatencyP99High", f"forge:request_latency_seconds:p99_{w} > {slo['p99_latency_s']:g}", f, "page",
        f"p99 request latency above {slo['p99_latency_s']:g} s (loadtest.slo.p99_latency_s)",
        _histogram("forge_request_latency_seconds", 'route="chat"', LATENCY_BUCKETS, hi, 100, steps),
        _histogram("forge_request_latency_seconds", 'route="chat"', LATENCY_BUCKETS, lo, 100, steps),
        {"route": "chat"}))
    hi, lo = _quantile_case(slo["p95_ttft_s"], TTFT_BUCKETS, "p95 time to first token")
    A.append(Alert(
        "ForgeTTFTP95High", f"forge:time_to_first_token_seconds:p95_{w} > {slo['p95_ttft_s']:g}", f, "ticket",
        f"p95 time to first token above {slo['p95_ttft_s']:g} s (loadtest.slo.p95_ttft_s)",
        _histogram("forge_time_to_first_token_seconds", 'route="chat"', TTFT_BUCKETS, hi, 100, steps),
        _histogram("forge_time_to_first_token_seconds", 'route="chat"', TTFT_BUCKETS, lo, 100, steps),
        {"route": "chat"}))
    if limits["max_queue"] > 0:
        A.append(Alert(
            "ForgeQueueBacklog", f"forge_queued > {limits['max_queue'] / 2:g}", f, "ticket",
            f"More than half the gateway's queue ({limits['max_queue']}) is waiting: the engines are saturated",
            [_gauge('forge_queued{job="forge-gateway"}', limits["max_queue"], steps)],
            [_gauge('forge_queued{job="forge-gateway"}', 0, steps)], {"job": GATEWAY_JOB}))
    A.append(Alert(
        "ForgeRejecting", f"sum(rate(forge_rejected_total[{w}])) > 0", f, "ticket",
        "The gateway keeps refusing requests (429 queue full, 503 queue timeout): add capacity or lower the load",
        [_counter('forge_rejected_total{status="429"}', 10, steps)],
        [_counter('forge_rejected_total{status="429"}', 0, steps)]))
    A.append(Alert(
        "ForgeCircuitOpen", "forge_circuit_state == 2", 60, "page",
        "An upstream's circuit breaker is open: its requests go to the fallback",
        [_gauge('forge_circuit_state{upstream="primary-0"}', 2, steps)],
        [_gauge('forge_circuit_state{upstream="primary-0"}', 0, steps)], {"upstream": "primary-0"}))
    if mon["fallback_share"] < 1:
        bad, calm = _ratio_counts(mon["fallback_share"])
        A.append(Alert(
            "ForgeFallbackShareHigh", f"forge:fallback_ratio:rate{w} > {mon['fallback_share']:g}", f, "ticket",
            f"More than {mon['fallback_share']:.0%} of a route's requests are answered by a fallback "
            "(monitoring.fallback_share)",
            [_counter(ok("task"), 1000, steps),
             _counter('forge_fallbacks_total{route="task",reason="connect"}', bad, steps)],
            [_counter(ok("task"), 1000, steps),
             _counter('forge_fallbacks_total{route="task",reason="connect"}', calm, steps)], {"route": "task"}))
    if mon["task_invalid_share"] < 1:
        bad, calm = _ratio_counts(mon["task_invalid_share"])
        A.append(Alert(
            "ForgeTaskAnswersInvalid", f"forge:task_invalid_ratio:rate{w} > {mon['task_invalid_share']:g}", f,
            "ticket", f"More than {mon['task_invalid_share']:.0%} of task answers fail the task's contract "
            "(monitoring.task_invalid_share): quality drift or new kinds of documents",
            [_counter(ok("task"), 1000, steps),
             _counter('forge_upstream_errors_total{upstream="primary-0",kind="task_schema"}', bad, steps)],
            [_counter(ok("task"), 1000, steps),
             _counter('forge_upstream_errors_total{upstream="primary-0",kind="task_schema"}', calm, steps)]))
    n = mon["restarts_per_hour"]
    engine = f'llamacpp:n_decode_total{{job="{ENGINES_JOB}",instance="127.0.0.1:8081"}}'
    restarts = " ".join(["0+10x4"] * (n + 2))   # counting up, reset to 0, n+1 times within the hour
    A.append(Alert(
        "ForgeEngineRestarts", f'resets(llamacpp:n_decode_total{{job="{ENGINES_JOB}"}}[1h]) > {n}', 0, "ticket",
        f"An engine restarted more than {n} time(s) in an hour (monitoring.restarts_per_hour)",
        [(engine, restarts)], [(engine, " ".join(["0+10x4"] * (n + 1)))],
        {"job": ENGINES_JOB, "instance": "127.0.0.1:8081"}, eval_s=5 * (n + 2) * step_s(mon) - step_s(mon)))
    for job, what in ((ENGINES_JOB, "An engine"), (GATEWAY_JOB, "The gateway")):
        A.append(Alert(
            "ForgeEngineDown" if job == ENGINES_JOB else "ForgeGatewayDown", f'up{{job="{job}"}} == 0', 60, "page",
            f"{what} does not answer Prometheus' scrape",
            [_gauge(f'up{{job="{job}",instance="127.0.0.1:8081"}}', 0, steps)],
            [_gauge(f'up{{job="{job}",instance="127.0.0.1:8081"}}', 1, steps)],
            {"job": job, "instance": "127.0.0.1:8081"}))
    return A


def step_s(mon: dict) -> int:
    """The unit tests' sample interval: at least four samples per rate window."""
    return max(1, min(60, mon["window_s"] // 4))


def recording_rules(mon: dict) -> list[dict]:
    w = duration(mon["window_s"])
    rate = lambda m, sel="": f"rate({m}{{{sel}}}[{w}])"  # noqa: E731
    return [
        {"record": f"forge:requests:rate{w}", "expr": f"sum by (route) ({rate('forge_requests_total', ROUTES)})"},
        {"record": f"forge:error_ratio:rate{w}",
         "expr": f'sum by (route) ({rate("forge_requests_total", ROUTES + ",status=~" + chr(34) + "5.." + chr(34))})'
                 f" / sum by (route) ({rate('forge_requests_total', ROUTES)})"},
        {"record": f"forge:request_latency_seconds:p99_{w}",
         "expr": f"histogram_quantile(0.99, sum by (route, le) ({rate('forge_request_latency_seconds_bucket', ROUTES)}))"},
        {"record": f"forge:request_latency_seconds:p50_{w}",
         "expr": f"histogram_quantile(0.5, sum by (route, le) ({rate('forge_request_latency_seconds_bucket', ROUTES)}))"},
        {"record": f"forge:time_to_first_token_seconds:p95_{w}",
         "expr": f"histogram_quantile(0.95, sum by (route, le) ({rate('forge_time_to_first_token_seconds_bucket')}))"},
        {"record": f"forge:fallback_ratio:rate{w}",
         "expr": f"sum by (route) ({rate('forge_fallbacks_total')}) / sum by (route) ({rate('forge_requests_total', ROUTES)})"},
        {"record": f"forge:task_invalid_ratio:rate{w}",
         "expr": f'sum({rate("forge_upstream_errors_total", "kind=" + chr(34) + "task_schema" + chr(34))})'
                 f' / sum({rate("forge_requests_total", "route=" + chr(34) + "task" + chr(34))})'},
    ]


def rules(slo: dict, limits: dict, mon: dict) -> dict:
    """The rule file: recording rules first (the alerts read them), then the alerts."""
    return {"groups": [{"name": "forge-recording", "rules": recording_rules(mon)},
                       {"name": "forge-alerts", "rules": [a.rule() for a in alerts(slo, limits, mon)]}]}


def rule_tests(rules_file: str, slo: dict, limits: dict, mon: dict) -> dict:
    """promtool's unit tests for every alert: its breach fires it (labels and annotations checked), its calm
    series do not."""
    st = step_s(mon)
    tests = []
    for a in alerts(slo, limits, mon):
        at = duration(a.eval_s or mon["window_s"] + max(a.for_s, 60) + 2 * st)
        want = {"exp_labels": {"severity": a.severity, **a.labels}, "exp_annotations": {"summary": a.summary}}
        for case, series, expected in (("breach", a.breach, [want]), ("calm", a.calm, [])):
            tests.append({"name": f"{a.name} {case}", "interval": duration(st),
                          "input_series": [{"series": s, "values": v} for s, v in series],
                          "alert_rule_test": [{"eval_time": at, "alertname": a.name, "exp_alerts": expected}]})
    return {"rule_files": [rules_file], "evaluation_interval": duration(st),
            "group_eval_order": ["forge-recording", "forge-alerts"], "tests": tests}


def write_rules(out: Path, slo: dict, limits: dict, mon: dict) -> tuple[Path, Path]:
    """rules.yml and its tests beside it (YAML; JSON is valid YAML, and keeps this module stdlib-only)."""
    out.mkdir(parents=True, exist_ok=True)
    r = rules(slo, limits, mon)
    rules_path, tests_path = out / "prometheus-rules.yml", out / "prometheus-rules.test.yml"
    rules_path.write_text(json.dumps(r, indent=2) + "\n")
    tests_path.write_text(json.dumps(rule_tests(rules_path.name, slo, limits, mon), indent=2) + "\n")
    return rules_path, tests_path


def promtool(binary: Path, *args, cwd: Path | None = None) -> dict:
    """Run promtool; {"ok", "output"} (its own words: SUCCESS/FAILED and why)."""
    p = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120)
    return {"ok": p.returncode == 0, "output": (p.stdout + p.stderr).strip()}


def check_rules(binary: Path, rules_path: Path) -> dict:
    return promtool(binary, "check", "rules", rules_path.name, cwd=rules_path.parent)


def test_rules(binary: Path, tests_path: Path) -> dict:
    return promtool(binary, "test", "rules", tests_path.name, cwd=tests_path.parent)


def scrape_config(gateway: str | None, engines: dict[str, str], rules_path: Path, interval_s: float) -> dict:
    """Prometheus' config: the gateway and every engine (named by an `engine` label), the rule file."""
    host = lambda url: urllib.parse.urlparse(url).netloc  # noqa: E731
    every = f"{round(interval_s * 1000)}ms"
    cfg = {"global": {"scrape_interval": every, "evaluation_interval": every,
                      "scrape_timeout": f"{round(min(interval_s, 10) * 1000)}ms"},
           "rule_files": [str(rules_path)], "scrape_configs": []}
    if gateway:
        cfg["scrape_configs"].append({"job_name": GATEWAY_JOB, "static_configs": [{"targets": [host(gateway)]}]})
    cfg["scrape_configs"].append({"job_name": ENGINES_JOB, "static_configs": [
        {"targets": [host(url)], "labels": {"engine": name}} for name, url in engines.items()]})
    return cfg


@dataclass
class Server:
    url: str
    process: subprocess.Popen

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """An instant query: [{"metric": {labels}, "value": float}]."""
        params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}", timeout=30) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus query {expr!r}: {body.get('error')}")
        res = body["data"]["result"]
        return [{"metric": x["metric"], "value": float(x["value"][1])} for x in res] if isinstance(res, list) else []

    def scalar(self, expr: str, at: float | None = None) -> float | None:
        rows = self.query(expr, at)
        v = rows[0]["value"] if rows else None
        return None if v is None or math.isnan(v) else v

    def targets_up(self) -> dict[str, bool]:
        return {f"{r['metric'].get('job')}/{r['metric'].get('instance')}": r["value"] == 1 for r in self.query("up")}


@contextlib.contextmanager
def server(binary: Path, config: dict, workdir: Path, port: int, ready_timeout_s: float = 60) -> Iterator[Server]:
    """Prometheus on 127.0.0.1:`port` with `config`, its data under `workdir`, until the block exits."""
    from runner import proc
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "prometheus.yml").write_text(json.dumps(config, indent=2) + "\n")
    cmd = [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
           f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1d", "--log.level=warn"]
    with proc.background(cmd, workdir / "prometheus.log") as p:
        url = f"http://127.0.0.1:{port}"
        failed = proc.wait_http_ok(p, url + "/-/ready", ready_timeout_s, interval=0.2)
        if failed:
            raise RuntimeError(f"Prometheus not ready ({failed}):\n{proc.tail(workdir / 'prometheus.log')}")
        yield Server(url, p)
