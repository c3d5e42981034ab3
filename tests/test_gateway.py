"""The gateway as a real process in front of real llama-servers (the tiny model) on loopback: auth, bad requests,
routing, streaming, admission control, fallback and recovery, task endpoint, health, metrics and logs."""
import concurrent.futures as cf
import http.server
import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from runner import proc, tasks
from runner.adapters import llama_cpp
from runner.serving import deploy
from tests.fake_engines import VALID_INVOICE, ChatEngine, running

REPO = Path(__file__).resolve().parent.parent
KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
SYSTEM = "Extract the invoice fields as JSON."
LIMITS = {"max_in_flight": 2, "max_queue": 2, "queue_timeout_s": 20, "upstream_timeout_s": 30, "max_tokens": 64,
          "max_body_bytes": 20000, "breaker": {"threshold": 2, "reset_s": 2.0}, "api_keys_env": "FORGE_TEST_KEYS"}


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    return llama_cpp.convert(tiny_model, out / "tiny-f16.gguf", out / "convert.log")


def config(endpoints, constrained=False, constrained_retry=False):
    task = {**tasks.get("invoice_extraction").describe(), "system_prompt": SYSTEM, "max_tokens": 48,
            "constrained": constrained, "constrained_retry": constrained_retry}
    return deploy.gateway_config(endpoints, LIMITS, task, "invoice-extraction")


@pytest.fixture(scope="module")
def stack(tiny_gguf, tmp_path_factory):
    """Primary and fallback llama-servers with the tiny model, and the gateway before them."""
    logs = tmp_path_factory.mktemp("stack")
    with llama_cpp.serve(tiny_gguf, logs / "primary.log", 1, parallel=2, ctx_size=1024, alias="tuned") as (p, _), \
            llama_cpp.serve(tiny_gguf, logs / "fallback.log", 1, parallel=1, ctx_size=1024, alias="base") as (f, _):
        eps = [deploy.Endpoint("primary", p.url, "tuned", 0), deploy.Endpoint("fallback", f.url, "base", 0)]
        with deploy.start_gateway(config(eps), logs, api_keys=KEY) as (url, _):
            yield url, logs


def chat(url, content="Invoice 123", **extra):
    return httpx.post(url + "/v1/chat/completions", headers=AUTH, timeout=60,
                      json={"messages": [{"role": "user", "content": content}], "max_tokens": 8, **extra})


def test_auth_is_required_and_checked(stack):
    url, _ = stack
    r = httpx.get(url + "/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
    r = httpx.get(url + "/v1/models", headers=AUTH)
    assert r.status_code == 200 and "invoice-extraction" in {m["id"] for m in r.json()["data"]}
    assert httpx.get(url + "/healthz").json() == {"status": "alive"}


def test_every_bad_request_gets_a_4xx_json_error_and_the_service_stays_healthy(stack):
    url, _ = stack
    post = lambda **kw: httpx.post(url + "/v1/chat/completions", headers={**AUTH, **kw.pop("headers", {})},
                                   timeout=60, **kw)
    cases = [
        (post(content=b"{not json"), 400, "invalid_json"),
        (post(json=[1, 2]), 400, "invalid_json"),
        (post(json={"model": "tuned"}), 400, None),
        (post(json={"messages": "hi"}), 400, None),
        (post(json={"messages": [{"role": "wizard", "content": "x"}]}), 400, None),
        (post(json={"messages": [{"role": "user", "content": 5}]}), 400, None),
        (post(json={"messages": [{"role": "user", "content": "x"}], "model": "gpt-9"}), 404, "model_not_found"),
        (post(json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 10_000_000}), 400, None),
        (post(json={"messages": [{"role": "user", "content": "x"}], "max_tokens": "8"}), 400, None),
        (post(json={"messages": [{"role": "user", "content": "x"}], "stream": "yes"}), 400, None),
        (post(json={"messages": [{"role": "user", "content": "x" * 30000}]}), 413, "body_too_large"),
        (post(json={"messages": [{"role": "user", "content": "invoice total " * 1400}]}), 400, None),  # > context
        (httpx.get(url + "/v1/nothing", headers=AUTH), 404, "not_found"),
        (httpx.get(url + "/v1/chat/completions", headers=AUTH), 405, "method_not_allowed"),
    ]
    for i, (r, status, code) in enumerate(cases):
        assert r.status_code == status, (i, r.status_code, r.text[:300])
        err = r.json()["error"]
        assert err["message"] and "Traceback" not in r.text, (i, r.text[:300])
        if code:
            assert err["code"] == code, (i, err)
    assert httpx.get(url + "/readyz").status_code == 200
    assert chat(url).status_code == 200


