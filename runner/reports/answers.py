"""The top of a run's evidence pack: the three questions every run must answer, each answer built from the
run's stage metrics and linking to the page with the evidence."""
from __future__ import annotations

from runner.reports import fmt, perf_cost, redteam
from runner.serving.perf_analysis import VERDICTS
from runner.stage import Output



def _ci(c: dict) -> str:
    if c.get("low") is None:
        return fmt.diff(c)
    return f"{c['diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]"


def iteration(m: dict) -> list[str]:
    """An iteration run's answer: tuned-v2 against tuned and base on the same items, and whether it was kept."""
    name, main, (head, second) = m["name"], m["task"]["name"], m["task"]["key_metrics"][:2]
    L = []
    for against in ("tuned", "base"):
        c = m["comparisons"][f"{name}-vs-{against}"].get(main, {})
        if c.get(head, {}).get("diff") is not None:
            L.append(f"- `{name}` vs {against} on the same {c[head]['n']} test items: {head} {_ci(c[head])}"
                     + (f", {second} {_ci(c[second])}" if c.get(second, {}).get("diff") is not None else "") + ".")
    failed = [g for g in m["gates"] if not g["passed"]]
    L.append(f"- Kept: **{m['kept']}** ({len(m['gates']) - len(failed)} of {len(m['gates'])} gates passed"
             + (": failed " + "; ".join(g["what"] for g in failed) if failed else "") + "). Cost: training "
             f"{m['training']['seconds']:.0f} s, the whole loop {m['seconds']:.0f} s. Causes, mined items, gates: "
             "[iteration.md](iteration.md).")
    return L


