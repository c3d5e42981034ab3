"""data_audit.md and its PNG charts, written from what the data stage measured (nothing typed in)."""
from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

from runner.reports import fmt


def _pct(values: list[int], q: float):
    if not values:
        return "–"
    v = sorted(values)
    return v[min(len(v) - 1, int(q * (len(v) - 1) + 0.5))]


def _excerpt(text: str, n: int = 160) -> str:
    t = " ".join(text.split())
    return (t[:n] + "…") if len(t) > n else t


def _charts(out: Path, metrics: dict, parts: dict) -> list[str]:
    made = []
    with fmt.figure(out / "data_lengths.png", 1, 2, figsize=(9, 3.2)) as (fig, axes):
        for name, recs in parts.items():
            if recs:
                axes[0].hist([r["chars"] for r in recs], bins=30, alpha=0.6, label=name)
                axes[1].hist([r["tokens"] for r in recs], bins=30, alpha=0.6, label=name)
        axes[0].set_xlabel("document characters")
        axes[1].set_xlabel("tokens (prompt + answer, base tokenizer)")
        for ax in axes:
            ax.legend()
            ax.grid(alpha=0.3)
    made.append("data_lengths.png")

    steps = list(metrics["counts"].items())
    with fmt.figure(out / "data_steps.png", figsize=(8, 3.2)) as (fig, ax):
        ax.bar([s for s, _ in steps], [n for _, n in steps], color="#4a7")
        ax.set_ylabel("records after step")
        ax.tick_params(axis="x", rotation=30)
    made.append("data_steps.png")
    return made


def _sources(dataset: dict) -> list[str]:
    """Where the records came from: per source, what was read, filtered and skipped; per Debian package, its pin,
    where the .deb came from, its licence and how many questions its parser found."""
    L = ["## Sources", ""]
    read = dataset.get("read") or [{} for _ in dataset["sources"]]
    for i, (s, t) in enumerate(zip(dataset["sources"], read)):
        what = (f"`{s['path']}`" if s.get("path") else f"hub dataset `{s['hub_id']}`" if s.get("hub_id")
                else f"{len(s['debian']['packages'])} pinned Debian packages")
        where = (f", {t['filtered_out']} left out by `where` ({json.dumps(s['where'], ensure_ascii=False)})"
                 if s.get("where") else "")
        counts = (f": {t['rows']} rows read{where}, {t['no_output']} skipped for a null output "
                  f"field (`{s['mapping']['output']}`), **{t['records']} records**") if t else ""
        L += [f"{i + 1}. {what}{counts}."]
        if t.get("packages"):
            L += ["", "| package | version | sha256 | from | parser | questions | languages | licence |",
                  "|---|---|---|---|---|---|---|---|"]
            L += [f"| {p['name']} | {p['version']} | `{p['sha256'][:12]}` | {p['from']} | {p['parser']} | "
                  f"{p['questions']} | {', '.join(p['languages'])} | {p['license']} |" for p in t["packages"]]
            L += ["", "Every package is checked against its pinned sha256 before it is unpacked (`dpkg-deb -x`); the "
                  "full hashes are in the recipe and in `dataset.json`."]
    return L + [""]


