"""Keep an engine alive: a supervised llama-server is restarted on its own port when it exits, after a backoff
that doubles with every crash in a row (1 s, 2 s, 4 s, ... capped) and starts over once the engine has stayed
up for `stable_s`. Every exit and recovery is recorded, for the fault drills and the report."""
from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

from runner import proc
from runner.adapters import llama_cpp
from runner.stage import StageError


class SupervisedServer:
    def __init__(self, server: llama_cpp.Server, ready_timeout: float, backoff_s: float = 1.0,
                 backoff_max_s: float = 30.0, stable_s: float = 60.0):
        self.server = server
        self.ready_timeout = ready_timeout
        self.backoff_s, self.backoff_max_s, self.stable_s = backoff_s, backoff_max_s, stable_s
        self.events: list[dict] = []   # {"exit_code", "down_at", "backoff_s", "recovered_s" | "error"}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._log = None
        self._up_since = 0.0

    @property
    def pid(self) -> int | None:
        p = self.server.process
        return p.pid if p is not None and p.poll() is None else None

    @property
    def restarts(self) -> int:
        return sum(1 for e in self.events if "recovered_s" in e)

    def _spawn(self) -> None:
        self._log.write(f"$ {' '.join(map(str, self.server.command()))}\n")
        self._log.flush()
        self.server.process = subprocess.Popen([str(c) for c in self.server.command()], stdout=self._log,
                                               stderr=subprocess.STDOUT, start_new_session=True)

    def start(self) -> float:
        """Start the engine, wait until it generates; then watch it. Returns seconds to ready."""
        self.server.log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.server.log, "a")
        self._spawn()
        try:
            ready = llama_cpp.wait_ready(self.server, self.server.process, self.server.log, self.ready_timeout)
        except BaseException:
            self.stop()
            raise
        self._up_since = time.time()
        self._thread = threading.Thread(target=self._watch, daemon=True, name=f"supervise-{self.server.alias}")
        self._thread.start()
        return ready

    def _watch(self) -> None:
        delay = self.backoff_s
        while not self._stop.is_set():
            p = self.server.process
            if p.poll() is None:
                self._stop.wait(0.2)
                continue
            if self._stop.is_set():
                return
            down_at = time.time()
            if down_at - self._up_since >= self.stable_s:
                delay = self.backoff_s
            event = {"exit_code": p.returncode, "down_at": round(down_at, 3), "backoff_s": delay}
            self._log.write(f"[supervisor] llama-server exited with code {p.returncode}; restarting in {delay:g} s\n")
            self._log.flush()
            if self._stop.wait(delay):
                return
            self._spawn()
            try:
                llama_cpp.wait_ready(self.server, self.server.process, self.server.log, self.ready_timeout)
                event["recovered_s"] = round(time.time() - down_at, 2)
                self._up_since = time.time()
            except StageError as e:
                event["error"] = str(e).splitlines()[0][:200]
                proc.terminate(self.server.process)
            self.events.append(event)
            delay = min(delay * 2, self.backoff_max_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=self.ready_timeout + 5)
        if self.server.process is not None:
            proc.terminate(self.server.process)
        if self._log:
            self._log.close()
            self._log = None


def wait_for_restart(engine: SupervisedServer, after: int, timeout: float) -> dict | None:
    """The first event recorded after the first `after` ones, once its restart finished (None on timeout)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(engine.events) > after:
            return engine.events[after]
        time.sleep(0.1)
    return None


def supervise(gguf: Path, log: Path, threads: int, parallel: int, ctx_size: int, alias: str,
              ready_timeout: float, extra_args: tuple = ()) -> SupervisedServer:
    return SupervisedServer(llama_cpp.Server(gguf, llama_cpp.free_port(), threads, parallel, ctx_size, alias, log=log,
                                             extra_args=tuple(extra_args)), ready_timeout)
