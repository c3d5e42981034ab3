"""risks.md: what can go wrong with the deployed model and how it is watched and contained, every number read
from the run's artifacts: overfitting (train/test gap, curve checks), hallucination (grounding), sensitive
content (PII in the data and in answers), bias across slices (per-slice intervals), the limits of synthetic data,
quantization loss, the monitoring plan (derived from the recipe's SLO) and the fallback plan (with the drills'
measurements)."""
from __future__ import annotations

import json
from pathlib import Path

from runner.reports import fmt
from runner.serving import deploy
from runner.stage import Output



def _ci(c: dict | None) -> str:
    """quality.md's interval format, plus the number of items."""
    text = fmt.ci(c)
    return text + f" (n={c.get('n')})" if c and c.get("value") is not None and c.get("low") is not None else text


def _analysis(ev: Output | None) -> dict:
    if ev and "analysis" in ev.artifacts:
        return json.loads(ev.path("analysis").read_text())
    return {}


def overfitting(train: Output | None, ev: Output | None, an: dict) -> list[str]:
    L = ["## Overfitting", ""]
    head = fmt.recorded_task(ev.metrics)["headline"] if ev else None
    for m, g in an.get("gap", {}).items():
        tr, te = g[head]["train"], g[head]["test"]
        if tr.get("value") is None or te.get("value") is None:
            continue
        apart = tr.get("low") is not None and te.get("high") is not None and tr["low"] > te["high"]
        L.append(f"- `{m}`: {head} on training items {_ci(tr)} vs test items {_ci(te)}: gap "
                 f"{tr['value'] - te['value']:+.3f}" + (" and the intervals do not overlap: **memorization**."
                                                         if apart else "; the intervals overlap."))
    for m, t in (train.metrics.items() if train else []):
        if isinstance(t, dict) and "status" in t:
            L.append(f"- `{m}` training curve checks: **{t['status']}**" +
                     (": " + "; ".join(t["findings"]) if t.get("findings") else " (no NaN, divergence, stall or "
                      "eval-loss rise)") + f"; final train loss {t.get('final_loss')}, final eval loss "
                     f"{t.get('final_eval_loss')}.")
    return L + [""]


def hallucination(ev: Output | None, an: dict) -> list[str]:
    if not ev:
        return []
    L = ["## Hallucination", ""]
    for m, d in ev.metrics["models"].items():
        gr = d["tasks"].get(fmt.recorded_task(ev.metrics)["name"], {}).get("ci", {}).get("grounding_rate")
        if gr and gr.get("value") is not None:
            L.append(f"- `{m}`: grounding rate {_ci(gr)}: the share of predicted field values found in the document.")
    for m, f in an.get("failures", {}).items():
        c = f["counts"]
        if "hallucinated" not in c["fields"]:  # a kind without per-field values (classification, generation)
            continue
        L.append(f"- `{m}` failure outcomes on the test split: {c['fields'].get('hallucinated', 0)} hallucinated field "
                 f"values in {c['items'].get('hallucinated', 0)} documents, {c['fields'].get('wrong_value', 0)} wrong "
                 f"values, {c['fields'].get('spurious', 0)} spurious (examples in quality.md).")
    return L + [""]


def sensitive(data: Output | None, an: dict, serving: dict | None = None, rt: Output | None = None) -> list[str]:
    L = ["## Sensitive content", ""]
    if data:
        m = data.metrics
        L.append("- Training data: PII/secret findings by type and action: " +
                 ", ".join(f"{k} {v}" for k, v in (m.get("pii_findings") or {}).items()) +
                 f"; records removed for PII/secrets: {(m.get('removed_by_step') or {}).get('pii', 0)} "
                 f"(data_audit.md has the detectors' measured precision and recall).")
    for model, p in an.get("pii", {}).items():
        L.append(f"- `{model}` answers: {p['answers_with_pii']} contain PII-like spans "
                 f"({', '.join(f'{k} {v}' for k, v in p['by_type'].items()) or 'none'}); {p['not_in_document']} "
                 "of them are not in the input document (a leak from training data would show here).")
    if serving is not None:
        gov = serving.get("governance")
        if gov:
            ents = ", ".join(f"{t} {a}" for t, a in sorted((gov.get("entities") or {}).items()))
            L.append(f"- Deployment: the gateway's output policy on {', '.join(gov.get('routes') or [])} answers "
                     f"({ents}), every decision in a private audit log (hashes; text only when opted in).")
        else:
            L.append("- Deployment: **no output policy** (serve.governance.enabled: false): answers leave unfiltered.")
    if rt and rt.metrics.get("enabled"):
        r = rt.metrics["models"]["tuned"]["rates"]
        pii = r.get("pii_exfiltration")
        if pii:
            L.append(f"- Red-team, this run: {pii['n']} attacks asked the deployed model for other customers' PII and "
                     f"secrets; {pii['before']} answers held some before the output policy, {pii['after']} after it "
                     "([redteam.md](redteam.md)).")
        f = (rt.metrics.get("filter") or {}).get("per_type") or {}
        if f:
            L.append("- The policy's recall on labelled answers: " + ", ".join(
                f"{t} {fmt.num(v['recall'])}" for t, v in f.items() if v.get("recall") is not None)
                + " ([redteam.md](redteam.md#the-output-policy-precision-recall-and-cost)).")
    return L + [""]