def test_chat_streaming_health_metrics_and_logs(stack):
    url, logs = stack
    r = chat(url, temperature=0)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None
    rid = r.headers["x-request-id"]
    assert r.headers["x-forge-upstream"] == "primary-0" and "x-forge-fallback" not in r.headers
    with httpx.stream("POST", url + "/v1/chat/completions", headers=AUTH, timeout=60,
                      json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}) as s:
        body = "".join(s.iter_text())
    assert s.status_code == 200 and body.count("data:") >= 2 and "[DONE]" in body
    ready = httpx.get(url + "/readyz").json()
    assert ready["status"] == "ready" and all(u["up"] for u in ready["upstreams"].values())
    m = httpx.get(url + "/metrics").text
    assert 'forge_requests_total{model="tuned",route="chat",status="200"}' in m
    assert "forge_time_to_first_token_seconds_count" in m and 'forge_circuit_state{upstream="primary-0"} 0.0' in m
    assert "forge_in_flight 0.0" in m and 'forge_tokens_total{direction="out",model="tuned"}' in m
    lines = [json.loads(x) for x in (logs / "gateway-requests.jsonl").read_text().splitlines()]
    mine = [x for x in lines if x["request_id"] == rid]
    assert mine and mine[0]["status"] == 200 and mine[0]["completion_tokens"] >= 1 and mine[0]["latency_ms"] > 0
    assert "Invoice 123" not in (logs / "gateway-requests.jsonl").read_text()  # length and hash only


class SlowEngine(ChatEngine):
    """Takes 0.5 s per answer (the tiny model answers in milliseconds, too fast to fill a queue deterministically)."""

    def answer(self, request):
        time.sleep(0.5)
        return "ok"


def test_admission_refuses_beyond_the_queue_with_429_and_retry_after(tmp_path):
    with running(SlowEngine) as engine:
        eps = [deploy.Endpoint("primary", engine, "tuned", 0)]
        with deploy.start_gateway(config(eps), tmp_path, api_keys=KEY) as (url, _):
            with cf.ThreadPoolExecutor(12) as ex:
                t0 = time.time()
                rs = list(ex.map(lambda i: chat(url, f"request {i}"), range(12)))
                took = time.time() - t0
            codes = sorted(r.status_code for r in rs)
            # 2 in flight + 2 queued are served (two rounds of 0.5 s); the other 8 are refused at once
            assert codes == [200] * 4 + [429] * 8, codes
            assert all(int(r.headers["retry-after"]) >= 1 and r.json()["error"]["type"] == "rate_limit_error"
                       for r in rs if r.status_code == 429)
            assert took < 3
            m = httpx.get(url + "/metrics").text
            assert 'forge_rejected_total{status="429"} 8.0' in m and "forge_queued 0.0" in m
            assert chat(url).status_code == 200  # and it still serves


class SlowStreamEngine(http.server.BaseHTTPRequestHandler):
    """An OpenAI-style upstream that streams 8 chunks 0.25 s apart (2 s a stream), the engine's headers at once."""
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for i in range(9):
                data = "[DONE]" if i == 8 else json.dumps({"choices": [{"delta": {"content": f"t{i} "}}]})
                line = f"data: {data}\n\n".encode()
                self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                self.wfile.flush()
                if i < 8:
                    time.sleep(0.25)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


def stream_chat(url, i):
    t0 = time.time()
    with httpx.stream("POST", url + "/v1/chat/completions", headers=AUTH, timeout=60,
                      json={"messages": [{"role": "user", "content": f"s{i}"}], "stream": True}) as s:
        body = "".join(s.iter_text())
        return s.status_code, s.headers.get("retry-after"), body, time.time() - t0


def gauge(url, name):
    line = next(x for x in httpx.get(url + "/metrics").text.splitlines() if x.startswith(name + " "))
    return float(line.split()[-1])


