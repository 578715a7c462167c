"""What the GPU model tests share (test_fused_model.py, test_fp8_mlp.py): a small bf16-autocast MLM model's
loss and gradients on one packed batch of four documents, eager or under compile_layers."""

import torch

from flex_bert.model import FlexBertConfig, FlexBertForMaskedLM

CONFIG = dict(
    vocab_size=512, num_hidden_layers=4, hidden_size=256, intermediate_size=384, num_attention_heads=4,
    sliding_window=32, pad_token_id=3, cls_token_id=1, sep_token_id=2, mask_token_id=4, attn_out_dropout_prob=0.0,
)  # fmt: skip


def loss_and_grads(compiled: bool, **overrides) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The model of CONFIG + overrides (weights from seed 1) on the same batch (seed 0): loss, {name: grad}."""
    from flex_bert.train.compilation import compile_layers

    torch.manual_seed(0)
    T = 1024
    ids = torch.randint(5, 512, (T,), device="cuda")
    cu = torch.tensor([0, 100, 433, 900, T], dtype=torch.int32, device="cuda")
    labels = torch.where(torch.rand(T, device="cuda") < 0.3, ids, torch.full_like(ids, -100))
    torch.manual_seed(1)
    model = FlexBertForMaskedLM(FlexBertConfig(**{**CONFIG, **overrides})).cuda()
    if compiled:
        compile_layers(model, tune=False)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(ids, cu_seqlens=cu, max_seqlen=467, labels=labels).loss
    loss.backward()
    return loss.detach(), {n: p.grad.detach() for n, p in model.named_parameters()}


def assert_close_to(got: tuple, ref: tuple, loss_tol: float, grad_tol: float, label) -> None:
    """Loss within loss_tol; every gradient's max error within grad_tol of its reference's max magnitude."""
    (loss, grads), (ref_loss, ref_grads) = got, ref
    torch.testing.assert_close(loss, ref_loss, rtol=loss_tol, atol=loss_tol)
    for name, g in grads.items():
        err = (g - ref_grads[name]).abs().max().item() / (ref_grads[name].abs().max().item() + 1e-6)
        assert err < grad_tol, (label, name, err)
