"""data: ingest (generator with injected defects, or the user's files), normalize, drop empty records,
exact and near dedup (datasketch), PII/secret policy (Presidio, stdnum, phonenumbers, detect-secrets), label
checks (task schema + grounding), token-length filter, cleanlab Datalab outliers, stratified split, leakage
check, chat JSONL, dataset version, and the data audit report."""
from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter, defaultdict
from pathlib import Path

from runner import env, models, tasks
from runner.adapters import cleanlab_datalab
from runner.datagen import defects
from runner.dataprep import dedup, engine, meter, pool, sources, steps, truth
from runner.dataprep.records import generate as generate_records, to_chat
from runner.reports import data_audit
from runner.reports.fmt import Page
from runner.stage import Context, Result, StageError

SECTIONS = ("task", "data", "base_model", "seed", "threads")
INPUTS = ()
RUNS = ("evals", "runner/kinds")  # read by code run outside our imports (lm-eval, the gateway, by path)
TOOLS = ("core", "ml")
SPLITS = ("train", "eval", "test")
GENERATE_SPAN = 2000


def fingerprint(recipe: dict) -> str:
    parts = [models.fingerprint(recipe["base_model"])]  # token lengths depend on the tokenizer
    for s in recipe["data"]["sources"]:  # the user's files are inputs too
        if "path" in s:
            try:
                parts.append(hashlib.sha256(Path(s["path"]).read_bytes()).hexdigest()[:16])
            except OSError:
                parts.append("unreadable")  # the stage itself reports it, naming the file
    return ":".join(parts)


def holdout(records: list[dict], held: dict[str, list], task) -> tuple[list[dict], list[dict]]:
    """(the out-of-distribution split, the rest): records whose slice value is one `data.split.holdout` names
    (e.g. {locale: [it_IT], layout: [letter]}) never reach train, eval or test."""
    for col, values in held.items():
        if col not in task.slices:
            raise StageError(f"data.split.holdout.{col}: not a slice column of task '{task.name}' "
                             f"(slices: {', '.join(task.slices) or 'none'})")
        seen = {str(r.get(col)) for r in records}
        missing = [v for v in values if str(v) not in seen]
        if missing:
            raise StageError(f"data.split.holdout.{col}: {', '.join(map(str, missing))} matches no record "
                             f"(values: {', '.join(sorted(seen))})")
    out = [r for r in records if any(str(r.get(c)) in {str(v) for v in vs} for c, vs in held.items())]
    ids = {r["id"] for r in out}
    return out, [r for r in records if r["id"] not in ids]


def split(records: list[dict], fractions: dict, seed: int, slices=()) -> dict[str, list[dict]]:
    """`data.split.method` stratified (the default): seeded, stratified by the task's slice columns. Each stratum
    is shuffled and cut by the fractions; the fractional remainders carry over from stratum to stratum, so small
    strata still feed every split and the overall sizes match the fractions. Records with a `group`
    (data.sources[].mapping.group, e.g. a question id shared by its translations) are split as whole groups:
    `split_groups`. `hash`: `split_by_hash`."""
    if fractions.get("method") == "hash":
        return split_by_hash(records, fractions, seed)
    if any("group" in r for r in records):
        return split_groups(records, fractions, seed, slices)
    strata = defaultdict(list)
    for r in records:
        strata[tuple(str(r.get(c, "?")) for c in slices)].append(r)
    out: dict[str, list[dict]] = {"train": [], "eval": [], "test": []}
    rng = random.Random(seed)
    want = {"test": 0.0, "eval": 0.0}
    for key in sorted(strata):
        group = strata[key]
        rng.shuffle(group)
        cut = {}
        for name in ("test", "eval"):
            want[name] += len(group) * fractions[name]
            cut[name] = int(want[name] + 1e-9) - len(out[name])
        n_test = min(cut["test"], len(group))
        n_eval = min(cut["eval"], len(group) - n_test)
        out["test"] += group[:n_test]
        out["eval"] += group[n_test:n_test + n_eval]
        out["train"] += group[n_test + n_eval:]
    for recs in out.values():
        recs.sort(key=lambda r: r["id"])
    return out


def hash_unit(seed: int, key: str) -> float:
    """A number in [0, 1) fixed by the seed and the key alone."""
    return int.from_bytes(hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest(), "big") / 2 ** 64


