"""The task kinds' output contracts (runner/kinds/): what the gateway accepts, what constrained decoding sends,
how gold answers are checked. (The generation kind's scores need sacrebleu and MiniLM from the ml venv: the
end-to-end test exercises them inside lm-eval.)"""
import json
from pathlib import Path

from runner import tasks

TEST_TASKS = (str(Path(__file__).resolve().parent / "tasks"),)


def test_classification_accepts_exactly_one_label():
    t = tasks.get("ticket_routing", TEST_TASKS)
    k, spec = t.scorer, t.spec
    assert [k.parse_label(spec, a) for a in ("billing", " Billing. ", '"shipping"', "```\naccount\n```", "ＢＩＬＬＩＮＧ")] == \
        ["billing", "billing", "shipping", "account", "billing"]
    assert k.parse_label(spec, "billing or shipping") is None and k.parse_label(spec, "The team is billing") is None
    assert k.check_answer(spec, "technical") == ("technical", [])
    label, problems = k.check_answer(spec, "refunds")
    assert label is None and "is not one of the labels (billing, shipping, technical, account)" in problems[0]
    assert k.response_format(spec) == {"type": "json_object", "schema": {"type": "string", "enum": spec["labels"]}}
    assert k.check_gold(spec, "x", "billing") == [] and k.check_gold(spec, "x", "sales")[0][0] == "invalid"
    assert k.outcomes(spec, {"gold": "billing"}, "shipping") == {"billing": "wrong_label"}
    assert k.outcomes(spec, {"gold": "billing"}, "??") == {"billing": "invalid_label"}


def test_extraction_contract_is_the_schema_plus_the_rules():
    t = tasks.get("purchase_orders", TEST_TASKS)
    k, spec = t.scorer, t.spec
    row = json.loads((Path(TEST_TASKS[0]) / "purchase_orders" / "data.jsonl").read_text().splitlines()[1])
    gold = row["answer"]
    assert k.check_gold(spec, row["text"], gold) == [] and k.check_answer(spec, json.dumps(gold)) == (gold, [])
    late = dict(gold, delivery_date="2020-01-01")
    assert k.check_answer(spec, json.dumps(late))[1] == [f"rule: delivery_date (2020-01-01) is before order_date "
                                                          f"({gold['order_date']})"]
    assert k.check_answer(spec, json.dumps(dict(gold, total="a lot")))[1][0].startswith("schema: $.total")
    assert k.check_answer(spec, "sure! here it is")[1] == ["the answer is not one JSON object"]
    invented = dict(gold, supplier="Nobody Ltd")
    assert [c for c, _ in k.check_gold(spec, row["text"], invented)] == ["ungrounded"]
    assert k.response_format(spec)["schema"] == t.schema


def test_generation_accepts_any_text_and_constrains_nothing():
    t = tasks.get("de_en_translation", TEST_TASKS)
    k, spec = t.scorer, t.spec
    assert k.check_answer(spec, "The train is late.") == ("The train is late.", [])
    assert k.check_answer(spec, "  ")[1] == ["the answer is empty"]
    assert k.response_format(spec) is None and spec["min_chrf"] == 50
    assert k.outcomes(spec, {"gold": "x"}, "y", {"acceptable": 0}) == {"reference": "low_overlap"}
    assert k.check_gold(spec, "Der Zug", "") == [("invalid", "the reference text is empty")]