def quality(inputs: dict[str, Output]) -> list[str]:
    ev, train, q = inputs.get("eval"), inputs.get("train"), inputs.get("quantize")
    L = ["### 1. Did quality improve, where, and at what cost?", ""]
    it = inputs.get("iterate")
    if not ev and it and it.metrics.get("enabled"):
        return L + iteration(it.metrics) + [""]
    if not ev:
        return L + ["Not measured: the run has no eval stage.", ""]
    em = ev.metrics
    for m, d in (em.get("comparisons") or {}).items():
        main = d.get(fmt.recorded_task(em)["name"], {})
        head, second = fmt.recorded_task(em)["key_metrics"][:2]
        f1 = main.get(head)
        if not f1 or f1.get("diff") is None:
            continue
        verdict = "**improved**" if f1.get("improved") else "**got worse**" if f1.get("worse") else "did not change significantly"
        L.append(f"- `{m}` vs base on the held-out test split: {head} {verdict}, {_ci(f1)} (paired bootstrap, "
                 f"p={f1['p']:.3f}, n={f1['n']})" + (f"; {second} {_ci(main[second])}" if main.get(
                     second, {}).get("diff") is not None else "") + ".")
        sb = em.get("strongest_baseline") or {}
        vs = (em.get("baseline_comparisons") or {}).get(sb.get("name"), {}).get(m) or {}
        if em.get("baselines") and vs.get(head):
            L.append(f"  - Against the strongest prompting baseline (`{sb['name']}`, of "
                     f"{1 + len(em['baselines'])}: few-shot and/or constrained decoding): {head} {_ci(vs[head])}"
                     + (f", {second} {_ci(vs[second])}" if vs.get(second) else "") + ".")
        cb, cc = em.get("classical_baseline"), (em.get("classical_comparisons") or {}).get(m, {}).get(head)
        if cb and cc and cc.get("diff") is not None:
            word = ("beats it" if cc.get("improved") else "**does not beat it**" if cc.get("worse")
                    else "is not told apart from it")
            L.append(f"  - Against the classical baseline (`{cb['name']}`, {cb['tool']}: {head} "
                     f"{fmt.num(cb['tasks'].get(fmt.recorded_task(em)['name'], {}).get(head))}): `{m}` {word}, "
                     f"{_ci(cc)}; per slice in [quality.md](quality.md#against-a-classical-baseline).")
        ood = d.get(fmt.recorded_task(em).get("ood_task") or "", {}).get(head)
        if ood and ood.get("diff") is not None:
            t = em["models"][m]["tasks"]
            o, i = t[fmt.recorded_task(em)["ood_task"]], t[fmt.recorded_task(em)["name"]]
            L.append(f"  - Out of distribution ({o['samples']} held-out items of a locale/layout training never saw): "
                     f"{head} {fmt.ci(o['ci'].get(head))} vs {fmt.ci(i['ci'].get(head))} on the test split; "
                     f"vs base {_ci(ood)}.")
        gen = d.get(em.get("general_task") or "", {}).get("accuracy")
        if gen and gen.get("diff") is not None:
            L.append(f"  - General instructions (forgetting check): accuracy {_ci(gen)}" +
                     (" — **a significant drop**" if gen.get("worse") else "") + ".")
    gates = em.get("gates") or []
    failed = [g for g in gates if not g["passed"]]
    if gates:
        L.append(f"- Where: {len(gates) - len(failed)} of {len(gates)} gates passed (per field and overall)" +
                 (": failed " + "; ".join(f"{g['model']} {g['what']}" for g in failed) if failed else "") +
                 ". Breakdowns by " + ", ".join([*([fmt.recorded_task(em)["unit"]] if fmt.recorded_task(em).get("unit") else []),
                                                  *fmt.recorded_task(em)["slices"], "length"]) + ": [quality.md](quality.md).")
    if train:
        cost = sum(t.get("cost_usd") or 0 for t in train.metrics.values() if isinstance(t, dict))
        secs = sum(t.get("seconds") or 0 for t in train.metrics.values() if isinstance(t, dict))
        L.append(f"- Cost: training {secs:.0f} s, ${cost:.4f} at the recipe's price; evaluation "
                 f"{sum(d.get('seconds') or 0 for d in [*em['models'].values(), *(em.get('baselines') or {}).values()]):.0f} s "
                 "([training.md](training.md)).")
    if q and q.metrics.get("chosen"):
        L.append(f"- Deployed as `{q.metrics['chosen']}`: {q.metrics.get('chosen_why')} "
                 "([quality.md, quantization section](quality.md#quantization)).")
    return L + [""]


def performance(inputs: dict[str, Output]) -> list[str]:
    lt = inputs.get("loadtest")
    L = ["### 2. Does performance meet the SLO, where is the bottleneck, how is cost controlled?", ""]
    if not lt:
        return L + ["Not measured: the run has no loadtest stage.", ""]
    m = lt.metrics
    slo = m["slo"]
    ceiling = m.get("concurrency_ceiling")
    L.append(f"- SLO (p99 ≤ {slo['p99_latency_s']} s, p95 TTFT ≤ {slo['p95_ttft_s']} s, errors ≤ "
             f"{slo['max_error_rate']:.0%}): " + (f"**met up to {ceiling} concurrent stream{'s' if ceiling != 1 else ''}** through the "
                                                   f"{m.get('through') or 'engine'}" if ceiling is not None else
                                                   "**not met at any tested level**") +
             f"; peak {m.get('peak_output_tokens_per_s') or 0:.1f} output tok/s at {m.get('peak_at_streams')} streams.")
    b = m.get("bottleneck") or {}
    if b:
        L.append(f"- Bottleneck at {b.get('at_streams')} streams: {VERDICTS.get(b.get('verdict'), b.get('verdict'))}"
                 + (f" ({b['evidence'][0]})" if b.get("evidence") else "") + ".")
    if m.get("baseline"):
        for c in m["baseline"]["comparison"]:
            L.append(f"- Optimization measured in this run ({m['baseline']['label']} → the recipe's settings, "
                     f"{c['streams']} streams): {c['throughput_gain']}x output tokens/s.")
    best = (m.get("task_ladder") or {}).get("best_at_slo")
    if best:
        L.append(f"- The task route ({m['task_ladder']['route']}, test documents): {best['documents_per_s']} valid "
                 f"documents/s within the latency SLO at {best['streams']} streams ({best['x_one_stream']}x one stream), "
                 f"${best['usd_per_1k_documents']} per 1,000 valid documents "
                 "([perf_cost.md](perf_cost.md#the-task-route-the-products-workload)).")
    if m.get("routing"):
        L.append(f"- Routing: {perf_cost.routing_verdict(m['routing'])} "
                 "([perf_cost.md](perf_cost.md#routing-the-cascade-against-each-of-its-models-alone)).")
    if m.get("usd_per_1m_output_tokens_at_ceiling") is not None:
        price = f" (at ${m['price_per_hour_usd']}/hour)" if m.get("price_per_hour_usd") is not None else ""
        L.append(f"- Cost: ${m['usd_per_1m_output_tokens_at_ceiling']:.3f} per 1M output tokens at the ceiling{price}; "
                 "admission control and the max_tokens cap keep it there. Details and plots: [perf_cost.md](perf_cost.md).")
    return L + [""]


