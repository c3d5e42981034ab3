"""quality.md, the quality evidence pack, and its charts: written from the eval stage's metrics and analysis
only (every number comes from lm-eval's per-sample logs of this run)."""
from __future__ import annotations

from pathlib import Path

from runner.quality import gates as gates_mod
from runner.reports import fmt

CATEGORY_TEXT = {"invalid_json": "no parsable JSON object", "format_error": "value breaks the schema's format",
                 "hallucinated": "value not in the document", "missing": "null where the document has a value",
                 "spurious": "a value where the document has none", "wrong_value": "wrong span of the document",
                 "invalid_label": "the answer is not one of the labels", "wrong_label": "another label",
                 "empty": "no answer", "low_overlap": "chrF below the task's min_chrf"}


def _label(task: dict, dim: str) -> str:
    """What a breakdown dimension's numbers are."""
    return "accuracy" if dim == task.get("unit") else task["headline"]


def _v(x, nd=3) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def _pairs(row: dict) -> dict:
    return {k.split("-vs-")[0]: v for k, v in row.items() if "-vs-" in k}


def chart_metrics(metrics: dict, out: Path) -> str | None:
    main = metrics["task"]["name"]
    names = [n for n in metrics["task"]["metrics"] if n != "length_ratio"]
    models = [m for m, d in metrics["models"].items() if main in d["tasks"]]
    if not models:
        return None
    with fmt.figure(out / "quality_metrics.png", figsize=(9, 3.6)) as (fig, ax):
        width = 0.8 / len(models)
        for i, m in enumerate(models):
            ci = metrics["models"][m]["tasks"][main]["ci"]
            vals = [ci[n]["value"] if ci.get(n) and ci[n]["value"] is not None else 0 for n in names]
            err = [[max(0, v - (ci[n]["low"] if ci.get(n) and ci[n]["low"] is not None else v)) for v, n in zip(vals, names)],
                   [max(0, (ci[n]["high"] if ci.get(n) and ci[n]["high"] is not None else v) - v) for v, n in zip(vals, names)]]
            ax.bar([x + i * width for x in range(len(names))], vals, width, yerr=err, capsize=2, label=m)
        ax.set_xticks([x + width * (len(models) - 1) / 2 for x in range(len(names))], names, fontsize=8)
        top = max([1.0] + [(metrics["models"][m]["tasks"][main]["ci"].get(n) or {}).get("high") or 0
                           for m in models for n in names])
        ax.set_ylim(0, top * 1.05)
        ax.set_title(f"{main} on the test split (95% bootstrap CI)")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    return "quality_metrics.png"


def chart_breakdowns(breakdowns: dict, out: Path, task: dict) -> str | None:
    dims = [d for d in breakdowns if breakdowns.get(d)]  # field or class, the task's slice columns, length
    if not dims:
        return None
    with fmt.figure(out / "quality_breakdowns.png", 1, len(dims), figsize=(4 * len(dims), 3.6), squeeze=False) as (fig, axes):
        for ax, dim in zip(axes[0], dims):
            rows = breakdowns[dim]
            keys = list(rows)
            models = [m for m in next(iter(rows.values())) if "-vs-" not in m]
            width = 0.8 / max(1, len(models))
            for i, m in enumerate(models):
                vals = [rows[k][m]["value"] or 0 for k in keys]
                err = [[max(0, v - (rows[k][m].get("low") if rows[k][m].get("low") is not None else v)) for v, k in zip(vals, keys)],
                       [max(0, (rows[k][m].get("high") if rows[k][m].get("high") is not None else v) - v) for v, k in zip(vals, keys)]]
                ax.bar([x + i * width for x in range(len(keys))], vals, width, yerr=err, capsize=1.5, label=m)
            ax.set_xticks([x + width * (len(models) - 1) / 2 for x in range(len(keys))],
                          [f"{k} (n={rows[k][models[0]]['n']})" for k in keys], rotation=60, fontsize=7)
            ax.set_ylim(0, max([1.0] + [rows[k][m]["value"] or 0 for k in keys for m in models]) * 1.05)
            ax.set_title(f"by {dim} ({_label(task, dim)}, 95% CI)", fontsize=9)
            ax.grid(axis="y", alpha=0.3)
        axes[0][0].legend(fontsize=7)
    return "quality_breakdowns.png"


