"""`autograd_op`: the one way a kernel becomes an op that autograd, torch.compile and FakeTensorMode all see
(`opaque_op` for a kernel without a gradient); and `autocast_dtype`, the dtype the kernels that stand for a
matrix product's input or output write.

A kernel module gives four functions: `forward` and `backward` (they launch the kernels; typed, as
`torch.library.custom_op` infers each op's schema from the annotations) and their fakes (the shapes and dtypes
of their outputs, what torch.compile traces with). `autograd_op(name, ...)` registers `flex_bert::<name>` and
`flex_bert::<name>_bwd` as custom ops and the first one's gradient as a call of the second.

Both are opaque to Inductor (`custom_op`, not `triton_op`): it fuses nothing into user kernels, and seeing
inside them cost a buffer copy before a kernel or failed to decompose them under dynamic shapes
(docs/PERFORMANCE.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Save = Callable[[tuple, tuple], tuple[tuple, tuple]]


def autograd_op(
    name: str,
    forward: Callable,
    forward_fake: Callable,
    backward: Callable,
    backward_fake: Callable,
    *,
    save: Save,
    differentiable: Sequence[int] | None = None,
) -> tuple[Callable, Callable]:
    """Register the op pair and return (forward op, backward op).

    `save(inputs, outputs) -> (tensors, constants)` picks what the backward needs. The backward op is called
    as `backward(*grads, *tensors, *constants)`, `grads` the gradients of the forward's differentiable outputs
    (`differentiable`: their indices, default all; the others are marked non-differentiable), contiguous, or
    None for an output that reached no loss. It returns the gradients of the forward's first inputs; the
    remaining inputs, and any input that was None, get None.

    The returned forward runs the custom op where something traces (torch.compile, FakeTensorMode) and, in plain
    eager mode, the same functions through an `autograd.Function`: the custom op's dispatch costs about 100 us
    of CPU a forward+backward, which bounds short eager steps (docs/benchmarks/finetune_h100_2026-12-07.md).
    """
    fwd = torch.library.custom_op(f"flex_bert::{name}", forward, mutates_args=())
    fwd.register_fake(forward_fake)
    bwd = torch.library.custom_op(f"flex_bert::{name}_bwd", backward, mutates_args=())
    bwd.register_fake(backward_fake)

    def setup_context(ctx, inputs, output) -> None:
        outputs = output if isinstance(output, tuple) else (output,)
        tensors, ctx.constants = save(inputs, outputs)
        ctx.save_for_backward(*tensors)
        ctx.none_inputs = tuple(x is None for x in inputs)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None, not a zero-filled tensor
        if differentiable is not None:
            ctx.mark_non_differentiable(*(o for i, o in enumerate(outputs) if i not in differentiable))

    def gradients(ctx, grads, run_backward: Callable) -> tuple:
        if differentiable is not None:
            grads = tuple(grads[i] for i in differentiable)
        grads = tuple(None if g is None else g.contiguous() for g in grads)
        result = run_backward(*grads, *ctx.saved_tensors, *ctx.constants)
        result = list(result) if isinstance(result, tuple | list) else [result]
        result += [None] * (len(ctx.none_inputs) - len(result))
        return tuple(None if none else g for g, none in zip(result, ctx.none_inputs))

    fwd.register_autograd(lambda ctx, *grads: gradients(ctx, grads, bwd), setup_context=setup_context)

    class Eager(torch.autograd.Function):
        """The same forward, context and backward without the custom-op dispatch (about 100 us less a call)."""

        @staticmethod
        def forward(ctx, *inputs):
            output = forward(*inputs)
            setup_context(ctx, inputs, output)
            return output

        @staticmethod
        def backward(ctx, *grads):
            return gradients(ctx, grads, backward)

    def call(*inputs):
        if _plain_eager(inputs):
            return Eager.apply(*inputs)
        return fwd(*inputs)

    return call, bwd


def opaque_op(name: str, forward: Callable, forward_fake: Callable) -> Callable:
    """`flex_bert::<name>`, an op whose outputs carry no gradient (marked non-differentiable, so that autograd
    never calls a backward for them, even where an input requires grad), opaque to torch.compile (as
    `autograd_op`'s are); in plain eager mode `forward` itself runs (no custom-op dispatch). `forward` is typed,
    as for `autograd_op`; it returns a tuple of tensors."""
    op = torch.library.custom_op(f"flex_bert::{name}", forward, mutates_args=())
    op.register_fake(forward_fake)

    def setup_context(ctx, inputs, output) -> None:
        ctx.inputs = len(inputs)
        ctx.mark_non_differentiable(*output)

    op.register_autograd(lambda ctx, *grads: (None,) * ctx.inputs, setup_context=setup_context)
    return lambda *inputs: forward(*inputs) if _plain_eager(inputs) else op(*inputs)


def autocast_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a matrix product of x runs in: CUDA autocast's where it is on, else x's."""
    return torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else x.dtype


def _plain_eager(inputs: tuple) -> bool:
    """Eager mode on plain tensors: no tracing (torch.compile, FakeTensorMode, any dispatch mode) and no tensor
    subclass, so the custom op's dispatch (which those need) can be skipped."""
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0:
        return False
    return all(type(x) is torch.Tensor for x in inputs if isinstance(x, torch.Tensor))
