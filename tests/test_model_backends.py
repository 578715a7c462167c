"""Attention backends against a plain float64 dense reference; GPU kernels against the exact SDPA backend."""

import math

import pytest
import torch

from flex_bert.model import FlexBertConfig, FlexBertForMaskedLM
from flex_bert.model.attention import BACKENDS, get_backend, sdpa_attention, varlen_attention
from flex_bert.model.padding import cu_seqlens_from_lengths
from flex_bert.model.rotary import positions_from_cu_seqlens

H, D = 4, 16


def dense_reference(q, k, v, cu_seqlens, window):
    """Straightforward float64: for every query, softmax over the keys of its document (and window)."""
    q, k, v = q.double(), k.double(), v.double()
    T = q.shape[0]
    doc = torch.searchsorted(cu_seqlens, torch.arange(T, dtype=cu_seqlens.dtype), right=True)
    i = torch.arange(T)
    allowed = doc[:, None] == doc[None, :]
    if window is not None:
        allowed &= (i[:, None] - i[None, :]).abs() <= window // 2
    scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed[None], float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def random_qkv(lengths, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    T = sum(lengths)
    q, k, v = (torch.randn(T, H, D, generator=g).to(device=device, dtype=dtype) for _ in range(3))
    cu = cu_seqlens_from_lengths(torch.tensor(lengths)).to(device)
    return q, k, v, cu, max(lengths)


LENGTHS = [1, 5, 23, 40, 8]  # a one-token document, documents shorter and longer than the window


@pytest.mark.parametrize("window", [None, 8, 128])
def test_sdpa_matches_dense_float64_reference(window):
    q, k, v, cu, max_len = random_qkv(LENGTHS)
    out = sdpa_attention(q, k, v, cu, max_len, window)
    torch.testing.assert_close(out.double(), dense_reference(q, k, v, cu, window), rtol=1e-5, atol=1e-6)


def test_sdpa_gradients_finite_and_document_local():
    q, k, v, cu, max_len = random_qkv([6, 9])
    q.requires_grad_(True)
    v.requires_grad_(True)
    sdpa_attention(q, k, v, cu, max_len, 4)[:6].sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(v.grad).all()
    assert (v.grad[6:] == 0).all()  # the second document never sees the first


def test_positions_restart_per_document_and_skip_empty_segments():
    cu = torch.tensor([0, 3, 3, 7, 8], dtype=torch.int32)
    assert positions_from_cu_seqlens(cu, 8).tolist() == [0, 1, 2, 0, 1, 2, 3, 0]


def test_registry_and_errors():
    assert sorted(BACKENDS) == ["auto", "flash_attn", "sdpa", "varlen"]
    with pytest.raises(ValueError, match=r"unknown attention backend 'xformers'; choose one of \['auto'"):
        get_backend("xformers")
    q, k, v, cu, max_len = random_qkv([4])
    with pytest.raises(ValueError, match="needs CUDA fp16/bf16"):
        varlen_attention(q, k, v, cu, max_len, None)
    torch.testing.assert_close(
        get_backend("auto")(q, k, v, cu, max_len, None), sdpa_attention(q, k, v, cu, 4, None)
    )


# ----------------------------------------------------------------------------------------------- GPU
BF16_TOL = dict(rtol=2e-2, atol=2e-2)


def _kernel_vs_reference(backend_name, window):
    q, k, v, cu, max_len = random_qkv([1, 100, 300, 64, 129, 2000], dtype=torch.bfloat16, device="cuda")
    for t in (q, k, v):
        t.requires_grad_(True)
    out = get_backend(backend_name)(q, k, v, cu, max_len, window)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    ref_inputs = [t.detach().float().requires_grad_(True) for t in (q, k, v)]
    ref = sdpa_attention(*ref_inputs, cu, max_len, window)
    torch.testing.assert_close(out.float(), ref, **BF16_TOL)
    grad = torch.randn_like(ref)
    out.backward(grad.bfloat16())
    ref.backward(grad)
    for ours, theirs in zip((q, k, v), ref_inputs):
        torch.testing.assert_close(ours.grad.float(), theirs.grad, **BF16_TOL)


@pytest.mark.gpu
@pytest.mark.parametrize("window", [None, 128])
def test_varlen_matches_sdpa_reference(window):
    _kernel_vs_reference("varlen", window)


@pytest.mark.gpu
@pytest.mark.parametrize("window", [None, 128])
def test_flash_attn_matches_sdpa_reference(window):
    pytest.importorskip("flash_attn")
    _kernel_vs_reference("flash_attn", window)


@pytest.mark.gpu
def test_model_auto_bf16_matches_fp32_sdpa_and_compiles():
    common = dict(vocab_size=512, hidden_size=128, intermediate_size=192, num_hidden_layers=4,
                  num_attention_heads=2, sliding_window=16, global_attn_every_n_layers=3, pad_token_id=0,
                  cls_token_id=1, sep_token_id=2, mask_token_id=3, attn_out_dropout_prob=0.0)  # fmt: skip
    torch.manual_seed(0)
    ref = FlexBertForMaskedLM(FlexBertConfig.from_dict({**common, "attention_backend": "sdpa"})).cuda().eval()
    fast = (
        FlexBertForMaskedLM(FlexBertConfig.from_dict({**common, "attention_backend": "auto"})).cuda().eval()
    )
    fast.load_state_dict(ref.state_dict())
    lengths = [50, 300, 7, 200]
    ids = torch.randint(4, 512, (sum(lengths),), device="cuda")
    labels = torch.where(torch.rand(ids.shape, device="cuda") < 0.3, ids, -100)
    cu = cu_seqlens_from_lengths(torch.tensor(lengths)).cuda()
    with torch.no_grad():
        want = ref(ids, cu_seqlens=cu, max_seqlen=300, labels=labels)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = fast(ids, cu_seqlens=cu, max_seqlen=300, labels=labels)
            fast.compile_layers()
            compiled = fast(ids, cu_seqlens=cu, max_seqlen=300, labels=labels)
    torch.testing.assert_close(got.loss, want.loss, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(compiled.loss, got.loss, rtol=2e-2, atol=2e-2)
