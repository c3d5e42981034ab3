"""Statistics, gates and per-item analysis of the eval stage, on hand-built per-sample records."""
import json
import math

import numpy as np
import pytest

from runner import tasks
from runner.env import REPO
from runner.kinds import common
from runner.quality import eval_analysis as ea
from runner.quality import gates, served_eval, stats
from runner.stage import StageError


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_items():
    rng = np.random.default_rng(1)
    small = stats.Metric(rng.binomial(1, 0.7, 40).astype(float))
    large = stats.Metric(rng.binomial(1, 0.7, 4000).astype(float))
    a, b = stats.bootstrap(small, 2000, 0), stats.bootstrap(large, 2000, 0)
    assert a["low"] <= a["value"] <= a["high"] and b["low"] <= b["value"] <= b["high"]
    assert (b["high"] - b["low"]) < (a["high"] - a["low"]) / 5
    assert abs(b["value"] - 0.7) < 0.03


def test_micro_f1_ratio_metric_matches_its_definition():
    counts = np.array([[3, 1, 0], [0, 2, 2], [5, 0, 1]], dtype=float)
    m = stats.Metric(counts, stats.micro_f1)
    tp, fp, fn = counts.sum(axis=0)
    assert m.point() == pytest.approx(2 * tp / (2 * tp + fp + fn))
    # all-wrong resamples give 0, never NaN
    assert stats.Metric(np.array([[0, 1, 1]], dtype=float), stats.micro_f1).point() == 0.0


def test_paired_bootstrap_detects_a_real_gain_and_not_a_null_one():
    rng = np.random.default_rng(2)
    base = rng.binomial(1, 0.3, 200).astype(float)
    better = np.maximum(base, rng.binomial(1, 0.5, 200)).astype(float)
    gain = stats.paired(stats.Metric(base), stats.Metric(better), 2000, 0)
    assert gain["low"] > 0 and gain["p"] < 0.01 and stats.significant(gain)
    same = stats.paired(stats.Metric(base), stats.Metric(base.copy()), 2000, 0)
    assert same["diff"] == 0 and same["p"] == 1.0 and not stats.significant(same)
    noise = stats.paired(stats.Metric(base), stats.Metric(rng.permutation(base)), 2000, 0)
    assert noise["low"] < 0 < noise["high"]


def test_mcnemar_exact_p_values():
    a = np.array([1] * 10 + [0] * 10)
    b = np.array([1] * 10 + [1] * 10)  # b fixes 10 items, breaks none
    r = stats.mcnemar(a, b)
    assert (r["b_only"], r["a_only"]) == (10, 0)
    assert r["p"] == pytest.approx(2 / 2 ** 10)
    assert stats.mcnemar(a, a)["p"] == 1.0
    # 3 vs 2 discordant pairs: nowhere near significant
    assert stats.mcnemar(np.array([1, 1, 0, 0, 0]), np.array([0, 0, 1, 1, 1]))["p"] == pytest.approx(1.0)


def test_rate_is_nan_without_predictions_and_intervals_say_so():
    m = stats.Metric(np.array([[0, 0], [0, 0]], dtype=float), stats.rate)
    assert math.isnan(m.point())
    assert stats.bootstrap(m, 100, 0) == {"value": None, "low": None, "high": None, "n": 2}


def _sample(doc_id, doc, text, task):
    rec = {"doc_id": doc_id, "doc": doc, "filtered_resps": [text]}
    rec.update(task.scorer.score(task.spec, doc, text))
    return rec


SCORING = tasks.scoring("invoice_extraction")


@pytest.fixture(scope="module")
def invoice_items():
    from runner.datagen import invoice
    task = tasks.get("invoice_extraction")
    recs = invoice.generate(3, 30)
    docs = [{"id": r["id"], "document": r["document"], "gold": json.dumps(r["gold"]), "layout": r["layout"],
             "locale": r["locale"]} for r in recs]
    return task, docs, recs


