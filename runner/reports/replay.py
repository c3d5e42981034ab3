"""replay.md: a candidate against production on replayed (or shadowed) traffic, from runner/replay.py's comparison."""
from __future__ import annotations

import json

from runner.reports import fmt


def _diff(a, b) -> tuple[str, str]:
    """Two answers side by side: for objects only the fields that differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = [k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]
        return (_short({k: a.get(k) for k in keys}), _short({k: b.get(k) for k in keys}))
    return _short(a), _short(b)


def _short(answer) -> str:
    text = answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False)
    text = (text or "").replace("|", "\\|").replace("\n", " ")
    return f"`{text[:140]}`" if text else "–"


def render(r: dict, meta: dict) -> str:
    how = ("mirrored live by the gateway's shadow mode (the candidate's answers were never returned to a client)"
           if meta["source"] == "shadow" else "replayed from the capture file to the candidate's deployment, on "
           "loopback, after the fact")
    L = [f"# Replay: `{meta['candidate']}` against production", "",
         f"- traffic: {r['requests']} task requests from `{meta['log']}`, {how}",
         f"- production: {meta.get('production') or 'the answers the gateway delivered, as logged'}",
         f"- candidate: {meta['candidate']}" + (f" ({meta['candidate_model']})" if meta.get("candidate_model") else ""),
         ""]
    if meta["source"] == "capture":
        n_red = meta.get("redacted_documents")
        types = ", ".join(f"{t} {n}" for t, n in (meta.get("redacted_types") or {}).items())
        L += ["Captured documents were PII-redacted by the output policy before they were written; the candidate "
              "answered the redacted text, production the original"
              + (f": {n_red} of {r['requests']} documents had spans redacted ({types}), and a disagreement on a "
                 "value that was redacted comes from the capture, not the candidate." if n_red else ".") , ""]
    g = r["gate"]
    L += [f"**Gate: {'passed' if g['passed'] else 'FAILED'}**", "", "| check | value | passed |", "|---|---|---|"]
    L += [f"| {c['check']} | {c['value']} | {'yes' if c['passed'] else '**no**'} |" for c in g["checks"]]
    a, v = r["agreement"], r["validity"]
    L += ["", "## Agreement and validity, paired on the same requests", "",
          f"- agreement (the task kind's comparison of the two answers): {a['agree']}/{a['n']}"
          + (f" = {a['rate']:.3f} [{a['ci'][0]:.3f}, {a['ci'][1]:.3f}]" if a["ci"] else ""),
          f"- answers that pass the task's contract: production {v['production']}/{v['n']}, candidate "
          f"{v['candidate']}/{v['n']}; only production {v['only_production']}, only the candidate "
          f"{v['only_candidate']} (exact McNemar p {fmt.num(v['p'])})"]
    gold = r.get("gold")
    if gold:
        d = gold["diff"]
        ci = f" [{d['low']:+.3f}, {d['high']:+.3f}]" if d.get("low") is not None else ""
        L.append(f"- {gold['metric']} on the {gold['n']} requests whose document is a labelled record of the recipe: "
                 f"production {gold['production']:.3f}, candidate {gold['candidate']:.3f}, difference "
                 f"{d['diff']:+.3f}{ci} (paired bootstrap)")
    else:
        L.append("- no replayed document is a labelled record of the recipe: no task metric (agreement only)")
    lat = r["latency_ms"]
    L += ["", "## Latency (ms)", "", "| side | p50 | p95 | p99 | requests |", "|---|---|---|---|---|"]
    for side in ("production", "candidate"):
        p = lat[side]
        L.append(f"| {side} | {fmt.num(p['p50'])} | {fmt.num(p['p95'])} | {fmt.num(p['p99'])} | {p['n']} |")
    L += ["", "Not measured side by side: production's latency is what its log recorded under its own load"
          + (" (the shadow's candidate ran under the same live traffic)" if meta["source"] == "shadow" else
             ", the candidate's was measured here"), ""]
    if r["disagreements"]:
        L += ["## Disagreements (first 8; fields that differ)", "", "| request | production | candidate |", "|---|---|---|"]
        for x in r["disagreements"]:
            prod, cand = _diff(x["production"], x["candidate"])
            L.append(f"| `{x['request_id']}` | {prod} | {cand}" + (f" ({x['problem'][:80]})" if x.get("problem") else "")
                     + " |")
    return "\n".join(L) + "\n"
