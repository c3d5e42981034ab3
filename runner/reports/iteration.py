"""iteration.md: the automated iteration loop (runner/stages/iterate.py) as evidence: what was mined and why,
base vs tuned vs tuned-v2 on the same items with paired differences, the change per failure cause, the gates
and the keep decision. Every number is read from the iterate stage's metrics and analysis."""
from __future__ import annotations

import json
from pathlib import Path

from runner.quality import gates as gates_mod
from runner.reports import fmt, quality


def chart_causes(causes: dict, models: list[str], out: Path) -> str | None:
    """Share of test items per cause and model, bars from zero, 95% intervals."""
    names = [c for c in causes.get("causes", {}) if any(causes["models"][m]["by_cause"][c]["items"] for m in models)]
    if not names:
        return None
    n = causes["models"][models[0]]["n"]
    with fmt.figure(out / "iteration_causes.png", figsize=(9, 3.8)) as (fig, ax):
        width = 0.8 / len(models)
        for i, m in enumerate(models):
            rates = [causes["models"][m]["by_cause"][c]["rate"] for c in names]
            vals = [r["value"] or 0 for r in rates]
            err = [[v - (r["low"] if r["low"] is not None else v) for v, r in zip(vals, rates)],
                   [(r["high"] if r["high"] is not None else v) - v for v, r in zip(vals, rates)]]
            ax.bar([x + i * width for x in range(len(names))], vals, width, yerr=err, capsize=2, label=m)
        ax.set_xticks([x + width * (len(models) - 1) / 2 for x in range(len(names))])
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.set_ylabel("share of test items")
        ax.set_title(f"failure causes, {n} test items, 95% bootstrap intervals", fontsize=9)
        ax.legend(fontsize=8)
    return "iteration_causes.png"


def targeted_lines(entries: list[dict]) -> list[str]:
    """Step 2's second half: generated records aimed at a named cause (iterate.targeted)."""
    if not entries:
        return []
    parts = [f"{e['added']} matching `{json.dumps(e['where'], ensure_ascii=False)}`"
             + (f" (for {e['cause']})" if e.get("cause") else "")
             + f": {e['matched']} of {e['scanned']} generated records matched; the first {e['cleaned']} were cleaned "
             "(removed: " + (", ".join(f"{k} {v}" for k, v in sorted(e["removed"].items())) or "none") + ")"
             for e in entries]
    return [f"   **Targeted** (iterate.targeted): fresh generated records whose gold has the pattern behind a cause, "
            f"each added once: {'; '.join(parts)}."]


