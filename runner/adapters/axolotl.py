"""Axolotl adapter: recipe `train` section -> Axolotl config; run train and merge-lora; parse its logs.

Quirks kept here: CPU needs fp32, sdpa and the Triton LoRA kernels off; `axolotl train` goes through
accelerate, which runs the child with one OMP thread, so on CPU we call `python -m axolotl.cli.train`
with OMP_NUM_THREADS set ourselves; telemetry off (AXOLOTL_DO_NOT_TRACK=1, set in runner.proc.tool_env).
Axolotl judges a model's family partly by substrings of base_model ("mpt" in /tmp/emptycache/... made it an MPT
model), so a local model folder is handed over through a neutral symlink (model_path); every Axolotl command runs
in the config's folder.
"""
from __future__ import annotations

import ast
import copy
import re
from pathlib import Path

import yaml

from runner import env, proc

# Device profiles. CPU: fp32, sdpa, and the Triton LoRA kernels off (they assume CUDA and crash on CPU).
CPU_SAFE = {
    "bf16": False, "fp16": False, "tf32": False,
    "attn_implementation": "sdpa",
    "lora_mlp_kernel": False, "lora_qkv_kernel": False, "lora_o_kernel": False, "lora_embedding_kernel": False,
}
# bf16 mixed precision on CPU: Axolotl's bf16 plus our plugin (use_cpu, fp32 master weights); it is imported from
# the repository, so every Axolotl command runs with PYTHONPATH set to it (axolotl_env). The module's name stands
# alone so that runner/code_deps.py counts the plugin's file in the train stage's code.
CPU_AMP_MODULE = "runner.adapters.axolotl_cpu_amp"
CPU_AMP_PLUGIN = f"{CPU_AMP_MODULE}.CpuBf16Amp"
# train.logits: labelled on CPU: the LM head and the loss only at trained positions (a third of a step in the default)
LABELLED_HEAD_MODULE = "runner.adapters.axolotl_labelled_head"
LABELLED_HEAD_PLUGIN = f"{LABELLED_HEAD_MODULE}.LabelledHead"
CUDA = {"bf16": "auto", "tf32": True, "attn_implementation": "flash_attention_2", "gradient_checkpointing": True}

DEEPSPEED_COMMON = {
    "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}, "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto", "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
    "wall_clock_breakdown": False,
}
DEEPSPEED = {
    "deepspeed_zero2": {**DEEPSPEED_COMMON, "zero_optimization": {
        "stage": 2, "overlap_comm": True, "contiguous_gradients": True, "reduce_scatter": True,
        "reduce_bucket_size": "auto", "allgather_bucket_size": 5e8}},
    "deepspeed_zero3": {**DEEPSPEED_COMMON, "zero_optimization": {
        "stage": 3, "overlap_comm": True, "contiguous_gradients": True, "sub_group_size": 0,
        "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
        "stage3_param_persistence_threshold": "auto", "stage3_max_live_parameters": 0,
        "stage3_max_reuse_distance": 0, "stage3_gather_16bit_weights_on_model_save": True}},
}
FSDP = {"fsdp_version": 2, "fsdp_config": {
    "offload_params": False, "state_dict_type": "FULL_STATE_DICT", "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
    "transformer_layer_cls_to_wrap": "LlamaDecoderLayer", "reshard_after_forward": True}}


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def model_path(base_model: Path, out_dir: Path) -> str:
    """base_model as Axolotl should see it. Axolotl infers and rejects things from substrings of base_model ("mpt":
    no gradient checkpointing, "falcon": no FSDP; "llama", "mistral", "pixtral": the model family), and a GPU config
    for a llama under /tmp/emptycache/... was rejected as an MPT model. So a local folder goes through the neutral
    symlink `base-model` in `out_dir`, named relative to it (every Axolotl command runs there); a hub id is passed
    as it is."""
    if not base_model.is_dir():
        return str(base_model)
    link = out_dir / "base-model"
    if not link.is_symlink():
        link.symlink_to(base_model.resolve(), target_is_directory=True)
    return "./base-model"