def test_a_stream_holds_its_admission_slot_until_its_last_byte(tmp_path):
    with running(SlowStreamEngine) as engine:
        eps = [deploy.Endpoint("primary", engine, "tuned", 0)]
        with deploy.start_gateway(config(eps), tmp_path, api_keys=KEY) as (url, _):
            peak, samples, stop = [], [], threading.Event()

            def watch():
                while not stop.is_set():
                    samples.append(gauge(url, "forge_in_flight"))
                    time.sleep(0.05)
            w = threading.Thread(target=watch)
            w.start()
            with cf.ThreadPoolExecutor(8) as ex:  # 4x max_in_flight
                rs = list(ex.map(lambda i: stream_chat(url, i), range(8)))
            stop.set()
            w.join()
            peak = max(samples)
            codes = sorted(r[0] for r in rs)
            # 2 stream at once, 2 wait for them in the queue, 4 are refused: a generating stream is counted
            assert codes == [200] * 4 + [429] * 4, codes
            assert peak == 2, f"in flight peaked at {peak} with max_in_flight 2"
            assert all(int(r[1]) >= 1 for r in rs if r[0] == 429)
            served = sorted(r[3] for r in rs if r[0] == 200)
            assert all(r[2].count("data:") == 9 and "[DONE]" in r[2] for r in rs if r[0] == 200)
            assert served[-1] > 3.5, served  # the queued two started only when the first two had finished
            m = httpx.get(url + "/metrics").text
            count = float(next(x for x in m.splitlines() if x.startswith('forge_request_latency_seconds_count{route="chat"}')).split()[-1])
            total = float(next(x for x in m.splitlines() if x.startswith('forge_request_latency_seconds_sum{route="chat"}')).split()[-1])
            assert count == 8 and total >= 4 * 2.0, (count, total)  # latency covers whole streams, not headers
            assert 'forge_time_to_first_token_seconds_count{route="chat_stream"} 4.0' in m
            lines = [json.loads(x) for x in (tmp_path / "gateway-requests.jsonl").read_text().splitlines()]
            streamed = [x for x in lines if x.get("streamed")]
            assert len(streamed) == 4 and min(x["latency_ms"] for x in streamed) >= 2000

            # a client that leaves mid-stream gives its slot back
            assert gauge(url, "forge_in_flight") == 0
            with httpx.stream("POST", url + "/v1/chat/completions", headers=AUTH, timeout=60,
                              json={"messages": [{"role": "user", "content": "bye"}], "stream": True}) as s:
                chunks = s.iter_raw()  # held: a dropped iterator closes the connection
                next(chunks)
                assert gauge(url, "forge_in_flight") == 1
            deadline = time.time() + 5
            while gauge(url, "forge_in_flight") != 0 and time.time() < deadline:
                time.sleep(0.05)
            assert gauge(url, "forge_in_flight") == 0
            assert stream_chat(url, 99)[0] == 200