def test_summary_cross_checks_lm_eval_and_compare_pairs_items(invoice_items):
    task, docs, recs = invoice_items
    base = [_sample(i, d, "no idea", task) for i, d in enumerate(docs)]
    tuned = [_sample(i, d, json.dumps(r["gold"]), task) for i, (d, r) in enumerate(zip(docs, recs))]
    agg = {"field_f1": 1.0, "json_valid": 1.0, "exact_match": 1.0}
    s = ea.summarize("invoice_extraction", SCORING, tuned, agg, 500, 0)
    assert s["field_f1"]["value"] == 1.0 and s["exact_match"]["value"] == 1.0
    assert s["grounding_rate"]["value"] == 1.0
    with pytest.raises(StageError, match="differs from lm-eval"):
        ea.summarize("invoice_extraction", SCORING, tuned, {"field_f1": 0.5}, 100, 0)
    assert ea.summarize("invoice_extraction", SCORING, base, {}, 100, 0)["grounding_rate"]["value"] is None
    cmp = ea.compare("invoice_extraction", SCORING, base, tuned, 500, 0)
    assert cmp["field_f1"]["improved"] and cmp["json_valid"]["mcnemar"]["b_only"] == 30
    with pytest.raises(StageError, match="different items"):
        ea.compare("invoice_extraction", SCORING, base[:10], tuned, 100, 0)


def test_failure_categories_and_worse_than_baseline_first(invoice_items):
    task, docs, recs = invoice_items
    base_rows, tuned_rows = [], []
    for i, (d, r) in enumerate(zip(docs[:6], recs[:6])):
        g = r["gold"]
        base_rows.append(_sample(i, d, json.dumps(g), task))  # base perfect
        answers = [
            "not json",
            json.dumps(dict(g, total=999999.99)),                    # hallucinated
            json.dumps(dict(g, invoice_date="03/02/2024")),           # format error
            json.dumps(dict(g, seller=None)),                         # missing
            json.dumps(dict(g, seller=g["buyer"])) if g["buyer"] else json.dumps(dict(g, seller=None)),
            json.dumps(g),
        ]
        tuned_rows.append(_sample(i, d, answers[i], task))
    edges = [250, 400]
    bd = ea.item_details(base_rows, task, edges)
    td = ea.item_details(tuned_rows, task, edges)
    counts, cases = ea.failure_cases(td, bd, task, 10)
    cats = [c["category"] for c in cases]
    assert cats[0] == "invalid_json" and "hallucinated" in cats and "format_error" in cats and "missing" in cats
    assert all(c["worse_than_baseline"] for c in cases)
    assert counts["items"]["invalid_json"] == 1 and counts["fields"]["hallucinated"] >= 1
    assert len(cases) == 5  # the perfect answer is not a failure case
    bdn = ea.breakdowns({"base": bd, "tuned": td}, "base", 200, 0, task)
    assert list(bdn) == ["field", "layout", "locale", "length"]
    assert bdn["field"]["total"]["tuned-vs-base"]["diff"] < 0
    assert bdn["field"]["currency"]["base"]["value"] == 1.0


