"""The gateway: an OpenAI-compatible front for the engines (llama-server on CPU, SGLang on GPU) with auth,
admission control, least-outstanding routing, circuit breakers, fallback, a task endpoint validated per task kind
(extraction: the JSON Schema and consistency rules; classification: the label set), an output policy on answers
(PII and secrets: allow, flag, redact or block per type) with an audit log, health, Prometheus metrics and one JSON log
line per request.

Config (written by the serve stage, see `runner/serving/deploy.py`): upstreams, limits, breaker, auth, task, governance.
Every bad request gets a 4xx with an OpenAI-style error body; no stack trace ever reaches a client.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import time
import uuid

import aiohttp
import prometheus_client as prom
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from runner import kinds
from runner.gateway import upstream
from runner.gateway.admission import Admission, Rejected
from runner.gateway.metrics_spec import LATENCY_BUCKETS, TTFT_BUCKETS
from runner.gateway.resilience import CircuitBreaker, Router, Upstream
from runner.gateway.shadow import Shadow
from runner.governance import audit
from runner.governance.policy import TYPES, OutputPolicy

ROLES = {"system", "user", "assistant", "tool", "developer"}
STATE_CODE = {"closed": 0, "half_open": 1, "open": 2}


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None, usage: dict | None = None):
        self.status, self.type, self.param, self.code, self.headers = status, type_, param, code, headers or {}
        self.usage = usage   # what the request cost before it failed (a task whose every answer broke the contract)
        super().__init__(message)

    def response(self, request_id: str) -> JSONResponse:
        body = {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code}}
        if self.usage:
            body["usage"] = self.usage
        return JSONResponse(body, status_code=self.status, headers={"X-Request-Id": request_id, **self.headers})


class StreamedAnswer(StreamingResponse):
    """A relayed stream that keeps its admission slot and its upstream until the last byte is sent or the client
    goes away; then `on_close` gives them back and the request's latency and log line are recorded (`after`)."""

    def __init__(self, content, *, on_close, **kw):
        super().__init__(content, **kw)
        self.on_close, self.after, self.closed = on_close, None, False

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.close()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            await self.on_close()
        finally:
            if self.after:
                self.after(self.status_code)


class ShadowCounts:
    """forge_shadow_requests_total{outcome}: read from the shadow's own counts at each scrape."""

    def __init__(self, shadow):
        self.shadow = shadow

    def collect(self):
        from prometheus_client.core import CounterMetricFamily
        c = CounterMetricFamily("forge_shadow_requests", "Task requests mirrored to the shadow candidate, or not",
                                labels=["outcome"])
        for outcome, n in self.shadow.counts.items():
            c.add_metric([outcome], n)
        yield c


class Metrics:
    def __init__(self, gw: "Gateway"):
        r = self.registry = prom.CollectorRegistry()
        self.requests = prom.Counter("forge_requests", "Requests by route, model and status",
                                     ["route", "model", "status"], registry=r)
        self.latency = prom.Histogram("forge_request_latency_seconds", "Request latency", ["route"], registry=r,
                                      buckets=LATENCY_BUCKETS)
        self.ttft = prom.Histogram("forge_time_to_first_token_seconds", "Time to first streamed token", ["route"],
                                   registry=r, buckets=TTFT_BUCKETS)
        self.tokens = prom.Counter("forge_tokens", "Tokens in and out", ["direction", "model"], registry=r)
        self.fallbacks = prom.Counter("forge_fallbacks", "Requests answered by the fallback model",
                                      ["route", "reason"], registry=r)
        self.upstream_errors = prom.Counter("forge_upstream_errors", "Upstream failures", ["upstream", "kind"],
                                            registry=r)
        self.rejected = prom.Counter("forge_rejected", "Requests refused by admission control", ["status"],
                                     registry=r)
        self.escalations = prom.Counter("forge_escalations", "Task requests the cascade sent past its cheap tier",
                                        ["reason"], registry=r)
        self.policy_actions = prom.Counter("forge_policy_actions", "Answers by the output policy's decision",
                                           ["route", "action"], registry=r)
        self.policy_findings = prom.Counter("forge_policy_findings", "PII and secrets found in answers",
                                            ["type", "action"], registry=r)
        self.policy_seconds = prom.Histogram("forge_policy_seconds", "Time the output policy's scan took", ["route"],
                                             registry=r, buckets=(0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.05))
        prom.Gauge("forge_in_flight", "Requests being served", registry=r).set_function(
            lambda: gw.admission.in_flight)
        prom.Gauge("forge_queued", "Requests waiting for a slot", registry=r).set_function(
            lambda: gw.admission.queued)
        # the known label values exist from the start at 0: a series that appears with its first increment is
        # missed by Prometheus' rate()/increase() (nothing to take the difference from), so an alert on it would too
        for status in ("429", "503"):
            self.rejected.labels(status)
        for reason in ("contract", "cheap_busy", "cheap_unavailable"):
            self.escalations.labels(reason)
        if gw.shadow:
            r.register(ShadowCounts(gw.shadow))
        if gw.policy:
            for route in sorted(gw.governed):
                for action in ("pass", "flag", "redact", "block"):
                    self.policy_actions.labels(route, action)
        for u in gw.router.upstreams:
            for kind in ("connect", "timeout", "transport"):
                self.upstream_errors.labels(u.name, kind)
        circuit = prom.Gauge("forge_circuit_state", "0 closed, 1 half-open, 2 open", ["upstream"], registry=r)
        for u in gw.router.upstreams:
            circuit.labels(u.name).set_function(lambda u=u: STATE_CODE[u.breaker.state])


