"""Automated iteration's own parts: the pool (new records, cleaned by the recipe's policy, away from what the
model is judged on) and hard-example mining (every failure cause represented). The loop itself runs end to end
in tests/test_e2e.py."""
import pytest

from runner import recipe as recipes
from runner import tasks
from runner.dataprep import pool, records
from runner.datagen import invoice
from runner.env import REPO
from runner.quality import mining
from runner.stage import StageError


def row(i, causes):
    return {"id": f"r{i}", "causes": causes}


def test_mining_represents_every_cause_rarest_first_within_the_budget():
    rows = [row(i, {"total": "invented"}) for i in range(20)]
    rows += [row(100 + i, {"invoice_date": "day_month_swapped", "total": "invented"}) for i in range(3)]
    rows += [row(200, {"seller": "swapped_fields", "buyer": "swapped_fields"})]
    chosen, summary = mining.select(rows, 5)
    ids = [r["id"] for r in chosen]
    assert len(ids) == 5 == len(set(ids))
    # the rarest cause goes first, then the next rarest; the 20-item cause does not crowd them out
    assert ids[0] == "r200" and ids[1] in {"r100", "r101", "r102"}
    assert summary["swapped_fields"] == {"pool_items": 1, "chosen": 1}
    assert summary["day_month_swapped"]["pool_items"] == 3 and summary["day_month_swapped"]["chosen"] >= 2
    assert summary["invented"]["pool_items"] == 23
    # an item with more wrong units comes before one with fewer, within a cause
    assert mining.select([row(1, {"a": "missing"}), row(2, {"a": "missing", "b": "missing"})], 1)[0][0]["id"] == "r2"


def test_mining_takes_everything_when_the_budget_allows_and_nothing_twice():
    rows = [row(i, {"f": c}) for i, c in enumerate(["a", "b", "a", "c", "a"])]
    chosen, summary = mining.select(rows, 100)
    assert sorted(r["id"] for r in chosen) == sorted(r["id"] for r in rows)
    assert sum(s["chosen"] for s in summary.values()) == 5


@pytest.fixture(scope="module")
def recipe():
    return recipes.load(REPO / "recipes" / "invoice-extraction.yaml").data


def test_the_pool_is_new_records_past_the_corpus(recipe):
    cfg = recipe["data"]
    got = pool.generate(cfg, 5)
    size, seed = cfg["generator"]["size"], cfg["generator"]["seed"]
    assert [r["id"] for r in got] == [invoice.record(seed, size + i)["id"] for i in range(5)]
    corpus = {r["id"] for r in invoice.generate(seed, size)}
    assert not corpus & {r["id"] for r in got}
    with pytest.raises(StageError, match="data.generator"):
        pool.generate(dict(cfg, sources=[{"path": "x.jsonl"}]), 5)


def test_targeted_records_have_the_declared_gold_pattern_and_come_after_the_pool(recipe):
    cfg = recipe["data"]
    size, seed = cfg["generator"]["size"], cfg["generator"]["seed"]
    hits, scanned, matched = pool.matching(cfg, 200, {"subtotal": None}, 10, 3000, "iterate.targeted[0]")
    assert scanned == 3000 and len(hits) == 20  # twice the size, so that cleaning can drop some
    assert all(r["gold"]["subtotal"] is None and r["gold"]["tax"] is None for r in hits)
    first = invoice.record(seed, size + 200)["id"]
    assert all(r["id"] >= first for r in hits)  # past the corpus and the 200-record pool
    # the generator's own share: about one document in ten prints no subtotal
    assert matched == sum(r["gold"]["subtotal"] is None for r in pool.generate(cfg, 3000, 200))
    assert 0.07 < matched / 3000 < 0.13
    # a slice and alternatives
    hits, _, _ = pool.matching(cfg, 200, {"layout": ["receipt", "email"], "due_date": None}, 5, 3000, "x")
    assert len(hits) == 10 and all(r["layout"] in ("receipt", "email") and r["gold"]["due_date"] is None for r in hits)
    assert pool.matches({"gold": {"tax": 1.0}, "layout": "table"}, {"tax": [None, 1.0], "layout": "table"})
    assert not pool.matches({"gold": {"tax": 1.0}, "layout": "table"}, {"tax": None})
    with pytest.raises(StageError, match=r"iterate.targeted\[1\].where: 'subtotl' is neither a gold field"):
        pool.matching(cfg, 0, {"subtotl": None}, 5, 50, "iterate.targeted[1]")


def test_the_pool_keeps_held_out_slices_and_judged_documents_away(recipe):
    cfg = dict(recipe["data"], pii=dict(recipe["data"]["pii"], enabled=False))
    task = tasks.of(recipe)
    raw = pool.generate(cfg, 60)
    system = tasks.system_prompt(recipe)
    to_chat = lambda r: records.to_chat(r, system, task)
    judged = [to_chat(raw[0]), to_chat(raw[1])]  # as if two pool documents were already test items
    kept, removed = pool.clean(raw, cfg, task, to_chat=to_chat,
                               count_tokens=lambda c: len(c["document"]) // 4, held_out=judged)
    held = cfg["split"]["holdout"]
    assert held, "the default recipe holds slices out"
    assert removed["held_out_slice"] == sum(any(r[c] in vs for c, vs in held.items()) for r in raw) > 0
    assert not [c for c in kept if any(c[col] in vs for col, vs in held.items())]
    in_held = sum(any(r[c] in vs for c, vs in held.items()) for r in raw[:2])
    assert removed["leakage"] == 2 - in_held and not {raw[0]["id"], raw[1]["id"]} & {c["id"] for c in kept}
    assert len(kept) + sum(removed.values()) == 60
    assert all(c["messages"][-1]["content"] == c["gold"] for c in kept)
    # the token limit applies as it does to the corpus
    few, removed = pool.clean(raw, dict(cfg, max_tokens=1), task, to_chat=to_chat,
                              count_tokens=lambda c: 2, held_out=[])
    assert not few and removed["length"] == 60 - removed["held_out_slice"]