def test_gates_pass_fail_and_say_by_how_much():
    cmp = {"tuned": {"invoice_extraction": {"field_f1": {"diff": 0.15, "low": 0.05, "high": 0.25}}}}
    fields = {"total": {"tuned-vs-base": {"diff": -0.08, "low": -0.2, "high": 0.02}},
              "seller": {"tuned-vs-base": {"diff": 0.3, "low": 0.1, "high": 0.5}}}
    spec = [{"metric": "field_f1", "min_gain": 0.20, "significant": True},
            {"per_field": True, "max_drop": 0.05},
            {"metric": "field_f1", "min_gain": 0.10, "significant": True}]
    v = gates.judge(spec, {"base": cmp}, {"base": fields}, ["base", "tuned"], "invoice_extraction")
    assert [x["passed"] for x in v] == [False, False, True, True]
    assert "short by 0.0500" in v[0]["reasons"][0]
    assert v[0]["power"] is None  # no n: no power statement
    pw = gates.power({"max_drop": 0.15}, {"diff": -0.02, "low": -0.17, "high": 0.13, "n": 40})
    # a +/-0.15 interval on 40 items detects only a 0.214 drop; 0.15 takes twice the items
    assert pw == {"se": 0.0765, "detectable": 0.2143, "bound": 0.15, "n": 40, "n_for_bound": 82}
    assert v[1]["what"] == "total accuracy" and "exceeds the allowed 0.0500 (by 0.0300)" in v[1]["reasons"][0]
    missing = gates.judge([{"task": "general_instructions", "metric": "accuracy", "max_drop": 0.1}], {"base": cmp}, {},
                          ["base", "tuned"], "invoice_extraction")
    assert not missing[0]["passed"] and "no paired result" in missing[0]["reasons"][0]


def test_a_gate_against_the_strongest_baseline_judges_that_baselines_comparison():
    vs = {"base": {"tuned": {"t": {"field_f1": {"diff": 0.6, "low": 0.5, "high": 0.7}}}},
          "base-fewshot": {"tuned": {"t": {"field_f1": {"diff": 0.02, "low": -0.01, "high": 0.05}}}}}
    spec = [{"metric": "field_f1", "min_gain": 0.05, "significant": True, "baseline": "strongest"},
            {"metric": "field_f1", "min_gain": 0.05, "significant": True, "baseline": "base"},
            {"per_field": True, "max_drop": 0.05, "baseline": "strongest"}]
    v = gates.judge(spec, vs, {}, ["tuned"], "t", {"strongest": "base-fewshot"})
    assert [x["baseline"] for x in v] == ["base-fewshot", "base", "base-fewshot"]
    assert [x["passed"] for x in v] == [False, True, False]
    assert "short by 0.0300" in v[0]["reasons"][0] and "does not lie above zero" in v[0]["reasons"][1]
    assert "no paired result" in v[2]["reasons"][0]  # no per-field comparison against it: fails, never passes
    assert gates.describe(spec[0], "t") == "t/field_f1: gain >= 0.05, CI of the gain above zero (vs strongest)"


def test_an_interim_look_decides_a_baseline_gate_only_when_its_interval_clears_the_bound():
    """eval.baselines_stop_early: decided when the interim (99.9%) interval lies wholly above the gate's bound
    (passes) or wholly below it (fails); any candidate left in between, or a per-field gate, keeps scoring."""
    def cmp(low, high):
        return {"tuned": {"t": {"field_f1": {"diff": (low + high) / 2, "low": low, "high": high, "n": 40}}}}
    strongest = [{"metric": "field_f1", "min_gain": 0.05, "significant": True, "baseline": "strongest"},
                 {"metric": "field_f1", "min_gain": 0.2, "baseline": "base"}]   # base is always fully scored: no say
    far = {"base-fewshot": cmp(0.55, 0.80), "base-constrained": cmp(0.40, 0.70)}
    done, checks = gates.settled(strongest, far, ["base-fewshot", "base-constrained"], ["tuned"], "t", 0.999)
    assert done and [c["decided"] for c in checks] == ["passes", "passes"] and {c["gate"] for c in checks} == {0}
    close = dict(far, **{"base-constrained": cmp(0.03, 0.30)})   # above zero, not above the 0.05 bound: undecided
    done, checks = gates.settled(strongest, close, ["base-fewshot", "base-constrained"], ["tuned"], "t", 0.999)
    assert not done and [c["decided"] for c in checks] == ["passes", None]
    below = {"base-fewshot": cmp(-0.20, 0.01)}                  # wholly below the bound: the gate fails anyway
    done, checks = gates.settled(strongest[:1], below, ["base-fewshot"], ["tuned"], "t", 0.999)
    assert done and checks[0]["decided"] == "fails"
    drop = [{"metric": "field_f1", "max_drop": 0.05, "baseline": "base-fewshot"}]
    assert gates.settled(drop, {"base-fewshot": cmp(-0.04, 0.2)}, ["base-fewshot"], ["tuned"], "t", 0.999)[0]
    assert not gates.settled(drop, {"base-fewshot": cmp(-0.06, 0.2)}, ["base-fewshot"], ["tuned"], "t", 0.999)[0]
    per_field = [{"per_field": True, "max_drop": 0.05, "baseline": "strongest"}]
    done, checks = gates.settled(per_field, far, list(far), ["tuned"], "t", 0.999)
    assert not done and checks[0]["decided"] is None
    other_task = [{"task": "ood", "metric": "field_f1", "min_gain": 0.0, "baseline": "base-fewshot"}]
    assert not gates.settled(other_task, far, list(far), ["tuned"], "t", 0.999)[0]
    assert gates.settled([], far, list(far), ["tuned"], "t", 0.999) == (True, [])
    missing = {"base-fewshot": {}}                                # no comparison: never decided
    assert not gates.settled(strongest[:1], missing, ["base-fewshot"], ["tuned"], "t", 0.999)[0]


