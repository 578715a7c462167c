"""FP8 as FlexBERT's opt-in FP8 paths use it (`fp8_mlp`, `fp8_qkv`): float8_e4m3fn scaled per row, and the
products of such operands.

A tensor's row r is stored as `x_r / s_r` rounded to e4m3 (round to nearest even), `s_r = amax(|x_r|) / 448`
(e4m3's largest value) kept in fp32 (`quantize_rows`, the PyTorch reference every kernel that writes an FP8 copy
is tested against), and a product `a b^T` of two such tensors is `torch._scaled_mm` with the row scales of both
(`mm_rows`): per token for activations, per output row for weights. Row scales are legal only along the
dimensions a product does not sum over, so an operand can be FP8 only where the kernel that writes it sees
whole rows: the joints (`fused_norm`), the GLU gate (`fused_glu`) and the weights (`fp8_rows`, one small pass).

`linear(x, weight, fused, x_fp8)`: `x weight^T` with its forward in FP8 and its gradients in x's dtype, the
projection `fp8_qkv` runs where `fused_qkv` does not (the composition; `fused_qkv` computes the same product in
its kernel).
"""

from __future__ import annotations

import torch

from . import policy
from .op import autocast_dtype, autograd_op

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448
MIN_CAPABILITY = 9  # torch._scaled_mm with row scales: Hopper and newer


def check_device(x: torch.Tensor) -> None:
    """Refuse a CUDA GPU older than `MIN_CAPABILITY` (the CPU runs FP8 products, slowly, for tests)."""
    if x.is_cuda and policy.cuda_major(x) < MIN_CAPABILITY:
        raise ValueError(
            f"FP8 products (model_config fp8_mlp, fp8_qkv) need a GPU of compute capability {MIN_CAPABILITY}.0 "
            f"or newer (Hopper); this one is {policy.cuda_major(x)}.x: set them false"
        )


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x / s in float8_e4m3fn, contiguous, s of shape (rows, 1) in fp32), s = each row's amax / 448, for a 2-D x,
    at least the smallest normal fp32 (an all-zero row's FP8 values are zeros, and no scale is subnormal: a
    division that flushes subnormals to zero would make them NaN). The reference the kernels that write FP8
    copies are tested against (PyTorch's rounding)."""
    amax = x.abs().amax(dim=1, keepdim=True).float()
    s = (amax / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    return (x.float() / s).to(FP8).contiguous(), s


def to_fp8_rows(x: torch.Tensor, fused: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantize_rows(x)` (x 2-D, any strides): `fp8_rows`' kernel (one pass) where the policy runs it."""
    module = policy.kernel("quantize_rows", x, enabled=fused)
    return quantize_rows(x) if module is None else module.quantize_rows(x, FP8)


def mm_rows(
    a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor], fast_accum: bool
) -> torch.Tensor:
    """a b^T in bf16 (what row scales allow) from two `quantize_rows` results: (M, K) and (N, K) give (M, N).
    `fast_accum`: Hopper's FP8 accumulation without promotion to fp32 along K (faster, less exact), as Transformer
    Engine and torchao do for forward products (and `fused_qkv`'s FP8 tiles, Triton's default); gradient
    products promote (False)."""
    (a8, sa), (b8, sb) = a, b
    return torch._scaled_mm(
        a8, b8.t(), scale_a=sa, scale_b=sb.t(), out_dtype=torch.bfloat16, use_fast_accum=fast_accum
    )


def _linear_fwd(
    x: torch.Tensor, weight: torch.Tensor, x8: torch.Tensor, x_scale: torch.Tensor, fused: bool
) -> torch.Tensor:
    return mm_rows((x8, x_scale), to_fp8_rows(weight, fused), fast_accum=True).to(x.dtype)


def _linear_fwd_fake(x, weight, x8, x_scale, fused):
    return x.new_empty((x.shape[0], weight.shape[0]))


def _linear_bwd(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return dy @ weight, dy.t() @ x


def _linear_bwd_fake(dy, x, weight):
    return torch.empty_like(x), torch.empty_like(weight)


_linear, _ = autograd_op(
    "fp8_linear",
    _linear_fwd,
    _linear_fwd_fake,
    _linear_bwd,
    _linear_bwd_fake,
    save=lambda inputs, outputs: ((inputs[0], inputs[1]), ()),
)


def operands(
    x_TC: torch.Tensor,
    weights: tuple[torch.Tensor, ...],
    fused: bool,
    x_fp8: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]:
    """(x, weights, x8, x_scale) for an FP8 op: x and the weights contiguous in the dtype the products run in
    (autocast's: cast as a linear layer casts them), and `x_fp8`, `quantize_rows` of that x where its producer
    wrote it, else computed here. Refuses a GPU without FP8 products (`check_device`)."""
    check_device(x_TC)
    dtype = autocast_dtype(x_TC)
    x = x_TC.to(dtype).contiguous()
    x8, x_scale = to_fp8_rows(x, fused) if x_fp8 is None else x_fp8
    return x, tuple(w.to(dtype).contiguous() for w in weights), x8, x_scale


def linear(
    x_TC: torch.Tensor,
    weight: torch.Tensor,
    fused: bool,
    x_fp8: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """`x weight^T` (no bias), forward as an FP8 product of row-quantized operands, gradients in the dtype the
    product runs in (`operands`)."""
    x, (weight,), x8, x_scale = operands(x_TC, (weight,), fused, x_fp8)
    return _linear(x, weight, x8, x_scale, fused)
