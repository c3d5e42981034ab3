"""The output policy and the audit log: unit tests of the decision, and the gateway as a real process in front of an
engine whose answers carry PII (e-mail, IBAN, phone, card number, an API key), on the chat route (whole and streamed)
and the task route."""
import json
import os
import stat

import httpx
import pytest

from runner import tasks
from runner.governance import audit
from runner.governance.policy import OutputPolicy
from runner.serving import deploy
from tests.fake_engines import VALID_INVOICE, ChatEngine, running

KEY = "gov-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMITS = {"max_in_flight": 2, "max_queue": 2, "queue_timeout_s": 20, "upstream_timeout_s": 30, "max_tokens": 64,
          "max_body_bytes": 20000, "breaker": {"threshold": 2, "reset_s": 2.0}, "api_keys_env": "FORGE_TEST_KEYS"}
POLICY = {"enabled": True, "routes": ["chat", "task"], "allow_echo": True, "refusal": "Withheld by policy.",
          "entities": {"email": "redact", "phone": "redact", "iban": "redact", "credit_card": "block",
                       "secret": "block"}}
EMAIL, IBAN, PHONE = "jane.roe@example.org", "DE89370400440532013000", "+44 20 7946 0958"
CARD, AWS_KEY = "4111 1111 1111 1111", "AKIAIOSFODNN7EXAMPLE"
ANSWERS = {   # what the engine says, by the request's last word
    "email": f"Write to {EMAIL} for a copy.", "iban": f"Pay to {IBAN} by Friday.", "phone": f"Call {PHONE} today.",
    "card": f"The card on file is {CARD}.", "key": f"Use the key {AWS_KEY} to log in.", "clean": "Total: 12.00 EUR.",
}


def test_the_strictest_action_decides_and_redactions_keep_the_rest_of_the_text():
    p = OutputPolicy(POLICY)
    d = p.decide(f"Mail {EMAIL} or call {PHONE}; IBAN {IBAN}.")
    assert d.action == "redact" and d.types == ["email", "iban", "phone"]
    assert d.text == "Mail <EMAIL> or call <PHONE>; IBAN <IBAN>." and d.seconds > 0
    assert p.decide(f"{EMAIL} and {CARD}").action == "block"
    assert p.decide(f"key {AWS_KEY}").action == "block"
    assert p.decide("Invoice INV-2024-0042 dated 2024-03-01, total 1487.50 EUR").action == "pass"
    flag_only = OutputPolicy({**POLICY, "entities": {"email": "flag"}})
    d = flag_only.decide(f"to {EMAIL}")
    assert d.action == "flag" and d.text == f"to {EMAIL}"
    assert OutputPolicy({"entities": {"email": "allow"}}).decide(f"to {EMAIL}").action == "allow"
    with pytest.raises(ValueError, match="unknown action"):
        OutputPolicy({"entities": {"email": "shred"}})


def test_a_value_the_request_holds_is_echo_not_a_leak_unless_echo_is_off():
    p = OutputPolicy(POLICY)
    d = p.decide(f"IBAN: {IBAN}", request_text="Pay to DE89 3704 0044 0532 0130 00 please")
    assert d.action == "flag" and d.findings[0]["echoed"] is True and d.text == f"IBAN: {IBAN}"
    strict = OutputPolicy({**POLICY, "allow_echo": False})
    assert strict.decide(f"IBAN: {IBAN}", request_text=f"Pay to {IBAN}").action == "redact"


def test_redactions_apply_to_the_strings_of_a_parsed_answer():
    p = OutputPolicy(POLICY)
    answer = dict(VALID_INVOICE, seller=f"Acme ({EMAIL})")
    text = json.dumps(answer)
    d = p.decide(text)
    out = p.redact_values(answer, text, d)
    assert out["seller"] == "Acme (<EMAIL>)" and out["total"] == 12.0 and answer["seller"].endswith(f"{EMAIL})")


