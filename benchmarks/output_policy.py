"""What the output policy (serve.governance) adds to a request, measured side by side in one run: two gateways in
front of the same instant engine (benchmarks/gateway_overhead.py's, an invoice JSON at once), one without the
policy and one with the recipe schema's default policy and audit log, each at 50 requests/s with the engine
measured straight in the same seconds; the routes run in halves (plain, governed, governed, plain) so drift falls on
both. The policy's cost is the governed gateway's overhead minus the plain one's, per quantile.

    ~/.cache/finetune-forge/venvs/core-*/bin/python benchmarks/output_policy.py [--rate 50 --seconds 20]

Prints one JSON object. A p99 rests on rate x seconds requests per gateway and route (1,000 by default).
"""
from __future__ import annotations

import argparse
import http.server
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import gateway_overhead as bench  # noqa: E402

from runner import recipe, tasks  # noqa: E402
from runner.governance import audit  # noqa: E402
from runner.serving import async_driver, deploy  # noqa: E402


def default_policy() -> dict:
    """serve.governance as the schema's defaults make it."""
    r = recipe.load(REPO / "recipes" / "invoice-extraction.yaml")
    return r.data["serve"]["governance"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=50)
    ap.add_argument("--seconds", type=float, default=20)
    a = ap.parse_args()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), bench.InstantEngine)
    engine = multiprocessing.get_context("fork").Process(target=srv.serve_forever, daemon=True)
    engine.start()
    srv.socket.close()
    engine_url = f"http://127.0.0.1:{srv.server_port}"
    task = {**tasks.get("invoice_extraction").describe(), "system_prompt": "Extract the invoice fields as JSON.",
            "max_tokens": 200, "constrained": False, "constrained_retry": True}
    limits = {"max_in_flight": 4, "max_queue": 64, "queue_timeout_s": 30, "upstream_timeout_s": 30,
              "max_tokens": 1024, "max_body_bytes": 1048576, "breaker": {"threshold": 3, "reset_s": 10},
              "api_keys_env": "FORGE_BENCH_KEYS"}
    eps = [deploy.Endpoint("primary", engine_url, "primary", 0)]
    policy = default_policy()
    cfgs = {"plain": deploy.gateway_config(eps, limits, task, "bench"),
            "governed": deploy.gateway_config(eps, limits, task, "bench", policy)}
    got = {(g, r): ([], []) for g in cfgs for r in ("chat", "task")}
    with tempfile.TemporaryDirectory() as tmp, \
            deploy.start_gateway(cfgs["plain"], Path(tmp) / "plain", api_keys=bench.KEY) as (plain, _), \
            deploy.start_gateway(cfgs["governed"], Path(tmp) / "governed", api_keys=bench.KEY) as (governed, _):
        urls = {"plain": plain, "governed": governed}
        for g in urls:
            for route in ("chat", "task"):
                bench.segment(urls[g], engine_url, route, task, 20, 1)   # warm
        t0 = time.time()
        for g in ("plain", "governed", "governed", "plain"):
            for route in ("chat", "task"):
                through, direct = bench.segment(urls[g], engine_url, route, task, a.rate, a.seconds / 2)
                got[(g, route)][0].extend(through)
                got[(g, route)][1].extend(direct)
        took = time.time() - t0
        audited = audit.read(Path(tmp) / "governed" / "audit.jsonl")
    engine.terminate()
    ok = lambda xs: [x.latency_s for x in xs if x.status == 200]   # noqa: E731
    rows = {}
    for (g, route), (through, direct) in got.items():
        qg, qd = async_driver.quantiles(ok(through)), async_driver.quantiles(ok(direct))
        rows[f"{g}/{route}"] = {"requests": len(through), "ok": len(ok(through)),
                                "overhead_ms": {k: round((qg[k] - qd[k]) * 1000, 3) for k in qg}}
    added = {route: {k: round(rows[f"governed/{route}"]["overhead_ms"][k] - rows[f"plain/{route}"]["overhead_ms"][k], 3)
                     for k in ("p50", "p95", "p99")} for route in ("chat", "task")}
    scan = sorted(x["filter_ms"] for x in audited)
    pick = lambda q: scan[min(len(scan) - 1, int(q * len(scan)))] if scan else None   # noqa: E731
    print(json.dumps({"rate_per_s": a.rate, "seconds": round(took, 1), "policy": policy, "gateways": rows,
                      "policy_added_ms": added,
                      "scan_ms_in_gateway": {"p50": pick(0.5), "p99": pick(0.99), "n": len(scan)}}, indent=1))


if __name__ == "__main__":
    main()
