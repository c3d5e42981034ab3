"""The invoice generator, the data stage's split, and the invoice task's scoring: the `extraction` kind
(runner/kinds/extraction.py) configured by evals/invoice_extraction/ (schema, rules, aliases)."""
import json
from collections import Counter
from pathlib import Path

from jsonschema import Draft202012Validator

from runner import tasks
from runner.datagen import invoice
from runner.kinds import common
from runner.kinds import extraction as kind
from runner.stages import data

REPO = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((REPO / "evals" / "invoice_extraction" / "schema.json").read_text())


SPEC = tasks.get("invoice_extraction").spec


def test_generator_is_deterministic_and_prefix_stable():
    a = invoice.generate(7, 30)
    assert a == invoice.generate(7, 30)
    assert invoice.generate(7, 10) == a[:10]
    assert invoice.generate(8, 10) != a[:10]


def test_gold_validates_and_is_grounded_in_the_document():
    v = Draft202012Validator(SCHEMA)
    recs = invoice.generate(3, 200)
    assert len({r["layout"] for r in recs}) == 6 and len({r["locale"] for r in recs}) >= 6
    assert all(r["ocr"]["substitutions"] for r in recs if r["layout"] == "ocr")
    for r in recs:
        assert v.is_valid(r["gold"]), (r["id"], list(v.iter_errors(r["gold"])))
        for field, value in r["gold"].items():
            if value is not None:
                assert kind.grounded(SPEC, field, value, r["document"]), (r["id"], field, value, r["document"])
        assert kind.rule_violations(SPEC, r["gold"]) == [], r["id"]  # calendar dates, due >= issued, sums, ISO 4217
        assert kind.check_gold(SPEC, r["document"], r["gold"]) == []
        for field in ("invoice_number", "seller", "buyer"):  # text values exactly as printed: an answer can copy them
            assert r["gold"][field] in r["document"], (r["id"], field, r["gold"][field])


VARIED = {"foreign_currency": 0.3, "label_synonyms": 0.6, "skip": {"locale": ["de_CH"], "layout": ["letter"]}}


def test_variation_changes_only_the_records_it_names_and_never_a_held_out_one():
    plain, varied = invoice.generate(7, 300), invoice.generate(7, 300, variation=VARIED)
    assert invoice.generate(7, 300, variation={"foreign_currency": 0, "label_synonyms": 0}) == plain
    touched = [v for v in varied if "variation" in v]
    assert 100 < len(touched) < 250
    for p, v in zip(plain, varied):
        if "variation" not in v:
            assert v == p, v["id"]  # its own random stream: a record left alone is the record without variation
        else:
            assert v["locale"] != "de_CH" and v["layout"] != "letter"
            assert (v["id"], v["locale"], v["layout"]) == (p["id"], p["locale"], p["layout"])
    held = [v for v in varied if v["locale"] == "de_CH" or v["layout"] == "letter"]
    assert held and all("variation" not in v for v in held)


def test_the_recipe_s_held_out_slices_are_never_varied():
    from runner.dataprep import records
    cfg = {"generator": {"name": "invoice", "seed": 7, "variation": {"foreign_currency": 0.5, "label_synonyms": 0.5}},
           "split": {"holdout": {"locale": ["en_US"], "layout": ["receipt"]}}}
    recs = records.generate(cfg, 200)
    assert [r for r in recs if "variation" in r]
    assert not [r for r in recs if "variation" in r and (r["locale"] == "en_US" or r["layout"] == "receipt")]
    cfg["generator"]["variation"] = {}
    assert records.generate(cfg, 50, start=10) == invoice.generate(7, 50, start=10)


def test_variation_prints_what_its_gold_says_and_no_held_out_word():
    v = Draft202012Validator(SCHEMA)
    recs = [r for r in invoice.generate(5, 300, variation=VARIED) if "variation" in r]
    foreign = [r for r in recs if "currency" in r["variation"]]
    assert len(foreign) > 30 and len({r["gold"]["currency"] for r in foreign}) >= 6
    de_ch = invoice.LOCALES["de_CH"]
    swiss_words = set(de_ch.words.values()) - {w for c, loc in invoice.LOCALES.items() if c != "de_CH"
                                                for w in loc.words.values()}
    for r in recs:
        assert r["gold"]["currency"] != "CHF" and "CHF" not in r["document"]
        assert not [w for w in swiss_words if w in r["document"]], r["id"]
        if "currency" in r["variation"]:
            assert r["gold"]["currency"] == r["variation"]["currency"] and r["gold"]["currency"] in r["document"]
            assert r["gold"]["currency"] != invoice.LOCALES[r["locale"]].currency
        for key, label in r["variation"].get("labels", {}).items():
            assert label in invoice.LABEL_VARIANTS[r["locale"]][key]
        assert v.is_valid(r["gold"]), r["id"]
        assert kind.rule_violations(SPEC, r["gold"]) == [] and kind.check_gold(SPEC, r["document"], r["gold"]) == []
        for field, value in r["gold"].items():
            if value is not None:
                assert kind.grounded(SPEC, field, value, r["document"]), (r["id"], field, value)


def test_split_is_seeded_stratified_and_sized_by_fractions():
    recs = [{"id": f"r{i}", "layout": invoice.LAYOUTS[i % 5], "locale": f"l{i % 7}"} for i in range(500)]
    fr = {"train": 0.8, "eval": 0.1, "test": 0.1}
    a = data.split([dict(r) for r in recs], fr, seed=1, slices=("layout", "locale"))
    b = data.split([dict(r) for r in recs], fr, seed=1, slices=("layout", "locale"))
    c = data.split([dict(r) for r in recs], fr, seed=2, slices=("layout", "locale"))
    assert a == b and a != c
    assert {k: len(v) for k, v in a.items()} == {"train": 400, "eval": 50, "test": 50}
    ids = [r["id"] for part in a.values() for r in part]
    assert len(ids) == len(set(ids)) == 500
    assert len(Counter(r["layout"] for r in a["test"])) == 5  # the 5 layouts of this synthetic set


