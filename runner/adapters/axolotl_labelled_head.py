"""An Axolotl plugin that runs the LM head and the loss only where a label is trained (imported by Axolotl inside
the `ml` venv; `train.logits: labelled`).

A causal LM computes vocabulary logits at every position and the loss then ignores the positions labelled -100.
Fine-tuning on instructions trains the answer only (`roles_to_train: [assistant]`), so most positions are prompt:
in the default recipe 489 of 1956 tokens a step are trained, and a 576 x 49152 head over all 1956 positions (plus
the float32 softmax over them) was a third of a CPU step. On a GPU, Axolotl's cut-cross-entropy and Liger plugins
avoid this with Triton kernels; neither runs on a CPU. This plugin, through Axolotl's post-model-load hook, wraps
the causal LM's forward in training mode: the decoder runs as before, the head runs on the positions whose next
token is trained, and the model's own `loss_function` (transformers' ForCausalLMLoss, with `shift_labels`) makes
the same loss, `num_items_in_batch` included. In evaluation and generation the model's forward is untouched.

Models whose head does more than a linear map (final logit soft-capping, a logit scale) are left alone: the
plugin says so in the log and the step costs what it did.
"""
from __future__ import annotations

import logging

from transformers.modeling_outputs import CausalLMOutputWithPast

LOG = logging.getLogger(__name__)
IGNORE = -100
UNSUPPORTED_CONFIG = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale")


def causal_lm(model):
    """The *ForCausalLM module inside a PEFT wrapper (or the model itself). PEFT's wrappers forward attribute
    lookups to the model inside them, so they are unwrapped by get_base_model(), not by hasattr."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner if hasattr(inner, "lm_head") and hasattr(inner, "model") else None


def why_not(lm) -> str | None:
    """Why the head of this causal LM cannot be restricted to labelled positions (None when it can)."""
    if lm is None:
        return "no causal LM with an lm_head and a decoder found"
    cfg = lm.config
    for key in UNSUPPORTED_CONFIG:
        if getattr(cfg, key, None) not in (None, 1, 1.0):
            return f"config.{key} = {getattr(cfg, key)} changes the logits"
    if not hasattr(lm, "loss_function"):
        return "the model has no loss_function"
    return None


def restrict_head_to_labels(lm) -> None:
    """Wrap `lm.forward` (an instance attribute, so PEFT's wrappers call it) as the module docstring says."""
    original = lm.forward

    def forward(input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None,
                labels=None, use_cache=None, logits_to_keep=0, **kwargs):
        if labels is None or not lm.training or past_key_values is not None or logits_to_keep:
            return original(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            past_key_values=past_key_values, inputs_embeds=inputs_embeds, labels=labels,
                            use_cache=use_cache, logits_to_keep=logits_to_keep, **kwargs)
        loss_kwargs = {k: kwargs.pop(k) for k in ("num_items_in_batch", "ignore_index") if k in kwargs}
        out = lm.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       inputs_embeds=inputs_embeds, use_cache=False, **kwargs)
        shift = labels[:, 1:]
        keep = shift != loss_kwargs.get("ignore_index", IGNORE)
        hidden = out.last_hidden_state[:, :-1][keep]          # (trained positions, hidden)
        logits = lm.lm_head(hidden)
        loss = lm.loss_function(logits=logits, labels=None, vocab_size=lm.config.vocab_size,
                                shift_labels=shift[keep], **loss_kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=None, hidden_states=out.hidden_states,
                                      attentions=out.attentions)

    lm.forward = forward


try:  # the plugin class needs Axolotl; the function above is testable without it
    from axolotl.integrations.base import BasePlugin
except ImportError:  # pragma: no cover - only outside the ml venv
    BasePlugin = object


class LabelledHead(BasePlugin):
    def post_model_load(self, cfg, model):
        lm = causal_lm(model)
        reason = why_not(lm)
        if reason:
            LOG.warning("train.logits: labelled not applied (%s): the head runs at every position", reason)
            return
        restrict_head_to_labels(lm)
        LOG.info("train.logits: labelled: the LM head and loss run only at trained positions")
