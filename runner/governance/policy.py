"""The gateway's output policy: what a model may say back, decided per entity type on every answer.

The answer is scanned with the data stage's recognizers (runner/governance/pii.py: Presidio patterns validated by
stdnum/phonenumbers, detect-secrets named plugins); each finding gets the recipe's action for its type:

- `allow`: delivered as is; `flag`: delivered, recorded in the audit log and metrics;
- `redact`: its text replaced by a placeholder (`<EMAIL>`, ...);
- `block`: the whole answer withheld (the gateway answers with its refusal).

The strictest action wins (block > redact > flag > allow). With `allow_echo`, a value the request itself contains
(the user's own document) is only flagged: echoing it back is not a leak. Values are compared after folding
spaces, dashes and case, so `DE89 3704 ...` in the document matches `DE893704...` in the answer.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from runner.governance import pii

ACTIONS = ("allow", "flag", "redact", "block")
TYPES = tuple(pii.PLACEHOLDER)   # email, phone, iban, credit_card, secret
_FOLD = re.compile(r"[\s\-\.()/]")


def fold(value: str) -> str:
    return _FOLD.sub("", value).casefold()


@dataclass
class Decision:
    action: str                    # the strictest over the findings: pass (none found), allow, flag, redact, block
    text: str                      # what may be delivered (redacted), or the original when nothing is redacted
    findings: list[dict] = field(default_factory=list)   # {type, detector, action, echoed, start, end}
    seconds: float = 0.0           # the scan's own time

    @property
    def types(self) -> list[str]:
        return sorted({f["type"] for f in self.findings})


class OutputPolicy:
    def __init__(self, cfg: dict):
        self.actions = {t: cfg.get("entities", {}).get(t, "flag") for t in TYPES}
        bad = {t: a for t, a in self.actions.items() if a not in ACTIONS}
        if bad:
            raise ValueError(f"governance.entities: unknown action(s) {bad}; expected one of {ACTIONS}")
        self.allow_echo = bool(cfg.get("allow_echo", True))

    def warm(self) -> None:
        """Build the recognizers now (~1 s), not in the first request."""
        pii.scan("warm-up a@b.example")

    def decide(self, text: str, request_text: str = "", redact_all: bool = False) -> Decision:
        """redact_all: every finding whose type the policy redacts or blocks is redacted, echo or not (what a
        capture or shadow log may keep of a text)."""
        t0 = time.perf_counter()
        found = pii.scan(text) if text else []
        echoed_values = fold(request_text) if self.allow_echo and request_text else ""
        findings, rank = [], -1
        for f in found:
            echoed = bool(echoed_values) and fold(f.value) in echoed_values
            action = self.actions[f.type]
            if redact_all and action in ("redact", "block"):
                action = "redact"
            elif echoed and action in ("redact", "block"):
                action = "flag"
            findings.append({"type": f.type, "detector": f.detector, "action": action, "echoed": echoed,
                             "start": f.start, "end": f.end})
            rank = max(rank, ACTIONS.index(action))
        out = text
        for f in sorted((f for f in findings if f["action"] == "redact"), key=lambda f: f["start"], reverse=True):
            out = out[:f["start"]] + pii.PLACEHOLDER[f["type"]] + out[f["end"]:]
        return Decision("pass" if rank < 0 else ACTIONS[rank], out, findings, time.perf_counter() - t0)

    def redact_values(self, obj, text: str, decision: Decision):
        """The redactions of `decision` (made on `text`, the answer as the model wrote it) applied to a parsed answer:
        every string in it that holds a redacted value gets the placeholder instead."""
        values = [(text[f["start"]:f["end"]], pii.PLACEHOLDER[f["type"]]) for f in decision.findings
                  if f["action"] == "redact"]
        if not values:
            return obj

        def walk(x):
            if isinstance(x, str):
                for value, placeholder in values:
                    x = x.replace(value, placeholder)
                return x
            if isinstance(x, dict):
                return {k: walk(v) for k, v in x.items()}
            if isinstance(x, list):
                return [walk(v) for v in x]
            return x
        return walk(obj)
