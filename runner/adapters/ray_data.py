"""Ray Data adapter: the data stage's engine when `data.engine: ray` (runner/dataprep/engine.py says what an engine
answers). The stage starts Ray and stops it after itself:

- `data.ray.address` (or RAY_ADDRESS) joins a running cluster, with this repository shipped as the job's working
  directory; without one, `ray.init()` starts a one-machine cluster with `threads` CPUs.
- per-record steps: `map_batches` over rows that carry each record pickled (records hold nested, uneven values
  that Arrow would have to unify);
- exact dedup: a group-by on the normalized text's hash: `repartition(keys=[hash])` (a hash shuffle, so each
  group lands in one block), then each block sorted by key and every record after its group's first marked;
- near dedup and leakage: each MinHash signature mapped to its LSH band keys (the bands of datasketch's index for
  the same threshold, each folded into 64 bits), the same hash shuffle on the band key, the pairs of each bucket;
  the pairs are confirmed by exact Jaccard in `map_batches` and joined into components by the stage (their
  number grows with the duplicates, not with the records).
Nothing leaves the machine on a local cluster: usage stats are off and no dashboard starts.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from runner import env
from runner.dataprep import dedup
from runner.dataprep.engine import BATCH, timed


def _apply(batch: dict, fn, kw: dict) -> dict:
    items = [pickle.loads(b) for b in batch["b"]]
    out, cpu = timed(fn, items, kw)
    return {"k": batch["k"], "r": np.array([pickle.dumps(o) for o in out], dtype=object),
            "cpu": np.full(len(out), cpu / max(1, len(out)))}


def _later_of_groups(block: dict) -> dict:
    """One hash partition: for each key, every index after the group's first -> that first."""
    order = np.lexsort((block["i"], block["h"]))
    h, i = block["h"][order], block["i"][order]
    later, first = [], []
    for s, e in zip(*dedup.runs(h)):
        later += i[s + 1:e].tolist()
        first += [i[s]] * (e - s - 1)
    return {"i": np.asarray(later, np.int64), "f": np.asarray(first, np.int64)}


def _band_rows(batch: dict, hashranges) -> dict:
    """Each signature's band keys (dedup.band_keys), one row per record and band."""
    keys = dedup.band_keys(np.stack(batch["s"]), hashranges)
    n = keys.shape[1]
    return {"key": keys.T.ravel(), "i": np.tile(batch["i"], n), "side": np.tile(batch["side"], n)}


def _bucket_pairs(block: dict, across: bool) -> dict:
    """One hash partition of band rows: the pairs of records in each bucket (across: one from each side)."""
    pairs = sorted(dedup.bucket_pairs(block["key"], block["i"], block["side"], across))
    a, b = zip(*pairs) if pairs else ((), ())
    return {"a": np.asarray(a, np.int64), "b": np.asarray(b, np.int64)}