def test_a_comparison_against_a_baseline_stopped_early_pairs_the_models_on_its_items():
    a = [{"doc_id": i, "x": float(i % 2)} for i in range(10)]
    b = [{"doc_id": i, "x": 1.0} for i in range(4)]
    assert [s["doc_id"] for s in ea.restrict(a, b)] == [0, 1, 2, 3]
    scoring = tasks.Scoring(metrics={"x": "mean"}, binary=frozenset({"x"}), fractional=frozenset())
    wide = ea.compare("t", scoring, b, ea.restrict(a, b), 2000, 0, level=0.999)["x"]
    narrow = ea.compare("t", scoring, b, ea.restrict(a, b), 2000, 0)["x"]
    assert wide["n"] == 4 and wide["diff"] == -0.5 and wide["low"] <= narrow["low"] <= narrow["high"] <= wide["high"]
    with pytest.raises(StageError, match="different items"):
        ea.compare("t", scoring, b, a, 200, 0)


def test_general_task_scoring():
    utils = tasks.utils("general_instructions")
    doc = {"question": "What is 2 plus 3?", "answers": ["5", "five"]}
    assert utils.process_results(doc, ["The answer is 5."])["accuracy"] == 1
    assert utils.process_results(doc, ["It is 15."])["accuracy"] == 0
    assert utils.process_results(doc, ["FIVE"])["accuracy"] == 1
    assert utils.process_results(doc, ['{"total": 5}'])["answered_as_json"] == 1
    rows = [json.loads(x) for x in (REPO / "evals/general_instructions/general_instructions.jsonl").read_text().splitlines()]
    assert len(rows) >= 40 and len({r["id"] for r in rows}) == len(rows)
    assert all(r["answers"] and r["category"] for r in rows)


def test_macro_f1_statistic_equals_the_task_aggregation(invoice_items):
    task, docs, recs = invoice_items
    rows = []
    for i, (d, r) in enumerate(zip(docs, recs)):
        g = dict(r["gold"])
        if i % 3 == 0:
            g["seller"] = "Someone Else"
        if i % 4 == 0:
            g["tax"] = None
        rows.append(_sample(i, d, json.dumps(g), task))
    theirs = {"field_f1_macro": common.macro_f1([s["field_f1_macro"] for s in rows]),
              "field_f1": common.micro_f1([s["field_f1"] for s in rows])}
    ours = ea.summarize("invoice_extraction", SCORING, rows, theirs, 200, 0)  # raises if the two disagree
    assert 0.5 < ours["field_f1_macro"]["value"] < 1.0
    assert ours["field_f1_macro"]["value"] < ours["field_f1"]["value"] + 0.1


