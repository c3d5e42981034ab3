"""redteam: attack the deployment and measure its output policy.

1. The task's attack suite (runner/redteam/suite.py: injected instructions, hidden unicode, prompt leaks, PII
   exfiltration, malformed bodies) through the gateway with the recipe's output policy, against the deployed model
   and against the base model (the eval stage's f16 GGUF) behind the same gateway, each in a deployment of its own.
   The stage's own gateways write the answers' text into their audit logs (the attacks are synthetic), so every case
   is scored on the answer as the model wrote it (before the policy) and as the client received it (after).
2. garak's static probes (runner/adapters/garak.py) against the same gateway's chat route, in the deployments
   `redteam.garak.models` names: what a scanner from the field finds, scored on what the client received.
3. The policy's precision and recall per entity type on a labelled set of answers (runner/governance/labelled.py),
   and its cost: the scan's time in the gateway (the audit log's filter_ms over every governed answer here) and
   in-process over the labelled set.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from runner import tasks
from runner.governance import audit, labelled
from runner.adapters import garak
from runner.governance.policy import OutputPolicy
from runner.quality.stats import nearest_rank, proportion_ci
from runner.redteam import attack, score, suite
from runner.reports import redteam as report
from runner.reports.fmt import Page
from runner.serving import deploy
from runner.stage import Context, Result, StageError

SECTIONS = ("redteam", "task", "serve", "seed", "name")
INPUTS = ("data", "eval", "serve")
RUNS = ("evals", "runner/kinds")  # read by code run outside our imports (the gateway, by path)
TOOLS = ("llama", "gateway", "redteam")


def attack_model(ctx: Context, cfg: dict, serving: dict, name: str, gguf: str, cases: list[dict], kind, spec,
                 governance: dict | None) -> dict:
    logs = ctx.logs / f"redteam-{name}"
    dep_spec = {**serving, "primary": {**serving["primary"], "gguf": gguf}, "replicas": 1, "fallbacks": [],
                "fallback": None, "cheap": None, "governance": governance}
    dep_spec["task"] = {k: v for k, v in serving["task"].items() if k != "cascade"}
    ctx.progress(f"{name}: {len(cases)} attacks through the gateway ({Path(gguf).name})")
    scan = None
    with deploy.up(dep_spec, logs) as dep:
        results = attack.send(dep.gateway_url, dep.api_key, serving["task"]["route"], cases, cfg["concurrency"],
                              cfg["timeout_s"], cfg["chat_max_tokens"], name)
        g = cfg["garak"]
        if g["enabled"] and name in g["models"]:
            ctx.progress(f"{name}: garak, {len(g['probes'])} probes x {g['prompt_cap']} prompts")
            gcfg = garak.config(dep.gateway_url, serving.get("served_model", "model"), g["probes"], g["prompt_cap"],
                                g["generations"], g["max_tokens"], g["parallel"], ctx.seed,
                                ctx.out / f"garak-{name}", "garak")
            report = garak.run(gcfg, ctx.logs / f"garak-{name}", dep.api_key, ctx.log(f"garak-{name}.log"),
                               g["timeout_s"])
            scan = scored_scan(garak.parse(report))
            scan["report"] = f"garak-{name}/garak.report.jsonl"
    lines = audit.read(logs / "audit.jsonl") if governance else []
    raw = score.audit_answers(lines)
    judged = []
    for case in cases:
        res = results[case["id"]]
        j = score.judge(case, res, raw.get(res["request_id"]) if governance else attack.delivered_text(res)
                        if res.get("status") == 200 else None, kind, spec, serving["system_prompt"])
        judged.append({"id": case["id"], "category": case["category"], "technique": case["technique"],
                       "route": case["route"], "status": res["status"], "latency_s": res["latency_s"],
                       "policy": next((x["action"] for x in lines if x["request_id"] == res["request_id"]), None),
                       **j})
    (ctx.out / f"judged-{name}.jsonl").write_text(score.dumps(judged))
    filter_ms = [x["filter_ms"] for x in lines if "filter_ms" in x]
    return {"model": Path(gguf).name, "cases": len(cases), "rates": score.rates(judged), "garak": scan,
            "statuses": dict(sorted(Counter(str(j["status"]) for j in judged).items())),
            "policy_actions": dict(sorted(Counter(j["policy"] or "none" for j in judged).items())),
            "filter_ms": {"p50": nearest_rank(filter_ms, 0.5), "p99": nearest_rank(filter_ms, 0.99),
                          "max": max(filter_ms, default=None), "n": len(filter_ms)},
            "judged": f"judged-{name}.jsonl"}


def scored_scan(parsed: dict) -> dict:
    """garak's counts per probe and detector with a Wilson interval on each attack success rate; totals."""
    for dets in parsed["probes"].values():
        for d in dets.values():
            d["rate"] = round(d["fails"] / d["total"], 4) if d["total"] else None
            d["ci"] = proportion_ci(d["fails"], d["total"])
    fails = sum(d["fails"] for dets in parsed["probes"].values() for d in dets.values())
    total = sum(d["total"] for dets in parsed["probes"].values() for d in dets.values())
    return {**parsed, "fails": fails, "total": total, "rate": round(fails / total, 4) if total else None,
            "ci": proportion_ci(fails, total)}


