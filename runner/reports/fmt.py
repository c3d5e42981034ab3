"""What every report writer shares: how a number, an interval and a paired difference are written, the chart
figure (matplotlib without a display; saved, then closed even when drawing fails), and the one writer
signature, `write(page: Page) -> dict[str, str]` (the artifacts written, by name)."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

DASH = "–"  # a value that was not measured


def num(v, nd: int = 3, spec: str = "f") -> str:
    """A float to `nd` places (`spec` "g": significant digits), anything else as text, None as a dash."""
    if v is None:
        return DASH
    if isinstance(v, float):
        return f"{v:.{nd}{spec}}"
    return str(v)


def ci(c: dict | None, nd: int = 3) -> str:
    """`value [low, high]` of a confidence-interval record ({"value", "low", "high"})."""
    if not c or c.get("value") is None:
        return DASH
    if c.get("low") is None:
        return num(float(c["value"]), nd)
    return f"{c['value']:.{nd}f} [{c['low']:.{nd}f}, {c['high']:.{nd}f}]"


def diff(c: dict | None) -> str:
    """A paired difference with its interval and p-value, marked ▲/▼ when the interval excludes zero."""
    if not c or c.get("diff") is None:
        return DASH
    mark = " ▲" if c.get("improved") or (c.get("low") or 0) > 0 else (" ▼" if (c.get("high") or 0) < 0 else "")
    if c.get("low") is None:
        return f"{c['diff']:+.3f} (n={c.get('n')}: no interval)"
    p = f", p={c['p']:.3g}" if c.get("p") is not None else ""
    return f"{c['diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]{p}{mark}"


@contextmanager
def figure(path: Path, nrows: int = 1, ncols: int = 1, figsize=(6, 3.5), dpi: int = 100,
           **subplots) -> Iterator[tuple]:
    """`with figure(out / "x.png", 1, 2, figsize=...) as (fig, axes):` draws, then lays out and saves the PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, **subplots)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)


@dataclass
class Page:
    """What every report writer gets (`write(page) -> {artifact name: file name}`): the folder to write into, the
    stage's metrics, what the stage analysed beyond them (per-item detail, curves, removed records, ...), the
    resolved recipe, and the other stages' outputs for the pages that read across stages."""
    out: Path
    metrics: dict
    analysis: dict = field(default_factory=dict)
    recipe: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)


def recorded_task(eval_metrics: dict) -> dict:
    """The task as the eval stage recorded it (`Task.describe()`), completed for runs recorded before task kinds
    existed (all extraction), so `just report` still re-renders them."""
    t = dict(eval_metrics.get("task") or {})
    t.setdefault("kind", "extraction")
    t.setdefault("headline", "field_f1")
    t.setdefault("key_metrics", ["field_f1", "exact_match", "json_valid"])
    t.setdefault("unit", "field" if t["kind"] == "extraction" else None)
    t.setdefault("slices", [])
    if "metrics" not in t:
        scored = next((d["tasks"][t.get("name")] for d in eval_metrics.get("models", {}).values()
                       if t.get("name") in d.get("tasks", {})), {})
        t["metrics"] = list(scored.get("ci", {}))
    return t