def test_task_files_with_errors_are_named(tmp_path, monkeypatch):
    from runner.adapters import lm_eval
    evals = tmp_path / "evals"
    (evals / "broken").mkdir(parents=True)
    (evals / "broken" / "broken.yaml").write_text("task: broken\nmetric_list: [\n")
    (evals / "nodata").mkdir()
    (evals / "nodata" / "nodata.yaml").write_text("task: nodata\ndataset_kwargs: {data_files: {test: nope.jsonl}}\n")
    real = tasks.EVALS
    monkeypatch.setattr(tasks, "EVALS", evals)
    with pytest.raises(StageError, match=r"broken\.yaml: not valid YAML"):
        lm_eval.write_task("broken", tmp_path / "out")
    with pytest.raises(StageError, match=r"no task 'missing'.*tasks there: broken, nodata"):
        lm_eval.write_task("missing", tmp_path / "out")
    with pytest.raises(StageError, match=r"nodata\.yaml: dataset_kwargs\.data_files\.test should name a file"):
        lm_eval.write_task("nodata", tmp_path / "out")
    # the packaged general task resolves its own data file
    monkeypatch.setattr(tasks, "EVALS", real)
    spec = (lm_eval.write_task("general_instructions", tmp_path / "out") / "general_instructions.yaml").read_text()
    assert str(REPO / "evals/general_instructions/general_instructions.jsonl") in spec


def test_eval_recipe_gates_are_validated(tmp_path):
    from runner.recipe import RecipeError, load
    p = tmp_path / "r.yaml"
    p.write_text("name: g\ntask: invoice_extraction\neval:\n  gates:\n    - {metric: field_f1}\n")
    with pytest.raises(RecipeError, match=r"eval.gates\[0\]: expected a gate with min_gain and/or max_drop"):
        load(p)
    p.write_text("name: g\ntask: invoice_extraction\neval:\n  gates:\n    - {metric: field_f1, min_gain: 0.2, significant: true}\n"
                 "    - {per_field: true, max_drop: 0.05}\n")
    g = load(p).data["eval"]["gates"]
    assert "task" not in g[0] and g[1]["per_field"] is True  # no task: the recipe's task


TEST_TASKS = (str(REPO / "tests" / "tasks"),)


def test_classification_macro_f1_counts_every_class_seen():
    t = tasks.get("ticket_routing", TEST_TASKS)
    golds, answers = ["billing", "billing", "shipping", "technical"], ["billing", "Shipping.", "shipping", "no idea"]
    rows = [dict(doc_id=i, doc={"document": "x", "gold": g}, filtered_resps=[a], **t.scorer.score(t.spec, {"gold": g}, a))
            for i, (g, a) in enumerate(zip(golds, answers))]
    # billing: 1 right, 1 missed (F1 2/3); shipping: 1 right, 1 wrongly given (2/3); technical: missed (0)
    assert abs(common.macro_f1([r["macro_f1"] for r in rows]) - 4 / 9) < 1e-12
    s = ea.summarize("ticket_routing", tasks.scoring("ticket_routing", TEST_TASKS), rows,
                     {"macro_f1": 4 / 9, "accuracy": 0.5, "label_valid": 0.75}, 200, 0)
    assert abs(s["macro_f1"]["value"] - 4 / 9) < 1e-12 and s["label_valid"]["value"] == 0.75
    details = ea.item_details(rows, t, [250])
    conf = ea.confusion(details, t.spec["labels"], t)
    assert conf["matrix"]["billing"] == {"billing": 1, "shipping": 1, "technical": 0, "account": 0, "invalid": 0}
    assert conf["matrix"]["technical"]["invalid"] == 1
    assert conf["per_class"]["shipping"] == {"precision": 0.5, "recall": 1.0, "support": 1, "f1": 2 / 3}
    bd = ea.breakdowns({"base": details}, "", 100, 0, t)
    assert list(bd) == ["class", "language", "length"] and bd["class"]["billing"]["base"]["value"] == 0.5


