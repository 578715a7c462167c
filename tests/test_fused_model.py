"""FlexBERT with its Triton kernels (`fused_kernels: true`) against the PyTorch composition, on the GPU."""

import pytest

from tests._gpu_model import assert_close_to, loss_and_grads


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["varlen", "auto"])  # auto: the Triton band kernel on local layers too
def test_fused_model_matches_the_composition_on_gpu(backend):
    """A bf16-autocast FlexBERT with `fused_kernels` (residual joints, GLU gate, QKV projection with rotary,
    loss) against the same weights with the PyTorch composition and varlen attention (dropout 0): loss and every
    gradient within bf16 tolerance, eager and with compile_layers (the kernels inside Inductor's graphs, forward
    and backward)."""
    ref = loss_and_grads(False, fused_kernels=False, attention_backend="varlen")
    for compiled in (False, True):
        got = loss_and_grads(compiled, fused_kernels=True, attention_backend=backend)
        assert_close_to(got, ref, 2e-3, 3e-2, compiled)
