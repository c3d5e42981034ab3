"""serve: pick the deployment model, write serving.json, and prove the deployment comes up and answers
(start it, wait for readiness, one real task request per endpoint, stop it)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from runner import tasks
from runner.adapters import llama_cpp
from runner.serving import decoding_check, deploy
from runner.reports.quantization import RERUN
from runner.stage import Context, Result, StageError

SECTIONS = ("task", "serve", "threads", "data", "name")
INPUTS = ("data", "train", "eval", "quantize")
RUNS = ("evals", "runner/kinds")  # read by code run outside our imports (lm-eval, the gateway, by path)
TOOLS = ("llama", "gateway")


def fastest(qm: dict) -> str:
    """f16 or a quant that passed the regression gate: whichever the quantize stage's scoring pass served the most
    test documents per second (the same items, the same llama-server slots). Smaller is not always faster: on an
    AVX-512 EPYC, q8_0 decoded one stream 1.4x faster than f16 but served 4 batched streams at 0.70x."""
    q = qm.get("quality") or {}
    speed = {"f16": ((q.get(RERUN) or {}).get("served") or {}).get("docs_per_s")}
    speed.update({t: ((q.get(t) or {}).get("served") or {}).get("docs_per_s")
                  for t, v in (qm.get("verdicts") or {}).items() if v.get("passed")})
    measured = {t: s for t, s in speed.items() if s}
    if not measured:
        raise StageError("serve.model 'fastest': the quantize stage served no model for speed (quantize.evaluate is "
                         "off); name a model or use 'chosen'")
    return max(measured, key=measured.get)


def choose_model(cfg: dict, quant) -> tuple[str, object]:
    choice = cfg["model"]
    if choice == "chosen":
        choice = quant.metrics.get("chosen", quant.metrics["smallest"])
    if choice == "fastest":
        choice = fastest(quant.metrics)
    if choice == "smallest":
        choice = quant.metrics["smallest"]
    if choice == "f16":
        return "f16", Path(quant.metrics["files"]["f16"]["path"])
    if choice not in quant.metrics["files"]:
        raise StageError(f"serve.model '{cfg['model']}' is not among the quantized models "
                         f"({', '.join(quant.metrics['files'])}, chosen, fastest, smallest)")
    return choice, quant.path(choice)


def gateway_checks(dep: deploy.Deployment, doc: dict, route: str) -> dict:
    """Through the gateway: readiness, one task request, one refused request (no key), one malformed request."""
    import httpx
    auth = {"Authorization": f"Bearer {dep.api_key}"}
    url = dep.gateway_url
    ready = httpx.get(url + "/readyz", timeout=30)
    t0 = time.time()
    task = httpx.post(url + route, headers=auth, json={"document": doc["document"]}, timeout=120)
    latency = round(time.time() - t0, 2)
    body = task.json()
    no_key = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    malformed = httpx.post(url + "/v1/chat/completions", headers=auth, content=b"{oops")
    if ready.status_code != 200:
        raise StageError(f"the gateway's /readyz answered {ready.status_code}: {ready.text[:300]}")
    if no_key.status_code != 401 or malformed.status_code != 400:
        raise StageError(f"the gateway let bad requests through: no key -> {no_key.status_code}, "
                         f"malformed JSON -> {malformed.status_code}")
    return {"readyz": ready.json(), "task": {"route": route, "status": task.status_code, "latency_s": latency,
                                             "model": body.get("model"), "fallback": body.get("fallback"),
                                             "answer": body.get("answer"), "error": body.get("error")},
            "refused": {"no_key": no_key.status_code, "malformed_json": malformed.status_code}}


def fallbacks(choice: dict, deployed, base) -> list[dict]:
    """One fallback engine per distinct model that serve.fallback names, with the routes it serves."""
    models = {"deployed": deployed, "base": base}
    out: dict[str, dict] = {}
    for route in ("chat", "task"):
        name = choice[route]
        if name == "none":
            continue
        if models[name] is None:
            raise StageError(f"serve.fallback.{route}: '{name}' has no model in this run (the quantize stage "
                             "quantizes the base model only when the eval stage scored it)")
        out.setdefault(name, {"gguf": models[name], "alias": f"fallback-{name}", "routes": []})["routes"].append(route)
    return list(out.values())


def cheap_tier(cfg: dict, quant, deployed_type: str) -> dict | None:
    """The cascade's first tier: a gated quant of the tuned model, cheaper than the deployed one."""
    r = cfg["routing"]
    if r["policy"] != "cascade":
        return None
    q = r["cheap"]
    verdict = (quant.metrics.get("verdicts") or {}).get(q)
    if q not in quant.artifacts or verdict is None:
        raise StageError(f"serve.routing.cheap '{q}' is not among the quantized models "
                         f"({', '.join(v for v in (quant.metrics.get('verdicts') or {}))})")
    if not verdict.get("passed"):
        raise StageError(f"serve.routing.cheap '{q}' did not pass the quantize stage's regression gate "
                         f"({'; '.join(verdict.get('reasons', []))}): a cascade starts with a gated model")
    if q == deployed_type:
        raise StageError(f"serve.routing.cheap '{q}' is the deployed model itself: a cascade needs a cheaper one")
    return {"gguf": quant.path(q), "alias": f"cheap-{q}", "routes": ["task"], "type": q,
            "threads": r["cheap_threads"]}


