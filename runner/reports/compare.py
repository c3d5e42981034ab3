"""`just compare RUN_A RUN_B`: a markdown diff of two runs, from their manifests (and, when both runs' eval
outputs are still in the cache and scored the same dataset version, their per-item answers, for paired tests).

Sections: what changed (code, dataset, recipe), quality per model/task/metric with intervals and the paired
difference, gates, quantization, training cost, performance per load level, drills, red-team and replay. A run is a run folder,
a run id, or an evidence-pack folder (reports/<recipe>/<run-id>/, which holds the manifest)."""
from __future__ import annotations

import json
from pathlib import Path

from runner import manifest, tasks
from runner.quality import eval_analysis as ea
from runner.reports import fmt

LOWER_IS_BETTER = {"latency", "ttft", "usd"}


def load(ref: str) -> tuple[dict, Path]:
    run_dir = manifest.find_run(ref)
    return json.loads((run_dir / "manifest.json").read_text()), run_dir


def flatten(d, prefix="") -> dict:
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        out[prefix] = d
    return out


def _ab(x, y, nd=3) -> str:
    """'A → B' for one number of both runs."""
    return f"{fmt.num(x, nd)} → {fmt.num(y, nd)}"


def _metrics(man: dict, stage: str) -> dict:
    return (man.get("stages", {}).get(stage) or {}).get("metrics") or {}


def _samples(run_dir: Path, model: str, task: str) -> list[dict] | None:
    p = run_dir / "stages" / "eval" / model / f"samples_{task}.jsonl"
    return ea.read_samples(p) if p.exists() else None


def changes(a: dict, b: dict) -> list[str]:
    L = ["## What changed", "",
         "| | A | B |", "|---|---|---|",
         f"| run | `{a['run_id']}` | `{b['run_id']}` |",
         f"| status | {a.get('status')} | {b.get('status')} |",
         f"| code commit | `{(a.get('git') or {}).get('commit', '')[:12]}`"
         f"{' (dirty)' if (a.get('git') or {}).get('dirty') else ''} | `{(b.get('git') or {}).get('commit', '')[:12]}`"
         f"{' (dirty)' if (b.get('git') or {}).get('dirty') else ''} |",
         f"| dataset version | `{a.get('dataset_version')}` | `{b.get('dataset_version')}` |",
         f"| recipe hash | `{a['recipe_hash'][:12]}` | `{b['recipe_hash'][:12]}` |", ""]
    fa, fb = flatten(a["recipe"]), flatten(b["recipe"])
    diff = [k for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]
    if diff:
        L += ["Recipe settings that differ:", "", "| setting | A | B |", "|---|---|---|"]
        L += [f"| `{k}` | `{json.dumps(fa.get(k))[:60]}` | `{json.dumps(fb.get(k))[:60]}` |" for k in diff]
    else:
        L.append("Same recipe settings.")
    da, db = _metrics(a, "data"), _metrics(b, "data")
    if da.get("records") != db.get("records"):
        L += ["", f"Dataset split sizes: A {da.get('records')} → B {db.get('records')}."]
    stages = sorted(set(a.get("stages", {})) | set(b.get("stages", {})))
    rerun = [s for s in stages if (a.get("stage_keys") or {}).get(s) != (b.get("stage_keys") or {}).get(s)]
    L += ["", "Stages whose inputs differ (cache keys): " + (", ".join(rerun) if rerun else "none") + ".", ""]
    return L


def quality(a: dict, b: dict, dir_a: Path, dir_b: Path, iters: int, seed: int) -> list[str]:
    ea_, eb = _metrics(a, "eval"), _metrics(b, "eval")
    if not ea_ or not eb:
        return ["## Quality", "", "One of the runs has no eval stage.", ""]
    same_items = a.get("dataset_version") == b.get("dataset_version")
    L = ["## Quality", "",
         "Each cell: value [95% CI]. Δ = B − A. " + (
             "Same dataset version, so the same test items: Δ's interval and p come from a paired bootstrap over "
             "the items (per-item answers read from both runs' eval outputs)." if same_items else
             "Different dataset versions: the test items differ, so only the intervals can be compared; "
             "non-overlapping intervals are marked."), "",
         "| model | task | metric | A | B | Δ | paired 95% CI / p |", "|---|---|---|---|---|---|---|"]
    for model in [m for m in ea_.get("models", {}) if m in eb.get("models", {})]:
        ta, tb = ea_["models"][model]["tasks"], eb["models"][model]["tasks"]
        for task in [t for t in ta if t in tb]:
            paired = None
            if same_items:
                sa, sb = _samples(dir_a, model, task), _samples(dir_b, model, task)
                try:
                    scoring = tasks.scoring(task, tuple(b["recipe"].get("task_paths") or ()))
                except (tasks.UnknownTask, tasks.TaskError):
                    scoring = None  # a task this checkout no longer has: intervals only
                if sa and sb and scoring:
                    paired = ea.compare(task, scoring, sa, sb, iters, seed)
            for metric in [k for k in ta[task].get("ci", {}) if k in tb[task].get("ci", {})]:
                ca, cb = ta[task].get("ci", {}).get(metric), tb[task].get("ci", {}).get(metric)
                if not ca or not cb or ca.get("value") is None or cb.get("value") is None:
                    continue
                d = cb["value"] - ca["value"]
                p = (paired or {}).get(metric)
                if p and p.get("low") is not None:
                    sig = f"[{p['low']:+.3f}, {p['high']:+.3f}], p={p['p']:.3f}"
                    if p["low"] > 0 or p["high"] < 0:
                        sig += " **significant**"
                elif ca.get("low") is not None and cb.get("low") is not None:
                    sig = "intervals overlap" if ca["low"] <= cb["high"] and cb["low"] <= ca["high"] else \
                        "**intervals do not overlap**"
                else:
                    sig = "–"
                L.append(f"| {model} | {task} | {metric} | {fmt.ci(ca)} | {fmt.ci(cb)} | {d:+.3f} | {sig} |")
    return L + [""]


