"""Where FlexBERT's own kernels run: the one place that decides between a kernel and the PyTorch composition.

A Triton kernel runs when the caller asks for it (the config's `fused_kernels`; the `band` and `auto` attention
backends ask always), Triton is installed, the tensors are on a CUDA device (of at least the compute capability
the module names as `MIN_CAPABILITY`, if it names one) and the kernel takes them (its module's `fits`). Everywhere else the composition runs: the same computation (another dropout mask), as on the
CPU. FlashAttention-4 (not Triton) runs where `fa4_usable` says: its package imports and the GPU is a
generation its backend supports.
"""

from __future__ import annotations

import functools
import importlib.util
from types import ModuleType

import torch

from . import fa4_attention

TRITON = importlib.util.find_spec("triton") is not None  # on Linux it ships with torch

if TRITON:
    from . import (
        band_attention,
        fp8_rows,
        fused_cross_entropy,
        fused_glu,
        fused_norm,
        fused_qkv,
        fused_qkv_band,
        fused_rotary,
    )

    KERNELS: dict[str, ModuleType] = {
        "add_norm": fused_norm,
        "gelu_gate": fused_glu,
        "rotary_qkv": fused_rotary,
        "qkv_rotary": fused_qkv,
        "qkv_band_attention": fused_qkv_band,
        "cross_entropy": fused_cross_entropy,
        "band_attention": band_attention,
        "quantize_rows": fp8_rows,
    }
else:  # pragma: no cover
    KERNELS = {}


def kernel(name: str, *tensors, enabled: bool = True) -> ModuleType | None:
    """The kernel module `name` if it runs on these tensors (`usable` on the first one's device, and the module's
    `fits`), else None: the caller runs the PyTorch composition."""
    module = usable(name, tensors[0]) if enabled else None
    return module if module is not None and module.fits(*tensors) else None


def usable(name: str, tensor) -> ModuleType | None:
    """The kernel module `name` if it can run on `tensor`'s device (CUDA, of at least the module's
    `MIN_CAPABILITY` where it names one), whatever the tensors: what a caller asks before preparing operands."""
    module = KERNELS.get(name)
    if module is None or not tensor.is_cuda:
        return None
    need = getattr(module, "MIN_CAPABILITY", 0)
    return None if need and cuda_major(tensor) < need else module


def cuda_major(tensor: torch.Tensor) -> int:
    """The compute capability's major version of the CUDA device `tensor` lives on (9 for Hopper)."""
    return _major(tensor.device.index or 0)


@torch.compiler.assume_constant_result  # inside compiled layers: evaluated once while tracing, a constant
def _major(device_index: int) -> int:
    return torch.cuda.get_device_capability(device_index)[0]  # torch caches the device's properties


@functools.cache
def _fa4_usable_on(device_index: int) -> bool:
    """flash-attn-4 imports and this GPU is one FA4's backend accepts (compute capability 9.x or 10.x)."""
    if torch.cuda.get_device_capability(device_index)[0] not in (9, 10):
        return False
    try:
        fa4_attention._interface()
    except ValueError:
        return False
    return True


@torch.compiler.assume_constant_result  # inside compiled layers: evaluated once while tracing, a constant
def _fa4_usable(device_index: int) -> bool:
    return _fa4_usable_on(device_index)


def fa4_usable(q: torch.Tensor) -> bool:
    """FlashAttention-4 runs on q's device (CUDA, package installed, Hopper or data-centre Blackwell)."""
    return q.is_cuda and _fa4_usable(q.device.index or 0)
