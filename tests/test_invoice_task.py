"""The invoice generator, the data stage's split, and the lm-eval task's metric functions."""
import importlib.util
import json
from collections import Counter
from pathlib import Path

from jsonschema import Draft202012Validator

from runner.datagen import invoice
from runner.stages import data

REPO = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((REPO / "evals" / "invoice_extraction" / "schema.json").read_text())


def load_utils():
    spec = importlib.util.spec_from_file_location("invoice_utils", REPO / "evals" / "invoice_extraction" / "utils.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generator_is_deterministic_and_prefix_stable():
    a = invoice.generate(7, 30)
    assert a == invoice.generate(7, 30)
    assert invoice.generate(7, 10) == a[:10]
    assert invoice.generate(8, 10) != a[:10]


def test_gold_validates_and_is_grounded_in_the_document():
    utils = load_utils()
    v = Draft202012Validator(SCHEMA)
    recs = invoice.generate(3, 200)
    assert len({r["layout"] for r in recs}) == 6 and len({r["locale"] for r in recs}) >= 6
    assert all(r["ocr"]["substitutions"] for r in recs if r["layout"] == "ocr")
    for r in recs:
        assert v.is_valid(r["gold"]), (r["id"], list(v.iter_errors(r["gold"])))
        for field, value in r["gold"].items():
            if value is not None:
                assert utils.grounded(field, value, r["document"]), (r["id"], field, value, r["document"])
        g = r["gold"]
        if g["tax"] is not None:
            assert abs(g["subtotal"] + g["tax"] - g["total"]) < 0.011


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
    utils = load_utils()
    rec = invoice.generate(5, 1)[0]
    doc = {"document": rec["document"], "gold": json.dumps(rec["gold"])}
    perfect = utils.process_results(doc, [json.dumps(rec["gold"])])
    assert perfect["json_valid"] == perfect["schema_valid"] == perfect["exact_match"] == 1
    assert perfect["field_accuracy"] == 1.0 and utils.micro_f1([perfect["field_f1"]]) == 1.0
    assert utils.grounding_rate([perfect["grounding_rate"]]) == 1.0

    wrong = dict(rec["gold"], seller="Nobody Ltd", total=123456.78)
    partial = utils.process_results(doc, ["```json\n" + json.dumps(wrong) + "\n```"])
    assert partial["json_valid"] == 1 and partial["exact_match"] == 0
    assert abs(partial["field_accuracy"] - 7 / 9) < 1e-9
    tp, fp, fn = partial["field_f1"]
    assert fp == 2 and fn == 2 and tp == sum(v is not None for v in rec["gold"].values()) - 2
    hits, total = partial["grounding_rate"]
    assert total - hits == 2  # the invented seller and total are not in the document

    broken = utils.process_results(doc, ["I think the total is 12"])
    assert broken["json_valid"] == broken["schema_valid"] == broken["exact_match"] == 0
    assert utils.micro_f1([broken["field_f1"]]) == 0.0


def test_normalization_accepts_equivalent_forms():
    utils = load_utils()
    assert utils.normalize("total", "1,234.50") == utils.normalize("total", 1234.5)
    assert utils.normalize("seller", "  ACME  gmbh ") == utils.normalize("seller", "Acme GmbH")
    assert utils.normalize("currency", "eur") == "EUR"
    assert utils.normalize("invoice_date", "2024-02-03") == "2024-02-03"
    assert utils.normalize("invoice_date", "03.02.2024") != "2024-02-03"  # must be ISO
