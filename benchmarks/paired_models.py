"""Two models of one eval stage, paired on the same items: for an experiment that trains a variant beside tuned
(train.variants) and scores both (eval.models), what did the change buy, task by task, with the paired bootstrap CI
and p-value (and McNemar for binary metrics) the eval stage uses against base.

    python3 benchmarks/paired_models.py --eval-dir runs/<recipe>/<run>/stages/eval --base tuned --other tuned-lr1e-3

Two runs of one recipe scored on the same items (the same dataset version) pair as well: --other-eval-dir names the
second run's eval stage, e.g. the default recipe before and after a change to its train section.

Prints one JSON object (task -> metric -> paired difference), then a markdown table of the headline metrics.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from runner import tasks  # noqa: E402
from runner.quality import eval_analysis as ea  # noqa: E402


def item_id(sample: dict):
    """The scored item: its record id where the task's documents have one, else lm-eval's index."""
    doc = sample.get("doc") or {}
    return doc.get("id", sample["doc_id"]) if isinstance(doc, dict) else sample["doc_id"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval-dir", type=Path, required=True)
    ap.add_argument("--base", required=True)
    ap.add_argument("--other", required=True)
    ap.add_argument("--other-eval-dir", type=Path, help="the other model's eval stage (default: --eval-dir)")
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--metrics", default="field_f1,exact_match,json_valid,consistent,accuracy")
    a = ap.parse_args()
    other_dir = a.other_eval_dir or a.eval_dir
    arts = json.loads((a.eval_dir / "stage.json").read_text())["artifacts"]
    other_arts = json.loads((other_dir / "stage.json").read_text())["artifacts"]
    out = {}
    for key in sorted(arts):
        prefix = f"{a.base}-samples-"
        if not key.startswith(prefix) or f"{a.other}-samples-{key[len(prefix):]}" not in other_arts:
            continue
        t = key[len(prefix):]
        base = ea.read_samples(a.eval_dir / arts[key])
        other = ea.read_samples(other_dir / other_arts[f"{a.other}-samples-{t}"])
        if [item_id(s) for s in base] != [item_id(s) for s in other]:
            print(f"{t}: the two models were scored on different items (e.g. a training sample of two training "
                  "splits); skipped", file=sys.stderr)
            continue
        out[t] = ea.compare(t, tasks.scoring(t), base, other, a.iters, a.seed)
        for side, s in (("_base", base), ("_other", other)):
            out[t][side] = {k: v["value"] for k, v in ea.summarize(t, tasks.scoring(t), s, {}, a.iters, a.seed).items()}
    if not out:
        print("no task was scored on the same items by both models: nothing to pair", file=sys.stderr)
        return 2
    print(json.dumps(out, default=str))
    wanted = a.metrics.split(",")
    print(f"\n| task | metric | n | {a.base} | {a.other} | {a.other} − {a.base} [95% CI] | p |")
    print("|---|---|---|---|---|---|---|")
    for t, per in out.items():
        for m in wanted:
            d = per.get(m)
            if not d:
                continue
            print(f"| {t} | {m} | {d['n']} | {per['_base'][m]:.3f} | {per['_other'][m]:.3f} | "
                  f"{d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] | {d['p']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
