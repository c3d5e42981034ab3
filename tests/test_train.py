"""Train stage pieces that need no training run: curve checks, generated Axolotl/DeepSpeed/FSDP configs
(validated by Axolotl's own schema), launch commands, and the GPU path's refusal on a CPU machine."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.adapters import axolotl
from runner import training as train

REPO = Path(__file__).resolve().parent.parent


def curve(losses, evals=()):
    c = [{"step": i + 1, "loss": v} for i, v in enumerate(losses)]
    c += [{"step": s, "eval_loss": v} for s, v in evals]
    return c


def test_curve_checks():
    good = [1.0, 0.8, 0.6, 0.5, 0.4, 0.35, 0.3, 0.28]
    assert train.curve_checks(curve(good)) == ("ok", [])
    assert train.curve_checks(curve(good[:4] + [math.nan] + good[5:]))[0] == "failed"
    status, why = train.curve_checks(curve([1.0, 0.9, 2.5, 4.0, 6.0, 7.5, 8.0, 9.0]))
    assert status == "failed" and "diverged" in why[0]
    status, why = train.curve_checks(curve([1.0, 0.9, 0.8, 3.5, 2.0, 0.9, 0.7, 0.6]))
    assert status == "suspect" and "unstable: loss spiked to 3.500" in why[0] and "at step 4" in why[0]
    status, why = train.curve_checks(curve([1.0, 1.02, 0.99, 1.01, 1.0, 1.03, 1.01, 1.02]))
    assert status == "suspect" and "did not go down" in why[0]
    overfit = curve([1.0, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02], evals=[(2, 0.9), (4, 0.6), (6, 0.7), (8, 0.9)])
    status, why = train.curve_checks(overfit)
    assert status == "suspect" and "overfitting" in why[0]


def test_variants_override_the_base_hyperparameters(tmp_path):
    from runner.recipe import load
    p = tmp_path / "r.yaml"
    p.write_text("name: v\ntask: invoice_extraction\ntrain:\n  learning_rate: 0.001\n  lora: {r: 8}\n  variants:\n"
                 "    tuned-v2: {learning_rate: 0.0001, lora: {alpha: 64}, axolotl: {warmup_ratio: 0.1}}\n")
    v = train.variants(load(p).data["train"])
    assert set(v) == {"tuned", "tuned-v2"}
    assert v["tuned"][0]["learning_rate"] == 0.001 and v["tuned-v2"][0]["learning_rate"] == 0.0001
    assert v["tuned-v2"][0]["lora"] == {"r": 8, "alpha": 64, "dropout": 0.05, "target_linear": True}
    assert v["tuned-v2"][1] == {"warmup_ratio": 0.1} and v["tuned"][1] == {}


def _hp():
    from runner.recipe import load
    return train.variants(load(REPO / "recipes" / "invoice-extraction.yaml").data["train"])["tuned"][0]


@pytest.mark.parametrize("device, strategy, gpus, precision", [
    ("cpu", "none", 0, "fp32"), ("cpu", "none", 0, "bf16"), ("cuda", "none", 1, "fp32"),
    ("cuda", "deepspeed_zero2", 8, "fp32"), ("cuda", "deepspeed_zero3", 8, "fp32"), ("cuda", "fsdp", 8, "fp32")])
def test_generated_configs_pass_axolotls_own_validation(tmp_path, device, strategy, gpus, precision):
    hp = dict(_hp(), adapter="qlora") if device == "cuda" else dict(_hp(), precision=precision)
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}) + "\n")
    dist = {"strategy": strategy, "launcher": "accelerate", "gpus_per_node": max(1, gpus), "nodes": 1,
            "main_process_ip": "127.0.0.1", "main_process_port": 29500}
    cfg = axolotl.build_config(hp, tmp_path / "base", data, None, tmp_path, 42, {}, device=device, distributed=dist)
    path = axolotl.write_config(cfg, tmp_path / "axolotl.yaml")
    if device == "cpu":
        assert cfg["lora_mlp_kernel"] is False and cfg["attn_implementation"] == "sdpa"
        # bf16 on CPU goes through our plugin (use_cpu, fp32 master weights); Axolotl's validation imports it
        assert cfg["bf16"] is (precision == "bf16")
        assert cfg.get("plugins") == ([axolotl.CPU_AMP_PLUGIN] if precision == "bf16" else []) + \
            [axolotl.LABELLED_HEAD_PLUGIN]  # the default train.logits: labelled
    else:
        assert cfg["bf16"] == "auto" and cfg["load_in_4bit"] is True and cfg["attn_implementation"] == "flash_attention_2"
    if strategy.startswith("deepspeed"):
        ds = json.loads(Path(cfg["deepspeed"]).read_text())
        assert ds["zero_optimization"]["stage"] == (2 if strategy.endswith("2") else 3)
    if strategy == "fsdp":
        assert cfg["fsdp_version"] == 2 and cfg["fsdp_config"]["transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
    axolotl.validate(path, tmp_path / "validate.log", gpus=gpus)  # raises with Axolotl's errors if rejected


def test_a_model_folder_whose_path_contains_mpt_is_not_taken_for_an_mpt_model(tmp_path):
    """Axolotl's MPT check is `"mpt" in base_model`: a GPU config (gradient checkpointing on) for a llama under
    /tmp/emptycache/... was rejected. The adapter hands a local folder over through a neutral symlink; a hub id
    stays as it is."""
    from runner.stage import StageError
    base = tmp_path / "emptycache" / "base"
    base.mkdir(parents=True)
    (base / "config.json").write_text('{"model_type": "llama"}')
    out = tmp_path / "out"
    out.mkdir()
    cfg = axolotl.build_config(dict(_hp(), adapter="qlora"), base, tmp_path / "t.jsonl", None, out, 42, {},
                               device="cuda")
    assert cfg["base_model"] == cfg["tokenizer_config"] == "./base-model" and cfg["gradient_checkpointing"] is True
    assert (out / "base-model").resolve() == base.resolve()
    axolotl.validate(axolotl.write_config(cfg, out / "axolotl.yaml"), tmp_path / "ok.log", gpus=1)
    raw = axolotl.write_config({**cfg, "base_model": str(base)}, out / "raw.yaml")
    with pytest.raises(StageError):
        axolotl.validate(raw, tmp_path / "raw.log", gpus=1)
    assert "not supported for MPT models" in (tmp_path / "raw.log").read_text()
    assert axolotl.model_path(Path("HuggingFaceTB/SmolLM2-135M-Instruct"), out) == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_axolotl_rejects_a_broken_passthrough(tmp_path):
    from runner.stage import StageError
    cfg = axolotl.build_config(_hp(), tmp_path, tmp_path / "t.jsonl", None, tmp_path, 42,
                               {"save_strategy": "no", "save_steps": 10})
    path = axolotl.write_config(cfg, tmp_path / "axolotl.yaml")
    with pytest.raises(StageError):
        axolotl.validate(path, tmp_path / "validate.log")
    assert "axolotl rejects" in (tmp_path / "validate.log").read_text()


def test_launch_commands():
    dist = {"strategy": "deepspeed_zero3", "launcher": "torchrun", "gpus_per_node": 8, "nodes": 2,
            "main_process_ip": "10.0.0.1", "main_process_port": 29500}
    cmd = axolotl.launch_command(Path("/r/axolotl.yaml"), dist)
    assert cmd[:3] == ["torchrun", "--nnodes=2", "--nproc_per_node=8"] and "--rdzv_endpoint=10.0.0.1:29500" in cmd
    cmd = axolotl.launch_command(Path("/r/axolotl.yaml"), dict(dist, launcher="accelerate"))
    assert cmd[:2] == ["accelerate", "launch"] and "--num_processes=16" in cmd and "--num_machines=2" in cmd
    assert cmd[-3:] == ["-m", "axolotl.cli.train", "/r/axolotl.yaml"]


def test_gpu_recipe_on_cpu_stops_with_validated_configs_and_a_launch_script(tmp_path, runs_dir):
    recipe = tmp_path / "gpu.yaml"
    recipe.write_text(f"extends: {REPO / 'recipes' / 'invoice-extraction.yaml'}\nname: gpu-on-cpu\n"
                      "data:\n  generator: {size: 60}\n  datalab: {enabled: false}\n"
                      "train:\n  device: cuda\n  adapter: qlora\n  distributed: {strategy: deepspeed_zero2, gpus_per_node: 4}\n")
    r = subprocess.run([sys.executable, "-m", "runner", "run", str(recipe), "--until", "train"], cwd=REPO,
                       env={**os.environ, "FORGE_RUNS": str(runs_dir)}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1
    assert "has no GPU" in r.stderr and "validated by Axolotl for 4 GPU(s)" in r.stderr
    launch = next(runs_dir.glob("gpu-on-cpu/*/logs/train/launch.sh")).read_text()
    assert "accelerate launch --num_processes=4" in launch and "axolotl.cli.train" in launch


def test_bf16_on_cpu_is_named_native_or_emulated_from_the_cpu_flags():
    amd = "flags\t\t: fpu sse2 avx512f avx512_bf16 avx512_vnni\n"
    xeon = "flags\t\t: fpu avx512f amx_bf16 amx_tile amx_int8\n"
    old = "flags\t\t: fpu sse2 avx2 fma\n"
    assert train.cpu_bf16_flags(amd) == ["avx512_bf16"] and train.cpu_bf16_flags(xeon) == ["amx_bf16"]
    assert train.cpu_bf16_flags(old) == [] and train.cpu_bf16_flags("avx512_bf16x amx_bf16_") == []
    hp = {"precision": "bf16"}
    assert "native on this CPU: avx512_bf16" in train.precision_note(hp, "cpu", ["avx512_bf16"])
    assert "emulated" in train.precision_note(hp, "cpu", []) and "train.precision: fp32" in train.precision_note(hp, "cpu", [])
    assert train.precision_note({"precision": "fp32"}, "cpu", ["amx_bf16"]) == "fp32"
    assert "GPU" in train.precision_note(hp, "cuda", [])


LABELLED_HEAD_CHECK = r'''
import json, sys, torch
from transformers import AutoModelForCausalLM
from peft import LoraConfig, get_peft_model
from runner.adapters import axolotl_labelled_head as lh

def model():
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.float32, attn_implementation="sdpa")
    m = get_peft_model(m, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    for n, p in m.named_parameters():  # LoRA's B starts at zero: give it values so that its gradient is a test
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)
    return m.train()

torch.manual_seed(1)
ids = torch.randint(0, 1000, (3, 40))
labels = ids.clone()
labels[0, :25] = -100; labels[1, :10] = -100; labels[1, 30:] = -100; labels[2, :39] = -100  # prompt, padding
mask = torch.ones_like(ids); mask[1, 30:] = 0
out = {}
for name, patch in (("all", False), ("labelled", True)):
    for items in (None, torch.tensor(17)):
        m = model()
        lm = lh.causal_lm(m)
        if patch:
            assert lh.why_not(lm) is None
            lh.restrict_head_to_labels(lm)
        kw = {} if items is None else {"num_items_in_batch": items}
        r = m(input_ids=ids, attention_mask=mask, labels=labels, **kw)
        r.loss.backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad}
        out[(name, items is None)] = (r.loss.item(), grads, r.logits is None)
m.eval()
with torch.no_grad():
    ev = m(input_ids=ids, attention_mask=mask, labels=labels)
lm.config.final_logit_softcapping = 30.0
report = {"eval_logits": list(ev.logits.shape), "softcap": lh.why_not(lm)}
for mean in (True, False):
    (la, ga, _), (lb, gb, no_logits) = out[("all", mean)], out[("labelled", mean)]
    report[f"loss_{mean}"] = [la, lb]
    report[f"grad_{mean}"] = max((ga[n] - gb[n]).abs().max().item() / (ga[n].abs().max().item() or 1) for n in ga)
    report[f"no_logits_{mean}"] = no_logits
print(json.dumps(report))
'''


def test_the_labelled_head_gives_the_models_own_loss_and_gradients(tiny_model):
    """train.logits: labelled: the head and loss at trained positions only, the same loss (with and without the
    Trainer's num_items_in_batch) and the same LoRA gradients as the model's own forward; evaluation untouched."""
    from runner import env
    ml = env.venv("ml")
    r = subprocess.run([str(ml.python), "-c", LABELLED_HEAD_CHECK, str(tiny_model)], cwd=REPO, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    for mean in ("True", "False"):
        a, b = got[f"loss_{mean}"]
        assert math.isfinite(a) and abs(a - b) <= 1e-5 * abs(a), got
        assert got[f"grad_{mean}"] < 1e-4, got
        assert got[f"no_logits_{mean}"] is True  # the vocabulary logits were never made
    assert got["eval_logits"] == [3, 40, got["eval_logits"][2]] and got["eval_logits"][2] > 1000
    assert "final_logit_softcapping" in got["softcap"]


def test_cpu_configs_name_the_labelled_head_plugin_only_when_asked(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("{}\n")
    on = axolotl.build_config(dict(_hp(), precision="bf16", logits="labelled"), tmp_path / "b", data, None, tmp_path,
                              42, {}, device="cpu")
    off = axolotl.build_config(dict(_hp(), precision="fp32", logits="all"), tmp_path / "b", data, None, tmp_path,
                               42, {}, device="cpu")
    gpu = axolotl.build_config(dict(_hp(), logits="labelled"), tmp_path / "b", data, None, tmp_path, 42, {},
                               device="cuda")
    assert on["plugins"] == [axolotl.CPU_AMP_PLUGIN, axolotl.LABELLED_HEAD_PLUGIN]
    assert "plugins" not in off and "plugins" not in gpu
