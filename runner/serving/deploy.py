"""A deployment described by serving.json (written by the serve stage): start it, hand out its endpoints,
stop it. Used by the serve and loadtest stages and by `just serve`."""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from runner.adapters import llama_cpp, sglang
from runner.serving import supervisor
from runner.stage import StageError


@dataclass
class Endpoint:
    role: str       # primary | cheap (a cascade's first tier) | fallback
    url: str
    model: str
    ready_s: float
    engine: supervisor.SupervisedServer | None = None   # restarts it when it exits
    routes: tuple[str, ...] = ("chat", "task")           # the gateway routes it serves
    weights: str | None = None   # the model file it serves: two engines of one file give the same greedy answer


def spec(serve_cfg: dict, primary: Path, primary_hf: Path | None, fallbacks: list[dict], threads: int,
         task: dict | None = None, cheap: dict | None = None) -> dict:
    """The serving config: engine, models, the per-replica settings an operator would tune, and the gateway.
    fallbacks: [{"gguf", "alias", "routes"}], one engine each; cheap: the cascade's first tier (one engine)."""
    gw = dict(serve_cfg["gateway"])
    if gw.get("max_in_flight") is None:  # the engines' slots: more in flight only queues inside llama-server
        gw["max_in_flight"] = serve_cfg["replicas"] * serve_cfg["parallel"]
    return {
        "engine": serve_cfg["engine"], "replicas": serve_cfg["replicas"], "parallel": serve_cfg["parallel"],
        "ctx_size": serve_cfg["ctx_size"], "threads": threads, "ready_timeout_s": serve_cfg["ready_timeout_s"],
        "sglang": serve_cfg["sglang"], "engine_args": serve_cfg["engine_args"],
        "fallback_threads": serve_cfg["fallback_threads"],
        "primary": {"gguf": str(primary), "hf_dir": str(primary_hf) if primary_hf else None, "alias": "primary"},
        "fallbacks": [{**f, "gguf": str(f["gguf"])} for f in fallbacks],
        "cheap": {**cheap, "gguf": str(cheap["gguf"])} if cheap else None,
        "gateway": gw if gw["enabled"] else None,
        "governance": serve_cfg.get("governance") if (serve_cfg.get("governance") or {}).get("enabled") else None,
        "task": task,
    }


@dataclass
class Deployment:
    endpoints: list[Endpoint]
    gateway_url: str | None
    api_key: str | None
    gateway_pid: int | None = None

    @property
    def primary(self) -> Endpoint:
        return next(e for e in self.endpoints if e.role == "primary")

    def restarts(self) -> list[dict]:
        return [{"engine": f"{e.role}-{i}", **ev} for i, e in enumerate(self.endpoints) if e.engine
                for ev in e.engine.events]


@contextlib.contextmanager
def up(serving: dict, logs: Path, api_key: str | None = None, port: int | None = None,
       gateway_extra: dict | None = None) -> Iterator[Deployment]:
    """Engines, then the gateway in front of them (when configured), with `api_key` (default: a fresh random
    key for this deployment only). gateway_extra: more gateway config (`capture`, `shadow` from `just serve`)."""
    import secrets
    with start(serving, logs) as endpoints:
        gw = serving.get("gateway")
        if not gw:
            yield Deployment(endpoints, None, None)
            return
        key = api_key or secrets.token_urlsafe(24)
        cfg = gateway_config(endpoints, gw, serving.get("task"), serving.get("served_model", "model"),
                             serving.get("governance"))
        cfg.update(gateway_extra or {})
        with start_gateway(cfg, logs, port=port, api_keys=key) as (url, process):
            yield Deployment(endpoints, url, key, process.pid)


@contextlib.contextmanager
def start(serving: dict, logs: Path) -> Iterator[list[Endpoint]]:
    if serving["engine"] == "sglang":
        with start_sglang(serving, logs) as endpoints:
            yield endpoints
        return
    with contextlib.ExitStack() as stack:
        endpoints = []
        roles = [("primary", serving["primary"], serving["replicas"], serving["threads"])]
        if serving.get("cheap"):  # the cascade's first tier
            roles.append(("cheap", serving["cheap"], 1, serving["cheap"].get("threads") or serving["threads"]))
        roles += [("fallback", fb, 1, serving.get("fallback_threads") or serving["threads"]) for fb in fallbacks_of(serving)]
        n = 0
        for role, model, replicas, threads in roles:
            for _ in range(replicas):
                engine = supervisor.supervise(Path(model["gguf"]), logs / f"llama-server-{role}-{n}.log",
                                              threads, serving["parallel"], serving["ctx_size"],
                                              model["alias"], serving["ready_timeout_s"], serving.get("engine_args", ()))
                n += 1
                ready_s = engine.start()
                stack.callback(engine.stop)
                endpoints.append(Endpoint(role, engine.server.url, model["alias"], ready_s, engine,
                                          tuple(model.get("routes") or ("chat", "task")),
                                          str(Path(model["gguf"]).resolve())))
        yield endpoints


