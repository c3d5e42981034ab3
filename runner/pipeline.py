"""Plan, cache and run the stages of one recipe; record the run.

A stage's output is stored under key = hash(its recipe sections, its inputs' keys, the code it runs (its imports,
followed through the source, plus its RUNS), its tools' build keys). `status` reads the parts back to say why.
An unchanged stage is a cache hit; a changed one re-runs, and so does everything downstream
(their keys include its key). Outputs are written to a temporary folder and renamed into place
only when the stage succeeds, so a crash never leaves a partial output that looks complete.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from runner import code_deps, env, manifest, progress, tasks
from runner.env import REPO, reports_root, runs_root
from runner.recipe import Recipe, content_hash
from runner.stage import Context, Output, Result, StageError

STAGES = ("data", "train", "eval", "iterate", "quantize", "serve", "loadtest", "redteam", "report")


def stage_module(name: str):
    return importlib.import_module(f"runner.stages.{name}")


def code_files(mod) -> list[Path]:
    """The repository files a stage runs: its module's imports, transitively (runner/code_deps.py), plus the
    files and folders it names in RUNS (code run by other tools, such as lm-eval task folders)."""
    files = set(code_deps.closure(Path(mod.__file__)))
    for rel in getattr(mod, "RUNS", ()):
        for f in code_deps.files_under(rel):
            files.update(code_deps.closure(f) if f.suffix == ".py" else [f])
    return sorted(files)


DEBIAN_TOOLS = ("prometheus",)   # unpacked Debian packages ([tool.forge.debian])


def tool_keys(mod) -> dict[str, str]:
    """Build keys of the tools a stage runs (venv pins, llama.cpp build): new tool versions, new outputs."""
    keys = {}
    for tool in getattr(mod, "TOOLS", ()):
        keys[tool] = (env.llama_cpp().key if tool == "llama" else env.debian(tool).key if tool in DEBIAN_TOOLS
                      else env.venv(tool).key)
    return keys


def stage_deps(name: str, recipe: dict, input_keys: dict[str, str]) -> dict:
    """Everything a stage's output depends on, each part hashed on its own so that `status` can say which moved."""
    mod = stage_module(name)
    return {"sections": {s: content_hash(recipe.get(s))[:16] for s in mod.SECTIONS},
            "inputs": dict(input_keys),
            "code": {str(f.relative_to(REPO)): hashlib.sha256(f.read_bytes()).hexdigest()[:16] for f in code_files(mod)},
            # the task's own folder (it may live outside the repository, in the recipe's task_paths)
            "task": tasks.of(recipe).files() if "task" in mod.SECTIONS else {},
            "tools": tool_keys(mod),
            "fingerprint": mod.fingerprint(recipe) if hasattr(mod, "fingerprint") else None}


def stage_key(name: str, deps: dict) -> str:
    return content_hash({"stage": name, **deps})[:20]


def store_dir(name: str, key: str) -> Path:
    return runs_root() / "cache" / name / key


def plan_deps(recipe: dict) -> dict[str, tuple[str, dict]]:
    """Every stage's key and dependencies, in order (a stage's key depends on its inputs' keys)."""
    out: dict[str, tuple[str, dict]] = {}
    for name in STAGES:
        deps = stage_deps(name, recipe, {i: out[i][0] for i in stage_module(name).INPUTS})
        out[name] = (stage_key(name, deps), deps)
    return out


def plan(recipe: dict) -> dict[str, str]:
    """The key of every stage, in order."""
    return {name: key for name, (key, _) in plan_deps(recipe).items()}


def cached(name: str, key: str) -> Output | None:
    d = store_dir(name, key)
    if (d / "stage.json").exists():
        return Output.read(name, key, d)
    return None


def cached_stage(recipe: dict, stage: str) -> Output | None:
    """The stored output of `stage` for this resolved recipe at the current code, if there is one."""
    return cached(stage, plan(recipe)[stage])


class RunFailed(Exception):
    def __init__(self, stage: str, status: str, message: str):
        self.stage, self.status = stage, status
        super().__init__(message)


@dataclass
class StageRecord:
    name: str
    key: str
    status: str = "pending"  # pending | cached | ok | suspect | gated | failed | skipped
    cache_hit: bool = False
    seconds: float = 0.0
    metrics: dict | None = None
    log: str | None = None
    error: str | None = None


def select(only: str | None, start: str | None) -> tuple[set[str], set[str]]:
    """Stages to run and stages to force re-running."""
    for s in (only, start):
        if s is not None and s not in STAGES:
            raise SystemExit(f"unknown stage '{s}'; stages are: {', '.join(STAGES)}")
    if only:
        return {only}, set()
    if start:
        i = STAGES.index(start)
        return set(STAGES), set(STAGES[i:])
    return set(STAGES), set()


