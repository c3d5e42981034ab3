"""The run's evidence pack, rendered from stage artifacts only (every number comes from a metrics file of the
run): README.md answering the three questions and linking to data_audit.md, training.md, quality.md (with the
quantization section), perf_cost.md, risks.md, their PNG charts and (for a stored run) the manifest.
The report stage renders it (runner/stages/report.py); `just report RUN` re-renders a stored run's; the pipeline
publishes it to reports/<recipe>/<run-id>/."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from runner.reports import answers, fmt, risks
from runner.stage import Output

PAGES = ("data", "train", "eval", "iterate", "quantize", "loadtest", "redteam")  # stages whose .md/.png/.yml artifacts join the pack
READS = ("data", "train", "eval", "iterate", "quantize", "serve", "loadtest", "redteam")  # stages whose outputs the pack reads


def chart_loss(train: Output, out: Path) -> str | None:
    series = {}
    for name in train.metrics:
        curve_file = train.dir / train.artifacts.get(f"{name}-curve", "")
        if curve_file.is_file():
            curve = [json.loads(x) for x in curve_file.read_text().splitlines()]
            series[name] = ([(r["step"], r["loss"]) for r in curve if "loss" in r],
                            [(r["step"], r["eval_loss"]) for r in curve if "eval_loss" in r])
    if not any(pts for pts, _ in series.values()):
        return None
    with fmt.figure(out / "loss.png", figsize=(6, 3.5), dpi=110) as (fig, ax):
        for name, (pts, ev) in series.items():
            if pts:
                ax.plot(*zip(*pts), label=f"{name} train")
            if ev:
                ax.plot(*zip(*ev), "o--", label=f"{name} eval")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()
        ax.grid(alpha=0.3)
    return "loss.png"


def copy_pages(inputs: dict[str, Output], out: Path) -> list[str]:
    """Each stage's own report pages and charts, side by side in the pack (their links are file names)."""
    copied = []
    for stage in PAGES:
        o = inputs.get(stage)
        for rel in (o.artifacts.values() if o else ()):
            src = o.dir / rel
            if src.suffix in (".md", ".png", ".yml") and src.is_file():
                shutil.copyfile(src, out / src.name)
                copied.append(src.name)
    if "quantization.md" in copied and "quality.md" in copied:  # quality.md carries the quantization section
        quant = (out / "quantization.md").read_text().replace("\n#", "\n##")
        quant = "#" + quant if quant.startswith("# ") else quant
        with open(out / "quality.md", "a") as f:
            f.write("\n" + quant)
    return copied