def split_by_hash(records: list[dict], fractions: dict, seed: int) -> dict[str, list[dict]]:
    """Each record's split from a hash of the seed and its id (its `group`, when it has one): test below the test
    fraction, eval below test + eval, train above. A record's split depends on nothing else, so adding records to
    a dataset never moves one already split (a test record of one version is never trained on in the next), and
    any worker can split its own records. The sizes match the fractions in expectation only (binomial spread)."""
    out: dict[str, list[dict]] = {"train": [], "eval": [], "test": []}
    for r in records:
        u = hash_unit(seed, str(r["group"]) if "group" in r else r["id"])
        name = "test" if u < fractions["test"] else "eval" if u < fractions["test"] + fractions["eval"] else "train"
        out[name].append(r)
    for recs in out.values():
        recs.sort(key=lambda r: r["id"])
    return out


def split_groups(records: list[dict], fractions: dict, seed: int, slices=()) -> dict[str, list[dict]]:
    """Every record of a group in one split: groups are the units, stratified by the slice values their records
    share (a slice that varies inside a group, such as the language of a question's translations, does not
    stratify), shuffled, and dealt to test, then eval, then train until each split holds its fraction of the
    records (carried over from stratum to stratum as in `split`). A record without a group is a group of its own."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        groups[str(r.get("group", "\x00" + r["id"]))].append(r)
    strata: dict[tuple, list[str]] = defaultdict(list)
    for g, members in groups.items():
        strata[tuple(vals.pop() if len(vals := {str(m.get(c, "?")) for m in members}) == 1 else "*"
                     for c in slices)].append(g)
    out: dict[str, list[dict]] = {"train": [], "eval": [], "test": []}
    rng = random.Random(seed)
    want = {"test": 0.0, "eval": 0.0}
    for key in sorted(strata):
        units = sorted(strata[key])
        rng.shuffle(units)
        for name in ("test", "eval"):
            want[name] += sum(len(groups[g]) for g in units) * fractions[name]
        for g in units:
            name = next((n for n in ("test", "eval") if len(out[n]) + len(groups[g]) / 2 <= want[n]), "train")
            out[name] += groups[g]
    for recs in out.values():
        recs.sort(key=lambda r: r["id"])
    return out


def groups_across(parts: dict[str, list[dict]]) -> list[str]:
    """Groups with records in more than one split (what a group split must never leave)."""
    seen: dict[str, set] = defaultdict(set)
    for name, recs in parts.items():
        for r in recs:
            if "group" in r:
                seen[r["group"]].add(name)
    return sorted(g for g, names in seen.items() if len(names) > 1)


class Ledger:
    """What each step saw, removed (with reasons) and flagged."""

    def __init__(self, rss=None):
        self.rss, self.peak_mb = rss, {}
        self.counts: list[tuple[str, int]] = []
        self.removed: dict[str, dict] = {}
        self.flags: list[dict] = []
        self.reached: dict[str, set] = {}
        self.seconds: dict[str, float] = {}

    def step(self, name: str, recs: list[dict], t0: float, seconds: float | None = None) -> None:
        """`seconds`: the step's share of a pass that ran several steps at once (else: since t0)."""
        self.counts.append((name, len(recs)))
        self.seconds[name] = round(time.time() - t0 if seconds is None else seconds, 3)
        if self.rss is not None:
            self.peak_mb[name] = self.rss.lap_mb()

    def remove(self, rec: dict, step: str, reason: str, **extra) -> None:
        self.removed[rec["id"]] = {"id": rec["id"], "step": step, "reason": reason,
                                   "document": rec["document"][:400], **extra}

    def flag(self, rec: dict, step: str, reason: str) -> None:
        self.flags.append({"id": rec["id"], "step": step, "reason": reason})


def throughput(led: Ledger) -> dict:
    """Per step: records in, seconds, records/s (what the step read per second of its wall time)."""
    out, before = {}, None
    for name, n in led.counts:
        if before is not None:
            sec = led.seconds.get(name, 0.0)
            out[name] = {"records_in": before, "seconds": sec,
                         "records_per_s": round(before / sec, 1) if sec > 0 else None,
                         "peak_mb": led.peak_mb.get(name)}
        before = n
    return out


