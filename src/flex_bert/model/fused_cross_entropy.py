"""The MLM loss: mean cross-entropy of (N, V) logits over labels != ignore_index, one Triton kernel each way.

    loss_n = logsumexp(logits_n) - logits_n[label_n]     (0 where label_n == ignore_index)
    loss   = sum(loss_n) / count(label_n != ignore_index)

The forward reads the logits once (an online log-sum-exp over chunks of the row, in fp32) and keeps one fp32
log-sum-exp per row; the backward reads them once more and writes the gradient, `dloss_n * (softmax - onehot)`
computed in fp32 and rounded once to the logits' dtype: what autograd computes for
`F.cross_entropy(logits.float(), labels)` with bf16 logits (the fp32 gradient cast back to bf16). Nothing of
size N x V is stored besides the logits themselves and their gradient.

Why: Inductor's kernels for `F.cross_entropy(logits.float())` took 2.24 ms forward and 2.48 ms backward, plus
a 0.9 ms fill, for base @1024's 29.5k masked tokens x 50,368 on an H200 (docs/PERFORMANCE.md), where the
bytes (3 GB read forward; 3 GB read and 3 GB written backward) take about 0.8 and 1.6 ms at its bandwidth.

A label outside [0, V) (other than ignore_index) gives a NaN loss and a NaN gradient row rather than reading
out of bounds (F.cross_entropy stops with a device assert).
Both passes are opaque custom ops (as `fused_glu`). `supported(logits)` says where they run: CUDA with
Triton; tests also run the kernels in Triton's interpreter on the CPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

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


@torch.library.custom_op("flex_bert::cross_entropy_rows", mutates_args=())
def _fwd(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    N, V = logits.shape
    loss = logits.new_empty((N,), dtype=torch.float32)
    lse = logits.new_empty((N,), dtype=torch.float32)
    if N:
        _ce_fwd[(N,)](
            logits, labels, loss, lse, V, logits.stride(0), ignore_index, BLOCK=BLOCK_V, num_warps=WARPS
        )
    return loss, lse


@_fwd.register_fake
def _(logits, labels, ignore_index):
    N = logits.shape[0]
    return logits.new_empty((N,), dtype=torch.float32), logits.new_empty((N,), dtype=torch.float32)


@torch.library.custom_op("flex_bert::cross_entropy_rows_bwd", mutates_args=())
def _bwd(
    dloss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, lse: torch.Tensor, ignore_index: int
) -> torch.Tensor:
    N, V = logits.shape
    dlogits = logits.new_empty((N, V))
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


@_bwd.register_fake
def _(dloss, logits, labels, lse, ignore_index):
    return logits.new_empty(logits.shape)


def _setup_context(ctx, inputs, output) -> None:
    logits, labels, ignore_index = inputs
    ctx.save_for_backward(logits, labels, output[1])
    ctx.ignore_index = ignore_index
    ctx.set_materialize_grads(False)  # lse's gradient stays None instead of a zero-filled tensor


def _backward(ctx, dloss, _dlse):
    logits, labels, lse = ctx.saved_tensors
    return _bwd(dloss.contiguous(), logits, labels, lse, ctx.ignore_index), None, None


torch.library.register_autograd("flex_bert::cross_entropy_rows", _backward, setup_context=_setup_context)


def supported(logits: torch.Tensor) -> bool:
    return logits.is_cuda and logits.dim() == 2 and logits.is_floating_point()


def cross_entropy(logits_NV: torch.Tensor, labels_N: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """`F.cross_entropy(logits.float(), labels, ignore_index=ignore_index)` (mean over labelled rows, fp32)."""
    loss_N, _lse = _fwd(logits_NV.contiguous(), labels_N.contiguous(), ignore_index)
    return loss_N.sum() / (labels_N != ignore_index).sum()
