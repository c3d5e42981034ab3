"""Failover under load, engine settings compared in one run: for each variant, bring the recipe's deployment
up, keep 3 clients sending requests through the gateway, kill the primary engine, and measure how long the
supervisor takes to have it serving again, when the primary answers again, and the latency clients saw while
the fallback carried the load. Primary and fallback share the CPU; the variants change how many threads each
engine spins (llama.cpp's threads busy-wait for work by default, `--poll 50`).

    python3 -m runner setup && python3 benchmarks/failover.py [--recipe recipes/invoice-extraction.yaml | --serving PATH]

Needs the recipe's serve stage in the cache (`just run RECIPE --until serve`). Prints one JSON line per variant.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from runner import pipeline, recipe  # noqa: E402
from runner.serving import deploy, drills

VARIANTS = {
    "both engines 2 threads (default)": {},
    "fallback 1 thread": {"fallback_threads": 1},
    "both engines --poll 0": {"engine_args": ["--poll", "0"]},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default=str(REPO / "recipes" / "invoice-extraction.yaml"))
    ap.add_argument("--serving", help="a serving.json (default: the recipe's cached serve stage)")
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()
    if a.serving:
        base = deploy.load(Path(a.serving))
    else:
        serve = pipeline.cached_stage(recipe.load(a.recipe).data, "serve")
        if not serve:
            raise SystemExit(f"no cached serve stage for {a.recipe}: run `just run {a.recipe} --until serve` first")
        base = deploy.load(serve.path("serving"))
    for name, change in VARIANTS.items():
        for rep in range(a.repeats):
            serving = {**base, **change}
            with tempfile.TemporaryDirectory() as tmp, deploy.up(serving, Path(tmp)) as dep:
                res = drills.kill_primary(dep, workers=3, kill_after_s=5, timeout_s=90)
            keep = ("passed", "requests", "errors_after_kill", "answered_by_fallback", "engine_restarted_s",
                    "primary_answers_again_s", "latency_p50_before_kill_s", "latency_p50_while_down_s")
            print(json.dumps({"variant": name, "repeat": rep, "threads": serving["threads"],
                              "fallback_threads": serving.get("fallback_threads") or serving["threads"],
                              "engine_args": serving.get("engine_args", []), **{k: res.get(k) for k in keep}}),
                  flush=True)


if __name__ == "__main__":
    main()
