"""Where does a quant type lose? For a run's tuned f16 GGUF, quantize it to each variant (a type, optionally
--pure, with the run's importance matrix, or with the token embeddings kept at f16) and measure two things side
by side: how far the *stored* weights are from f16 (relative RMSE after dequantizing, gguf-py), and how far the
*computed* next-token distributions are from f16's (llama-perplexity --kl-divergence over the run's test split:
each document followed by its gold answer, teacher-forced). A type whose stored weights are as close as
another's but whose distributions are much further loses in the computation, not in the storage.

    python3 -m runner setup && python3 benchmarks/quant_kld.py --run-dir runs/invoice-extraction/<run>
        [--variants q8_0,q5_k_m,q4_k_m,q5_0:pure,q5_1:pure] [--chunks 32]

A variant is TYPE[:pure][:imatrix][:emb=TYPE]. Prints one JSON line per variant, then a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from runner import env  # noqa: E402
from runner.adapters import llama_cpp  # noqa: E402
from runner.stages import quantize  # noqa: E402

DEFAULT = "q8_0,q8_0:emb=f16,q5_k_m,q5_k_m:imatrix,q4_k_m,q5_0:pure,q5_1:pure,q4_0:pure,q4_1:pure"

# run with the ml venv and llama.cpp's own gguf-py: dequantize every quantized tensor, compare with f16
WEIGHT_ERROR = r"""
import json, sys, numpy as np, gguf
from gguf import quants
ref = {t.name: t for t in gguf.GGUFReader(sys.argv[1]).tensors}
num = den = 0.0
for t in gguf.GGUFReader(sys.argv[2]).tensors:
    if t.tensor_type == gguf.GGMLQuantizationType.F32:
        continue
    w = np.asarray(ref[t.name].data, dtype=np.float32).reshape(-1)
    d = quants.dequantize(t.data, t.tensor_type).reshape(-1).astype(np.float32)
    num += float(((w - d) ** 2).sum()); den += float((w ** 2).sum())
print(json.dumps({"weight_rel_rmse": (num / den) ** 0.5}))
"""


def parse_variant(spec: str) -> dict:
    parts = spec.split(":")
    v = {"name": spec, "type": parts[0], "pure": False, "imatrix": False, "emb": None}
    for p in parts[1:]:
        if p == "pure":
            v["pure"] = True
        elif p == "imatrix":
            v["imatrix"] = True
        elif p.startswith("emb="):
            v["emb"] = p[4:]
        else:
            raise SystemExit(f"--variants: unknown option '{p}' in '{spec}' (pure, imatrix, emb=TYPE)")
    return v


def weight_error(f16: Path, quant: Path) -> float:
    lc = env.llama_cpp()
    out = subprocess.run([str(env.venv("ml").python), "-c", WEIGHT_ERROR, str(f16), str(quant)], check=True,
                         capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(lc.gguf_py), "NO_LOCAL_GGUF": ""})
    return json.loads(out.stdout.strip().splitlines()[-1])["weight_rel_rmse"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--variants", default=DEFAULT)
    ap.add_argument("--chunks", type=int, default=32, help="llama-imatrix chunks (as quantize.imatrix)")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    variants = [parse_variant(s) for s in args.variants.split(",")]
    stages = args.run_dir / "stages"
    f16 = stages / "eval" / "tuned" / "model-f16.gguf"
    rows = [json.loads(x) for x in (stages / "data" / "test.jsonl").read_text().splitlines() if x.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        text = tmp / "test.txt"
        text.write_text("\n\n".join(r["document"] + "\n" + r["gold"] for r in rows) + "\n")
        base = tmp / "f16.kld"
        llama_cpp.kl_divergence(f16, text, base, tmp / "f16.log", args.threads, args.ctx, reference=True)
        imat = None
        if any(v["imatrix"] for v in variants):
            calib = quantize.calibration_text(stages / "data" / "train.jsonl", tmp / "calibration.txt")
            imat = llama_cpp.imatrix(f16, calib, tmp / "imatrix.gguf", tmp / "imatrix.log", args.threads,
                                     args.chunks, 512)
        results = []
        for v in variants:
            dst = tmp / f"{v['name'].replace(':', '-').replace('=', '')}.gguf"
            qlog = tmp / f"{dst.stem}.quantize.log"
            llama_cpp.quantize(f16, dst, v["type"], qlog, args.threads, imat if v["imatrix"] else None,
                               pure=v["pure"], token_embedding_type=v["emb"])
            kld = llama_cpp.kl_divergence(dst, text, base, tmp / f"{dst.stem}.kld.log", args.threads, args.ctx)
            r = {"variant": v["name"], "mb": round(dst.stat().st_size / 1e6, 1),
                 "tensor_types": llama_cpp.quant_mix(qlog)["tensor_types"],
                 "weight_rel_rmse": round(weight_error(f16, dst), 4), **kld, "test_items": len(rows)}
            results.append(r)
            print(json.dumps(r), flush=True)
    print("\n| variant | MB | tensors | weight rel. RMSE | mean KLD | KLD p99 | same top token % | PPL ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        mix = ", ".join(f"{n} {t}" for t, n in r["tensor_types"].items() if t != "f32")
        print(f"| {r['variant']} | {r['mb']} | {mix} | {r['weight_rel_rmse']:.4f} | {r['mean_kld']:.4f} | "
              f"{r['kld_p99']:.3f} | {r['same_top_pct']:.1f} ± {r['same_top_pct_se']:.1f} | {r['ppl_ratio']:.3f} |")


if __name__ == "__main__":
    main()