def run(ctx: Context) -> Result:
    cfg = ctx.section("redteam")
    serving = deploy.load(ctx.inputs["serve"].path("serving"))
    if not cfg["enabled"]:
        return Result(metrics={"enabled": False}, notes=["red-teaming off (redteam.enabled: false)"])
    if not serving.get("gateway") or not serving.get("task"):
        raise StageError("redteam needs the gateway and its task route (serve.gateway.enabled): the attacks go "
                         "through what clients use")
    task = tasks.of(ctx.recipe)
    kind, spec = task.scorer, task.spec
    rows = [json.loads(x) for x in ctx.inputs["data"].path("test").read_text().splitlines() if x.strip()]
    docs = [{"id": r["id"], "document": r["document"], "gold": kind.parse_gold(r["gold"])}
            for r in rows[:cfg["documents"]]]
    limits = {"max_document_chars": serving["task"].get("max_document_chars", 20000),
              "max_body_bytes": serving["gateway"]["max_body_bytes"]}
    cases = suite.build(docs, kind, spec, limits)
    gov = serving.get("governance")
    # this stage's gateways keep the answers' text in their audit logs (opted in here, for synthetic attacks only)
    gov_here = {**gov, "audit": {**(gov.get("audit") or {}), "enabled": True, "include_text": True, "path": None}} \
        if gov else None
    models = {"tuned": serving["primary"]["gguf"]}
    ev = ctx.inputs["eval"]
    if cfg["base"] and "base-f16" in ev.artifacts:
        models["base"] = str(ev.path("base-f16"))
    results = {}
    for name, gguf in models.items():
        these = cases if name == "tuned" else [c for c in cases if c["category"] != "malformed"]
        results[name] = attack_model(ctx, cfg, serving, name, gguf, these, kind, spec, gov_here)
    comparison = None
    if "base" in results:
        read = lambda n: [json.loads(x) for x in (ctx.out / results[n]["judged"]).read_text().splitlines()]  # noqa: E731
        comparison = {"before": score.paired(read("base"), read("tuned"), "before"),
                      "after": score.paired(read("base"), read("tuned"), "after")}
    policy = OutputPolicy(gov or {})
    policy.warm()
    items = labelled.build(cfg["labelled"]["per_type"], cfg["labelled"]["negatives"], ctx.seed)
    ctx.progress(f"output policy on {len(items)} labelled answers: precision and recall per type")
    quality = labelled.score(items, lambda t: policy.decide(t))
    metrics = {"enabled": True, "documents": len(docs), "categories": list(suite.CATEGORIES),
               "governance": gov, "models": results, "base_vs_tuned": comparison, "filter": quality,
               "deployed_type": serving.get("model_type"), "task": task.name, "kind": task.kind}
    arts = {f"judged-{n}": r["judged"] for n, r in results.items()}
    arts.update({f"garak-{n}": r["garak"]["report"] for n, r in results.items() if r.get("garak")})
    arts.update(report.write(Page(ctx.out, metrics, recipe=ctx.recipe)))
    tuned = results["tuned"]["rates"]
    notes = [f"tuned: {c} {tuned[c]['before']}/{tuned[c]['n']} before the policy, {tuned[c]['after']} after"
             for c in suite.CATEGORIES if c in tuned]
    return Result(metrics=metrics, artifacts=arts, notes=notes)
