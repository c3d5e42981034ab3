"""A labelled set of model answers for the output policy's precision and recall: Faker's entities of every type the
policy governs, in seven locales, inside answer-like sentences and JSON, next to hard negatives (invoice and order
numbers, dates, amounts, a card number that fails Luhn, an IBAN with a wrong check digit, UUIDs, versions, ISBNs).

Synthetic on purpose: every label is known. What it measures is the recognizers on the formats Faker writes; names
of people are not among the types (no NER model offline), and that is said where the figures are shown.
"""
from __future__ import annotations

import random
import string

LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "it_IT", "es_ES", "nl_NL")
TEMPLATES = (
    "Sure. You can reach them at {v}.",
    "The record lists {v} as the contact.",
    '{{"seller": "Acme", "note": "{v}", "total": 120.50}}',
    "Details on file: {v} (updated 2024-03-01).",
    "I found this in the document: {v}",
)
NEGATIVES = (
    "Invoice INV-{n5}-{n3} dated 2024-{m:02d}-{d:02d}, total {amt} EUR, due in 30 days.",
    '{{"invoice_number": "INV-{n5}", "subtotal": {amt}, "tax": 19.0, "currency": "EUR"}}',
    "Order #{n8} ships from warehouse {n3}; tracking number 1Z{n8}{n3}.",
    "The package version is v{n1}.{n2}.{n1}; ISBN 978-3-16-148410-0 was cited.",
    "Reference {uuid} was created at 10:{n2} on 2024-{m:02d}-{d:02d}.",
    "SKU-{n5}-B costs {amt} and {n3} units are in stock (postcode {n5}).",
    "The card ending in {n4} was charged {amt} EUR.",
    "Your ticket number is {n8}{n5}; please quote it in your reply.",
)


def _secret(rng: random.Random) -> str:
    up, alnum = string.ascii_uppercase + string.digits, string.ascii_letters + string.digits
    kind = rng.randrange(4)
    if kind == 0:
        return "AKIA" + "".join(rng.choice(up) for _ in range(16))
    if kind == 1:
        return "ghp_" + "".join(rng.choice(alnum) for _ in range(36))
    if kind == 2:
        return "sk_live_" + "".join(rng.choice(alnum) for _ in range(24))
    return "xoxb-" + "-".join("".join(rng.choice(string.digits) for _ in range(12)) for _ in range(2)) + "-" + \
        "".join(rng.choice(alnum) for _ in range(24))


def _luhn_broken(rng: random.Random, fake) -> str:
    number = fake.credit_card_number(card_type="visa16")
    last = int(number[-1])
    return number[:-1] + str((last + 1 + rng.randrange(8)) % 10)


def _iban_broken(fake) -> str:
    iban = fake.iban()
    check = int(iban[2:4])
    return iban[:2] + f"{(check + 1) % 97 or 2:02d}" + iban[4:]


def build(per_type: int = 40, negatives: int = 100, seed: int = 0) -> list[dict]:
    """[{text, entities: [{type, value}]}]: `per_type` answers holding one entity of each type, `negatives` with none."""
    from faker import Faker

    rng = random.Random(seed)
    fakes = {loc: Faker(loc) for loc in LOCALES}
    for i, f in enumerate(fakes.values()):
        f.seed_instance(seed * 100 + i)
    makers = {
        "email": lambda f: f.email(),
        "phone": lambda f: f.phone_number(),
        "iban": lambda f: f.iban(),
        "credit_card": lambda f: f.credit_card_number(card_type=rng.choice(["visa16", "mastercard", "amex"])),
        "secret": lambda f: _secret(rng),
    }
    items = []
    for kind, make in makers.items():
        for i in range(per_type):
            fake = fakes[LOCALES[i % len(LOCALES)]]
            value = make(fake)
            items.append({"text": rng.choice(TEMPLATES).format(v=value), "entities": [{"type": kind, "value": value}],
                          "locale": fake.locales[0] if hasattr(fake, "locales") else LOCALES[i % len(LOCALES)]})
    fake = fakes["en_US"]
    for i in range(negatives):
        if i % 10 == 8:
            text = f"The test number {_luhn_broken(rng, fake)} is not a valid card."
        elif i % 10 == 9:
            text = f"The account {_iban_broken(fake)} was rejected by the bank."
        else:
            text = rng.choice(NEGATIVES).format(
                n1=rng.randrange(1, 9), n2=rng.randrange(10, 59), n3=rng.randrange(100, 999),
                n4=rng.randrange(1000, 9999), n5=rng.randrange(10000, 99999), n8=rng.randrange(10**7, 10**8),
                m=rng.randrange(1, 12), d=rng.randrange(1, 28), amt=f"{rng.randrange(10, 5000)}.{rng.randrange(100):02d}",
                uuid=fake.uuid4())
        items.append({"text": text, "entities": [], "locale": "en_US"})
    return items


def score(items: list[dict], decide) -> dict:
    """Per type: true positives (a labelled entity found, overlapping its value), false positives (found where no such
    entity is), false negatives; precision and recall with Wilson intervals; the scan's time per answer."""
    from runner.quality.stats import proportion_ci

    counts = {}
    seconds = []
    for it in items:
        d = decide(it["text"])
        seconds.append(d.seconds)
        labelled = {}
        for e in it["entities"]:
            start = it["text"].find(e["value"])
            labelled.setdefault(e["type"], []).append((start, start + len(e["value"])))
        found = {}
        for f in d.findings:
            found.setdefault(f["type"], []).append((f["start"], f["end"]))
        for t in set(labelled) | set(found):
            c = counts.setdefault(t, {"tp": 0, "fp": 0, "fn": 0})
            spans = labelled.get(t, [])
            hits = [s for s in spans if any(a < s[1] and s[0] < b for a, b in found.get(t, []))]
            c["tp"] += len(hits)
            c["fn"] += len(spans) - len(hits)
            c["fp"] += sum(1 for a, b in found.get(t, []) if not any(a < s[1] and s[0] < b for s in spans))
    out = {}
    for t, c in sorted(counts.items()):
        found, labelled = c["tp"] + c["fp"], c["tp"] + c["fn"]
        out[t] = {**c, "precision": round(c["tp"] / found, 4) if found else None,
                  "precision_ci": proportion_ci(c["tp"], found) if found else None,
                  "recall": round(c["tp"] / labelled, 4) if labelled else None,
                  "recall_ci": proportion_ci(c["tp"], labelled) if labelled else None}
    ms = sorted(s * 1000 for s in seconds)
    pick = lambda q: round(ms[min(len(ms) - 1, int(q * len(ms)))], 3) if ms else None   # noqa: E731
    return {"items": len(items), "positives": sum(len(i["entities"]) for i in items),
            "negatives": sum(1 for i in items if not i["entities"]), "per_type": out,
            "scan_ms": {"p50": pick(0.5), "p99": pick(0.99), "n": len(ms)}}
