"""Deterministic synthetic invoice documents with gold JSON (evals/invoice_extraction/schema.json).

Seeded per record (seed, index), so record i is the same whatever the corpus size. Layouts: table,
e-mail, letter, receipt, key:value export. Locales carry their own number and date conventions.
Line items add up to the subtotal; distractor numbers (order no., phone, previous balance) are printed
too. Every non-null gold value is printed in the text, possibly in a local format or as a symbol; text values
exactly as printed (a receipt's upper-cased seller included).

Variation (off unless a recipe asks, data.generator.variation): a share of documents billed in a foreign currency
(a cross-border invoice: the ISO code printed, the seller's tax rate), and a share whose total lines carry one of
the locale's other usual labels. It is drawn from a stream of its own, so a record it leaves alone is byte-for-byte
the record without it; records of the slices named in `skip` (the recipe's held-out slices) are never varied, and
neither pool holds a word or currency of a locale that has no pool (de_CH, the default held-out locale), so the
out-of-distribution split still asks for words and a currency that training never shows.
"""
from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, replace
from functools import lru_cache

from faker import Faker

LAYOUTS = ("table", "email", "letter", "receipt", "keyvalue", "ocr")
# Typical OCR confusions (printed -> read). An 'ocr' document is a table, letter or receipt whose labels and
# template text went through these; the gold values stay as printed, and the record declares what was substituted.
OCR_CONFUSIONS = (("I", "l"), ("l", "1"), ("O", "0"), ("o", "0"), ("S", "5"), ("B", "8"), ("m", "rn"), ("e", "c"),
                  ("a", "o"), ("t", "f"), ("金", "全"), ("日", "曰"), ("求", "水"), ("計", "言十"), ("額", "頟"),
                  ("消", "清"))


@dataclass(frozen=True)
class Locale:
    code: str
    currency: str
    symbol: str
    thousands: str
    decimal: str
    date_fmt: str      # strftime
    words: dict


