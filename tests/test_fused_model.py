"""FlexBERT with its Triton kernels (`fused_kernels: true`) against the PyTorch composition, on the GPU."""

import pytest
import torch

from flex_bert.model import FlexBertConfig, FlexBertForMaskedLM
from flex_bert.train.compilation import compile_layers


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["varlen", "auto"])  # auto: the Triton band kernel on local layers too
def test_fused_model_matches_the_composition_on_gpu(backend):
    """A bf16-autocast FlexBERT with `fused_kernels` (residual joints, GLU gate, QKV projection with rotary,
    loss) against the same
    weights with the PyTorch composition and varlen attention (dropout 0): loss and every gradient within bf16
    tolerance, eager and with compile_layers (the kernels inside Inductor's graphs, forward and backward)."""
    cfg = FlexBertConfig(
        vocab_size=512, num_hidden_layers=4, hidden_size=256, intermediate_size=384, num_attention_heads=4,
        sliding_window=32, pad_token_id=3, cls_token_id=1, sep_token_id=2, mask_token_id=4,
        attn_out_dropout_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    T = 1024
    ids = torch.randint(5, 512, (T,), device="cuda")
    cu = torch.tensor([0, 100, 433, 900, T], dtype=torch.int32, device="cuda")
    labels = torch.where(torch.rand(T, device="cuda") < 0.3, ids, torch.full_like(ids, -100))

    def run(fused, compiled, backend="varlen"):
        torch.manual_seed(1)
        over = {"fused_kernels": fused, "attention_backend": backend}
        model = FlexBertForMaskedLM(FlexBertConfig(**{**cfg.to_dict(), **over})).cuda()
        if compiled:
            compile_layers(model, tune=False)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(ids, cu_seqlens=cu, max_seqlen=467, labels=labels).loss
        loss.backward()
        return loss.detach(), {n: p.grad.detach() for n, p in model.named_parameters()}

    ref_loss, ref_grads = run(False, False)
    for compiled in (False, True):
        loss, grads = run(True, compiled, backend)
        torch.testing.assert_close(loss, ref_loss, rtol=2e-3, atol=2e-3)
        for name, g in grads.items():
            scale = ref_grads[name].abs().max().item() + 1e-6
            err = (g - ref_grads[name]).abs().max().item() / scale
            assert err < 3e-2, (compiled, name, err)