def render(inputs: dict[str, Output], recipe: dict, out: Path, charts: bool, header: dict | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    pages = copy_pages(inputs, out)
    pages += list(risks.write(fmt.Page(out, {}, recipe=recipe, inputs=inputs)).values())
    lines = [f"# {recipe['name']}: run report", ""]
    if header:
        lines += [f"- run: `{header.get('run_id')}`, status **{header.get('status')}**"
                  + (f" ({header['failure']['message'][:200]})" if isinstance(header.get("failure"), dict)
                     and header["failure"].get("message") else ""),
                  f"- code: `{(header.get('git') or {}).get('commit')}` (dirty: {(header.get('git') or {}).get('dirty')})",
                  f"- recipe hash: `{header.get('recipe_hash', '')[:12]}`; manifest: [manifest.json](manifest.json) "
                  "(recipe, dataset version, package versions, seeds, hardware, stage keys)"]
        llama = (header.get("packages") or {}).get("llama.cpp") or {}
        if llama.get("build"):
            isa = ", ".join(llama.get("instruction_sets") or []) or "no optional instruction sets"
            lines += [f"- llama.cpp build: `{llama['build']}` ({isa}; {llama.get('why')})"]
    data = inputs.get("data")
    task = fmt.recorded_task(inputs["eval"].metrics) if inputs.get("eval") else {}
    head, second = (task.get("key_metrics") or ["field_f1", "exact_match"])[:2]
    if data:
        m = data.metrics
        lines += [f"- dataset version: `{m['dataset_version']}` ({m['records']['train']} train / "
                  f"{m['records']['eval']} eval / {m['records']['test']} test records)"]
    lines += ["", "## Answers", ""] + answers.quality(inputs) + answers.performance(inputs) + answers.risks(inputs)
    if (out / "replay.json").is_file():   # written by `just replay` into this run's pack
        lines[-1:-1] = [answers.replay(json.loads((out / "replay.json").read_text()))]
        pages.append("replay.md")
    lines += ["Evidence pages: " + ", ".join(f"[{p}]({p})" for p in pages if p.endswith(".md")), "", "---"]
    if data:
        lines += ["", "## Data", "", "| step | records |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in m["counts"].items()]
        if m.get("removed_by_step"):
            lines += ["", "Removed: " + ", ".join(f"{k}: {v}" for k, v in m["removed_by_step"].items())]
        if "audit" in data.artifacts:
            lines += ["", "Full data audit (steps, detectors' precision/recall, PII, examples): "
                      "[data_audit.md](data_audit.md)"]
    train = inputs.get("train")
    if train:
        lines += ["", "## Training", "", "| model | steps | first loss | final loss | final eval loss | trainable params | wall s |",
                  "|---|---|---|---|---|---|---|"]
        for name, m in train.metrics.items():
            lines.append(f"| {name} | {m['steps']} | {fmt.num(m['first_loss'])} | {fmt.num(m['final_loss'])} | "
                         f"{fmt.num(m['final_eval_loss'])} | {fmt.num(m['trainable_params'])} | {fmt.num(m['seconds'], 0)} |")
        if charts and (png := chart_loss(train, out)):
            lines += ["", f"![loss]({png})"]
        if "report" in train.artifacts:
            lines += ["", "Curves, checks, cost: [training.md](training.md)"]
    it = inputs.get("iterate")
    if it and it.metrics.get("enabled"):
        m = it.metrics
        main, h = m["task"]["name"], m["task"]["headline"]
        c = m["comparisons"][f"{m['name']}-vs-tuned"].get(main, {})
        lines += ["", "## Iteration", "", f"{m['name']} trained on the training split plus {m['mined']['items']} pool items "
                  f"tuned got wrong: {m['name']} − tuned on the same {c.get(h, {}).get('n')} test items: " + ", ".join(
                      f"{k} {fmt.diff(c[k])}" for k in m["task"]["key_metrics"] if k in c)
                  + f". Kept: **{m['kept']}**. Loop, causes, gates: [iteration.md](iteration.md)"]
    ev = inputs.get("eval")
    if ev:
        lines += ["", f"## Quality (test split, lm-eval through {ev.metrics.get('backend', 'llama-server')})", ""]
        metric_names = [k for k in task["metrics"] if k not in ("field_accuracy", "length_ratio")]
        lines += ["| model | samples | " + " | ".join(metric_names) + " | eval s |",
                  "|---|---|" + "---|" * len(metric_names) + "---|"]
        for name, m in ev.metrics["models"].items():
            t = m["tasks"].get(fmt.recorded_task(ev.metrics)["name"], {})
            lines.append(f"| {name} | {t.get('samples')} | " + " | ".join(fmt.num(t.get(k)) for k in metric_names)
                         + f" | {fmt.num(m.get('seconds'), 0)} |")
        for name, d in (ev.metrics.get("comparisons") or {}).items():
            t = d.get(fmt.recorded_task(ev.metrics)["name"], {})
            lines += ["", f"{name} − base (paired bootstrap 95% CI): " + ", ".join(
                f"{k} {c['diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]" + (" ▲" if c.get("improved") else
                                                                              " ▼" if c.get("worse") else "")
                for k, c in t.items() if k in task["key_metrics"] and c.get("low") is not None)]
        sb, main = ev.metrics.get("strongest_baseline"), fmt.recorded_task(ev.metrics)["name"]
        ood = task.get("ood_task")
        for name, m in ev.metrics["models"].items():
            t, o = m["tasks"].get(main, {}), m["tasks"].get(ood or "", {})
            if o and name != "base":
                h = task["headline"]
                lines += ["", f"{name} out of distribution ({o['samples']} held-out items, slice values training never "
                          f"saw): {h} {fmt.ci(o['ci'].get(h))} vs {fmt.ci(t.get('ci', {}).get(h))} on the test split."]
        if sb and ev.metrics.get("baselines"):
            for name, per in (ev.metrics.get("baseline_comparisons") or {}).get(sb["name"], {}).items():
                cells = [f"{k} {fmt.diff(c)}" for k, c in per.items() if k in task["key_metrics"]]
                lines += ["", f"{name} − {sb['name']}, the strongest prompting baseline of "
                          f"{1 + len(ev.metrics['baselines'])} (few-shot, constrained decoding): " + ", ".join(cells)]
            base_rows = {n: d["tasks"].get(main, {}) for n, d in ev.metrics["baselines"].items()}
            lines += ["", "Prompting baselines (" + task["headline"] + "): " + ", ".join(
                f"{n} {fmt.num(t.get(task['headline']))}" for n, t in base_rows.items()) + "."]
        cb = ev.metrics.get("classical_baseline")
        if cb:
            h = task["headline"]
            lines += ["", f"Classical baseline `{cb['name']}` ({cb['tool']}, fitted on the training split): {h} "
                      f"{fmt.ci(cb['tasks'].get(main, {}).get('ci', {}).get(h))}; " + "; ".join(
                          f"{m} − {cb['name']} {fmt.diff(c.get(h))}"
                          for m, c in (ev.metrics.get("classical_comparisons") or {}).items()) + "."]
        failed = [g for g in ev.metrics.get("gates", []) if not g["passed"]]
        if ev.metrics.get("gates"):
            lines += ["", f"Gates: {len(ev.metrics['gates']) - len(failed)} of {len(ev.metrics['gates'])} passed"
                      + ("; failed: " + "; ".join(f"{g['model']} {g['what']}" for g in failed) if failed else "") + "."]
        if "quality" in ev.artifacts:
            dims = "/".join([*([task["unit"]] if task.get("unit") else []), *task.get("slices", []), "length"])
            lines += ["", f"CIs, breakdowns by {dims}, failure cases, forgetting check, fidelity, "
                      "risks: [quality.md](quality.md)"]
    q = inputs.get("quantize")
    if q:
        qm = q.metrics
        lines += ["", "## Quantization", "", f"| type | MB | size vs f16 | decode tok/s | {head} | gate |",
                  "|---|---|---|---|---|---|"]
        for t, f in qm["files"].items():
            ci = (qm.get("quality", {}).get(t) or {}).get("ci", {}).get(head, {})
            v = (qm.get("verdicts") or {}).get(t)
            lines.append(f"| {t} | {f['bytes'] / 1e6:.1f} | {fmt.num(f.get('ratio_vs_f16', 1.0))} | "
                         f"{fmt.num(f.get('bench', {}).get('gen_tokens_per_s'), 1)} | {fmt.num(ci.get('value'))} | "
                         + ("–" if v is None else "pass" if v["passed"] else "fail") + " |")
        if qm.get("chosen"):
            lines += ["", f"Deployment model: **{qm['chosen']}**: {qm['chosen_why']}."]
        if "report" in q.artifacts:
            lines += ["", "Trade-off chart, per-field losses, failures new after quantization: "
                      "[quality.md, quantization section](quality.md#quantization)"]
    s = inputs.get("serve")
    if s:
        lines += ["", "## Serving", "", f"Model `{s.metrics['model']}` as `{s.metrics['model_type']}` on "
                  f"{s.metrics['engine']} ({s.metrics['replicas']} replica(s), {s.metrics['parallel']} slots).", "",
                  "| endpoint | ready s | task latency s | answer accepted by the task's contract |", "|---|---|---|---|"]
        for e in s.metrics["endpoints"]:
            lines.append(f"| {e['role']} | {e['ready_s']} | {e['task_latency_s']} | {e.get('answer_accepted', e.get('answer_is_json'))} |")
        g = s.metrics.get("gateway")
        if g:
            t = g["task"]
            lines += ["", f"Gateway: /readyz **{g['readyz']['status']}**; `POST {t.get('route')}` answered HTTP "
                      f"{t['status']} in {t['latency_s']} s from `{t.get('model')}`"
                      + (" (fallback)" if t.get("fallback") else "") + f"; without a key: HTTP {g['refused']['no_key']}; "
                      f"malformed JSON: HTTP {g['refused']['malformed_json']}."]
        dc = s.metrics.get("decoding_check")
        if dc and "primary" in dc:
            lines += ["", "Constrained decoding on the task endpoint (same documents, the gateway's request, straight "
                      "to each engine; `serve.gateway.constrained_task` is "
                      f"**{s.metrics.get('constrained_task')}** in this recipe):", "",
                      f"| engine | decoding | n | accepted | {head} | {second} | latency p50 / p95 s | "
                      "completion tokens | errors |", "|---|---|---|---|---|---|---|---|---|"]
            for engine, modes in dc.items():
                for mode, d in ((k, v) for k, v in modes.items() if isinstance(v, dict)):
                    lines.append(f"| {engine} | {mode} | {d['n']} | {fmt.num(d.get('valid'))} | {fmt.num(d.get(head))} | "
                                 f"{fmt.num(d.get(second))} | {fmt.num(d['latency_p50_s'], 2)} / "
                                 f"{fmt.num(d['latency_p95_s'], 2)} | {fmt.num(d['completion_tokens_mean'], 1)} | "
                                 f"{d['error_count']}{(' (' + d['errors'][0][:80] + ')') if d['errors'] else ''} |")
    lt = inputs.get("loadtest")
    if lt:
        m = lt.metrics
        lines += ["", "## Load test (GuideLLM, concurrency ladder)", "",
                  f"SLO: p99 latency <= {m['slo']['p99_latency_s']} s, p95 TTFT <= {m['slo']['p95_ttft_s']} s, "
                  f"error rate <= {m['slo']['max_error_rate']}. Concurrency ceiling: **{fmt.num(m['concurrency_ceiling'])}**.", "",
                  "| streams | req/s | out tok/s | p50 s | p95 s | p99 s | TTFT p95 ms | errors | meets SLO | $/1M out tok |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in m["levels"]:
            lines.append(f"| {r['streams']} | {fmt.num(r['requests_per_s'], 2)} | {fmt.num(r['output_tokens_per_s'], 1)} | "
                         f"{fmt.num(r['latency_s'].get('p50'), 2)} | {fmt.num(r['latency_s'].get('p95'), 2)} | "
                         f"{fmt.num(r['latency_s'].get('p99'), 2)} | {fmt.num(r['ttft_ms'].get('p95'), 0)} | "
                         f"{fmt.num(r['error_rate'], 3)} | {r['meets_slo']} | {fmt.num(r['usd_per_1m_output_tokens'], 3)} |")
        if m.get("gateway_overhead"):
            lines += ["", f"Measured through the {m.get('through', 'gateway')}. Gateway overhead against the primary "
                      "engine alone, same run:", "", "| streams | added p50 ms | added p95 ms | throughput ratio |",
                      "|---|---|---|---|"]
            for o in m["gateway_overhead"]:
                lines.append(f"| {o['streams']} | {fmt.num(o['added_latency_p50_ms'], 1)} | "
                             f"{fmt.num(o['added_latency_p95_ms'], 1)} | {fmt.num(o['throughput_ratio'])} |")
        b = m.get("bottleneck")
        if b:
            from runner.serving.perf_analysis import VERDICTS
            lines += ["", f"Bottleneck at {b.get('at_streams')} streams: **{VERDICTS.get(b['verdict'], b['verdict'])}** "
                      f"({'; '.join(b.get('evidence', [])[:1])})."]
        if m.get("baseline"):
            for c in m["baseline"]["comparison"]:
                lines.append(f"Optimization ({m['baseline']['label']} → recipe settings) at {c['streams']} streams: "
                             f"{fmt.num(c['before']['output_tokens_per_s'], 1)} → {fmt.num(c['after']['output_tokens_per_s'], 1)} "
                             f"output tok/s ({fmt.num(c['throughput_gain'], 2)}x).")
        if m.get("drills"):
            lines.append("Fault drills: " + ", ".join(f"{n} {'passed' if d.get('passed') else 'skipped' if 'skipped' in d else '**failed**'}"
                                                     for n, d in m["drills"].items()) + ".")
        if "perf_cost" in lt.artifacts:
            lines += ["", "Plots, resources per level, drills in detail: [perf_cost.md](perf_cost.md)"]
    path = out / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def render_run(run_dir: Path) -> Path:
    """Re-render a stored run's report from its manifest and stage outputs (no stage re-runs)."""
    man = json.loads((run_dir / "manifest.json").read_text())
    inputs = {}
    for name in READS:
        link = run_dir / "stages" / name
        if (link / "stage.json").exists():
            inputs[name] = Output.read(name, man["stage_keys"][name], link.resolve())
    out = render(inputs, man["recipe"], run_dir / "report", man["recipe"]["report"]["charts"], header=man)
    shutil.copyfile(run_dir / "manifest.json", out.parent / "manifest.json")
    return out


def publish(run_dir: Path, reports_root: Path, keep: int) -> Path:
    """Re-render the run's pack with its manifest and copy it to reports_root/<recipe>/<run-id>/; keep the
    `keep` newest packs of that recipe (a stable place for a pull request's diff to show what changed)."""
    render_run(run_dir)
    dest = reports_root / run_dir.parent.name / run_dir.name
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(run_dir / "report", dest)
    packs = sorted((p for p in dest.parent.iterdir() if p.is_dir() and (p / "manifest.json").exists()),
                   key=lambda p: p.name)
    for old in packs[:-keep] if keep else []:
        shutil.rmtree(old)
    return dest
