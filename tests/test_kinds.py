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