def gates(a: dict, b: dict) -> list[str]:
    L = ["## Gates", "", "| gate | A | B |", "|---|---|---|"]
    rows = {}
    for side, man in (("A", a), ("B", b)):
        for v in _metrics(man, "eval").get("gates") or []:
            rows.setdefault(f"eval: {v['model']} {v['what']}", {})[side] = v
        q = _metrics(man, "quantize")
        for t, v in (q.get("verdicts") or {}).items():
            rows.setdefault(f"quantize regression gate: {t} (a failing quant is not deployed)", {})[side] = v
        for n, d in (_metrics(man, "loadtest").get("drills") or {}).items():
            if "passed" in d:
                rows.setdefault(f"drill: {n}", {})[side] = d

    def cell(v):
        if not v:
            return "–"
        if v.get("passed"):
            return "passed"
        return "**failed**" + (f": {'; '.join(v['reasons'])[:80]}" if v.get("reasons") else "")
    for name, sides in rows.items():
        L.append(f"| {name} | {cell(sides.get('A'))} | {cell(sides.get('B'))} |")
    return L + [""]


def quantization(a: dict, b: dict) -> list[str]:
    qa, qb = _metrics(a, "quantize"), _metrics(b, "quantize")
    if not qa or not qb:
        return []
    head = (qb.get("task") or {}).get("headline", "field_f1")
    L = ["## Quantization", "", f"Deployment model: A `{qa.get('chosen')}` → B `{qb.get('chosen')}`.", "",
         f"| type | MB A → B | {head} A | {head} B | decode tok/s A → B |", "|---|---|---|---|---|"]
    for t in [t for t in qa.get("files", {}) if t in qb.get("files", {})]:
        fa, fb = qa["files"][t], qb["files"][t]
        L.append(f"| {t} | {fa['bytes'] / 1e6:.0f} → {fb['bytes'] / 1e6:.0f} | "
                 f"{fmt.ci((qa.get('quality', {}).get(t) or {}).get('ci', {}).get(head))} | "
                 f"{fmt.ci((qb.get('quality', {}).get(t) or {}).get('ci', {}).get(head))} | "
                 f"{_ab((fa.get('bench') or {}).get('gen_tokens_per_s'), (fb.get('bench') or {}).get('gen_tokens_per_s'), 1)} |")
    return L + [""]


def training(a: dict, b: dict) -> list[str]:
    ta, tb = _metrics(a, "train"), _metrics(b, "train")
    L = ["## Training (A → B)", "", "| model | steps | final eval loss | tokens/s | seconds | $ |",
         "|---|---|---|---|---|---|"]
    for m in sorted(set(ta) | set(tb)):
        x, y = ta.get(m) or {}, tb.get(m) or {}
        if not isinstance(x, dict) or not isinstance(y, dict):
            continue
        cells = [_ab(x.get(k), y.get(k), nd) for k, nd in (("steps", 0), ("final_eval_loss", 3), ("tokens_per_s", 1),
                                                             ("seconds", 0), ("cost_usd", 4))]
        L.append(f"| {m} | " + " | ".join(cells) + " |")
    return L + [""]


