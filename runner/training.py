"""How a model is trained from a recipe's train section, shared by the train stage (tuned and its variants) and
the iterate stage (tuned-v2): the hyperparameter keys, tuned plus each variant over it, one Axolotl fit
(preprocess, train with its loss curve, the curve checks, merge) and the summary the reports read."""
from __future__ import annotations

import json
import math
import re
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from runner.adapters import axolotl

HYPER_KEYS = ("adapter", "lora", "sequence_len", "micro_batch_size", "gradient_accumulation_steps", "max_steps",
              "learning_rate", "lr_scheduler", "warmup_steps", "weight_decay", "sample_packing", "precision",
              "logits", "eval_steps", "logging_steps", "eval_samples")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The CPU flags (Linux /proc/cpuinfo) that make bf16 matmuls native rather than emulated."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []
    flags = set(re.findall(r"\S+", cpuinfo))
    return [f for f in NATIVE_BF16_FLAGS if f in flags]


def precision_note(hp: dict, device: str, flags: list[str]) -> str:
    """How this model's matmuls were computed, in words for training.md."""
    if device != "cpu":
        return "Axolotl's bf16: auto on the GPU"
    if hp["precision"] == "fp32":
        return "fp32"
    if flags:
        return f"bf16 mixed precision (fp32 weights, bf16 matmuls; native on this CPU: {', '.join(flags)})"
    return ("bf16 mixed precision, emulated: this CPU has neither avx512_bf16 nor amx_bf16, so expect it slower "
            "than fp32 (set train.precision: fp32)")


def variants(section: dict) -> dict[str, tuple[dict, dict]]:
    """name -> (hyperparameters, axolotl passthrough): 'tuned' plus each variant over it."""
    base = {k: section[k] for k in HYPER_KEYS}
    out = {"tuned": (base, section["axolotl"])}
    for name, over in section["variants"].items():
        over = dict(over)
        passthrough = axolotl.deep_merge(section["axolotl"], over.pop("axolotl", {}))
        out[name] = (axolotl.deep_merge(base, over), passthrough)
    return out