def _where(breakdowns: dict, model: str, task: dict) -> list[str]:
    """Sentences on where `model` changed against the baseline, from the paired breakdowns."""
    lines = []
    for dim, rows in breakdowns.items():
        label = "length bucket" if dim == "length" else dim
        diffs = [(k, _pairs(r).get(model)) for k, r in rows.items()]
        diffs = [(k, c) for k, c in diffs if c and c.get("diff") is not None]
        if not diffs:
            continue
        up = [(k, c) for k, c in diffs if c["low"] is not None and c["low"] > 0]
        down = [(k, c) for k, c in diffs if c["high"] is not None and c["high"] < 0]
        best = max(diffs, key=lambda kc: kc[1]["diff"])
        worst = min(diffs, key=lambda kc: kc[1]["diff"])
        lines.append(f"- By {label}: significantly better on {len(up)} of {len(diffs)}"
                     + (f", worse on {', '.join(k for k, _ in down)}" if down else ", worse on none")
                     + f"; largest change {best[0]} ({best[1]['diff']:+.3f}), smallest {worst[0]} "
                       f"({worst[1]['diff']:+.3f}).")
        if dim != task.get("unit"):
            vals = [(k, rows[k][model]["value"]) for k in rows if rows[k].get(model, {}).get("value") is not None]
            if vals:
                lo = min(vals, key=lambda kv: kv[1])
                lines[-1] += (f" Weakest {label} for {model}: {lo[0]} ({task['headline']} {lo[1]:.3f}, "
                              f"n={rows[lo[0]][model]['n']}).")
    return lines


