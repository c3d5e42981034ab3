"""Monitoring with the real Prometheus tools: the rules generated from a recipe's SLO load (`promtool check
rules`) and every alert fires on its own breach and not on calm traffic (`promtool test rules`); the tests fail
when a rule is wrong; a real Prometheus server scraping a real gateway counts what was sent and fires an alert
on a live error burst."""
import concurrent.futures as cf
import json
import time

import httpx
import pytest

from runner import setup
from runner.adapters import prometheus
from runner.serving import deploy, monitoring
from runner.stage import StageError
from tests.fake_engines import ChatEngine, running
from tests.test_gateway import AUTH, KEY, config

SLO = {"p99_latency_s": 10, "p95_ttft_s": 2, "max_error_rate": 0.01}
MON = {"window_s": 300, "for_s": 300, "fallback_share": 0.05, "task_invalid_share": 0.05, "restarts_per_hour": 1,
       "scrape_interval_s": 1, "prometheus": True, "port": 0}
SERVING = {"gateway": {"max_queue": 32, "max_in_flight": 2}}


@pytest.fixture(scope="module")
def promtool():
    return setup.ensure_debian_package("prometheus").bin("promtool")


@pytest.mark.parametrize("slo,queue,mon", [
    (SLO, 32, MON),
    ({"p99_latency_s": 0.3, "p95_ttft_s": 0.07, "max_error_rate": 0.0}, 0,
     {**MON, "window_s": 60, "for_s": 0, "fallback_share": 0.0, "task_invalid_share": 0.5, "restarts_per_hour": 0}),
    ({"p99_latency_s": 50, "p95_ttft_s": 10, "max_error_rate": 0.4}, 3,
     {**MON, "window_s": 30, "for_s": 30, "fallback_share": 0.9, "restarts_per_hour": 3}),
])
def test_generated_rules_load_and_each_alert_fires_on_its_breach_only(tmp_path, promtool, slo, queue, mon):
    serving = {"gateway": {"max_queue": queue, "max_in_flight": 2}}
    out = monitoring.checked_rules(tmp_path, slo, serving, mon)   # raises unless promtool check and test pass
    names = [a["name"] for a in out["alerts"]]
    assert {"ForgeErrorRatioHigh", "ForgeLatencyP99High", "ForgeTTFTP95High", "ForgeCircuitOpen",
            "ForgeEngineRestarts", "ForgeEngineDown", "ForgeGatewayDown"} <= set(names)
    assert ("ForgeQueueBacklog" in names) == (queue > 0)   # no queue, no backlog to watch
    assert out["promtool"]["test_cases"] == 2 * len(names) and "SUCCESS" in out["promtool"]["test"]
    rules = json.loads((tmp_path / out["rules_file"]).read_text())
    p99 = next(r for r in rules["groups"][1]["rules"] if r["alert"] == "ForgeLatencyP99High")
    assert p99["expr"].endswith(f"> {slo['p99_latency_s']:g}") and p99["for"] == prometheus.duration(mon["for_s"])


def test_the_rule_tests_catch_a_wrong_threshold(tmp_path, promtool):
    rules_path, tests_path = prometheus.write_rules(tmp_path, SLO, SERVING["gateway"], MON)
    assert prometheus.test_rules(promtool, tests_path)["ok"]
    text = rules_path.read_text()
    rules_path.write_text(text.replace("forge:error_ratio:rate5m > 0.01", "forge:error_ratio:rate5m > 0.5"))
    broken = prometheus.test_rules(promtool, tests_path)
    assert not broken["ok"] and "ForgeErrorRatioHigh breach" in broken["output"]
    rules_path.write_text(text.replace('up{job=\\"forge-engines\\"} == 0', 'up{job=\\"forge-engines\\"} == 1'))
    broken = prometheus.test_rules(promtool, tests_path)
    assert not broken["ok"] and "ForgeEngineDown breach" in broken["output"] and "ForgeEngineDown calm" in broken["output"]
    rules_path.write_text(text.replace('"for": "5m"', '"for": "5x"', 1))
    assert not prometheus.check_rules(promtool, rules_path)["ok"]


