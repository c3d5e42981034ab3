"""The runner's plan/cache/record logic, on three small real stage modules (tests/fake_stages)."""
import importlib
import json
from pathlib import Path

import pytest

from runner import pipeline
from runner.recipe import Recipe


@pytest.fixture
def fake(monkeypatch, tmp_path):
    monkeypatch.setattr(pipeline, "STAGES", ("first", "second", "third"))
    monkeypatch.setattr(pipeline, "stage_module", lambda n: importlib.import_module(f"tests.fake_stages.{n}"))
    counter = tmp_path / "counter.txt"
    counter.touch()
    monkeypatch.setenv("FAKE_COUNTER", str(counter))

    def ran():
        lines = counter.read_text().split()
        counter.write_text("")
        return lines
    return ran


def make(first=1, add=2, minimum=0, crash=False, seed=42) -> Recipe:
    data = {"name": "fake", "seed": seed, "first": {"value": first}, "second": {"add": add, "crash": crash},
            "third": {"min": minimum}, "data": {"generator": {"seed": 7}}}
    return Recipe(path=Path("fake.yaml"), data=data, files=[Path("fake.yaml")])


def stages_of(run_dir):
    return json.loads((run_dir / "manifest.json").read_text())["stages"]


def test_second_run_redoes_nothing(fake):
    pipeline.execute(make())
    assert fake() == ["first", "second", "third"]
    run_dir = pipeline.execute(make())
    assert fake() == []
    assert {s["status"] for s in stages_of(run_dir).values()} == {"cached"}
    assert all(s["cache_hit"] for s in stages_of(run_dir).values())


def test_changed_section_reruns_it_and_everything_downstream(fake):
    pipeline.execute(make())
    fake()
    pipeline.execute(make(add=5))
    assert fake() == ["second", "third"]
    pipeline.execute(make(minimum=-1))
    assert fake() == ["third"]


def test_keys_follow_sections_and_inputs(fake):
    k1, k2, k3 = pipeline.plan(make().data), pipeline.plan(make(first=9).data), pipeline.plan(make(minimum=3).data)
    assert k1["first"] != k2["first"] and k1["second"] != k2["second"] and k1["third"] != k2["third"]
    assert k1["first"] == k3["first"] and k1["second"] == k3["second"] and k1["third"] != k3["third"]
    # a key covers only the stage's sections: the seed changes 'first' (it reads seed) and so everything after it
    k4 = pipeline.plan(make(seed=1).data)
    assert k4["first"] != k1["first"]


def test_from_forces_that_stage_and_after(fake):
    pipeline.execute(make())
    fake()
    pipeline.execute(make(), start="second")
    assert fake() == ["second", "third"]


def test_force_reruns_everything(fake):
    pipeline.execute(make())
    fake()
    pipeline.execute(make(), force=True)
    assert fake() == ["first", "second", "third"]


def test_only_runs_one_stage_and_needs_cached_inputs(fake):
    with pytest.raises(pipeline.RunFailed, match="needs the output of first"):
        pipeline.execute(make(), only="second")
    assert fake() == []
    pipeline.execute(make(), only="first")
    assert fake() == ["first"]
    run_dir = pipeline.execute(make(), only="second")
    assert fake() == ["second"]
    assert stages_of(run_dir)["third"]["status"] == "skipped"


def test_unknown_stage_name_is_rejected(fake):
    with pytest.raises(SystemExit, match="unknown stage 'trian'"):
        pipeline.execute(make(), only="trian")


def test_crash_keeps_earlier_outputs_and_the_next_run_resumes(fake, runs_dir):
    with pytest.raises(pipeline.RunFailed, match="crashed on purpose") as e:
        pipeline.execute(make(crash=True))
    assert e.value.stage == "second"
    assert fake() == ["first"]
    run_dir = sorted((runs_dir / "fake").iterdir())[-1]
    man = json.loads((run_dir / "manifest.json").read_text())
    assert man["status"] == "failed" and man["failure"]["stage"] == "second"
    assert man["stages"]["second"]["status"] == "failed"
    assert "crashed on purpose" in man["stages"]["second"]["error"]
    assert Path(man["stages"]["second"]["log"]).read_text().count("RuntimeError") >= 1
    assert man["stages"]["third"]["status"] == "pending"
    # no partial output left looking complete
    assert not list((runs_dir / "cache" / "second").glob("*/stage.json"))
    assert not list((runs_dir / "cache" / "second").glob(".*tmp*"))
    # fixed: resumes from the cached first stage
    pipeline.execute(make())
    assert fake() == ["second", "third"]


def test_gated_stage_stops_the_run_and_marks_it(fake, runs_dir):
    with pytest.raises(pipeline.RunFailed) as e:
        pipeline.execute(make(minimum=100))
    assert e.value.status == "gated" and "double 6 < min 100" in str(e.value)
    run_dir = sorted((runs_dir / "fake").iterdir())[-1]
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "gated"
    # a cached gated stage still gates the next run
    fake()
    with pytest.raises(pipeline.RunFailed):
        pipeline.execute(make(minimum=100))
    assert fake() == []


