"""Commands: validate, run, report, compare, serve, test (see the justfile)."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

from runner import recipe as recipes
from runner.env import REPO


def cmd_validate(a) -> int:
    bad = 0
    for path in a.recipes:
        try:
            r = recipes.load(path)
        except recipes.RecipeError as e:
            bad += 1
            print(f"INVALID {path}", file=sys.stderr)
            for p in e.problems:
                print(f"  {p}", file=sys.stderr)
            continue
        print(f"ok      {path}  (recipe {r.name}, hash {r.hash[:12]})")
    return 1 if bad else 0


def _load_or_exit(path: str) -> recipes.Recipe:
    try:
        return recipes.load(path)
    except recipes.RecipeError as e:
        print(f"INVALID {path}", file=sys.stderr)
        for p in e.problems:
            print(f"  {p}", file=sys.stderr)
        raise SystemExit(2)


def _sigterm_as_interrupt(*_):
    raise KeyboardInterrupt  # a killed run still records its stages as interrupted


def cmd_run(a) -> int:
    import signal

    from runner import pipeline
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    r = _load_or_exit(a.recipe)
    try:
        pipeline.execute(r, only=a.only, start=a.start, force=a.force, until=a.until)
    except pipeline.RunFailed as e:
        print(f"\nrun {e.status}: {e}", file=sys.stderr)
        return 3 if e.status == "gated" else 1
    return 0


def cmd_report(a) -> int:
    from runner import manifest
    from runner.stages import report
    run_dir = manifest.find_run(a.run)
    out = report.render_run(run_dir)
    print(f"report: {out}")
    return 0


def cmd_test(a) -> int:
    return subprocess.call([sys.executable, "-m", "pytest", *a.args], cwd=REPO)


def main(argv: list[str]) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(prog="forge", description="Recipe-driven fine-tune -> eval -> quantize -> serve lifecycle.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="validate recipes against schemas/")
    v.add_argument("recipes", nargs="+")
    v.set_defaults(fn=cmd_validate)
    r = sub.add_parser("run", help="run a recipe's lifecycle")
    r.add_argument("recipe")
    r.add_argument("--only", metavar="STAGE", help="run just this stage (its inputs must be cached)")
    r.add_argument("--from", dest="start", metavar="STAGE", help="re-run this stage and everything after it")
    r.add_argument("--until", metavar="STAGE", help="stop after this stage")
    r.add_argument("--force", action="store_true", help="ignore the cache")
    r.set_defaults(fn=cmd_run)
    rep = sub.add_parser("report", help="re-render a run's report from its stored artifacts")
    rep.add_argument("run", help="run folder or run id")
    rep.set_defaults(fn=cmd_report)
    t = sub.add_parser("test", help="run the test suite (pytest)")
    t.add_argument("args", nargs=argparse.REMAINDER)
    t.set_defaults(fn=cmd_test)
    a = ap.parse_args(argv)
    return a.fn(a)
