"""The MLM loss: mean cross-entropy of (N, V) logits over labels != ignore_index, one Triton kernel each way.

    loss_n = logsumexp(logits_n) - logits_n[label_n]     (0 where label_n == ignore_index)
    loss   = sum(loss_n) / count(label_n != ignore_index)

The forward reads the logits once (an online log-sum-exp over chunks of the row, in fp32) and keeps one fp32
log-sum-exp per row; the backward reads them once more and writes the gradient, `dloss_n * (softmax - onehot)`
computed in fp32 and rounded once to the logits' dtype: what autograd computes for
`F.cross_entropy(logits.float(), labels)` with bf16 logits (the fp32 gradient cast back to bf16). Nothing of
size N x V is stored besides the logits themselves and their gradient.

Why: Inductor's kernels for `F.cross_entropy(logits.float())` make several passes over an N x V buffer and a
fill, where the bytes need one pass forward and one backward (docs/PERFORMANCE.md).

A label outside [0, V) (other than ignore_index) gives a NaN loss and a NaN gradient row rather than reading
out of bounds (F.cross_entropy stops with a device assert). `fits(logits)` says which tensors it takes;
`policy.py` decides where it runs. Tests also run the kernels in Triton's interpreter on the CPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .op import autograd_op

BLOCK_V, WARPS = 4096, 8
_LOG2E = tl.constexpr(1.4426950408889634)
_LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _ce_fwd(LOGITS, LABELS, LOSS, LSE, V, stride, ignore_index, BLOCK: tl.constexpr):
    """One row: log-sum-exp over chunks of BLOCK (online, base 2), then the row's loss."""
    row = tl.program_id(0).to(tl.int64)
    base = LOGITS + row * stride
    cols = tl.arange(0, BLOCK)
    m = tl.max(tl.full([BLOCK], float("-inf"), tl.float32), axis=0)  # running max (scalar), log2 units
    s = tl.sum(tl.zeros([BLOCK], tl.float32), axis=0)  # running sum of 2^(x - m)
    for v0 in range(0, V, BLOCK):
        x = tl.load(base + v0 + cols, mask=v0 + cols < V, other=float("-inf")).to(tl.float32) * _LOG2E
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.math.exp2(m - m_new) + tl.sum(tl.math.exp2(x - m_new), axis=0)
        m = m_new
    lse = (m + tl.math.log2(s)) * _LN2
    label = tl.load(LABELS + row).to(tl.int64)
    in_range = (label >= 0) & (label < V)
    target = tl.load(base + label, mask=in_range, other=0.0).to(tl.float32)
    loss = tl.where(in_range, lse - target, float("nan"))
    tl.store(LOSS + row, tl.where(label == ignore_index, 0.0, loss))
    tl.store(LSE + row, lse)


@triton.jit
def _ce_bwd(LOGITS, LABELS, LSE, DLOSS, DLOGITS, V, stride, ignore_index, BLOCK: tl.constexpr):
    """One row: dlogits = dloss * (softmax - onehot(label)), 0 for an ignored row."""
    row = tl.program_id(0).to(tl.int64)
    base = LOGITS + row * stride
    out = DLOGITS + row * V
    cols = tl.arange(0, BLOCK)
    label = tl.load(LABELS + row).to(tl.int64)
    g = tl.where(label == ignore_index, 0.0, tl.load(DLOSS + row).to(tl.float32))
    g = tl.where((label != ignore_index) & ((label < 0) | (label >= V)), float("nan"), g)  # NaN, as its loss
    lse2 = tl.load(LSE + row) * _LOG2E
    for v0 in range(0, V, BLOCK):
        c = v0 + cols
        x = tl.load(base + c, mask=c < V, other=0.0).to(tl.float32)
        p = tl.math.exp2(x * _LOG2E - lse2)
        d = g * (p - tl.where(c == label, 1.0, 0.0))
        tl.store(out + c, d.to(DLOGITS.dtype.element_ty), mask=c < V)


def _fwd(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    N, V = logits.shape
    loss, lse = _fwd_fake(logits, labels, ignore_index)
    if N:
        _ce_fwd[(N,)](
            logits, labels, loss, lse, V, logits.stride(0), ignore_index, BLOCK=BLOCK_V, num_warps=WARPS
        )
    return loss, lse


def _fwd_fake(logits, labels, ignore_index):
    N = logits.shape[0]
    return logits.new_empty((N,), dtype=torch.float32), logits.new_empty((N,), dtype=torch.float32)


def _bwd(
    dloss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, lse: torch.Tensor, ignore_index: int
) -> torch.Tensor:
    N, V = logits.shape
    dlogits = _bwd_fake(dloss, logits, labels, lse, ignore_index)
    if N:
        _ce_bwd[(N,)](
            logits,
            labels,
            lse,
            dloss,
            dlogits,
            V,
            logits.stride(0),
            ignore_index,
            BLOCK=BLOCK_V,
            num_warps=WARPS,
        )
    return dlogits


def _bwd_fake(dloss, logits, labels, lse, ignore_index):
    return logits.new_empty(logits.shape)


def _save(inputs, outputs):
    logits, labels, ignore_index = inputs
    return (logits, labels, outputs[1]), (ignore_index,)


_fwd, _bwd = autograd_op(
    "cross_entropy_rows", _fwd, _fwd_fake, _bwd, _bwd_fake, save=_save, differentiable=(0,)
)


def fits(logits: torch.Tensor) -> bool:
    """The tensors the kernels take: (rows, vocabulary) floating-point logits."""
    return logits.dim() == 2 and logits.is_floating_point()


def cross_entropy(logits_NV: torch.Tensor, labels_N: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """`F.cross_entropy(logits.float(), labels, ignore_index=ignore_index)` (mean over labelled rows, fp32)."""
    loss_N, _lse = _fwd(logits_NV.contiguous(), labels_N.contiguous(), ignore_index)
    return loss_N.sum() / (labels_N != ignore_index).sum()
