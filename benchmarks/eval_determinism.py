"""Are served evals reproducible? Score the same GGUF on the same test items several times through llama-server
+ lm-eval (as the eval stage does), at each concurrency, and count the answers that differ from the first
repeat. llama-server batches concurrent requests across its slots and its kernels are not batch-invariant, so
above one slot a greedy answer can change from run to run (llama.cpp issues #6950, #7052).

    python3 -m runner setup && python3 benchmarks/eval_determinism.py [--recipe recipes/invoice-extraction.yaml]
        [--model tuned] [--concurrency 1,2] [--repeats 2] [--items 65] [--eval-dir DIR]

Needs the recipe's eval stage in the cache (`just run RECIPE --until eval`). Prints one JSON line per
concurrency: answers compared, answers that differ, items whose field F1 counts differ, and seconds per repeat.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from runner import pipeline, recipe  # noqa: E402
from runner import tasks as registry  # noqa: E402
from runner.adapters import llama_cpp, lm_eval  # noqa: E402
from runner.quality import eval_analysis as ea  # noqa: E402
from runner.stage import Output  # noqa: E402



def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default=str(REPO / "recipes" / "invoice-extraction.yaml"))
    ap.add_argument("--model", default="tuned")
    ap.add_argument("--concurrency", default="1,2")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--items", type=int, default=0, help="0: every test item")
    ap.add_argument("--eval-dir", help="an eval stage output folder (default: the recipe's cached eval stage)")
    a = ap.parse_args()
    r = recipe.load(a.recipe)
    data = pipeline.cached_stage(r.data, "data")
    ev = Output.read("eval", "-", Path(a.eval_dir).resolve()) if a.eval_dir else pipeline.cached_stage(r.data, "eval")
    if not data or not ev:
        raise SystemExit(f"no cached data/eval stage for {a.recipe}: run `just run {a.recipe} --until eval` first")
    gguf = ev.dir / a.model / "model-f16.gguf"
    cfg, threads, seed = r.data["eval"], r.data["threads"], r.data["seed"]
    task = registry.of(r.data)  # the recipe's task
    task_name = task.name
    system = registry.system_prompt(r.data)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tasks = lm_eval.write_task(task, tmp / "tasks", data.path("test"), cfg["max_gen_tokens"])
        for conc in [int(c) for c in a.concurrency.split(",")]:
            runs, seconds = [], []
            for i in range(a.repeats):
                out = tmp / f"c{conc}-r{i}"
                t0 = time.time()
                with llama_cpp.serve(gguf, tmp / f"server-c{conc}-r{i}.log", threads, parallel=conc,
                                     ctx_size=cfg["ctx_size"], alias=a.model) as (server, _):
                    lm_eval.run(lm_eval.command_server([task_name], tasks, server.url, a.model, conc, system, out,
                                                       a.items, seed), tmp / f"lm-eval-c{conc}-r{i}.log", threads)
                seconds.append(round(time.time() - t0, 1))
                _, samples = lm_eval.read_results(out, task_name, tmp / f"lm-eval-c{conc}-r{i}.log")
                runs.append({s["doc_id"]: s for s in samples})
            first = runs[0]
            differ = sum(1 for rep in runs[1:] for d in first if ea.response(first[d]) != ea.response(rep[d]))
            scores = sum(1 for rep in runs[1:] for d in first if first[d].get(task.headline) != rep[d].get(task.headline))
            print(json.dumps({"model": a.model, "gguf_sha256_prefix": ev.metrics["models"][a.model]["model_sha256"][:16],
                              "concurrency": conc, "repeats": a.repeats, "items": len(first),
                              "answers_compared": len(first) * (a.repeats - 1), "answers_differing": differ,
                              "items_with_different_scores": scores, "seconds_per_repeat": seconds}), flush=True)


if __name__ == "__main__":
    main()
