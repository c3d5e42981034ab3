"""eval.classical_baseline: scikit-learn's TF-IDF + logistic regression (runner/adapters/sklearn_text.py, run in
the ml venv as the eval stage runs it) and the sentence quality.md states about it."""
import functools

import pytest

from runner.adapters import sklearn_text
from runner.reports.quality import classical_verdict

CFG = {"analyzer": "char_wb", "ngram_range": [2, 4], "C": [0.01, 10.0], "max_features": None, "sublinear_tf": True,
       "class_weight": None}
TRAIN = (["my invoice is wrong", "refund my payment", "the parcel never arrived", "where is my package",
          "Rechnung falsch bitte", "paquet pas livré"], ["billing", "billing", "shipping", "shipping", "billing",
                                                         "shipping"])
DEV = (["payment refund please", "package arrived broken"], ["billing", "shipping"])


@pytest.fixture
def fit(tmp_path):
    return functools.partial(sklearn_text.run, work=tmp_path / "work", log=tmp_path / "sklearn.log", threads=1)


def test_fits_on_train_chooses_c_on_dev_and_predicts_labels(fit):
    got = fit(TRAIN, DEV, ["a refund for my invoice", "my parcel is late"], CFG, seed=1)
    assert got["predictions"] == ["billing", "shipping"]
    assert set(got["dev_accuracy"]) == {"0.01", "10.0"} and got["C"] in CFG["C"]
    assert got["dev_accuracy"][str(got["C"])] == max(got["dev_accuracy"].values())
    assert got["features"] > 0
    again = fit(TRAIN, DEV, ["a refund for my invoice", "my parcel is late"], CFG, seed=1)
    assert again["predictions"] == got["predictions"] and again["C"] == got["C"]


def test_ties_on_dev_choose_the_smaller_c_and_no_dev_takes_the_first(fit):
    got = fit(TRAIN, DEV, ["refund"], {**CFG, "C": [10.0, 100.0]}, seed=1)
    assert got["dev_accuracy"] == {"10.0": 1.0, "100.0": 1.0} and got["C"] == 10.0   # both right on dev: the smaller
    none = fit(TRAIN, ([], []), ["refund"], {**CFG, "C": [100.0, 1.0]}, seed=1)
    assert none["C"] == 100.0 and none["dev_accuracy"] == {}


def test_the_verdict_says_who_wins_and_by_how_much():
    assert classical_verdict("tfidf", "tuned", {"diff": 0.1, "low": 0.05, "high": 0.15, "improved": True}) == \
        "tuned beats tfidf: +0.100 [+0.050, +0.150]."
    lose = classical_verdict("tfidf", "tuned", {"diff": -0.2, "low": -0.3, "high": -0.1, "worse": True})
    assert lose.startswith("**tuned does not beat tfidf: tfidf is better by 0.200**")
    assert "not told apart" in classical_verdict("tfidf", "tuned", {"diff": 0.01, "low": -0.05, "high": 0.07})