def write(page: fmt.Page) -> dict[str, str]:
    """page.analysis: the eval stage's analysis.json (breakdowns, failures, pii, gap, confusion)."""
    out, metrics, analysis, cfg = page.out, page.metrics, page.analysis, page.recipe["eval"]
    main = metrics["task"]["name"]
    charts = {k: v for k, v in (("quality_metrics_png", chart_metrics(metrics, out)),
                                 ("quality_breakdowns_png", chart_breakdowns(analysis.get("breakdowns", {}), out,
                                                                             metrics["task"])))
              if v}
    models = list(metrics["models"])
    base = "base" if "base" in models else None
    tuned = [m for m in models if m != "base"]
    L = ["# Quality evidence", "",
         f"- dataset version `{metrics.get('dataset_version')}`; backend `{metrics['backend']}`; "
         f"bootstrap {cfg['bootstrap_iters']} resamples, 95% percentile intervals; paired differences resample "
         "the same items for both models.",
         "- answers are " + ("bit-exact reproducible (one llama-server slot)" if metrics.get("bit_reproducible")
                             else f"scored {cfg['concurrency']} at a time, batched by llama-server, whose kernels "
                             "are not batch-invariant: a rerun can change a few greedy answers in their last tokens "
                             "(set eval.concurrency: 1 for bit-exact reruns)") + ".",
         "- models: " + ", ".join(f"`{m}` ({metrics['models'][m].get('model_sha256', '–')[:12]})" for m in models),
         ""]
    # comparison table
    main_metrics = metrics["task"]["metrics"]
    if any(main in metrics["models"][m]["tasks"] for m in models):
        n = next(metrics["models"][m]["tasks"][main]["samples"] for m in models if main in metrics["models"][m]["tasks"])
        L += [f"## {main} (test split, {n} items)", "", "| metric | " + " | ".join(models) + " | " +
              " | ".join(f"{m} − {base}" for m in tuned if base) + " |",
              "|---" * (1 + len(models) + (len(tuned) if base else 0)) + "|"]
        for k in main_metrics:
            row = [fmt.ci(metrics["models"][m]["tasks"].get(main, {}).get("ci", {}).get(k)) for m in models]
            if base:
                row += [fmt.diff(metrics["comparisons"].get(m, {}).get(main, {}).get(k)) for m in tuned]
            L.append(f"| {k} | " + " | ".join(row) + " |")
        L += ["", f"▲/▼: the 95% CI of the difference excludes zero (improved / worse). Paired-bootstrap p-values "
              f"cannot go below 2/(B+1) = {2 / (cfg['bootstrap_iters'] + 1):.4f}. Binary metrics also get McNemar's "
              "exact test:", ""]
        for m in tuned:
            for k, c in metrics["comparisons"].get(m, {}).get(main, {}).items():
                if "mcnemar" in c:
                    mc = c["mcnemar"]
                    L.append(f"- {m} vs {base}, {k}: {mc['b_only']} items right only for {m}, {mc['a_only']} only "
                             f"for {base}; p={mc['p']:.3g}")
        L += [""]
        if "quality_metrics_png" in charts:
            L += [f"![metrics]({charts['quality_metrics_png']})", ""]
    L += ood_section(metrics, page.recipe)
    L += baselines_section(metrics)
    L += classical_section(metrics, analysis.get("classical"))
    # where
    bd = analysis.get("breakdowns", {})
    if bd and base:
        L += ["## Where it changed", ""]
        for m in tuned:
            L += [f"**{m} vs {base}**", ""] + _where(bd, m, metrics["task"]) + [""]
        for dim, rows in bd.items():
            if not rows:
                continue
            label = _label(metrics["task"], dim)
            L += [f"### By {dim} ({label})", "", f"| {dim} | n | " + " | ".join(models) + " | " +
                  " | ".join(f"{m} − {base}" for m in tuned) + " |", "|---" * (2 + len(models) + len(tuned)) + "|"]
            for k, r in rows.items():
                n = r[models[0]]["n"]
                L.append(f"| {k} | {n} | " + " | ".join(fmt.ci(r.get(m), 2) for m in models) + " | " +
                         " | ".join(fmt.diff(_pairs(r).get(m)) for m in tuned) + " |")
            L += [""]
        if "quality_breakdowns_png" in charts:
            L += [f"![breakdowns]({charts['quality_breakdowns_png']})", ""]
    # classification: confusion matrices and per-class precision/recall
    for m, c in analysis.get("confusion", {}).items():
        cols = [*c["labels"], "invalid"]
        L += [f"### Confusion matrix of {m} (rows: gold, columns: answered)", "",
              "| gold \\ answered | " + " | ".join(cols) + " | precision | recall | F1 |", "|---" * (4 + len(cols)) + "|"]
        for g in c["labels"]:
            pc = c["per_class"][g]
            L.append(f"| {g} | " + " | ".join(str(c["matrix"][g][p]) for p in cols) +
                     f" | {_v(pc['precision'])} | {_v(pc['recall'])} | {_v(pc['f1'])} |")
        L += [""]
    L += causes_section(metrics, analysis.get("causes") or {})
    # failures
    for m, f in analysis.get("failures", {}).items():
        counts = f["counts"]
        total_fields = sum(counts["fields"].values())
        unit = metrics["task"].get("unit") or "answer"
        units_word = unit + ("es" if unit.endswith("s") else "s")
        L += [f"## Failure cases of {m}", "",
              f"Wrong {units_word} by category ({total_fields} wrong (item, {unit}) pairs); items by their most severe "
              "category:", "", f"| category | meaning | {units_word} | items |", "|---|---|---|---|"]
        for c in counts["fields"]:
            L.append(f"| {c} | {CATEGORY_TEXT.get(c, '')} | {counts['fields'][c]} | {counts['items'][c]} |")
        worse = sum(c["worse_than_baseline"] for c in f["cases"])
        top = max(counts["fields"], key=counts["fields"].get) if total_fields else None
        L += ["", (f"Most wrong {units_word} are **{top}** ({counts['fields'][top]} of {total_fields}). " if top else "")
              + f"{len(f['cases'])} cases harvested; {worse} where {m} got fewer {units_word} right than {base} come first.",
              ""]
        for c in sorted(counts["fields"], key=counts["fields"].get, reverse=True):
            hit = counts.get("by_field", {}).get(c) or {}
            if hit:
                L.append(f"- {c}: " + ", ".join(f"{k} {v}" for k, v in sorted(hit.items(), key=lambda kv: -kv[1])))
        L += [""]
        for c in f["cases"]:
            units = c["fields_right"] + len(c["wrong_fields"])
            flag = f" — worse than {base} ({c['baseline_fields_right']} → {c['fields_right']} {units_word} right)" \
                if c["worse_than_baseline"] else f" ({c['fields_right']}/{units} {units_word} right)"
            L += [f"<details><summary><code>{c['id']}</code> {c['category']}, {'/'.join(c['slices'].values())}{flag}"
                  "</summary>", "", f"Wrong {units_word}: " + ", ".join(f"{k} ({v})" for k, v in c["wrong_fields"].items()),
                  "", "```text", c["document"], "```", "", "gold: `" + _compact(c["gold"]) + "`", "",
                  "prediction: `" + c["prediction"].replace("`", "'").replace("\n", " ")[:600] + "`", "", "</details>"]
        L += [""]
    # general capability
    gen = cfg.get("general_task")
    if gen and any(gen in metrics["models"][m]["tasks"] for m in models):
        L += [f"## General capability ({gen}: forgetting check)", "",
              "| model | accuracy | answered as JSON | empty answers |", "|---|---|---|---|"]
        for m in models:
            t = metrics["models"][m]["tasks"].get(gen)
            if t:
                L.append(f"| {m} | {fmt.ci(t['ci'].get('accuracy'))} | {fmt.ci(t['ci'].get('answered_as_json'))} | "
                         f"{t.get('empty_answers', '–')} of {t['samples']} |")
        for m in tuned:
            c = metrics["comparisons"].get(m, {}).get(gen, {}).get("accuracy")
            if c:
                verdict = ("forgetting: significantly worse" if c["high"] is not None and c["high"] < 0 else
                           "no significant change" if not (c["low"] is not None and c["low"] > 0) else
                           "significantly better")
                L.append(f"\n{m} − {base}: {fmt.diff(c)}: {verdict} on {c['n']} items.")
        L += [""]
    # gates
    if metrics.get("gates") is not None and cfg.get("gates"):
        L += ["## Gates", "", "| gate | model | measured | power | verdict |", "|---|---|---|---|---|"]
        for v in metrics["gates"]:
            g = cfg["gates"][v["gate"]]
            measured = f"{v['what']}: {fmt.diff(v) if 'diff' in v else '–'}"
            vs = "" if v.get("baseline", "base") == "base" else f" vs {v['baseline']}"
            pw = v.get("power")
            power = (f"n={pw['n']}: detects {pw['detectable']:.3f} (80%); {pw['n_for_bound']} items to detect "
                     f"{pw['bound']}" if pw and pw.get("n_for_bound") else "–")
            L.append(f"| {gates_mod.describe(g, main)} | {v['model']}{vs} | {measured} | {power} | "
                     + ("pass" if v["passed"] else "**FAIL**: " + "; ".join(v["reasons"])) + " |")
        L += ["", "Power: the smallest true difference the comparison detects 80% of the time (two-sided 5%, 2.8 "
              "standard errors of the paired difference), and the items it would take to detect the gate's own "
              "bound. A gate whose bound is below what its n detects cannot tell a pass from noise.", ""]
    # fidelity
    if metrics.get("fidelity"):
        L += ["## Fidelity: served f16 GGUF vs the HF model", ""]
        for m, f in metrics["fidelity"].items():
            L.append(f"- {m}: {f['items']} items through lm-eval's hf backend; {f['identical_text']} identical "
                     f"answers; {f['field_disagreement']:.1%} of (item, {metrics['task'].get('unit') or 'answer'}) "
                     "pairs judged differently "
                     f"(tolerance {f['tolerance']:.0%}); {f['seconds']} s.")
        L += [""]
    # cost
    L += ["## Cost of the evaluation", "", "| model | wall s | prompt tokens | generated tokens |", "|---|---|---|---|"]
    for m in models:
        d = metrics["models"][m]
        L.append(f"| {m} | {d.get('seconds', '–')} | {int(d['prompt_tokens_total']) if 'prompt_tokens_total' in d else '–'}"
                 f" | {int(d['tokens_predicted_total']) if 'tokens_predicted_total' in d else '–'} |")
    L += [""]
    # risks
    L += ["## Risks", ""]
    head = metrics["task"]["headline"]
    for m, g in analysis.get("gap", {}).items():
        tr, te = g[head]["train"], g[head]["test"]
        if tr.get("value") is not None and te.get("value") is not None:
            gap = tr["value"] - te["value"]
            L.append(f"- Overfitting ({m}): {head} on {tr['n']} training items {fmt.ci(tr)} vs {te['n']} test items "
                     f"{fmt.ci(te)}: gap {gap:+.3f}" + (" — the intervals do not overlap" if tr["low"] is not None and
                                                    te["high"] is not None and tr["low"] > te["high"] else "") + ".")
    for m in models:
        gr = metrics["models"][m]["tasks"].get(main, {}).get("ci", {}).get("grounding_rate")
        if gr:
            L.append(f"- Hallucination ({m}): grounding rate {fmt.ci(gr)} (share of predicted values found in the "
                     "document)" + ("; no values predicted" if gr.get("value") is None else "") + ".")
    for m, p in analysis.get("pii", {}).items():
        L.append(f"- Sensitive content ({m}): {p['answers_with_pii']} answers contain PII-like spans "
                 f"({', '.join(f'{k}: {v}' for k, v in p['by_type'].items()) or 'none'}); "
                 f"{p['not_in_document']} not copied from the document.")
    L += [""]
    (out / "quality.md").write_text("\n".join(L) + "\n")
    return {"quality": "quality.md", **charts}