def test_the_audit_log_is_private_rotates_and_holds_text_only_when_opted_in(tmp_path):
    p = OutputPolicy(POLICY)
    d = p.decide(f"Write to {EMAIL}")
    log = audit.AuditLog(tmp_path / "audit.jsonl", include_text=False, max_bytes=4096, backups=3)
    for i in range(30):
        log.record(request_id=f"r{i}", route="chat", principal=audit.principal(b"k"), model="tuned",
                   upstream="primary-0", decision=d, request_text="q", answer_text=f"Write to {EMAIL}",
                   delivered_text=d.text, status=200)
    log.close()
    files = sorted(tmp_path.glob("audit.jsonl*"))
    assert 2 <= len(files) <= 4   # rotated by size, at most `backups` kept
    assert all(stat.S_IMODE(os.stat(f).st_mode) == 0o600 for f in files)
    lines = audit.read(tmp_path / "audit.jsonl")
    assert [x["request_id"] for x in lines] == [f"r{i}" for i in range(30 - len(lines), 30)]   # oldest first
    assert all(EMAIL not in f.read_text() for f in files)
    assert lines[-1]["findings"] == [{"type": "email", "detector": "presidio:EMAIL_ADDRESS", "action": "redact",
                                      "echoed": False}]
    assert lines[-1]["answer_sha256"] == audit.sha256(f"Write to {EMAIL}") != lines[-1]["delivered_sha256"]
    opted = audit.AuditLog(tmp_path / "raw.jsonl", include_text=True)
    opted.record(request_id="x", route="chat", principal=None, model="m", upstream="u", decision=d,
                 request_text="q", answer_text=f"Write to {EMAIL}", delivered_text=d.text, status=200)
    opted.close()
    assert audit.read(tmp_path / "raw.jsonl")[0]["answer_text"] == f"Write to {EMAIL}"


class LeakyEngine(ChatEngine):
    """Answers the chat route from ANSWERS by the request's last word; on the task route (its system prompt) a valid
    invoice whose seller carries what the document's last word names."""

    def answer(self, request):
        msgs = request["messages"]
        word = msgs[-1]["content"].split()[-1]
        if msgs[0]["role"] == "system":
            extra = {"email": EMAIL, "card": CARD, "clean": "Acme"}[word]
            return json.dumps(dict(VALID_INVOICE, seller=f"Acme {extra}"))
        return ANSWERS[word]


def gateway_config(eps, include_text=False):
    task = {**tasks.get("invoice_extraction").describe(), "system_prompt": "Extract the invoice.", "max_tokens": 48,
            "constrained": False, "constrained_retry": False}
    gov = {**POLICY, "audit": {"enabled": True, "include_text": include_text}}
    return deploy.gateway_config(eps, LIMITS, task, "invoice-extraction", gov)


def chat(url, word, stream=False):
    return httpx.post(url + "/v1/chat/completions", headers={**AUTH, "X-Request-Id": f"req-{word}-{stream}"},
                      timeout=30, json={"messages": [{"role": "user", "content": f"please {word}"}], "stream": stream})