def test_a_registry_task_is_written_as_a_runnable_lm_eval_task(tmp_path):
    import yaml
    from runner import kinds
    from runner.adapters import lm_eval
    t = tasks.get("purchase_orders", TEST_TASKS)
    out = lm_eval.write_task(t, tmp_path, tmp_path / "test.jsonl", 32, name="purchase_orders_train")
    spec = yaml.safe_load((out / "purchase_orders_train.yaml").read_text())
    assert spec["include"] == [str(t.lm_eval_yaml), str(kinds.base_yaml("extraction"))]
    assert spec["task"] == "purchase_orders_train" and spec["dataset_kwargs"]["data_files"]["test"] == str(tmp_path / "test.jsonl")
    forge = spec["metadata"]["forge"]  # resolved: what the kind's loader hands every doc
    assert forge["schema"]["properties"]["total"]["type"] == ["number", "null"] and forge["rules"][0]["check"] == "calendar_date"
    assert spec["generation_kwargs"]["max_gen_toks"] == 32


def test_compare_pairs_only_metrics_both_runs_recorded(invoice_items):
    """A run recorded before a metric existed (`consistent` came with the task kinds) still compares on the rest."""
    task, docs, recs = invoice_items
    old = [{k: v for k, v in _sample(i, d, json.dumps(r["gold"]), task).items() if k != "consistent"}
           for i, (d, r) in enumerate(zip(docs, recs))]
    new = [_sample(i, d, json.dumps(r["gold"]), task) for i, (d, r) in enumerate(zip(docs, recs))]
    cmp = ea.compare("invoice_extraction", SCORING, old, new, 100, 0)
    assert "consistent" not in cmp and cmp["field_f1"]["diff"] == 0.0


def test_one_item_gives_no_interval_and_no_verdict():
    from runner.reports import fmt
    one_a, one_b = stats.Metric(np.array([0.0])), stats.Metric(np.array([1.0]))
    assert stats.bootstrap(one_b, 100, 0) == {"value": 1.0, "low": None, "high": None, "n": 1}
    c = stats.paired(one_a, one_b, 100, 0)
    assert c == {"diff": 1.0, "low": None, "high": None, "p": None, "n": 1} and not stats.significant(c)
    assert fmt.diff(c) == "+1.000 (n=1: no interval)" and fmt.ci(stats.bootstrap(one_b, 100, 0)) == "1.000"


def test_failure_causes_are_counted_paired_located_and_shown():
    from runner.quality import failure_causes as fc

    def row(i, locale, causes):
        return {"id": f"d{i}", "doc_id": i, "slices": {"locale": locale}, "causes": causes,
                "gold": {"invoice_date": "2024-08-13"}, "prediction": '{"invoice_date": "2024-13-08"}'}
    locales = ["en_US"] * 4 + ["de_DE"] * 16
    base = [row(i, loc, {"invoice_date": "missing"}) for i, loc in enumerate(locales)]
    tuned = [row(i, loc, {"invoice_date": "day_month_swapped"} if loc == "en_US" and i < 3 else {})
             for i, loc in enumerate(locales)]
    train = [{"locale": "en_US"}] * 5 + [{"locale": "de_DE"}] * 45
    texts = {"missing": "null", "day_month_swapped": "MM/DD"}
    got = fc.analyze({"base": base, "tuned": tuned}, texts, ["locale"], train, [("tuned", "base")], "tuned", 300, 0)
    assert list(got["causes"]) == ["missing", "day_month_swapped"]  # the kind's order, not the alphabet
    t = got["models"]["tuned"]["by_cause"]["day_month_swapped"]
    assert t["items"] == 3 and t["by_unit"] == {"invoice_date": 3} and t["rate"]["value"] == 0.15
    assert got["models"]["base"]["by_cause"]["missing"]["items"] == 20
    assert got["changes"]["tuned-vs-base"]["missing"]["diff"] == -1.0
    w = got["why"]["day_month_swapped"]
    assert (w["value"], w["cases"], w["of"], w["test_share"], w["train_share"]) == ("en_US", 3, 3, 0.2, 0.1)
    assert got["why"]["missing"] is None  # the focus model has no such case
    ex = got["examples"]["day_month_swapped"]
    assert len(ex) == 3 and ex[0]["model"] == "tuned" and ex[0]["answer"] == "2024-13-08"
    assert [e["model"] for e in got["examples"]["missing"]] == ["base"] * 3  # filled from the other models
    # a prompting baseline stopped early (its first 5 items, listed out of order): the change is paired on those
    early = [row(i, locales[i], {"invoice_date": "missing"} if i < 2 else {}) for i in (4, 3, 2, 1, 0)]
    got = fc.analyze({"tuned": tuned, "base-fewshot": early}, texts, ["locale"], train, [("tuned", "base-fewshot")],
                     "tuned", 300, 0)
    assert got["models"]["base-fewshot"]["n"] == 5 and got["models"]["tuned"]["n"] == 20
    ch = got["changes"]["tuned-vs-base-fewshot"]
    assert ch["missing"]["n"] == 5 and ch["missing"]["diff"] == -0.4 and ch["day_month_swapped"]["diff"] == 0.6


