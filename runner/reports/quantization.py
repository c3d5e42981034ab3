"""quantization.md and its trade-off chart, from the quantize stage's measurements only: size, bits per weight,
load time, llama-bench speed, peak RSS and quality (with CIs) for f16 and every quant; the gate verdicts;
what was lost where (per field or class); and the failure cases that appear only after quantization."""
from __future__ import annotations

import json
from pathlib import Path

from runner.quality import eval_analysis as ea
from runner.reports import fmt


def analysis(details: dict[str, list[dict]], quality: dict, iters: int, seed: int, task) -> dict:
    """Per-unit (field, class) accuracy of each quant paired against f16, and the items each quant got worse
    than f16."""
    unit = task.scorer.UNIT
    per_field = ea.breakdowns(details, "f16", iters, seed, task).get(unit, {}) if len(details) > 1 and unit else {}
    f16 = {r["doc_id"]: r for r in details.get("f16", [])}
    new_failures = {}
    for q, rows in details.items():
        if q == "f16":
            continue
        cases = []
        for r in rows:
            ref = f16.get(r["doc_id"])
            right = sum(o == "correct" for o in r["outcomes"].values())
            ref_right = sum(o == "correct" for o in ref["outcomes"].values())
            if right < ref_right:
                lost = [f for f, o in r["outcomes"].items() if o != "correct" and ref["outcomes"][f] == "correct"]
                cases.append({"id": r["id"], "doc_id": r["doc_id"], "fields_right": right, "f16_fields_right": ref_right,
                              "lost_fields": {f: r["outcomes"][f] for f in lost}, "document": r["document"],
                              "gold": r["gold"], "f16": ref["prediction"], "quant": r["prediction"]})
        new_failures[q] = sorted(cases, key=lambda c: (c["fields_right"] - c["f16_fields_right"], c["doc_id"]))
    return {"per_field": per_field, "unit": unit, "new_failures": new_failures}


def stats_worse(c: dict) -> bool:
    """The paired interval lies below zero (none exists for a single item)."""
    return c.get("high") is not None and c["high"] < 0


def chart(metrics: dict, out: Path) -> str | None:
    q, head = metrics["quality"], metrics["task"]["headline"]
    types = [t for t in metrics["files"] if t in q and q[t]["ci"].get(head, {}).get("value") is not None]
    if len(types) < 2:
        return None
    with fmt.figure(out / "quantization.png", 1, 2, figsize=(10, 3.8)) as (fig, (a, b)):
        for t in types:
            mb = metrics["files"][t]["bytes"] / 1e6
            ci = q[t]["ci"][head]
            lo, hi = (ci["low"], ci["high"]) if ci.get("low") is not None else (ci["value"], ci["value"])
            a.errorbar([mb], [ci["value"]], yerr=[[ci["value"] - lo], [hi - ci["value"]]], fmt="o",
                       capsize=3, label=t)
            bench = metrics["files"][t].get("bench")
            if bench:
                b.bar(t, bench.get("gen_tokens_per_s", 0), yerr=bench.get("gen_tokens_per_s_std", 0), capsize=3)
        a.set_xlabel("file size (MB)")
        a.set_ylabel(f"{head} (95% CI)")
        a.set_title("quality vs size")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
        b.set_ylabel("decode tokens/s (llama-bench)")
        b.set_title(f"speed, {next(iter(metrics['files'].values())).get('bench', {}).get('threads', '?')} threads")
        b.grid(axis="y", alpha=0.3)
    return "quantization.png"


RERUN = "f16-rerun"  # the quantize stage's second f16 pass (runner/stages/quantize.py)


