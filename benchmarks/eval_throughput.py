"""Eval throughput: lm-eval through llama-server (local-chat-completions, concurrent requests, GGUF f16)
against lm-eval's in-process `hf` backend, on the same test items of the same model, in one run.

    python3 -m runner setup && python3 benchmarks/eval_throughput.py [--recipe recipes/invoice-extraction.yaml]
        [--model tuned|base] [--items 8]

It needs the recipe's data stage (and, for --model tuned, its train stage) in the cache: run
`just run RECIPE --until train` first. Prints samples/s of each, the ratio, and how many answers agree.
Both paths include their own start-up (server conversion + load, or model load), as the eval stage pays it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from runner import models, pipeline, recipe  # noqa: E402
from runner import tasks as registry  # noqa: E402
from runner.adapters import llama_cpp, lm_eval  # noqa: E402
from runner.quality import eval_analysis as ea  # noqa: E402



def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default=str(REPO / "recipes" / "invoice-extraction.yaml"))
    ap.add_argument("--model", default="tuned")
    ap.add_argument("--items", type=int, default=8)
    a = ap.parse_args()
    r = recipe.load(a.recipe)
    data = pipeline.cached_stage(r.data, "data")
    if not data:
        raise SystemExit(f"no cached data stage for {a.recipe}: run `just run {a.recipe} --until data` first")
    if a.model == "base":
        hf_dir = models.base_model_dir(r.data["base_model"])
    else:
        tr = pipeline.cached_stage(r.data, "train")
        if not tr:
            raise SystemExit(f"no cached train stage for {a.recipe}: run `just run {a.recipe} --until train` first")
        hf_dir = tr.path(a.model)
    cfg, threads, seed = r.data["eval"], r.data["threads"], r.data["seed"]
    task = registry.of(r.data)  # the recipe's task
    task_name = task.name
    system = registry.system_prompt(r.data)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tasks = lm_eval.write_task(task, tmp / "tasks", data.path("test"), cfg["max_gen_tokens"])
        t0 = time.time()
        gguf = llama_cpp.convert(hf_dir, tmp / "model-f16.gguf", tmp / "convert.log")
        with llama_cpp.serve(gguf, tmp / "server.log", threads, parallel=cfg["concurrency"], ctx_size=cfg["ctx_size"],
                             alias=a.model) as (server, _):
            t1 = time.time()
            lm_eval.run(lm_eval.command_server([task_name], tasks, server.url, a.model, cfg["concurrency"], system,
                                               tmp / "server", a.items, seed), tmp / "lm-eval-server.log", threads)
            served_scoring = time.time() - t1
        served_total = time.time() - t0
        t0 = time.time()
        lm_eval.run(lm_eval.command_hf([task_name], tasks, hf_dir, system, tmp / "hf", a.items, seed),
                    tmp / "lm-eval-hf.log", threads)
        hf_total = time.time() - t0
        _, s_served = lm_eval.read_results(tmp / "server", task_name, tmp / "lm-eval-server.log")
        _, s_hf = lm_eval.read_results(tmp / "hf", task_name, tmp / "lm-eval-hf.log")
    same = sum(ea.response(x).strip() == ea.response(y).strip()
               for x, y in zip(sorted(s_served, key=lambda s: s["doc_id"]), sorted(s_hf, key=lambda s: s["doc_id"])))
    n = len(s_served)
    row = {"model": a.model, "items": n, "max_gen_tokens": cfg["max_gen_tokens"], "threads": threads,
           "llama_server": {"concurrency": cfg["concurrency"], "seconds_total": round(served_total, 1),
                            "seconds_scoring": round(served_scoring, 1),
                            "samples_per_s": round(n / served_total, 4)},
           "hf_in_process": {"seconds_total": round(hf_total, 1), "samples_per_s": round(n / hf_total, 4)},
           "speedup_server_over_hf": round(hf_total / served_total, 2),
           "identical_answers": same}
    print(json.dumps(row), flush=True)
    print(f"cpu_count={os.cpu_count()} at {time.strftime('%Y-%m-%d %H:%M')}")


if __name__ == "__main__":
    main()
