"""The quantization regression gate, the choice of quant types, and a GGUF that cannot load."""
import pytest

from runner.adapters import llama_cpp
from runner.stage import StageError
from runner.stages import quantize


def rows(right_per_item: list[int], units: int = 9) -> list[dict]:
    return [{"outcomes": {f"f{j}": "correct" if j < r else "wrong_value" for j in range(units)}} for r in right_per_item]


GATE = {"margin": 0.02, "alpha": 0.05, "power": 0.8, "metrics": [], "max_drop": 0.02}


def test_non_inferiority_passes_a_quant_that_loses_a_few_fields_and_fails_one_that_loses_many():
    f16 = rows([9, 8, 7, 9, 6] * 13)                                  # 65 items, 585 field decisions
    few = rows([9, 8, 7, 9, 6] * 12 + [8, 8, 7, 9, 6])               # one field lost on one item
    many = rows([8, 7, 6, 8, 5] * 4 + [9, 8, 7, 9, 6] * 9)           # 20 fields lost on 20 items
    ok = quantize.gate(f16, rows([9, 8, 7, 9, 6] * 13), {}, GATE, 500, 0)
    assert ok["passed"] and ok["non_inferiority"]["drop"] == 0 and ok["non_inferiority"]["power"] is None
    v = quantize.gate(f16, few, {}, GATE, 500, 0)
    ni = v["non_inferiority"]
    assert v["passed"] and ni["decisions"] == 585 and ni["discordant_items"] == 1
    assert abs(ni["drop"] - 1 / 585) < 1e-9 and ni["upper"] <= 0.02
    bad = quantize.gate(f16, many, {}, GATE, 500, 0)
    ni = bad["non_inferiority"]
    assert not bad["passed"] and abs(ni["drop"] - 20 / 585) < 1e-9 and ni["upper"] > 0.02
    assert "upper bound" in bad["reasons"][0] and "> margin 0.02" in bad["reasons"][0]
    # where the data is noisier, more items are needed for the same power
    noisy = rows([8, 9, 6, 9, 7] * 13)
    quiet = rows([9, 8, 7, 9, 6] * 12 + [8, 8, 7, 9, 6])
    assert quantize.gate(f16, noisy, {}, GATE, 500, 0)["non_inferiority"]["n_required"] > \
        quantize.gate(f16, quiet, {}, GATE, 500, 0)["non_inferiority"]["n_required"]


def test_metric_checks_use_the_upper_bound_of_the_paired_drop():
    cfg = dict(GATE, metrics=["field_f1", "exact_match"])
    same = {"field_f1": {"diff": 0.0, "low": -0.01, "high": 0.01}, "exact_match": {"diff": 0.0, "low": 0.0, "high": 0.0}}
    f16 = rows([9, 8] * 10)
    assert quantize.gate(f16, f16, same, cfg, 200, 0)["passed"]
    # the point drop is small, but the interval allows a 5-point drop: fails, and says so
    wide = dict(same, exact_match={"diff": -0.015, "low": -0.05, "high": 0.02})
    v = quantize.gate(f16, f16, wide, cfg, 200, 0)
    assert not v["passed"] and v["checks"]["exact_match"] == {"drop": 0.015, "drop_ci_high": 0.05}
    assert "exact_match: drop +0.0150, CI upper bound +0.0500 > allowed 0.02" in v["reasons"][0]
    assert not quantize.gate(f16, f16, {"field_f1": same["field_f1"]}, cfg, 200, 0)["passed"]  # no result: fails


def test_a_quant_significantly_worse_on_a_guarded_metric_fails_though_its_fields_hold():
    """q4_k_m of run 20261129-220125-7c9cb2: field decisions within the margin, exact match -0.092 [-0.184, -0.010]."""
    cfg = dict(GATE, no_significant_drop=["exact_match"])
    f16 = rows([9, 8, 7, 9, 6] * 13)
    em = {"exact_match": {"diff": -0.092, "low": -0.184, "high": -0.010}}
    v = quantize.gate(f16, f16, em, cfg, 200, 0)
    assert not v["passed"] and v["non_inferiority"]["passed"]
    assert v["worse"] == {"exact_match": {"diff": -0.092, "low": -0.184, "high": -0.01}}
    assert v["reasons"] == ["exact_match: significantly worse than f16, -0.092 [-0.184, -0.010]"]
    # the interval reaches zero: not shown worse, passes (q8_0 of the same run: -0.020 [-0.061, +0.010])
    assert quantize.gate(f16, f16, {"exact_match": {"diff": -0.02, "low": -0.061, "high": 0.01}}, cfg, 200, 0)["passed"]
    assert not quantize.gate(f16, f16, {}, cfg, 200, 0)["passed"]  # nothing to judge it by: fails
    assert quantize.gate(f16, f16, em, GATE, 200, 0)["passed"]  # not listed: reported, not gated


def test_unknown_quant_type_names_the_file_and_the_choices(tmp_path):
    with pytest.raises(StageError, match=r"unknown quant type 'q4_k_xl' for model\.gguf; supported: q8_0, q6_k"):
        llama_cpp.quantize(tmp_path / "model.gguf", tmp_path / "out.gguf", "q4_k_xl", tmp_path / "q.log", 2)