def test_metrics_score_a_perfect_a_partial_and_a_broken_answer():
    rec = invoice.generate(5, 1)[0]
    doc = {"document": rec["document"], "gold": json.dumps(rec["gold"]), "task_spec": json.dumps(SPEC)}
    perfect = kind.process_results(doc, [json.dumps(rec["gold"])])  # as lm-eval calls it: the spec rides on the doc
    assert perfect["json_valid"] == perfect["schema_valid"] == perfect["exact_match"] == perfect["consistent"] == 1
    assert perfect["field_accuracy"] == 1.0 and common.micro_f1([perfect["field_f1"]]) == 1.0
    assert kind.grounding_rate([perfect["grounding_rate"]]) == 1.0

    wrong = dict(rec["gold"], seller="Nobody Ltd", total=123456.78)
    partial = kind.process_results(doc, ["```json\n" + json.dumps(wrong) + "\n```"])
    assert partial["json_valid"] == 1 and partial["exact_match"] == 0
    assert abs(partial["field_accuracy"] - 7 / 9) < 1e-9
    tp, fp, fn = partial["field_f1"]
    assert fp == 2 and fn == 2 and tp == sum(v is not None for v in rec["gold"].values()) - 2
    hits, total = partial["grounding_rate"]
    assert total - hits == 2  # the invented seller and total are not in the document

    # 1e999 parses as inf (a base model with the schema as a grammar wrote one): scored, never a crash
    answer = json.dumps(dict(rec["gold"], subtotal=None)).replace('"subtotal": null', '"subtotal": 1e999')
    overflow = kind.process_results(doc, [answer])
    assert overflow["consistent"] == 0 and overflow["exact_match"] == 0
    hits, total = overflow["grounding_rate"]
    assert total - hits == 1
    assert kind.rule_violations(SPEC, dict(rec["gold"], subtotal=float("inf"), tax=None)) == [
        "subtotal: inf is not a finite number"]

    broken = kind.process_results(doc, ["I think the total is 12"])
    assert broken["json_valid"] == broken["schema_valid"] == broken["exact_match"] == broken["consistent"] == 0
    assert common.micro_f1([broken["field_f1"]]) == 0.0


def test_consistency_rules_catch_what_the_schema_lets_through():
    g = invoice.generate(5, 1)[0]["gold"]
    g = dict(g, invoice_date="2024-03-10", due_date="2024-04-09", subtotal=100.0, tax=20.0, total=120.0, currency="EUR")
    assert kind.rule_violations(SPEC, g) == []
    bad = dict(g, invoice_date="2024-17-31", due_date="2024-03-01", subtotal=120.0, tax=120.0, total=120.0,
               currency="EUX")
    assert Draft202012Validator(SCHEMA).is_valid(bad)  # the schema (a regex per field) accepts all of it
    found = kind.rule_violations(SPEC, bad)
    assert any("invoice_date: '2024-17-31' is not a calendar date" in v for v in found)
    assert any("subtotal + tax = 240.0, not total (120.0)" in v for v in found)
    assert any("'EUX' is not an ISO 4217 currency code" in v for v in found)
    assert kind.rule_violations(SPEC, dict(g, due_date="2024-03-01")) == ["due_date (2024-03-01) is before "
                                                                           "invoice_date (2024-03-10)"]
    assert kind.rule_violations(SPEC, dict(g, tax=None)) == []  # a rule naming an absent value is not judged
    answer, problems = kind.check_answer(SPEC, json.dumps(bad))
    assert answer == bad and problems and problems[0].startswith("rule: ")


def test_field_types_come_from_the_schema_and_normalize_equivalent_forms():
    types = kind.field_types(SPEC)
    assert (types["total"], types["invoice_date"], types["seller"]) == ("number", "date", "text")
    assert kind.normalize("number", "1,234.50") == kind.normalize("number", 1234.5)
    assert kind.normalize("text", "  ACME  gmbh ") == kind.normalize("text", "Acme GmbH")
    assert kind.normalize("text", "eur") == kind.normalize("text", "EUR")
    assert kind.normalize("date", "2024-02-03") == "2024-02-03"
    assert kind.normalize("date", "03.02.2024") != "2024-02-03"  # must be ISO
    assert kind.grounded(SPEC, "currency", "USD", "Total: $ 12.00")  # the task's aliases


def test_the_extraction_kind_scores_invoices_exactly_as_the_old_task_scorer_did():
    """80 answers of the default recipe's models (base and tuned, the run of commit 422f2ff at eval.concurrency 1),
    with the per-item values the invoice task's own utils.py gave them then; the extraction kind, configured by
    evals/invoice_extraction/, gives every item the same values (it adds `consistent`)."""
    rows = [json.loads(x) for x in (REPO / "tests" / "fixtures" / "invoice_answers_scored_before_kinds.jsonl")
            .read_text().splitlines()]
    assert len(rows) == 80 and sum(r["scored"]["json_valid"] for r in rows) > 40
    for r in rows:
        now = kind.score(SPEC, r["doc"], r["response"])
        then = r["scored"]
        assert {k: list(map(list, v)) if k == "field_f1_macro" else list(v) if isinstance(v, tuple) else v
                for k, v in now.items() if k in then} == then, r["doc"]["id"]