def performance(a: dict, b: dict) -> list[str]:
    la, lb = _metrics(a, "loadtest"), _metrics(b, "loadtest")
    if not la or not lb:
        return []
    L = ["## Performance", "",
         f"- SLO ceiling: A **{fmt.num(la.get('concurrency_ceiling'))}** → B **{fmt.num(lb.get('concurrency_ceiling'))}** "
         f"streams; peak output tok/s {_ab(la.get('peak_output_tokens_per_s'), lb.get('peak_output_tokens_per_s'), 1)}; "
         "$ per 1M output tokens at the ceiling "
         f"{_ab(la.get('usd_per_1m_output_tokens_at_ceiling'), lb.get('usd_per_1m_output_tokens_at_ceiling'))}.",
         f"- Bottleneck: A {(la.get('bottleneck') or {}).get('verdict', '–')} → "
         f"B {(lb.get('bottleneck') or {}).get('verdict', '–')}.",
         "", "| streams | output tok/s A → B | Δ% | p95 latency s A → B | Δ% | p99 latency s A → B | SLO A / B |",
         "|---|---|---|---|---|---|---|"]
    by_b = {r["streams"]: r for r in lb.get("levels", [])}

    def pct(x, y):
        return f"{(y - x) / x * 100:+.1f}%" if x and y is not None else "–"
    for r in la.get("levels", []):
        s = by_b.get(r["streams"])
        if not s:
            continue
        L.append(f"| {r['streams']} | {fmt.num(r['output_tokens_per_s'], 1)} → {fmt.num(s['output_tokens_per_s'], 1)} | "
                 f"{pct(r['output_tokens_per_s'], s['output_tokens_per_s'])} | {fmt.num(r['latency_s'].get('p95'), 2)} → "
                 f"{fmt.num(s['latency_s'].get('p95'), 2)} | {pct(r['latency_s'].get('p95'), s['latency_s'].get('p95'))} | "
                 f"{fmt.num(r['latency_s'].get('p99'), 2)} → {fmt.num(s['latency_s'].get('p99'), 2)} | "
                 f"{'meets' if r['meets_slo'] else 'misses'} / {'meets' if s['meets_slo'] else 'misses'} |")
    L += ["", "Load-test numbers on a shared 2-core machine move by several percent between identical runs; "
          "treat single-digit changes as noise.", ""]
    return L


def redteam(a: dict, b: dict) -> list[str]:
    """Attack success per category and model, before and after the output policy, A → B; the policy's recall."""
    ra, rb = _metrics(a, "redteam"), _metrics(b, "redteam")
    if not ra.get("enabled") or not rb.get("enabled"):
        return ["## Red-team", "", "One of the runs did not red-team its deployment.", ""] if ra or rb else []
    L = ["## Red-team", "", "Attacks that succeeded (before the output policy / after it), A → B. Different "
         "deployments and models: unpaired counts, each with its Wilson interval in the run's redteam.md.", "",
         "| category | model | A | B |", "|---|---|---|---|"]
    for model in ("tuned", "base"):
        xa, xb = (ra["models"].get(model) or {}).get("rates", {}), (rb["models"].get(model) or {}).get("rates", {})
        for cat in [c for c in rb.get("categories", []) + ["all"] if c in xa or c in xb]:
            cell = lambda r: f"{r['before']}/{r['n']} / {r['after']}/{r['n']}" if r else "–"   # noqa: E731
            L.append(f"| {cat} | {model} | {cell(xa.get(cat))} | {cell(xb.get(cat))} |")
    fa, fb = (ra.get("filter") or {}).get("per_type", {}), (rb.get("filter") or {}).get("per_type", {})
    if fa or fb:
        L += ["", "Output policy on the labelled answers, recall A → B: " + ", ".join(
            f"{t} {_ab((fa.get(t) or {}).get('recall'), (fb.get(t) or {}).get('recall'))}" for t in sorted(set(fa) | set(fb)))]
    return L + [""]


def replay(dir_a: Path, dir_b: Path) -> list[str]:
    """The replay pages (`just replay`) either run carries: agreement, validity and the gate."""
    found = {k: json.loads((d / "report" / "replay.json").read_text()) for k, d in (("A", dir_a), ("B", dir_b))
             if (d / "report" / "replay.json").is_file()}
    if not found:
        return []
    L = ["## Replay against production", "", "| run | source | requests | agreement | valid (prod → candidate) | gate |",
         "|---|---|---|---|---|---|"]
    for k, r in found.items():
        v = r["validity"]
        L.append(f"| {k} | {r['meta']['source']} | {r['requests']} | {fmt.num(r['agreement']['rate'])} | "
                 f"{v['production']} → {v['candidate']} | {'passed' if r['gate']['passed'] else 'FAILED'} |")
    return L + [""]


def failed_gates(man: dict) -> list[str]:
    out = [f"eval: {v['model']} {v['what']}" for v in _metrics(man, "eval").get("gates") or [] if not v.get("passed")]
    out += [f"drill: {n}" for n, d in (_metrics(man, "loadtest").get("drills") or {}).items() if d.get("passed") is False]
    if man.get("status") == "gated" and not out:
        out.append(man.get("failure") or "run gated")
    return out


def render(ref_a: str, ref_b: str, iters: int = 1000, seed: int = 0) -> tuple[str, list[str]]:
    (a, dir_a), (b, dir_b) = load(ref_a), load(ref_b)
    failed = failed_gates(b)
    L = [f"# Run comparison: {a['recipe_name']} `{a['run_id']}` (A) → {b['recipe_name']} `{b['run_id']}` (B)", "",
         "**Verdict: " + ("B fails " + "; ".join(failed) if failed else "B passes every gate") + ".**", ""]
    L += changes(a, b) + quality(a, b, dir_a, dir_b, iters, seed) + gates(a, b) + quantization(a, b) + \
        training(a, b) + performance(a, b) + redteam(a, b) + replay(dir_a, dir_b)
    return "\n".join(L) + "\n", failed
