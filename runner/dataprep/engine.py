"""Where the data stage's work runs (`data.engine`): `local`, a process pool over this machine's cores, or `ray`,
Ray Data on a local or remote cluster (runner/adapters/ray_data.py). Both run the same batch functions
(runner/dataprep/steps.py, dedup.py) and answer the same four questions, so a run gives the same records, the same
dataset version and the same audit whichever engine ran it (tests/test_data_engines.py):

- `map_batches(fn, items, **kw)`: fn(batch, **kw) -> one result per item, for every item, in order;
- `first_of(keys)`: index -> the first index with the same key, for the later ones (exact dedup: a group-by);
- `candidates(sigs, threshold, num_perm)`: (i, j), i < j, whose MinHash signatures share an LSH band;
- `candidates_across(sigs_a, sigs_b, threshold, num_perm)`: (i, j) across two sets.

Both find the candidates by grouping the records on LSH band keys (dedup.band_keys: the bands of datasketch's
index for the threshold): locally a sort of every key in memory, on Ray a hash shuffle, which is what lets it
scale past one machine's memory. The records themselves stay in the driver's
list between steps in both (the stage applies each step's results in record order); CPU time spent in each
batch function is summed per function (`cpu`), so the audit can say which step the workers spent it on.
"""
from __future__ import annotations

import multiprocessing
import os
import time
from collections import defaultdict
from functools import partial

from runner.dataprep import dedup

BATCH = 256


def timed(fn, batch: list, kw: dict) -> tuple[list, float]:
    t0 = time.process_time()
    out = fn(batch, **kw)
    if len(out) != len(batch):
        raise RuntimeError(f"{fn.__name__} returned {len(out)} results for {len(batch)} items")
    return out, time.process_time() - t0


def first_index(keys: list) -> dict[int, int]:
    first: dict = {}
    out = {}
    for i, k in enumerate(keys):
        if k in first:
            out[i] = first[k]
        else:
            first[k] = i
    return out


class Local:
    """`workers` processes forked from the stage (1: everything in this process)."""

    name = "local"

    def __init__(self, workers: int = 1):
        self.workers = max(1, workers)
        self.cpu: dict[str, float] = defaultdict(float)
        self._pool = None

    def _workers(self):
        """The pool, forked on first use after a `release`: the workers inherit PYTHONHASHSEED=0
        (runner/__main__.py), which the generator's Faker output depends on; the stage never uses the tokenizer's
        own threads before forking (its Rust thread pool must not be forked)."""
        if self._pool is None:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            self._pool = multiprocessing.get_context("fork").Pool(self.workers)
        return self._pool

    def describe(self) -> dict:
        return {"engine": self.name, "workers": self.workers}

    def map_batches(self, fn, items: list, batch_size: int = BATCH, **kw) -> list:
        batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
        if self.workers < 2 or len(batches) < 2:
            done = [timed(fn, b, kw) for b in batches]
        else:
            done = self._workers().map(partial(timed, fn, kw=kw), batches, chunksize=1)
        out = []
        for res, cpu in done:
            out += res
            self.cpu[fn.__name__] += cpu
        return out

    def first_of(self, keys: list) -> dict[int, int]:
        return first_index(keys)

    def candidates(self, sigs: list, threshold: float, num_perm: int) -> set[tuple[int, int]]:
        return dedup.band_candidates(sigs, threshold, num_perm)

    def candidates_across(self, sigs_a: list, sigs_b: list, threshold: float, num_perm: int) -> set[tuple[int, int]]:
        return dedup.band_candidates_across(sigs_a, sigs_b, threshold, num_perm)

    def release(self) -> None:
        """Stop the workers until the next map (what they loaded for a step, such as Presidio, leaves with them)."""
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