@contextlib.contextmanager
def local_cluster_env():
    """The environment a one-machine cluster starts in, so that it connects to nothing but loopback (with
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, set before ray is imported, the node address is 127.0.0.1: on Linux Ray
    otherwise finds its address by a UDP connect towards 8.8.8.8 and serves on the machine's interface):
    - HOME: a folder holding ray_bootstrap_config.yaml with a local provider. Ray's dashboard reads
      ~/ray_bootstrap_config.yaml at start to describe the cluster and, without one, asks the AWS, Azure and GCP
      metadata services (169.254.169.254, a DNS lookup of metadata.google.internal) even with usage stats off.
    The processes Ray starts keep this environment; the stage's own is restored after `ray.init`."""
    home = tempfile.mkdtemp(prefix="forge-ray-home-")
    Path(home, "ray_bootstrap_config.yaml").write_text("provider: {type: local}\n")
    saved = {"HOME": os.environ.get("HOME")}
    os.environ.update(HOME=home)
    try:
        yield home
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Engine:
    name = "ray"

    def __init__(self, cfg: dict, workers: int):
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"   # no usage report leaves the machine
        address = cfg.get("address") or os.environ.get("RAY_ADDRESS") or None
        if not address:   # read by ray's constants at import
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        import ray
        import ray.data

        env_vars = {"PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED", "0"), "TOKENIZERS_PARALLELISM": "false",
                    "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
        self.home = None
        if address:   # a cluster: its workers get this repository as their working directory
            runtime_env = {"working_dir": str(env.REPO), "env_vars": env_vars,
                           "excludes": ["runs/", ".git/", "reports/", "**/__pycache__/"]}
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=False, logging_level=logging.ERROR)
        else:
            with local_cluster_env() as self.home:
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                         _node_ip_address="127.0.0.1",
                         runtime_env={"env_vars": {**env_vars, "PYTHONPATH": str(env.REPO),
                                                   "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}},
                         object_store_memory=cfg.get("object_store_mb", 2048) * 2**20)
        import pyarrow
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        self.ray, self.data, self.pa = ray, ray.data, pyarrow
        self.address = address
        self.workers = int(ray.cluster_resources().get("CPU", workers))
        self.cpu: dict[str, float] = defaultdict(float)

    def describe(self) -> dict:
        return {"engine": self.name, "workers": self.workers, "cluster": self.address or "local",
                "ray": self.ray.__version__}

    def map_batches(self, fn, items: list, batch_size: int = BATCH, **kw) -> list:
        if not items:
            return []
        table = self.pa.table({"k": np.arange(len(items)), "b": self.pa.array([pickle.dumps(x) for x in items],
                                                                              self.pa.binary())})
        ds = self._blocks(table, batch_size).map_batches(_apply, fn_kwargs={"fn": fn, "kw": kw}, batch_size=batch_size,
                                                     batch_format="numpy")
        out: list = [None] * len(items)
        for batch in ds.iter_batches(batch_size=4096, batch_format="numpy"):
            for k, r, c in zip(batch["k"], batch["r"], batch["cpu"]):
                out[int(k)] = pickle.loads(r)
                self.cpu[fn.__name__] += float(c)
        return out

    def _blocks(self, table, batch_size: int):
        """The table as a dataset of several blocks (a task works on one block: one block would be one task), a few
        per worker and at least a batch each."""
        rows = max(batch_size, -(-table.num_rows // (self.workers * 4)))
        return self.data.from_arrow([table.slice(i, rows) for i in range(0, table.num_rows, rows)])

    def _partitions(self, n: int) -> int:
        return max(2, min(64, self.workers * 2, n // 2000 + 2))

    def first_of(self, keys: list) -> dict[int, int]:
        if not keys:
            return {}
        table = self.pa.table({"i": np.arange(len(keys)), "h": self.pa.array([str(k) for k in keys])})
        later = self._blocks(table, BATCH).repartition(self._partitions(len(keys)), keys=["h"]) \
            .map_batches(_later_of_groups, batch_size=None, batch_format="numpy")
        return {int(i): int(f) for b in later.iter_batches(batch_format="numpy") for i, f in zip(b["i"], b["f"])}

    def _band_pairs(self, sigs: list, sides: list, threshold: float, num_perm: int, across: bool) -> set:
        if not sigs:
            return set()
        hashranges = dedup.lsh(threshold, num_perm).hashranges
        ids = np.asarray([i for i, _ in sides], np.int64)
        side = np.asarray([s for _, s in sides], np.int8)
        sig = np.stack(sigs)
        table = self.pa.table({"i": ids, "side": side,
                               "s": self.pa.FixedSizeListArray.from_arrays(self.pa.array(sig.ravel()), sig.shape[1])})
        pairs = self._blocks(table, BATCH) \
            .map_batches(_band_rows, fn_kwargs={"hashranges": hashranges}, batch_format="numpy") \
            .repartition(self._partitions(len(sigs) * len(hashranges) // 10), keys=["key"]) \
            .map_batches(_bucket_pairs, fn_kwargs={"across": across}, batch_size=None, batch_format="numpy")
        return {(int(a), int(b)) for bt in pairs.iter_batches(batch_format="numpy") for a, b in zip(bt["a"], bt["b"])}

    def candidates(self, sigs: list, threshold: float, num_perm: int) -> set[tuple[int, int]]:
        return self._band_pairs(sigs, [(i, 0) for i in range(len(sigs))], threshold, num_perm, across=False)

    def candidates_across(self, sigs_a: list, sigs_b: list, threshold: float, num_perm: int) -> set[tuple[int, int]]:
        if not sigs_a or not sigs_b:
            return set()
        return self._band_pairs(sigs_a + sigs_b, [(i, 0) for i in range(len(sigs_a))] +
                                [(j, 1) for j in range(len(sigs_b))], threshold, num_perm, across=True)

    def release(self) -> None:
        """Ray's workers stay: the cluster keeps its processes until the stage ends."""

    def close(self) -> None:
        if self.ray.is_initialized():
            self.ray.shutdown()
        if self.home:
            shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