def risks(inputs: dict[str, Output]) -> list[str]:
    lt, ev = inputs.get("loadtest"), inputs.get("eval")
    L = ["### 3. What are the risks, how is it monitored, how does it fall back?", ""]
    L.append("- Risks (overfitting, hallucination, sensitive content, bias across slices, synthetic-data limits, "
             "quantization): [risks.md](risks.md).")
    if ev:
        for m, d in ev.metrics["models"].items():
            gr = d["tasks"].get(fmt.recorded_task(ev.metrics)["name"], {}).get("ci", {}).get("grounding_rate") or {}
            if m != "base" and gr.get("value") is not None:
                L.append(f"  - `{m}` grounding rate {gr['value']:.3f}: the rest of its predicted values are not in "
                         "the document.")
    rt = inputs.get("redteam")
    if rt and rt.metrics.get("enabled"):
        L.append(f"- Red-team, this run ([redteam.md](redteam.md)): {redteam.summary(rt.metrics)}.")
    drills = (lt.metrics.get("drills") if lt else None) or {}
    if drills:
        L.append("- Fallback and resilience, drilled in this run: " + ", ".join(
            f"{n} {'passed' if d.get('passed') else 'skipped' if 'skipped' in d else '**failed**'}"
            for n, d in drills.items()) + " ([perf_cost.md](perf_cost.md#fault-drills-automated-against-the-live-deployment)).")
    mon = (lt.metrics.get("monitoring") or {}) if lt else {}
    if mon.get("alerts"):
        L.append(f"- Monitoring: {len(mon['alerts'])} Prometheus alerts and {len(mon['recording_rules'])} recording "
                 f"rules generated from the SLO ([{mon['rules_file']}]({mon['rules_file']})), checked by promtool and "
                 f"unit-tested ({mon['promtool']['test_cases']} cases, [risks.md](risks.md#monitoring))"
                 + (", and watched by a real Prometheus during the load test" if mon.get("cross_check") else "") + ".")
    else:
        L.append("- Monitoring: gateway and engine Prometheus metrics ([risks.md](risks.md#monitoring)).")
    return L + [""]


def replay(r: dict) -> str:
    """The pack's line for a replay page (`just replay`, written into this run's pack)."""
    a, v = r["agreement"], r["validity"]
    src = "mirrored live (shadow mode)" if r["meta"]["source"] == "shadow" else "replayed from a capture"
    return (f"- Replay against production ([replay.md](replay.md)): {r['requests']} real task requests {src}; "
            f"agreement {a['agree']}/{a['n']}, contract-valid {v['candidate']} vs production's {v['production']}; "
            f"gate **{'passed' if r['gate']['passed'] else 'failed'}**.")
