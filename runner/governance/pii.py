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


# Shapes a phone number never has: dates (02.06.2025, 15/10/2024, 2024-10-15) and amounts with decimals (3566.89,
# 1.973,52). In business documents they are most of phonenumbers' candidates (each parsed in every region: ~85% of
# the scan's time) and its false positives (a de_CH date or an amount accepted as a possible number). They are
# blanked, same length, in the text the phone recognizer reads, so offsets stay; a digit or separator-and-digit
# on either side means the span is part of a longer number (01.23.45.67.89 is a French phone) and is left alone.
NOT_PHONE = re.compile(r"(?<![\d.,/+-])(?:\d{1,2}[./-]\d{1,2}[./-](?:\d{4}|\d{2})|\d{4}-\d{2}-\d{2}"
                       r"|\d{1,3}(?:[.,' ]\d{3})+[.,]\d{2}|\d+[.,]\d{2})(?![.,/-]?\d)")
PRESIDIO = {v: k for k, v in ENTITY_TYPES.items()}
TYPES = (*ENTITY_TYPES.values(), "secret")


# A stretch of digits and the separators phonenumbers' matcher reads between them, within a line: no candidate it
# finds in a stretch holding fewer digits than the shortest valid number of any region scanned can be valid.
DIGIT_STRETCH = re.compile(r"[\d+()\[\]./~ \t-]+")


@lru_cache(maxsize=1)
def _min_phone_digits() -> int:
    from phonenumbers import PhoneMetadata
    return min(min(PhoneMetadata.metadata_for_region(r).general_desc.possible_length) for r in PHONE_REGIONS)


def phone_view(text: str) -> str:
    """The text the phone recognizer reads, same length: dates and amounts (NOT_PHONE) and digit stretches too
    short to be a phone number (quantities, house numbers) blanked; digits right after a letter are kept, as they
    may be an extension (555-1234x281). In invoices the short stretches were 63% of the matcher's candidates, each
    parsed in every region."""
    text = NOT_PHONE.sub(lambda m: " " * len(m.group()), text)
    least = _min_phone_digits()

    def blank(m: re.Match) -> str:
        s = m.group()
        if (m.start() and s[0].isdigit() and text[m.start() - 1].isalpha()) or sum(c.isdigit() for c in s) >= least:
            return s
        return " " * len(s)
    return DIGIT_STRETCH.sub(blank, text)


def detect_pii(text: str, types=TYPES) -> list[Finding]:
    return detect_pii_many([text], types)[0]


def detect_pii_many(texts: list[str], types=TYPES) -> list[list[Finding]]:
    """Presidio's batch engine over the texts, only for the entity `types` asked for; the phone recognizer reads
    each text's `phone_view`."""
    analyzer = _analyzer()  # first: it sets what tldextract reads at import (no download)
    from presidio_analyzer import BatchAnalyzerEngine

    engine = BatchAnalyzerEngine(analyzer_engine=analyzer)
    outs: list[list[Finding]] = [[] for _ in texts]
    others = [PRESIDIO[t] for t in types if t in PRESIDIO and t != "phone"]
    runs = ([(texts, others)] if others else []) + \
        ([([phone_view(t) for t in texts], ["PHONE_NUMBER"])] if "phone" in types else [])
    for read, entities in runs:
        for i, results in enumerate(engine.analyze_iterator(read, language="en", entities=entities, batch_size=64)):
            for r in results:
                kind = ENTITY_TYPES[r.entity_type]
                value = texts[i][r.start:r.end]
                if _valid(kind, value):
                    outs[i].append(Finding(kind, r.start, r.end, value, f"presidio:{r.entity_type}"))
    return [_dedupe_overlaps(o) for o in outs]


def detect_secrets(text: str) -> list[Finding]:
    return detect_secrets_many([text])[0]


def detect_secrets_many(texts: list[str]) -> list[list[Finding]]:
    from detect_secrets.core.scan import scan_line
    from detect_secrets.plugins.base import RegexBasedDetector
    from detect_secrets.settings import get_plugins, transient_settings

    outs = []
    with transient_settings({"plugins_used": [{"name": p} for p in SECRET_PLUGINS]}):
        # Every plugin named finds secrets only where one of its `denylist` patterns matches a line, so a text
        # that no pattern matches anywhere (read line by line: MULTILINE) has none and skips the line-by-line
        # scan, which goes through each plugin and filter per line (0.44 -> 0.06 ms an invoice, same findings).
        plugins = get_plugins()
        denylist = [re.compile(rx.pattern, rx.flags | re.MULTILINE) for p in plugins for rx in p.denylist] \
            if all(isinstance(p, RegexBasedDetector) for p in plugins) else None
        for text in texts:
            out, offset = [], 0
            if denylist is not None and not any(rx.search(text) for rx in denylist):
                outs.append(out)
                continue
            for line in text.splitlines(keepends=True):
                for s in scan_line(line):
                    value = s.secret_value or ""
                    start = line.find(value) if value else -1
                    if start < 0:
                        start, value = 0, line.rstrip("\n")
                    out.append(Finding("secret", offset + start, offset + start + len(value), value,
                                       f"detect-secrets:{s.type}"))
                offset += len(line)
            outs.append(out)
    return outs


def _dedupe_overlaps(findings: list[Finding]) -> list[Finding]:
    """Keep the longest finding where spans overlap (a card number inside a phone-looking span, ...)."""
    kept: list[Finding] = []
    for f in sorted(findings, key=lambda f: (f.start, -(f.end - f.start))):
        if kept and f.start < kept[-1].end:
            continue
        kept.append(f)
    return kept


def scan(text: str, types=TYPES) -> list[Finding]:
    return scan_many([text], types)[0]


# The standard library's size of `re`'s pattern cache (Python 3.11).
RE_CACHE = 512


def keep_regex_cache() -> None:
    """numpy's f2py sets `re._MAXCACHE = 50` when imported (numpy/numpy#31104, fixed by #31105 after numpy 2.4.4),
    and scipy.integrate imports it, which datasketch imports. phonenumbers finds its patterns through that cache,
    so with 50 slots it recompiles them all the time: the scan ran 2.5x slower in the data stage than alone
    (5.2 against 2.2 ms a document). Put the standard size back before scanning."""
    if re._MAXCACHE < RE_CACHE:
        re._MAXCACHE = RE_CACHE


def scan_many(texts: list[str], types=TYPES) -> list[list[Finding]]:
    """Findings per text, for the finding `types` asked for only (a policy that keeps a type needs no detector)."""
    keep_regex_cache()
    pii = detect_pii_many(texts, types) if set(types) & set(ENTITY_TYPES.values()) else [[] for _ in texts]
    secrets = detect_secrets_many(texts) if "secret" in types else [[] for _ in texts]
    return [_dedupe_overlaps(p + s) for p, s in zip(pii, secrets)]


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