def run(ctx: Context) -> Result:
    cfg = ctx.section("serve")
    quant = ctx.inputs["quantize"]
    qtype, gguf = choose_model(cfg, quant)
    model_name = quant.metrics["model"]
    hf_dir = (Path(quant.metrics["hf_model"]) if quant.metrics.get("hf_model") else  # the iterate stage's model
              ctx.inputs["train"].path(model_name) if model_name in ctx.inputs["train"].artifacts else None)
    fallback_engines = fallbacks(cfg["fallback"], gguf,
                                 quant.path("fallback") if "fallback" in quant.artifacts else None)
    the_task = tasks.of(ctx.recipe)
    task = {**the_task.describe(), "system_prompt": tasks.system_prompt(ctx.recipe),
            "max_tokens": cfg["gateway"]["task_max_tokens"], "constrained": cfg["gateway"]["constrained_task"],
            "constrained_retry": cfg["gateway"]["constrained_retry"]}
    cheap = cheap_tier(cfg, quant, qtype)
    if cheap:
        task["cascade"] = {"cheap": cheap["type"], "cheap_slots": cfg["parallel"],
                           "escalate_when_busy": cfg["routing"]["escalate_when_busy"]}
    threads = (cfg["routing"]["deployed_threads"] or ctx.threads) if cheap else ctx.threads
    serving = deploy.spec(cfg, gguf, hf_dir, fallback_engines, threads, task, cheap)
    serving["model_type"] = qtype
    serving["served_model"] = ctx.recipe["name"]
    serving["system_prompt"] = task["system_prompt"]
    (ctx.out / "serving.json").write_text(json.dumps(serving, indent=2) + "\n")
    doc = json.loads(ctx.inputs["data"].path("test").read_text().splitlines()[0])
    checks = []
    gateway = None
    with deploy.up(serving, ctx.logs) as dep:
        for ep in dep.endpoints:
            t0 = time.time()
            status, body = llama_cpp.http_json(ep.url + "/v1/chat/completions", {
                "messages": [{"role": "system", "content": serving["system_prompt"]},
                             {"role": "user", "content": doc["document"]}],
                "max_tokens": 200, "temperature": 0}, timeout=120)
            latency = time.time() - t0
            text = body.get("choices", [{}])[0].get("message", {}).get("content", "") if status == 200 else ""
            accepted = not the_task.scorer.check_answer(the_task.spec, text or "")[1]
            if status != 200:
                raise StageError(f"{ep.role} endpoint {ep.url} answered HTTP {status}: {body}", log=ctx.logs)
            checks.append({"role": ep.role, "url": ep.url, "ready_s": round(ep.ready_s, 2),
                           "task_latency_s": round(latency, 2), "answer_accepted": accepted,
                           "completion_tokens": body.get("usage", {}).get("completion_tokens")})
            ctx.progress(f"{ep.role} ready in {ep.ready_s:.1f}s, task answered in {latency:.1f}s")
        decoding = None
        if cfg["decoding_check"]["samples"]:
            n = cfg["decoding_check"]["samples"]
            ctx.progress(f"decoding check: {n} test documents per engine, free vs constrained to the task's contract")
            docs = decoding_check.load_docs(ctx.inputs["data"].path("test"), n)
            # one engine per role: primary replica 0, and the fallback that serves the task route
            first = {ep.role: ep for ep in reversed(dep.endpoints) if "task" in ep.routes}
            decoding = {role: decoding_check.measure(ep.url, docs, serving["system_prompt"], task["max_tokens"],
                                                     the_task)
                        for role, ep in sorted(first.items(), key=lambda kv: kv[0] != "primary")}
        if dep.gateway_url:
            gateway = gateway_checks(dep, doc, task["route"])
            ctx.progress(f"gateway: /readyz {gateway['readyz']['status']}, task endpoint HTTP "
                         f"{gateway['task']['status']} in {gateway['task']['latency_s']}s")
    return Result(metrics={"model_type": qtype, "model": model_name, "endpoints": checks, "gateway": gateway,
                           "decoding_check": decoding, "constrained_task": task["constrained"],
                           "engine": cfg["engine"], "replicas": cfg["replicas"], "parallel": cfg["parallel"]},
                  artifacts={"serving": "serving.json"},
                  notes=[f"{model_name} {qtype} on {cfg['engine']} x{cfg['replicas']}"])