def fallbacks_of(serving: dict) -> list[dict]:
    """The fallback engines of a serving.json (older ones had one `fallback` for every route)."""
    if "fallbacks" in serving:
        return serving["fallbacks"]
    return [dict(serving["fallback"], routes=["chat", "task"])] if serving.get("fallback") else []


@contextlib.contextmanager
def start_sglang(serving: dict, logs: Path) -> Iterator[list[Endpoint]]:
    """SGLang replicas (and the router before several) as the primary; the fallback stays a CPU llama-server."""
    import os
    import time

    from runner import proc
    try:
        plan = sglang.plan(serving, [llama_cpp.free_port() for _ in range(serving["replicas"])], llama_cpp.free_port())
    except ValueError as e:
        raise StageError(f"serve.engine sglang: {e}") from None
    shown = "\n".join(" ".join(r["command"]) for r in plan["replicas"] + ([plan["router"]] if plan["router"] else []))
    if not sglang.available():
        raise StageError("serve.engine is sglang, which needs CUDA GPUs and the sglang package; this machine has "
                         f"neither. The deployment would run:\n{shown}")
    with contextlib.ExitStack() as stack:
        for i, r in enumerate(plan["replicas"] + ([plan["router"]] if plan["router"] else [])):
            stack.enter_context(proc.background(r["command"], logs / f"sglang-{i}.log",
                                                env={**os.environ, **r.get("env", {})}))
        t0 = time.time()
        while True:  # ready when the endpoint (router or single replica) generates
            try:
                status, _ = llama_cpp.http_json(plan["endpoint"] + "/v1/chat/completions", {
                    "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}, timeout=30)
                if status == 200:
                    break
            except OSError:
                pass
            if time.time() - t0 > serving["ready_timeout_s"]:
                raise StageError(f"SGLang not ready after {serving['ready_timeout_s']} s; logs in {logs}")
            time.sleep(1)
        endpoints = [Endpoint("primary", plan["endpoint"], serving["primary"]["alias"], time.time() - t0)]
        for i, fb in enumerate(fallbacks_of(serving)):
            engine = supervisor.supervise(Path(fb["gguf"]), logs / f"llama-server-fallback-{i}.log", serving["threads"],
                                          1, serving["ctx_size"], fb["alias"], serving["ready_timeout_s"])
            ready_s = engine.start()
            stack.callback(engine.stop)
            endpoints.append(Endpoint("fallback", engine.server.url, fb["alias"], ready_s, engine,
                                      tuple(fb.get("routes") or ("chat", "task")), str(Path(fb["gguf"]).resolve())))
        yield endpoints


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def gateway_config(endpoints: list[Endpoint], gw: dict, task: dict | None, served_model: str,
                   governance: dict | None = None) -> dict:
    """The gateway's config: its upstreams (the engines just started) plus the recipe's limits and output policy."""
    return {
        "served_model": served_model,
        "upstreams": [{"name": f"{e.role}-{i}", "role": e.role, "url": e.url, "model": e.model,
                       "routes": list(e.routes), "weights": e.weights} for i, e in enumerate(endpoints)],
        "limits": {k: gw[k] for k in ("max_in_flight", "max_queue", "queue_timeout_s", "upstream_timeout_s",
                                      "max_tokens", "max_body_bytes")},
        "breaker": gw["breaker"],
        "auth": {"api_keys_env": gw["api_keys_env"], "required": True},
        "task": task,
        "governance": governance,
    }


@contextlib.contextmanager
def start_gateway(cfg: dict, logs: Path, port: int | None = None, api_keys: str | None = None,
                  timeout: float = 30.0) -> Iterator[tuple[str, object]]:
    """Run the gateway (gateway venv) on a loopback port until the block exits; yields (base URL, process)."""
    import os

    from runner import env, proc
    port = port or llama_cpp.free_port()
    logs.mkdir(parents=True, exist_ok=True)
    gov = cfg.get("governance")
    if gov and not (gov.get("audit") or {}).get("path"):   # beside the request log
        cfg = {**cfg, "governance": {**gov, "audit": {**(gov.get("audit") or {}), "path": str(logs / "audit.jsonl")}}}
    (logs / "gateway.json").write_text(json.dumps(cfg, indent=2))
    e = {**os.environ, "PYTHONPATH": str(env.REPO)}
    if api_keys is not None:
        e[cfg["auth"]["api_keys_env"]] = api_keys
    cmd = [env.venv("gateway").python, "-m", "runner.gateway", logs / "gateway.json", "--port", str(port),
           "--log", logs / "gateway-requests.jsonl"]
    with proc.background(cmd, logs / "gateway.log", env=e, cwd=env.REPO) as p:
        url = f"http://127.0.0.1:{port}"
        failed = proc.wait_http_ok(p, url + "/healthz", timeout)
        if failed:
            raise StageError(f"the gateway was not up: {failed}\n{proc.tail(logs / 'gateway.log')}",
                             log=logs / "gateway.log")
        yield url, p