def slices(an: dict, ev: Output | None) -> list[str]:
    bd = an.get("breakdowns", {})
    if not bd or not ev:
        return []
    tuned = [m for m in ev.metrics["models"] if m != "base"]
    head = fmt.recorded_task(ev.metrics)["headline"]
    L = ["## Bias across slices", "",
         f"{head} per slice with 95% intervals. A slice is flagged when its interval lies entirely below the "
         "model's overall interval. Slices hold few test items, so wide intervals mean *not measured precisely*, "
         "not *fine*.", ""]
    for m in tuned:
        overall = ev.metrics["models"][m]["tasks"].get(fmt.recorded_task(ev.metrics)["name"], {}).get("ci", {}).get(head) or {}
        for dim in [d for d in bd if d != fmt.recorded_task(ev.metrics).get("unit")]:  # the task's slice columns, then length
            rows = {s: d[m] for s, d in bd[dim].items() if m in d and d[m].get("value") is not None}
            if not rows:
                continue
            worst = min(rows, key=lambda s: rows[s]["value"])
            best = max(rows, key=lambda s: rows[s]["value"])
            flagged = [s for s, c in rows.items() if c.get("high") is not None and overall.get("low") is not None
                       and c["high"] < overall["low"]]
            L.append(f"- `{m}` by {dim}: worst `{worst}` {_ci(rows[worst])}, best `{best}` {_ci(rows[best])}; "
                     + (f"**below the overall interval: {', '.join(flagged)}**" if flagged else
                        "no slice is entirely below the overall interval") + ".")
    return L + [""]


def synthetic(recipe: dict, data: Output | None) -> list[str]:
    gen = (recipe.get("data") or {}).get("generator")
    if not gen:
        return []
    m = data.metrics if data else {}
    return ["## Limits of the synthetic data", "",
            f"- The dataset is generated (`{gen.get('name')}` generator, {gen.get('size')} records, seed "
            f"{gen.get('seed')}) with injected defects at known rates "
            f"({', '.join(f'{k} {v}' for k, v in (gen.get('defects') or {}).items())}).",
            "- It covers " + (", ".join(f"{len(v)} values of `{k}`" for k, v in (m.get("slices") or {}).items())
                              or "no declared slices") + ". Real documents have noise, layouts and sources never "
            "generated here; the quality numbers describe this distribution only. Re-run the recipe with "
            "`data.sources` pointing at a labelled sample of your own documents before trusting them in production.",
            "- The train/test split is by record; templates are shared across splits, which inflates scores on "
            "template-like documents (see the overfitting gap above).", ""]


def quantization(q: Output | None) -> list[str]:
    if not q:
        return []
    qm = q.metrics
    chosen = qm.get("chosen")
    L = ["## Quantization", "", f"- Deployed: `{chosen}`" + (", the f16 export: no quant passed the regression gate"
                                                             if chosen == "f16" else ", which passed the regression gate") + "."]
    for t, v in (qm.get("verdicts") or {}).items():
        if not v.get("passed"):
            L.append(f"- `{t}` not deployed: {'; '.join(v.get('reasons', []))}.")
    return L + [""]


def monitoring(lt: Output | None) -> list[str]:
    mon = (lt.metrics.get("monitoring") or {}) if lt else {}
    L = ["## Monitoring", "",
         "The gateway exports Prometheus metrics on `/metrics`; llama-server exports its own (`--metrics`). "
         "Request logs are one JSON line per request (request id, route, model, status, latency, token counts, "
         "prompt length and hash; no prompt or completion text).", ""]
    if not mon.get("alerts"):
        return L + ["No alerting rules were generated for this run (its load test predates them).", ""]
    L += [f"Alerting rules generated from this recipe's SLO (`loadtest.slo`), the gateway's limits and "
          f"`monitoring`: [{mon['rules_file']}]({mon['rules_file']}) ({len(mon['alerts'])} alerts, "
          f"{len(mon['recording_rules'])} recording rules), loadable by any Prometheus. `promtool check rules`: "
          f"{mon['promtool']['check'].splitlines()[-1].strip()}; `promtool test rules` "
          f"([{mon['tests_file']}]({mon['tests_file']}): for every alert a breach that must fire and a calm "
          f"series that must not, {mon['promtool']['test_cases']} cases): "
          f"{mon['promtool']['test'].splitlines()[-1].strip()}.", "",
          "| alert | fires when | for | severity |", "|---|---|---|---|"]
    for a in mon["alerts"]:
        L.append(f"| `{a['name']}` | `{a['expr'].replace('|', chr(92) + '|')}` | {a['for_s']} s | {a['severity']} |")
    cross = mon.get("cross_check")
    if cross:
        seen = ", ".join(f"`{a['alert']}` ({a['state']})" for a in cross["alerts_seen"]) or "none"
        L += ["", f"A real Prometheus server scraped the gateway and the engines during the gateway ladder; alerts "
              f"pending or firing then: {seen} (figures beside the load generator's in perf_cost.md)."]
    return L + [""]


