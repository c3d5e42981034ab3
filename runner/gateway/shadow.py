"""Shadow mode: a share of the task route's requests is sent again, after the client has its answer from the primary,
to a candidate deployment; the candidate's answer is never returned to anyone, only compared and logged.

Bounded so it cannot slow the primary: a request is mirrored only when fewer than `max_in_flight` mirrors are
running (else it is counted as skipped), each mirror has its own timeout, and the mirror starts after the primary's
answer is built (it never holds an admission slot). Which requests are mirrored is decided by a hash of the
request id, so a replayed request id is mirrored again. The log (private JSON lines, runner/governance/audit.py) holds
per mirrored request: both answers (redacted by the output policy when one is configured), whether each passes the
task's contract, whether they agree (the task kind's own comparison), and both latencies; `just replay
--shadow-log FILE` turns it into the comparison page.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import time

from runner.gateway import upstream
from runner.governance.audit import PrivateLog


class Shadow:
    def __init__(self, cfg: dict, kind, spec: dict, policy=None):
        self.url, self.model = cfg["url"], cfg.get("model") or "candidate"
        self.name = cfg.get("name") or "candidate"
        self.share = float(cfg.get("share", 0.1))
        self.max_in_flight = int(cfg.get("max_in_flight", 1))
        self.timeout_s = float(cfg.get("timeout_s", 60))
        self.kind, self.spec, self.policy = kind, spec, policy
        self.pool = upstream.Pool(self.url)
        self.log = PrivateLog(cfg["log"], cfg.get("max_bytes", 10 * 2**20), cfg.get("backups", 5))
        self.in_flight = 0
        self.counts = {"mirrored": 0, "skipped_busy": 0, "not_sampled": 0, "failed": 0}
        self._tasks: set[asyncio.Task] = set()

    def sampled(self, request_id: str) -> bool:
        h = int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:8], "big") / 2**64
        return h < self.share

    def mirror(self, payload: dict, request_id: str, document: str, primary: dict) -> bool:
        """Start a mirror of this request unless it is not sampled or the bound is reached; never waits."""
        if not self.sampled(request_id):
            self.counts["not_sampled"] += 1
            return False
        if self.in_flight >= self.max_in_flight:
            self.counts["skipped_busy"] += 1
            return False
        self.in_flight += 1
        self.counts["mirrored"] += 1
        task = asyncio.get_running_loop().create_task(self._run(payload, request_id, document, primary))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _run(self, payload: dict, request_id: str, document: str, primary: dict) -> None:
        t0 = time.monotonic()
        cand: dict = {"model": self.model}
        try:
            status, raw = await self.pool.post("/v1/chat/completions",
                                               json.dumps(dict(payload, model=self.model)).encode(),
                                               {"X-Request-Id": request_id, "X-Forge-Shadow": "true"}, self.timeout_s)
            cand["status"] = status
            text = ""
            if status == 200:
                data = json.loads(raw)
                text = ((data.get("choices") or [{}])[0].get("message") or {}).get("content") or ""
            answer, problems = self.kind.check_answer(self.spec, text) if status == 200 else (None, [f"HTTP {status}"])
            cand.update(valid=not problems, answer=answer, problem=problems[0][:200] if problems else None)
        except (upstream.UpstreamError, ValueError) as e:
            self.counts["failed"] += 1
            cand.update(status=None, valid=False, answer=None, problem=f"{type(e).__name__}: {e}"[:200])
        finally:
            self.in_flight -= 1
        cand["latency_ms"] = round((time.monotonic() - t0) * 1000, 1)
        agree = bool(cand.get("valid")) and self.kind.agree(self.spec, primary["answer"], cand["answer"])
        line = {"ts": round(time.time(), 3), "request_id": request_id, "document_sha256":
                hashlib.sha256(document.encode()).hexdigest(), "agree": agree,
                "primary": {**primary, "answer": self._private(primary["answer"])},
                "candidate": {**cand, "answer": self._private(cand.get("answer"))}}
        self.log.write(line)

    def _private(self, answer):
        """An answer as the log may keep it: redacted by the output policy's redact/block types."""
        if self.policy is None or answer is None:
            return answer
        text = answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False)
        return self.policy.redact_values(answer, text, self.policy.decide(text, redact_all=True))

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        self.pool.close()
        self.log.close()