def test_extraction_names_why_each_field_is_wrong():
    t = tasks.get("invoice_extraction")
    k, spec = t.scorer, t.spec
    doc = ("Acme GmbH\nInvoice INV-2024-001 dated 13/08/2024\nBill to: Beta AG\nDue 27/09/2024\n"
           "Previous balance: 55.00 EUR\nTotal: 100.00 EUR")
    gold = {"invoice_number": "INV-2024-001", "invoice_date": "2024-08-13", "due_date": "2024-09-27",
            "seller": "Acme GmbH", "buyer": "Beta AG", "currency": "EUR", "subtotal": None, "tax": None, "total": 100.0}
    pred = {"invoice_number": "INV", "invoice_date": "2024-13-08", "due_date": "2024-08-27", "seller": "Beta AG",
            "buyer": "Acme GmbH", "currency": "EU", "subtotal": 100.0, "tax": 7.0, "total": 55.0}
    got = k.causes(spec, {"gold": json.dumps(gold), "document": doc}, json.dumps(pred))
    assert got == {"invoice_number": "partial_span", "invoice_date": "day_month_swapped",
                   "due_date": "date_recombined", "seller": "swapped_fields", "buyer": "swapped_fields",
                   "currency": "format_error", "subtotal": "other_field_value", "tax": "spurious",
                   "total": "other_value_in_document"}
    assert set(got.values()) <= set(k.CAUSES)
    more = dict(gold, invoice_date="2024-02-30", seller=None, total=999.0)
    assert k.causes(spec, {"gold": json.dumps(gold), "document": doc}, json.dumps(more)) == \
        {"invoice_date": "not_a_calendar_date", "seller": "missing", "total": "invented"}
    assert k.causes(spec, {"gold": json.dumps(gold), "document": doc}, json.dumps(gold)) == {}
    assert set(k.causes(spec, {"gold": json.dumps(gold), "document": doc}, "no JSON").values()) == {"invalid_json"}


def test_classification_and_generation_name_their_causes():
    t = tasks.get("ticket_routing", TEST_TASKS)
    assert t.scorer.causes(t.spec, {"gold": "billing"}, "shipping") == {"billing": "confused_with:shipping"}
    assert t.scorer.causes(t.spec, {"gold": "billing"}, "??") == {"billing": "invalid_label"}
    assert t.scorer.causes(t.spec, {"gold": "billing"}, "billing") == {}
    g = tasks.get("de_en_translation", TEST_TASKS)
    ref = {"gold": "The train leaves at eight in the morning."}
    assert g.scorer.causes(g.spec, ref, "Train.", {"acceptable": 0}) == {"reference": "too_short"}
    assert g.scorer.causes(g.spec, ref, "The bus arrives at nine in the evening!", {"acceptable": 0}) == \
        {"reference": "low_overlap"}
    assert g.scorer.causes(g.spec, ref, "", {"acceptable": 0}) == {"reference": "empty"}
    assert g.scorer.causes(g.spec, ref, "The train leaves at 8 am.", {"acceptable": 1}) == {}


FAST_PATH_CHECK = r'''
import json, sys
from jsonschema import Draft202012Validator
from runner.kinds import extraction
schema = json.load(open("evals/invoice_extraction/schema.json"))
import jsonschema_rs   # the gateway venv has the fast path, and it compiles this schema
jsonschema_rs.Draft202012Validator(schema)
good = {"invoice_number": "INV-1", "invoice_date": "2024-01-02", "due_date": None, "seller": "Acme",
        "buyer": "Beta", "currency": "EUR", "subtotal": 10.0, "tax": 2.0, "total": 12.0}
cases = [good, {**good, "invoice_date": "\u0662\u0660\u0662\u0664-\u0660\u0661-\u0660\u0662"},  # Arabic-Indic digits
         {**good, "invoice_date": "2024-01-02\n"}, {**good, "currency": "eur"}, {**good, "total": "twelve"},
         {k: v for k, v in good.items() if k != "total"}, {**good, "extra": 1}, [good], "text", None]
out = []
for c in cases:
    ref = [e.message for e in Draft202012Validator(schema).iter_errors(c)]
    out.append([ref, [e.message for e in extraction.schema_errors(schema, c)]])
print(json.dumps(out))
'''


def test_the_gateway_s_fast_schema_check_gives_jsonschema_s_verdict_and_messages():
    """The gateway venv validates task answers with jsonschema-rs first (0.3 µs against 37): what it accepts is
    taken as valid, anything else is judged by jsonschema. Python's regexes match more (\\d takes any Unicode
    digit, $ a trailing newline), so the verdict must stay jsonschema's on exactly those cases."""
    import subprocess

    from runner import env
    r = subprocess.run([env.venv("gateway").python, "-c", FAST_PATH_CHECK], cwd=env.REPO, capture_output=True,
                       text=True, env={"PYTHONPATH": str(env.REPO)}, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    pairs = json.loads(r.stdout)
    assert all(ref == fast for ref, fast in pairs), pairs
    assert pairs[0][0] == [] and pairs[1][0] == [] and pairs[2][0] == []   # jsonschema accepts both digit quirks
    assert all(ref for ref, _ in pairs[3:]), pairs                          # and rejects the rest
