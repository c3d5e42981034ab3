"""transformers adapter: model folders in and out of Hugging Face format.

Runs inside the `ml` venv (python -m runner.adapters.hf_export ...):
  dequantize --gguf F --out D         GGUF -> full-precision HF folder (transformers dequantizes on load)
  tiny --tokenizer D --out D [--seed] a random-weight 2-layer llama with a real tokenizer (for tests)
  fetch --hub-id ID --out D           a hub model snapshot (online users only)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def dequantize(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # transformers refuses to save a GGUF-loaded model: rebuild it from its config and copy the weights.
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight") or not config.tie_word_embeddings]
    if missing or unexpected:
        raise SystemExit(f"weights do not match the config: missing={missing[:5]} unexpected={unexpected[:5]}")
    # transformers' GGUF tokenizer conversion mislabels special tokens (SmolLM2: eos '<|im_start|>');
    # the GGUF's own token ids, carried in the config, are the truth.
    gen = fresh.generation_config
    for attr, tid in (("eos_token", gen.eos_token_id or config.eos_token_id),
                      ("bos_token", gen.bos_token_id or config.bos_token_id),
                      ("pad_token", gen.pad_token_id or getattr(config, "pad_token_id", None))):
        if isinstance(tid, int):
            setattr(tokenizer, attr, tokenizer.convert_ids_to_tokens(tid))
    out.mkdir(parents=True, exist_ok=True)
    fresh.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    restore_byte_level_bpe(gguf, out / "tokenizer.json")
    (out / "forge-source.json").write_text(json.dumps({"gguf": gguf.name, "dequantized": True}) + "\n")
    print(f"saved {sum(p.numel() for p in fresh.parameters())} parameters to {out}")


def restore_byte_level_bpe(gguf: Path, tokenizer_json: Path) -> None:
    """transformers rebuilds a GGUF 'gpt2' (byte-level BPE) vocab with SentencePiece-style byte fallback and
    decoder; llama.cpp's converter then takes it for an SPM vocab and the served model fails on every request
    ('unordered_map::at'). Put back the byte-level BPE shape the GGUF declares."""
    from gguf import GGUFReader

    field = GGUFReader(str(gguf)).fields.get("tokenizer.ggml.model")
    kind = bytes(field.parts[field.data[0]]).decode() if field else ""
    if kind != "gpt2":
        return
    tj = json.loads(tokenizer_json.read_text())
    tj["model"]["byte_fallback"] = False
    tj["model"]["fuse_unk"] = False
    tj["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    tokenizer_json.write_text(json.dumps(tj, ensure_ascii=False))


def tiny(tokenizer_dir: Path, out: Path, seed: int) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    # Untied output embeddings: with tied ones a random model's greedy decoding just repeats its last input
    # token ('\n' after the assistant header), i.e. whitespace, which the eval stage rightly rejects as empty.
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    print(f"tiny model: {sum(p.numel() for p in model.parameters())} parameters in {out}")


def fetch(hub_id: str, out: Path) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(hub_id, local_dir=str(out))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="hf_export")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dequantize")
    d.add_argument("--gguf", type=Path, required=True)
    d.add_argument("--out", type=Path, required=True)
    t = sub.add_parser("tiny")
    t.add_argument("--tokenizer", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--seed", type=int, default=0)
    f = sub.add_parser("fetch")
    f.add_argument("--hub-id", required=True)
    f.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    if a.cmd == "dequantize":
        dequantize(a.gguf, a.out)
    elif a.cmd == "fetch":
        fetch(a.hub_id, a.out)
    else:
        tiny(a.tokenizer, a.out, a.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
