"""Exact and near-duplicate detection. Exact: a group-by on the hash of the normalized text. Near duplicates:
datasketch MinHash signatures, LSH candidates queried a margin below the target Jaccard (LSH alone misses pairs
near the threshold), every candidate confirmed with exact Jaccard on the same character shingles; connected
components by union-find, one record kept per component (the first seen). The candidates are the records that
share a band of datasketch's LSH index for the query threshold, found by grouping the records on band keys: a sort
in memory on the local engine, a hash shuffle on Ray (runner/dataprep/engine.py, runner/adapters/ray_data.py)."""
from __future__ import annotations

import hashlib

import numpy as np

from datasketch import MinHash, MinHashLSH

# Every LSH candidate is confirmed with exact Jaccard, so a false positive costs only a set comparison while a
# false negative is a missed duplicate: weight the band/row choice towards recall. Measured on 3 x 2000
# generated records (249 injected pairs at Jaccard >= 0.8): LSH recall 0.976 with the default (0.5, 0.5),
# 1.0 with (0.1, 0.9), for ~10% more candidates.
LSH_WEIGHTS = (0.1, 0.9)
# A candidate whose signatures agree on fewer than (target - ESTIMATE_MARGIN) of their values is not worth an exact
# Jaccard: with 128 values the estimate's standard deviation is <= 0.045, so a pair at the target sits 4.5 of them
# above the cut (on 20,000 generated records the lowest estimate of a pair at Jaccard >= 0.8 was 0.71). It drops
# ~90% of the candidates before the exact check.
ESTIMATE_MARGIN = 0.2
SIG_DTYPE = MinHash(num_perm=1, seed=1).hashvalues.dtype


def normalized_hash(text: str) -> str:
    return hashlib.sha256(" ".join(text.lower().split()).encode()).hexdigest()


def shingles(text: str, k: int) -> set[bytes]:
    t = " ".join(text.lower().split())
    return {t[i:i + k].encode() for i in range(max(1, len(t) - k + 1))}


def exact_jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


class _UnionFind:
    def __init__(self):
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # the earliest record is the root (the one kept)


def signatures(texts: list[str], k: int, num_perm: int, seed: int = 1) -> list:
    """MinHash signatures (datasketch's hash values, numpy arrays of SIG_DTYPE) of the texts' character k-shingles."""
    return [m.hashvalues for m in MinHash.bulk([list(shingles(t, k)) for t in texts], num_perm=num_perm, seed=seed)]


def lsh(threshold: float, num_perm: int) -> MinHashLSH:
    """datasketch's LSH index for a query threshold: its bands (`hashranges`) are what both engines group by."""
    return MinHashLSH(threshold=max(0.05, threshold), num_perm=num_perm, weights=LSH_WEIGHTS)


_MIX = np.uint64(0x9E3779B97F4A7C15)


def band_keys(sigs: np.ndarray, hashranges) -> np.ndarray:
    """(records, bands) int64: each band's number and its rows of the signature folded into 64 bits. Records that
    share a band share its key; two that share a key by chance only add a candidate, which the exact Jaccard then
    rejects."""
    sig = sigs.astype(np.uint64)
    out = np.empty((len(sig), len(hashranges)), dtype=np.int64)
    for b, (lo, hi) in enumerate(hashranges):
        h = np.full(len(sig), np.uint64(b + 1), dtype=np.uint64)
        for c in range(lo, hi):
            h = h * _MIX + sig[:, c]
        out[:, b] = h.view(np.int64)
    return out


def runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the runs of equal keys in a sorted array."""
    if not len(keys):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return starts, np.r_[starts[1:], len(keys)]


def bucket_pairs(keys: np.ndarray, ids: np.ndarray, sides: np.ndarray, across: bool) -> set[tuple[int, int]]:
    """Records grouped by key (a sort, not an index): the pairs (i, j), i < j, in each group of two or more;
    `across`: only pairs with i from side 0 and j from side 1."""
    order = np.lexsort((ids, keys))
    keys, ids, sides = keys[order], ids[order], sides[order]
    starts, ends = runs(keys)
    many = ends - starts > 1
    pairs: set[tuple[int, int]] = set()
    for s, e in zip(starts[many], ends[many]):
        if across:
            left, right = ids[s:e][sides[s:e] == 0].tolist(), ids[s:e][sides[s:e] == 1].tolist()
            pairs.update((i, j) for i in left for j in right)
        else:
            m = ids[s:e].tolist()
            pairs.update((m[x], m[y]) for x in range(len(m)) for y in range(x + 1, len(m)) if m[x] != m[y])
    return pairs


def band_candidates(sigs: list, threshold: float, num_perm: int) -> set[tuple[int, int]]:
    """(i, j), i < j: pairs that share an LSH band of datasketch's index for `threshold` (the local engine: the
    band keys of all records sorted in memory, 8 bytes a band per record)."""
    if not sigs:
        return set()
    keys = band_keys(np.stack(sigs), lsh(threshold, num_perm).hashranges)
    ids = np.tile(np.arange(len(sigs), dtype=np.int64), keys.shape[1])
    return bucket_pairs(keys.T.ravel(), ids, np.zeros(len(ids), np.int8), across=False)


def band_candidates_across(sigs_a: list, sigs_b: list, threshold: float, num_perm: int) -> set[tuple[int, int]]:
    """(i, j): a's record i and b's record j share an LSH band."""
    if not sigs_a or not sigs_b:
        return set()
    keys = band_keys(np.stack(sigs_a + sigs_b), lsh(threshold, num_perm).hashranges)
    ids = np.r_[np.arange(len(sigs_a)), np.arange(len(sigs_b))].astype(np.int64)
    sides = np.r_[np.zeros(len(sigs_a), np.int8), np.ones(len(sigs_b), np.int8)]
    n = keys.shape[1]
    return bucket_pairs(keys.T.ravel(), np.tile(ids, n), np.tile(sides, n), across=True)


def likely(pairs: list[tuple[int, int]], sigs_a: list, sigs_b: list, least: float) -> list[tuple[int, int]]:
    """The candidate pairs (i in a, j in b) whose signatures agree on at least `least` of their values (MinHash's
    estimate of their Jaccard), in the same order."""
    if not pairs:
        return []
    a, b = np.stack(sigs_a), np.stack(sigs_b)
    idx = np.asarray(pairs, dtype=np.int64)
    keep = np.concatenate([(a[idx[x:x + 50000, 0]] == b[idx[x:x + 50000, 1]]).mean(axis=1) >= least
                           for x in range(0, len(idx), 50000)])
    return [p for p, k in zip(pairs, keep) if k]


def jaccard_batch(pairs: list[tuple], k: int) -> list[float]:
    """Exact Jaccard of each (text, text) pair's shingles: what confirms an LSH candidate. A text's shingles are
    made once per batch (the candidates come sorted, so one text's pairs sit together)."""
    memo: dict[str, set] = {}
    sh = lambda t: memo[t] if t in memo else memo.setdefault(t, shingles(t, k))  # noqa: E731
    return [exact_jaccard(sh(a), sh(b)) for a, b in pairs]


def signatures_via(texts: list[str], k: int, num_perm: int, engine, cache: dict | None) -> list:
    """The texts' signatures, those in `cache` (text -> signature) taken from it, the others made on the engine
    and added to it."""
    if cache is None:
        return engine.map_batches(signatures, texts, k=k, num_perm=num_perm)
    missing = list(dict.fromkeys(t for t in texts if t not in cache))
    cache.update(zip(missing, engine.map_batches(signatures, missing, k=k, num_perm=num_perm)))
    return [cache[t] for t in texts]


def hash_batch(texts: list[str]) -> list[str]:
    return [normalized_hash(t) for t in texts]


def components(n: int, edges: list[tuple[int, int, float]]) -> list[dict]:
    """Connected components (size >= 2) of the confirmed pairs, in order of their first record:
    {"members": sorted indices, "pairs": [(i, j, jaccard)] sorted}; members[0] is the record kept."""
    uf = _UnionFind()
    for i, j, _ in edges:
        uf.union(i, j)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        if i in uf.parent:
            groups.setdefault(uf.find(i), []).append(i)
    by_root: dict[int, list] = {}
    for e in sorted(edges):
        by_root.setdefault(uf.find(e[0]), []).append(e)
    return [{"members": sorted(m), "pairs": by_root[root]} for root, m in sorted(groups.items()) if len(m) > 1]


def near_clusters(texts: list[str], jaccard: float, margin: float, k: int, num_perm: int, engine,
                  sigs: list | None = None) -> list[dict]:
    """Clusters (size >= 2) of documents whose exact Jaccard >= `jaccard` (single linkage): LSH candidates at
    `jaccard - margin`, each confirmed by exact Jaccard, then connected components (`components`). `engine`:
    where the work runs (runner/dataprep/engine.py); `sigs`: the texts' signatures, when already made."""
    eng = engine
    if sigs is None:
        sigs = eng.map_batches(signatures, texts, k=k, num_perm=num_perm)
    cands = likely(sorted(eng.candidates(sigs, jaccard - margin, num_perm)), sigs, sigs, jaccard - ESTIMATE_MARGIN)
    sims = eng.map_batches(jaccard_batch, [(texts[i], texts[j]) for i, j in cands], k=k)
    return components(len(texts), [(i, j, round(s, 4)) for (i, j), s in zip(cands, sims) if s >= jaccard])


def brute_force_pairs(texts: list[str], jaccard: float, k: int) -> set[tuple[int, int]]:
    """Every pair with exact Jaccard >= threshold, by comparing all pairs (the baseline and the truth)."""
    sh = [shingles(t, k) for t in texts]
    return {(i, j) for i in range(len(sh)) for j in range(i + 1, len(sh)) if exact_jaccard(sh[i], sh[j]) >= jaccard}


def leakage(train_texts: list[str], other_texts: list[str], jaccard: float, k: int, num_perm: int,
            engine, cache: dict | None = None) -> dict[int, tuple[int, float]]:
    """Index of each `other` text that is a near duplicate of some training text -> (train index, jaccard): the most
    similar one, the first on a tie. `cache`: signatures already made, by text (`signatures_via`)."""
    eng = engine
    tr = signatures_via(train_texts, k, num_perm, eng, cache)
    ot = signatures_via(other_texts, k, num_perm, eng, cache)
    cands = likely(sorted(eng.candidates_across(tr, ot, jaccard - 0.1, num_perm)), tr, ot, jaccard - ESTIMATE_MARGIN)
    sims = eng.map_batches(jaccard_batch, [(train_texts[i], other_texts[j]) for i, j in cands], k=k)
    hits: dict[int, tuple[int, float]] = {}
    for (i, j), s in zip(cands, sims):
        if s >= jaccard and (j not in hits or s > hits[j][1]):
            hits[j] = (i, s)
    return {j: (i, round(s, 4)) for j, (i, s) in hits.items()}
