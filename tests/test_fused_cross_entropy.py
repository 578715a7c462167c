"""The fused MLM loss (kernels/fused_cross_entropy.py) against float64 `F.cross_entropy` and its gradient by
autograd. On the CPU the kernels run in Triton's interpreter (tests/conftest.py)."""

import math

import pytest
import torch
import torch.nn.functional as F

from flex_bert.kernels import fused_cross_entropy

IGNORE = -100


def _inputs(N, V, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(N, V, generator=g)).to(device, dtype).requires_grad_(True)
    labels = torch.randint(0, V, (N,), generator=g)
    labels[::5] = IGNORE  # some rows unlabelled
    return logits, labels.to(device)


def _check(N, V, dtype, device, tol):
    logits, labels = _inputs(N, V, dtype, device)
    loss = fused_cross_entropy.cross_entropy(logits, labels, IGNORE)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    loss.backward(torch.tensor(1.7, device=device))  # a non-unit upstream gradient
    ref = logits.detach().double().requires_grad_(True)
    want = F.cross_entropy(ref, labels, ignore_index=IGNORE)
    (1.7 * want).backward()
    assert math.isclose(loss.item(), want.item(), rel_tol=1e-6)  # fp32 sums over V
    assert logits.grad.dtype == dtype
    torch.testing.assert_close(
        logits.grad.double(), ref.grad, rtol=tol, atol=tol * ref.grad.abs().max().item()
    )
    assert (logits.grad[labels == IGNORE] == 0).all()


@pytest.mark.parametrize("N, V", [(37, 5000), (3, 100)])  # a ragged last chunk; one chunk
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.interpreter
def test_cross_entropy_matches_float64_reference_in_the_interpreter(N, V, dtype, tol):
    _check(N, V, dtype, "cpu", tol)


@pytest.mark.interpreter
def test_cross_entropy_label_out_of_range_gives_nan_and_no_rows_gives_nan():
    logits, labels = _inputs(4, 50, torch.float32, "cpu")
    labels[1] = 50  # == V: not a class
    loss = fused_cross_entropy.cross_entropy(logits.requires_grad_(True), labels, IGNORE)
    assert torch.isnan(loss)
    loss.backward()  # nor is its gradient a plausible one
    assert torch.isnan(logits.grad[1]).all() and torch.isfinite(logits.grad[[0, 2, 3]]).all()
    labels[:] = IGNORE  # nothing labelled: 0 / 0, as F.cross_entropy
    assert torch.isnan(fused_cross_entropy.cross_entropy(logits.detach(), labels, IGNORE))
    assert torch.isnan(F.cross_entropy(logits.detach(), labels, ignore_index=IGNORE))


@pytest.mark.gpu
def test_cross_entropy_matches_float64_reference_on_gpu():
    _check(3000, 50368, torch.bfloat16, "cuda", 1e-2)  # ModernBERT's vocabulary


@pytest.mark.gpu
def test_cross_entropy_compiles():
    logits, labels = _inputs(300, 50368, torch.bfloat16, "cuda")
    fn = torch.compile(lambda x, y: fused_cross_entropy.cross_entropy(x, y, IGNORE), dynamic=True)
    loss = fn(logits, labels)
    loss.backward()
    want = F.cross_entropy(logits.detach().double(), labels, ignore_index=IGNORE)
    assert math.isclose(loss.item(), want.item(), rel_tol=1e-6)
    assert logits.grad is not None and torch.isfinite(logits.grad.float()).all()