def ingest(cfg: dict, out, task: tasks.Task, read: list | None = None, eng=None) -> tuple[list[dict], list[dict]]:
    """(records, injected defects); `read` receives, per source, what was read from it (sources.load's tally).
    Generated records are made on the engine's workers, GENERATE_SPAN at a time."""
    if cfg["sources"]:
        recs = []
        for s in cfg["sources"]:
            tally: dict = {}
            recs += sources.load(s, task.scorer.parse_gold, tally)
            if read is not None:
                read.append(tally)
        ids = Counter(r["id"] for r in recs)
        clash = [i for i, n in ids.items() if n > 1]
        if clash:
            raise StageError(f"data.sources: record ids are not unique (e.g. '{clash[0]}'); map data.sources[].mapping.id "
                             "to a unique field or leave it out")
        return recs, []
    gen = cfg["generator"]
    if eng is None:
        raw = generate_records(cfg, gen["size"])
    else:
        spans = [(i, min(GENERATE_SPAN, gen["size"] - i)) for i in range(0, gen["size"], GENERATE_SPAN)]
        raw = [r for part in eng.map_batches(steps.generate, spans, batch_size=1, data_cfg=cfg) for r in part]
    recs, injected = defects.inject(raw, gen["defects"], gen["seed"])
    defects.write_truth(injected, out / "defects_truth.jsonl")
    return recs, injected


def duplicates_across(removed: list[dict], records: list[dict], slices) -> dict:
    """Per slice column: how many removed duplicates (exact, near, train/test leakage) were copies of a record with
    another value of it (a question left untranslated in a translation: fr -> en), as "from -> to" counts."""
    by_id = {r["id"]: r for r in records}
    out = {}
    for c in slices:
        pairs = Counter(f"{by_id[r['id']].get(c, '?')} → {by_id[r['of']].get(c, '?')}" for r in removed
                        if r.get("of") in by_id and r["id"] in by_id
                        and by_id[r["id"]].get(c) != by_id[r["of"]].get(c))
        total = sum(1 for r in removed if r.get("of") in by_id and r["id"] in by_id)
        if total:
            out[c] = {"duplicates": total, "across": sum(pairs.values()), "pairs": dict(pairs.most_common())}
    return out


def run(ctx: Context) -> Result:
    cfg = ctx.section("data")
    total = sum(cfg["split"][k] for k in SPLITS)
    if abs(total - 1.0) > 1e-6:
        raise StageError(f"data.split: fractions must add up to 1.0, found {total:g}")
    tok_file = models.base_model_dir(ctx.section("base_model")) / "tokenizer.json"
    if not tok_file.exists():
        raise StageError(f"base model has no tokenizer.json: {tok_file}")
    with meter.PeakRss() as rss:
        ctx.progress(f"starting the {cfg['engine']} engine")
        with start_engine(cfg, ctx.threads) as eng:
            return clean(ctx, cfg, eng, tok_file, rss)


def start_engine(cfg: dict, workers: int):
    """The engine `data.engine` names (runner/dataprep/engine.py); `data.ray` configures Ray."""
    if cfg["engine"] == "ray":
        from runner.adapters import ray_data
        return ray_data.Engine(cfg["ray"], workers)
    return engine.Local(workers)