def execute(recipe: Recipe, only: str | None = None, start: str | None = None, force: bool = False,
            until: str | None = None, stages: tuple[str, ...] | None = None) -> Path:
    """Run the recipe; returns the run folder. Raises RunFailed when a stage fails or is gated. `stages`: run
    just these (`just iterate` runs data, train, iterate); the others are read from the cache when there."""
    wanted, forced = select(only, start)
    if stages:
        wanted = set(stages)
    if force:
        forced = set(wanted)
    if until:
        wanted = {s for s in wanted if STAGES.index(s) <= STAGES.index(until)}
    planned = plan_deps(recipe.data)
    keys = {name: key for name, (key, _) in planned.items()}
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + recipe.hash[:6]
    run_dir = runs_root() / recipe.name / run_id
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    records = {s: StageRecord(s, keys[s]) for s in STAGES}
    man = manifest.start(recipe, run_id, run_dir, keys)
    outputs: dict[str, Output] = {}
    failure: RunFailed | None = None
    total = len([s for s in STAGES if s in wanted])
    n = 0
    try:
        for name in STAGES:
            rec = records[name]
            if name not in wanted:
                hit = cached(name, rec.key)
                if hit:
                    outputs[name] = hit
                rec.status = "skipped"
                continue
            n += 1
            line = progress.Line(f"[{n}/{total}] {name:<8}")
            hit = None if name in forced else cached(name, rec.key)
            if hit:
                outputs[name] = hit
                rec.status, rec.cache_hit, rec.metrics = "cached", True, hit.metrics
                _link(run_dir, name, hit.dir)
                line.done(f"cached ({rec.key[:10]})")
                if hit.status == "gated":
                    rec.status = "gated"
                    raise RunFailed(name, "gated", hit.metrics.get("gate_summary", f"stage {name} is gated"))
                continue
            mod = stage_module(name)
            missing = [i for i in mod.INPUTS if i not in outputs]
            if missing:
                rec.status = "failed"
                rec.error = (f"needs the output of {', '.join(missing)}, which is not in the cache for this recipe; "
                             f"run without --only first")
                raise RunFailed(name, "failed", f"stage '{name}' {rec.error}")
            out = _run_stage(mod, name, rec, planned[name][1], recipe, run_dir, outputs, line)
            outputs[name] = out
            if out.status == "gated":
                raise RunFailed(name, "gated", out.metrics.get("gate_summary", f"stage {name} gated the run"))
    except RunFailed as e:
        failure = e
    except KeyboardInterrupt:
        for rec in records.values():
            if rec.status == "running":
                rec.status = "failed"
                rec.error = "interrupted"
        failure = RunFailed("-", "interrupted", "interrupted by the user")
    finally:
        manifest.finish(man, run_dir, records, outputs, failure)
    print(summary(records, run_dir), flush=True)
    rcfg = recipe.data.get("report") or {}
    if "report" in wanted and rcfg.get("publish") and (failure is None or failure.status == "gated"):
        from runner.reports import pack
        dest = pack.publish(run_dir, reports_root(), rcfg["keep"])
        print(f"evidence pack: {dest}", flush=True)
    if failure:
        raise failure
    return run_dir


def _run_stage(mod, name: str, rec: StageRecord, deps: dict, recipe: Recipe, run_dir: Path,
               outputs: dict[str, Output], line: progress.Line) -> Output:
    final = store_dir(name, rec.key)
    tmp = final.parent / f".{rec.key}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    logs = run_dir / "logs" / name
    ctx = Context(stage=name, recipe=recipe.data, out=tmp, logs=logs,
                  inputs={i: outputs[i] for i in mod.INPUTS}, progress=line.update, run_dir=run_dir)
    rec.status = "running"
    t0 = time.time()
    try:
        result: Result = mod.run(ctx)
    except (StageError, Exception) as e:
        rec.seconds = time.time() - t0
        rec.status = "failed"
        rec.error = str(e).splitlines()[0] if str(e) else type(e).__name__
        logs.mkdir(parents=True, exist_ok=True)
        (logs / "error.txt").write_text(traceback.format_exc())
        rec.log = str(getattr(e, "log", None) or logs / "error.txt")
        shutil.rmtree(tmp, ignore_errors=True)
        line.done(f"FAILED after {rec.seconds:.0f}s: {rec.error}")
        raise RunFailed(name, "failed", f"stage '{name}' failed: {e}\nlog: {rec.log}") from e
    rec.seconds = time.time() - t0
    for art, rel in result.artifacts.items():
        if not (tmp / rel).exists():
            shutil.rmtree(tmp, ignore_errors=True)
            rec.status = "failed"
            rec.error = f"declared artifact '{art}' ({rel}) was not written"
            raise RunFailed(name, "failed", f"stage '{name}': {rec.error}")
    record = {"stage": name, "key": rec.key, "status": result.status, "seconds": rec.seconds,
              "metrics": result.metrics, "artifacts": result.artifacts, "notes": result.notes,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "run_id": run_dir.name, "deps": deps}
    (tmp / "stage.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    _link(run_dir, name, final)
    rec.status, rec.metrics = result.status, result.metrics
    line.done(f"{result.status} in {rec.seconds:.0f}s" + (f" ({'; '.join(result.notes)})" if result.notes else ""))
    return Output.read(name, rec.key, final)


def _link(run_dir: Path, name: str, target: Path) -> None:
    link = run_dir / "stages" / name
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def summary(records: dict[str, StageRecord], run_dir: Path) -> str:
    rows = []
    for r in records.values():
        rows.append([r.name, r.status, "yes" if r.cache_hit else "", f"{r.seconds:.1f}s" if r.seconds else "",
                     r.key[:10], (r.error or "")[:70]])
    text = progress.table(rows, ["stage", "status", "cached", "time", "key", "note"])
    return f"\n{text}\n\nrun folder: {run_dir}\nmanifest:   {run_dir / 'manifest.json'}"
