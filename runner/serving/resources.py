"""Sample what a deployment uses while it is under load: CPU and RSS of each engine and of the gateway (psutil),
the whole machine's CPU, and the gauges both services export on /metrics (llama-server's slots busy and
requests deferred, the gateway's in-flight and queued). Summaries are cut by time window (one per load level)."""
from __future__ import annotations

import re
import threading
import time
import urllib.request
from typing import Callable

import psutil

GAUGES = {  # /metrics gauge -> our name
    "llamacpp:requests_processing": "slots_busy",
    "llamacpp:requests_deferred": "requests_deferred",
    "forge_in_flight": "gateway_in_flight",
    "forge_queued": "gateway_queued",
}


COUNTERS = {  # llama-server's /metrics counters -> our name (cumulative since the engine started)
    "llamacpp:prompt_tokens_total": "prompt_tokens",
    "llamacpp:prompt_tokens_cached_total": "prompt_tokens_cached",
    "llamacpp:tokens_predicted_total": "tokens_predicted",
    "llamacpp:n_decode_total": "decode_calls",
}


def scrape(url: str, timeout: float = 2.0, names: dict[str, str] = GAUGES) -> dict[str, float]:
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=timeout) as r:
            return parse_gauges(r.read().decode(), names)
    except OSError:
        return {}


def parse_gauges(text: str, names: dict[str, str] = GAUGES) -> dict[str, float]:
    """The metrics in `names` (GAUGES by default) found in one Prometheus text page."""
    out = {}
    for metric, name in names.items():
        m = re.search(rf"^{re.escape(metric)}(?:{{[^}}]*}})?\s+([-\d.e+]+)", text, re.M)
        if m:
            out[name] = float(m.group(1))
    return out


def engine_counters(url: str) -> dict[str, float]:
    """An engine's cumulative work counters: what it has processed since it started."""
    return scrape(url, timeout=5.0, names=COUNTERS)


class Sampler:
    """`processes`: name -> callable giving the current pid (engines get new pids when restarted);
    `metrics_urls`: name -> base URL whose /metrics is scraped."""

    def __init__(self, processes: dict[str, Callable[[], int | None]], metrics_urls: dict[str, str],
                 interval_s: float = 1.0):
        self.processes, self.metrics_urls, self.interval_s = processes, metrics_urls, interval_s
        self.samples: list[dict] = []   # {"t", "machine_cpu_pct", "<name>": {"cpu_pct", "rss_mb", gauges...}}
        self._handles: dict[int, psutil.Process] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="resource-sampler")

    def __enter__(self) -> "Sampler":
        psutil.cpu_percent(None)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _proc(self, pid: int) -> psutil.Process:
        if pid not in self._handles:
            self._handles[pid] = psutil.Process(pid)
            self._handles[pid].cpu_percent(None)   # the first call only primes the counter
        return self._handles[pid]

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            row: dict = {"t": time.time(), "machine_cpu_pct": psutil.cpu_percent(None)}
            for name, pid_of in self.processes.items():
                pid = pid_of()
                entry: dict = {}
                if pid:
                    try:
                        p = self._proc(pid)
                        with p.oneshot():
                            entry = {"cpu_pct": p.cpu_percent(None), "rss_mb": p.memory_info().rss / 2**20}
                    except psutil.Error:
                        entry = {}
                row[name] = entry
            for name, url in self.metrics_urls.items():
                row.setdefault(name, {}).update(scrape(url))
            self.samples.append(row)

    def window(self, start: float, end: float) -> dict:
        """Mean and max of every sampled quantity between two times (a load level)."""
        rows = [r for r in self.samples if start <= r["t"] <= end]
        out: dict = {"samples": len(rows)}
        if not rows:
            return out
        cpu = [r["machine_cpu_pct"] for r in rows]
        out["machine_cpu_pct"] = {"mean": round(sum(cpu) / len(cpu), 1), "max": round(max(cpu), 1)}
        names = {k for r in rows for k, v in r.items() if isinstance(v, dict)}
        for name in sorted(names):
            keys = {k for r in rows for k in r.get(name, {})}
            out[name] = {}
            for k in sorted(keys):
                vals = [r[name][k] for r in rows if k in r.get(name, {})]
                out[name][k] = {"mean": round(sum(vals) / len(vals), 2), "max": round(max(vals), 2)}
        return out