def ood_section(metrics: dict, recipe: dict) -> list[str]:
    """The out-of-distribution split (data.split.holdout) beside the test split, per model."""
    task = metrics["task"]
    ood, main = task.get("ood_task"), task["name"]
    models = [m for m in metrics["models"] if ood and ood in metrics["models"][m]["tasks"]]
    if not models:
        return []
    held = ((recipe.get("data") or {}).get("split") or {}).get("holdout") or {}
    n = metrics["models"][models[0]]["tasks"][ood]["samples"]
    tuned = [m for m in models if m != "base"]
    L = [f"## Out of distribution ({ood}, {n} items)", "",
         "Documents whose " + " or ".join(f"{c} is {'/'.join(map(str, v))}" for c, v in held.items())
         + ": the data stage held every such record out of train, eval and test, so no model was tuned on them.", "",
         "| metric | " + " | ".join(f"{m} test → ood" for m in models) + " | "
         + " | ".join(f"{m} − base (ood)" for m in tuned if "base" in models) + " |",
         "|---" * (1 + len(models) + (len(tuned) if "base" in models else 0)) + "|"]
    for k in task["metrics"]:
        cells = [f"{fmt.ci(metrics['models'][m]['tasks'].get(main, {}).get('ci', {}).get(k), 2)} → "
                 f"{fmt.ci(metrics['models'][m]['tasks'][ood]['ci'].get(k), 2)}" for m in models]
        diffs = [fmt.diff(metrics["comparisons"].get(m, {}).get(ood, {}).get(k)) for m in tuned] if "base" in models else []
        L.append(f"| {k} | " + " | ".join(cells) + " | " + " | ".join(diffs) + " |")
    return L + ["", "test → ood: the same model on different items, so the two intervals are independent, not paired.",
                ""]