def write(page: fmt.Page) -> dict[str, str]:
    m, a = page.metrics, page.analysis
    name, task = m["name"], m["task"]
    main, head = task["name"], task["headline"]
    models = ["base", "tuned", name]
    keys = [k for k in task["key_metrics"]]
    mined, pool = m["mined"], m["pool"]
    removed = ", ".join(f"{k} {v}" for k, v in sorted(pool["removed"].items())) or "none"
    tr = m["training"]
    L = [f"# Iteration: {name} from tuned's failures", "",
         f"**Kept: {m['kept']}.** " + ("Every gate passed." if m["kept"] == name else
                                       "Not every gate passed, so tuned stays the model; the gates say why."), "",
         "## The loop", "",
         f"1. **Pool.** {pool['generated']} more records from the recipe's generator, past its corpus, cleaned by the "
         f"data section's policy; removed: {removed}; {pool['kept']} kept (none in a held-out slice, none near an "
         "eval, test or ood record).",
         f"2. **Mine.** tuned answered the pool: {mined['pool_items_wrong']} of {mined['pool_items']} items had at "
         f"least one failure cause. {mined['items']} were chosen (iterate.max_added), the causes taking turns, rarest "
         f"first (table below), each added {mined['repeat']}x to the training split.",
         *targeted_lines(m.get("targeted") or []),
         f"3. **Train.** {name} from the same base: {m['train_records']['tuned']} → {m['train_records'][name]} training "
         f"records, {tr['steps']} steps, loss {fmt.num(tr['first_loss'], 4, 'g')} → {fmt.num(tr['final_loss'], 4, 'g')} "
         f"(eval loss {fmt.num(tr['final_eval_loss'], 4, 'g')}), {tr['status']}, {fmt.num(tr['seconds'], 4, 'g')} s. "
         "Hyperparameters: `" + json.dumps(tr["hyperparameters"], sort_keys=True) + "`.",
         f"4. **Judge.** base, tuned and {name} scored side by side in this stage on the same items (lm-eval through "
         "llama-server, f16), paired.", "",
         "| cause | pool items (tuned) | mined |", "|---|---|---|"]
    for c, row in mined["by_cause"].items():
        L.append(f"| {c} | {row['pool_items']} | {row['chosen']} |")
    L += ["", f"## base vs tuned vs {name}", ""]
    for t in m["judged_tasks"]:
        label = "test split" if t == main else "out-of-distribution sample"
        n = m["scores"]["tuned"][t][head]["n"] if head in m["scores"]["tuned"][t] else "?"
        L += [f"**{t}** ({label}, {n} items)", "",
              f"| metric | base | tuned | {name} | {name} − tuned | tuned − base |", "|---|---|---|---|---|---|"]
        for k in keys:
            cells = [fmt.ci(m["scores"][x][t].get(k)) for x in models]
            L.append(f"| {k} | " + " | ".join(cells) + f" | {fmt.diff(m['comparisons'][f'{name}-vs-tuned'].get(t, {}).get(k))}"
                     f" | {fmt.diff(m['comparisons']['tuned-vs-base'].get(t, {}).get(k))} |")
        L.append("")
    general = m.get("general_task")
    if general and general in m["scores"].get(name, {}):
        g = m["comparisons"][f"{name}-vs-tuned"].get(general, {})
        metric = next(iter(g), None)
        if metric:
            L += [f"Forgetting check ({general}): tuned {fmt.ci(m['scores']['tuned'][general][metric])}, {name} "
                  f"{fmt.ci(m['scores'][name][general][metric])}; {name} − tuned {fmt.diff(g[metric])}.", ""]
    L += ["## Gates", "", "| gate | measured | power | verdict |", "|---|---|---|---|"]
    for v in m["gates"]:
        g = m["gates_declared"][v["gate"]]
        pw = v.get("power")
        power = (f"n={pw['n']}: detects {pw['detectable']:.3f} (80%)" if pw else "–")
        L.append(f"| {gates_mod.describe(g, main)} | {v['model']} vs {v['baseline']}: {v['what']}: "
                 f"{fmt.diff(v) if 'diff' in v else '–'} | {power} | "
                 + ("pass" if v["passed"] else "**FAIL**: " + "; ".join(v["reasons"])) + " |")
    L += ["", f"{name} is kept only when every gate passes (`iterate.gates`; none declared: {head} gain with its "
          "95% interval above zero, against tuned).", ""]
    png = chart_causes(a["causes"], models, page.out)
    cause_lines = quality.causes_section({"models": {x: {} for x in models}, "task": task}, a["causes"])
    if cause_lines:
        L += [line.replace("## Failure causes", "## Failure causes: base, tuned, " + name, 1) for line in cause_lines]
    if png:
        L += [f"![failure causes per model]({png})", ""]
    oc = a.get("ood_causes")
    if oc and oc.get("causes"):
        L += ["### Out of distribution", "", f"| cause | tuned | {name} | {name} − tuned |", "|---|---|---|---|"]
        ch = oc["changes"].get(f"{name}-vs-tuned", {})
        for c in oc["causes"]:
            L.append(f"| {c} | {oc['models']['tuned']['by_cause'][c]['items']} | "
                     f"{oc['models'][name]['by_cause'][c]['items']} | {fmt.diff(ch.get(c))} |")
        L.append("")
    t = m["timings"]
    L += ["## Time", "", f"The whole stage took {fmt.num(m['seconds'], 4, 'g')} s: scoring tuned (pool + judged items) "
          f"{fmt.num(t['tuned']['seconds'], 4, 'g')} s, training {fmt.num(tr['seconds'], 4, 'g')} s, scoring base "
          f"{fmt.num(t['base']['seconds'], 4, 'g')} s and {name} {fmt.num(t[name]['seconds'], 4, 'g')} s. Dataset version "
          f"`{m['dataset_version']}`; the mined items are `mined.jsonl` in the stage's folder.", ""]
    (page.out / "iteration.md").write_text("\n".join(L) + "\n")
    return {"iteration": "iteration.md", **({"iteration_chart": png} if png else {})}