def clean(ctx: Context, cfg: dict, eng, tok_file: Path, rss) -> Result:
    task = tasks.of(ctx.recipe)
    led = Ledger(rss)
    t0 = time.time()
    ctx.progress("ingesting")
    read: list[dict] = []
    recs, injected = ingest(cfg, ctx.out, task, read, eng)
    ingested = list(recs)   # every record as read: what a removed duplicate copied is looked up here
    pii_truth = {r["id"]: list(r.get("pii", [])) for r in recs}
    led.step("raw", recs, t0)

    dd = cfg["dedup"]
    t0 = time.time()
    ctx.progress(f"normalizing and hashing {len(recs)} records")
    prepared = eng.map_batches(steps.prepare, recs, normalize=cfg["normalize"], k=dd["shingle_chars"],
                               num_perm=dd["num_perm"], near=dd["near"])
    cpu = meter.cpu_of(prepared)
    kept, hashes, sigs = [], {}, {}
    by_text: dict[str, object] = {}   # signatures by text: the leakage check reuses those of unchanged documents
    for r, p in zip(recs, prepared):
        r["document"] = p["document"]
        if p["sig"] is not None:
            by_text[p["document"]] = p["sig"]
        if len(r["document"]) < cfg["normalize"]["min_chars"]:
            led.remove(r, "empty", f"{len(r['document'])} chars < data.normalize.min_chars {cfg['normalize']['min_chars']}")
        else:
            kept.append(r)
            hashes[r["id"]], sigs[r["id"]] = p["hash"], p["sig"]
    recs = kept
    del prepared
    prep_wall = time.time() - t0
    led.step("normalize+min_chars", recs, t0, meter.share(prep_wall, cpu, "normalize"))

    led.reached["exact_dedup"] = {r["id"] for r in recs}
    t0 = time.time()
    if dd["exact"]:
        first = eng.first_of([hashes[r["id"]] for r in recs])
        dup_of = {recs[i]["id"]: recs[f]["id"] for i, f in first.items()}
        for r in recs:
            if r["id"] in dup_of:
                led.remove(r, "exact_dedup", f"same normalized text as {dup_of[r['id']]}", of=dup_of[r["id"]])
        recs = [r for r in recs if r["id"] not in dup_of]
    led.step("exact_dedup", recs, t0)

    led.reached["near_dedup"] = {r["id"] for r in recs}
    # ground truth at the target is judged on the texts the detector sees (normalized), not the raw ones
    seen = {r["id"]: r["document"] for r in recs}
    for t in injected:
        if t["type"] == "near_duplicate" and t["id"] in seen and t["of"] in seen:
            t["jaccard_seen"] = round(dedup.exact_jaccard(dedup.shingles(seen[t["id"]], dd["shingle_chars"]),
                                                          dedup.shingles(seen[t["of"]], dd["shingle_chars"])), 4)
    clusters = []
    t0 = time.time()
    if dd["near"]:
        ctx.progress(f"near dedup (MinHash LSH, {len(recs)} records)")
        found = dedup.near_clusters([r["document"] for r in recs], dd["jaccard"], dd["query_margin"],
                                    dd["shingle_chars"], dd["num_perm"], eng, sigs=[sigs[r["id"]] for r in recs])
        drop = set()
        for c in found:
            keep = recs[c["members"][0]]
            for m in c["members"][1:]:
                sim = max((p[2] for p in c["pairs"] if m in p[:2]), default=None)
                led.remove(recs[m], "near_dedup", f"near duplicate of {keep['id']} (Jaccard {sim})", of=keep["id"])
                drop.add(m)
            clusters.append({"kept": keep["id"], "removed": [recs[m]["id"] for m in c["members"][1:]],
                             "pairs": [(recs[a]["id"], recs[b]["id"], s) for a, b, s in c["pairs"]],
                             "example": [recs[c["members"][0]]["document"][:300], recs[c["members"][1]]["document"][:300]]})
        recs = [r for i, r in enumerate(recs) if i not in drop]
    led.step("near_dedup", recs, t0, time.time() - t0 + meter.share(prep_wall, cpu, "minhash"))
    del sigs, hashes

    # PII, labels and length in one pass on the workers; applied here in order, each step on what the one before kept
    t0 = time.time()
    ctx.progress(f"PII and secrets, labels, token lengths ({len(recs)} records)")
    checked = eng.map_batches(steps.scan_and_check, recs, policy=cfg["pii"]["policy"] if cfg["pii"]["enabled"] else None,
                              task_name=ctx.recipe["task"], task_paths=tuple(ctx.recipe.get("task_paths") or ()),
                              system=tasks.system_prompt(ctx.recipe), tok_file=str(tok_file))
    wall, cpu = time.time() - t0, meter.cpu_of(checked)
    eng.release()   # the workers' Presidio, spaCy and tokenizer leave before cleanlab's model arrives
    result = {r["id"]: c for r, c in zip(recs, checked)}
    led.reached["pii"] = {r["id"] for r in recs}
    findings: dict[str, list[dict]] = {}
    if cfg["pii"]["enabled"]:
        kept = []
        for r in recs:
            c = result[r["id"]]
            if not c["findings"]:
                kept.append(r)
                continue
            findings[r["id"]] = c["findings"]
            types = ", ".join(sorted({f["type"] for f in c["findings"]}))
            if c["action"] == "drop":
                led.remove(r, "pii", f"{types} found; policy drops the record")
                continue
            if c["action"] == "flag":
                led.flag(r, "pii", f"{types} found (kept, flagged)")
            if c["document"] is not None:
                r["document"] = c["document"]
            kept.append(r)
        recs = kept
    led.step("pii", recs, t0, meter.share(wall, cpu, "pii"))

    led.reached["labels"] = {r["id"] for r in recs}
    kept = []
    for r in recs:
        problems = result[r["id"]]["problems"]
        if problems:
            text = "; ".join(msg for _, msg in problems)[:300]
            if cfg["labels"][problems[0][0]] == "drop":
                led.remove(r, "labels", text)
                continue
            led.flag(r, "labels", text)
        kept.append(r)
    recs = kept
    led.step("labels", recs, t0, meter.share(wall, cpu, "labels"))

    chats, system = [], tasks.system_prompt(ctx.recipe)
    for r in recs:
        c = result[r["id"]]["chat"]
        c["messages"][0]["content"] = system   # one string, not one copy per record from the workers
        if c["tokens"] > cfg["max_tokens"]:
            led.remove(r, "length", f"{c['tokens']} tokens > data.max_tokens {cfg['max_tokens']}")
            continue
        chats.append(c)
    led.step("length", chats, t0, meter.share(wall, cpu, "length"))
    del result, checked

    outlier_ids: set[str] = set()
    datalab_info = None
    t0 = time.time()
    if cfg["datalab"]["enabled"] and len(chats) >= 10:
        sample = chats if len(chats) <= cfg["datalab"]["max_records"] else \
            random.Random(ctx.seed).sample(chats, cfg["datalab"]["max_records"])
        led.reached["datalab"] = {c["id"] for c in sample}
        ctx.progress(f"cleanlab Datalab on {len(sample)} embeddings")
        datalab_info = cleanlab_datalab.run(sample, ctx.out, ctx.log("cleanlab.log"), ctx.threads)
        outlier_ids = {r["id"] for r in datalab_info["records"]
                       if r["is_outlier"] and r["outlier_score"] < cfg["datalab"]["outlier_threshold"]}
        if cfg["datalab"]["outliers"] == "drop":
            for c in chats:
                if c["id"] in outlier_ids:
                    led.remove(c, "datalab", "cleanlab outlier (embedding far from the rest)")
            chats = [c for c in chats if c["id"] not in outlier_ids]
        else:
            for c in chats:
                if c["id"] in outlier_ids:
                    led.flag(c, "datalab", "cleanlab outlier (kept, flagged)")
    led.step("datalab", chats, t0)

    t0 = time.time()
    # strata: the task's slice columns, and for a classification task the label too (like stratify=y)
    held, chats = holdout(chats, cfg["split"]["holdout"] or {}, task)
    parts = split(chats, cfg["split"], ctx.seed, task.slices + (("gold",) if task.scorer.STRATIFY_BY_ANSWER else ()))
    splits = SPLITS + (("ood",) if cfg["split"]["holdout"] else ())
    if cfg["split"]["holdout"]:
        parts["ood"] = held
    leaks = {}
    for name in splits[1:]:
        if parts[name] and parts["train"]:
            hits = dedup.leakage([c["document"] for c in parts["train"]], [c["document"] for c in parts[name]],
                                 dd["leakage_jaccard"], dd["shingle_chars"], dd["num_perm"], eng, by_text)
            for j, (i, sim) in hits.items():
                led.remove(parts[name][j], "leakage", f"{name} record near-duplicates train record "
                           f"{parts['train'][i]['id']} (Jaccard {sim})")
            leaks[name] = len(hits)
            parts[name] = [c for j, c in enumerate(parts[name]) if j not in hits]
    led.step("split+leakage", [c for p in parts.values() for c in p], t0)

    aimed = []
    if not cfg["sources"] and cfg["generator"]["targeted"]:
        t0 = time.time()
        ctx.progress("targeted training records (data.generator.targeted)")
        judged = [c for n in splits[1:] for c in parts[n]]
        system = tasks.system_prompt(ctx.recipe)
        clean = lambda raw: pool.clean(raw, cfg, task, to_chat=lambda r: to_chat(r, system, task), held_out=judged,
                                       count_tokens=lambda c: steps.chat_tokens([c], str(tok_file))[0], engine=eng,
                                       signatures=by_text)
        rows, aimed = pool.targeted(cfg, cfg["generator"]["targeted"], task, pool.TRAIN_TARGETED_START, clean,
                                    "data.generator.targeted", ctx.progress)
        for c in rows:
            c["chars"] = len(c["document"])
        parts["train"] += rows
        led.step("targeted (train)", [c for p in parts.values() for c in p], t0)

    files, digests = {}, {}
    for name in splits:
        if not parts[name] and name in ("train", "test"):
            raise StageError(f"split '{name}' is empty after cleaning: raise data.generator.size or the split fraction")
        path = ctx.out / f"{name}.jsonl"
        with open(path, "w") as f:
            for r in parts[name]:
                f.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
        files[name] = path.name
        digests[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    version = hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:12]

    removed = list(led.removed.values())
    (ctx.out / "removed.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in removed))
    (ctx.out / "findings.json").write_text(json.dumps(findings, indent=1, ensure_ascii=False) + "\n")
    (ctx.out / "clusters.json").write_text(json.dumps(clusters, indent=1, ensure_ascii=False) + "\n")
    flagged = defaultdict(set)
    for f in led.flags:
        flagged[f["step"]].add(f["id"])
    detectors = truth.score(injected, led.removed, flagged, pii_truth, findings, led.reached, dd["jaccard"],
                            outlier_ids) if injected else None
    dataset = {
        "version": version,
        "files": {n: {"path": files[n], "sha256": digests[n], "records": len(parts[n])} for n in splits},
        "source": "generator" if not cfg["sources"] else "sources",
        "generator": cfg["generator"] if not cfg["sources"] else None,
        "sources": cfg["sources"], "read": read, "cleaning": {k: cfg[k] for k in ("normalize", "dedup", "pii", "labels",
                                                                      "datalab", "max_tokens", "split")},
        "seed": ctx.seed,
    }
    (ctx.out / "dataset.json").write_text(json.dumps(dataset, indent=2, ensure_ascii=False) + "\n")
    finding_counts = Counter((f["type"], f["action"]) for fs in findings.values() for f in fs)
    metrics = {
        "dataset_version": version, "counts": dict(led.counts), "step_seconds": led.seconds,
        "engine": {**eng.describe(), "cpu_seconds": {k: round(v, 2) for k, v in sorted(eng.cpu.items())}},
        "throughput": throughput(led), "peak_rss_mb": rss.peak_mb(),
        "records": {n: len(parts[n]) for n in splits},
        "removed_by_step": dict(Counter(r["step"] for r in removed)),
        "duplicates_across": duplicates_across(removed, ingested, task.slices),
        "flagged_by_step": dict(Counter(f["step"] for f in led.flags)),
        "pii_findings": {f"{t}:{a}": n for (t, a), n in sorted(finding_counts.items())},
        "near_duplicate_clusters": len(clusters), "leakage_removed": leaks,
        "datalab": {"summary": datalab_info["summary"], "seconds": datalab_info["seconds"],
                    "sampled": len(datalab_info["records"]), "outliers": len(outlier_ids)} if datalab_info else None,
        "detectors": detectors, "targeted": aimed,
        "tokens_mean": {n: round(sum(c["tokens"] for c in p) / len(p), 1) for n, p in parts.items() if p},
        "tokens_max": {n: max(c["tokens"] for c in p) for n, p in parts.items() if p},
        "train_tokens": sum(c["tokens"] for c in parts["train"]),
        "slices": {s: dict(Counter(c[s] for p in parts.values() for c in p)) for s in task.slices},
        **({"labels": {n: dict(Counter(c["gold"] for c in p)) for n, p in parts.items()}}
           if task.scorer.STRATIFY_BY_ANSWER else {}),
        **({"groups": {"per_split": {n: len({c["group"] for c in p if "group" in c}) for n, p in parts.items()},
                       "across_splits": groups_across(parts)}}
           if any("group" in c for p in parts.values() for c in p) else {}),
    }
    if cfg["dvc"]["enabled"]:
        from runner.adapters import dvc
        ctx.progress("dvc add")
        metrics["dvc"] = dvc.track([ctx.out / files[n] for n in splits], version, env.runs_root() / "dvc",
                                   cfg["dvc"].get("remote"), ctx.log("dvc.log"))
    (ctx.out / "flags.jsonl").write_text("".join(json.dumps(f, ensure_ascii=False) + "\n" for f in led.flags))
    written = data_audit.write(Page(ctx.out, metrics, {"parts": parts, "removed": removed, "clusters": clusters,
                                                       "findings": findings, "flags": led.flags, "dataset": dataset},
                                    ctx.recipe))
    return Result(metrics=metrics,
                  artifacts={**files, "dataset": "dataset.json", "removed": "removed.jsonl", **written,
                             "findings": "findings.json", "clusters": "clusters.json", "flags": "flags.jsonl"},
                  notes=[f"version {version}", "/".join(str(len(parts[n])) for n in splits) + " " + "/".join(splits),
                         f"{len(removed)} removed, {len(led.flags)} flagged"])