def test_an_slo_the_gateways_histogram_cannot_see_is_a_clear_error(tmp_path):
    with pytest.raises(StageError, match=r"p99 latency threshold 500 s .* largest histogram bucket \(120 s\)"):
        monitoring.checked_rules(tmp_path, {**SLO, "p99_latency_s": 500}, SERVING, MON)


class MeteredEngine(ChatEngine):
    """Answers chat (500 when the prompt says "fail", after 0.2 s) and serves llama-server-like /metrics."""

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(0.2)
        if b"fail" in body:
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.rfile = __import__("io").BytesIO(body)
        super().do_POST()

    def do_GET(self):
        text = b"llamacpp:requests_processing 0\nllamacpp:n_decode_total 1\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)


def test_prometheus_scrapes_a_live_gateway_counts_what_was_sent_and_fires_on_errors(tmp_path):
    mon = {**MON, "window_s": 30, "for_s": 0}
    with running(MeteredEngine) as engine:
        eps = [deploy.Endpoint("primary", engine, "tuned", 0)]
        with deploy.start_gateway(config(eps), tmp_path / "gw", api_keys=KEY) as (url, _):
            dep = deploy.Deployment(eps, url, KEY)
            rules = monitoring.checked_rules(tmp_path / "rules", SLO, SERVING, mon)
            with monitoring.watching(dep, tmp_path / "rules" / rules["rules_file"], tmp_path / "prom", 1.0) as srv:
                assert srv.targets_up() and all(srv.targets_up().values())
                t0 = time.time()
                with cf.ThreadPoolExecutor(4) as ex:   # 2 in flight at most (LIMITS), the rest queue
                    codes = list(ex.map(lambda i: httpx.post(url + "/v1/chat/completions", headers=AUTH, timeout=30,
                                                             json={"messages": [{"role": "user", "content": f"hi {i}"}],
                                                                   "max_tokens": 4}).status_code, range(12)))
                t1 = time.time()
                assert codes == [200] * 12
                row = {"streams": 4, "start_time": t0, "end_time": t1, "latency_s": {"p50": 0.4, "p99": 0.6},
                       "requests": {"total": 12, "successful": 12, "errored": 0}}
                cross = monitoring.cross_check(srv, [row], "chat", 1.0)
                level = cross["levels"][0]
                assert level["requests_prometheus"] == 12
                assert 1 <= level["in_flight_peak"] <= 2          # the admission limit, as Prometheus saw it
                assert 0.1 < level["p50_s_prometheus"] < 1.0
                assert cross["alerts_seen"] == []                  # nothing broke yet
                for _ in range(8):   # now every request fails upstream (5xx), spread over scrapes: a counter's
                    r = httpx.post(url + "/v1/chat/completions", headers=AUTH, timeout=30,  # rate needs 2 samples
                                   json={"messages": [{"role": "user", "content": "fail"}], "max_tokens": 4})
                    assert r.status_code >= 500
                    time.sleep(0.5)
                deadline = time.time() + 20
                firing = []
                while time.time() < deadline and not firing:
                    time.sleep(1)
                    firing = srv.query('ALERTS{alertname="ForgeErrorRatioHigh",alertstate="firing"}')
                assert firing and firing[0]["metric"]["route"] == "chat"


def test_without_apt_get_or_a_deb_folder_setup_says_what_to_provide(tmp_path, monkeypatch):
    monkeypatch.setenv("FORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FORGE_DEBS", str(tmp_path / "debs"))          # an empty folder of .deb files
    (tmp_path / "debs").mkdir()
    monkeypatch.setattr(setup.shutil, "which", lambda name: None)     # no apt-get, no dpkg-deb
    with pytest.raises(SystemExit, match=r"prometheus 2\.42.*FORGE_DEBS"):
        setup.ensure_debian_package("prometheus")
    assert not list((tmp_path / "cache" / "debian").glob("*/.forge-complete"))   # nothing half-made is kept
    with pytest.raises(StageError, match="FORGE_DEBS"):                 # a stage turns it into its own error
        monitoring.binary("promtool")
