"""The GPU engine, tested where it can be here (no CUDA): the SGLang replicas and router a recipe generates,
their GPU slices, and the clear refusal on a machine without a GPU."""
from pathlib import Path

import pytest

from runner import recipe
from runner.adapters import sglang
from runner.serving import deploy
from runner.stage import StageError

REPO = Path(__file__).resolve().parent.parent


def serving_for(tmp_path, serve_yaml: str, hf_dir="/models/tuned") -> dict:
    f = tmp_path / "gpu.yaml"
    f.write_text(f"extends: {REPO / 'recipes' / 'invoice-extraction.yaml'}\nname: gpu\nserve:\n{serve_yaml}")
    cfg = recipe.load(f).data["serve"]
    return deploy.spec(cfg, Path("/q/model-q8_0.gguf"), Path(hf_dir) if hf_dir else None,
                       [{"gguf": Path("/q/base.gguf"), "alias": "fallback-base", "routes": ["chat", "task"]}], 8)


def test_two_replicas_with_tensor_parallel_get_gpu_slices_and_a_router(tmp_path):
    s = serving_for(tmp_path, "  engine: sglang\n  replicas: 2\n  parallel: 16\n"
                              "  sglang: {tp_size: 2, mem_fraction_static: 0.8, router_policy: round_robin}\n")
    plan = sglang.plan(s, [31001, 31002], 31000)
    cmds = [r["command"] for r in plan["replicas"]]
    assert [r["env"]["CUDA_VISIBLE_DEVICES"] for r in plan["replicas"]] == ["0,1", "2,3"] and plan["gpus"] == 4
    for c, port in zip(cmds, (31001, 31002)):
        assert c[:3] == ["python", "-m", "sglang.launch_server"]
        flags = {a: (b if not b.startswith("--") else True) for a, b in zip(c[3:], c[4:] + ["--"]) if a.startswith("--")}
        assert flags["--model-path"] == "/models/tuned" and flags["--tp-size"] == "2" and flags["--port"] == str(port)
        assert flags["--host"] == "127.0.0.1" and flags["--max-running-requests"] == "16"
        assert flags["--mem-fraction-static"] == "0.8" and flags["--context-length"] == "4096"
        assert flags["--enable-metrics"] is True
    router = plan["router"]["command"]
    assert router[:3] == ["python", "-m", "sglang_router.launch_router"]
    assert router[router.index("--worker-urls") + 1:router.index("--policy")] == \
        ["http://127.0.0.1:31001", "http://127.0.0.1:31002"]
    assert router[router.index("--policy") + 1] == "round_robin" and plan["endpoint"] == "http://127.0.0.1:31000"


def test_one_replica_needs_no_router(tmp_path):
    s = serving_for(tmp_path, "  engine: sglang\n")
    plan = sglang.plan(s, [32001], 32000)
    assert plan["router"] is None and plan["endpoint"] == "http://127.0.0.1:32001"
    assert plan["replicas"][0]["env"]["CUDA_VISIBLE_DEVICES"] == "0"


def test_sglang_needs_the_hf_model(tmp_path):
    with pytest.raises(ValueError, match="Hugging Face model directory"):
        sglang.plan(serving_for(tmp_path, "  engine: sglang\n", hf_dir=None), [1], 2)


@pytest.mark.skipif(sglang.available(), reason="this machine can run SGLang")
def test_without_a_gpu_the_stage_says_so_and_shows_the_commands(tmp_path):
    s = serving_for(tmp_path, "  engine: sglang\n  replicas: 2\n")
    with pytest.raises(StageError) as e, deploy.start(s, tmp_path):
        pass
    msg = str(e.value)
    assert "needs CUDA GPUs" in msg and msg.count("sglang.launch_server") == 2 and "launch_router" in msg
