"""Routing policies compared on the same test documents: each variant (a serving.json) is brought up, every test
document goes once through `POST /v1/tasks/<name>` (the light driver, closed loop), each answer is scored against
its gold with the task kind's scorer (no answer scores as wrong), and the variants are set side by side: quality
with paired bootstrap intervals against a reference variant, documents/s, latency quantiles, cost per 1,000
documents, and (for a cascade) which tier answered and why requests escalated."""
from __future__ import annotations

import copy
import json
from pathlib import Path

from runner import tasks
from runner.quality import eval_analysis as ea
from runner.quality import stats
from runner.serving import deploy, task_load


def alone(serving: dict, gguf: str | Path, threads: int) -> dict:
    """One model on its own: the deployment's settings, no cheap tier, no fallback engines, `threads` threads."""
    s = copy.deepcopy(serving)
    s["primary"] = {**s["primary"], "gguf": str(gguf)}
    s["threads"] = threads
    s["fallbacks"], s["cheap"] = [], None
    s.pop("fallback", None)
    s["task"] = {k: v for k, v in s["task"].items() if k != "cascade"}
    if s.get("gateway"):
        s["gateway"] = {**s["gateway"], "max_in_flight": s["replicas"] * s["parallel"]}
    return s


def cascade(serving: dict, cheap_gguf: str | Path | None = None, threads: tuple[int, int] | None = None) -> dict:
    """The cascade without fallback engines: the deployment's own (cheap_gguf None), or one built on a single
    deployment with `cheap_gguf` as its first tier; threads: (deployed, cheap)."""
    s = copy.deepcopy(serving)
    s["fallbacks"] = []
    s.pop("fallback", None)
    if cheap_gguf is not None:
        s["cheap"] = {"gguf": str(cheap_gguf), "alias": f"cheap-{Path(cheap_gguf).stem}", "routes": ["task"],
                      "type": Path(cheap_gguf).stem}
        s["task"] = {**s["task"], "cascade": {"cheap": s["cheap"]["type"], "cheap_slots": s["parallel"],
                                              "escalate_when_busy": True}}
    if not s.get("cheap") or not (s.get("task") or {}).get("cascade"):
        raise ValueError("a cascade needs a cheap tier: the deployment has none and no cheap model was given")
    if threads:
        s["threads"], s["cheap"]["threads"] = threads
    if s.get("gateway"):
        s["gateway"] = {**s["gateway"], "max_in_flight": s["replicas"] * s["parallel"] + s["parallel"]}
    return s


def plan(serving: dict, threads: int) -> list[tuple[str, str, dict]]:
    """(key, label, serving) of what a cascade deployment is compared with: the deployed model alone and the cheap
    tier alone, each on `threads` (the whole machine), then the cascade as deployed."""
    if not serving.get("cheap"):
        raise ValueError("the deployment is not a cascade (serve.routing.policy: single)")
    strong = serving.get("model_type") or "deployed"
    weak = serving["task"]["cascade"]["cheap"]
    tiers = f"{serving['threads']} + {serving['cheap'].get('threads') or serving['threads']} threads"
    return [("deployed", f"{strong} alone, {threads} threads", alone(serving, serving["primary"]["gguf"], threads)),
            ("cheap", f"{weak} alone, {threads} threads", alone(serving, serving["cheap"]["gguf"], threads)),
            ("cascade", f"cascade {weak} → {strong}, {tiers}", cascade(serving))]


def answer_text(response: dict | None) -> str:
    ans = (response or {}).get("answer")
    if ans is None:
        return ""
    return ans if isinstance(ans, str) else json.dumps(ans)


def run_variant(name: str, serving: dict, docs: list[dict], task: tasks.Task, streams: int, out: Path,
                price_per_hour: float, timeout_s: float = 300, logs: Path | None = None) -> dict:
    """Every document once through the variant's task endpoint; per-item scores kept for the paired tests."""
    out.mkdir(parents=True, exist_ok=True)
    with deploy.up(serving, (logs or out) / f"logs-{name}") as dep:
        rows, timing = task_load.level(dep.gateway_url, serving["task"]["route"], [d["document"] for d in docs],
                                       dep.api_key, streams, len(docs), 10 * timeout_s, out, timeout_s,
                                       name=f"routing-{name}", keep_responses=True)
    by_index = {r["index"]: r for r in rows}
    items, tiers, escalated = [], {}, {}
    for i, doc in enumerate(docs):
        r = by_index.get(i) or {"status": 0, "response": None}
        resp = r.get("response") if r["status"] == 200 else None
        items.append(task.scorer.score(task.spec, doc, answer_text(resp)))
        if resp and resp.get("tier"):
            tiers[resp["tier"]] = tiers.get(resp["tier"], 0) + 1
            why = resp.get("escalated")
            if why:
                key = "cheap tier busy" if why == "cheap tier busy" else \
                    "contract" if "contract" in why else "cheap tier unavailable"
                escalated[key] = escalated.get(key, 0) + 1
    level = task_load.summarize(rows, timing, streams, {"p99_latency_s": float("inf"), "max_error_rate": 1.0},
                                price_per_hour, 2)
    quality = {k: ea.metric_values(items, k, agg) for k, agg in task.metrics().items()}
    return {"name": name, "items": items, "quality": quality,
            "summary": {"documents": len(docs), "answered_valid": level["answered_valid"],
                        "documents_per_s": level["documents_per_s"], "latency_s": level["latency_s"],
                        "usd_per_1k_documents": level["usd_per_1k_documents"], "statuses": level["statuses"],
                        "tiers": tiers or None, "escalations": escalated or None,
                        **{k: round(m.point(), 4) for k, m in quality.items()}}}


def compare(variants: list[dict], reference: str, metric_names: list[str], iters: int = 2000, seed: int = 0) -> dict:
    """Each variant's summary plus, per metric, its paired difference from the reference variant."""
    ref = next(v for v in variants if v["name"] == reference)
    out = {}
    for v in variants:
        diffs = {} if v is ref else {m: stats.paired(ref["quality"][m], v["quality"][m], iters, seed)
                                     for m in metric_names}
        out[v["name"]] = {**v["summary"], "vs_" + reference: diffs or None}
    return out