def curve_checks(curve: list[dict], warmup: int = 0) -> tuple[str, list[str]]:
    """failed: NaN/inf loss, or divergence (the last quarter of the loss 1.5x above the first); suspect: a loss
    spike (3x the first quarter) that came back, loss not going down, or eval loss rising while train loss
    falls (overfitting, the train/eval gap growing); else ok."""
    losses = [r["loss"] for r in curve if "loss" in r]
    if any(v is None or not math.isfinite(v) for v in losses):
        return "failed", ["loss became NaN/inf"]
    findings, status = [], "ok"
    if len(losses) >= 4:
        k = max(1, len(losses) // 4)
        first, last = statistics.mean(losses[:k]), statistics.mean(losses[-k:])
        after = losses[warmup:] or losses
        peak = max(after)
        if last > 1.5 * first:
            return "failed", [f"diverged: loss {first:.3f} (first quarter) -> {last:.3f} (last quarter), "
                              f"peak {peak:.3f}"]
        if peak > 3 * first:
            status = "suspect"
            findings.append(f"unstable: loss spiked to {peak:.3f} ({peak / first:.1f}x the first quarter's "
                            f"{first:.3f}) at step {losses.index(peak) + 1}, then came back to {last:.3f}")
        elif last >= first:
            status = "suspect"
            findings.append(f"loss did not go down (first quarter {first:.3f}, last quarter {last:.3f})")
    evals = [(r["step"], r["eval_loss"]) for r in curve if isinstance(r.get("eval_loss"), (int, float))]
    if any(not math.isfinite(v) for _, v in evals):
        return "failed", ["eval loss became NaN/inf"]
    if len(evals) >= 3:
        best_step, best = min(evals, key=lambda e: e[1])
        last_step, last_eval = evals[-1]
        train_at = lambda s: statistics.mean([r["loss"] for r in curve if "loss" in r and abs(r["step"] - s) <= 2] or [math.nan])
        if last_eval > best * 1.1 and last_step > best_step and train_at(last_step) < train_at(best_step):
            status = "suspect"
            findings.append(f"overfitting: eval loss rose {best:.4f} (step {best_step}) -> {last_eval:.4f} (step "
                            f"{last_step}) while train loss fell {train_at(best_step):.4f} -> {train_at(last_step):.4f}")
    return status, findings


@dataclass
class Fit:
    config: Path
    log: Path
    curve: list[dict]
    run_stats: dict
    pre: dict
    check: str
    findings: list[str]


def fit(name: str, hp: dict, passthrough: dict, *, base_dir: Path, train_file: Path, eval_rows: list[str], out: Path,
        seed: int, section: dict, logs: Callable[[str], Path], progress: Callable[[str], None], threads: int) -> Fit:
    """Axolotl preprocess (validates the config, tokenizes) and train of one model into `out`, its curve in
    out/curve.jsonl and checked; the adapter is not merged yet (see merge)."""
    eval_file = None
    if hp["eval_samples"] and eval_rows:
        eval_file = out / "eval_loss.jsonl"
        eval_file.write_text("\n".join(eval_rows[:hp["eval_samples"]]) + "\n")
    cfg = axolotl.build_config(hp, base_dir, train_file, eval_file, out, seed, passthrough,
                               device=section["device"], distributed=section["distributed"])
    config = axolotl.write_config(cfg, out / "axolotl.yaml")
    progress(f"{name}: axolotl preprocess (validates the config, tokenizes)")
    pre = axolotl.preprocess(config, logs(f"axolotl-preprocess-{name}.log"), threads)
    curve: list[dict] = []

    def on_record(rec):
        rec = {**rec, "step": len([r for r in curve if "loss" in r]) + (1 if "loss" in rec else 0)}
        curve.append(rec)
        if "loss" in rec:
            progress(f"{name}: step {rec['step']}/{hp['max_steps']} loss {rec['loss']:.4f}")
        elif "eval_loss" in rec:
            progress(f"{name}: eval_loss {rec['eval_loss']:.4f}")

    log = logs(f"axolotl-train-{name}.log")
    progress(f"{name}: axolotl train (log {log})")
    run_stats = axolotl.train(config, log, threads, on_record)
    (out / "curve.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve))
    check, findings = curve_checks(curve, hp["warmup_steps"])
    return Fit(config, log, curve, run_stats, pre, check, findings)


def merge(name: str, f: Fit, out: Path, logs: Callable[[str], Path], progress: Callable[[str], None],
          threads: int) -> Path:
    """Merge the adapter into a full HF model at out/merged; Axolotl's tokenized copy is removed."""
    progress(f"{name}: merging adapter")
    merged = axolotl.merge(f.config, out / "adapter", logs(f"axolotl-merge-{name}.log"), threads)
    shutil.move(str(merged), str(out / "merged"))
    shutil.rmtree(out / "prepared", ignore_errors=True)
    return out / "merged"


def summary(hp: dict, f: Fit, section: dict) -> dict:
    curve, run_stats, pre = f.curve, f.run_stats, f.pre
    log, check, findings = f.log, f.check, f.findings
    log_text = log.read_text(errors="replace")
    m = re.search(r"trainable params:\s*([\d,]+)\s*\|\|\s*all params:\s*([\d,]+)", log_text)
    losses = [r["loss"] for r in curve if "loss" in r]
    evals = [r["eval_loss"] for r in curve if "eval_loss" in r]
    tps = [r["tokens/train_per_sec_per_gpu"] for r in curve if isinstance(r.get("tokens/train_per_sec_per_gpu"), float)]
    seen = max((r.get("tokens/total", 0) for r in curve if "loss" in r), default=0)
    seconds = run_stats["seconds"] + pre["seconds"]
    return {
        "status": check, "findings": findings, "hyperparameters": hp, "steps": len(losses),
        "seconds": round(seconds, 1), "train_process_s": run_stats["seconds"], "preprocess_s": pre["seconds"],
        "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
        "eval_loss": evals, "final_eval_loss": evals[-1] if evals else None,
        "trainable_params": int(m.group(1).replace(",", "")) if m else None,
        "all_params": int(m.group(2).replace(",", "")) if m else None,
        "tokens_seen": seen, "tokens_per_s": round(seen / run_stats["seconds"], 1) if run_stats["seconds"] else None,
        "axolotl_trainable_tokens_per_s": round(statistics.median(tps), 1) if tps else None,
        "peak_rss_mb": max(run_stats["max_rss_mb"], pre["max_rss_mb"]),
        "cost_usd": round(seconds / 3600 * section["price_per_hour_usd"], 5),
        "precision": precision_note(hp, section["device"], cpu_bf16_flags()),
    }
