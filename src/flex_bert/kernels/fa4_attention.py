"""FlashAttention-4's kernels (the optional `flash-attn-4` package, `flash_attn.cute`) on packed documents.

`fa4_attention(q, k, v, cu_seqlens, max_seqlen, window) -> out`, the backend contract of `backends.py`:
(T, H, D) fp16/bf16 on a Hopper or Blackwell GPU; `window` the total local window (128: 64 keys each side) or
None for global attention. flash-attn-4 is pure Python: `pip install flash-attn-4` brings the CUTLASS DSL,
which compiles each kernel (per dtype, head dim, window, and a few shape classes: more than 256 documents
in a batch, documents that fit in one tile) on its first call, in a few seconds, and caches it for the
process (FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1 keeps them on disk). On Hopper it runs FlashAttention-3's
design (warp-specialised, TMA loads, wgmma), where torch's `varlen_attn` runs FlashAttention-2's: the global
layers are the largest cost after the matrix products (docs/PERFORMANCE.md).

Two opaque custom ops (`op.autograd_op`), forward -> (out, lse) and backward -> (dq, dk, dv), so that a
compiled layer stays one graph: flash-attn-4's own autograd.Function would make Dynamo trace its Python host
code (compile-cache lookups, launches through TVM-FFI). They call `_flash_attn_fwd` and `_flash_attn_bwd` of
`flash_attn.cute.interface`, the two entry points that PyTorch's own FA4 hook calls
(torch/nn/attention/_fa4.py); that hook cannot serve here, as the torch versions in use unpack another number
of outputs than flash-attn-4 4.0.0b40 returns and refuse windows in the backward.
Written against flash-attn-4 4.0.0b40 (`pip install -e ".[fa4]"`): for these calls its sm_90 kernels compile
(tests/test_fa4_attention.py). `auto` picks it for global layers where it runs (backends.py).

Without a GPU, the kernels compile for a target named by environment variables (FA4's cross-compilation:
FLASH_ATTENTION_ARCH=sm_90a CUTE_DSL_ARCH=sm_90a FLASH_ATTENTION_NUM_SMS=132) under FakeTensorMode, which
is how the CPU tests check these calls.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

import torch

from .op import autograd_op

TESTED_VERSION = "4.0.0b40"


@functools.cache
def _interface() -> ModuleType:
    """FA4's interface module; called inside the ops' implementations only (never traced by torch.compile)."""
    try:
        return importlib.import_module("flash_attn.cute.interface")
    except ImportError as e:
        raise ValueError(
            f"attention_backend 'fa4' needs the flash-attn-4 package "
            f"(pip install flash-attn-4=={TESTED_VERSION}); it could not be imported: {e}"
        ) from e


@functools.cache
def _supported_gpu(device: torch.device) -> bool:
    """Hopper (9.x) or data-centre Blackwell (10.x), as PyTorch's own FA4 hook requires: FA4's other
    generations lack parts of the backward (no deterministic mode on 12.x)."""
    return torch.cuda.get_device_capability(device)[0] in (9, 10)


def _varlen_args(cu_seqlens, max_seqlen: int, window: int) -> dict:
    """Keyword arguments FA4's forward and backward share: document bounds, and the window as keys on each
    side (None: unbounded) from our op argument (-1: global, else the total window)."""
    side = None if window < 0 else window // 2
    return dict(
        cu_seqlens_q=cu_seqlens,
        cu_seqlens_k=cu_seqlens,
        max_seqlen_q=max_seqlen,
        max_seqlen_k=max_seqlen,
        window_size_left=side,
        window_size_right=side,
    )


def forward(q, k, v, cu_seqlens, max_seqlen: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FA4's varlen forward: (out (T, H, D), lse (H, T) float32). `window` -1 for global attention."""
    fa4 = _interface()
    if torch.cuda.is_available() and not _supported_gpu(q.device):  # (cross-compiling: no GPU to ask)
        major, minor = torch.cuda.get_device_capability(q.device)
        raise ValueError(
            f"attention_backend 'fa4' needs a Hopper or data-centre Blackwell GPU (compute capability 9.x or "
            f"10.x), this one is {major}.{minor}; use 'auto'"
        )
    out, lse, *_ = fa4._flash_attn_fwd(
        q, k, v, **_varlen_args(cu_seqlens, max_seqlen, window), return_lse=True
    )
    return out, lse


def backward(do, q, k, v, out, lse, cu_seqlens, max_seqlen: int, window: int):
    """FA4's varlen backward: (dq, dk, dv); deterministic under `torch.use_deterministic_algorithms(True)`."""
    dq, dk, dv = _interface()._flash_attn_bwd(
        q,
        k,
        v,
        out,
        do,
        lse,
        **_varlen_args(cu_seqlens, max_seqlen, window),
        deterministic=torch.are_deterministic_algorithms_enabled(),
    )
    return dq, dk, dv


def _fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    return forward(q, k, v, cu_seqlens, max_seqlen, window)


def _fwd_fake(q, k, v, cu_seqlens, max_seqlen, window):
    T, H, _D = q.shape
    return q.new_empty(q.shape), q.new_empty((H, T), dtype=torch.float32)  # FA4's varlen lse is (H, T)


def _bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    window: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return backward(do, q, k, v, out, lse, cu_seqlens, max_seqlen, window)


def _bwd_fake(do, q, k, v, out, lse, cu_seqlens, max_seqlen, window):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _save(inputs, outputs):
    q, k, v, cu_seqlens, max_seqlen, window = inputs
    out, lse = outputs
    return (q, k, v, out, lse, cu_seqlens), (max_seqlen, window)


_fwd, _bwd = autograd_op("fa4_attention", _fwd, _fwd_fake, _bwd, _bwd_fake, save=_save, differentiable=(0,))


def fa4_attention(q, k, v, cu_seqlens, max_seqlen, window):
    """FA4 on both layer types: a window of `window // 2` keys on each side, or none (global). The package
    and the GPU's generation are checked when the op first runs (not traced by torch.compile); the inputs'
    device and dtype by the backend (`backends.fa4_backend`)."""
    out, _lse = _fwd(
        q.contiguous(),
        k.contiguous(),
        v.contiguous(),
        cu_seqlens.to(torch.int32),
        max_seqlen,
        -1 if window is None else window,
    )
    return out
