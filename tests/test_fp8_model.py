"""A model with the opt-in FP8 products (`model_config.fp8_mlp`, `fp8_qkv`): against the same weights without
FP8 (CPU), under compile_layers, on a GPU with its kernels against its PyTorch composition, and reproducible in
deterministic mode. The products themselves are tested in test_fp8_mlp.py and test_fp8_qkv.py."""

import pytest
import torch

from flex_bert.kernels import fp8
from flex_bert.model import FlexBertConfig, FlexBertForMaskedLM
from tests._gpu_model import assert_close_to, loss_and_grads
from tests._parity import tiny_config

SWITCHES = [{"fp8_mlp": True}, {"fp8_qkv": True}, {"fp8_mlp": True, "fp8_qkv": True}]


def _batch():
    ids = torch.randint(5, 128, (120,), generator=torch.Generator().manual_seed(3))
    cu = torch.tensor([0, 50, 120], dtype=torch.int32)
    labels = torch.where(torch.arange(120) % 4 == 0, ids, torch.full_like(ids, -100))
    return ids, cu, labels


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("overrides", SWITCHES)
def test_fp8_model_matches_the_bf16_model_within_fp8_rounding_and_trains(overrides):
    """A tiny MLM model with FP8 products (CPU) against the same weights without: loss within 2% but not equal
    (FP8 is used), every gradient within 10%, and ten SGD steps on one batch lower its loss."""
    cfg = tiny_config(128, intermediate_size=96)
    ids, cu, labels = _batch()

    def model(**kw) -> FlexBertForMaskedLM:
        torch.manual_seed(0)
        return FlexBertForMaskedLM(FlexBertConfig.from_dict({**cfg.to_dict(), **kw}))

    fp8_model, plain = model(**overrides), model()
    loss = fp8_model(ids, cu_seqlens=cu, max_seqlen=70, labels=labels).loss
    ref = plain(ids, cu_seqlens=cu, max_seqlen=70, labels=labels).loss
    assert 0 < abs(loss.item() - ref.item()) < 0.02 * ref.item()
    loss.backward(), ref.backward()
    for (name, p), q in zip(fp8_model.named_parameters(), plain.parameters()):
        assert _rel(p.grad, q.grad) < 0.1, name
    opt = torch.optim.SGD(fp8_model.parameters(), lr=0.5)
    first = loss.item()
    for _ in range(10):
        opt.zero_grad()
        loss = fp8_model(ids, cu_seqlens=cu, max_seqlen=70, labels=labels).loss
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first


def test_fp8_model_under_compile_layers_matches_eager():
    """compile_layers with both FP8 switches (CPU: the compositions inside the compiled layers; layer 0 quantizes
    its input apart): the same loss and gradients as eager, and no layer falls back to eager (5 graphs, as without
    FP8)."""
    from torch._dynamo.utils import counters

    from flex_bert.train.compilation import compile_layers

    cfg = tiny_config(128, intermediate_size=96, fp8_qkv=True, fp8_mlp=True)
    ids, cu, labels = _batch()
    runs = []
    torch._dynamo.reset()
    counters.clear()
    for compiled in (False, True):
        torch.manual_seed(0)
        model = FlexBertForMaskedLM(cfg)
        if compiled:
            compile_layers(model)
        loss = model(ids, cu_seqlens=cu, max_seqlen=70, labels=labels).loss
        loss.backward()
        runs.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    assert counters["stats"]["unique_graphs"] == 5
    (eager_loss, eager_grads), (loss, grads) = runs
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-5)
    for name, g in grads.items():
        torch.testing.assert_close(g, eager_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_fp8_products_refuse_a_gpu_before_hopper(monkeypatch):
    """CPU test: a stand-in for a CUDA tensor on a GPU of compute capability 8."""
    from types import SimpleNamespace

    from flex_bert.kernels import policy

    monkeypatch.setattr(policy, "_major", lambda device_index: 8)
    x = SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0))
    with pytest.raises(ValueError, match=r"compute capability 9.0 or newer \(Hopper\); this one is 8.x"):
        fp8.check_device(x)


@pytest.mark.gpu
@pytest.mark.parametrize("overrides", SWITCHES)
def test_fp8_model_with_kernels_matches_its_composition_on_gpu(overrides):
    """A bf16-autocast model with FP8 products: the kernels (FP8 copies written by the joints and the gate,
    `fused_qkv`'s FP8 product on local and global layers) against the PyTorch composition (`fused_kernels:
    false`, casts by `quantize_rows`, varlen attention) on the same weights, eager and under compile_layers: the
    same quantization, so loss and gradients agree to bf16 tolerance."""
    ref = loss_and_grads(False, fused_kernels=False, attention_backend="varlen", **overrides)
    for compiled in (False, True):
        got = loss_and_grads(compiled, fused_kernels=True, attention_backend="auto", **overrides)
        assert_close_to(got, ref, 5e-3, 5e-2, compiled)


@pytest.mark.gpu
def test_fp8_model_is_bitwise_reproducible_in_deterministic_mode_on_gpu(monkeypatch):
    """Under torch.use_deterministic_algorithms(True), two runs of the same model and batch with both FP8 switches
    give the same loss and gradients, bit for bit (the FP8 copies come from kernels without atomics)."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # as composer's deterministic mode sets it
    torch.use_deterministic_algorithms(True)
    try:
        runs = [loss_and_grads(False, fp8_qkv=True, fp8_mlp=True, attention_backend="auto") for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(False)
    (loss, grads), (loss2, grads2) = runs
    assert torch.equal(loss, loss2)
    for name, g in grads.items():
        assert torch.equal(g, grads2[name]), name