def baselines_section(metrics: dict) -> list[str]:
    """What fine-tuning buys over prompting alone: every prompting baseline (few-shot, constrained decoding) and
    every fine-tuned model on the same test items, and each model's paired difference against the strongest."""
    strongest, bls = metrics.get("strongest_baseline"), metrics.get("baselines") or {}
    if not strongest or not bls:
        return []
    task = metrics["task"]
    main, keys = task["name"], [k for k in task["key_metrics"]]
    if task["kind"] == "extraction" and "consistent" in task["metrics"]:
        keys.append("consistent")
    rows = {"base": {"shots": 0, "constrained": False, **metrics["models"]["base"]}, **bls}
    tuned = [m for m in metrics["models"] if m != "base"]
    L = ["## Against prompting baselines", "",
         "The base model prompted better, on the same test items: few-shot examples (the first k of the training "
         "split, as user/assistant turns), decoding constrained to the task's answer contract (llama-server's "
         "`response_format`) and/or an instruction of its own (`eval.baselines[].system_prompt`, e.g. what each "
         "label means) instead of the task's.", ""] + early_stop_lines(metrics.get("baselines_stop_early")) + [
         "| model | shots | constrained | instruction | n | " + " | ".join(keys) + " |", "|---" * (5 + len(keys)) + "|"]
    for name, d in rows.items():
        t = d["tasks"].get(main, {})
        L.append(f"| {name} | {d.get('shots', 0)} | {'yes' if d.get('constrained') else 'no'} | "
                 f"{'its own' if d.get('own_prompt') else 'the task’s'} | {t.get('samples', '')} | "
                 + " | ".join(fmt.ci(t.get("ci", {}).get(k)) for k in keys) + " |")
    for m in tuned:
        t = metrics["models"][m]["tasks"].get(main, {})
        L.append(f"| **{m}** (fine-tuned) | 0 | no | the task’s | {t.get('samples', '')} | "
                 + " | ".join(fmt.ci(t.get("ci", {}).get(k)) for k in keys) + " |")
    s = strongest["name"]
    L += ["", f"Strongest baseline by {strongest['metric']}: **{s}** ({fmt.num(strongest['value'])}).", ""]
    for m in tuned:
        c = (metrics.get("baseline_comparisons") or {}).get(s, {}).get(m) or {}
        if c:
            L += [f"| {m} − {s} | " + " | ".join(keys) + " |", "|---" * (1 + len(keys)) + "|",
                  "| paired difference | " + " | ".join(fmt.diff(c.get(k)) for k in keys) + " |", ""]
            sig = [k for k in keys if c.get(k, {}).get("improved")]
            L.append(f"What fine-tuning buys over prompting alone ({m}): "
                     + ("; ".join(f"{k} {c[k]['diff']:+.3f}" for k in keys if c.get(k, {}).get("diff") is not None))
                     + (f" — significant on {', '.join(sig)}." if sig else " — not significant on any."))
            L.append("")
    return L


