"""The data stage measured against the defects its generator injected, and its errors on bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.dataprep import dedup, engine
from runner.governance import pii

REPO = Path(__file__).resolve().parent.parent


def run_data(recipe_text: str, tmp_path: Path, runs: Path) -> tuple[subprocess.CompletedProcess, Path | None]:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text)
    r = subprocess.run([sys.executable, "-m", "runner", "run", str(recipe), "--until", "data"], cwd=REPO,
                       env={**os.environ, "FORGE_RUNS": str(runs)}, capture_output=True, text=True, timeout=600)
    done = list((runs / "cache" / "data").glob("*/stage.json"))
    return r, (done[0].parent if done else None)


@pytest.fixture(scope="module")
def big_run(tmp_path_factory):
    """2000 generated records with the default defect rates (Datalab off: it is exercised end to end)."""
    tmp = tmp_path_factory.mktemp("data2k")
    runs = tmp / "runs"
    os.environ["FORGE_RUNS"] = str(runs)
    r, out = run_data(f"extends: {REPO / 'recipes' / 'invoice-extraction.yaml'}\nname: data-2k\n"
                      "data:\n  generator: {size: 2000, seed: 11}\n  datalab: {enabled: false}\n", tmp, runs)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return json.loads((out / "stage.json").read_text())["metrics"], out


def test_duplicate_detectors_meet_their_floors(big_run):
    d = big_run[0]["detectors"]
    assert d["exact_duplicate"]["truth"] >= 60 and d["exact_duplicate"]["recall"] == 1.0
    assert d["near_duplicate"]["truth"] >= 60, "too few injected pairs at the target to measure recall"
    assert d["near_duplicate"]["recall"] >= 0.95
    assert d["near_duplicate"]["precision"] >= 0.9 and d["exact_duplicate"]["precision"] >= 0.9
    assert d["near_duplicate"]["below_target_injected"] > 0  # the injected copies do span the threshold


@pytest.mark.parametrize("kind", ["email", "iban", "credit_card", "secret"])
def test_pii_detectors_meet_their_floors(big_run, kind):
    d = big_run[0]["detectors"][f"pii_{kind}"]
    assert d["truth"] >= 30, d
    assert d["recall"] >= 0.9 and d["precision"] >= 0.9, d


def test_label_check_catches_wrong_gold_and_truncation(big_run):
    d = big_run[0]["detectors"]["labels"]
    assert d["truth"] >= 50 and d["recall"] >= 0.95 and d["precision_any_defect"] >= 0.95


def test_outputs_policy_and_version(big_run):
    m, out = big_run
    train = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    test = [json.loads(x) for x in (out / "test.jsonl").read_text().splitlines()]
    text = "\n".join(r["document"] for r in train + test)
    assert "AKIA" not in text and "ghp_" not in text and "PRIVATE KEY" not in text  # secrets: records dropped
    assert "<EMAIL>" in text and "<IBAN>" in text  # e-mails and IBANs: redacted with typed placeholders
    assert all(r["messages"][2]["content"] == r["gold"] for r in train)
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["version"] == m["dataset_version"] and ds["files"]["train"]["records"] == len(train)
    audit = (out / "data_audit.md").read_text()
    assert m["dataset_version"] in audit and "| near_duplicate |" in audit
    assert audit.count("\n| `") >= 10  # 10+ concrete removed examples
    assert (out / "data_lengths.png").stat().st_size > 1000
    # leakage: nothing in eval/test is within the leakage Jaccard of a training record any more
    evals = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()]
    # the default recipe's out-of-distribution split: every de_CH or letter record, and only those
    ood = [json.loads(x) for x in (out / "ood.jsonl").read_text().splitlines()]
    unseen = lambda r: r["locale"] == "de_CH" or r["layout"] == "letter"  # noqa: E731
    assert len(ood) >= 100 and all(unseen(r) for r in ood) and not any(unseen(r) for r in train + evals + test)
    assert m["records"]["ood"] == len(ood) == ds["files"]["ood"]["records"] and "`ood`" in audit
    for held_out in (evals, test, ood):
        assert dedup.leakage([r["document"] for r in train], [r["document"] for r in held_out], 0.7, 5, 128,
                             engine.Local(1)) == {}
    removed = [json.loads(x) for x in (out / "removed.jsonl").read_text().splitlines()]
    assert sum(r["step"] == "leakage" for r in removed) == sum(m["leakage_removed"].values())


def test_near_dedup_matches_brute_force_on_its_own_pairs():
    from runner.datagen import defects, invoice
    recs, _ = defects.inject(invoice.generate(3, 400), {"near_duplicate": 0.1, "exact_duplicate": 0, "empty": 0,
                                                       "truncated": 0, "wrong_gold": 0, "off_domain": 0, "pii": 0,
                                                       "secret": 0}, 3)
    texts = [r["document"] for r in recs]
    truth = dedup.brute_force_pairs(texts, 0.8, 5)
    found = set()
    for c in dedup.near_clusters(texts, 0.8, 0.1, 5, 128, engine.Local(1)):
        found |= {(min(a, b), max(a, b)) for a, b, _ in c["pairs"]}
    assert truth and len(found & truth) / len(truth) >= 0.95 and found <= truth


def test_band_keys_find_exactly_the_pairs_datasketchs_lsh_index_finds():
    from datasketch import LeanMinHash, MinHash

    from runner.datagen import defects, invoice
    recs, _ = defects.inject(invoice.generate(4, 1500), {"near_duplicate": 0.1, "exact_duplicate": 0, "empty": 0,
                                                        "truncated": 0, "wrong_gold": 0, "off_domain": 0, "pii": 0,
                                                        "secret": 0}, 4)
    sigs = dedup.signatures([r["document"] for r in recs], 5, 128)
    scheme = MinHash(num_perm=1, seed=1).scheme
    lean = [LeanMinHash(seed=1, hashvalues=s, scheme=scheme) for s in sigs]
    index, within = dedup.lsh(0.7, 128), set()
    for j, m in enumerate(lean):
        within |= {(i, j) for i in index.query(m)}
        index.insert(j, m)
    assert len(within) > 100 and dedup.band_candidates(sigs, 0.7, 128) == within
    index = dedup.lsh(0.6, 128)
    for i, m in enumerate(lean[:1000]):
        index.insert(i, m)
    across = {(i, j) for j, m in enumerate(lean[1000:]) for i in index.query(m)}
    assert across and dedup.band_candidates_across(sigs[:1000], sigs[1000:], 0.6, 128) == across


def test_leakage_finds_a_test_record_copied_from_train():
    train = ["invoice 123 from acme corp total 100.00 eur due 2024-01-01 thanks", "completely different text here"]
    other = ["invoice 123 from acme corp total 100.00 eur due 2024-01-01 thanks!", "nothing like the others at all"]
    expected = round(dedup.exact_jaccard(dedup.shingles(train[0], 5), dedup.shingles(other[0], 5)), 4)
    assert dedup.leakage(train, other, 0.7, 5, 128, engine.Local(1)) == {0: (0, expected)}


def test_pii_policy_redacts_drops_and_flags():
    text = "Contact: jane.doe@example.org\nIBAN DE89 3704 0044 0532 0130 00\n"
    found = pii.scan(text)
    assert {f.type for f in found} == {"email", "iban"}
    red, action = pii.apply_policy(text, found, {"email": "redact", "iban": "redact"})
    assert action == "redact" and "<EMAIL>" in red and "<IBAN>" in red and "jane" not in red
    assert pii.apply_policy(text, found, {"email": "flag", "iban": "drop"})[1] == "drop"
    assert pii.apply_policy(text, found, {"email": "flag", "iban": "keep"}) == (text, "flag")


def test_phone_recognizer_skips_dates_amounts_and_short_numbers_but_not_phones():
    text = ("Datum: 02.06.2025, due 2024-10-15\nSubtotal 3566.89\nTotal CHF 1.973,52\nQty 7   Room 12\n"
            "Tel. +41 44 668 18 00\nAppel: 01.23.45.67.89\nUS office (212)555-0147x281\n")
    view = pii.phone_view(text)
    assert len(view) == len(text) and "02.06.2025" not in view and "3566.89" not in view and "Qty 7 " not in view
    phones = [f.value for f in pii.scan(text) if f.type == "phone"]
    assert "+41 44 668 18 00" in phones and "01.23.45.67.89" in phones
    assert any(p.startswith("(212)555-0147") for p in phones)
    assert not any(d in p for p in phones for d in ("02.06", "3566", "1.973", "2024-10"))


def test_scan_looks_only_for_the_types_asked_and_keeps_the_regex_cache():
    import importlib
    import re

    importlib.import_module("scipy.integrate")  # imports numpy's f2py, which shrinks re's cache to 50
    text = "Contact: jane.doe@example.org\nIBAN DE89 3704 0044 0532 0130 00\naws_access_key_id = AKIAABCDEFGHIJKLMNOP\n"
    assert {f.type for f in pii.scan(text, ("email",))} == {"email"}
    assert {f.type for f in pii.scan(text, ("iban", "secret"))} == {"iban", "secret"}
    assert re._MAXCACHE == pii.RE_CACHE


def test_secret_prefilter_finds_what_the_line_by_line_scan_finds():
    """Texts no plugin pattern matches skip detect-secrets' line scan; the findings are those of scanning every
    line, for texts with a secret on a later line, in a URL, in a key block, and with none."""
    from detect_secrets.core.scan import scan_line
    from detect_secrets.settings import transient_settings

    texts = ["Invoice 2024/1\nTotal 12.00 EUR\n", "note\naws_access_key_id = AKIAABCDEFGHIJKLMNOP\n",
             "db: postgres://user:pa55word@db.example.com/x", "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n",
             "token ghp_" + "a1B2" * 9 + " end", "just words, no secrets\n" * 3]
    with transient_settings({"plugins_used": [{"name": p} for p in pii.SECRET_PLUGINS]}):
        every_line = [sorted(s.secret_value for line in t.splitlines() for s in scan_line(line)) for t in texts]
    found = [sorted(f.value for f in fs) for fs in pii.detect_secrets_many(texts)]
    assert found == every_line
    assert [bool(f) for f in found] == [False, True, True, True, True, False]


def _sources_recipe(path: Path, mapping: str = "{input: text, output: label}") -> str:
    return (f"extends: {REPO / 'recipes' / 'invoice-extraction.yaml'}\nname: own-data\n"
            f"data:\n  sources:\n    - path: {path.name}\n      mapping: {mapping}\n  datalab: {{enabled: false}}\n")


def test_malformed_jsonl_line_is_named_and_nothing_is_stored(tmp_path, runs_dir):
    (tmp_path / "mine.jsonl").write_text('{"text": "a", "label": "{}"}\n{"text": "b", "label": \n')
    r, out = run_data(_sources_recipe(tmp_path / "mine.jsonl"), tmp_path, runs_dir)
    assert r.returncode == 1 and out is None
    assert f"{tmp_path / 'mine.jsonl'}:2: malformed JSON line" in r.stderr + r.stdout
    assert not list((runs_dir / "cache" / "data").glob(".*tmp*"))


def test_missing_mapped_field_is_named(tmp_path, runs_dir):
    (tmp_path / "mine.jsonl").write_text('{"text": "a", "label": "{}"}\n{"body": "b", "label": "{}"}\n')
    r, _ = run_data(_sources_recipe(tmp_path / "mine.jsonl"), tmp_path, runs_dir)
    assert r.returncode == 1
    assert f"{tmp_path / 'mine.jsonl'}:2: mapping.input names field 'text', which this record lacks" in r.stderr + r.stdout


def test_unreadable_file_is_named(tmp_path, runs_dir):
    f = tmp_path / "mine.csv"
    f.write_text("text,label\nx,{}\n")
    f.chmod(0)
    if os.access(f, os.R_OK):  # root reads anything: make it unreadable another way
        f.chmod(0o644)
        f.unlink()
        f.mkdir()
    r, _ = run_data(_sources_recipe(f), tmp_path, runs_dir)
    assert r.returncode == 1
    assert str(f) in r.stderr + r.stdout and "cannot read" in r.stderr + r.stdout


def test_dvc_tracks_the_cleaned_splits_when_enabled(tmp_path, runs_dir):
    import hashlib
    remote = tmp_path / "dvc-remote"
    r, out = run_data(f"extends: {REPO / 'recipes' / 'invoice-extraction.yaml'}\nname: dvc-on\n"
                      f"data:\n  generator: {{size: 120}}\n  datalab: {{enabled: false}}\n"
                      f"  dvc: {{enabled: true, remote: {remote}}}\n", tmp_path, runs_dir)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    m = json.loads((out / "stage.json").read_text())["metrics"]
    for name in ("train.jsonl", "eval.jsonl", "test.jsonl"):
        tracked = m["dvc"]["files"][name]
        assert tracked["md5"] == hashlib.md5((out / name).read_bytes()).hexdigest()
        assert Path(tracked["dvc_file"]).exists()
        # pushed: the remote holds the content under its md5
        assert any(p.name == tracked["md5"][2:] for p in remote.rglob("*")), list(remote.rglob("*"))[:5]


def test_same_recipe_gives_the_same_dataset_version_in_another_process(tmp_path, runs_dir):
    """Faker draws from hash-ordered collections: the runner pins PYTHONHASHSEED so the version repeats."""
    text = (f"extends: {REPO / 'recipes' / 'invoice-extraction.yaml'}\nname: det\n"
            "data:\n  generator: {size: 150}\n  datalab: {enabled: false}\n")
    versions = []
    for i in range(2):
        r, out = run_data(text, tmp_path, runs_dir / str(i))
        assert r.returncode == 0, r.stderr[-2000:]
        versions.append(json.loads((out / "stage.json").read_text())["metrics"]["dataset_version"])
    assert versions[0] == versions[1]


def test_holdout_takes_the_named_slice_values_and_names_a_bad_one():
    from runner import tasks
    from runner.stage import StageError
    from runner.stages import data
    task = tasks.get("invoice_extraction")
    recs = [{"id": f"r{i}", "locale": loc, "layout": lay} for i, (loc, lay) in
            enumerate([("de_CH", "table"), ("en_US", "letter"), ("en_US", "table"), ("fr_FR", "email")])]
    held, rest = data.holdout(recs, {"locale": ["de_CH"], "layout": ["letter"]}, task)
    assert [r["id"] for r in held] == ["r0", "r1"] and [r["id"] for r in rest] == ["r2", "r3"]
    assert data.holdout(recs, {}, task) == ([], recs)
    with pytest.raises(StageError, match=r"data\.split\.holdout\.language: not a slice column of task "
                                         r"'invoice_extraction' \(slices: layout, locale\)"):
        data.holdout(recs, {"language": ["de"]}, task)
    with pytest.raises(StageError, match=r"data\.split\.holdout\.locale: xx_XX matches no record"):
        data.holdout(recs, {"locale": ["xx_XX"]}, task)


def test_targeted_records_join_train_only_with_their_pattern(tmp_path, runs_dir):
    """data.generator.targeted: generated records whose gold matches `where` go to train; every judged split stays
    as it was without them."""
    base = (f"extends: {REPO / 'recipes' / 'invoice-extraction.yaml'}\nname: aimed\n"
            "data:\n  generator: {size: 150, targeted: %s}\n  datalab: {enabled: false}\n")
    r, plain = run_data(base % "[]", tmp_path, runs_dir / "plain")  # the default recipe's own 100 left out
    assert r.returncode == 0, r.stderr[-2000:]
    aimed = "[{cause: other_field_value, where: {subtotal: null}, size: 6, scan: 400}]"
    r, out = run_data(base % aimed, tmp_path, runs_dir / "aimed")
    assert r.returncode == 0, r.stderr[-2000:]
    for split in ("eval", "test", "ood"):
        assert (out / f"{split}.jsonl").read_text() == (plain / f"{split}.jsonl").read_text()
    before = [json.loads(x) for x in (plain / "train.jsonl").read_text().splitlines()]
    after = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    added = after[len(before):]
    assert after[:len(before)] == before and len(added) == 6
    assert all(json.loads(c["gold"])["subtotal"] is None and int(c["id"].rsplit("-", 1)[1]) >= 150 + 1_000_000
               for c in added)
    assert all(c["locale"] != "de_CH" and c["layout"] != "letter" for c in added)  # held-out slices stay unseen
    m = json.loads((out / "stage.json").read_text())["metrics"]
    assert m["targeted"][0]["added"] == 6 and m["records"]["train"] == len(after)
    assert "Targeted training records (data.generator.targeted): **6** added to train only" in \
        (out / "data_audit.md").read_text()
    r, _ = run_data(base % "[{cause: made_up, where: {subtotal: null}, size: 2}]", tmp_path,
                    runs_dir / "bad")
    assert r.returncode == 1 and "data.generator.targeted[0].cause: 'made_up' is not a failure cause" in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_split_by_group_keeps_every_translation_of_a_question_in_one_split():
    """data.sources[].mapping.group: 60 questions in 10 languages, 6 chapters; each question's translations go to
    one split (no test question has a translation in training), the splits hold their fractions of the records,
    every chapter reaches the test split, and the split is the same for the same seed."""
    from runner.stages import data
    langs = ["en", "de", "fr", "it", "ja", "ko", "nl", "pt", "ru", "zh-cn"]
    recs = [{"id": f"{lang}-{q:02d}", "group": f"q{q:02d}", "language": lang, "gold": f"chapter-{q % 6}"}
            for q in range(60) for lang in langs]
    fractions = {"train": 0.7, "eval": 0.1, "test": 0.2}
    parts = data.split(recs, fractions, seed=7, slices=("language", "gold"))
    assert data.groups_across(parts) == []
    assert {n: len(p) for n, p in parts.items()} == {"train": 420, "eval": 60, "test": 120}
    assert all(len({r["language"] for r in p if r["group"] == g}) == 10
               for p in parts.values() for g in {r["group"] for r in p})        # whole groups, all ten languages
    assert {r["gold"] for r in parts["test"]} == {f"chapter-{c}" for c in range(6)}   # stratified by chapter
    assert data.split(recs, fractions, seed=7, slices=("language", "gold")) == parts
    assert data.split(recs, fractions, seed=8, slices=("language", "gold")) != parts
    # and the check itself: a group in two splits is named
    leaked = {"train": parts["train"] + parts["test"][:1], "eval": parts["eval"], "test": parts["test"]}
    assert data.groups_across(leaked) == [parts["test"][0]["group"]]


def test_hash_split_never_moves_a_record_when_records_are_added():
    """data.split.method: hash. 4,000 records, then 1,000 more: every first record stays in its split, the sizes
    are within 4 binomial standard deviations of the fractions, a group stays whole, another seed splits
    differently."""
    import math

    from runner.stages import data
    fractions = {"train": 0.8, "eval": 0.1, "test": 0.1, "method": "hash"}
    recs = [{"id": f"r{i:05d}"} for i in range(5000)]
    where = lambda parts: {r["id"]: n for n, p in parts.items() for r in p}
    first, both = where(data.split(recs[:4000], fractions, seed=3)), where(data.split(recs, fractions, seed=3))
    assert all(both[i] == n for i, n in first.items())
    for name in ("train", "eval", "test"):
        n, f = 5000, fractions[name]
        assert abs(sum(v == name for v in both.values()) - n * f) <= 4 * math.sqrt(n * f * (1 - f))
    assert where(data.split(recs, fractions, seed=4)) != both
    grouped = [{"id": f"{q}-{lang}", "group": f"q{q}"} for q in range(200) for lang in ("en", "de", "fr")]
    assert data.groups_across(data.split(grouped, fractions, seed=3)) == []


def test_hash_split_through_the_stage_keeps_the_splits_of_a_smaller_dataset(tmp_path):
    """The stage with data.split.method: hash on 300 and then 400 generated records: every record kept by both
    runs is in the same split in both, and the audit says how the records were split."""
    splits, runs = [], tmp_path / "runs"
    for size in (300, 400):
        (tmp_path / str(size)).mkdir()
        r, out = run_data(f"extends: {REPO / 'recipes' / 'invoice-extraction.yaml'}\nname: hash-{size}\n"
                          f"data:\n  generator: {{size: {size}}}\n  split: {{method: hash}}\n"
                          "  datalab: {enabled: false}\n", tmp_path / str(size), runs)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        out = next(d for d in (runs / "cache" / "data").glob("*") if f"{size} raw records" in
                   (d / "data_audit.md").read_text())
        splits.append({json.loads(line)["id"]: name for name in ("train", "eval", "test")
                       for line in (out / f"{name}.jsonl").read_text().splitlines()})
        assert "data.split.method: hash" in (out / "data_audit.md").read_text()
    shared = splits[0].keys() & splits[1].keys()
    assert len(shared) > 250 and all(splits[0][i] == splits[1][i] for i in shared)


def test_duplicates_across_slices_counts_copies_of_another_language():
    """A translation that left a question in English is a duplicate of the English record: the audit counts it
    as a duplicate across languages, from the removed record's language to the kept one's."""
    from runner.stages.data import duplicates_across
    records = [{"id": "en-1", "language": "en"}, {"id": "fr-1", "language": "fr"}, {"id": "ja-1", "language": "ja"},
               {"id": "fr-2", "language": "fr"}, {"id": "fr-3", "language": "fr"}]
    removed = [{"id": "fr-1", "step": "exact_dedup", "of": "en-1"}, {"id": "ja-1", "step": "near_dedup", "of": "en-1"},
               {"id": "fr-3", "step": "exact_dedup", "of": "fr-2"}, {"id": "x", "step": "length"}]
    assert duplicates_across(removed, records, ("language",)) == {
        "language": {"duplicates": 3, "across": 2, "pairs": {"fr → en": 1, "ja → en": 1}}}
    assert duplicates_across([], records, ("language",)) == {}
