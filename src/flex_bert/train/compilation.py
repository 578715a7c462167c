"""Compile and activation checkpointing, applied to a FlexBERT model by the training code (the model does neither).

`compile_layers` compiles the embeddings, each encoder layer and head+decoder+loss in place; `checkpoint_layers`
makes each encoder layer recompute its activations in the backward; `prepare` applies both as the model config
says (`compile_model`, `gradient_checkpointing`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from flex_bert.model import FlexBertConfig, FlexBertForMaskedLM, FlexBertModel

LAYER_GRAPHS = 32  # dynamo's per-code-object graph limit while layers are compiled (see compile_layers)


def compile_layers(model: FlexBertForMaskedLM, tune: bool = False, **compile_kwargs) -> None:
    """torch.compile the embeddings, each encoder layer and head+decoder+loss of `model`, in place.

    In-place `Module.compile` keeps parameter names (no `_orig_mod.`), so checkpoints are unchanged. The head,
    decoder and fp32 loss are compiled as one function (`model.predict`, replaced on the instance) so the fp32
    upcast of the logits is fused into the loss instead of materialised (N x V x 4 bytes).

    Shapes are dynamic from the start (the number of documents, `max_seqlen` and the number of masked tokens
    change every batch; a first static graph would only be thrown away). All layers share one code object
    (`EncoderLayer.forward`), so dynamo keeps their graphs in one cache, one graph per layer variant (the first
    layer without attn_norm, global, local): its limit (8 by default) is raised to LAYER_GRAPHS so that no
    variant ever falls back to eager (several times slower at long context).

    `tune` turns on Inductor's coordinate-descent tuning of the launch configuration of every generated kernel:
    off by default: with FlexBERT's own kernels running the layers' elementwise work it does not pay for its
    compilation time (docs/PERFORMANCE.md). It picks launch configurations by timing them, so compiled
    runs on different machines may sum reductions in a different order. Only for the Inductor backend.
    """
    compile_kwargs.setdefault("dynamic", True)
    inductor = compile_kwargs.get("backend", "inductor") == "inductor"
    # torch.compile takes a mode or options, not both; the max-autotune modes tune by themselves
    if tune and inductor and compile_kwargs.get("mode") in (None, "default"):
        compile_kwargs.pop("mode", None)
        compile_kwargs["options"] = {**compile_kwargs.get("options", {}), "coordinate_descent_tuning": True}
    compile_encoder(model.bert, **compile_kwargs)
    model.predict = torch.compile(model.predict, **compile_kwargs)


def compile_encoder(encoder: FlexBertModel, **compile_kwargs) -> None:
    """torch.compile the embeddings and each layer of `encoder` in place, dynamo's graph limit raised to
    LAYER_GRAPHS (see compile_layers, which adds the MLM head; task models' heads stay eager)."""
    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    setattr(torch._dynamo.config, limit, max(LAYER_GRAPHS, getattr(torch._dynamo.config, limit)))
    encoder.embeddings.compile(**compile_kwargs)
    for layer in encoder.encoder.layers:
        layer.compile(**compile_kwargs)


def _checkpointed_call(layer: nn.Module, *args):
    """A layer whose activations are recomputed in the backward (training with gradients only)."""
    if layer.training and torch.is_grad_enabled():
        return checkpoint(layer, *args, use_reentrant=False)
    return layer(*args)


def checkpoint_layers(encoder: FlexBertModel) -> None:
    """Activation checkpointing of every encoder layer: memory for one more forward of each in the backward."""
    encoder.call_layer = _checkpointed_call


def prepare(model: nn.Module, config: FlexBertConfig, *, tune: bool = False) -> None:
    """Checkpointing and compilation as `config` says; `model` has a FlexBERT encoder at `.bert`, and is compiled
    only where it is an MLM model."""
    if config.gradient_checkpointing:
        checkpoint_layers(model.bert)
    if config.compile_model and isinstance(model, FlexBertForMaskedLM):
        compile_layers(model, tune=tune)