def classical_verdict(name: str, model: str, c: dict) -> str:
    """One sentence from a paired difference (model − classical): who wins, by how much, and whether it is more
    than the sampling noise."""
    if not c or c.get("diff") is None:
        return f"{model} and {name}: not compared."
    d = f"{c['diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]"
    if c.get("improved"):
        return f"{model} beats {name}: {d}."
    if c.get("worse"):
        return f"**{model} does not beat {name}: {name} is better by {-c['diff']:.3f}** ({model} − {name} {d})."
    return f"{model} and {name} are not told apart on these items: {d} (the interval includes zero)."


def classical_section(metrics: dict, analysis: dict | None) -> list[str]:
    """eval.classical_baseline: the classical classifier against every model, overall and per slice value."""
    cb = metrics.get("classical_baseline")
    if not cb:
        return []
    task, name = metrics["task"], cb["name"]
    main, keys, head = task["name"], list(task["key_metrics"]), task["headline"]
    tuned = [m for m in metrics["models"] if m != "base"]
    settings = cb["settings"]
    L = ["## Against a classical baseline", "",
         f"`{name}`: {cb['tool']} (analyzer {settings['analyzer']}, n-grams {settings['ngram_range'][0]}-"
         f"{settings['ngram_range'][1]}, {cb['features']:,} features), fitted on the {cb['train_items']} training "
         f"items, C = {cb['C']:g} chosen on the eval split (accuracy per C: "
         + ", ".join(f"{c} {v:.3f}" for c, v in cb["dev_accuracy"].items()) + f"); {cb['seconds']:.1f} s on the "
         "CPU, fit and predict. The same test items as every model; it is reported, never gated: where it wins, "
         "routing those questions to it is the decision to make.", "",
         "| model | n | " + " | ".join(keys) + " |", "|---" * (2 + len(keys)) + "|"]
    rows = {name: cb, **metrics["models"]}
    for m, d in rows.items():
        t = d["tasks"].get(main, {})
        L.append(f"| {'**' + m + '**' if m == name else m} | {t.get('samples', '')} | "
                 + " | ".join(fmt.ci(t.get("ci", {}).get(k)) for k in keys) + " |")
    L += [""]
    for m in tuned:
        c = (metrics.get("classical_comparisons") or {}).get(m) or {}
        L += [f"| {m} − {name} | " + " | ".join(keys) + " |", "|---" * (1 + len(keys)) + "|",
              "| paired difference | " + " | ".join(fmt.diff(c.get(k)) for k in keys) + " |", "",
              classical_verdict(name, m, c.get(head) or {}), ""]
    bd = (analysis or {}).get("breakdowns") or {}
    for dim in task.get("slices", []):
        per = bd.get(dim) or {}
        if not per:
            continue
        L += [f"### {head} by {dim}: every model against `{name}`", "",
              f"| {dim} | n | {name} | " + " | ".join(metrics["models"]) + " | "
              + " | ".join(f"{m} − {name}" for m in tuned) + " | verdict |", "|---" * (4 + len(metrics["models"]) + len(tuned)) + "|"]
        for k, r in per.items():
            diffs = {m: r.get(f"{m}-vs-{name}") or {} for m in tuned}
            verdict = "; ".join(("wins" if c.get("improved") else "loses" if c.get("worse") else "tie")
                                + (f" ({m})" if len(tuned) > 1 else "") for m, c in diffs.items())
            L.append(f"| {k} | {r[name]['n']} | {fmt.ci(r.get(name), 2)} | "
                     + " | ".join(fmt.ci(r.get(m), 2) for m in metrics["models"]) + " | "
                     + " | ".join(fmt.diff(c) for c in diffs.values()) + f" | {verdict} |")
        L += ["", f"verdict: the fine-tuned model against `{name}` in that {dim} (paired 95% interval excludes zero: "
              "wins / loses; otherwise tie).", ""]
    return L


