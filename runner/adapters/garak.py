"""garak (NVIDIA's LLM vulnerability scanner) against the gateway's OpenAI-compatible endpoint, in its own venv.

garak's OpenAICompatible generator talks to `uri` with the key in $OPENAICOMPATIBLE_API_KEY. It sends `stop: ["#",
";"]`, `n`, penalties and a seed unless `suppressed_params` lists them: suppressed here, so the model answers as
it does for clients. Only static probes whose detectors are string or pattern matches run offline (no hosted
attacker model, no HF classifier); the recipe names them. garak writes `<prefix>.report.jsonl`: `eval` lines
(probe, detector, passed, fails, total_evaluated) and, when the run finished, a `completion` line; a run cut
short still exits 0, so the completion line is checked. Its config, data and cache folders are pointed into the
stage's output (XDG_*), so nothing is written under the user's home.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from runner import env, proc
from runner.stage import StageError

SUPPRESSED = ["n", "frequency_penalty", "presence_penalty", "stop", "seed"]


def config(uri: str, model: str, probes: list[str], prompt_cap: int, generations: int, max_tokens: int,
           parallel: int, seed: int, report_dir: Path, prefix: str) -> dict:
    return {
        "system": {"parallel_attempts": parallel, "lite": True, "show_z": False, "narrow_output": True,
                   "verbose": 0},
        "run": {"generations": generations, "soft_probe_prompt_cap": prompt_cap, "seed": seed},
        "plugins": {"target_type": "openai.OpenAICompatible", "target_name": model, "probe_spec": ",".join(probes),
                    "extended_detectors": False,
                    "generators": {"openai": {"OpenAICompatible": {
                        "uri": uri.rstrip("/") + "/v1/", "model": model, "max_tokens": max_tokens,
                        "temperature": 0.0, "suppressed_params": SUPPRESSED, "retry_json": False}}}},
        "reporting": {"report_dir": str(report_dir), "report_prefix": prefix},
    }


def run(cfg: dict, out: Path, api_key: str, log: Path, timeout_s: float, progress=None) -> Path:
    """Run garak with this config; returns the report file. Raises StageError when it did not finish."""
    out.mkdir(parents=True, exist_ok=True)
    cfg_file = out / "garak.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
    home = out / "home"
    e = proc.tool_env(1, {"OPENAICOMPATIBLE_API_KEY": api_key, "XDG_DATA_HOME": str(home / "data"),
                          "XDG_CONFIG_HOME": str(home / "config"), "XDG_CACHE_HOME": str(home / "cache"),
                          "NO_COLOR": "1"})
    cmd = [env.venv("redteam").python, "-m", "garak", "--config", cfg_file]
    timing = proc.run(cmd, log, env=e, on_line=progress, what="garak", redact=(api_key,), timeout=timeout_s)
    report = Path(cfg["reporting"]["report_dir"]) / f"{cfg['reporting']['report_prefix']}.report.jsonl"
    if not report.exists():
        raise StageError(f"garak finished without a report ({report})\n{proc.tail(log)}", log=log)
    if not any(x.get("entry_type") == "completion" for x in read(report)):
        raise StageError(f"garak stopped before the end of its run (no completion record in {report})\n"
                         f"{proc.tail(log)}", log=log)
    (out / "timing.json").write_text(json.dumps(timing))
    return report


def read(report: Path) -> list[dict]:
    return [json.loads(x) for x in report.read_text().splitlines() if x.strip()]


def parse(report: Path) -> dict:
    """Per probe and detector: attempts scored, how many the attack won (fails), the share; per probe the worst
    detector; the attempts (prompt and output) that garak counted as hits."""
    lines = read(report)
    evals = [x for x in lines if x.get("entry_type") == "eval"]
    probes: dict[str, dict] = {}
    for x in evals:
        total = x.get("total_evaluated") or 0
        probes.setdefault(x["probe"], {})[x["detector"]] = {"fails": x.get("fails", 0), "passed": x.get("passed", 0),
                                                           "total": total}
    attempts = [x for x in lines if x.get("entry_type") == "attempt" and x.get("status") == 2]
    start = next((x for x in lines if x.get("entry_type") == "start_run setup"), {})
    return {"probes": probes, "attempts": len(attempts),
            "garak_version": start.get("_config.version") or next(
                (x.get("garak_version") for x in lines if x.get("entry_type") == "init"), None)}
