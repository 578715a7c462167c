"""FlexBERT with its Triton kernels (`fused_kernels: true`) against the PyTorch composition, on the GPU; and its
kernel path under compile_layers against eager on the CPU (Triton's interpreter, the policy as on a GPU)."""

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


@pytest.mark.parametrize("fp8, grad_tol", [(False, 5e-3), (True, 6e-2)])
@pytest.mark.interpreter
def test_kernel_path_under_compile_layers_matches_eager_in_the_interpreter(monkeypatch, fp8, grad_tol):
    """The model as it runs on a Hopper GPU, on the CPU: the policy runs every kernel op where a GPU would (the
    kernels in Triton's interpreter; fp16, whose products the interpreter computes right), with the FP8 switches
    off or on, eager against compile_layers: the custom ops' schemas, fakes and autograd inside Inductor's
    graphs, which the CPU's composition path never traces. No layer falls back to eager (5 graphs), the QKV
    kernel runs (with FP8 operands where on), loss within 1e-3, gradients within fp16 rounding, or within FP8's:
    a last-bit difference of Inductor's can flip an FP8 rounding (measured 1.6e-3 and 2.9e-2)."""
    import torch
    from torch._dynamo.utils import counters

    from flex_bert.kernels import fused_qkv, policy
    from flex_bert.model import FlexBertForMaskedLM
    from flex_bert.train.compilation import compile_layers
    from tests._parity import tiny_config

    monkeypatch.setattr(policy, "usable", lambda name, tensor: policy.KERNELS.get(name))
    launches = []
    launch = fused_qkv.launch
    monkeypatch.setattr(
        fused_qkv, "launch", lambda *a, **k: launches.append(k.get("x_fp8") is not None) or launch(*a, **k)
    )
    cfg = tiny_config(128, intermediate_size=96, attn_out_dropout_prob=0.0, fp8_qkv=fp8, fp8_mlp=fp8)
    ids = torch.randint(5, 128, (120,), generator=torch.Generator().manual_seed(3))
    cu = torch.tensor([0, 50, 120], dtype=torch.int32)
    labels = torch.where(torch.arange(120) % 4 == 0, ids, torch.full_like(ids, -100))
    runs = []
    torch._dynamo.reset()
    counters.clear()
    for compiled in (False, True):
        torch.manual_seed(0)
        model = FlexBertForMaskedLM(cfg).half()
        if compiled:
            compile_layers(model, tune=False)
        launches.clear()
        loss = model(ids, cu_seqlens=cu, max_seqlen=70, labels=labels).loss
        loss.backward()
        assert len(launches) == cfg.num_hidden_layers and all(x == fp8 for x in launches), launches
        runs.append((loss.detach().float(), {n: p.grad.float() for n, p in model.named_parameters()}))
    assert counters["stats"]["unique_graphs"] == 5
    (eager_loss, eager_grads), (loss, grads) = runs
    torch.testing.assert_close(loss, eager_loss, rtol=1e-3, atol=1e-3)
    for name, g in grads.items():
        err = (g - eager_grads[name]).abs().max() / eager_grads[name].abs().max()
        assert err < grad_tol, (name, err.item())