LOCALES = {
    "en_US": Locale("en_US", "USD", "$", ",", ".", "%m/%d/%Y",
                    dict(invoice="Invoice", date="Invoice date", due="Due date", bill_to="Bill to", sub="Subtotal",
                         tax="Sales tax", total="Total due", qty="Qty", item="Description", price="Amount")),
    "en_GB": Locale("en_GB", "GBP", "£", ",", ".", "%d %B %Y",
                    dict(invoice="Invoice", date="Date of issue", due="Payment due", bill_to="Invoice to",
                         sub="Net amount", tax="VAT", total="Total payable", qty="Qty", item="Item", price="Price")),
    "de_DE": Locale("de_DE", "EUR", "€", ".", ",", "%d.%m.%Y",
                    dict(invoice="Rechnung", date="Rechnungsdatum", due="Fällig am", bill_to="Rechnungsempfänger",
                         sub="Nettobetrag", tax="MwSt.", total="Gesamtbetrag", qty="Menge", item="Bezeichnung",
                         price="Betrag")),
    "fr_FR": Locale("fr_FR", "EUR", "€", " ", ",", "%d/%m/%Y",
                    dict(invoice="Facture", date="Date de facture", due="Date d'échéance", bill_to="Client",
                         sub="Total HT", tax="TVA", total="Total TTC", qty="Qté", item="Désignation", price="Montant")),
    "es_ES": Locale("es_ES", "EUR", "€", ".", ",", "%d/%m/%Y",
                    dict(invoice="Factura", date="Fecha de emisión", due="Vencimiento", bill_to="Cliente",
                         sub="Base imponible", tax="IVA", total="Total", qty="Cant.", item="Concepto", price="Importe")),
    "it_IT": Locale("it_IT", "EUR", "€", ".", ",", "%d/%m/%Y",
                    dict(invoice="Fattura", date="Data fattura", due="Scadenza", bill_to="Cliente",
                         sub="Imponibile", tax="IVA", total="Totale", qty="Q.tà", item="Descrizione", price="Importo")),
    "ja_JP": Locale("ja_JP", "JPY", "¥", ",", ".", "%Y年%m月%d日",
                    dict(invoice="請求書", date="請求日", due="支払期限", bill_to="請求先", sub="小計", tax="消費税",
                         total="合計", qty="数量", item="品目", price="金額")),
    "de_CH": Locale("de_CH", "CHF", "CHF", "'", ".", "%d.%m.%Y",
                    dict(invoice="Rechnung", date="Datum", due="Zahlbar bis", bill_to="Kunde", sub="Zwischensumme",
                         tax="MWST", total="Total", qty="Anz.", item="Leistung", price="Betrag")),
}
# Other usual labels of each locale's total lines (the corpus's own label among them). de_CH has none: no pool
# holds one of its labels (Zwischensumme, MWST, Kunde, ...) or its currency.
LABEL_VARIANTS = {
    "en_US": dict(sub=["Subtotal", "Net amount", "Amount before tax", "Sub-total"], tax=["Sales tax", "Tax", "State tax"],
                  total=["Total due", "Amount due", "Balance due", "Grand total"]),
    "en_GB": dict(sub=["Net amount", "Subtotal", "Net total", "Goods total"], tax=["VAT", "Tax", "VAT amount"],
                  total=["Total payable", "Amount due", "Invoice total", "Total"]),
    "de_DE": dict(sub=["Nettobetrag", "Summe netto", "Netto", "Warenwert"], tax=["MwSt.", "USt.", "Umsatzsteuer",
                  "Mehrwertsteuer"], total=["Gesamtbetrag", "Rechnungsbetrag", "Endbetrag", "Bruttobetrag"]),
    "fr_FR": dict(sub=["Total HT", "Montant HT", "Sous-total"], tax=["TVA", "Montant TVA", "Taxes"],
                  total=["Total TTC", "Net à payer", "Montant TTC"]),
    "es_ES": dict(sub=["Base imponible", "Subtotal", "Importe neto"], tax=["IVA", "Cuota IVA", "Impuestos"],
                  total=["Total", "Total factura", "Importe total"]),
    "it_IT": dict(sub=["Imponibile", "Subtotale", "Totale imponibile"], tax=["IVA", "Imposta", "Totale IVA"],
                  total=["Totale", "Totale fattura", "Totale documento"]),
    "ja_JP": dict(sub=["小計", "税抜合計", "税抜金額"], tax=["消費税", "消費税等", "消費税額"],
                  total=["合計", "ご請求金額", "税込合計"]),
}
# Currencies a cross-border invoice may be billed in (two decimals each; not CHF, the held-out locale's).
FOREIGN_CURRENCIES = ("USD", "GBP", "EUR", "CAD", "AUD", "SEK", "NOK", "DKK", "PLN", "CZK", "SGD", "HKD")
TAX_RATES = {"USD": 0.07, "GBP": 0.20, "EUR": 0.19, "JPY": 0.10, "CHF": 0.081}
ITEMS = ["Consulting hours", "Cloud hosting (monthly)", "Laptop stand", "Office chairs", "Printer toner",
         "Software licence", "Support plan", "Network cables", "Training workshop", "Maintenance visit",
         "Design services", "Shipping and handling", "Translation services", "Server rack", "Data migration"]


def money(value: float, loc: Locale, decimals: int = 2) -> str:
    s = f"{value:,.{decimals}f}"
    return s.replace(",", "\x00").replace(".", loc.decimal).replace("\x00", loc.thousands)


def date_text(d: dt.date, loc: Locale) -> str:
    return d.strftime(loc.date_fmt)


def vary(loc: Locale, layout: str, rng: random.Random, variation: dict) -> tuple[Locale, dict]:
    """The locale as this document prints it, and what was varied ({} when nothing): see the module's doc."""
    skip = variation.get("skip") or {}
    if loc.code in skip.get("locale", ()) or layout in skip.get("layout", ()) or loc.code not in LABEL_VARIANTS:
        return loc, {}
    done = {}
    if rng.random() < variation.get("foreign_currency", 0.0):
        code = rng.choice([c for c in FOREIGN_CURRENCIES if c != loc.currency])
        loc = replace(loc, currency=code, symbol=code)
        done["currency"] = code
    if rng.random() < variation.get("label_synonyms", 0.0):
        words = {k: rng.choice(v) for k, v in LABEL_VARIANTS[loc.code].items()}
        loc = replace(loc, words={**loc.words, **words})
        done["labels"] = words
    return loc, done


@lru_cache(maxsize=None)
def _faker(code: str) -> Faker:
    """One Faker per locale, re-seeded for each record: building one is three quarters of a record's time, and a
    re-seeded instance writes what a fresh one seeded alike writes (same records, same dataset version)."""
    return Faker(code)


