"""Confidence intervals and paired tests for per-item eval scores.

A metric is a per-item array plus how items aggregate: `mean` (accuracy-like 0/1 or fractions) or `ratio`
(per-item count tuples such as (tp, fp, fn) aggregated as micro F1). Intervals are percentile bootstrap over
items; comparisons of two models on the same items resample the *same* items for both (paired bootstrap),
and binary metrics also get McNemar's exact test.
"""
from __future__ import annotations

import math
from statistics import NormalDist
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.stats import binomtest


def nearest_rank(values: list[float], q: float, digits: int = 3) -> float | None:
    """The q-quantile of a list of measurements by nearest rank (no interpolation), rounded; None when empty."""
    if not values:
        return None
    v = sorted(values)
    return round(v[min(len(v) - 1, int(q * len(v)))], digits)


@dataclass
class Metric:
    """values: shape (n,) for mean metrics, (n, k) count columns for ratio metrics; agg maps the column
    sums (or the mean) of a resample to the metric."""
    values: np.ndarray
    agg: Callable[[np.ndarray], np.ndarray] | None = None  # column sums (B, k) -> (B,); None = mean

    def point(self) -> float:
        return float(self._of(self.values[None, ...])[0])

    def _of(self, sample: np.ndarray) -> np.ndarray:
        """sample: (B, n) or (B, n, k) -> (B,) metric values."""
        if self.agg is None:
            return sample.mean(axis=1)
        return self.agg(sample.sum(axis=1))