def _n(x, nd=1) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def write(page: fmt.Page) -> dict[str, str]:
    """page.analysis: per-unit losses and the failures new after quantization (`analysis()` above)."""
    out, metrics, analysis = page.out, page.metrics, page.analysis
    png = chart(metrics, out)
    files, q, verdicts = metrics["files"], metrics["quality"], metrics["verdicts"]
    g = metrics["gate"]
    head, second = metrics["task"]["key_metrics"][:2]
    unit = metrics["task"].get("unit") or "answer"
    margin = g.get("margin")
    rule = (f"non-inferiority of the share of right {unit} decisions against f16 on the same items: the one-sided "
            f"{1 - g.get('alpha', 0.05):.0%} upper bound of the drop must be <= {margin}" if margin is not None else
            "")
    extra = (f"for {', '.join(g['metrics'])}, the 95% CI upper bound of the drop must be <= {g['max_drop']}"
             if g.get("metrics") else "")
    if g.get("no_significant_drop"):
        extra = "; and ".join(x for x in (extra, f"{', '.join(g['no_significant_drop'])} must not be significantly worse "
                                          "(the 95% CI of quant − f16 wholly below zero fails)") if x)
    rerun = q.get(RERUN) or {}
    slots = (rerun.get("served") or {}).get("concurrency")
    scored = (f" on {slots} slot{'s' if slots != 1 else ''}, f16 scored again the same way as the gate's reference"
              + (" (one slot: every scoring of a file gives the same answers, so the verdict repeats)" if slots == 1
                 else "") if rerun.get("vs_eval") else "")
    L = ["# Quantization", "",
         f"Model `{metrics['model']}`" + (" (the iterate stage's model: [iteration.md](iteration.md))"
                                          if metrics.get("model_from") == "iterate" else "")
         + "; each quant scored on the same test items with the same prompts as f16, served "
         f"by llama-server{scored}. Gate: {'; and '.join(x for x in (rule, extra) if x)}.", "",
         f"**Deployment model: {metrics['chosen']}**: {metrics['chosen_why']}.", "",
         f"| type | MB | bits/weight | load s | prompt tok/s | decode tok/s | docs/s served | engine s/doc | "
         f"server peak RSS MB | {head} | {second} |",
         "|---" * 11 + "|"]
    for t, f in files.items():
        b = f.get("bench", {})
        ci = q.get(t, {}).get("ci", {})
        sp = q.get(RERUN if t == "f16" else t, {}).get("served")
        L.append(f"| {t} | {f['bytes'] / 1e6:.1f} | {_n(b.get('bits_per_weight'), 2)} | {_n(f.get('load_s'), 2)} | "
                 f"{_n(b.get('prompt_tokens_per_s'))} ± {_n(b.get('prompt_tokens_per_s_std'))} | "
                 f"{_n(b.get('gen_tokens_per_s'))} ± {_n(b.get('gen_tokens_per_s_std'))} | "
                 f"{_n((sp or {}).get('docs_per_s'), 3)} | {_n((sp or {}).get('engine_s_per_doc'), 2)} | "
                 f"{_n(f.get('peak_rss_mb'))} | {fmt.ci(ci.get(head))} | {fmt.ci(ci.get(second))} |")
    L += ["", "Prompt and decode tok/s: llama-bench (same threads for every file, mean ± stddev over repetitions). "
          "docs/s served: the test items over the wall time of their scoring pass (lm-eval's start included, "
          f"{next((x['served']['concurrency'] for x in q.values() if x.get('served')), '?')} requests at a time); engine s/doc: llama-server's prompt + generation "
          "seconds per document (its /metrics counters). f16's speed is from serving it again beside the quants.", ""]
    rows = [(t, verdicts[t]) for t in files if t in verdicts]
    noise = q.get(RERUN, {}).get("noise")
    if rows or noise:
        L += ["## The gate", "",
              f"| type | {unit} decisions | right, f16 → quant | items that differ | drop | upper bound | power | "
              f"items for {g.get('power', 0.8):.0%} power | verdict |", "|---" * 9 + "|"]
        for t, v in ([(RERUN, {"non_inferiority": noise, "passed": None})] if noise else []) + rows:
            ni = v.get("non_inferiority") or {}
            if not ni:
                continue
            verdict = ("noise floor (not gated)" if v["passed"] is None else "pass" if v["passed"] else
                       "**fail**: " + "; ".join(v["reasons"]))
            L.append(f"| {t} | {ni['decisions']} | {_n(ni.get('ref_share'), 3)} → {_n(ni.get('new_share'), 3)} | "
                     f"{ni['discordant_items']} of {ni['n']} | {_n(ni.get('drop'), 4)} | {_n(ni.get('upper'), 4)} | "
                     f"{_n(ni.get('power'), 2)} | {ni.get('n_required') or '–'} | {verdict} |")
        L += ["", f"Drop: f16's share of right {unit} decisions minus the quant's, on the same items; bootstrapped over "
              f"items (an item's decisions stay together). Power: for a true drop of zero, from the bootstrap's "
              f"standard error (none when no item differs). {RERUN}: f16 served again "
              + (f"on {slots} slot(s) and scored against the eval stage's f16 answers ({rerun['eval_slots']} "
                 "slots): what batching alone changes; the quants are gated against this second f16 scoring, made "
                 "the same way as theirs." if rerun.get("vs_eval") else
                 "and scored against the eval stage's f16 answers: what batching alone changes, the floor any "
                 "quant's drop sits on."), ""]
        checks = [(t, v["checks"]) for t, v in rows if v.get("checks")]
        for t, ch in checks:
            L.append(f"- {t}: " + "; ".join(f"{m} drop {c['drop']:+.3f} (95% CI upper bound {c['drop_ci_high']:+.3f}, "
                                            f"allowed {g['max_drop']})" for m, c in ch.items()))
        L += [""] if checks else []
    drops = [(t, q[t]["vs_f16"]) for t in files if t in q and q[t].get("vs_f16")]
    if drops:
        L += ["Metric drops against f16 (paired; reported, and gated only where quantize.gate lists the metric: a "
              "bound on its drop in metrics, or no significant drop in no_significant_drop): "]
        L += [f"- {t}: " + "; ".join(f"{m} {fmt.diff(c[m])}" for m in (head, second) if c.get(m)) for t, c in drops]
        L += [""]
    mixes = [(t, f) for t, f in files.items() if f.get("tensor_types")]
    if mixes:
        L += ["", "What llama-quantize wrote (tensors per type, from its log):", ""]
        for t, f in mixes:
            L.append(f"- {t}: " + ", ".join(f"{n} {k}" for k, n in f["tensor_types"].items())
                     + (f"; {f['fallbacks']} tensors fell back from the requested k-quant (row width not divisible "
                        "by 256)" if f.get("fallbacks") else ""))
    L += ["", "Load s: llama-server start until its first completion. f16's load time and RSS come from the eval stage's "
          "server.", ""]
    if png:
        L += [f"![trade-off]({png})", ""]
    pf = analysis.get("per_field", {})
    if pf:
        quants = [t for t in files if t != "f16" and t in q]
        unit = analysis.get("unit") or "field"
        L += [f"## What was lost where ({unit} accuracy, paired against f16)", "",
              f"| {unit} | f16 | " + " | ".join(quants) + " |", "|---" * (2 + len(quants)) + "|"]
        for field, row in pf.items():
            cells = []
            for t in quants:
                c = row.get(f"{t}-vs-f16")
                cells.append("–" if not c or c.get("diff") is None else
                             f"{row[t]['value']:.2f} ({c['diff']:+.3f})" + (" ▼" if stats_worse(c) else ""))
            L.append(f"| {field} | {row['f16']['value']:.2f} | " + " | ".join(cells) + " |")
        L += [""]
    for t, cases in ((t, c) for t, c in analysis.get("new_failures", {}).items() if t in files):
        L += [f"## Failures that appear only after quantization: {t} ({len(cases)} items worse than f16)", ""]
        for c in cases[:10]:
            L += [f"<details><summary><code>{c['id']}</code>: {c['f16_fields_right']} → {c['fields_right']} right; "
                  f"lost {', '.join(f'{k} ({v})' for k, v in c['lost_fields'].items())}</summary>", "",
                  "```text", c["document"], "```", "", "gold: `" + json.dumps(c["gold"], ensure_ascii=False) + "`", "",
                  "f16: `" + c["f16"].replace("`", "'").replace("\n", " ")[:600] + "`", "",
                  f"{t}: `" + c["quant"].replace("`", "'").replace("\n", " ")[:600] + "`", "", "</details>"]
        L += [""]
    (out / "quantization.md").write_text("\n".join(L) + "\n")
    return {"report": "quantization.md", **({"chart": png} if png else {})}
