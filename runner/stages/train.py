"""train: LoRA fine-tune every model the recipe declares ('tuned' and each train.variants entry) with
Axolotl, merge each adapter into a full HF model, and keep the curves parsed from Axolotl's log."""
from __future__ import annotations

import json
import math
import re
import resource
import shutil
import time

from runner import models
from runner.adapters import axolotl
from runner.stage import Context, Result, StageError

SECTIONS = ("train", "base_model", "seed", "threads")
INPUTS = ("data",)
CODE = ("runner/adapters/axolotl.py",)
TOOLS = ("ml",)
HYPER_KEYS = ("adapter", "lora", "sequence_len", "micro_batch_size", "gradient_accumulation_steps", "max_steps",
              "learning_rate", "lr_scheduler", "warmup_steps", "weight_decay", "sample_packing", "eval_steps",
              "logging_steps", "eval_samples")


def fingerprint(recipe: dict) -> str:
    return models.fingerprint(recipe["base_model"])


def variants(section: dict) -> dict[str, tuple[dict, dict]]:
    """name -> (hyperparameters, axolotl passthrough): 'tuned' plus each variant over it."""
    base = {k: section[k] for k in HYPER_KEYS}
    out = {"tuned": (base, section["axolotl"])}
    for name, over in section["variants"].items():
        over = dict(over)
        passthrough = axolotl.deep_merge(section["axolotl"], over.pop("axolotl", {}))
        out[name] = (axolotl.deep_merge(base, over), passthrough)
    return out


def curve_checks(curve: list[dict]) -> tuple[str, list[str]]:
    """Status from the curves: NaN/inf loss fails; a loss that does not go down is suspect."""
    losses = [r["loss"] for r in curve if "loss" in r]
    if any(v is None or (isinstance(v, float) and not math.isfinite(v)) for v in losses):
        return "failed", ["loss became NaN/inf"]
    if len(losses) >= 4:
        k = max(1, len(losses) // 4)
        first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
        if last >= first:
            return "suspect", [f"loss did not go down (first quarter {first:.3f}, last quarter {last:.3f})"]
    return "ok", []


def run(ctx: Context) -> Result:
    section = ctx.section("train")
    base_dir = models.base_model_dir(ctx.section("base_model"))
    train_file = ctx.inputs["data"].path("train")
    eval_rows = ctx.inputs["data"].path("eval").read_text().splitlines()
    metrics, artifacts, notes, status = {}, {}, [], "ok"
    for name, (hp, passthrough) in variants(section).items():
        out = ctx.out / name
        out.mkdir(parents=True)
        eval_file = None
        if hp["eval_samples"] and eval_rows:
            eval_file = out / "eval_loss.jsonl"
            eval_file.write_text("\n".join(eval_rows[:hp["eval_samples"]]) + "\n")
        cfg = axolotl.build_config(hp, base_dir, train_file, eval_file, out, ctx.seed, passthrough)
        config = axolotl.write_config(cfg, out / "axolotl.yaml")
        curve: list[dict] = []

        def on_record(rec, name=name, total=hp["max_steps"]):
            rec = {**rec, "step": len([r for r in curve if "loss" in r]) + (1 if "loss" in rec else 0)}
            curve.append(rec)
            if "loss" in rec:
                ctx.progress(f"{name}: step {rec['step']}/{total} loss {rec['loss']:.4f}")
            elif "eval_loss" in rec:
                ctx.progress(f"{name}: eval_loss {rec['eval_loss']:.4f}")

        t0 = time.time()
        log = ctx.log(f"axolotl-train-{name}.log")
        ctx.progress(f"{name}: starting axolotl (log {log})")
        axolotl.train(config, log, ctx.threads, on_record)
        seconds = time.time() - t0
        (out / "curve.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve))
        check, why = curve_checks(curve)
        if check == "failed":
            raise StageError(f"training '{name}' failed: {'; '.join(why)}", log=log)
        if check == "suspect":
            status = "suspect"
            notes += [f"{name}: {w}" for w in why]
        ctx.progress(f"{name}: merging adapter")
        merged = axolotl.merge(config, out / "adapter", ctx.log(f"axolotl-merge-{name}.log"), ctx.threads)
        shutil.move(str(merged), str(out / "merged"))
        shutil.rmtree(out / "prepared", ignore_errors=True)
        log_text = log.read_text(errors="replace")
        m = re.search(r"trainable params:\s*([\d,]+)\s*\|\|\s*all params:\s*([\d,]+)", log_text)
        losses = [r["loss"] for r in curve if "loss" in r]
        evals = [r["eval_loss"] for r in curve if "eval_loss" in r]
        summary = next((r for r in reversed(curve) if "train_runtime" in r), {})
        steps = len(losses)
        tokens_per_step = hp["micro_batch_size"] * hp["gradient_accumulation_steps"] * hp["sequence_len"]
        metrics[name] = {
            "hyperparameters": hp, "steps": steps, "seconds": round(seconds, 1),
            "train_runtime_s": summary.get("train_runtime"),
            "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
            "eval_loss": evals, "final_eval_loss": evals[-1] if evals else None,
            "trainable_params": int(m.group(1).replace(",", "")) if m else None,
            "all_params": int(m.group(2).replace(",", "")) if m else None,
            "max_tokens_seen": steps * tokens_per_step,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
            "status": check,
        }
        artifacts[name] = f"{name}/merged"
        artifacts[f"{name}-adapter"] = f"{name}/adapter"
        artifacts[f"{name}-config"] = f"{name}/axolotl.yaml"
        artifacts[f"{name}-curve"] = f"{name}/curve.jsonl"
        notes.append(f"{name}: loss {metrics[name]['first_loss']} -> {metrics[name]['final_loss']} in {seconds:.0f}s")
    return Result(metrics=metrics, artifacts=artifacts, status=status, notes=notes)
