"""compile_layers: one graph per layer variant, whatever the batch (documents, max_seqlen, masked tokens)."""

import numpy as np
import torch

from flex_bert.model import FlexBertConfig, FlexBertForMaskedLM
from flex_bert.train.compilation import compile_layers, prepare


def _batch(rng, T=256):
    n = int(rng.integers(2, 12))
    cuts = np.sort(rng.choice(np.arange(1, T), n - 1, replace=False))
    cu = torch.tensor(np.concatenate([[0], cuts, [T]]), dtype=torch.int32)
    ids = torch.randint(5, 500, (T,), generator=torch.Generator().manual_seed(int(rng.integers(1 << 30))))
    labels = torch.where(torch.rand(T) < 0.3, ids, torch.full_like(ids, -100))
    return ids, cu, int((cu[1:] - cu[:-1]).max()), labels


def test_compiled_layers_never_recompile_or_fall_back_to_eager():
    """Layers share one code object: 3 variants (first layer, global, local) + embeddings + head = 5 graphs.
    Before dynamic shapes were set from the start, changing batches added graphs until dynamo's limit of 8
    per code object was hit and a layer variant silently ran eager (5x slower at 8192 context on the GPU)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()  # graphs compiled by earlier tests of this process
    cfg = FlexBertConfig(
        vocab_size=512, num_hidden_layers=6, hidden_size=32, intermediate_size=48, num_attention_heads=2,
        sliding_window=16, pad_token_id=3, cls_token_id=1, sep_token_id=2, mask_token_id=4,
    )  # fmt: skip
    model = FlexBertForMaskedLM(cfg)
    compile_layers(model)
    rng = np.random.default_rng(0)
    graphs = []
    for _ in range(6):
        ids, cu, max_seqlen, labels = _batch(rng)
        model(ids, cu_seqlens=cu, max_seqlen=max_seqlen, labels=labels).loss.backward()
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] == graphs[-1] == 5, graphs


def test_compile_tuning_reaches_every_compiled_piece(monkeypatch):
    """`tune=True` passes Inductor's coordinate-descent option to each compiled piece (embeddings, every
    layer, head+loss); `tune=False` passes none; a `mode` is kept (torch.compile takes mode or options)."""
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn=None, **kw: calls.append(kw) or fn)
    cfg = FlexBertConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2,
        sliding_window=8, pad_token_id=0, cls_token_id=1, sep_token_id=2, mask_token_id=3,
    )  # fmt: skip
    cases = (  # (tune, extra kwargs, tuning expected)
        (True, {}, True),
        (False, {}, False),
        (True, {"mode": "default"}, True),
        (True, {"mode": "max-autotune"}, False),
        (True, {"backend": "eager"}, False),
    )
    for tune, kwargs, want in cases:
        calls.clear()
        compile_layers(FlexBertForMaskedLM(cfg), tune=tune, **kwargs)
        assert len(calls) == 1 + 3 + 1
        assert all(c.get("options", {}).get("coordinate_descent_tuning", False) == want for c in calls)
        assert all(c["dynamic"] is True for c in calls)
        assert all("options" not in c or "mode" not in c for c in calls)  # torch.compile refuses both
    calls.clear()
    compile_layers(FlexBertForMaskedLM(cfg))  # off by default: it no longer pays (docs/PERFORMANCE.md)
    assert len(calls) == 5 and not any("options" in c for c in calls)


def test_gradient_checkpointing_from_the_config_recomputes_each_layer_in_training_only():
    """`prepare` with `gradient_checkpointing` (the training code's call): each layer's forward runs again in the
    backward, the gradients unchanged; in eval or without gradients each layer runs once."""
    cfg = FlexBertConfig(
        vocab_size=512, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2,
        sliding_window=8, pad_token_id=0, cls_token_id=1, sep_token_id=2, mask_token_id=3,
        compile_model=False, attn_out_dropout_prob=0.0,
    )  # fmt: skip
    ids, cu, max_seqlen, labels = _batch(np.random.default_rng(1), T=64)
    grads, calls = [], []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = FlexBertForMaskedLM(
            FlexBertConfig(**{**cfg.to_dict(), "gradient_checkpointing": checkpointing})
        )
        prepare(model, model.config)
        for layer in model.bert.encoder.layers:
            layer.register_forward_pre_hook(lambda *_, on=checkpointing: calls.append(on))
        model(ids, cu_seqlens=cu, max_seqlen=max_seqlen, labels=labels).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
        with torch.no_grad():
            model(ids, cu_seqlens=cu, max_seqlen=max_seqlen, labels=labels)
    assert calls.count(False) == 3 + 3 and calls.count(True) == 2 * 3 + 3
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-7, msg=name)