class Gateway:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        lim = cfg["limits"]
        br = cfg.get("breaker", {})
        self.router = Router([Upstream(u["name"], u["role"], u["url"], u["model"],
                                       CircuitBreaker(br.get("threshold", 3), br.get("reset_s", 10.0)),
                                       routes=tuple(u.get("routes") or ("chat", "task")), weights=u.get("weights"))
                              for u in cfg["upstreams"]])
        self.admission = Admission(lim["max_in_flight"], lim["max_queue"], lim["queue_timeout_s"])
        gov = cfg.get("governance") or {}
        self.policy = OutputPolicy(gov) if gov.get("enabled") else None
        self.governed = set(gov.get("routes") or ("chat", "task")) if self.policy else set()
        self.refusal = gov.get("refusal") or "I can't share that answer: it contained data this service does not release."
        a = gov.get("audit") or {}
        self.audit = audit.AuditLog(a["path"], a.get("include_text", False), a.get("max_bytes", 10 * 2**20),
                                    a.get("backups", 5)) if self.policy and a.get("enabled", True) else None
        if self.policy:
            self.policy.warm()
        self.timeout = aiohttp.ClientTimeout(total=lim["upstream_timeout_s"], connect=2.0)
        self._session: aiohttp.ClientSession | None = None   # streams; made in the server's event loop, on first use
        self.upstream_timeout_s = lim["upstream_timeout_s"]
        self.pools = {u.url: upstream.Pool(u.url) for u in self.router.upstreams}   # whole JSON answers
        task = cfg.get("task") or {}
        cap = cfg.get("capture") or {}
        self.capture = audit.PrivateLog(cap["path"], cap.get("max_bytes", 10 * 2**20), cap.get("backups", 5)) \
            if cap.get("path") and task else None
        self.capture_share = float(cap.get("share", 1.0))
        # what the capture and shadow logs keep of a text: the output policy's redactions, or all of them without one
        self.capture_policy = self.policy or OutputPolicy({"entities": dict.fromkeys(TYPES, "redact")})
        self.shadow = Shadow(cfg["shadow"], kinds.module(task["kind"]), task["spec"], self.capture_policy) \
            if cfg.get("shadow") and task else None
        if (self.capture or self.shadow) and not self.policy:
            self.capture_policy.warm()   # the recognizers load in ~1 s: not inside a request
        self.metrics = Metrics(self)
        keys_env = cfg.get("auth", {}).get("api_keys_env", "FORGE_API_KEYS")
        self.keys = [k.strip().encode() for k in os.environ.get(keys_env, "").split(",") if k.strip()]
        if cfg.get("auth", {}).get("required", True) and not self.keys:
            raise SystemExit(f"gateway: no API keys in ${keys_env} (comma-separated); refusing to start open")
        task = cfg.get("task") or {}
        self.task_cfg = task
        if task:
            self.task_kind = kinds.module(task["kind"])  # the kind's output contract: parse, check, constrain
        self.names = {cfg.get("served_model", "model")} | {u.model for u in self.router.upstreams} | \
            {"primary", "fallback"}
        self.log = logging.getLogger("forge.gateway")      # one JSON line per request
        self.errors = logging.getLogger("forge.errors")     # tracebacks: stderr (the gateway's process log)

    # ---- helpers ---------------------------------------------------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession:
        """The client for relayed streams: aiohttp, keep-alive connections, no proxy lookups. Whole JSON answers
        go through `upstream.Pool` (0.58 ms of CPU per forwarded request against aiohttp's 0.95)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout, connector=aiohttp.TCPConnector(limit=0),
                                                  auto_decompress=False)
        return self._session

    async def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        if self.audit:
            self.audit.close()
        if self.shadow:
            await self.shadow.close()
        if self.capture:
            self.capture.close()
        if self._session is not None:
            await self._session.close()

    async def post(self, u: Upstream, payload: dict, request_id: str, timeout_s: float | None = None
                   ) -> tuple[int, bytes]:
        return await self.pools[u.url].post("/v1/chat/completions", json.dumps(dict(payload, model=u.model)).encode(),
                                            {"X-Request-Id": request_id}, timeout_s or self.upstream_timeout_s)

    def authorize(self, request: Request, ctx: dict) -> None:
        if not self.keys:
            return
        header = request.headers.get("authorization", "")
        given = header[7:].strip().encode() if header.lower().startswith("bearer ") else \
            request.headers.get("x-api-key", "").encode()
        if not given or not any(hmac.compare_digest(given, k) for k in self.keys):
            raise ApiError(401, "missing or invalid API key (Authorization: Bearer <key>)", "authentication_error",
                           code="invalid_api_key")
        ctx["principal"] = audit.principal(given)

    def govern(self, route: str, ctx: dict, u: Upstream, request_text: str, answer: str, audit_now: bool = True):
        """The output policy on one answer: its decision, counted, timed and (unless the caller records what it
        delivers itself) written to the audit log."""
        d = self.policy.decide(answer, request_text)
        self.metrics.policy_actions.labels(route, d.action).inc()
        self.metrics.policy_seconds.labels(route).observe(d.seconds)
        for f in d.findings:
            self.metrics.policy_findings.labels(f["type"], f["action"]).inc()
        ctx["policy"] = d.action
        if audit_now:
            self.audited(route, ctx, u, d, request_text, answer, self.refusal if d.action == "block" else d.text, 200)
        return d

    def audited(self, route: str, ctx: dict, u: Upstream, d, request_text: str, answer: str, delivered: str,
                status: int) -> None:
        if self.audit:
            self.audit.record(request_id=ctx["request_id"], route=route, principal=ctx.get("principal"),
                              model=u.model, upstream=u.name, decision=d, request_text=request_text,
                              answer_text=answer, delivered_text=delivered, status=status)

    def govern_chat(self, data: dict, body: dict, ctx: dict, u: Upstream) -> dict:
        """Each choice's content through the policy: redacted in place, or replaced by the refusal (finish_reason
        `content_filter`, as OpenAI-compatible clients expect from a filtered answer)."""
        request_text = "\n".join(c if isinstance(c, str) else json.dumps(c) for c in
                                 (m.get("content") for m in body["messages"]))
        for choice in data.get("choices") or []:
            msg = choice.get("message") or {}
            text = msg.get("content")
            if not isinstance(text, str):
                continue
            d = self.govern("chat", ctx, u, request_text, text)
            if d.action == "block":
                msg["content"], choice["finish_reason"] = self.refusal, "content_filter"
            elif d.action == "redact":
                msg["content"] = d.text
        return data

    async def body(self, request: Request) -> dict:
        limit = self.cfg["limits"]["max_body_bytes"]
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body of {declared} bytes is over the limit of {limit}", code="body_too_large")
        raw = await request.body()
        if len(raw) > limit:
            raise ApiError(413, f"request body of {len(raw)} bytes is over the limit of {limit}", code="body_too_large")
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
        except RecursionError:   # arrays or objects nested thousands deep
            raise ApiError(400, "request body is nested too deeply", code="invalid_json") from None
        if not isinstance(data, dict):
            raise ApiError(400, "request body must be a JSON object", code="invalid_json")
        return data

    def check_chat(self, body: dict) -> dict:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise ApiError(400, "'messages' must be a non-empty array", param="messages")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                raise ApiError(400, f"messages[{i}].role must be one of {sorted(ROLES)}", param=f"messages[{i}].role")
            c = m.get("content")
            if not isinstance(c, (str, list)) or (isinstance(c, list) and not all(isinstance(p, dict) for p in c)):
                raise ApiError(400, f"messages[{i}].content must be a string or an array of content parts",
                               param=f"messages[{i}].content")
        model = body.get("model")
        if model is not None and (not isinstance(model, str) or model not in self.names):
            raise ApiError(404, f"model {model!r} does not exist; available: {sorted(self.names)}", param="model",
                           code="model_not_found")
        cap = self.cfg["limits"]["max_tokens"]
        for key in ("max_tokens", "max_completion_tokens"):
            v = body.get(key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1 or v > cap):
                raise ApiError(400, f"'{key}' must be an integer from 1 to {cap}", param=key)
        if "stream" in body and not isinstance(body["stream"], bool):
            raise ApiError(400, "'stream' must be a boolean", param="stream")
        for key in ("temperature", "top_p"):
            if key in body and (not isinstance(body[key], (int, float)) or isinstance(body[key], bool)):
                raise ApiError(400, f"'{key}' must be a number", param=key)
        out = dict(body)
        out.setdefault("max_tokens", min(cap, self.cfg["limits"].get("default_max_tokens", cap)))
        return out

    async def forward(self, route: str, payload: dict, request_id: str,
                      roles: tuple[str, ...] = ("primary", "fallback")) -> tuple[Upstream, dict, str]:
        """First upstream that answers: (upstream, JSON body, fallback reason or '')."""
        reason = ""
        for u in self.router.candidates(roles, route):
            for attempt in (0, 1):
                u.outstanding += 1
                try:
                    status, raw = await self.post(u, payload, request_id)
                except upstream.ConnectFailed:
                    self.metrics.upstream_errors.labels(u.name, "connect").inc()
                    if attempt == 0:
                        continue  # nothing was sent: one retry on the same upstream
                    u.breaker.failure()
                    reason = reason or f"{u.name}: connection refused"
                    break
                except upstream.TimedOut:
                    self.metrics.upstream_errors.labels(u.name, "timeout").inc()
                    u.breaker.failure()
                    reason = reason or f"{u.name}: timed out"
                    break
                except upstream.Broken as e:  # the engine died mid-request (connection reset, EOF)
                    self.metrics.upstream_errors.labels(u.name, "transport").inc()
                    u.breaker.failure()
                    reason = reason or f"{u.name}: {e}"
                    break
                finally:
                    u.outstanding -= 1
                if status >= 500:
                    self.metrics.upstream_errors.labels(u.name, f"http_{status}").inc()
                    u.breaker.failure()
                    reason = reason or f"{u.name}: HTTP {status}"
                    break
                u.breaker.success()
                try:
                    data = json.loads(raw)
                except ValueError:
                    raise ApiError(502, f"upstream {u.name} answered with non-JSON", "upstream_error") from None
                if status >= 400:  # the request's fault (e.g. prompt over the context): say so
                    msg = (data.get("error") or {}).get("message") if isinstance(data.get("error"), dict) else None
                    raise ApiError(400 if status != 404 else 404, msg or json.dumps(data)[:300],
                                   code=(data.get("error") or {}).get("type") if isinstance(data.get("error"), dict)
                                   else None)
                return u, data, (reason if u.role == "fallback" else "")
        if not any(u.role in roles and route in u.routes for u in self.router.upstreams):
            raise ApiError(503, f"no {' or '.join(roles)} upstream is configured for {route}", "upstream_error",
                           code="upstream_unavailable")
        raise ApiError(503, f"no upstream could answer ({reason or 'every circuit is open'})", "upstream_error",
                       code="upstream_unavailable", headers={"Retry-After": "5"})

    # ---- routes ----------------------------------------------------------------------------------------------

    async def chat(self, request: Request, ctx: dict) -> Response:
        body = self.check_chat(await self.body(request))
        ctx["prompt_chars"] = sum(len(json.dumps(m.get("content"))) for m in body["messages"])
        ctx["prompt_hash"] = hashlib.sha256(json.dumps(body["messages"]).encode()).hexdigest()[:12]
        if body.get("stream") and "chat" in self.governed:
            return await self.governed_stream(body, ctx)
        if body.get("stream"):
            await self.admission.acquire()
            try:
                return await self.stream(body, ctx)  # the stream gives the slot back when it ends
            except BaseException:
                self.admission.release()
                raise
        async with self.admission.slot():
            u, data, reason = await self.forward("chat", body, ctx["request_id"])
        if "chat" in self.governed:
            data = self.govern_chat(data, body, ctx, u)
        self.account(ctx, u, data.get("usage") or {}, reason, "chat")
        return JSONResponse(data, headers=self.headers(ctx, u, reason))

    async def governed_stream(self, body: dict, ctx: dict) -> Response:
        """A stream under the output policy: the whole answer is generated and checked before its first byte leaves
        (a redaction cannot take back tokens already sent), then sent as one chunk in the streaming format. Time to
        first token is then the whole latency: the price of filtering, stated in the README."""
        async with self.admission.slot():
            u, data, reason = await self.forward("chat", {k: v for k, v in body.items()
                                                          if k not in ("stream", "stream_options")},
                                                 ctx["request_id"])
        data = self.govern_chat(data, body, ctx, u)
        self.account(ctx, u, data.get("usage") or {}, reason, "chat_stream")
        base = {"id": data.get("id") or f"chatcmpl-{ctx['request_id']}", "object": "chat.completion.chunk",
                "created": data.get("created") or int(time.time()), "model": data.get("model") or u.model}
        events = []
        for i, choice in enumerate(data.get("choices") or []):
            msg = choice.get("message") or {}
            events.append({**base, "choices": [{"index": choice.get("index", i), "finish_reason": None,
                                                "delta": {"role": "assistant", "content": msg.get("content") or ""}}]})
            events.append({**base, "choices": [{"index": choice.get("index", i), "delta": {},
                                                "finish_reason": choice.get("finish_reason") or "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({**base, "choices": [], "usage": data.get("usage")})
        payload = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        self.metrics.ttft.labels("chat_stream").observe(0.0)   # nothing is sent before the whole answer
        return Response(payload, media_type="text/event-stream", headers=self.headers(ctx, u, reason))

    async def stream(self, body: dict, ctx: dict) -> Response:
        """Streaming goes to the first upstream whose circuit allows it; fallback only before the first byte."""
        t0 = time.monotonic()
        last_error = None
        for u in self.router.candidates(route="chat"):
            u.outstanding += 1
            try:
                resp = await self.session.post(u.url + "/v1/chat/completions",
                                               json=dict(body, model=u.model, stream=True))
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                u.outstanding -= 1
                u.breaker.failure()
                self.metrics.upstream_errors.labels(u.name, type(e).__name__).inc()
                last_error = f"{u.name}: {type(e).__name__}"
                continue
            if resp.status >= 400:
                try:
                    text = (await resp.read()).decode(errors="replace")
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    text = ""
                resp.release()
                u.outstanding -= 1
                if resp.status >= 500:
                    u.breaker.failure()
                    last_error = f"{u.name}: HTTP {resp.status}"
                    continue
                raise ApiError(400, text[:300])
            u.breaker.success()
            reason = last_error if u.role == "fallback" else ""
            metrics, route = self.metrics, "chat_stream"

            async def relay(resp=resp):
                first = True
                async for chunk in resp.content.iter_any():
                    if first:
                        metrics.ttft.labels(route).observe(time.monotonic() - t0)
                        first = False
                    yield chunk

            async def on_close(u=u, resp=resp):
                u.outstanding -= 1  # the bookkeeping first: closing the upstream may be cut short by a cancellation
                self.admission.release()
                resp.close()   # a stream cut short leaves its connection unusable: never back to the pool

            self.account(ctx, u, {}, reason, "chat_stream")
            return StreamedAnswer(relay(), on_close=on_close, media_type="text/event-stream",
                                  headers=self.headers(ctx, u, reason))
        raise ApiError(503, f"no upstream could answer ({last_error or 'every circuit is open'})", "upstream_error",
                       code="upstream_unavailable", headers={"Retry-After": "5"})

    async def task(self, request: Request, ctx: dict) -> Response:
        if not self.task_cfg:
            raise ApiError(404, "this deployment has no task endpoint")
        if request.path_params["name"] != self.task_cfg["name"]:
            raise ApiError(404, f"no task '{request.path_params['name']}' here: this deployment serves "
                                f"'{self.task_cfg['name']}' (POST {self.task_cfg['route']})")
        body = await self.body(request)
        doc = body.get("document")
        if not isinstance(doc, str) or not doc.strip():
            raise ApiError(400, "'document' must be a non-empty string", param="document")
        if len(doc) > self.task_cfg.get("max_document_chars", 20000):
            raise ApiError(400, f"'document' is over {self.task_cfg.get('max_document_chars', 20000)} characters",
                           param="document")
        ctx["prompt_chars"] = len(doc)
        ctx["prompt_hash"] = hashlib.sha256(doc.encode()).hexdigest()[:12]
        payload = {"messages": [{"role": "system", "content": self.task_cfg["system_prompt"]},
                                {"role": "user", "content": doc}],
                   "max_tokens": self.task_cfg["max_tokens"], "temperature": 0}
        spec = self.task_cfg["spec"]
        fmt = self.task_kind.response_format(spec)  # None: the kind has nothing to constrain (generation)
        first = bool(fmt and self.task_cfg.get("constrained"))
        # who is asked, in order: the primary as configured; when its answer fails the contract, the primary again
        # with the contract enforced by the engine; then the fallback (constrained too when retries are on)
        retry = bool(fmt and self.task_cfg.get("constrained_retry"))
        attempts = [("primary", first)] + ([("primary", True)] if retry and not first else []) + \
            [("fallback", first or retry)]
        failures = []
        spent = {"prompt_tokens": 0, "completion_tokens": 0, "generations": 0}   # answers that broke the contract
        async with self.admission.slot():
            escalated = None
            cheap = [u for u in self.router.by_role("cheap") if "task" in u.routes]
            cascade = self.task_cfg.get("cascade") if cheap else None
            if cascade:  # the cheap tier first, unless every one of its slots is taken
                if cascade.get("escalate_when_busy", True) and \
                        all(u.outstanding >= cascade.get("cheap_slots", 1) for u in cheap):
                    escalated = "cheap tier busy"
                    self.metrics.escalations.labels("cheap_busy").inc()
                else:
                    attempts.insert(0, ("cheap", first))
            down = set()
            asked = set()  # (model file, constrained) whose answer already failed the contract in this request
            for role, constrained in attempts:
                if role in down:
                    continue
                # the same file asked the same way again (e.g. a fallback engine of the deployed model after the
                # primary's constrained retry) gives the same greedy answer: skip it, it would only cost a generation
                same = [x for x in self.router.by_role(role) if "task" in x.routes]
                if same and all(x.weights and (x.weights, constrained) in asked for x in same):
                    failures.append(f"{role}: skipped, its model file already failed the contract "
                                    f"{'constrained' if constrained else 'unconstrained'}")
                    continue
                if role == "primary" and escalated is None and cascade and failures:
                    escalated = failures[-1]
                body = dict(payload, response_format=fmt) if constrained else payload
                try:
                    u, data, reason = await self.forward("task", body, ctx["request_id"], (role,))
                except ApiError as e:
                    if e.status >= 500:
                        failures.append(str(e))
                        down.add(role)
                        if role == "cheap":
                            self.metrics.escalations.labels("cheap_unavailable").inc()
                        continue
                    raise
                text = ((data.get("choices") or [{}])[0].get("message") or {}).get("content") or ""
                answer, problems = self.task_kind.check_answer(spec, text)
                if not problems:
                    why = "; ".join(failures) or reason
                    self.account(ctx, u, data.get("usage") or {}, why, "task")
                    decision = self.govern("task", ctx, u, doc, text, audit_now=False) \
                        if "task" in self.governed else None
                    if decision and decision.action == "block":
                        self.audited("task", ctx, u, decision, doc, text, "", 422)
                        raise ApiError(422, "the answer was withheld by the output policy: it contained "
                                       f"{', '.join(decision.types)}", "policy_error", code="output_policy_violation")
                    if decision and decision.action == "redact":   # in the parsed answer's strings
                        answer = self.policy.redact_values(answer, text, decision)
                    if decision:   # the audit log hashes what the client receives
                        self.audited("task", ctx, u, decision, doc, text, answer if isinstance(answer, str) else
                                     json.dumps(answer, ensure_ascii=False), 200)
                    out = {"answer": answer, "kind": self.task_cfg["kind"], "model": u.model, "upstream": u.name,
                           "fallback": u.role == "fallback", "fallback_reason": why or None,
                           "constrained": constrained, "usage": data.get("usage")}
                    if cascade:
                        out["tier"], out["escalated"] = u.role, (escalated if u.role != "cheap" else None)
                    if decision and decision.action != "pass":
                        out["policy"] = {"action": decision.action, "types": decision.types}
                    latency_ms = round((time.monotonic() - ctx["t0"]) * 1000, 1)
                    if self.shadow:
                        self.shadow.mirror(body, ctx["request_id"], doc,
                                           {"model": u.model, "answer": answer, "latency_ms": latency_ms})
                    if self.capture:
                        self.record_capture(ctx, u, doc, answer, latency_ms)
                    if self.task_cfg["kind"] == "extraction":
                        out["fields"] = answer
                    return JSONResponse(out, headers=self.headers(ctx, u, why))
                self.metrics.upstream_errors.labels(u.name, "task_schema").inc()
                used = data.get("usage") or {}
                spent["generations"] += 1
                for k in ("prompt_tokens", "completion_tokens"):
                    spent[k] += used.get(k) or 0
                if u.weights:
                    asked.add((u.weights, constrained))
                if role == "cheap":
                    self.metrics.escalations.labels("contract").inc()
                failures.append(f"{u.name}{' (constrained)' if constrained else ''}: output failed the task's "
                                f"contract ({problems[0][:120]})")
        raise ApiError(502, "no model produced output that passes the task's contract (" + "; ".join(failures) + ")",
                       "upstream_error", code="task_schema_failed", usage=spent if spent["generations"] else None)

    def record_capture(self, ctx: dict, u: Upstream, doc: str, answer, latency_ms: float) -> None:
        """One task request for replay (`just replay --log`): the document redacted by the output policy (every type
        it redacts or blocks, echo or not), the SHA-256 of the original, what was delivered and how fast."""
        h = hashlib.sha256(ctx["request_id"].encode()).digest()
        if int.from_bytes(h[:8], "big") / 2**64 >= self.capture_share:
            return
        d = self.capture_policy.decide(doc, redact_all=True)
        self.capture.write({"ts": round(time.time(), 3), "request_id": ctx["request_id"], "route": "task",
                            "document": d.text, "document_sha256": hashlib.sha256(doc.encode()).hexdigest(),
                            "redacted": d.types, "answer": answer, "model": u.model, "upstream": u.name,
                            "latency_ms": latency_ms, "status": 200})

    async def models(self, request: Request, ctx: dict) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": n, "object": "model", "owned_by": "finetune-forge"} for n in sorted(self.names)]})

    async def readyz(self, request: Request, ctx: dict) -> Response:
        async def probe(u: Upstream):
            try:
                status, _ = await self.post(u, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
                                            ctx["request_id"], 10)
                return status == 200
            except upstream.UpstreamError:
                return False
        ups = self.router.upstreams
        results = await asyncio.gather(*(probe(u) for u in ups))
        status = {u.name: {**u.info(), "up": ok} for u, ok in zip(ups, results)}
        primary_up = any(ok for u, ok in zip(ups, results) if u.role == "primary")
        any_up = any(results)
        state = "ready" if primary_up else "degraded" if any_up else "down"
        return JSONResponse({"status": state, "upstreams": status}, status_code=200 if any_up else 503)

    # ---- bookkeeping -----------------------------------------------------------------------------------------

    def headers(self, ctx: dict, u: Upstream, reason: str) -> dict:
        h = {"X-Request-Id": ctx["request_id"], "X-Forge-Model": u.model, "X-Forge-Upstream": u.name}
        if ctx.get("policy"):
            h["X-Forge-Policy"] = ctx["policy"]
        if u.role == "fallback":
            h["X-Forge-Fallback"] = "true"
        return h

    def account(self, ctx: dict, u: Upstream, usage: dict, reason: str, route: str) -> None:
        ctx["model"] = u.model
        ctx["prompt_tokens"] = usage.get("prompt_tokens")
        ctx["completion_tokens"] = usage.get("completion_tokens")
        if usage:
            self.metrics.tokens.labels("in", u.model).inc(usage.get("prompt_tokens") or 0)
            self.metrics.tokens.labels("out", u.model).inc(usage.get("completion_tokens") or 0)
        if u.role == "fallback":
            ctx["fallback"] = True
            self.metrics.fallbacks.labels(route, (reason or "primary unavailable")[:60].split(":")[-1].strip()).inc()


def build(cfg: dict) -> Starlette:
    gw = Gateway(cfg)

    def endpoint(route: str, handler, auth: bool = True):
        async def run(request: Request) -> Response:
            t0 = time.monotonic()
            ctx = {"request_id": request.headers.get("x-request-id") or uuid.uuid4().hex[:16], "route": route,
                   "model": None, "t0": t0}
            try:
                if auth:
                    gw.authorize(request, ctx)
                resp = await handler(request, ctx)
            except ApiError as e:
                resp = e.response(ctx["request_id"])
            except Rejected as e:
                gw.metrics.rejected.labels(str(e.status)).inc()
                resp = ApiError(e.status, str(e), "rate_limit_error" if e.status == 429 else "server_busy",
                                headers={"Retry-After": str(e.retry_after)}).response(ctx["request_id"])
            except Exception as e:  # never a stack trace to the client; the log has the type
                gw.errors.exception(f"unhandled error in request {ctx['request_id']}")
                ctx["error"] = type(e).__name__
                resp = ApiError(500, "internal error; see the gateway log with this request id",
                                "server_error").response(ctx["request_id"])
            def record(status: int) -> None:
                latency = time.monotonic() - t0
                gw.metrics.requests.labels(route, ctx.get("model") or "-", str(status)).inc()
                gw.metrics.latency.labels(route).observe(latency)
                line = {"ts": round(time.time(), 3), "request_id": ctx["request_id"], "route": route,
                        "status": status, "latency_ms": round(latency * 1000, 1), "model": ctx.get("model"),
                        "fallback": ctx.get("fallback", False), "prompt_tokens": ctx.get("prompt_tokens"),
                        "completion_tokens": ctx.get("completion_tokens"), "prompt_chars": ctx.get("prompt_chars"),
                        "prompt_sha256": ctx.get("prompt_hash")}
                if isinstance(resp, StreamedAnswer):
                    line["streamed"] = True
                if ctx.get("policy"):
                    line["policy"] = ctx["policy"]
                if "error" in ctx:
                    line["error"] = ctx["error"]
                gw.log.info(json.dumps(line))

            if isinstance(resp, StreamedAnswer):
                resp.after = record  # latency and the log line cover the whole stream
            else:
                record(resp.status_code)
            return resp
        return run

    async def healthz(request: Request, ctx: dict) -> Response:
        return JSONResponse({"status": "alive"})

    async def metrics(request: Request, ctx: dict) -> Response:
        return Response(prom.generate_latest(gw.metrics.registry), media_type=prom.CONTENT_TYPE_LATEST)

    routes = [
        Route("/v1/chat/completions", endpoint("chat", gw.chat), methods=["POST"]),
        Route("/v1/models", endpoint("models", gw.models), methods=["GET"]),
        Route("/v1/tasks/{name}", endpoint("task", gw.task), methods=["POST"]),
        Route("/healthz", endpoint("healthz", healthz, auth=False), methods=["GET"]),
        Route("/health", endpoint("healthz", healthz, auth=False), methods=["GET"]),  # what GuideLLM probes
        Route("/readyz", endpoint("readyz", gw.readyz, auth=False), methods=["GET"]),
        Route("/metrics", endpoint("metrics", metrics, auth=False), methods=["GET"]),
    ]

    async def not_found(request: Request, exc) -> Response:
        status = getattr(exc, "status_code", 404)
        return ApiError(status, f"{request.method} {request.url.path}: "
                        + ("method not allowed" if status == 405 else "no such route"),
                        code="not_found" if status == 404 else "method_not_allowed").response(uuid.uuid4().hex[:16])

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await gw.close()

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found}, lifespan=lifespan)
    app.state.gateway = gw
    return app
