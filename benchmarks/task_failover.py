"""The task route through a primary outage, fallback choices compared in one run: for each variant, bring a run's
deployment up, keep chat clients and task clients (the run's test documents) sending through the gateway, kill the
primary engine, and count the task answers that passed the task's contract while it was down (the gateway answers
200 only for those) and before the kill.

Variants: the old plan (the base model's quant as the fallback of every route, each model asked once), the same
with constrained retries (an answer that breaks the contract is asked again with it enforced), and the plan of
`serve.fallback` (the deployed model in an engine of its own for the task route, the base quant for chat).

    python3 -m runner setup && python3 benchmarks/task_failover.py --run-dir runs/invoice-extraction/<run>
        [--documents 32] [--workers 2] [--task-workers 1] [--rounds 1] [--kill-after 20] [--variant per-route]

Prints one JSON line per variant.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from runner.serving import deploy, drills  # noqa: E402


def variants(base: dict) -> dict[str, dict]:
    fb = deploy.fallbacks_of(base)
    if not fb:
        raise SystemExit("this serving.json has no fallback model")
    base_quant = next((f for f in fb if "chat" in f.get("routes", ["chat"])), fb[0])["gguf"]
    deployed = base["primary"]["gguf"]
    task = base["task"]
    every = [{"gguf": base_quant, "alias": "fallback-base", "routes": ["chat", "task"]}]
    per_route = [{"gguf": base_quant, "alias": "fallback-base", "routes": ["chat"]},
                 {"gguf": deployed, "alias": "fallback-deployed", "routes": ["task"]}]
    return {
        "base quant for every route, asked once": {"fallbacks": every, "task": dict(task, constrained_retry=False)},
        "base quant for every route, constrained retry": {"fallbacks": every, "task": dict(task, constrained_retry=True)},
        "deployed model for the task route, constrained retry": {"fallbacks": per_route,
                                                                  "task": dict(task, constrained_retry=True)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--documents", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2, help="chat clients")
    ap.add_argument("--task-workers", type=int, default=1, help="task clients")
    ap.add_argument("--rounds", type=int, default=1, help="kills per variant, each after the primary is back")
    ap.add_argument("--variant", choices=["all", "per-route"], default="all",
                    help="per-route: only the plan of serve.fallback")
    ap.add_argument("--kill-after", type=float, default=20.0, help="seconds of traffic before the kill")
    a = ap.parse_args()
    stages = a.run_dir / "stages"
    base = deploy.load(stages / "serve" / "serving.json")
    base = {k: v for k, v in base.items() if k != "fallback"}
    docs = [json.loads(x)["document"] for x in (stages / "data" / "test.jsonl").read_text().splitlines()
            if x.strip()][:a.documents]
    for name, change in variants(deploy.load(stages / "serve" / "serving.json")).items():
        if a.variant == "per-route" and not name.startswith("deployed model"):
            continue
        serving = {**base, **change}
        with tempfile.TemporaryDirectory() as tmp, deploy.up(serving, Path(tmp)) as dep:
            res = drills.kill_primary(dep, workers=a.workers, kill_after_s=a.kill_after, timeout_s=120,
                                      task={"route": serving["task"]["route"], "documents": docs},
                                      task_workers=a.task_workers, rounds=a.rounds)
        keep = ("passed", "requests", "errors_after_kill", "answered_by_fallback", "engine_restarted_s",
                "primary_answers_again_s", "per_round")
        print(json.dumps({"variant": name, "chat": {k: res.get(k) for k in keep}, "task": res.get("task")}),
              flush=True)


if __name__ == "__main__":
    main()