def record(seed: int, index: int, variation: dict | None = None) -> dict:
    rng = random.Random(f"{seed}-{index}")
    code = rng.choice(sorted(LOCALES))
    loc = home = LOCALES[code]
    fake = _faker(code)
    fake.seed_instance(rng.randrange(2**31))
    layout = rng.choice(LAYOUTS)
    varied = {}
    if variation:
        loc, varied = vary(loc, layout, random.Random(f"{seed}-{index}-variation"), variation)
    decimals = 0 if loc.currency == "JPY" else 2
    n_items = rng.randint(1, 4)
    items = []
    for _ in range(n_items):
        qty = rng.randint(1, 12)
        unit = round(rng.uniform(5, 900), decimals) if decimals else float(rng.randint(500, 90000))
        items.append((rng.choice(ITEMS), qty, unit, round(qty * unit, decimals)))
    subtotal = round(sum(i[3] for i in items), decimals)
    tax = round(subtotal * TAX_RATES[home.currency], decimals)
    total = round(subtotal + tax, decimals)
    issued = dt.date(2023, 1, 1) + dt.timedelta(days=rng.randrange(900))
    due = issued + dt.timedelta(days=rng.choice([14, 30, 45, 60]))
    seller, buyer = fake.company(), fake.company()
    number = rng.choice(["INV-{}-{:05d}", "{}/{:04d}", "F{}{:06d}", "RE-{}-{:03d}"]).format(issued.year, rng.randrange(1, 99999))
    # Some documents omit fields: gold says null there.
    has_due = rng.random() > 0.15
    has_tax = rng.random() > 0.1
    gold = {
        "invoice_number": number, "invoice_date": issued.isoformat(), "due_date": due.isoformat() if has_due else None,
        "seller": seller, "buyer": buyer, "currency": loc.currency,
        "subtotal": subtotal if has_tax else None, "tax": tax if has_tax else None,
        "total": total if has_tax else subtotal,
    }
    cur = rng.choice([loc.symbol, loc.currency])
    distract = {"order": f"PO-{rng.randrange(10000, 99999)}", "phone": fake.phone_number(),
                "balance": money(rng.uniform(10, 5000), loc, decimals)}
    distract["email"] = f"billing@{fake.domain_name()}"
    ocr = None
    if layout == "ocr":
        base = rng.choice(["table", "letter", "receipt"])
        noisy_words, subs = ocr_noise(loc.words, rng)
        loc = Locale(loc.code, loc.currency, loc.symbol, loc.thousands, loc.decimal, loc.date_fmt, noisy_words)
        ocr = {"base_layout": base, "substitutions": subs}
        text = render(base, loc, fake, rng, gold, items, cur, decimals, distract, total if has_tax else subtotal)
    else:
        text = render(layout, loc, fake, rng, gold, items, cur, decimals, distract, total if has_tax else subtotal)
    if (ocr["base_layout"] if ocr else layout) == "receipt":
        # A receipt prints the seller upper-cased, so the text keeps that case. Scoring folds case, so nothing
        # rewards a recased answer; training on the recased name taught the model to rewrite the name rather than
        # copy it, and most of its seller errors were misspelt copies.
        gold["seller"] = seller.upper()
    printed = [{"type": "phone", "value": distract["phone"]}] if layout in ("table", "letter", "receipt", "ocr") else []
    if layout == "email":
        printed.append({"type": "email", "value": distract["email"]})
    rec = {"id": f"inv-{seed}-{index:06d}", "layout": layout, "locale": code, "document": text, "gold": gold,
           "pii": printed}
    if ocr:
        rec["ocr"] = ocr
    if varied:
        rec["variation"] = varied
    return rec


def ocr_noise(words: dict, rng: random.Random) -> tuple[dict, list]:
    """Labels as a poor scan reads them: each confusable character flips with probability 0.35."""
    subs, out = [], {}
    for key, label in words.items():
        chars = []
        for ch in label:
            swap = [b for a, b in OCR_CONFUSIONS if a == ch]
            if swap and rng.random() < 0.35:
                chars.append(swap[0])
                subs.append([ch, swap[0]])
            else:
                chars.append(ch)
        out[key] = "".join(chars)
    if not subs:  # a scan this clean would not be an OCR sample: misread the first confusable character
        for key, label in out.items():
            hit = next(((i, b) for i, ch in enumerate(label) for a, b in OCR_CONFUSIONS if a == ch), None)
            if hit:
                i, b = hit
                subs.append([label[i], b])
                out[key] = label[:i] + b + label[i + 1:]
                break
    return out, sorted({tuple(x) for x in subs})