def test_the_gateway_redacts_blocks_and_audits_every_answer(tmp_path):
    with running(LeakyEngine) as engine:
        eps = [deploy.Endpoint("primary", engine, "tuned", 0)]
        with deploy.start_gateway(gateway_config(eps), tmp_path, api_keys=KEY) as (url, _):
            got = {w: chat(url, w) for w in ANSWERS}
            streamed = chat(url, "email", stream=True)
            echo = httpx.post(url + "/v1/chat/completions", headers=AUTH, timeout=30,
                              json={"messages": [{"role": "user", "content": f"my address is {EMAIL}, say email"}]})
            task_ok = httpx.post(url + "/v1/tasks/invoice_extraction", headers=AUTH, timeout=30,
                                 json={"document": "Invoice INV-1 from Acme, total 12.00 EUR. email"})
            task_card = httpx.post(url + "/v1/tasks/invoice_extraction", headers=AUTH, timeout=30,
                                   json={"document": "Invoice INV-1 from Acme, total 12.00 EUR. card"})
            probes = [httpx.get(url + p, headers=AUTH) for p in ("/audit.jsonl", "/audit", "/v1/audit", "/logs",
                                                                 "/../audit.jsonl", "/static/audit.jsonl")]
            metrics = httpx.get(url + "/metrics").text
    content = {w: r.json()["choices"][0]["message"]["content"] for w, r in got.items()}
    assert content["email"] == "Write to <EMAIL> for a copy." and got["email"].headers["x-forge-policy"] == "redact"
    assert content["iban"] == "Pay to <IBAN> by Friday." and content["phone"] == "Call <PHONE> today."
    for w in ("card", "key"):   # blocked: the refusal, marked as filtered
        assert content[w] == "Withheld by policy." and got[w].json()["choices"][0]["finish_reason"] == "content_filter"
        assert got[w].headers["x-forge-policy"] == "block"
    assert content["clean"] == ANSWERS["clean"] and got["clean"].headers["x-forge-policy"] == "pass"
    # a governed stream: the whole answer checked first, then sent in the streaming format
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    assert EMAIL not in streamed.text and "<EMAIL>" in streamed.text and streamed.text.endswith("data: [DONE]\n\n")
    # the user's own address, echoed: flagged, delivered
    assert echo.json()["choices"][0]["message"]["content"] == ANSWERS["email"]
    assert echo.headers["x-forge-policy"] == "flag"
    # the task route: a redacted field, and a withheld answer (422 with a JSON error, no card number in it)
    assert task_ok.status_code == 200 and task_ok.json()["answer"]["seller"] == "Acme <EMAIL>"
    assert task_ok.json()["policy"] == {"action": "redact", "types": ["email"]}
    assert task_card.status_code == 422 and task_card.json()["error"]["code"] == "output_policy_violation"
    assert "4111" not in task_card.text
    assert all(p.status_code in (404, 405) and "error" in p.json() for p in probes)
    assert 'forge_policy_actions_total{action="block",route="chat"} 2.0' in metrics
    assert 'forge_policy_findings_total{action="redact",type="email"}' in metrics

    log = tmp_path / "audit.jsonl"
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600
    raw = log.read_text()
    for secret in (EMAIL, IBAN, "7946 0958", CARD, AWS_KEY):   # hashes only: no raw text unless opted in
        assert secret not in raw
    lines = audit.read(log)
    by_id = {x["request_id"]: x for x in lines}
    assert len(lines) == len(ANSWERS) + 4   # every governed answer, the clean one included
    card = by_id["req-card-False"]
    assert card["action"] == "block" and card["route"] == "chat" and card["model"] == "tuned"
    assert card["findings"][0]["type"] == "credit_card" and card["principal"] == audit.principal(KEY.encode())
    assert card["answer_sha256"] == audit.sha256(ANSWERS["card"]) and card["delivered_sha256"] == \
        audit.sha256("Withheld by policy.")
    assert by_id["req-key-False"]["findings"][0]["type"] == "secret"
    assert by_id["req-clean-False"]["action"] == "pass" and by_id["req-clean-False"]["findings"] == []
    tasks_logged = [x for x in lines if x["route"] == "task"]
    assert sorted(x["action"] for x in tasks_logged) == ["block", "redact"]
    redacted = next(x for x in tasks_logged if x["action"] == "redact")   # the hash of what the client received
    assert redacted["delivered_sha256"] == audit.sha256(json.dumps(task_ok.json()["answer"], ensure_ascii=False))
    assert [x["status"] for x in tasks_logged if x["action"] == "block"] == [422]


def test_the_audit_log_holds_the_texts_when_the_operator_opts_in(tmp_path):
    with running(LeakyEngine) as engine:
        eps = [deploy.Endpoint("primary", engine, "tuned", 0)]
        with deploy.start_gateway(gateway_config(eps, include_text=True), tmp_path, api_keys=KEY) as (url, _):
            assert chat(url, "iban").status_code == 200
    line = audit.read(tmp_path / "audit.jsonl")[0]
    assert line["answer_text"] == ANSWERS["iban"] and line["delivered_text"] == "Pay to <IBAN> by Friday."
    assert line["request_text"] == "please iban"
