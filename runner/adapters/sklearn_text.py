"""scikit-learn's text classifier: the baseline a support team tries before any language model, character n-gram
TF-IDF features and a logistic regression.

Runs inside the `ml` venv (scikit-learn comes with cleanlab there):
python -m runner.adapters.sklearn_text IN.json OUT.json. The eval stage calls `run()` from the core venv.

Fitted on the training split only (what the fine-tuned model learned from); the inverse regularization strength C
is chosen from the recipe's grid by accuracy on the eval split (ties: the smaller C), then the model is refitted on
the training split with that C and predicts the test split. Deterministic for a seed.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from runner import env, proc


def run(train: tuple[list[str], list[str]], dev: tuple[list[str], list[str]], test: list[str], cfg: dict, seed: int,
        work: Path, log: Path, threads: int) -> dict:
    """(texts, labels) for train and dev, texts for test -> {"predictions", "C", "dev_accuracy" per C,
    "features", "seconds"}. cfg: analyzer (char_wb | char | word), ngram_range [lo, hi], C (a list), max_features,
    sublinear_tf, class_weight (null | balanced)."""
    work.mkdir(parents=True, exist_ok=True)
    inp, out = work / "sklearn_in.json", work / "sklearn_out.json"
    inp.write_text(json.dumps({"train": train, "dev": dev, "test": test, "cfg": cfg, "seed": seed}, ensure_ascii=False))
    proc.run([env.venv("ml").python, "-m", "runner.adapters.sklearn_text", inp, out], log,
             env=proc.tool_env(threads, {"PYTHONPATH": str(env.REPO)}), cwd=env.REPO,
             what="scikit-learn TF-IDF + logistic regression")
    inp.unlink()
    got = json.loads(out.read_text())
    out.unlink()
    return got


def fit_predict(train, dev, test: list[str], cfg: dict, seed: int) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    t0 = time.time()

    def model(c: float):
        return make_pipeline(
            TfidfVectorizer(analyzer=cfg["analyzer"], ngram_range=tuple(cfg["ngram_range"]), lowercase=True,
                            sublinear_tf=cfg["sublinear_tf"], max_features=cfg["max_features"]),
            LogisticRegression(C=c, max_iter=5000, class_weight=cfg["class_weight"], random_state=seed))

    dev_accuracy = {}
    for c in cfg["C"]:
        if dev[0]:
            pred = model(c).fit(*train).predict(dev[0])
            dev_accuracy[str(c)] = sum(p == g for p, g in zip(pred, dev[1])) / len(dev[1])
    best = max(cfg["C"], key=lambda c: (dev_accuracy.get(str(c), 0.0), -c)) if dev_accuracy else cfg["C"][0]
    fitted = model(best).fit(*train)
    return {"predictions": [str(p) for p in fitted.predict(test)], "C": best, "dev_accuracy": dev_accuracy,
            "features": len(fitted[0].vocabulary_), "seconds": round(time.time() - t0, 2)}


def main(inp: Path, out: Path) -> None:
    a = json.loads(inp.read_text())
    out.write_text(json.dumps(fit_predict(a["train"], a["dev"], a["test"], a["cfg"], a["seed"]), ensure_ascii=False))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
