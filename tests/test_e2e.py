"""Every stage really runs (Axolotl, llama.cpp, lm-eval, GuideLLM) on a tiny random-weight model."""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import egress

REPO = Path(__file__).resolve().parent.parent
STAGES = ["data", "train", "eval", "quantize", "serve", "loadtest", "redteam", "report"]

pytestmark = pytest.mark.e2e


def run_recipe(recipe: Path, runs: Path, *flags, trace: Path | None = None) -> subprocess.CompletedProcess:
    """`just run RECIPE`; with `trace`, under a connect() trace of every process it starts (tests/egress.py)."""
    cmd = [sys.executable, "-m", "runner", "run", str(recipe), *flags]
    return subprocess.run(egress.traced(cmd, trace) if trace else cmd, cwd=REPO,
                          env={**os.environ, "FORGE_RUNS": str(runs)}, capture_output=True, text=True, timeout=1200)


def latest_manifest(runs: Path, name: str) -> dict:
    run_dir = sorted(p for p in (runs / name).iterdir() if p.is_dir())[-1]
    return json.loads((run_dir / "manifest.json").read_text())


def test_tiny_recipe_runs_every_stage_then_redoes_nothing(tiny_model, tmp_path, runs_dir):
    recipe = tmp_path / "tiny-e2e.yaml"
    recipe.write_text(f"extends: {REPO / 'tests' / 'recipes' / 'tiny.yaml'}\nname: tiny-e2e\n"
                      f"base_model: {{source: path, path: {tiny_model}}}\n")
    trace = tmp_path / "connect.trace"
    first = run_recipe(recipe, runs_dir, trace=trace)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    # offline and quiet: no process of the run tried to reach beyond loopback, and the console shows no traceback
    assert trace.stat().st_size > 0 and egress.outbound(trace) == []
    assert "Traceback" not in first.stdout + first.stderr, first.stdout[-3000:] + first.stderr[-3000:]
    man = latest_manifest(runs_dir, "tiny-e2e")
    assert man["status"] == "ok"
    assert [s for s in STAGES if man["stages"][s]["status"] == "ok"] == STAGES
    assert man["dataset_version"] and len(man["dataset_version"]) == 12

    st = man["stages"]
    run_dir = Path(man["stages"]["report"]["key"] and sorted((runs_dir / "tiny-e2e").iterdir())[-1])
    # data: three chat-format splits
    train_rows = [json.loads(x) for x in (run_dir / "stages" / "data" / "train.jsonl").read_text().splitlines()]
    assert train_rows and [m["role"] for m in train_rows[0]["messages"]] == ["system", "user", "assistant"]
    # train: Axolotl's log parsed into a curve; the adapter merged into a full model
    assert st["train"]["metrics"]["tuned"]["steps"] == 4
    assert st["train"]["metrics"]["tuned"]["trainable_params"] > 0
    assert (run_dir / "stages" / "train" / "tuned" / "merged" / "config.json").exists()
    assert (run_dir / "stages" / "train" / "tuned" / "axolotl.yaml").exists()
    # eval: both models scored through llama-server by lm-eval, per-sample outputs kept, CIs and paired tests
    ev = st["eval"]["metrics"]
    n = min(6, st["data"]["metrics"]["records"]["test"])  # eval.limit 6; the holdout can leave fewer
    assert n >= 4
    for model in ("base", "tuned"):
        task = ev["models"][model]["tasks"]["invoice_extraction"]
        assert task["samples"] == n
        assert 0.0 <= task["field_f1"] <= 1.0 and 0.0 <= task["json_valid"] <= 1.0
        ci = task["ci"]["field_f1"]
        assert ci["n"] == n and ci["low"] <= ci["value"] <= ci["high"]
        assert ev["models"][model]["tasks"]["general_instructions"]["samples"] == 6
        assert (run_dir / "stages" / "eval" / model / "model-f16.gguf").stat().st_size > 1_000_000
        assert len(ev["models"][model]["model_sha256"]) == 64
    assert ev["models"]["tuned"]["tasks"]["invoice_extraction_train"]["samples"] == 4
    cmp = ev["comparisons"]["tuned"]["invoice_extraction"]["field_f1"]
    assert cmp["n"] == n and cmp["low"] <= cmp["diff"] <= cmp["high"] and 0 <= cmp["p"] <= 1
    assert "general_instructions" in ev["comparisons"]["tuned"]
    # the variant trained too and was compared with base on the same items
    assert st["train"]["metrics"]["tuned-v2"]["steps"] == 2
    assert ev["comparisons"]["tuned-v2"]["invoice_extraction"]["field_f1"]["n"] == n
    assert ev["fidelity"]["tuned"]["items"] == 2
    # a prompting baseline (the base model with a training example and its answer schema as a grammar) on the
    # same items, compared with every fine-tuned model
    bl = ev["baselines"]["base-fewshot-constrained"]
    assert bl["shots"] == 1 and bl["constrained"] and bl["tasks"]["invoice_extraction"]["samples"] == n
    assert ev["baseline_comparisons"]["base-fewshot-constrained"]["tuned"]["field_f1"]["n"] == n
    assert ev["strongest_baseline"]["name"] in {"base", "base-fewshot-constrained"}
    # tiny.yaml's first look (3 items) left its per-field gate undecided: the other 3 were scored and merged
    early = ev["baselines_stop_early"]
    assert early["after"] == 3 and early["of"] == n and early["stopped"] is False
    assert early["checks"] == [{"gate": 0, "decided": None, "why": "a per-field gate or one on another task"}]
    rest = run_dir / "stages" / "eval" / "base-fewshot-constrained" / "rest" / "lm_eval" / "test"
    assert sorted(json.loads(line)["doc_id"] for f in rest.rglob("samples_*.jsonl")
                  for line in f.read_text().splitlines()) == list(range(3, n))
    logs = run_dir / "logs" / "eval"   # each part keeps its own engine and lm-eval logs
    assert all((logs / f).stat().st_size for f in (
        "llama-server-base-fewshot-constrained.log", "llama-server-base-fewshot-constrained-rest.log",
        "lm-eval-base-fewshot-constrained-test.log", "lm-eval-base-fewshot-constrained-test-rest.log"))
    # the recipe's holdout (locale de_CH, layout letter): an ood split no model trained on, scored for every model
    ood = st["data"]["metrics"]["records"]["ood"]
    assert ood > 0 and all(ev["models"][m]["tasks"]["invoice_extraction_ood"]["samples"] == min(6, ood) for m in ev["models"])
    assert ev["comparisons"]["tuned"]["invoice_extraction_ood"]["field_f1"]["n"] == min(6, ood)
    sample = json.loads((run_dir / "stages" / "eval" / "base-fewshot-constrained" /
                         "samples_invoice_extraction.jsonl").read_text().splitlines()[0])
    turns = json.loads(sample["arguments"]["gen_args_0"]["arg_0"][0])
    assert [t["role"] for t in turns] == ["system", "user", "assistant", "user"]
    assert sample["arguments"]["gen_args_0"]["arg_1"]["response_format"]["schema"]["required"][0] == "invoice_number"
    quality_md = (run_dir / "stages" / "eval" / "quality.md").read_text()
    for section in (f"## invoice_extraction (test split, {n} items)", "## Against prompting baselines", "## Out of distribution", "### By field",
                    "### By layout",
                    "## General capability", "## Fidelity", "## Risks"):
        assert section in quality_md, section
    analysis = json.loads((run_dir / "stages" / "eval" / "analysis.json").read_text())
    assert set(analysis["breakdowns"]) == {"field", "layout", "locale", "length"}
    assert "tuned" in analysis["failures"] and "pii" in analysis
    # quantize: each requested type written, smaller than f16
    files = st["quantize"]["metrics"]["files"]
    assert set(files) == {"f16", "q8_0", "q4_k_m"} and files["q4_k_m"]["bytes"] < files["f16"]["bytes"]
    # ... each benchmarked by llama-bench and scored on the same test items as f16, gated on its paired drop
    qm = st["quantize"]["metrics"]
    for t in ("f16", "q8_0", "q4_k_m"):
        assert files[t]["bench"]["gen_tokens_per_s"] > 0 and 2 < files[t]["bench"]["bits_per_weight"] < 17
    for t in ("q8_0", "q4_k_m"):
        assert qm["quality"][t]["ci"]["field_f1"]["n"] == n and files[t]["peak_rss_mb"] > 0
        assert qm["quality"][t]["vs_f16"]["field_f1"]["n"] == n and "passed" in qm["verdicts"][t]
        ni = qm["verdicts"][t]["non_inferiority"]  # per field decision: n items x 9 fields
        assert ni["decisions"] == 9 * n and ni["n"] == n and ni["margin"] == 0.02
    assert qm["quality"]["f16-rerun"]["noise"]["decisions"] == 9 * n  # f16 served again: the noise floor
    # quantize.scoring_slots (1): f16 and the quants scored the same way, on one slot; f16's second scoring is the
    # gate's reference
    assert {qm["quality"][t]["served"]["concurrency"] for t in ("f16-rerun", "q8_0", "q4_k_m")} == {1}
    assert qm["quality"]["f16"]["ci"] == qm["quality"]["f16-rerun"]["ci"]
    assert qm["quality"]["q8_0"]["served"]["docs_per_s"] > 0 and qm["quality"]["q8_0"]["served"]["engine_s_per_doc"] > 0
    passing = [t for t in ("q8_0", "q4_k_m") if qm["verdicts"][t]["passed"]]
    assert qm["chosen"] == (min(passing, key=lambda t: files[t]["bytes"]) if passing else "f16")
    assert st["serve"]["metrics"]["model_type"] == qm["chosen"]
    quant_md = (run_dir / "stages" / "quantize" / "quantization.md").read_text()
    assert "**Deployment model:" in quant_md and "## The gate" in quant_md and "f16-rerun" in quant_md
    assert (run_dir / "stages" / "quantize" / "imatrix.gguf").stat().st_size > 0
    assert "--imatrix" in (run_dir / "logs" / "quantize" / "quantize-q4_k_m.log").read_text()
    # serve: primary and fallback came up and answered, behind the gateway (which refuses bad requests)
    assert {e["role"] for e in st["serve"]["metrics"]["endpoints"]} == {"primary", "fallback"}
    gw = st["serve"]["metrics"]["gateway"]
    assert gw["readyz"]["status"] == "ready" and gw["refused"] == {"no_key": 401, "malformed_json": 400}
    assert gw["task"]["status"] in (200, 502)  # the random model's output may fail the task schema: 502 says so
    # loadtest: GuideLLM measured each level of the ladder
    levels = st["loadtest"]["metrics"]["levels"]
    assert st["loadtest"]["metrics"]["through"] == "gateway"
    assert [o["streams"] for o in st["loadtest"]["metrics"]["gateway_overhead"]] == [1, 2]
    assert all(lv["requests"]["successful"] > 0 for lv in st["loadtest"]["metrics"]["direct_levels"])
    # every ladder had a fresh deployment, so the direct ladder did not replay the gateway ladder's (identical,
    # seeded) prompts from llama-server's prompt cache (it did once; the dossier tells the story). The engines' own
    # counters say so: each ladder's primary is a new process that had processed only its readiness probe
    lt = st["loadtest"]["metrics"]
    starts = {name: e["at_start"]["primary-0"] for name, e in lt["ladder_engines"].items()}
    assert set(starts) == {"gateway", "direct"} and starts["gateway"]["pid"] != starts["direct"]["pid"]
    assert starts["gateway"]["prompt_tokens_cached"] == starts["direct"]["prompt_tokens_cached"] == 0
    assert {k: v for k, v in starts["gateway"].items() if k != "pid"} == \
        {k: v for k, v in starts["direct"].items() if k != "pid"}
    assert all(e["at_end"]["primary-0"]["prompt_tokens"] > e["at_start"]["primary-0"]["prompt_tokens"]
               for e in lt["ladder_engines"].values())
    levels = lt["levels"]
    assert [lv["streams"] for lv in levels] == [1, 2]
    assert all(lv["requests"]["successful"] > 0 and lv["latency_s"]["p99"] > 0 for lv in levels)
    # ... with the resources of each process sampled per level and a bottleneck read from them
    assert all(lv["resources"]["samples"] >= 1 and lv["resources"]["primary-0"]["rss_mb"]["max"] > 0
               and "gateway_in_flight" in lv["resources"]["gateway"] for lv in levels)
    assert lt["bottleneck"]["verdict"] in {"cpu", "slots", "gateway_admission", "none"}
    # the optimization's before/after, the fault drills (all passed: the stage would be gated otherwise)
    assert lt["baseline"]["before_settings"]["parallel"] == 1 and lt["baseline"]["comparison"][0]["streams"] == 2
    assert set(lt["drills"]) == {"malformed", "overload", "kill_primary"}
    assert all(d["passed"] for d in lt["drills"].values()), lt["drills"]
    assert lt["engine_restarts"] and lt["engine_restarts"][0]["engine"] == "primary-0"
    # monitoring: the SLO's rules passed promtool, and a real Prometheus watched the gateway ladder and counted
    # every request the gateway answered in each level (GuideLLM's total can include requests cut at the end)
    mon = lt["monitoring"]
    assert mon["promtool"]["test_cases"] == 2 * len(mon["alerts"]) and "SUCCESS" in mon["promtool"]["test"]
    cross = mon["cross_check"]
    assert [c["streams"] for c in cross["levels"]] == [1, 2] and all(cross["targets_up"].values())
    assert all(0 < c["requests_prometheus"] and c["requests_generator_completed"] - 2 <= c["requests_prometheus"]
               <= c["requests_generator"] + 2 for c in cross["levels"]), cross["levels"]
    perf_md = (run_dir / "stages" / "loadtest" / "perf_cost.md").read_text()
    assert "## Fault drills" in perf_md and "## Optimization, measured in this run" in perf_md
    assert "## The same ladder seen by Prometheus" in perf_md
    # the task route, the product's workload: test documents from the light driver, 6 per level, against
    # llama-bench's single-stream limit (the random model's answers mostly fail the contract: 502s, counted)
    tl = lt["task_ladder"]
    assert [r["streams"] for r in tl["levels"]] == [1, 2] and tl["route"] == "/v1/tasks/invoice_extraction"
    assert all(r["requests"] == 6 and sum(r["statuses"].values()) == 6 and set(r["statuses"]) <= {"200", "502"}
               and 0 <= r["driver_cpu_share"] < 1 and r["resources"]["samples"] >= 1 for r in tl["levels"]), tl
    assert tl["calibration"]["bench"]["gen_tokens_per_s"] > 0
    # the chat ladder's own calibration point against the same llama-bench
    assert lt["chat_calibration"]["speed_vs_bench"] > 0 and "of llama-bench's speed** through the stack" in perf_md
    # the engine alone, the ladder's batches in lockstep (llama-batched-bench at the ladder's mean token shape)
    eng = tl["engine"]
    assert [e["sequences"] for e in eng["rows"]] == [1, 2] and all(e["documents_per_s"] > 0 for e in eng["rows"])
    assert [r["engine_batch"] for r in tl["levels"]] == [1, 2] and "Engine alone, same batch" in perf_md
    # the best level within the latency SLO ran once more (repeat_best: 1): its spread, a p99 over both runs
    rep = tl["best_repeated"]
    assert tl["stopped_by"] == "listed" and [r["streams"] for r in tl["repeats"]] == [rep["streams"]]
    assert rep["streams"] == tl["best_at_slo"]["streams"] and rep["runs"] == 2 and rep["requests"] == 12, rep
    assert f"The best level ({rep['streams']} streams) ran 2 times" in perf_md
    assert "## The task route: the product's workload" in perf_md
    assert (run_dir / "stages" / "loadtest" / "perf_cost.png").stat().st_size > 0
    # serve measured constrained decoding on the deployed model
    dc = st["serve"]["metrics"]["decoding_check"]
    assert list(dc) == ["primary", "fallback"]
    assert all(d["constrainable"] and {"free", "constrained"} <= set(d) and d["free"]["n"] + d["free"]["error_count"] == 2
               for d in dc.values())
    # redteam: the attack suite through the governed gateway, deployed model and base; the policy measured
    rt = st["redteam"]["metrics"]
    assert set(rt["models"]) == {"tuned", "base"} and rt["models"]["tuned"]["cases"] == 2 * 6 + 6 + 12 + 9
    tuned_rates = rt["models"]["tuned"]["rates"]
    assert set(tuned_rates) == {"injection", "unicode", "prompt_leak", "pii_exfiltration", "malformed", "all"}
    assert tuned_rates["malformed"]["n"] == 9 and tuned_rates["malformed"]["after"] == 0   # 4xx, JSON, still healthy
    for r in tuned_rates.values():   # the policy only ever removes: no attack succeeds after it that did not before
        assert r["after"] <= r["before"] or r is tuned_rates["all"]
    assert rt["models"]["tuned"]["filter_ms"]["n"] > 0 and rt["base_vs_tuned"]["after"]["injection"]["n"] == 6
    assert set(rt["filter"]["per_type"]) >= {"email", "iban", "secret"}
    scan = rt["models"]["tuned"]["garak"]   # garak ran through the gateway, offline, to its completion record
    assert set(scan["probes"]) == {"promptinject.HijackHateHumans", "apikey.GetKey"} and scan["total"] >= 6
    assert rt["models"]["base"]["garak"] is None   # redteam.garak.models: [tuned]
    judged = [json.loads(x) for x in (run_dir / "stages" / "redteam" / "judged-tuned.jsonl").read_text().splitlines()]
    assert {j["category"] for j in judged if j["status"] == 200} and all(j["status"] for j in judged)
    # report rendered from the artifacts
    readme = (run_dir / "stages" / "report" / "README.md").read_text()
    assert man["dataset_version"] in readme and "| q4_k_m |" in readme

    # the evidence pack, published to reports/<recipe>/<run-id>/ with the manifest; every page links locally
    pack = runs_dir.parent / "reports" / "tiny-e2e" / man["run_id"]
    index = (pack / "README.md").read_text()
    for q in ("### 1. Did quality improve", "### 2. Does performance meet the SLO", "### 3. What are the risks"):
        assert q in index, q
    for page in ("data_audit.md", "training.md", "quality.md", "perf_cost.md", "risks.md", "redteam.md",
                 "manifest.json", "perf_cost.png", "quality_metrics.png", "prometheus-rules.yml", "prometheus-rules.test.yml"):
        assert (pack / page).is_file(), page
    for page in pack.glob("*.md"):  # every page's local links (charts included) resolve inside the pack
        for link in re.findall(r"\]\(([\w.-]+\.(?:md|png|json|yml))(?:#[\w-]+)?\)", page.read_text()):
            assert (pack / link).is_file(), f"{page.name} links {link}"
    assert "## Quantization" in (pack / "quality.md").read_text()
    risks_md = (pack / "risks.md").read_text()
    for section in ("## Overfitting", "## Hallucination", "## Sensitive content", "## Bias across slices",
                    "## Limits of the synthetic data", "## Monitoring", "## Fallback plan"):
        assert section in risks_md, section
    assert json.loads((pack / "manifest.json").read_text())["run_id"] == man["run_id"]

    second = run_recipe(recipe, runs_dir)
    assert second.returncode == 0, second.stderr[-3000:]
    man2 = latest_manifest(runs_dir, "tiny-e2e")
    assert man2["run_id"] != man["run_id"]
    assert all(man2["stages"][s]["status"] == "cached" for s in STAGES), man2["stages"]
    assert sorted(p.name for p in pack.parent.iterdir()) == [man2["run_id"]]  # report.keep: 1

    # `just status`: in a copy of the repository, a file only the load test uses is edited; exactly loadtest and
    # report (its input moved) are stale, and status names the file
    copy = tmp_path / "repo-copy"
    for rel in subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.splitlines():
        if (REPO / rel).is_file():
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, copy / rel)

    def status() -> dict[str, str]:
        r = subprocess.run([sys.executable, "-m", "runner", "status", str(recipe)], cwd=copy,
                           env={**os.environ, "FORGE_RUNS": str(runs_dir)}, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return {line.split()[0]: line for line in r.stdout.splitlines() if line.split()[:1] and line.split()[0] in STAGES}

    assert all(" cached " in line for line in status().values()), status()
    with open(copy / "runner" / "adapters" / "guidellm.py", "a") as f:
        f.write("\n# edited by the status test\n")
    after = status()
    assert sorted(s for s, line in after.items() if " stale " in line) == ["loadtest", "report"], after
    assert "file runner/adapters/guidellm.py changed" in after["loadtest"]
    assert "input 'loadtest' changed" in after["report"] and "guidellm" not in after["report"]

    # `just compare A B`: same recipe and items, so quality differences are paired (and zero here)
    cmp = subprocess.run([sys.executable, "-m", "runner", "compare", man["run_id"], man2["run_id"]], cwd=REPO,
                         env={**os.environ, "FORGE_RUNS": str(runs_dir)}, capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stderr
    assert "Same recipe settings." in cmp.stdout and "**Verdict: B passes every gate.**" in cmp.stdout
    assert "| tuned | invoice_extraction | field_f1 |" in cmp.stdout and "+0.000 | [+0.000, +0.000]" in cmp.stdout
    assert "## Red-team" in cmp.stdout and "| malformed | tuned | 0/9 / 0/9 | 0/9 / 0/9 |" in cmp.stdout

    # `just report RUN` re-renders from stored artifacts alone
    rep = subprocess.run([sys.executable, "-m", "runner", "report", man["run_id"]], cwd=REPO,
                         env={**os.environ, "FORGE_RUNS": str(runs_dir)}, capture_output=True, text=True)
    assert rep.returncode == 0, rep.stderr
    assert man["dataset_version"] in (run_dir / "report" / "README.md").read_text()

    # `just replay RECIPE --log CAPTURE --candidate RUN`: what production answered (here the gold of three test
    # records, as a capture file holds them) against the run's deployment, started on loopback; replay.md joins the
    # run's pack and its README links it
    rows = [json.loads(x) for x in (run_dir / "stages" / "data" / "test.jsonl").read_text().splitlines()][:3]
    capture = tmp_path / "capture.jsonl"
    capture.write_text("".join(json.dumps({
        "request_id": f"c{i}", "route": "task", "document": r["document"], "answer": json.loads(r["gold"]),
        "document_sha256": hashlib.sha256(r["document"].encode()).hexdigest(), "model": "production",
        "latency_ms": 1000.0, "status": 200}) + "\n" for i, r in enumerate(rows)))
    rp = subprocess.run([sys.executable, "-m", "runner", "replay", str(recipe), "--log", str(capture), "--candidate",
                         man2["run_id"]], cwd=REPO, env={**os.environ, "FORGE_RUNS": str(runs_dir)},
                        capture_output=True, text=True, timeout=600)
    assert rp.returncode == 0 and "Traceback" not in rp.stderr, rp.stdout[-2000:] + rp.stderr[-2000:]
    run_dir2 = runs_dir / "tiny-e2e" / man2["run_id"]
    replayed = json.loads((run_dir2 / "report" / "replay.json").read_text())
    assert replayed["requests"] == 3 and replayed["gold"]["n"] == 3 and replayed["gold"]["production"] == 1.0
    assert replayed["latency_ms"]["candidate"]["n"] == 3 and replayed["meta"]["source"] == "capture"
    assert "[replay.md](replay.md)" in (run_dir2 / "report" / "README.md").read_text()
    assert (pack.parent / man2["run_id"] / "replay.md").is_file()

    # training, eval and the quantize gate are reproducible: re-running train to quantize (--from train --until
    # quantize) on the same data gives the same loss curves (seeds are set everywhere), hence the same models,
    # identical per-sample answers and metrics (bit-exact scoring at eval.concurrency 1), and the same quant answers
    # and verdicts (quantize.scoring_slots 1)
    train_dir, eval_dir = (run_dir / "stages" / "train").resolve(), (run_dir / "stages" / "eval").resolve()
    quant_dir = (run_dir / "stages" / "quantize").resolve()

    def curves():
        return {p.parent.name: [(c["step"], c.get("loss"), c.get("eval_loss"), c.get("grad_norm"))
                                for c in map(json.loads, p.read_text().splitlines())]
                for p in train_dir.glob("*/curve.jsonl")}

    def answers():
        return {(p.parent.name, p.name, r["doc_id"]): (r["filtered_resps"], r.get("field_f1"), r.get("accuracy"))
                for p in eval_dir.glob("*/samples_*.jsonl") for r in map(json.loads, p.read_text().splitlines())}

    def scores():
        m = json.loads((eval_dir / "stage.json").read_text())["metrics"]["models"]
        return {k: {t: {n: v for n, v in d.items() if n != "ci"} for t, d in m[k]["tasks"].items()} for k in m}

    def quant_answers():
        return {(p.parent.name, r["doc_id"]): r["filtered_resps"]
                for p in quant_dir.glob("*/samples_*.jsonl") for r in map(json.loads, p.read_text().splitlines())}

    def verdicts():
        v = json.loads((quant_dir / "stage.json").read_text())["metrics"]["verdicts"]
        return {t: (x["passed"], x["non_inferiority"]["discordant_items"], x["non_inferiority"]["drop"])
                for t, x in v.items()}

    before_curves, before, before_scores = curves(), answers(), scores()
    before_quant, before_verdicts = quant_answers(), verdicts()
    again = run_recipe(recipe, runs_dir, "--from", "train", "--until", "quantize")
    assert again.returncode == 0, again.stdout[-3000:]
    rerun = latest_manifest(runs_dir, "tiny-e2e")["stages"]
    assert rerun["train"]["status"] == rerun["eval"]["status"] == rerun["quantize"]["status"] == "ok"
    assert rerun["data"]["status"] == "cached"
    assert set(before_curves) == {"tuned", "tuned-v2"} and all(before_curves.values())
    assert curves() == before_curves
    assert len(before) >= 2 * (6 + 6) + 4 and answers() == before and scores() == before_scores
    assert len(before_quant) == 3 * n and quant_answers() == before_quant and verdicts() == before_verdicts

    # a server that rejects every request (prompts longer than its context) fails the eval with the model's
    # name and the logs, and scores nothing
    small = tmp_path / "tiny-small-ctx.yaml"
    small.write_text(f"extends: {recipe}\nname: tiny-small-ctx\neval:\n  ctx_size: 256\n  models: [base]\n")
    bad = run_recipe(small, runs_dir, "--only", "eval")
    assert bad.returncode == 1
    out = bad.stdout + bad.stderr
    assert "scoring model 'base' failed" in out and "llama-server-base.log" in out and "lm-eval-base-test.log" in out

    # `just iterate RECIPE`: data and train come from the cache; tuned answers a pool of new generated records,
    # the items it gets wrong join the training split, tuned-it is trained and judged against tuned
    it_recipe = tmp_path / "tiny-e2e-iterate.yaml"
    it_recipe.write_text(f"extends: {recipe}\niterate: {{name: tuned-it, pool: 12, max_added: 4, repeat: 2, "
                         "targeted: [{cause: other_field_value, where: {subtotal: null}, size: 3}]}\n")
    it = subprocess.run([sys.executable, "-m", "runner", "iterate", str(it_recipe)], cwd=REPO,
                        env={**os.environ, "FORGE_RUNS": str(runs_dir)}, capture_output=True, text=True, timeout=1200)
    assert it.returncode == 0, it.stdout[-3000:] + it.stderr[-3000:]
    assert "Traceback" not in it.stdout + it.stderr
    man_it = latest_manifest(runs_dir, "tiny-e2e")
    assert man_it["stages"]["data"]["status"] == man_it["stages"]["train"]["status"] == "cached"
    assert man_it["stages"]["iterate"]["status"] == "ok"
    it_dir = sorted((runs_dir / "tiny-e2e").iterdir())[-1] / "stages" / "iterate"
    im = man_it["stages"]["iterate"]["metrics"]
    mined = [json.loads(x) for x in (it_dir / "mined.jsonl").read_text().splitlines()]
    pool_rows = [json.loads(x) for x in (it_dir / "pool.jsonl").read_text().splitlines()]
    assert im["enabled"] and im["name"] == "tuned-it" and 1 <= im["mined"]["items"] == len(mined) <= 4
    aimed = [json.loads(x) for x in (it_dir / "targeted.jsonl").read_text().splitlines()]
    assert len(aimed) == 3 and all(json.loads(r["gold"])["subtotal"] is None for r in aimed)
    assert im["targeted"][0]["added"] == 3 and im["targeted"][0]["cause"] == "other_field_value"
    assert len((it_dir / "train_v2.jsonl").read_text().splitlines()) == len(train_rows) + 2 * len(mined) + 3
    assert im["pool"]["kept"] == len(pool_rows) and im["pool"]["removed"]["held_out_slice"] >= 1
    held = man_it["recipe"]["data"]["split"]["holdout"]
    assert not [r for r in pool_rows if any(r[c] in vs for c, vs in held.items())]
    judged_ids = {json.loads(x)["id"] for split in ("train", "eval", "test")
                  for x in (run_dir / "stages" / "data" / f"{split}.jsonl").read_text().splitlines()}
    assert not judged_ids & {r["id"] for r in pool_rows + aimed} and not {r["id"] for r in pool_rows} & {r["id"] for r in aimed}
    assert {r["id"] for r in mined} <= {r["id"] for r in pool_rows}
    head = im["comparisons"]["tuned-it-vs-tuned"]["invoice_extraction"]["field_f1"]
    assert head["n"] == n and im["scores"]["tuned-it"]["invoice_extraction"]["field_f1"]["n"] == n
    assert (im["kept"] == "tuned-it") == all(v["passed"] for v in im["gates"]) and im["gates"]
    it_pack = runs_dir.parent / "reports" / "iterations" / "tiny-e2e" / man_it["run_id"]
    page = (it_pack / "iteration.md").read_text()
    assert '**Targeted** (iterate.targeted): fresh generated records whose gold has the pattern behind a cause, each ' \
           'added once: 3 matching `{"subtotal": null}` (for other_field_value)' in page
    assert f"**Kept: {im['kept']}.**" in page and "## Gates" in page and "## Failure causes: base, tuned, tuned-it" in page
    assert "[iteration.md](iteration.md)" in (it_pack / "README.md").read_text()
    assert sorted(p.name for p in pack.parent.iterdir()) == [man2["run_id"]]  # the recipe's own pack stays
    # a name the recipe already trains is refused, naming the key
    clash = tmp_path / "tiny-e2e-clash.yaml"
    clash.write_text(f"extends: {recipe}\niterate: {{name: tuned-v2}}\n")
    bad = subprocess.run([sys.executable, "-m", "runner", "iterate", str(clash)], cwd=REPO,
                         env={**os.environ, "FORGE_RUNS": str(runs_dir)}, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 1 and "iterate.name: 'tuned-v2' is already a model" in bad.stdout + bad.stderr
    # the iterated model goes on to quantize: the same loop on in the recipe (its stage comes from the cache), the
    # quants paired against tuned-it's own answers from the loop; a name neither stage has is refused, naming both
    deploy_it = tmp_path / "tiny-e2e-deploy-iterated.yaml"
    deploy_it.write_text(f"extends: {it_recipe}\niterate: {{enabled: true}}\nquantize: {{model: tuned-it}}\n")
    q = run_recipe(deploy_it, runs_dir, "--until", "quantize")
    assert q.returncode == 0, q.stdout[-3000:] + q.stderr[-3000:]
    man_q = latest_manifest(runs_dir, "tiny-e2e")
    assert man_q["stages"]["iterate"]["status"] == "cached" and man_q["stages"]["quantize"]["status"] == "ok"
    qm = man_q["stages"]["quantize"]["metrics"]
    assert qm["model"] == "tuned-it" and qm["model_from"] == "iterate" and qm["hf_model"].endswith("tuned-it/merged")
    assert qm["files"]["f16"]["path"] == str(it_dir.resolve() / "tuned-it" / "model-f16.gguf")
    it_f16 = [json.loads(x) for x in (it_dir / "tuned-it" / "samples_invoice_extraction.jsonl").read_text().splitlines()]
    for t in man_q["recipe"]["quantize"]["types"]:
        assert qm["quality"][t]["vs_f16"]["field_f1"]["n"] == len(it_f16) == n
    q_page = (sorted((runs_dir / "tiny-e2e").iterdir())[-1] / "stages" / "quantize" / "quantization.md").read_text()
    assert "Model `tuned-it` (the iterate stage's model: [iteration.md]" in q_page
    unknown = tmp_path / "tiny-e2e-deploy-unknown.yaml"
    unknown.write_text(f"extends: {deploy_it}\nquantize: {{model: tuned-x}}\n")
    bad = run_recipe(unknown, runs_dir, "--until", "quantize")
    assert bad.returncode == 1 and "Traceback" not in bad.stdout + bad.stderr
    assert "quantize.model 'tuned-x' has no f16 GGUF from the eval stage nor the iterate stage (its model is " \
           "'tuned-it')" in bad.stdout + bad.stderr


KIND_RECIPES = {"extraction": "purchase-orders", "classification": "ticket-routing", "generation": "de-en-translation"}


def test_a_task_of_each_kind_runs_every_stage_from_configuration_only(tiny_model, tmp_path, runs_dir):
    """tests/tasks/ holds one task of each kind: a YAML, a schema or label list, and data. No Python file was written
    for any of them; each goes through every stage (offline: the generation kind loads MiniLM inside lm-eval)."""
    task_files = sorted(p.relative_to(REPO / "tests" / "tasks").as_posix() for p in (REPO / "tests" / "tasks").rglob("*")
                        if p.is_file() and "__pycache__" not in p.parts)
    assert not [f for f in task_files if f.endswith(".py")], task_files
    for kind, name in KIND_RECIPES.items():
        recipe = tmp_path / f"{name}.yaml"
        recipe.write_text(f"extends: {REPO / 'tests' / 'recipes' / 'kinds' / f'{name}.yaml'}\n"
                          f"base_model: {{source: path, path: {tiny_model}}}\n")
        trace = tmp_path / f"{name}.trace" if kind == "generation" else None
        r = run_recipe(recipe, runs_dir, trace=trace)
        assert r.returncode == 0, (kind, r.stdout[-3000:] + r.stderr[-3000:])
        assert "Traceback" not in r.stdout + r.stderr, r.stdout[-3000:] + r.stderr[-3000:]
        if trace:
            assert trace.stat().st_size > 0 and egress.outbound(trace) == []
        man = latest_manifest(runs_dir, f"tiny-{name}")
        st = man["stages"]
        assert [s for s in STAGES if st[s]["status"] in ("ok", "suspect")] == STAGES, {s: st[s]["status"] for s in STAGES}
        ev = st["eval"]["metrics"]
        task = ev["task"]
        assert task["kind"] == kind and task["headline"] in ev["models"]["tuned"]["tasks"][task["name"]]["ci"]
        assert set(ev["comparisons"]["tuned"][task["name"]]) == set(task["metrics"])
        run_dir = sorted((runs_dir / f"tiny-{name}").iterdir())[-1]
        analysis = json.loads((run_dir / "stages" / "eval" / "analysis.json").read_text())
        quality_md = (run_dir / "stages" / "eval" / "quality.md").read_text()
        assert f"## {task['name']} (test split," in quality_md and f"### By {task['slices'][0]}" in quality_md
        qm = st["quantize"]["metrics"]
        assert qm["verdicts"]["q8_0"]["non_inferiority"]["n"] == qm["quality"]["q8_0"]["ci"][task["headline"]]["n"]
        gw = st["serve"]["metrics"]["gateway"]["task"]
        assert gw["route"] == f"/v1/tasks/{task['name']}" and gw["status"] in (200, 502)
        assert st["loadtest"]["metrics"]["levels"][0]["requests"]["successful"] > 0
        dc = st["serve"]["metrics"]["decoding_check"]["primary"]
        if kind == "extraction":
            assert set(analysis["breakdowns"]) == {"field", "style", "length"}
            assert list(analysis["breakdowns"]["field"]) == ["po_number", "order_date", "delivery_date", "supplier",
                                                             "currency", "total"]
            assert "consistent" in task["metrics"] and dc["constrainable"]
        elif kind == "classification":
            assert set(analysis["breakdowns"]) == {"class", "language", "length"}
            # eval.baselines_stop_early with no gate naming a baseline: decided at the first look (3 items)
            assert ev["baselines_stop_early"]["stopped"] is True and ev["baselines_stop_early"]["checks"] == []
            assert ev["baselines"]["base-fewshot-constrained"]["tasks"][task["name"]]["samples"] == 3
            assert ev["baseline_comparisons"]["base-fewshot-constrained"]["tuned"][task["headline"]]["n"] == 3
            assert "**Stopped early: the prompting baselines rest on the first 3" in quality_md
            # loadtest.direct_comparison: false: no direct ladder, the optimization's "after" measured on its own
            lt = st["loadtest"]["metrics"]
            assert lt["direct_levels"] is None and lt["baseline"]["after"].startswith("the engine alone")
            assert [c["streams"] for c in lt["baseline"]["comparison"]] == [1] and "after" in lt["ladder_engines"]
            conf = analysis["confusion"]["tuned"]
            assert conf["labels"] == ["billing", "shipping", "technical", "account"]
            assert sum(sum(row.values()) for row in conf["matrix"].values()) == ev["models"]["tuned"]["tasks"][task["name"]]["samples"]
            assert "### Confusion matrix of tuned" in quality_md
            # eval.classical_baseline: TF-IDF + logistic regression fitted on train, paired with every model
            cb, n_items = ev["classical_baseline"], ev["models"]["tuned"]["tasks"][task["name"]]["samples"]
            assert cb["name"] == "tfidf-logreg" and cb["C"] in (1, 10) and set(cb["dev_accuracy"]) <= {"1", "10"}
            assert cb["tasks"][task["name"]]["samples"] == n_items
            assert cb["train_items"] == sum(st["data"]["metrics"]["labels"]["train"].values())
            assert ev["classical_comparisons"]["tuned"][task["headline"]]["n"] == n_items
            per_language = analysis["classical"]["breakdowns"]["language"]
            assert per_language and all({"tfidf-logreg", "tuned", "tuned-vs-tfidf-logreg"} <= set(r)
                                        for r in per_language.values())
            assert "## Against a classical baseline" in quality_md and "by language: every model against" in quality_md
            assert "Against the classical baseline (`tfidf-logreg`" in \
                (run_dir / "stages" / "report" / "README.md").read_text()
            # the split stratified by label (and language): 4 test items over (label, language) strata
            labels = st["data"]["metrics"]["labels"]
            assert set(labels["train"]) == set(conf["labels"]) and len(labels["test"]) >= 3
            assert "## Labels per split" in (run_dir / "stages" / "data" / "data_audit.md").read_text()
            # decoding constrained to the labels: every answer is a label, even from a random-weight model
            assert dc["constrained"]["label_valid"] == 1.0 and gw["status"] == 200 and gw["answer"] in conf["labels"]
            # serve.routing cascade: q8_0 first, on a thread of its own; measured against each model alone
            serving = json.loads((run_dir / "stages" / "serve" / "serving.json").read_text())
            assert serving["task"]["cascade"]["cheap"] == "q8_0" and (serving["threads"], serving["cheap"]["threads"]) == (1, 1)
            ro = lt["routing"]
            n_test = ev["models"]["tuned"]["tasks"][task["name"]]["samples"]
            assert list(ro["labels"]) == ["deployed", "cheap", "cascade"] and ro["documents"] == n_test
            assert all(v["documents"] == n_test for v in ro["variants"].values())
            assert ro["variants"]["deployed"]["vs_deployed"] is None
            assert set(ro["variants"]["cascade"]["vs_deployed"]) == set(task["metrics"])
            tiers = ro["variants"]["cascade"]["tiers"]   # constrained to the labels: the cheap tier's answers pass
            assert tiers and sum(tiers.values()) == ro["variants"]["cascade"]["answered_valid"] and tiers.get("cheap")
            assert ro["variants"]["deployed"]["tiers"] is None
            perf_md = (run_dir / "stages" / "loadtest" / "perf_cost.md").read_text()
            assert "## Routing: the cascade against each of its models alone" in perf_md
            assert "cascade q8_0 → f16, 1 + 1 threads" in perf_md and "- **Routing**" in perf_md
        else:
            assert set(analysis["breakdowns"]) == {"domain", "length"}
            assert {"chrf", "bleu", "rouge_l", "similarity"} <= set(task["metrics"]) and not dc["constrainable"]
            sim = ev["models"]["tuned"]["tasks"][task["name"]]["ci"]["similarity"]
            assert 0.0 <= sim["value"] <= 1.0
        pack = runs_dir.parent / "reports" / f"tiny-{name}" / man["run_id"]
        assert "### 1. Did quality improve" in (pack / "README.md").read_text()
