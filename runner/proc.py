"""Run a delegated tool as a subprocess: output to a log file, live progress parsed from its lines."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from runner.stage import StageError


def tool_env(threads: int, extra: dict | None = None) -> dict:
    """Environment for every delegated tool: offline, no telemetry, explicit thread counts."""
    e = dict(os.environ)
    e.update({
        "HF_HUB_OFFLINE": e.get("HF_HUB_OFFLINE", "1"),
        "HF_DATASETS_OFFLINE": e.get("HF_DATASETS_OFFLINE", "1"),
        "TRANSFORMERS_OFFLINE": e.get("TRANSFORMERS_OFFLINE", "1"),
        "AXOLOTL_DO_NOT_TRACK": "1",
        "DO_NOT_TRACK": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "WANDB_MODE": "disabled",
        "OTEL_SDK_DISABLED": "true",   # opentelemetry comes with Axolotl's stack; it must not export anywhere
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",
    })
    e.update(extra or {})
    return e


def tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def run(cmd: list, log: Path, env: dict | None = None, cwd: Path | None = None,
        on_line: Callable[[str], None] | None = None, what: str = "", redact: tuple[str, ...] = (),
        timeout: float | None = None) -> dict:
    """Run to completion; every output line goes to `log` and to `on_line`. Raise StageError on failure, and
    on running past `timeout` seconds (the process group is stopped). Returns {"seconds", "max_rss_mb"} of the
    process (its own peak resident memory, from wait4)."""
    t0 = time.time()
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(c) for c in cmd]
    with open(log, "a") as out:
        shown = " ".join(cmd)
        for secret in redact:
            shown = shown.replace(secret, "***")
        out.write(f"$ {shown}\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                text=True, errors="replace", bufsize=1, start_new_session=True)
        timer = threading.Timer(timeout, terminate, (proc,)) if timeout else None
        if timer:
            timer.daemon = True
            timer.start()
        try:
            for line in proc.stdout:
                out.write(line)
                if on_line:
                    on_line(line.rstrip("\n"))
            _, status, usage = os.wait4(proc.pid, 0)
            rc = os.waitstatus_to_exitcode(status)
            proc.returncode = rc
        except BaseException:
            terminate(proc)
            raise
        finally:
            if timer:
                timer.cancel()
    if timeout and time.time() - t0 >= timeout:
        raise StageError(f"{what or Path(cmd[0]).name} ran past its {timeout:.0f} s limit and was stopped\n"
                         f"{tail(log)}", log=log)
    if rc != 0:
        raise StageError(f"{what or Path(cmd[0]).name} failed with exit code {rc}\n{tail(log)}", log=log)
    return {"seconds": round(time.time() - t0, 2), "max_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def terminate(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a process group: SIGTERM, then SIGKILL after `grace` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + grace
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def wait_http_ok(process: subprocess.Popen, url: str, timeout: float, interval: float = 0.1) -> str | None:
    """Poll `url` until it answers 200 while `process` runs: None when it did, else why not (its exit, or the
    timeout), for the caller's own error."""
    import urllib.request
    t0 = time.time()
    while True:
        if process.poll() is not None:
            return f"exited with code {process.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return None
        except OSError:
            pass
        if time.time() - t0 > timeout:
            return f"no 200 from {url} within {timeout:.0f}s"
        time.sleep(interval)


@contextmanager
def background(cmd: list, log: Path, env: dict | None = None, cwd: Path | None = None) -> Iterator[subprocess.Popen]:
    """A long-running process (a server) whose output goes to `log`; stopped on exit from the block."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "a")
    out.write(f"$ {' '.join(map(str, cmd))}\n")
    out.flush()
    proc = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                            start_new_session=True)
    try:
        yield proc
    finally:
        terminate(proc)
        out.close()
