"""training.md and its curves, from the train stage's parsed Axolotl logs (nothing typed in)."""
from __future__ import annotations

import json
from pathlib import Path

from runner.reports import fmt


def curves_png(curves: dict[str, list[dict]], out: Path) -> str | None:
    if not any(curves.values()):
        return None
    with fmt.figure(out / "training_curves.png", 2, 2, figsize=(10, 6)) as (fig, axes):
        panels = [("loss", "train loss"), ("eval_loss", "eval loss"), ("learning_rate", "learning rate"),
                  ("grad_norm", "grad norm")]
        for ax, (key, title) in zip(axes.flat, panels):
            for name, curve in curves.items():
                pts = [(r["step"], r[key]) for r in curve if isinstance(r.get(key), (int, float))]
                if pts:
                    ax.plot(*zip(*pts), "o-" if key == "eval_loss" else "-", label=name, markersize=3)
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
    return "training_curves.png"


def write(page: fmt.Page) -> dict[str, str]:
    """page.analysis: curves (model -> parsed log records), dataset_version, price_per_hour_usd."""
    out, metrics = page.out, page.metrics
    curves, dataset_version = page.analysis["curves"], page.analysis["dataset_version"]
    price = page.analysis["price_per_hour_usd"]
    png = curves_png(curves, out)
    L = ["# Training", "", f"Dataset version `{dataset_version}`. Every number below is parsed from Axolotl's own "
         "log of this run (`logs/train/axolotl-train-*.log`); the exact Axolotl config is `<model>/axolotl.yaml`.", "",
         "| model | status | steps | tokens seen | first loss | final loss | final eval loss | train tok/s | "
         "trainable params | wall s | peak RSS MB | cost USD |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in metrics.items():
        share = f" ({100 * m['trainable_params'] / m['all_params']:.2f}%)" if m.get("trainable_params") and m.get("all_params") else ""
        L.append(f"| {name} | {m['status']} | {m['steps']} | {fmt.num(m['tokens_seen'], 4, 'g')} | {fmt.num(m['first_loss'], 4, 'g')} | "
                 f"{fmt.num(m['final_loss'], 4, 'g')} | {fmt.num(m['final_eval_loss'], 4, 'g')} | {fmt.num(m['tokens_per_s'], 3, 'g')} | "
                 f"{fmt.num(m['trainable_params'], 4, 'g')}{share} | {fmt.num(m['seconds'], 4, 'g')} | {fmt.num(m['peak_rss_mb'], 5, 'g')} | "
                 f"{fmt.num(m['cost_usd'], 3, 'g')} |")
    L += ["", f"Cost: wall hours (preprocess + train) × {price} USD/hour (`train.price_per_hour_usd`). Tokens seen: "
          "Axolotl's cumulative `tokens/total`; train tok/s divides it by the train process's wall time (start-up "
          "included)."]
    if png:
        L += ["", f"![curves]({png})"]
    L += ["", "## Checks on the curves", ""]
    for name, m in metrics.items():
        L.append(f"- **{name}**: {m['status']}" + (": " + "; ".join(m["findings"]) if m["findings"] else
                                                   " (finite loss, going down, no train/eval gap growing)"))
    L += ["", "## Hyperparameters", ""]
    for name, m in metrics.items():
        L += [f"- **{name}**: `" + json.dumps(m["hyperparameters"], sort_keys=True) + "`"]
        if m.get("precision"):
            L += [f"  - computed in {m['precision']}"]
    (out / "training.md").write_text("\n".join(L) + "\n")
    return {"report": "training.md", **({"curves_png": png} if png else {})}