def test_manifest_records_what_a_run_needs_to_be_reproduced(fake, runs_dir):
    run_dir = pipeline.execute(make())
    man = json.loads((run_dir / "manifest.json").read_text())
    r = make()
    assert man["recipe_hash"] == r.hash and man["recipe"] == r.data
    assert man["status"] == "ok" and man["dataset_version"] is None  # no 'data' stage among the fakes
    assert set(man["git"]) == {"commit", "dirty"}
    assert man["hardware"]["cores"] >= 1 and man["hardware"]["memory_gib"] > 0
    assert man["seeds"] == {"recipe": 42, "data_generator": 7}
    assert "core" in man["packages"] and "jsonschema" in {k.lower() for k in man["packages"]["core"]}
    assert "llama.cpp" in man["packages"]
    for name in ("first", "second", "third"):
        s = man["stages"][name]
        assert s["status"] == "ok" and s["cache_hit"] is False and s["seconds"] >= 0 and s["key"]
    assert man["stages"]["second"]["metrics"] == {"sum": 3}
    index = [json.loads(x) for x in (runs_dir / "index.jsonl").read_text().splitlines()]
    assert index[-1]["run_id"] == man["run_id"] and index[-1]["status"] == "ok"
    assert index[-1]["stages"] == {"first": "ok", "second": "ok", "third": "ok"}
    # stage outputs are reachable from the run folder
    assert (run_dir / "stages" / "third" / "out.txt").read_text() == "6"


def test_a_tool_that_runs_past_its_limit_is_stopped_and_named(tmp_path):
    import sys
    import time

    from runner import proc
    from runner.stage import StageError
    t0 = time.time()
    with pytest.raises(StageError, match=r"sleeper ran past its 1 s limit"):
        proc.run([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
                 tmp_path / "t.log", what="sleeper", timeout=1)
    assert time.time() - t0 < 15 and "started" in (tmp_path / "t.log").read_text()


def test_status_says_cached_or_stale_and_what_changed(fake):
    from runner import status
    rows = status.check(make())
    assert {r.state for r in rows} == {"stale"} and rows[0].reasons == ["no stored output for this recipe yet"]
    pipeline.execute(make())
    assert [(r.stage, r.state) for r in status.check(make())] == [("first", "cached"), ("second", "cached"),
                                                                  ("third", "cached")]
    rows = {r.stage: r for r in status.check(make(add=5))}
    assert rows["first"].state == "cached"
    assert rows["second"].state == "stale" and rows["second"].reasons == ["recipe section 'second' changed"]
    assert rows["third"].state == "stale" and rows["third"].reasons == ["input 'second' changed"]
    assert "stale: second, third" in status.render(list(rows.values()))


def test_status_names_changed_files_tools_and_fingerprints():
    from runner import status
    old = {"sections": {"eval": "a"}, "inputs": {"data": "k1"}, "tools": {"llama": "b1"},
           "code": {"runner/x.py": "1", "runner/y.py": "2"}, "fingerprint": "f"}
    assert status.changes(old, old) == ["its earlier output was recorded under another key format"]
    new = {**old, "tools": {"llama": "b2"}, "code": {"runner/x.py": "9", "runner/z.py": "3"}, "fingerprint": "g"}
    assert status.changes(old, new) == ["tool 'llama' changed", "file runner/x.py changed",
                                        "file runner/y.py no longer used", "file runner/z.py added",
                                        "base model or source data files changed (fingerprint)"]
    many = {**old, "code": {f"runner/m{i}.py": "x" for i in range(9)}}
    assert status.changes({**old, "code": {}}, many)[-1] == "and 3 more files"


def test_a_stage_key_covers_the_code_it_imports_and_runs_found_from_the_source():
    from runner import code_deps
    from runner.env import REPO
    loadtest = {str(f.relative_to(REPO)) for f in pipeline.code_files(pipeline.stage_module("loadtest"))}
    report = {str(f.relative_to(REPO)) for f in pipeline.code_files(pipeline.stage_module("report"))}
    # imported directly, imported by an import, run as `python -m runner.gateway`, and named in RUNS
    assert {"runner/adapters/guidellm.py", "runner/serving/supervisor.py", "runner/gateway/__main__.py",
            "runner/gateway/app.py", "runner/__init__.py"} <= loadtest
    assert any(f.startswith("evals/") for f in loadtest)
    assert "runner/adapters/guidellm.py" not in report and "runner/reports/pack.py" in report
    assert code_deps.closure("runner.stage") == [REPO / "runner" / "__init__.py", REPO / "runner" / "stage.py"]
    # code another tool imports by name: the seeding wrapper and the CPU bf16 plugin Axolotl loads from its config
    train = {str(f.relative_to(REPO)) for f in pipeline.code_files(pipeline.stage_module("train"))}
    assert {"runner/adapters/axolotl_entry.py", "runner/adapters/axolotl_cpu_amp.py"} <= train


def test_runner_has_no_import_cycle():
    from runner import code_deps
    assert code_deps.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}) == [["a", "b", "c"], ["e"]]
    assert code_deps.cycles(code_deps.import_graph("runner")) == []


def test_git_state_counts_code_changes_not_published_packs(tmp_path, monkeypatch):
    """A published evidence pack (reports/) is output: an untracked one does not make the next run 'dirty'; an
    untracked or changed file anywhere else does."""
    import subprocess

    from runner import manifest

    def git(*a):
        subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)
    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "c")
    monkeypatch.setattr(manifest, "REPO", tmp_path)
    assert manifest.git_state()["dirty"] is False
    (tmp_path / "reports" / "task" / "run-1").mkdir(parents=True)
    (tmp_path / "reports" / "task" / "run-1" / "README.md").write_text("pack\n")
    assert manifest.git_state()["dirty"] is False
    (tmp_path / "new_module.py").write_text("y = 2\n")
    assert manifest.git_state()["dirty"] is True
