"""What the data stage's work cost: the peak memory of the stage's whole process tree (the stage, its pool's
workers, Ray's processes) as the sum of their proportional set sizes (PSS: a page shared by n processes, such as
what forked workers share with the stage or Ray's object store, counts 1/n in each; the sum of their RSS would count
it n times), sampled every 0.2 s, and each step's share of a pass that ran several steps at
once, by the CPU seconds the workers spent on each (runner/dataprep/steps.py reports them per batch)."""
from __future__ import annotations

import threading
from collections import Counter

import psutil


class PeakRss:
    def __init__(self, every_s: float = 0.2):
        self.every_s, self.peak, self.since, self.last = every_s, 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while True:
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_full_info().pss
                except psutil.Error:
                    continue
            self.peak, self.since, self.last = max(self.peak, total), max(self.since, total), total
            if self._stop.wait(self.every_s):
                return

    def peak_mb(self) -> float:
        return round(self.peak / 2**20, 1)

    def lap_mb(self) -> float:
        """The peak since the last lap (a step's own; a step shorter than a sample: the last sample), and a new lap."""
        out, self.since = max(self.since, self.last), self.last
        return round(out / 2**20, 1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def cpu_of(results: list[dict]) -> Counter:
    """Sum of the per-batch CPU seconds a batch function left on its results (and taken off them)."""
    total: Counter = Counter()
    for r in results:
        total.update(r.pop("cpu", {}))
    return total


def share(wall: float, cpu: Counter, part: str) -> float:
    """`part`'s share of a pass's wall seconds, by CPU seconds."""
    spent = sum(cpu.values())
    return wall * cpu[part] / spent if spent else 0.0
