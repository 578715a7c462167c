"""What FlexBERT's Triton matrix products with an epilogue share (`fused_qkv`, `fused_wi_glu`): `x @ w.T` on TMA
boxes (Hopper and newer), each tile of the output computed as two accumulators over two blocks of the weight's
rows that the epilogue pairs (a rotation's halves, a gate's two inputs), in a grouped tile order, one tile per
program or persistent.

A configuration is `(BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, warps, stages, programs)`, BLOCK_N the width of each
accumulator; programs 0: one tile per program; 1: one program per SM (persistent), the tile loop flattened with
the product's so that the next tile's loads overlap this tile's epilogue (Triton's software pipelining); 2: also
warp-specialised (loads, products and epilogue in separate warps).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MIN_CAPABILITY = 9  # TMA boxes; the tiles were chosen and measured on Hopper (docs/PERFORMANCE.md)


@triton.jit
def tile_coords(t, T, num_n, BLOCK_M: tl.constexpr, GROUP_M: tl.constexpr):
    """Tile t -> (token tile, column tile), grouped: GROUP_M token tiles run through all column tiles together
    (their rows of x stay in L2)."""
    num_m = tl.cdiv(T, BLOCK_M)
    per_group = GROUP_M * num_n
    first_m = (t // per_group) * GROUP_M
    group_m = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (t % per_group) % group_m, (t % per_group) // group_m


@triton.jit
def paired_product(
    x_desc, w_desc, m0, row1, row2, C: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """fp32 (BLOCK_M, BLOCK_N) tiles `x[m0:] @ w[row1:].T` and `x[m0:] @ w[row2:].T`: x_desc (T, C) in
    (BLOCK_M, BLOCK_K) boxes, w_desc (rows, C) in (BLOCK_N, BLOCK_K) boxes (rows past the end read as zeros)."""
    acc1 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, C, BLOCK_K):
        a = x_desc.load([m0, k])
        acc1 = tl.dot(a, w_desc.load([row1, k]).T, acc1, input_precision=PRECISION)
        acc2 = tl.dot(a, w_desc.load([row2, k]).T, acc2, input_precision=PRECISION)
    return acc1, acc2


def descriptors(x: torch.Tensor, weight: torch.Tensor, block_m: int, block_n: int, block_k: int):
    """TMA descriptors of x in (block_m, block_k) boxes and of the weight in (block_n, block_k) boxes."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    return (
        TensorDescriptor.from_tensor(aligned(x), [block_m, block_k]),
        TensorDescriptor.from_tensor(aligned(weight), [block_n, block_k]),
    )


def programs(tiles: int, mode: int, device: torch.device) -> int:
    """How many programs run `tiles` tiles in programs mode `mode` (0: one each; 1, 2: one per SM)."""
    return min(tiles, _num_sms(device)) if mode else tiles


def launch_options(mode: int, warps: int, stages: int, dtype: torch.dtype) -> dict:
    """The kernels' constexprs and launch options that follow from programs mode, warps, stages and dtype."""
    return dict(
        PERSISTENT=mode > 0,
        SPECIALISE=mode == 2,
        PRECISION="ieee" if dtype == torch.float32 else "tf32",
        num_warps=warps,
        num_stages=stages,
    )


def aligned(t: torch.Tensor) -> torch.Tensor:
    """t, or a copy of it where its start is not at the 16-byte boundary a TMA box needs."""
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def linear_gradients(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, has_bias: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias) of the product `x @ weight.T (+ bias)` from its output's gradient, any shape of
    (T, rows) elements (cuBLAS); dbias empty without a bias."""
    dy = dy.reshape(x.shape[0], weight.shape[0])
    return dy @ weight, *weight_gradients(dy, x, weight, has_bias)


def weight_gradients(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, has_bias: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dweight, dbias) alone, for a product whose input gradient is computed elsewhere."""
    dy = dy.reshape(x.shape[0], weight.shape[0])
    d_bias = dy.sum(0, dtype=torch.float32).to(weight.dtype) if has_bias else dy.new_empty(0)
    return dy.t() @ x, d_bias