def early_stop_lines(early: dict | None) -> list[str]:
    """eval.baselines_stop_early: what the first look decided, and which items the baselines rest on."""
    if not early:
        return []
    level = f"{early['level']:.1%}"
    L = [f"**Stopped early: the prompting baselines rest on the first {early['after']} of the {early['of']} test "
         f"items.** At that look every gate that names one was already decided by its {level} paired interval "
         "(a Haybittle-Peto boundary: the final 95% error rate barely moves), so the rest were not scored (eval."
         "baselines_stop_early). base and the fine-tuned models are scored on every item; the strongest baseline and "
         "the paired differences against it are on those items." if early["stopped"] else
         f"A first look at {early['after']} of the {early['of']} test items left a gate undecided at the {level} "
         "level, so every prompting baseline was scored on every item (eval.baselines_stop_early).", ""]
    for c in early["checks"]:
        if c.get("decided") is None and "model" not in c:
            L.append(f"- gate {c['gate'] + 1}: {c['why']}: never decided early")
            continue
        L.append(f"- gate {c['gate'] + 1}, {c['model']} − {c['baseline']}, {c['metric']}: {fmt.num(c['diff'])} "
                 f"[{fmt.num(c['low'])}, {fmt.num(c['high'])}] at {level}, n={c['n']}, bound {c['bound']:+.2f}: "
                 + (c["decided"] or "undecided"))
    return L + [""]


