"""lm-eval adapter: point the evals/ task at a data split, run lm-eval's CLI, parse its results.

Quirks kept here: against llama-server we use `local-chat-completions` with tokenized_requests=False and
no tokenizer backend (the server applies the model's own chat template); `--apply_chat_template` and the
system prompt go through lm-eval's flags so every model gets identical prompts.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from runner import env, kinds, proc, tasks
from runner.env import REPO
from runner.stage import StageError


def write_task(task: str | tasks.Task, out_dir: Path, data_file: Path | None = None,
               max_gen_tokens: int | None = None, name: str | None = None, *, shots: int = 0,
               shots_file: Path | None = None, response_format: dict | None = None) -> Path:
    """A runnable lm-eval task YAML named `name` (default the task's own) in `out_dir`.

    A registry task (a Task) becomes: include its YAML and its kind's base config, the data split, and
    metadata.forge resolved (schema inlined), which the kind's loader hands to every doc. A plain lm-eval
    task (a name under evals/, e.g. the forgetting check) is included as it is, with its packaged data file
    resolved against the repo unless `data_file` is given.

    Prompting baselines (registry tasks only): `shots` > 0 adds lm-eval few-shot examples (the first k of
    `shots_file` (lm-eval's `fewshot_split`; with --apply_chat_template they become user/assistant turns), and
    `response_format` goes into every request (llama-server compiles a JSON Schema to a grammar)."""
    if isinstance(task, tasks.Task):
        cfg = task.lm_eval_config()
        meta = dict(cfg.get("metadata") or {}, forge=task.spec)
        spec = {"include": [str(task.lm_eval_yaml), str(kinds.base_yaml(task.kind))], "task": name or task.name,
                "dataset_kwargs": {"data_files": {"test": str(data_file)}}, "metadata": meta}
        base = cfg
        if shots:
            # the same k examples for every item (the first k of the split): one fixed prompt, as a user would
            # write it, and a shared prefix that llama-server's prompt cache prefills once per slot
            spec.update(num_fewshot=shots, fewshot_split="train", fewshot_config={"sampler": "first_n"})
            spec["dataset_kwargs"]["data_files"]["train"] = str(shots_file)
    else:
        try:
            src = tasks.task_yaml(task)
        except tasks.UnknownTask as e:
            raise StageError(str(e)) from None
        try:
            base = yaml.safe_load(src.read_text().replace("!function", "function_tag"))
        except yaml.YAMLError as e:
            raise StageError(f"{src}: not valid YAML: {e}") from None
        if not isinstance(base, dict) or base.get("task") != task:
            raise StageError(f"{src}: expected a mapping with 'task: {task}'")
        if data_file is None:
            packaged = (base.get("dataset_kwargs") or {}).get("data_files", {}).get("test")
            if not packaged or not (REPO / packaged).exists():
                raise StageError(f"{src}: dataset_kwargs.data_files.test should name a file in the repo "
                                 f"(found {packaged!r})")
            data_file = REPO / packaged
        spec = {"include": str(src), "task": name or task, "dataset_kwargs": {"data_files": {"test": str(data_file)}}}
    gen = dict(base.get("generation_kwargs") or {})
    if max_gen_tokens:
        gen["max_gen_toks"] = max_gen_tokens
    if response_format:
        gen["response_format"] = response_format
    if gen != (base.get("generation_kwargs") or {}):
        spec["generation_kwargs"] = gen
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{spec['task']}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    return out_dir


def command_server(tasks: list[str], include: Path, base_url: str, model: str, concurrency: int,
                   system_prompt: str | None, out: Path, limit: int, seed: int, samples: dict | None = None) -> list:
    ml = env.venv("ml")
    args = ",".join([f"model={model}", f"base_url={base_url}/v1/chat/completions", f"num_concurrent={concurrency}",
                     "tokenized_requests=False", "tokenizer_backend=None", "max_retries=3", "timeout=600"])
    cmd = [ml.bin("lm_eval"), "--model", "local-chat-completions", "--model_args", args]
    return cmd + _common(tasks, include, system_prompt, out, limit, seed, samples)


def command_hf(tasks: list[str], include: Path, model_dir: Path, system_prompt: str | None, out: Path, limit: int,
               seed: int) -> list:
    ml = env.venv("ml")
    cmd = [ml.bin("lm_eval"), "--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32",
           "--device", "cpu", "--batch_size", "1"]
    return cmd + _common(tasks, include, system_prompt, out, limit, seed)


def _common(tasks, include, system_prompt, out, limit, seed, samples=None) -> list:
    """samples: {task: [doc indices]} (lm-eval's --samples; the logged doc_id stays the index in the split),
    for scoring the rest of a split after a first look at its first items (limit)."""
    cmd = ["--tasks", ",".join(tasks), "--include_path", include, "--apply_chat_template",
           "--output_path", out, "--log_samples", "--seed", f"{seed},{seed},{seed},{seed}"]
    if system_prompt:
        cmd += ["--system_instruction", system_prompt]
    if samples:
        cmd += ["--samples", json.dumps(samples)]
    elif limit:
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
    all_results = json.loads(results[-1].read_text())["results"]
    if task not in all_results:
        raise StageError(f"lm-eval's results under {out} have no task '{task}' (it has: {', '.join(all_results)})",
                         log=log)
    agg = all_results[task]
    metrics = {k.split(",")[0]: v for k, v in agg.items() if "," in k and not k.split(",")[0].endswith("_stderr")}
    # samples_<task>_<timestamp>.jsonl: match the timestamp so task 'a' does not pick up task 'a_train'
    samples_files = sorted(f for f in out.rglob(f"samples_{task}_*.jsonl")
                           if re.fullmatch(rf"samples_{re.escape(task)}_\d{{4}}-.*\.jsonl", f.name))
    samples = [json.loads(line) for line in samples_files[-1].read_text().splitlines()] if samples_files else []
    return metrics, samples
