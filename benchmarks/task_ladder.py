"""The task route under load, engine settings swept in one run: a stored run's deployment (its serving.json and
test split), the primary alone behind the gateway (no fallback engines: the primary's capacity is what is
measured), `POST /v1/tasks/<name>` with the test documents from the project's light driver
(runner/serving/task_load.py), one closed-loop level per variant with as many streams as the engine has slots.

1. calibration: `--parallel 1`, one stream, against llama-bench's single-stream limit for the same model and
   threads (>= 80% or the measurement was contended);
2. `--parallel` 2, 4, 8 with as many streams (the deployed quant);
3. the other quants at the parallel of step 2 with the most valid documents/s within the latency SLO.

    ~/.cache/finetune-forge/venvs/core-*/bin/python benchmarks/task_ladder.py --run-dir runs/invoice-extraction/<run>
        [--parallel 1 2 4 8] [--quants q8_0 q4_k_m f16] [--requests 100] [--max-seconds 150] [--with-fallbacks]

--with-fallbacks keeps the run's fallback engines, as the loadtest stage deploys them, and measures each level
twice: as deployed, and with the task fallback serving a hard link of the same file under another name, which the
gateway cannot tell from another model, so it asks it again after the primary's constrained retry failed (the
behaviour before the gateway skipped a model file that had already failed the same way).

Prints one JSON line per level (documents/s, latency quantiles and how many answers they rest on, valid share,
x single-stream limit, generator CPU share, cost per 1,000 documents), then a summary line.
"""
from __future__ import annotations

import argparse
import copy
import json
import signal
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from runner.adapters import llama_cpp  # noqa: E402
from runner.serving import deploy, task_load  # noqa: E402

SLO = {"p99_latency_s": 15, "max_error_rate": 0.01}   # the default recipe's


def variant(base: dict, gguf: Path, parallel: int, fallbacks: list[dict] | None = None) -> dict:
    s = copy.deepcopy(base)
    s["primary"]["gguf"] = str(gguf)
    s["parallel"] = parallel
    s["fallbacks"] = fallbacks or []
    s.pop("fallback", None)
    s["gateway"]["max_in_flight"] = s["replicas"] * parallel
    return s


def measure(serving: dict, docs: list[str], streams: int, requests: int, max_seconds: float, price: float,
            bench: dict, label: str, out: Path) -> dict:
    name = label.replace(" ", "").replace(",", "_")
    with tempfile.TemporaryDirectory() as tmp, deploy.up(serving, Path(tmp)) as dep:
        rows, timing = task_load.level(dep.gateway_url, serving["task"]["route"], docs, dep.api_key, streams,
                                       requests, max_seconds, out, 120, name=name)
    row = task_load.summarize(rows, timing, streams, SLO, price, 2, bench)
    task_load.calibrate([row], bench)
    row.update(variant=label, parallel=serving["parallel"], model=Path(serving["primary"]["gguf"]).name)
    for k in ("start_time", "end_time"):
        row.pop(k)
    print(json.dumps(row), flush=True)
    return row


def stop_on_sigterm(*_):
    raise KeyboardInterrupt   # unwinds the deployments: engines run in process groups of their own and outlive a bare kill


def main() -> None:
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--parallel", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--quants", nargs="*", default=["q8_0", "q4_k_m"])
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--max-seconds", type=float, default=150)
    ap.add_argument("--documents", type=int, default=64)
    ap.add_argument("--price-per-hour", type=float, default=0.10)
    ap.add_argument("--with-fallbacks", action="store_true")
    ap.add_argument("--out", default=None, help="folder for each level's per-request records (default: a temporary one)")
    a = ap.parse_args()
    out = Path(a.out or tempfile.mkdtemp(prefix="task-ladder-"))
    out.mkdir(parents=True, exist_ok=True)
    run = Path(a.run_dir)
    base = deploy.load(run / "stages" / "serve" / "serving.json")
    docs = [json.loads(x)["document"] for x in (run / "stages" / "data" / "test.jsonl").read_text().splitlines()
            if x.strip()][:a.documents]
    primary = Path(base["primary"]["gguf"])
    quant_dir = run / "stages" / "quantize"
    stage = json.loads((quant_dir / "stage.json").read_text())
    arts, f16 = stage.get("artifacts", {}), Path(stage["metrics"]["files"]["f16"]["path"])  # f16: the eval stage's
    ggufs = {"deployed": primary, **{q: f16 if q == "f16" else quant_dir / arts.get(q, f"tuned-{q}.gguf")
                                     for q in a.quants}}
    missing = [str(p) for p in ggufs.values() if not p.exists()]
    if missing:
        raise SystemExit(f"missing GGUF files (the quantize stage keeps only the deployed one when asked to; "
                         f"re-make one with llama-quantize from the f16): {missing}")
    benches = {}

    def bench(name: str) -> dict:
        if name not in benches:
            with tempfile.TemporaryDirectory() as tmp:
                benches[name] = llama_cpp.bench(ggufs[name], Path(tmp) / "bench.log", base["threads"], 256, 64, 3)
            print(json.dumps({"llama_bench": name, **benches[name]}), flush=True)
        return benches[name]

    rows = []
    if a.with_fallbacks:
        fbs = deploy.fallbacks_of(base)
        alias = out / f"same-model-other-name-{primary.name}"   # a hard link: the same bytes, another path
        if not alias.exists():
            alias.hardlink_to(primary)
        other = [dict(f, gguf=str(alias)) if Path(f["gguf"]).resolve() == primary.resolve() else f for f in fbs]
        for p in a.parallel:
            for label, f in (("fallbacks as deployed", fbs), ("task fallback under another file name", other)):
                rows.append(measure(variant(base, primary, p, f), docs, p, a.requests, a.max_seconds,
                                    a.price_per_hour, bench("deployed"), f"{label}, --parallel {p}, {p} stream(s)",
                                    out))
        return
    for p in a.parallel:
        streams = p
        rows.append(measure(variant(base, primary, p), docs, streams, a.requests, a.max_seconds, a.price_per_hour,
                            bench("deployed"), f"deployed, --parallel {p}, {streams} stream(s)", out))
    best = max((r for r in rows if r["documents_per_s"] and r["latency_ok"]), key=lambda r: r["documents_per_s"],
               default=None)   # the most valid documents/s within the latency SLO
    if best:
        for q in a.quants:
            rows.append(measure(variant(base, ggufs[q], best["parallel"]), docs, best["streams"], a.requests,
                                a.max_seconds, a.price_per_hour, bench(q), f"{q}, --parallel {best['parallel']}", out))
    one = next((r for r in rows if r["streams"] == 1 and r["variant"].startswith("deployed")), None)
    print(json.dumps({"summary": True, "calibration_speed_vs_bench": one and one.get("speed_vs_bench"),
                      "best_deployed": best and {k: best[k] for k in ("parallel", "documents_per_s", "latency_s",
                                                                         "valid_share")},
                      "best_vs_one_stream": round(best["documents_per_s"] / one["documents_per_s"], 3)
                      if best and one and one["documents_per_s"] else None}), flush=True)


if __name__ == "__main__":
    main()