def test_a_share_gets_a_wilson_interval_that_stays_inside_zero_and_one():
    # 19 of 20 (the textbook Wilson interval is [0.764, 0.991]); all of 5 still leaves room below 1; none of 0
    assert stats.proportion_ci(19, 20) == [0.764, 0.991]
    low, high = stats.proportion_ci(5, 5)
    assert high == 1.0 and 0.5 < low < 0.6
    assert stats.proportion_ci(0, 8)[0] == 0.0 and stats.proportion_ci(0, 0) is None


def test_quality_md_says_which_items_the_prompting_baselines_rest_on():
    from runner.reports import quality
    check = {"gate": 1, "model": "tuned", "baseline": "base-fewshot", "metric": "field_f1", "diff": 0.7, "low": 0.6,
             "high": 0.8, "level": 0.999, "n": 40, "bound": 0.05, "decided": "passes"}
    stopped = "\n".join(quality.early_stop_lines({"after": 40, "of": 98, "level": 0.999, "stopped": True,
                                                  "checks": [check]}))
    assert "rest on the first 40 of the 98 test items" in stopped and "99.9%" in stopped
    assert "- gate 2, tuned − base-fewshot, field_f1: 0.700 [0.600, 0.800] at 99.9%, n=40, bound +0.05: passes" in stopped
    went_on = "\n".join(quality.early_stop_lines({"after": 3, "of": 6, "level": 0.999, "stopped": False, "checks": [
        {"gate": 0, "decided": None, "why": "a per-field gate or one on another task"}]}))
    assert "scored on every item" in went_on and "- gate 1: a per-field gate or one on another task" in went_on
    assert quality.early_stop_lines(None) == []


def test_a_model_scored_in_two_parts_adds_its_times_and_counters_and_keeps_the_higher_peak():
    first = {"server_ready_s": 1.5, "score_test_s": 10.0, "prompt_tokens_total": 100.0, "server_peak_rss_mb": 700.0,
             "serve_and_score_s": 12.0}
    second = {"server_ready_s": 1.0, "score_test_s": 30.0, "prompt_tokens_total": 250.0, "server_peak_rss_mb": 650.0,
              "serve_and_score_s": 31.5, "tokens_predicted_total": 40.0}
    got = served_eval.combine(first, second)
    assert got == {"server_ready_s": 2.5, "score_test_s": 40.0, "prompt_tokens_total": 350.0,
                   "server_peak_rss_mb": 700.0, "serve_and_score_s": 43.5, "tokens_predicted_total": 40.0}
    assert served_eval.combine({"server_peak_rss_mb": None}, {"server_peak_rss_mb": 5.0}) == {"server_peak_rss_mb": 5.0}
