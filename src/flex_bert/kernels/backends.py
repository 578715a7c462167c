"""Attention backends over packed (unpadded) tokens: `BACKENDS`, the one table of them by name.

A backend is a function `fn(q_THD, k_THD, v_THD, cu_seqlens, max_seqlen, window) -> out_THD`:
  T tokens of all documents concatenated, H heads, D head dim; `cu_seqlens` (n+1,) int32 document boundaries
  (first 0, last T); `max_seqlen` a Python int; `window` the *total* local window (128 = 64 tokens on each side
  plus the token itself) or None for global attention. Tokens attend only inside their own document.

Backends (pick with `FlexBertConfig.attention_backend`):
  sdpa       exact reference on any device: documents padded to (n, max_seqlen), boolean mask, SDPA.
  varlen     torch.nn.attention.varlen.varlen_attn (PyTorch's flash kernel; CUDA, fp16/bf16).
  flash_attn flash_attn.flash_attn_varlen_func (FlashAttention-2), if the package is installed.
  fa4        FlashAttention-4's kernels (`fa4_attention.py`, the optional flash-attn-4 package; Hopper and
             Blackwell): FlashAttention-3's design on an H100/H200, on both layer types. Head dims that are
             multiples of 32 only (`FA4_HEAD_DIM_MULTIPLE`).
  flex       torch.nn.attention.flex_attention with a block-sparse BlockMask built from `cu_seqlens` (flex.py).
  band       local layers: FlexBERT's sliding-window Triton kernel (`band_attention.py`); global layers:
             varlen, faster there than the band kernel with an unbounded window. CUDA, fp16/bf16.
  auto       on CUDA with fp16/bf16 inputs: fa4 on global layers where it runs (flash-attn-4 installed, compute
             capability 9.x/10.x, head dim a multiple of 32), else varlen; band on local layers. sdpa otherwise.
             Each choice is the fastest measured for its layer type (docs/PERFORMANCE.md).

Each entry of `BACKENDS` also names its kernels (regular expressions over GPU kernel names), which the
profiler's categories are built from (train/profiling.py). A new backend is one function and one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import policy
from .fa4_attention import fa4_attention
from .flex import flex_attention_backend
from .rotary import positions_from_cu_seqlens

AttentionFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, "int | None"], torch.Tensor
]
_HALF = (torch.float16, torch.bfloat16)


def _flash_window(window: int | None) -> tuple[int, int]:
    """Total window -> flash-attn's (left, right); (64, 64) for 128. (-1, -1) means global."""
    return (-1, -1) if window is None else (window // 2, window // 2)


def sdpa_attention(q, k, v, cu_seqlens, max_seqlen, window):
    """Exact reference: scatter tokens into (n_docs, max_seqlen) slots, mask, SDPA, gather back.

    Mask: key in the same document AND (global OR |i - j| <= window // 2). Padding query slots attend to
    themselves only (their output is discarded), so no row is fully masked (no NaN, no stray gradient).
    """
    T, H, D = q.shape
    n_docs = cu_seqlens.shape[0] - 1
    pos = positions_from_cu_seqlens(cu_seqlens, T).long()
    doc = (
        torch.searchsorted(cu_seqlens, torch.arange(T, device=q.device, dtype=cu_seqlens.dtype), right=True)
        - 1
    )
    slot = doc.long() * max_seqlen + pos  # (T,) flat index into (n_docs * max_seqlen)

    def to_slots(x):  # (T, H, D) -> (n_docs, H, S, D)
        padded = x.new_zeros(n_docs * max_seqlen, H, D).index_copy(0, slot, x)
        return padded.view(n_docs, max_seqlen, H, D).transpose(1, 2)

    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    ar = torch.arange(max_seqlen, device=q.device)
    valid = ar[None, :] < lengths[:, None]  # (n, S)
    allowed = valid[:, :, None] & valid[:, None, :]  # (n, S_query, S_key): both are real tokens
    if window is not None:
        near = (ar[:, None] - ar[None, :]).abs() <= window // 2
        allowed = allowed & near[None]
    eye = torch.eye(max_seqlen, dtype=torch.bool, device=q.device)
    allowed = allowed | (~valid[:, :, None] & eye[None])
    out = F.scaled_dot_product_attention(to_slots(q), to_slots(k), to_slots(v), attn_mask=allowed[:, None])
    return out.transpose(1, 2).reshape(n_docs * max_seqlen, H, D)[slot]


def _require_cuda_half(backend: str, q: torch.Tensor) -> None:
    if not q.is_cuda or q.dtype not in _HALF:
        raise ValueError(
            f"attention_backend '{backend}' needs CUDA fp16/bf16 inputs, got {q.device} {q.dtype}; "
            "use 'sdpa' (or 'auto') on CPU / in fp32"
        )


def varlen_attention(q, k, v, cu_seqlens, max_seqlen, window):
    """PyTorch's varlen flash kernel (torch >= 2.10). CUDA only, fp16/bf16 only."""
    from torch.nn.attention.varlen import varlen_attn

    _require_cuda_half("varlen", q)
    return varlen_attn(
        q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, window_size=_flash_window(window)
    )


def flash_attn_attention(q, k, v, cu_seqlens, max_seqlen, window):
    """Dao-AILab flash-attn 2 (optional dependency)."""
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError as e:
        raise ValueError("attention_backend 'flash_attn' needs the flash-attn package; use 'varlen'") from e
    return flash_attn_varlen_func(
        q,
        k,
        v,
        cu_seqlens,
        cu_seqlens,
        max_seqlen,
        max_seqlen,
        dropout_p=0.0,
        window_size=_flash_window(window),
    )


def band_backend(q, k, v, cu_seqlens, max_seqlen, window):
    """The Triton band kernel on local layers, varlen on global ones. CUDA only, fp16/bf16 only."""
    if window is None:
        return varlen_attention(q, k, v, cu_seqlens, max_seqlen, window)
    band = policy.kernel("band_attention", q)
    if band is None:
        raise ValueError(
            f"attention_backend 'band' needs CUDA fp16/bf16 inputs with a power-of-two head dim >= 16 (and "
            f"Triton), got {q.device} {q.dtype}, head dim {q.shape[-1]}; use 'auto' on CPU / in fp32"
        )
    return band.band_attention(q, k, v, cu_seqlens, window)


# FA4 4.0.0b40's Hopper backward gets dQ wrong at head dim 16 and right at 64 (tests/test_fa4_attention.py, on
# the device machine). Its main kernel pads the head dim to a multiple of 16
# (flash_bwd_sm90.py) while the dQ accumulator and its pre/postprocess pad to 32 (interface.py), which agree
# only for multiples of 32: the backend refuses the others.
FA4_HEAD_DIM_MULTIPLE = 32


def fa4_backend(q, k, v, cu_seqlens, max_seqlen, window):
    """flash-attn-4's kernels on both layer types. CUDA only, fp16/bf16 only (and Hopper or Blackwell), head
    dims that are multiples of 32."""
    _require_cuda_half("fa4", q)
    if q.shape[-1] % FA4_HEAD_DIM_MULTIPLE:
        raise ValueError(
            f"attention_backend 'fa4' needs a head dim that is a multiple of {FA4_HEAD_DIM_MULTIPLE} "
            f"(flash-attn-4 4.0.0b40's Hopper backward gets dQ wrong otherwise), got {q.shape[-1]}; use 'auto'"
        )
    return fa4_attention(q, k, v, cu_seqlens, max_seqlen, window)


# Layer types on which `auto` runs FA4 where it can (flash-attn-4 installed, Hopper or data-centre Blackwell,
# a head dim FA4's backend accepts): global layers, where it beats varlen; on local layers (window 128) the band
# kernel is faster (docs/PERFORMANCE.md, "FlashAttention-4's kernels").
AUTO_FA4_LAYERS: frozenset[str] = frozenset({"global"})


def auto_kernel(q: torch.Tensor, window: int | None) -> AttentionFn:
    """`auto`'s choice for one call, on CUDA in half precision: FA4 on the layer types of `AUTO_FA4_LAYERS` where
    it runs, else the band kernel on local layers and varlen on global ones (varlen on local layers too if the
    band kernel is unavailable); the exact SDPA reference elsewhere."""
    if not (q.is_cuda and q.dtype in _HALF):
        return sdpa_attention
    layer = "global" if window is None else "local"
    fa4_shape = q.shape[-1] % FA4_HEAD_DIM_MULTIPLE == 0
    if layer in AUTO_FA4_LAYERS and fa4_shape and policy.fa4_usable(q):
        return fa4_backend
    if window is not None and policy.kernel("band_attention", q) is not None:
        return band_backend
    return varlen_attention


def runs_band(name: str, q: torch.Tensor, window: int | None) -> bool:
    """Whether backend `name` runs the band kernel on a layer with `window` (None: global) for q (q's device, dtype
    and head dim decide)."""
    if window is None:
        return False
    if name == "band":
        return policy.kernel("band_attention", q) is not None
    return name == "auto" and auto_kernel(q, window) is band_backend


def auto_attention(q, k, v, cu_seqlens, max_seqlen, window):
    """The fastest kernels where they run (`auto_kernel`); the exact SDPA reference elsewhere."""
    return auto_kernel(q, window)(q, k, v, cu_seqlens, max_seqlen, window)


@dataclass(frozen=True)
class Backend:
    fn: AttentionFn
    forward_kernels: str  # regular expression matching the names of its GPU kernels (forward, backward)
    backward_kernels: str


_FLASH = Backend(varlen_attention, r"flash.*fwd", r"flash.*bwd")  # PyTorch's and Dao-AILab's flash kernels
_BAND = Backend(
    band_backend,
    r"^_band_fwd|" + _FLASH.forward_kernels,
    r"^_band_(bwd|delta|dq_rotate)|" + _FLASH.backward_kernels,
)
_FA4 = Backend(fa4_backend, r"flash.*(fwd|forward)", r"flash.*(bwd|backward)")  # CuTe DSL kernel names
_SDPA = Backend(sdpa_attention, r"fmha.*(fwd|cutlassF)|attn.*fwd", r"fmha.*(bwd|cutlassB)|attn.*bwd")
_AUTO_PARTS = (_FA4, _BAND, _SDPA)

BACKENDS: dict[str, Backend] = {  # the names `attention_backend` accepts (model/config.py reads this table)
    "auto": Backend(
        auto_attention,
        "|".join(b.forward_kernels for b in _AUTO_PARTS),
        "|".join(b.backward_kernels for b in _AUTO_PARTS),
    ),
    "varlen": _FLASH,
    "flash_attn": Backend(flash_attn_attention, _FLASH.forward_kernels, _FLASH.backward_kernels),
    "fa4": _FA4,
    "flex": Backend(flex_attention_backend, r"flex_attention", r"flex_attention_backward"),
    "band": _BAND,
    "sdpa": _SDPA,
}


def get_backend(name: str) -> AttentionFn:
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {sorted(BACKENDS)}")
    return BACKENDS[name].fn
