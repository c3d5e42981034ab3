"""PII and secret detection with maintained libraries, then a policy per type: used by the data stage on
documents and by the gateway on answers (runner/governance/policy.py), so both see the same entities.

- Presidio's pattern recognizers (e-mail, IBAN, credit card, phone) with Presidio's no-op NLP engine: no spaCy
  model can be downloaded here, and the pattern recognizers need none (0.9 ms an answer against 2.0 ms through a
  blank spaCy pipeline). Names of people (NER) are therefore not detected; the audit says so.
- Presidio's own validators plus python-stdnum (IBAN, Luhn) and phonenumbers confirm candidates.
- detect-secrets with named plugins only (its entropy plugins flag ordinary words).
- Nothing leaves the machine: tldextract (under Presidio's e-mail recognizer) reads its bundled suffix list.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

ENTITY_TYPES = {"EMAIL_ADDRESS": "email", "PHONE_NUMBER": "phone", "IBAN_CODE": "iban", "CREDIT_CARD": "credit_card"}
SECRET_PLUGINS = ["AWSKeyDetector", "GitHubTokenDetector", "SlackDetector", "PrivateKeyDetector", "StripeDetector",
                  "JwtTokenDetector", "BasicAuthDetector", "OpenAIDetector"]
PHONE_REGIONS = ("US", "GB", "DE", "FR", "ES", "IT", "JP", "CH")
PLACEHOLDER = {"email": "<EMAIL>", "phone": "<PHONE>", "iban": "<IBAN>", "credit_card": "<CREDIT_CARD>",
               "secret": "<SECRET>"}


@dataclass
class Finding:
    type: str
    start: int
    end: int
    value: str
    detector: str


@lru_cache(maxsize=1)
def _analyzer():
    # Presidio's e-mail recognizer uses tldextract, which fetches the public suffix list from publicsuffix.org
    # and GitHub on first use (printing tracebacks when offline) unless its URL list is empty: then it reads the
    # snapshot it ships. Set before tldextract is imported (its default extractor reads this at import).
    import os
    os.environ["TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS"] = ""
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NoOpNlpEngine
    from presidio_analyzer.predefined_recognizers import (CreditCardRecognizer, EmailRecognizer, IbanRecognizer,
                                                          PhoneRecognizer)

    registry = RecognizerRegistry(supported_languages=["en"])
    for rec in (EmailRecognizer(), IbanRecognizer(), CreditCardRecognizer(),
                PhoneRecognizer(supported_regions=PHONE_REGIONS)):
        registry.add_recognizer(rec)
    return AnalyzerEngine(nlp_engine=NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}]),
                          registry=registry, supported_languages=["en"])


def _valid(kind: str, value: str) -> bool:
    digits = re.sub(r"\D", "", value)
    if kind == "iban":
        from stdnum import iban
        return iban.is_valid(value)
    if kind == "credit_card":
        from stdnum import luhn
        return 12 <= len(digits) <= 19 and luhn.is_valid(digits)
    if kind == "phone":
        import phonenumbers
        for region in PHONE_REGIONS:
            try:
                if phonenumbers.is_possible_number(phonenumbers.parse(value, region)):
                    return True
            except phonenumbers.NumberParseException:
                continue
        return False
    return True


def detect_pii(text: str) -> list[Finding]:
    out = []
    for r in _analyzer().analyze(text=text, language="en", entities=list(ENTITY_TYPES)):
        kind = ENTITY_TYPES[r.entity_type]
        value = text[r.start:r.end]
        if _valid(kind, value):
            out.append(Finding(kind, r.start, r.end, value, f"presidio:{r.entity_type}"))
    return _dedupe_overlaps(out)


def detect_secrets(text: str) -> list[Finding]:
    from detect_secrets.core.scan import scan_line
    from detect_secrets.settings import transient_settings

    out = []
    with transient_settings({"plugins_used": [{"name": p} for p in SECRET_PLUGINS]}):
        offset = 0
        for line in text.splitlines(keepends=True):
            for s in scan_line(line):
                value = s.secret_value or ""
                start = line.find(value) if value else -1
                if start < 0:
                    start, value = 0, line.rstrip("\n")
                out.append(Finding("secret", offset + start, offset + start + len(value), value, f"detect-secrets:{s.type}"))
            offset += len(line)
    return out


def _dedupe_overlaps(findings: list[Finding]) -> list[Finding]:
    """Keep the longest finding where spans overlap (a card number inside a phone-looking span, ...)."""
    kept: list[Finding] = []
    for f in sorted(findings, key=lambda f: (f.start, -(f.end - f.start))):
        if kept and f.start < kept[-1].end:
            continue
        kept.append(f)
    return kept


def scan(text: str) -> list[Finding]:
    return _dedupe_overlaps(detect_pii(text) + detect_secrets(text))


def apply_policy(text: str, findings: list[Finding], policy: dict) -> tuple[str, str]:
    """(new text, action): 'drop' if any finding's policy drops the record, else redactions applied."""
    actions = {policy.get(f.type, "flag") for f in findings}
    if "drop" in actions:
        return text, "drop"
    for f in sorted(findings, key=lambda f: f.start, reverse=True):
        if policy.get(f.type) == "redact":
            text = text[:f.start] + PLACEHOLDER[f.type] + text[f.end:]
    if "redact" in actions:
        return text, "redact"
    return text, "flag" if "flag" in actions else "keep"