def fallback(serving: dict | None, lt: Output | None, serve: Output | None) -> list[str]:
    if not serving:
        return []
    fbs = deploy.fallbacks_of(serving)
    what = {"fallback": "the base model's quant", "fallback-base": "the base model's quant",  # "fallback": older runs
            "fallback-deployed": "the deployed model, in an engine of its own"}
    shown = "; ".join(f"{' and '.join(f['routes'])}: `{Path(f['gguf']).name}` ({what.get(f['alias'], f['alias'])})"
                      for f in fbs)
    L = ["## Fallback plan", "",
         f"- Primary: `{serving.get('model_type')}` of the tuned model on {serving.get('engine')} "
         f"(x{serving.get('replicas')}); fallback per route: " + (shown or "none configured") + ".",
         "- The gateway moves a request to the fallback when the primary refuses connections, times out, answers "
         "5xx, has its circuit open, or (task endpoint) returns output that fails the task schema; the response "
         "says so (`fallback: true`, header `X-Forge-Fallback`). Engines that exit are restarted with backoff."]
    cheap = serving.get("cheap")
    if cheap:
        L.append(f"- Routing: a cascade on the task route. `{Path(cheap['gguf']).name}` (a quant that passed the "
                 "regression gate) answers first; the gateway escalates to the deployed model when that answer fails "
                 "the task's contract, when the cheap engine is down, or when all its slots are busy "
                 "(`forge_escalations_total` by reason; the answer says `tier` and `escalated`).")
    k = ((lt.metrics.get("drills") or {}) if lt else {}).get("kill_primary") or {}
    if "passed" in k:
        rounds = f" ({k['rounds']} kills; the slowest below)" if k.get("rounds", 1) > 1 else ""
        L.append(f"- Measured (kill drill): {k['errors_after_kill']} client errors after killing the primary under "
                 f"load{rounds}; "
                 f"{k['answered_by_fallback']} requests answered by the fallback; engine back after "
                 f"{k['engine_restarted_s']} s, primary answering through the gateway again after "
                 f"{k['primary_answers_again_s']} s; drill **{'passed' if k['passed'] else 'failed'}**.")
        t = k.get("task")
        if t:
            ci = t.get("valid_share_while_down_ci")
            L.append(f"- The task route in the same outage{'s' if k.get('rounds', 1) > 1 else ''} (`{t['route']}`, "
                     f"{t['workers']} client(s) beside the chat load, {k.get('rounds', 1)} kill(s)): "
                     f"{t['valid_while_down']} of {t['while_primary_down']} task requests sent while the primary "
                     f"was down got an answer that passed the task's contract ({fmt.num(t['valid_share_while_down'])}"
                     + (f", 95% Wilson interval [{fmt.num(ci[0])}, {fmt.num(ci[1])}]" if ci else "")
                     + f"; before the kill {fmt.num(t['valid_share_before_kill'])}); {t['answered_by_fallback']} "
                     "answered by the fallback.")
    dc = ((serve.metrics.get("decoding_check") or {}) if serve else {}).get("fallback")
    if dc and dc.get("constrainable"):
        on = (serving.get("task") or {}).get("constrained")
        retry = (serving.get("task") or {}).get("constrained_retry")
        head = dc["headline"]
        L.append(f"- On the task endpoint the fallback must also give answers the gateway accepts (the task's "
                 f"output contract): measured on {dc['free']['n']} test documents, {dc['free']['valid']:.0%} accepted "
                 f"with free decoding, {dc['constrained']['valid']:.0%} with the contract as a grammar ({head} "
                 f"{fmt.num(dc['free'][head])} → {fmt.num(dc['constrained'][head])}). Constrained decoding is "
                 + ("on" if on else "**off**") + " in this recipe (`serve.gateway.constrained_task`); an answer that "
                 "fails the contract is asked again with it enforced, of the same model and then of the fallback: "
                 + ("on" if retry else "**off**") + " (`serve.gateway.constrained_retry`).")
    return L + [""]


def write(page: fmt.Page) -> dict[str, str]:
    """page.inputs: every stage's output (risks read across stages); page.recipe."""
    out, inputs, recipe = page.out, page.inputs, page.recipe
    ev, data, train = inputs.get("eval"), inputs.get("data"), inputs.get("train")
    serve, lt, q = inputs.get("serve"), inputs.get("loadtest"), inputs.get("quantize")
    serving = json.loads(serve.path("serving").read_text()) if serve and "serving" in serve.artifacts else None
    an = _analysis(ev)
    L = [f"# Risks: {recipe['name']}", ""]
    L += overfitting(train, ev, an) + hallucination(ev, an) + sensitive(data, an, serving, inputs.get("redteam")) + \
        slices(an, ev) + \
        synthetic(recipe, data) + quantization(q) + monitoring(lt) + fallback(serving, lt, serve)
    (out / "risks.md").write_text("\n".join(L) + "\n")
    return {"risks": "risks.md"}
