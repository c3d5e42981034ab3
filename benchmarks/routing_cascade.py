"""Routing by cost and quality, measured on a stored run's test documents in one run: the deployed model alone,
a cheap quant of the same tuned model alone, and the cascade (the cheap quant first, escalating to the deployed
model when the answer fails the task's contract or the cheap engine's slots are all busy; `serve.routing`).
Each variant is brought up without fallback engines, every test document goes once through the task endpoint
(2 streams, the light driver), and every answer is scored against its gold (runner/serving/routing_eval.py).

    ~/.cache/finetune-forge/venvs/core-*/bin/python benchmarks/routing_cascade.py --run-dir runs/invoice-extraction/<run>
        [--cheap q4_k_m] [--streams 2] [--documents 66]

The cheap quant need not have passed the run's regression gate here (the serve stage requires it); this measures
what the cascade would keep or lose. Prints one JSON object: per variant quality (with paired intervals against
the deployed model), documents/s, latency quantiles, cost per 1,000 documents, tiers and escalations.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from runner import tasks  # noqa: E402
from runner.serving import deploy, routing_eval  # noqa: E402


def stop_on_sigterm(*_):
    raise KeyboardInterrupt   # unwinds the deployments: engines run in process groups of their own and outlive a bare kill


def main() -> None:
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--cheap", default="q4_k_m")
    ap.add_argument("--streams", type=int, default=2)
    ap.add_argument("--documents", type=int, default=None, help="first N test documents (default: all)")
    ap.add_argument("--price-per-hour", type=float, default=0.10)
    ap.add_argument("--cascade-threads", type=int, nargs=2, default=[1, 1], metavar=("PRIMARY", "CHEAP"),
                    help="threads of the two tiers in the cascade (both at 2 on 2 cores: 4 spinning threads, "
                         "measured 120 s timeouts)")
    ap.add_argument("--only", nargs="*", default=None, help="run only these variants (deployed, cheap, cascade)")
    a = ap.parse_args()
    run = Path(a.run_dir)
    base = deploy.load(run / "stages" / "serve" / "serving.json")
    lines = (run / "stages" / "data" / "test.jsonl").read_text().splitlines()
    docs = [json.loads(x) for x in lines if x.strip()][:a.documents]
    quant_dir = run / "stages" / "quantize"
    arts = json.loads((quant_dir / "stage.json").read_text()).get("artifacts", {})
    cheap = quant_dir / arts.get(a.cheap, f"tuned-{a.cheap}.gguf")
    if not cheap.exists():
        raise SystemExit(f"no {cheap}: re-make it with llama-quantize from the f16")
    primary = Path(base["primary"]["gguf"])
    task = tasks.get(base["task"]["name"])
    plan = [("deployed", "deployed", primary, None), ("cheap", f"{a.cheap} alone", cheap, None),
            ("cascade", f"cascade {a.cheap} -> deployed, threads {a.cascade_threads[0]}+{a.cascade_threads[1]}",
             primary, cheap)]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for key, name, p, c in plan:
            if a.only and key not in a.only:
                continue
            serving = routing_eval.cascade(base, c, tuple(a.cascade_threads)) if c else \
                routing_eval.alone(base, p, base["threads"])
            results.append(routing_eval.run_variant(name, serving, docs, task, a.streams, Path(tmp), a.price_per_hour))
            print(json.dumps({"variant": name, **results[-1]["summary"]}), file=sys.stderr, flush=True)
    keys = list(task.metrics())
    out = routing_eval.compare(results, "deployed", keys) if any(r["name"] == "deployed" for r in results) else \
        {r["name"]: r["summary"] for r in results}
    print(json.dumps({"documents": len(docs), "streams": a.streams, "headline": task.headline,
                      "deployed": primary.name, "cheap": cheap.name, "variants": out}, indent=1))


if __name__ == "__main__":
    main()