def micro_f1(sums: np.ndarray) -> np.ndarray:
    tp, fp, fn = sums[..., 0], sums[..., 1], sums[..., 2]
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def rate(sums: np.ndarray) -> np.ndarray:
    """hits / total; NaN where total is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sums[..., 1] > 0, sums[..., 0] / np.maximum(sums[..., 1], 1), np.nan)


def macro_f1(sums: np.ndarray) -> np.ndarray:
    """sums: (B, fields*3) flattened (tp, fp, fn) per field -> mean of the per-field F1 over fields seen."""
    s = sums.reshape(sums.shape[0], -1, 3)
    denom = 2 * s[..., 0] + s[..., 1] + s[..., 2]
    f1 = np.where(denom > 0, 2 * s[..., 0] / np.maximum(denom, 1), np.nan)
    with np.errstate(invalid="ignore"):
        out = np.nanmean(np.where(denom > 0, f1, np.nan), axis=1)
    return np.nan_to_num(out, nan=0.0)


def _indices(n: int, iters: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(iters, n))


def _interval(draws: np.ndarray, level: float) -> tuple[float | None, float | None]:
    d = draws[np.isfinite(draws)]
    if not len(d):
        return None, None
    a = (1 - level) / 2
    return float(np.quantile(d, a)), float(np.quantile(d, 1 - a))


def bootstrap(metric: Metric, iters: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """{value, low, high, n}: the metric and its percentile bootstrap interval over items."""
    n = len(metric.values)
    value = metric.point() if n else None
    if n < 2 or value is None or not math.isfinite(value):  # one item has no spread to resample
        return {"value": None if value is None or not math.isfinite(value) else value, "low": None, "high": None,
                "n": n}
    draws = metric._of(metric.values[_indices(n, iters, seed)])
    low, high = _interval(draws, level)
    return {"value": value, "low": low, "high": high, "n": n}


def paired(a: Metric, b: Metric, iters: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """b minus a on the same items: {diff, low, high, p, n}. p is the two-sided paired-bootstrap p-value
    (share of resamples on the other side of zero, doubled, with the +1 correction)."""
    n = len(a.values)
    if n != len(b.values):
        raise ValueError(f"paired comparison needs the same items: {n} vs {len(b.values)}")
    if n == 0:
        return {"diff": None, "low": None, "high": None, "p": None, "n": 0}
    diff = b.point() - a.point()
    if not math.isfinite(diff):
        return {"diff": None, "low": None, "high": None, "p": None, "n": n}
    if n < 2:  # resampling one item repeats it: no interval, no test
        return {"diff": diff, "low": None, "high": None, "p": None, "n": n}
    idx = _indices(n, iters, seed)
    draws = b._of(b.values[idx]) - a._of(a.values[idx])
    draws = draws[np.isfinite(draws)]
    low, high = _interval(draws, level)
    below, above = int((draws <= 0).sum()), int((draws >= 0).sum())
    p = min(1.0, 2 * (min(below, above) + 1) / (len(draws) + 1)) if len(draws) else None
    if low == high == 0.0:  # identical on every resample: no evidence of a difference
        p = 1.0
    return {"diff": diff, "low": low, "high": high, "p": p, "n": n}


def mcnemar(a: np.ndarray, b: np.ndarray) -> dict:
    """Exact McNemar test on paired 0/1 outcomes: b_only = items only b got right, a_only = only a."""
    a, b = np.asarray(a).astype(bool), np.asarray(b).astype(bool)
    b_only, a_only = int((b & ~a).sum()), int((a & ~b).sum())
    k, m = min(a_only, b_only), a_only + b_only
    p = 1.0 if m == 0 else min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2 ** m)
    return {"b_only": b_only, "a_only": a_only, "p": p}


def proportion_ci(successes: int, n: int, level: float = 0.95) -> list[float] | None:
    """Wilson score interval of a share (scipy's binomtest): honest at small n and at shares near 0 or 1."""
    if not n:
        return None
    ci = binomtest(successes, n).proportion_ci(confidence_level=level, method="wilson")
    return [round(float(ci.low), 3), round(float(ci.high), 3)]


def significant(cmp: dict) -> bool:
    """'Improved' or 'worse' means the interval of the difference excludes zero."""
    return cmp.get("low") is not None and (cmp["low"] > 0 or cmp["high"] < 0)


def non_inferiority(ref_right: np.ndarray, new_right: np.ndarray, units: np.ndarray, margin: float,
                    alpha: float = 0.05, power: float = 0.8, iters: int = 2000, seed: int = 0) -> dict:
    """Is `new` no worse than `ref` by more than `margin` in the share of right unit decisions (per field, per
    label)? Per item: how many of its `units` decisions each got right. The drop (ref - new) / decisions is
    bootstrapped over items (decisions of one item stay together), and `new` is non-inferior when the one-sided
    (1 - alpha) upper bound of the drop is <= margin.

    Power is for a true drop of zero at this n, from the bootstrap standard error: Phi(margin / se - z(1-alpha));
    `n_required` is the number of items for the asked power (se shrinks as 1/sqrt(n))."""
    ref_right, new_right, units = (np.asarray(x, dtype=float) for x in (ref_right, new_right, units))
    n, decisions = len(units), float(units.sum())
    out = {"n": n, "decisions": int(decisions), "margin": margin, "alpha": alpha,
           "discordant_items": int((ref_right != new_right).sum()),
           "ref_share": float(ref_right.sum() / decisions) if decisions else None,
           "new_share": float(new_right.sum() / decisions) if decisions else None}
    if n < 2 or not decisions:
        return {**out, "drop": None, "upper": None, "se": None, "power": None, "n_required": None, "passed": False,
                "why": f"{n} item(s), {int(decisions)} decision(s): nothing to test"}
    m = Metric(np.stack([ref_right - new_right, units], axis=1), lambda s: s[..., 0] / s[..., 1])
    draws = m._of(m.values[_indices(n, iters, seed)])
    drop, upper, se = m.point(), float(np.quantile(draws, 1 - alpha)), float(draws.std(ddof=1))
    normal = NormalDist()
    za, zb = normal.inv_cdf(1 - alpha), normal.inv_cdf(power)
    pw = None if se == 0 else normal.cdf(margin / se - za)  # no discordant item: no spread to estimate power from
    need = None if se == 0 else int(math.ceil(n * (se * (za + zb) / margin) ** 2))
    passed = upper <= margin
    why = (f"drop {drop:+.4f} of {int(decisions)} decisions on {n} items, one-sided {1 - alpha:.0%} upper bound "
           f"{upper:+.4f} {'<=' if passed else '>'} margin {margin}")
    return {**out, "drop": drop, "upper": upper, "se": se, "power": pw, "power_target": power, "n_required": need,
            "passed": passed, "why": why}
