"""What the tests of the kernels that write FP8 copies share: their copy against `fp8.quantize_rows`."""

import torch

from flex_bert.kernels.fp8 import FP8, quantize_rows


def assert_fp8_rows(out8: torch.Tensor, scale: torch.Tensor, out: torch.Tensor, exact: bool) -> None:
    """(out8, scale), a kernel's FP8 copy of its output `out`, is `quantize_rows(out)` (PyTorch's amax, division
    and e4m3 rounding): the scales bitwise; the values bitwise where `exact` (compiled for a GPU). Triton's
    interpreter rounds ties away from zero and drops the carry into the exponent when a value rounds up to a
    power of two (triton-lang/triton#8322, #11897): there, and only there, its values may differ, by one e4m3
    step, or by at most PyTorch's value where that is a power of two (mostly half of it)."""
    want8, want_scale = quantize_rows(out)
    assert scale.shape == (out.shape[0], 1) and torch.equal(scale, want_scale)
    assert out8.dtype == FP8 and out8.shape == out.shape
    got, ref = out8.float(), want8.float()
    differ = got != ref
    if exact:
        assert not differ.any(), f"{int(differ.sum())} FP8 values differ"
        return
    got, ref = got[differ], ref[differ]
    exponent = ref.abs().log2()
    power_of_two = exponent == exponent.round()
    one_step = (got - ref).abs() == 2.0 ** (exponent.floor().clamp(min=-6) - 3)  # e4m3: 3 mantissa bits
    assert (one_step | (power_of_two & ((got - ref).abs() <= ref.abs()))).all()
    assert differ.float().mean() < 0.1
