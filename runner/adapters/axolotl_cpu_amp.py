"""An Axolotl plugin for bf16 mixed precision on CPU (imported by Axolotl inside the `ml` venv).

Axolotl's `bf16: true` alone fails on CPU: transformers' TrainingArguments refuses bf16 without a GPU unless
`use_cpu` is set ("Your setup doesn't support bf16/gpu"), and Axolotl also loads the weights in bf16, so the LoRA
weights and their Adam updates would be bf16 too. This plugin, named in the generated config's `plugins`, sets
`use_cpu` through Axolotl's training-args hook and loads the model in fp32 through its pre-model-load hook: fp32
master weights, with the Trainer's torch.autocast computing matmuls in bf16 (the usual mixed precision).

Measured on 2 cores of an AMD EPYC with avx512_bf16: a 576x1536 matmul 4.5x faster in bf16 than fp32, and 12
LoRA steps of the default recipe at 1.53x fp32's tokens/s (benchmarks/train_throughput.py --precision fp32,bf16;
docs/benchmarks.md).
"""
from __future__ import annotations

import torch
from axolotl.integrations.base import BasePlugin


class CpuBf16Amp(BasePlugin):
    def get_training_args(self, cfg):
        return {"use_cpu": True}

    def pre_model_load(self, cfg):
        cfg.torch_dtype = torch.float32
