"""train: LoRA fine-tune every model the recipe declares ('tuned' and each train.variants entry) with
Axolotl (preprocess, then train), merge each adapter into a full HF model, parse the curves from Axolotl's
log, check them (NaN, divergence, no progress, overfitting), and write training.md.

On a machine without a GPU, train.device: cuda (or a distributed strategy) generates the Axolotl, DeepSpeed
or FSDP configs, has Axolotl validate them for the target GPUs, writes the launch command, and stops."""
from __future__ import annotations

import json
import math
import re
import shutil
import statistics

from runner import models
from runner.adapters import axolotl
from runner.reports import training as report
from runner.reports.fmt import Page
from runner.stage import Context, Result, StageError

SECTIONS = ("train", "base_model", "seed", "threads")
INPUTS = ("data",)
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


def gpu_present() -> bool:
    return shutil.which("nvidia-smi") is not None


def prepare_gpu_run(ctx: Context, section: dict, base_dir, train_file) -> None:
    """Configs and launch command for a GPU run, validated by Axolotl for the target; then stop clearly."""
    dist = section["distributed"]
    gpus = dist["gpus_per_node"] * dist["nodes"]
    lines = []
    for name, (hp, passthrough) in variants(section).items():
        out = ctx.out / name
        out.mkdir(parents=True)
        cfg = axolotl.build_config(hp, base_dir, train_file, None, out, ctx.seed, passthrough, device="cuda",
                                   distributed=dist)
        config = axolotl.write_config(cfg, out / "axolotl.yaml")
        axolotl.validate(config, ctx.log(f"axolotl-validate-{name}.log"), gpus=gpus)
        cmd = axolotl.launch_command(config, dist) if dist["strategy"] != "none" or gpus > 1 else \
            ["python", "-m", "axolotl.cli.train", str(config)]
        lines.append(f"(cd {out} && {' '.join(cmd)})")  # Axolotl runs in the config's folder
    launch = ctx.log("launch.sh")
    launch.write_text("#!/usr/bin/env bash\n# Generated by the train stage; run on each GPU node.\nset -e\n" +
                      "\n".join(lines) + "\n")
    raise StageError(f"train.device is cuda / train.distributed is {dist['strategy']}, and this machine has no GPU. "
                     f"The configs were validated by Axolotl for {gpus} GPU(s); run {launch} on the GPU machine(s).",
                     log=launch)


def run(ctx: Context) -> Result:
    section = ctx.section("train")
    base_dir = models.base_model_dir(ctx.section("base_model"))
    train_file = ctx.inputs["data"].path("train")
    if (section["device"] == "cuda" or section["distributed"]["strategy"] != "none") and not gpu_present():
        prepare_gpu_run(ctx, section, base_dir, train_file)
    eval_rows = ctx.inputs["data"].path("eval").read_text().splitlines()
    metrics, artifacts, notes, curves = {}, {}, [], {}
    for name, (hp, passthrough) in variants(section).items():
        out = ctx.out / name
        out.mkdir(parents=True)
        eval_file = None
        if hp["eval_samples"] and eval_rows:
            eval_file = out / "eval_loss.jsonl"
            eval_file.write_text("\n".join(eval_rows[:hp["eval_samples"]]) + "\n")
        cfg = axolotl.build_config(hp, base_dir, train_file, eval_file, out, ctx.seed, passthrough,
                                   device=section["device"], distributed=section["distributed"])
        config = axolotl.write_config(cfg, out / "axolotl.yaml")
        ctx.progress(f"{name}: axolotl preprocess (validates the config, tokenizes)")
        pre = axolotl.preprocess(config, ctx.log(f"axolotl-preprocess-{name}.log"), ctx.threads)
        curve: list[dict] = []

        def on_record(rec, name=name, total=hp["max_steps"]):
            rec = {**rec, "step": len([r for r in curve if "loss" in r]) + (1 if "loss" in rec else 0)}
            curve.append(rec)
            if "loss" in rec:
                ctx.progress(f"{name}: step {rec['step']}/{total} loss {rec['loss']:.4f}")
            elif "eval_loss" in rec:
                ctx.progress(f"{name}: eval_loss {rec['eval_loss']:.4f}")

        log = ctx.log(f"axolotl-train-{name}.log")
        ctx.progress(f"{name}: axolotl train (log {log})")
        run_stats = axolotl.train(config, log, ctx.threads, on_record)
        (out / "curve.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve))
        curves[name] = curve
        check, findings = curve_checks(curve, hp["warmup_steps"])
        if check == "failed":
            metrics[name] = {"status": "failed", "findings": findings}
            report.write(Page(ctx.logs, {name: _summary(hp, curve, run_stats, pre, log, section, check, findings)},
                              _curves(curves, ctx, section), ctx.recipe))
            raise StageError(f"training '{name}' failed: {'; '.join(findings)} (curves: {ctx.logs / 'training.md'})",
                             log=log)
        ctx.progress(f"{name}: merging adapter")
        merged = axolotl.merge(config, out / "adapter", ctx.log(f"axolotl-merge-{name}.log"), ctx.threads)
        shutil.move(str(merged), str(out / "merged"))
        shutil.rmtree(out / "prepared", ignore_errors=True)
        metrics[name] = _summary(hp, curve, run_stats, pre, log, section, check, findings)
        artifacts.update({name: f"{name}/merged", f"{name}-adapter": f"{name}/adapter",
                          f"{name}-config": f"{name}/axolotl.yaml", f"{name}-curve": f"{name}/curve.jsonl"})
        notes.append(f"{name}: loss {metrics[name]['first_loss']} -> {metrics[name]['final_loss']}, {check}")
    artifacts.update(report.write(Page(ctx.out, metrics, _curves(curves, ctx, section), ctx.recipe)))
    status = "suspect" if any(m["status"] == "suspect" for m in metrics.values()) else "ok"
    return Result(metrics=metrics, artifacts=artifacts, status=status, notes=notes)


def _curves(curves: dict, ctx: Context, section: dict) -> dict:
    """What training.md shows beyond the metrics."""
    return {"curves": curves, "dataset_version": ctx.inputs["data"].metrics["dataset_version"],
            "price_per_hour_usd": section["price_per_hour_usd"]}


def _summary(hp, curve, run_stats, pre, log, section, check, findings) -> dict:
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
    }