def render(layout, loc, fake, rng, gold, items, cur, decimals, distract, total) -> str:
    w = loc.words
    m = lambda v: f"{money(v, loc, decimals)} {cur}" if cur == loc.currency else f"{cur}{money(v, loc, decimals)}"
    issued = date_text(dt.date.fromisoformat(gold["invoice_date"]), loc)
    due = date_text(dt.date.fromisoformat(gold["due_date"]), loc) if gold["due_date"] else None
    lines_tbl = "\n".join(f"| {d} | {q} | {m(a)} |" for d, q, _, a in items)
    lines_txt = "\n".join(f"- {q} x {d}: {m(a)}" for d, q, _, a in items)
    sums = []
    if gold["tax"] is not None:
        sums += [f"{w['sub']}: {m(gold['subtotal'])}", f"{w['tax']}: {m(gold['tax'])}"]
    sums.append(f"{w['total']}: {m(total)}")
    sums = "\n".join(sums)
    due_line = f"{w['due']}: {due}\n" if due else ""
    if layout == "table":
        return (f"{gold['seller']}\n{fake.address()}\nTel. {distract['phone']}\n\n{w['invoice']} {gold['invoice_number']}\n"
                f"{w['date']}: {issued}\n{due_line}{w['bill_to']}: {gold['buyer']}\nPO: {distract['order']}\n\n"
                f"| {w['item']} | {w['qty']} | {w['price']} |\n|---|---|---|\n{lines_tbl}\n\n{sums}\n")
    if layout == "email":
        return (f"From: {distract['email']}\nSubject: {w['invoice']} {gold['invoice_number']}\n\n"
                f"{fake.first_name()},\n\nplease find our {w['invoice'].lower()} {gold['invoice_number']} dated {issued} "
                f"for your order {distract['order']}.\n{lines_txt}\n{sums}\n{due_line}\n"
                f"Previous balance (already settled): {cur} {distract['balance']}\n\n"
                f"{fake.name()}\n{gold['seller']}\n\nCustomer: {gold['buyer']}\n")
    if layout == "letter":
        return (f"{gold['seller']}\n{fake.address()}\n\n{gold['buyer']}\n{fake.address()}\n\n{fake.city()}, {issued}\n\n"
                f"{w['invoice']} Nr. {gold['invoice_number']}\n\n{lines_txt}\n\n{sums}\n{due_line}\n"
                f"Ref. {distract['order']} · {distract['phone']}\n")
    if layout == "receipt":
        return (f"*** {gold['seller'].upper()} ***\n{fake.street_address()}\n{issued} {rng.randint(8, 20):02d}:"
                f"{rng.randint(0, 59):02d}\n#{gold['invoice_number']}\n"
                + "\n".join(f"{d[:18]:<18} {q:>3} {m(a):>14}" for d, q, _, a in items)
                + f"\n{sums}\n{due_line}{w['bill_to']}: {gold['buyer']}\nTEL {distract['phone']}\n")
    # keyvalue: an ERP export
    kv = [("document_type", w["invoice"]), ("number", gold["invoice_number"]), ("issue_date", issued),
          ("vendor", gold["seller"]), ("customer", gold["buyer"]), ("order_ref", distract["order"])]
    if due:
        kv.append(("due", due))
    kv.append(("currency", loc.currency if rng.random() < 0.5 else cur))
    if gold["tax"] is not None:
        kv += [("net", money(gold["subtotal"], loc, decimals)), ("tax", money(gold["tax"], loc, decimals))]
    kv.append(("gross", money(total, loc, decimals)))
    kv.append(("previous_balance", distract["balance"]))
    return "\n".join(f"{k}={v}" for k, v in kv) + "\n"


def generate(seed: int, size: int, start: int = 0, variation: dict | None = None) -> list[dict]:
    """Records start .. start + size - 1: each is seeded by its index, so any range is the same corpus's."""
    return [record(seed, i, variation) for i in range(start, start + size)]
