"""A plain transformers + peft LoRA training loop: the baseline Axolotl's throughput is measured against.

Runs inside the `ml` venv: python -m runner.adapters.peft_loop CONFIG.json -> prints one JSON line.
CONFIG: {"model", "data" (chat JSONL), "steps", "micro_batch_size", "sequence_len", "lr", "r", "alpha",
"dropout", "seed", "packing"}. Same chat template, same batch and length, loss on every token.
"""
from __future__ import annotations

import json
import sys
import time


def main(path: str) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    c = json.load(open(path))
    torch.manual_seed(c["seed"])
    tok = AutoTokenizer.from_pretrained(c["model"])
    model = AutoModelForCausalLM.from_pretrained(c["model"], dtype=torch.float32, attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=c["r"], lora_alpha=c["alpha"], lora_dropout=c["dropout"],
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    rows = [json.loads(x) for x in open(c["data"])]
    # text first, then ids: apply_chat_template(tokenize=True) returns different types across versions
    texts = [tok.apply_chat_template(r["messages"], tokenize=False) for r in rows]
    seqs = [list(tok(t, add_special_tokens=False)["input_ids"])[: c["sequence_len"]] for t in texts]
    if c["packing"]:  # greedy concatenation into sequence_len bins
        packed, cur = [], []
        for s in seqs:
            if len(cur) + len(s) > c["sequence_len"]:
                packed.append(cur)
                cur = []
            cur = cur + s
        seqs = packed + ([cur] if cur else [])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=c["lr"])
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    model.train()
    tokens = 0
    t0 = time.time()
    for step in range(c["steps"]):
        batch = [seqs[(step * c["micro_batch_size"] + i) % len(seqs)] for i in range(c["micro_batch_size"])]
        n = max(map(len, batch))
        ids = torch.tensor([b + [pad] * (n - len(b)) for b in batch])
        mask = torch.tensor([[1] * len(b) + [0] * (n - len(b)) for b in batch])
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        tokens += int(mask.sum())
    seconds = time.time() - t0
    print(json.dumps({"steps": c["steps"], "tokens": tokens, "seconds": round(seconds, 2),
                      "tokens_per_s": round(tokens / seconds, 1), "final_loss": round(float(loss), 4)}))


if __name__ == "__main__":
    main(sys.argv[1])
