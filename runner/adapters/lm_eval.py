"""lm-eval adapter: point the evals/ task at a data split, run lm-eval's CLI, parse its results.

Quirks kept here: against llama-server we use `local-chat-completions` with tokenized_requests=False and
no tokenizer backend (the server applies the model's own chat template); `--apply_chat_template` and the
system prompt go through lm-eval's flags so every model gets identical prompts.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from runner import env, proc
from runner.env import REPO
from runner.stage import StageError

EVALS = REPO / "evals"


def write_task(task: str, test_file: Path, out_dir: Path, max_gen_tokens: int) -> Path:
    """A task YAML that includes the repo's task and sets the data file and generation length."""
    src = EVALS / task / f"{task}.yaml"
    if not src.exists():
        raise StageError(f"no lm-eval task '{task}' in {EVALS} (expected {src})")
    base = yaml.safe_load(src.read_text().replace("!function", "function_tag"))
    gen = dict(base.get("generation_kwargs") or {}, max_gen_toks=max_gen_tokens)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = {"include": str(src), "task": task, "dataset_kwargs": {"data_files": {"test": str(test_file)}},
            "generation_kwargs": gen}
    path = out_dir / f"{task}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return out_dir


def command_server(tasks: list[str], include: Path, base_url: str, model: str, concurrency: int,
                   system_prompt: str, out: Path, limit: int, seed: int) -> list:
    ml = env.venv("ml")
    args = ",".join([f"model={model}", f"base_url={base_url}/v1/chat/completions", f"num_concurrent={concurrency}",
                     "tokenized_requests=False", "tokenizer_backend=None", "max_retries=3", "timeout=600"])
    cmd = [ml.bin("lm_eval"), "--model", "local-chat-completions", "--model_args", args]
    return cmd + _common(tasks, include, system_prompt, out, limit, seed)


def command_hf(tasks: list[str], include: Path, model_dir: Path, system_prompt: str, out: Path, limit: int,
               seed: int) -> list:
    ml = env.venv("ml")
    cmd = [ml.bin("lm_eval"), "--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32",
           "--device", "cpu", "--batch_size", "1"]
    return cmd + _common(tasks, include, system_prompt, out, limit, seed)


def _common(tasks, include, system_prompt, out, limit, seed) -> list:
    cmd = ["--tasks", ",".join(tasks), "--include_path", include, "--apply_chat_template",
           "--system_instruction", system_prompt, "--output_path", out, "--log_samples",
           "--seed", f"{seed},{seed},{seed},{seed}"]
    if limit:
        cmd += ["--limit", str(limit)]
    return cmd


def run(cmd: list, log: Path, threads: int, on_line=None) -> None:
    proc.run(cmd, log, env=proc.tool_env(threads, {"PYTHONPATH": str(REPO)}), cwd=REPO, on_line=on_line,
             what="lm-eval")


def read_results(out: Path, task: str, log: Path) -> tuple[dict, list[dict]]:
    """(aggregate metrics, per-sample records) from lm-eval's output folder."""
    results = sorted(out.rglob("results_*.json"))
    if not results:
        raise StageError(f"lm-eval wrote no results under {out}", log=log)
    agg = json.loads(results[-1].read_text())["results"][task]
    metrics = {k.split(",")[0]: v for k, v in agg.items() if "," in k and not k.split(",")[0].endswith("_stderr")}
    samples_files = sorted(out.rglob(f"samples_{task}_*.jsonl"))
    samples = [json.loads(line) for line in samples_files[-1].read_text().splitlines()] if samples_files else []
    return metrics, samples
