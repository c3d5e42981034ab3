"""Inject defects into a generated raw set at known rates, keeping the ground truth.

Every injected defect is one line of truth: {"id", "type", ...}. Detectors in the data stage are scored
against it (precision/recall per detector), so the cleaning is measured, not assumed.
"""
from __future__ import annotations

import copy
import json
import random
import re

from faker import Faker

OFF_DOMAIN_TOPICS = ("recipe", "weather", "poem", "meeting notes")


def _shingles(text: str, k: int) -> set[str]:
    t = " ".join(text.lower().split())
    return {t[i:i + k] for i in range(max(1, len(t) - k + 1))}


def jaccard(a: str, b: str, k: int = 5) -> float:
    sa, sb = _shingles(a, k), _shingles(b, k)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def _near_copy(text: str, rng: random.Random) -> str:
    """An edit of varying strength (a word or two up to ~1 in 3 words changed, dropped or added), so the
    copies' Jaccard similarity spans the dedup threshold instead of all sitting near 1.0."""
    words = text.split(" ")
    for _ in range(rng.randint(1, max(2, len(words) // 3))):
        i = rng.randrange(len(words))
        op = rng.random()
        if op < 0.4:
            words[i] = words[i].upper() if rng.random() < 0.5 else words[i] + ","
        elif op < 0.7 and len(words) > 8:
            words.pop(i)
        else:
            words.insert(i, rng.choice(["please", "kindly", "note:", "ref", "copy"]))
    out = " ".join(words)
    return out.replace("\n", "\n ", 1) if rng.random() < 0.5 else out + "\n"


def _luhn_card(rng: random.Random) -> str:
    digits = [4] + [rng.randint(0, 9) for _ in range(14)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        d = d * 2 if i % 2 == 0 else d
        total += d - 9 if d > 9 else d
    digits.append((10 - total % 10) % 10)
    s = "".join(map(str, digits))
    return " ".join(s[i:i + 4] for i in range(0, 16, 4))


def _pii_line(kind: str, fake: Faker, rng: random.Random) -> tuple[str, str]:
    if kind == "email":
        v = f"{fake.user_name()}.{rng.randint(1, 99)}@{fake.free_email_domain()}"
        return v, rng.choice(["Contact: {}", "Questions? Write to {}", "cc: {}"]).format(v)
    if kind == "phone":
        v = fake.phone_number()
        return v, rng.choice(["Mobile: {}", "Call {} for support", "Direct line {}"]).format(v)
    if kind == "iban":
        v = fake.iban()
        v = " ".join(v[i:i + 4] for i in range(0, len(v), 4)) if rng.random() < 0.5 else v
        return v, rng.choice(["Please transfer to IBAN {}", "Bank account (IBAN): {}", "IBAN {}"]).format(v)
    v = _luhn_card(rng)
    return v, rng.choice(["Paid with card {}", "Card on file: {}", "Charged to credit card {}"]).format(v)


def _secret_line(rng: random.Random) -> tuple[str, str, str]:
    alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    kind = rng.choice(["aws", "github", "private_key", "slack"])
    if kind == "aws":
        v = "AKIA" + "".join(rng.choice(alnum) for _ in range(16))
        return kind, v, f"aws_access_key_id = {v}"
    if kind == "github":
        v = "ghp_" + "".join(rng.choice(alnum + alnum.lower()) for _ in range(36))
        return kind, v, f"deploy token: {v}"
    if kind == "slack":
        v = "xoxb-" + "-".join("".join(rng.choice("0123456789") for _ in range(n)) for n in (11, 13)) + "-" + \
            "".join(rng.choice(alnum.lower() + alnum) for _ in range(24))
        return kind, v, f"notify via slack bot {v}"
    v = "-----BEGIN RSA PRIVATE KEY-----"
    return kind, v, v + "\nMIIEpAIBAAKCAQEA" + "".join(rng.choice(alnum) for _ in range(40)) + "\n-----END RSA PRIVATE KEY-----"


def _wrong_gold(rec: dict, other: dict, rng: random.Random) -> tuple[dict, str]:
    g = dict(rec["gold"])
    choice = rng.choice(["total", "seller", "invoice_date"])
    if choice == "total" and g["total"] is not None:
        g["total"] = round(g["total"] * rng.choice([1.37, 0.61, 10.0]) + 13.0, 2)
    elif choice == "seller" and other["gold"]["seller"] != g["seller"]:
        g["seller"] = other["gold"]["seller"]
    else:
        choice = "invoice_date"
        y, m, d = g["invoice_date"].split("-")
        g["invoice_date"] = f"{int(y) - 3}-{m}-{d}"
    return g, choice


def inject(records: list[dict], rates: dict, seed: int) -> tuple[list[dict], list[dict]]:
    """Returns (records with defects, ground truth). Original ids keep their positions; copies get new ids."""
    rng = random.Random(f"defects-{seed}")
    fake = Faker("en_US")
    fake.seed_instance(seed)
    recs = [copy.deepcopy(r) for r in records]
    n = len(recs)
    counts = {k: int(round(v * n)) for k, v in rates.items()}
    in_place = ["empty", "truncated", "wrong_gold", "off_domain", "pii", "secret"]
    victims = rng.sample(range(n), min(n, sum(counts[k] for k in in_place)))
    truth: list[dict] = []
    pos = 0
    for kind in in_place:
        for idx in victims[pos:pos + counts[kind]]:
            r = recs[idx]
            if kind == "empty":
                r["document"] = rng.choice(["", " ", "\n", "N/A", "<html><body></body></html>"])
                truth.append({"id": r["id"], "type": "empty"})
            elif kind == "truncated":
                cut = int(len(r["document"]) * rng.uniform(0.15, 0.4))
                r["document"] = r["document"][:cut]
                truth.append({"id": r["id"], "type": "truncated"})
            elif kind == "wrong_gold":
                r["gold"], field = _wrong_gold(r, recs[rng.randrange(n)], rng)
                truth.append({"id": r["id"], "type": "wrong_gold", "field": field})
            elif kind == "off_domain":
                topic = rng.choice(OFF_DOMAIN_TOPICS)
                r["document"] = f"{topic.title()}\n\n" + "\n".join(fake.paragraphs(nb=rng.randint(2, 4)))
                r["gold"] = {k: None for k in r["gold"]}
                r["pii"] = []
                truth.append({"id": r["id"], "type": "off_domain", "topic": topic})
            elif kind == "pii":
                kinds = rng.sample(["email", "phone", "iban", "credit_card"], rng.randint(1, 2))
                for k in kinds:
                    value, line = _pii_line(k, fake, rng)
                    r["document"] = r["document"].rstrip("\n") + "\n" + line + "\n"
                    r["pii"] = r.get("pii", []) + [{"type": k, "value": value}]
                truth.append({"id": r["id"], "type": "pii", "kinds": kinds})
            elif kind == "secret":
                sk, value, line = _secret_line(rng)
                r["document"] = r["document"].rstrip("\n") + "\n" + line + "\n"
                r["pii"] = r.get("pii", []) + [{"type": "secret", "value": value, "kind": sk}]
                truth.append({"id": r["id"], "type": "secret", "kind": sk})
        pos += counts[kind]
    copies = []
    for kind in ("exact_duplicate", "near_duplicate"):
        for j in range(counts[kind]):
            src = recs[rng.randrange(n)]
            dup = copy.deepcopy(src)
            dup["id"] = f"{src['id']}-{'dup' if kind == 'exact_duplicate' else 'near'}{j}"
            if kind == "exact_duplicate":
                dup["document"] = re.sub(r" ", "  ", src["document"], count=rng.randint(0, 3))
                truth.append({"id": dup["id"], "type": "exact_duplicate", "of": src["id"]})
            else:
                dup["document"] = _near_copy(src["document"], rng)
                truth.append({"id": dup["id"], "type": "near_duplicate", "of": src["id"],
                              "jaccard": round(jaccard(src["document"], dup["document"]), 4)})
            copies.append(dup)
    for dup in copies:
        recs.insert(rng.randrange(len(recs) + 1), dup)
    return recs, truth


def write_truth(truth: list[dict], path) -> None:
    with open(path, "w") as f:
        for t in truth:
            f.write(json.dumps(t) + "\n")