def test_a_gguf_that_cannot_load_is_named_with_its_log(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(StageError, match=r"llama-server for broken\.gguf exited with code") as e:
        with llama_cpp.serve(bad, tmp_path / "server.log", threads=1, timeout=60):
            pass
    assert e.value.log == tmp_path / "server.log" and (tmp_path / "server.log").exists()


def test_quant_mix_reads_what_llama_quantize_wrote(tmp_path):
    log = tmp_path / "q.log"
    log.write_text(
        "warning: blk.0.attn_k.weight - ncols 576 not divisible by 256 (required for type q4_K) -> falling back to q5_0\n"
        "[   1/ 272] output_norm.weight - [   576,      1,      1,      1], type =    f32, size =    0.002 MiB\n"
        "[   2/ 272] token_embd.weight - [   576,  49152, 1, 1], type =    f16, converting to q8_0 .. size = 54.00 MiB\n"
        "[   3/ 272] blk.0.attn_k.weight - [   576,    192, 1, 1], type =    f16, converting to q5_0 .. size = 0.21 MiB\n"
        "[   4/ 272] blk.0.ffn_down.weight - [  1536,    576, 1, 1], type =    f16, converting to q4_K .. size = 1 MiB\n")
    assert llama_cpp.quant_mix(log) == {"tensor_types": {"f32": 1, "q8_0": 1, "q5_0": 1, "q4_K": 1}, "fallbacks": 1}


def test_kld_stats_reads_llama_perplexitys_summary():
    # the tail of a real `llama-perplexity --kl-divergence` log (q8_0 against f16 of a tuned SmolLM2-135M)
    text = """====== Perplexity statistics ======
Mean PPL(Q)                   :   7.795628 ±   0.225732
Mean PPL(base)                :   7.744167 ±   0.222911
Cor(ln(PPL(Q)), ln(PPL(base))):  99.88%
Mean ln(PPL(Q)/PPL(base))     :   0.006623 ±   0.001408
Mean PPL(Q)/PPL(base)         :   1.006645 ±   0.001417

====== KL divergence statistics ======
Mean    KLD:   0.003505 ±   0.000065
Maximum KLD:   0.226592
99.9%   KLD:   0.059725
99.0%   KLD:   0.027128
Median  KLD:   0.001207
Minimum KLD:  -0.000016

====== Token probability statistics ======
Mean    Δp: -0.050 ± 0.016 %
RMS Δp    :  1.594 ± 0.045 %
Same top p: 96.618 ± 0.179 %
"""
    assert llama_cpp.kld_stats(text) == {"mean_kld": 0.003505, "kld_p99": 0.027128, "kld_max": 0.226592,
                                         "same_top_pct": 96.618, "same_top_pct_se": 0.179, "ppl_ratio": 1.006645,
                                         "rms_dp_pct": 1.594}
    assert llama_cpp.kld_stats("perplexity: 6.44 seconds per pass") == {}


def test_the_model_to_quantize_comes_from_the_stage_that_served_it(tmp_path):
    """quantize.model: a model of the eval stage, the iterate stage's model by name, or 'kept' (the loop's choice,
    tuned when the loop is off or its model failed the gates)."""
    from runner.stage import Output
    ev = Output("eval", "k1", tmp_path / "eval", {}, {"tuned-f16": "tuned/model-f16.gguf"}, "ok")
    on = {"enabled": True, "name": "tuned-v2"}
    it_kept = Output("iterate", "k2", tmp_path / "it", {**on, "kept": "tuned-v2"}, {"tuned-v2-f16": "x.gguf"}, "ok")
    it_not = Output("iterate", "k2", tmp_path / "it", {**on, "kept": "tuned"}, {"tuned-v2-f16": "x.gguf"}, "ok")
    it_off = Output("iterate", "k3", tmp_path / "it", {"enabled": False}, {}, "ok")
    assert quantize.source("tuned", ev, it_kept) == ("tuned", ev)
    assert quantize.source("kept", ev, it_kept) == ("tuned-v2", it_kept)
    assert quantize.source("kept", ev, it_not) == ("tuned", ev)
    assert quantize.source("kept", ev, it_off) == ("tuned", ev)
    assert quantize.source("tuned-v2", ev, it_not) == ("tuned-v2", it_not)  # named: quantized even if not kept
    with pytest.raises(StageError, match=r"'tuned-v2' has no f16 GGUF from the eval stage; .*iterate.enabled: true"):
        quantize.source("tuned-v2", ev, it_off)


def test_fastest_deploys_the_gated_model_that_served_the_most_documents_per_second():
    """serve.model: fastest: f16 or a quant that passed the gate, by the quantize stage's served documents/s; a quant
    that failed the gate is never chosen however fast, and without served speeds the error says what to do."""
    from runner.stages import serve
    qm = {"quality": {"f16-rerun": {"served": {"docs_per_s": 1.389}}, "q8_0": {"served": {"docs_per_s": 0.966}},
                      "q4_k_m": {"served": {"docs_per_s": 2.5}}},
          "verdicts": {"q8_0": {"passed": True}, "q4_k_m": {"passed": False}}}
    assert serve.fastest(qm) == "f16"
    qm["quality"]["q8_0"]["served"]["docs_per_s"] = 1.5
    assert serve.fastest(qm) == "q8_0"
    with pytest.raises(StageError, match="quantize.evaluate is off"):
        serve.fastest({"quality": {}, "verdicts": {}})