def test_task_endpoint_validates_output_and_says_which_model_answered(stack):
    url, _ = stack
    r = httpx.post(url + "/v1/tasks/invoice_extraction", headers=AUTH, json={"document": ""}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "document"
    # another task's route: a JSON 404 that names the task this deployment serves
    r = httpx.post(url + "/v1/tasks/support_tickets", headers=AUTH, json={"document": "hi"}, timeout=60)
    assert r.status_code == 404 and "serves 'invoice_extraction'" in r.json()["error"]["message"]
    # the random-weight model never writes schema-valid JSON: primary fails the schema, fallback too -> 502
    r = httpx.post(url + "/v1/tasks/invoice_extraction", headers=AUTH,
                   json={"document": "Invoice INV-1, total 12.00 EUR"}, timeout=120)
    assert r.status_code == 502 and r.json()["error"]["code"] == "task_schema_failed"
    assert "primary-0" in r.json()["error"]["message"] and "fallback-1" in r.json()["error"]["message"]


class ContractEngine(ChatEngine):
    """Its free answer breaks the task's contract (total != subtotal + tax); its constrained answer
    (response_format with the task's schema in the request) keeps it. It counts what it was asked."""
    asked: list = []

    def answer(self, request):
        ContractEngine.asked.append(bool(request.get("response_format")))
        constrained = (request.get("response_format") or {}).get("schema")
        return json.dumps(VALID_INVOICE if constrained else dict(VALID_INVOICE, total=99.0))


@pytest.mark.parametrize("retry", [True, False])
def test_an_answer_that_breaks_the_contract_is_asked_again_constrained(tmp_path, retry):
    ContractEngine.asked = []
    with running(ContractEngine) as engine:
        eps = [deploy.Endpoint("primary", engine, "tuned", 0)]
        with deploy.start_gateway(config(eps, constrained_retry=retry), tmp_path, api_keys=KEY) as (url, _):
            r = httpx.post(url + "/v1/tasks/invoice_extraction", headers=AUTH, timeout=60,
                           json={"document": "Invoice INV-1 from Acme to Beta, 2024-01-02, due 2024-02-01, EUR 12.00"})
            if retry:  # the free answer failed the sum rule; the same model, constrained, answered
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["constrained"] is True and body["fallback"] is False and body["upstream"] == "primary-0"
                assert body["fields"] == VALID_INVOICE and ContractEngine.asked == [False, True]
            else:  # asked once; no fallback configured: 502 naming the failure
                assert r.status_code == 502 and r.json()["error"]["code"] == "task_schema_failed"
                assert "primary-0: output failed the task's contract" in r.json()["error"]["message"]
                assert ContractEngine.asked == [False]
            m = httpx.get(url + "/metrics").text
            assert 'forge_upstream_errors_total{kind="task_schema",upstream="primary-0"} 1.0' in m


class BrokenEngine(ChatEngine):
    """Breaks the sum rule whether constrained or not (a grammar enforces the schema, not the arithmetic); it
    records who was asked (by its port) and how."""
    asked: list = []

    def answer(self, request):
        BrokenEngine.asked.append((self.server.server_port, bool(request.get("response_format"))))
        return json.dumps(dict(VALID_INVOICE, total=99.0))


@pytest.mark.parametrize("same_file", [True, False])
def test_a_fallback_serving_the_same_file_is_not_asked_the_same_question_again(tmp_path, same_file):
    BrokenEngine.asked = []
    with running(BrokenEngine) as primary, running(BrokenEngine) as fallback:
        eps = [deploy.Endpoint("primary", primary, "tuned", 0, weights="/models/tuned-f16.gguf"),
               deploy.Endpoint("fallback", fallback, "fallback-deployed", 0, routes=("task",),
                               weights="/models/tuned-f16.gguf" if same_file else "/models/other.gguf")]
        with deploy.start_gateway(config(eps, constrained_retry=True), tmp_path, api_keys=KEY) as (url, _):
            r = httpx.post(url + "/v1/tasks/invoice_extraction", headers=AUTH, timeout=60,
                           json={"document": "Invoice INV-1 from Acme to Beta, 2024-01-02, EUR 12.00"})
    assert r.status_code == 502 and r.json()["error"]["code"] == "task_schema_failed"
    port = lambda url: int(url.rsplit(":", 1)[1])  # noqa: E731
    # the primary free, then constrained; the fallback only when its file differs (the same file would answer the
    # same, at the cost of a generation on cores the primary needs)
    expected = [(port(primary), False), (port(primary), True)] + ([] if same_file else [(port(fallback), True)])
    assert BrokenEngine.asked == expected
    assert ("fallback: skipped" in r.json()["error"]["message"]) is same_file
    # the refusal says what its failed generations cost (the engine reports 5 + 1 tokens a generation)
    n = len(expected)
    assert r.json()["usage"] == {"prompt_tokens": 5 * n, "completion_tokens": n, "generations": n}


def test_fallback_when_the_primary_dies_and_recovery_when_it_returns(tiny_gguf, tmp_path):
    with llama_cpp.serve(tiny_gguf, tmp_path / "fallback.log", 1, ctx_size=1024, alias="base") as (f, _):
        port = llama_cpp.free_port()
        primary = llama_cpp.Server(tiny_gguf, port, 1, 1, 1024, "tuned")
        eps = [deploy.Endpoint("primary", primary.url, "tuned", 0), deploy.Endpoint("fallback", f.url, "base", 0)]
        with deploy.start_gateway(config(eps), tmp_path, api_keys=KEY) as (url, _):
            # primary not running yet: connection refused -> fallback answers, and says so
            r = chat(url)
            assert r.status_code == 200 and r.headers["x-forge-fallback"] == "true"
            assert r.headers["x-forge-upstream"] == "fallback-1"
            chat(url)
            m = httpx.get(url + "/metrics").text
            assert 'forge_circuit_state{upstream="primary-0"} 2.0' in m  # open after 2 failures
            assert "forge_fallbacks_total" in m
            ready = httpx.get(url + "/readyz").json()
            assert ready["status"] == "degraded"
            # the primary comes up on its configured port: after reset_s the half-open trial succeeds and the
            # circuit closes again
            with proc.background(primary.command(), tmp_path / "primary.log") as p:
                llama_cpp.wait_ready(primary, p, tmp_path / "primary.log", 60)
                time.sleep(LIMITS["breaker"]["reset_s"] + 0.2)
                r = chat(url)
                assert r.status_code == 200 and r.headers["x-forge-upstream"] == "primary-0"
                assert 'forge_circuit_state{upstream="primary-0"} 0.0' in httpx.get(url + "/metrics").text
