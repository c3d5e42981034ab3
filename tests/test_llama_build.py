"""The llama.cpp build ladder: which configurations a CPU gets, the self-test on the kept build, and the fallback
when a build crashes (real crashing binaries: a compiled `__builtin_trap()` dies with SIGILL, as AMX kernels did)."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from runner import env, llama_build, setup

CONFIGS = [
    {"name": "native", "isa": "all"},
    {"name": "native-no-amx", "isa": "all", "without": ["amx_tile", "amx_int8", "amx_bf16"]},
    {"name": "x86-64-v3", "isa": ["sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"]},
    {"name": "portable", "isa": []},
]
XEON_AMX = set("sse4_2 avx avx2 fma f16c bmi2 avx512f avx512cd avx512vl avx512dq avx512bw avx512_vnni avx512_bf16 "
               "avx512vbmi avx_vnni amx_tile amx_int8 amx_bf16".split())


def test_the_pyproject_ladder_is_the_one_tested_here():
    assert list(env.llama_cpp().builds) == CONFIGS


def test_an_amx_cpu_gets_every_rung_with_amx_only_in_the_first():
    rungs = llama_build.plan(CONFIGS, XEON_AMX, "x86_64")
    assert [r.name for r in rungs] == ["native", "native-no-amx", "x86-64-v3", "portable"]
    assert not any(r.skipped for r in rungs)
    assert "-DGGML_AMX_INT8=ON" in rungs[0].cmake and "-DGGML_AMX_INT8=OFF" in rungs[1].cmake
    assert "-DGGML_AVX512=ON" in rungs[1].cmake and "-DGGML_AVX512=OFF" in rungs[2].cmake
    assert all("-DGGML_NATIVE=OFF" in r.cmake for r in rungs)   # explicit instruction sets, never -march=native
    assert rungs[3].isa == [] and "-DGGML_AVX2=OFF" in rungs[3].cmake


def test_an_avx2_cpu_skips_the_rungs_that_would_build_the_same_thing():
    rungs = llama_build.plan(CONFIGS, {"sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"}, "x86_64")
    assert [r.skipped for r in rungs] == [None, "the same build as 'native' on this CPU",
                                          "the same build as 'native' on this CPU", None]


def test_an_old_cpu_skips_instruction_sets_it_lacks_and_arm_builds_native_then_portable():
    rungs = llama_build.plan(CONFIGS, {"sse4_2", "avx"}, "x86_64")
    assert rungs[2].skipped == "this CPU lacks avx2, fma, f16c, bmi2"
    arm = llama_build.plan(CONFIGS, {"asimd", "sve"}, "aarch64")
    assert [(r.name, r.cmake) for r in arm if not r.skipped] == [("native", ["-DGGML_NATIVE=ON"]),
                                                               ("portable", ["-DGGML_NATIVE=OFF"])]


def test_forcing_a_build_starts_the_ladder_there_and_a_wrong_name_lists_the_choices():
    rungs = llama_build.plan(CONFIGS, XEON_AMX, "x86_64", start="portable")
    assert [r.name for r in rungs if not r.skipped] == ["portable"]
    assert "FORGE_LLAMA_BUILD=portable" in rungs[0].skipped
    with pytest.raises(SystemExit, match="choose from: native, native-no-amx, x86-64-v3, portable"):
        llama_build.plan(CONFIGS, XEON_AMX, "x86_64", start="fastest")


def test_exit_statuses_are_named():
    assert llama_build.describe_exit(-4) == "killed by SIGILL (illegal instruction)"
    assert llama_build.describe_exit(None) == "hung (stopped after its time limit)"
    assert llama_build.describe_exit(2) == "exit code 2"


@pytest.fixture(scope="module")
def built() -> env.LlamaCpp:
    return setup.ensure_llama_cpp()


@pytest.fixture(scope="module")
def model() -> Path:
    return setup.ensure_base_gguf(env.llama_cpp().selftest_model)


def test_the_kept_build_passes_its_selftest_on_every_quant_type(built, model, tmp_path):
    """The self-test set-up ran, run again on the build in the cache: every quant type a recipe can ask for is
    quantized, benchmarked (a batched 64-token prompt) and served (two long prompts at once)."""
    rec = json.loads(built.build_record.read_text())
    chosen = next(t for t in rec["tried"] if t["name"] == rec["chosen"])
    assert chosen["passed"] and chosen["selftest"]["passed"] and rec["why"]
    assert all(t.get("skipped") or t["failures"] for t in rec["tried"][:rec["tried"].index(chosen)])
    types = ["f16", *llama_build.QUANT_TYPES]
    result = llama_build.selftest(built.bin("llama-server").parent, model, types, tmp_path / "logs", threads=2)
    assert result["passed"], result["failures"]
    assert list(result["quant_types"]) == types
    for row in result["quant_types"].values():
        assert row["quantize"]["ok"] and row["bench"]["prompt_tokens_per_s"] > 0 and row["bench"]["gen_tokens_per_s"] > 0
        assert row["server"]["ok"] and min(row["server"]["prompt_tokens"]) >= 100


def crashing_build(tmp_path: Path, real_bin: Path, crash: str) -> Path:
    """A copy of the real build whose `crash` binary executes an illegal instruction on start."""
    d = tmp_path / f"crash-{crash}"
    d.mkdir()
    for name in ("llama-quantize", "llama-bench", "llama-server"):
        (d / name).symlink_to(real_bin / name)
    src = tmp_path / "trap.c"
    src.write_text("int main(void) { __builtin_trap(); }\n")
    (d / crash).unlink()
    subprocess.run([shutil.which("cc") or "gcc", str(src), "-o", str(d / crash)], check=True)
    return d


def test_a_build_that_crashes_fails_its_selftest_and_the_ladder_takes_the_next(built, model, tmp_path):
    real = built.bin("llama-server").parent
    dirs = {"bench-crashes": crashing_build(tmp_path, real, "llama-bench"),
            "server-crashes": crashing_build(tmp_path, real, "llama-server"), "good": real}
    rungs = [llama_build.Rung(n, [f"-DTEST_RUNG={n}"], ["avx2"]) for n in dirs]
    said: list[str] = []
    ladder = llama_build.Ladder(rungs, lambda r: dirs[r.name],
                                lambda r, b: llama_build.selftest(b, model, ["q8_0"], tmp_path / r.name, threads=2),
                                said.append)
    rec = ladder.climb()
    assert rec["chosen"] == "good" and rec["cmake"] == ["-DTEST_RUNG=good"]
    assert rec["tried"][0]["failures"] == ["llama-bench q8_0: killed by SIGILL (illegal instruction)"]
    assert rec["tried"][1]["failures"] == ["llama-server q8_0: llama-server killed by SIGILL (illegal instruction) "
                                           "while loading"]
    assert "'bench-crashes' failed its self-test (llama-bench q8_0: killed by SIGILL" in rec["why"]
    assert any("rebuilding with the next safer configuration, 'server-crashes'" in s for s in said)
    assert any("rebuilding with the next safer configuration, 'good'" in s for s in said)


def test_when_no_configuration_survives_setup_fails_loudly_with_the_flags_it_tried(built, model, tmp_path):
    bad = crashing_build(tmp_path, built.bin("llama-server").parent, "llama-bench")
    rungs = [llama_build.Rung("first", ["-DGGML_AVX2=ON"], ["avx2"]),
             llama_build.Rung("skipped-one", [], ["amx_tile"], skipped="this CPU lacks amx_tile"),
             llama_build.Rung("last", ["-DGGML_AVX2=OFF"], [])]

    def build(r):
        if r.name == "last":
            raise SystemExit("[setup] command failed (2): cmake --build")
        return bad

    ladder = llama_build.Ladder(rungs, build, lambda r, b: llama_build.selftest(b, model, ["q4_0"], tmp_path / r.name,
                                                                                 threads=2), lambda s: None)
    with pytest.raises(llama_build.BuildFailed) as e:
        ladder.climb()
    msg = str(e.value)
    assert "no llama.cpp build configuration passed its self-test" in msg
    assert "first: llama-bench q4_0: killed by SIGILL (illegal instruction)\n      cmake -DGGML_AVX2=ON" in msg
    assert "skipped-one: this CPU lacks amx_tile" in msg
    assert "last: build failed: [setup] command failed (2): cmake --build\n      cmake -DGGML_AVX2=OFF" in msg
    assert "FORGE_LLAMA_BUILD" in msg
