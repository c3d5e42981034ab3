"""vegeta adapter: constant-rate attacks on the gateway's task endpoint, used when `vegeta` is on PATH (it is not
in the package registries this project installs from). JSON targets in, `vegeta report -type=json` parsed out
(every duration in it is in nanoseconds)."""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

from runner import proc
from runner.stage import StageError


def available() -> bool:
    return shutil.which("vegeta") is not None


def targets(url: str, api_key: str, documents: list[str]) -> str:
    """One JSON target per line (`vegeta attack -format=json`), cycling through the documents."""
    lines = []
    for doc in documents:
        body = base64.b64encode(json.dumps({"document": doc}).encode()).decode()
        lines.append(json.dumps({"method": "POST", "url": url, "body": body,
                                 "header": {"Content-Type": ["application/json"],
                                            "Authorization": [f"Bearer {api_key}"]}}))
    return "\n".join(lines) + "\n"


def attack_command(targets_file: Path, rate: float, seconds: float, timeout_s: float, out_bin: Path) -> list[str]:
    return ["vegeta", "attack", "-format=json", f"-targets={targets_file}", f"-rate={rate:g}/s",
            f"-duration={seconds:g}s", f"-timeout={timeout_s:g}s", f"-output={out_bin}"]


def report_command(results_bin: Path) -> list[str]:
    return ["vegeta", "report", "-type=json", str(results_bin)]


def parse(report: dict, rate: float) -> dict:
    lat = report.get("latencies", {})
    s = lambda k: round(lat[k] / 1e9, 4) if k in lat else None  # noqa: E731
    codes = {str(k): v for k, v in (report.get("status_codes") or {}).items()}
    return {"rate_per_s": rate, "requests": report.get("requests"), "achieved_rate": report.get("rate"),
            "throughput_per_s": report.get("throughput"), "success_ratio": report.get("success"),
            "latency_s": {"mean": s("mean"), "p50": s("50th"), "p90": s("90th"), "p95": s("95th"), "p99": s("99th"),
                          "max": s("max")},
            "status_codes": codes, "errors": (report.get("errors") or [])[:5]}


def attack(url: str, api_key: str, documents: list[str], rate: float, seconds: float, timeout_s: float,
           out: Path, log: Path) -> dict:
    """Attack at `rate` requests/s for `seconds`; the key is passed in the targets file, never on a command line."""
    tfile = out / f"vegeta-targets-{rate:g}.jsonl"
    tfile.write_text(targets(url, api_key, documents))
    tfile.chmod(0o600)
    results = out / f"vegeta-{rate:g}.bin"
    try:
        proc.run(attack_command(tfile, rate, seconds, timeout_s, results), log, what="vegeta attack",
                 timeout=seconds + timeout_s + 30)
        rep = subprocess.run(report_command(results), capture_output=True, text=True, timeout=60)
    finally:
        tfile.unlink(missing_ok=True)
    if rep.returncode != 0:
        raise StageError(f"vegeta report failed: {rep.stderr[-500:]}", log=log)
    (out / f"vegeta-{rate:g}.json").write_text(rep.stdout)
    return parse(json.loads(rep.stdout), rate)