def build_config(hp: dict, base_model: Path, train_file: Path, eval_file: Path | None, out_dir: Path,
                 seed: int, passthrough: dict, device: str = "cpu", distributed: dict | None = None) -> dict:
    """An Axolotl config from the resolved hyperparameters (train section with a variant applied)."""
    ds = {"path": str(train_file), "ds_type": "json", "type": "chat_template", "field_messages": "messages",
          "roles_to_train": ["assistant"], "split": "train"}
    model = model_path(base_model, out_dir)
    cfg = {
        "base_model": model,
        "tokenizer_config": model,
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
        **(CPU_SAFE if device == "cpu" else CUDA),
    }
    if hp["adapter"] == "qlora":
        cfg["load_in_4bit"] = True
    if device == "cpu" and hp["precision"] == "bf16":
        cfg.update({"bf16": True, "plugins": [CPU_AMP_PLUGIN]})
    if device == "cpu" and hp.get("logits", "all") == "labelled":
        cfg["plugins"] = cfg.get("plugins", []) + [LABELLED_HEAD_PLUGIN]
    strategy = (distributed or {}).get("strategy", "none")
    if strategy in DEEPSPEED:
        cfg["deepspeed"] = str(out_dir / f"{strategy}.json")
    elif strategy == "fsdp":
        cfg.update(copy.deepcopy(FSDP))
    if eval_file is not None:
        cfg["test_datasets"] = [{**ds, "path": str(eval_file)}]
        cfg["eval_steps"] = hp["eval_steps"]
        cfg["eval_strategy"] = "steps"
    return deep_merge(cfg, passthrough)


def write_config(cfg: dict, path: Path) -> Path:
    """The Axolotl config, plus the DeepSpeed JSON it points at when there is one."""
    import json
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    ds = cfg.get("deepspeed")
    if ds:
        Path(ds).write_text(json.dumps(DEEPSPEED[Path(ds).stem], indent=2) + "\n")
    return path


def axolotl_env(threads: int, extra: dict | None = None) -> dict:
    """The tool environment, with the repository importable: the axolotl_entry seeding wrapper and the CPU bf16
    plugin live in it."""
    return proc.tool_env(threads, {"PYTHONPATH": str(env.REPO), **(extra or {})})


def validate(config: Path, log: Path, gpus: int = 0) -> None:
    """Axolotl's own schema check of a generated config (for the target machine's capabilities)."""
    ml = env.venv("ml")
    cmd = [ml.python, "-m", "runner.adapters.axolotl_validate", config] + (["--gpus", str(gpus)] if gpus else [])
    proc.run(cmd, log, env=axolotl_env(1), cwd=config.parent,
             what=f"axolotl config validation ({config.name})")


def launch_command(config: Path, dist: dict) -> list[str]:
    """The multi-GPU / multi-node command a GPU machine runs (one per node; NODE_RANK set per node)."""
    procs = dist["gpus_per_node"] * dist["nodes"]
    if dist["launcher"] == "torchrun":
        return ["torchrun", f"--nnodes={dist['nodes']}", f"--nproc_per_node={dist['gpus_per_node']}",
                "--node_rank=${NODE_RANK:-0}", "--rdzv_backend=c10d",
                f"--rdzv_endpoint={dist['main_process_ip']}:{dist['main_process_port']}",
                "-m", "axolotl.cli.train", str(config)]
    return ["accelerate", "launch", f"--num_processes={procs}", f"--num_machines={dist['nodes']}",
            "--machine_rank=${NODE_RANK:-0}", f"--main_process_ip={dist['main_process_ip']}",
            f"--main_process_port={dist['main_process_port']}", "--mixed_precision=bf16",
            "-m", "axolotl.cli.train", str(config)]


def preprocess(config: Path, log: Path, threads: int) -> dict:
    """`axolotl preprocess`: Axolotl validates the config and tokenizes the datasets (train reuses them)."""
    ml = env.venv("ml")
    return proc.run([ml.python, "-m", "axolotl.cli.preprocess", config], log, env=axolotl_env(threads),
                    cwd=config.parent, what="axolotl preprocess")


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


def train(config: Path, log: Path, threads: int, on_record) -> dict:
    ml = env.venv("ml")
    e = axolotl_env(threads, {"PATH": f"{ml.path / 'bin'}:" + proc.os.environ.get("PATH", "")})

    def on_line(line: str):
        rec = parse_log_line(line)
        if rec:
            on_record(rec)

    return proc.run([ml.python, "-m", "runner.adapters.axolotl_entry", "axolotl.cli.train", config], log,
                    env=e, cwd=config.parent, on_line=on_line, what="axolotl train")


def merge(config: Path, adapter_dir: Path, log: Path, threads: int) -> Path:
    ml = env.venv("ml")
    e = axolotl_env(threads)
    proc.run([ml.python, "-m", "axolotl.cli.merge_lora", config, f"--lora-model-dir={adapter_dir}"], log, env=e,
             cwd=config.parent, what="axolotl merge-lora")
    merged = adapter_dir / "merged"
    if not (merged / "config.json").exists():
        raise proc.StageError(f"axolotl merge-lora wrote no model to {merged}", log=log)
    return merged
