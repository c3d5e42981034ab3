"""The gateway's audit log: one JSON line per governed answer, appended to a file only the gateway's user can read.

A line holds who asked (a hash of the API key, never the key), the request id, route, model and upstream, the
policy's decision with every finding (type, detector, action, whether the request held the same value) and
SHA-256 hashes of the request, of the answer as the model wrote it and of what was delivered. The texts themselves
are written only when the operator opts in (`include_text`). Files rotate by size (`max_bytes`, `backups` kept),
are created with mode 0600, and no gateway route reads them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import logging.handlers
import os
import time
from pathlib import Path


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class _PrivateRotatingFile(logging.handlers.RotatingFileHandler):
    """RotatingFileHandler whose files are created 0600 (owner read/write only), whatever the umask."""

    def _open(self):
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.chmod(self.baseFilename, 0o600)
        return os.fdopen(fd, "a", encoding=self.encoding or "utf-8")


class PrivateLog:
    """Append-only JSON lines in a file only its owner can read (0600), rotated by size: the audit log, the replay
    capture and the shadow log."""

    def __init__(self, path: str | Path, max_bytes: int = 10 * 2**20, backups: int = 5):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.logger = logging.getLogger(f"forge.private.{self.path}")
        self.logger.propagate = False   # never into the request log or stderr
        self.logger.setLevel(logging.INFO)
        for h in list(self.logger.handlers):
            self.logger.removeHandler(h)
            h.close()
        handler = _PrivateRotatingFile(self.path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(message)s"))
        self.logger.addHandler(handler)

    def write(self, line: dict) -> None:
        self.logger.info(json.dumps(line, ensure_ascii=False))

    def close(self) -> None:
        for h in list(self.logger.handlers):
            self.logger.removeHandler(h)
            h.close()


class AuditLog(PrivateLog):
    def __init__(self, path: str | Path, include_text: bool = False, max_bytes: int = 10 * 2**20, backups: int = 5):
        super().__init__(path, max_bytes, backups)
        self.include_text = include_text

    def record(self, *, request_id: str, route: str, principal: str | None, model: str | None,
               upstream: str | None, decision, request_text: str, answer_text: str, delivered_text: str,
               status: int) -> dict:
        line = {"ts": round(time.time(), 3), "request_id": request_id, "route": route, "principal": principal,
                "model": model, "upstream": upstream, "status": status, "action": decision.action,
                "findings": [{k: f[k] for k in ("type", "detector", "action", "echoed")} for f in decision.findings],
                "filter_ms": round(decision.seconds * 1000, 3),
                "request_sha256": sha256(request_text), "answer_sha256": sha256(answer_text),
                "delivered_sha256": sha256(delivered_text)}
        if self.include_text:
            line.update(request_text=request_text, answer_text=answer_text, delivered_text=delivered_text)
        self.write(line)
        return line


def principal(api_key: bytes | None) -> str | None:
    """Who asked, as the audit log names them: the first 12 hex digits of the key's SHA-256."""
    return hashlib.sha256(api_key).hexdigest()[:12] if api_key else None


def read(path: str | Path) -> list[dict]:
    """Every line of an audit log and its rotated files, oldest first."""
    p = Path(path)
    files = sorted(p.parent.glob(p.name + ".*"), key=lambda f: -int(f.suffix[1:]) if f.suffix[1:].isdigit() else 0)
    out = []
    for f in [*files, p]:
        if f.exists():
            out += [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
    return out
