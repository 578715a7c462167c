"""The row scale of FP8 quantization in Triton, shared by the kernels that write FP8 copies of their outputs
(`fused_norm`, `fused_glu`) so that they match `fp8_mlp.quantize_rows` (PyTorch) bit for bit."""

import triton
import triton.language as tl

_FP32_TINY = tl.constexpr(1.1754943508222875e-38)  # the smallest normal fp32


@triton.jit
def row_scale(amax, FP8_MAX: tl.constexpr):
    """amax / FP8_MAX, rounded to nearest as PyTorch divides; an all-zero row gets the smallest normal fp32
    scale, as `quantize_rows` gives it. Quantize with `tl.math.div_rn(x, scale)` for the same reason."""
    return tl.math.div_rn(tl.maximum(amax, _FP32_TINY), FP8_MAX)
