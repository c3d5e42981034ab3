"""Axolotl adapter: recipe `train` section -> Axolotl config; run train and merge-lora; parse its logs.

Quirks kept here: CPU needs fp32, sdpa and the Triton LoRA kernels off; `axolotl train` goes through
accelerate, which runs the child with one OMP thread, so on CPU we call `python -m axolotl.cli.train`
with OMP_NUM_THREADS set ourselves; telemetry off (AXOLOTL_DO_NOT_TRACK=1, set in runner.proc.tool_env).
"""
from __future__ import annotations

import ast
import copy
import re
from pathlib import Path

import yaml

from runner import env, proc

# Keys our schema covers and how they map onto Axolotl's names.
CPU_SAFE = {
    "bf16": False, "fp16": False, "tf32": False,
    "attn_implementation": "sdpa",
    "lora_mlp_kernel": False, "lora_qkv_kernel": False, "lora_o_kernel": False, "lora_embedding_kernel": False,
}


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def build_config(hp: dict, base_model: Path, train_file: Path, eval_file: Path | None, out_dir: Path,
                 seed: int, passthrough: dict) -> dict:
    """An Axolotl config from the resolved hyperparameters (train section with a variant applied)."""
    ds = {"path": str(train_file), "ds_type": "json", "type": "chat_template", "field_messages": "messages",
          "roles_to_train": ["assistant"], "split": "train"}
    cfg = {
        "base_model": str(base_model),
        "tokenizer_config": str(base_model),
        "chat_template": "tokenizer_default",
        "datasets": [ds],
        "dataset_prepared_path": str(out_dir / "prepared"),
        "output_dir": str(out_dir / "adapter"),
        "adapter": hp["adapter"],
        "lora_r": hp["lora"]["r"],
        "lora_alpha": hp["lora"]["alpha"],
        "lora_dropout": hp["lora"]["dropout"],
        "lora_target_linear": hp["lora"]["target_linear"],
        "sequence_len": hp["sequence_len"],
        "sample_packing": hp["sample_packing"],
        "pad_to_sequence_len": hp["sample_packing"],
        "micro_batch_size": hp["micro_batch_size"],
        "gradient_accumulation_steps": hp["gradient_accumulation_steps"],
        "max_steps": hp["max_steps"],
        "num_epochs": 1000,  # max_steps decides; epochs only bound it
        "learning_rate": hp["learning_rate"],
        "lr_scheduler": hp["lr_scheduler"],
        "warmup_steps": hp["warmup_steps"],
        "weight_decay": hp["weight_decay"],
        "optimizer": "adamw_torch",
        "logging_steps": hp["logging_steps"],
        "save_strategy": "no",
        "seed": seed,
        "gradient_checkpointing": False,
        "dataloader_num_workers": 0,
        "use_tensorboard": False,
        **CPU_SAFE,
    }
    if hp["adapter"] == "qlora":
        cfg["load_in_4bit"] = True
    if eval_file is not None:
        cfg["test_datasets"] = [{**ds, "path": str(eval_file)}]
        cfg["eval_steps"] = hp["eval_steps"]
        cfg["eval_strategy"] = "steps"
    return deep_merge(cfg, passthrough)


def write_config(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


LOG_DICT = re.compile(r"(\{'(?:loss|eval_loss|train_runtime)'.*\})")


def parse_log_line(line: str) -> dict | None:
    """HF Trainer log dicts as Axolotl prints them: {'loss': 1.2, 'grad_norm': ..., 'learning_rate': ...}."""
    m = LOG_DICT.search(line)
    if not m:
        return None
    try:
        d = ast.literal_eval(m.group(1).replace("nan", "None").replace("inf", "None"))
    except (ValueError, SyntaxError):
        return None
    return {k: (float(v) if isinstance(v, (int, float, str)) and _num(v) else v) for k, v in d.items()}


def _num(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def train(config: Path, log: Path, threads: int, on_record) -> None:
    ml = env.venv("ml")
    e = proc.tool_env(threads, {"PATH": f"{ml.path / 'bin'}:" + proc.os.environ.get("PATH", "")})

    def on_line(line: str):
        rec = parse_log_line(line)
        if rec:
            on_record(rec)

    proc.run([ml.python, "-m", "axolotl.cli.train", config], log, env=e, cwd=config.parent,
             on_line=on_line, what="axolotl train")


def merge(config: Path, adapter_dir: Path, log: Path, threads: int) -> Path:
    ml = env.venv("ml")
    e = proc.tool_env(threads)
    proc.run([ml.python, "-m", "axolotl.cli.merge_lora", config, f"--lora-model-dir={adapter_dir}"], log, env=e,
             cwd=config.parent, what="axolotl merge-lora")
    merged = adapter_dir / "merged"
    if not (merged / "config.json").exists():
        raise proc.StageError(f"axolotl merge-lora wrote no model to {merged}", log=log)
    return merged