def write(page: fmt.Page) -> dict[str, str]:
    """page.analysis: parts (split -> records), removed, clusters, findings, flags, dataset (the source)."""
    out, metrics, a = page.out, page.metrics, page.analysis
    parts, removed, findings, flags, dataset = a["parts"], a["removed"], a["findings"], a["flags"], a["dataset"]
    clusters = a["clusters"]
    charts = _charts(out, metrics, parts)
    L = ["# Data audit", "",
         f"Dataset version **`{metrics['dataset_version']}`** "
         f"({', '.join(f'{n}: {len(p)}' for n, p in parts.items())} records).", ""]
    how = (page.recipe.get("data") or {}).get("split", {})
    if how.get("method") == "hash":
        L += ["Split by a hash of the seed and each record's id (or group), `data.split.method: hash`: adding records "
              "never moves one already split; the sizes match the fractions in expectation only.", ""]
    held = how.get("holdout")
    if held:
        L += ["Out-of-distribution split `ood`: every record with " + " or ".join(
            f"{c} in {{{', '.join(map(str, v))}}}" for c, v in held.items()) + " is held out of train, eval and test "
            "(training never sees it); the eval stage scores a sample of it separately.", ""]
    if dataset.get("generator"):
        g = dataset["generator"]
        L += [f"Source: synthetic generator `{g['name']}`, seed {g['seed']}, {g['size']} raw records, defects "
              "injected at " + ", ".join(f"{k} {v:g}" for k, v in g["defects"].items() if v) + ".", ""]
    else:
        L += _sources(dataset)
    for e in metrics.get("targeted") or []:
        L += [f"Targeted training records (data.generator.targeted): **{e['added']}** added to train only, their gold "
              f"matching `{json.dumps(e['where'], ensure_ascii=False)}`" + (f" (aimed at {e['cause']})" if e.get("cause")
                                                                            else "")
              + f"; {e['matched']} of {e['scanned']} generated records (from index corpus + "
              f"{e['start']:,} on) matched, the first {e['cleaned']} were cleaned (removed: "
              + (", ".join(f"{k} {v}" for k, v in sorted(e["removed"].items())) or "none") + ").", ""]

    reasons = defaultdict(Counter)
    for r in removed:
        reasons[r["step"]][re.sub(r"\d[\d.,]*", "N", r["reason"].split(" (")[0].split(" as ")[0].split(" of ")[0])[:70]] += 1
    rates = metrics.get("throughput") or {}
    L += ["## Records through the steps", ""]
    if metrics.get("engine"):
        e = metrics["engine"]
        L += [f"Engine `{e['engine']}` ({e['workers']} workers" + (f", Ray {e['ray']} on {e['cluster']}" if "ray" in e
                                                                   else "") +
              f"); peak memory of the stage's processes {metrics['peak_rss_mb']:,.0f} MB. PII, labels and length run "
              "as one pass on the workers (as do normalization and MinHash): their seconds are the pass's wall time "
              "shared by the CPU each took. records/s: records into the step per second.", ""]
    L += ["| step | records after | removed here | flagged here | seconds | records/s |", "|---|---|---|---|---|---|"]
    step_map = {"normalize+min_chars": "empty", "exact_dedup": "exact_dedup", "near_dedup": "near_dedup", "pii": "pii",
                "labels": "labels", "length": "length", "datalab": "datalab", "split+leakage": "leakage"}
    for step, n in metrics["counts"].items():
        key = step_map.get(step, step)
        L.append(f"| {step} | {n} | {metrics['removed_by_step'].get(key, 0)} | "
                 f"{metrics['flagged_by_step'].get(key, 0)} | {metrics['step_seconds'].get(step, '')} | "
                 f"{(rates.get(step) or {}).get('records_per_s') or ''} |")
    L += ["", f"![records per step]({charts[1]})", "", "Removal reasons:", ""]
    for step, c in reasons.items():
        L.append(f"- **{step}**: " + "; ".join(f"{reason} ({n})" for reason, n in c.most_common(4)))
    for col, d in (metrics.get("duplicates_across") or {}).items():
        L.append(f"- duplicates across {col}: **{d['across']} of the {d['duplicates']}** removed duplicates copy a "
                 f"record of another {col}" + (" (" + ", ".join(f"{k} {n}" for k, n in list(d["pairs"].items())[:8])
                                               + ")" if d["pairs"] else "") + ".")

    if metrics.get("detectors"):
        L += ["", "## Detectors against the injected ground truth", "",
              "Recall and precision of each detector on the defects the generator injected (and the PII it printed).", "",
              "| detector | truth | detected | recall | precision |", "|---|---|---|---|---|"]
        for name, d in metrics["detectors"].items():
            L.append(f"| {name} | {d['truth']} | {d['detected']} | {d['recall'] if d['recall'] is not None else '–'} | "
                     f"{d['precision'] if d['precision'] is not None else '–'} |")
        below = metrics["detectors"]["near_duplicate"].get("below_target_injected")
        if below:
            L += ["", f"{below} injected near-copies ended below the target Jaccard and are not counted as near "
                  "duplicates (they are different enough to keep)."]

    L += ["", "## Lengths per split", "", "| split | records | chars p50 | chars p90 | chars max | tokens p50 | "
          "tokens p90 | tokens max |", "|---|---|---|---|---|---|---|---|"]
    for name, recs in parts.items():
        ch, tk = [r["chars"] for r in recs], [r["tokens"] for r in recs]
        L.append(f"| {name} | {len(recs)} | {_pct(ch, .5)} | {_pct(ch, .9)} | {max(ch, default='–')} | "
                 f"{_pct(tk, .5)} | {_pct(tk, .9)} | {max(tk, default='–')} |")
    L += ["", f"![lengths]({charts[0]})"]
    if metrics.get("labels"):  # classification: the label balance the split kept (stratified by label)
        labels = sorted({lab for per in metrics["labels"].values() for lab in per})
        L += ["", "## Labels per split", "", "| split | " + " | ".join(labels) + " |", "|---" * (1 + len(labels)) + "|"]
        L += [f"| {n} | " + " | ".join(str(per.get(lab, 0)) for lab in labels) + " |" for n, per in metrics["labels"].items()]
    if metrics.get("groups"):  # split by group: no group (e.g. a question and its translations) crosses splits
        g = metrics["groups"]
        across = g["across_splits"]
        L += ["", "## Groups per split", "", "Records that share a group (`data.sources[].mapping.group`) are split "
              "together, so no test item has a relative in training: " + ", ".join(
                  f"{n} {k}" for n, k in g["per_split"].items()) + " groups; **" + str(len(across)) + "** groups "
              "have records in more than one split" + (f" ({', '.join(across[:5])})" if across else "") + "."]

    L += ["", f"## Near-duplicate clusters ({len(clusters)})", ""]
    for c in clusters[:5]:
        sim = max((p[2] for p in c["pairs"]), default="")
        L += [f"- kept `{c['kept']}`, removed {', '.join(f'`{x}`' for x in c['removed'])} (Jaccard up to {sim})",
              f"  - kept: {_excerpt(c['example'][0], 120)}", f"  - removed: {_excerpt(c['example'][1], 120)}"]

    by_type = Counter()
    for fs in findings.values():
        for f in fs:
            by_type[(f["type"], f["action"])] += 1
    L += ["", "## PII and secrets", "", "Presidio pattern recognizers (no NLP model: person names are not "
          "detected), stdnum/phonenumbers validation, detect-secrets named plugins.", "",
          "| type | action | findings |", "|---|---|---|"]
    L += [f"| {t} | {a} | {n} |" for (t, a), n in sorted(by_type.items())] or ["| – | – | 0 |"]

    label_rows = [r for r in removed if r["step"] == "labels"] + [f for f in flags if f["step"] == "labels"]
    L += ["", f"## Label check failures ({len(label_rows)}: the task kind's checks on gold answers)", ""]
    L += [f"- `{r['id']}`: {r['reason'][:160]}" for r in label_rows[:8]]

    dl = metrics.get("datalab")
    if dl:
        L += ["", "## cleanlab Datalab (sentence embeddings, all-MiniLM-L6-v2)", "",
              f"{dl['sampled']} records embedded and checked in {dl['seconds']} s; {dl['outliers']} outliers below the "
              "threshold.", "", "| issue | records | score |", "|---|---|---|"]
        L += [f"| {k} | {v['num_issues']} | {v['score']:.3f} |" for k, v in dl["summary"].items()]
        outl = [f for f in flags if f["step"] == "datalab"] + [r for r in removed if r["step"] == "datalab"]
        L += [f"- outlier `{o['id']}`" for o in outl[:5]]

    L += ["", "## Examples of removed records", ""]
    shown = Counter()
    examples = []
    for r in removed:  # a spread over steps first, then the rest
        if shown[r["step"]] < 3:
            examples.append(r)
            shown[r["step"]] += 1
    examples += [r for r in removed if r not in examples][: max(0, 12 - len(examples))]
    L += ["| id | step | reason | document excerpt |", "|---|---|---|---|"]
    for r in examples[:15]:
        L.append(f"| `{r['id']}` | {r['step']} | {r['reason'][:90]} | {_excerpt(r['document'], 90).replace('|', '/')} |")
    (out / "data_audit.md").write_text("\n".join(L) + "\n")
    return {"audit": "data_audit.md", **{c.removesuffix(".png"): c for c in charts}}
