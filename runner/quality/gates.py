"""Quality gates from the recipe, judged on the eval stage's paired comparisons.

A gate names a task metric (or `per_field: true` for every field's accuracy) and a bound on the difference
model - baseline: `min_gain` (the difference must reach it) and/or `max_drop` (it must not fall below
-max_drop); `significant: true` also requires the CI of the difference to lie above zero. `baseline` names what
the model is compared with: `base`, a prompting baseline (eval.baselines) or `strongest` (the best of them by
the task's headline metric). Each verdict says what was measured, against what, and by how much it passed or
failed.
"""
from __future__ import annotations


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:+.4f}"


def judge(gates: list[dict], comparisons: dict, fields: dict, models: list[str], main_task: str,
          named: dict | None = None) -> list[dict]:
    """comparisons: baseline -> model -> task -> metric -> paired result; fields: baseline -> field ->
    {"<m>-vs-<baseline>": paired}; named: aliases of baselines ({"strongest": "base-fewshot"}).
    Returns one verdict per (gate, model)."""
    verdicts = []
    for i, g in enumerate(gates):
        baseline = (named or {}).get(g.get("baseline", "base"), g.get("baseline", "base"))
        for m in g.get("models") or [x for x in models if x != baseline]:
            if g.get("per_field"):
                rows = fields.get(baseline, {})
                checks = [(f"{f} accuracy", row.get(f"{m}-vs-{baseline}")) for f, row in rows.items()] or \
                    [("every field's accuracy", None)]
            else:
                task = g.get("task") or main_task
                checks = [(f"{task}/{g['metric']}",
                           comparisons.get(baseline, {}).get(m, {}).get(task, {}).get(g["metric"]))]
            for what, cmp in checks:
                verdicts.append(_check(i, g, m, baseline, what, cmp))
    return verdicts


def _check(i: int, g: dict, model: str, baseline: str, what: str, cmp: dict | None) -> dict:
    v = {"gate": i, "model": model, "baseline": baseline, "what": what, "passed": True, "reasons": []}
    if not cmp or cmp.get("diff") is None:
        v.update(passed=False, reasons=[f"no paired result for {model} vs {baseline} on {what}"])
        return v
    d, low, high = cmp["diff"], cmp.get("low"), cmp.get("high")
    v.update(diff=d, low=low, high=high, power=power(g, cmp))
    if "min_gain" in g and d < g["min_gain"]:
        v["reasons"].append(f"gain {_fmt(d)} is below the required {g['min_gain']:+.4f} "
                            f"(short by {g['min_gain'] - d:.4f})")
    if "max_drop" in g and d < -g["max_drop"]:
        v["reasons"].append(f"drop {-d:.4f} exceeds the allowed {g['max_drop']:.4f} (by {-d - g['max_drop']:.4f})")
    if g.get("significant") and not (low is not None and low > 0):
        v["reasons"].append(f"95% CI of the difference [{_fmt(low)}, {_fmt(high)}] does not lie above zero")
    v["passed"] = not v["reasons"]
    return v


def settled(gates: list[dict], comparisons: dict, baselines: list[str], models: list[str], main_task: str,
            level: float) -> tuple[bool, list[dict]]:
    """An interim look at the prompting baselines (eval.baselines_stop_early). comparisons: baseline -> model ->
    task -> metric -> paired result at `level`, on the items scored so far. A gate that names a prompting baseline
    (or 'strongest': each of them is a candidate) is decided for a (model, baseline) when the interval lies wholly
    above the gate's bound (it passes: also above zero when the gate asks for significance) or wholly below it (it
    fails). Per-field gates and gates on another task are never decided early. Returns (all decided, checks)."""
    checks, done = [], True
    for i, g in enumerate(gates):
        named = g.get("baseline", "base")
        candidates = baselines if named == "strongest" else [named] if named in baselines else []
        if not candidates:
            continue
        if g.get("per_field") or (g.get("task") or main_task) != main_task:
            checks.append({"gate": i, "decided": None, "why": "a per-field gate or one on another task"})
            done = False
            continue
        bound = g["min_gain"] if "min_gain" in g else -g["max_drop"] if "max_drop" in g else 0.0
        floor = max(bound, 0.0) if g.get("significant") else bound
        for m in g.get("models") or models:
            for b in candidates:
                cmp = comparisons.get(b, {}).get(m, {}).get(main_task, {}).get(g["metric"]) or {}
                low, high = cmp.get("low"), cmp.get("high")
                decided = "passes" if low is not None and low > floor else \
                    "fails" if high is not None and high < bound else None
                checks.append({"gate": i, "model": m, "baseline": b, "metric": g["metric"], "diff": cmp.get("diff"),
                               "low": low, "high": high, "level": level, "n": cmp.get("n"), "bound": bound,
                               "decided": decided})
                done = done and decided is not None
    return done, checks


def power(g: dict, cmp: dict) -> dict | None:
    """How fine this comparison can judge: the standard error of the difference (from its 95% interval), the
    smallest true difference detected 80% of the time at a two-sided 5% level (2.80 standard errors), and the
    items needed for that to equal the gate's own bound (min_gain, else max_drop)."""
    low, high, n = cmp.get("low"), cmp.get("high"), cmp.get("n")
    if low is None or high is None or not n:
        return None
    se = (high - low) / (2 * 1.96)
    mde = 2.80 * se
    bound = g.get("min_gain") or g.get("max_drop")
    need = int(-(-n * (mde / bound) ** 2 // 1)) if bound and mde else None
    return {"se": round(se, 4), "detectable": round(mde, 4), "bound": bound, "n": n, "n_for_bound": need}


def describe(g: dict, main_task: str) -> str:
    target = "every field's accuracy" if g.get("per_field") else f"{g.get('task') or main_task}/{g['metric']}"
    parts = []
    if "min_gain" in g:
        parts.append(f"gain >= {g['min_gain']}")
    if "max_drop" in g:
        parts.append(f"drop <= {g['max_drop']}")
    if g.get("significant"):
        parts.append("CI of the gain above zero")
    against = g.get("baseline", "base")
    return f"{target}: " + ", ".join(parts) + ("" if against == "base" else f" (vs {against})")