def causes_section(metrics: dict, causes: dict) -> list[str]:
    """Why units are wrong, per model with intervals, the paired change per cause, where each cause concentrates
    and examples."""
    if not causes.get("causes"):
        return []
    strongest = (metrics.get("strongest_baseline") or {}).get("name")
    shown = [m for m in dict.fromkeys(["base", strongest, *[m for m in metrics["models"] if m != "base"]])
             if m and m in causes["models"]]
    changes = list(causes.get("changes") or {})
    unit = metrics["task"].get("unit") or "answer"
    L = ["## Failure causes", "",
         f"Why each wrong {unit} is wrong (the task kind's rules, most specific first). A cell: items with at least "
         f"one {unit} wrong for that cause, and their share of the {next(iter(causes['models'].values()))['n']} test "
         "items [95% CI]; the changes are paired on the same items (negative: fewer such items)."
         + "".join(f" {m} was scored on {causes['models'][m]['n']} of them (stopped early): its cell and its change "
                   "rest on those." for m in shown
                   if causes["models"][m]["n"] != next(iter(causes["models"].values()))["n"]), "",
         "| cause | meaning | " + " | ".join(shown) + " | " + " | ".join(c.replace("-vs-", " − ") for c in changes)
         + " |", "|---" * (2 + len(shown) + len(changes)) + "|"]
    for c, meaning in causes["causes"].items():
        cells = []
        for m in shown:
            b = causes["models"][m]["by_cause"][c]
            cells.append(f"{b['items']} ({fmt.ci(b['rate'], 2)})")
        L.append(f"| {c} | {meaning} | " + " | ".join(cells) + " | "
                 + " | ".join(fmt.diff(causes["changes"][k].get(c)) for k in changes) + " |")
    focus = causes.get("focus")
    if focus:
        L += ["", f"Where the causes of {focus} concentrate (the slice value with the highest lift over its share of "
              "the test items), and how much of the training split that value is:", ""]
        for c in causes["causes"]:
            b = causes["models"][focus]["by_cause"][c]
            if not b["items"]:
                continue
            units = ", ".join(f"{u} {n}" for u, n in sorted(b["by_unit"].items(), key=lambda kv: -kv[1]))
            w = (causes.get("why") or {}).get(c)
            where = (f"{w['cases']} of {w['of']} in {w['column']}={w['value']} ({w['test_share']:.0%} of the test items, "
                     f"{fmt.num(w['train_share'] * 100 if w['train_share'] is not None else None, 0)}% of the training "
                     f"split; lift {w['lift']})" if w else "no slice value holds 1.5x its share of the items: spread "
                     "across the slices")
            L.append(f"- **{c}** ({b['items']} items; {units}): {where}.")
    L += ["", "Examples (the first fine-tuned model's first):", ""]
    for c, exs in (causes.get("examples") or {}).items():
        for e in exs:
            L.append(f"- {c}: `{e['id']}` ({'/'.join(e['slices'].values())}, {e['model']}) {e['unit']}: gold "
                     f"`{_compact(e['gold'])}`, answered `{_compact(e['answer'])}`")
    return L + [""]


def _compact(obj) -> str:
    import json
    return json.dumps(obj, ensure_ascii=False)
