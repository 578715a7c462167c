"""The step profiler: interval arithmetic against a brute-force count, kernel categories, the callback."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.autograd import DeviceType

from flex_bert.train.profiling import _minus_us, _union_us, categorize, kernel_summary
from tests._train_fixtures import tiny_mds, tiny_yaml  # noqa: F401


def _covered(intervals, n=200) -> np.ndarray:
    cells = np.zeros(n, dtype=bool)
    for a, b in intervals:
        cells[a:b] = True
    return cells


@pytest.mark.parametrize("seed", range(20))
def test_union_and_difference_match_a_brute_force_count(seed):
    rng = np.random.default_rng(seed)

    def draw(k):
        starts = rng.integers(0, 180, k)
        return [(int(a), int(a + rng.integers(0, 20))) for a in starts]

    spans, cover = draw(int(rng.integers(0, 12))), draw(int(rng.integers(0, 12)))
    assert _union_us(spans) == _covered(spans).sum()
    assert _minus_us(spans, cover) == (_covered(spans) & ~_covered(cover)).sum()


@pytest.mark.parametrize(
    ("name", "category"),
    [
        ("ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)", "communication (NCCL)"),
        (
            "void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits<64>>",
            "attention backward",
        ),
        ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128>>", "attention forward"),
        ("nvjet_tst_192x192_64x4_2x1_v_bz_coopA_TNN", "matrix products"),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "matrix products"),
        ("_stableadamw_exp_avg_kernel", "optimizer"),
        (
            "_add_norm_bwd",
            "FlexBERT's Triton kernels (residual joints, GLU gate, rotary)",
        ),  # not "eager ... norm"
        ("_gelu_gate_fwd", "FlexBERT's Triton kernels (residual joints, GLU gate, rotary)"),
        ("_rotary_qkv_bwd", "FlexBERT's Triton kernels (residual joints, GLU gate, rotary)"),
        ("_qkv_rotary_fwd", "matrix products"),  # the QKV projection with its rotary epilogue
        ("_band_fwd", "attention forward"),
        ("_band_bwd", "attention backward"),
        ("_band_bwd_dq", "attention backward"),
        ("_ce_bwd", "MLM loss (FlexBERT's cross-entropy kernels)"),
        (
            "triton_red_fused__to_copy_add_native_layer_norm_0",
            "Inductor fused (head norm, loss, ...)",
        ),
        (
            "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>",
            "copies and fills",
        ),
        ("Memcpy HtoD (Pinned -> Device)", "copies and fills"),
        ("void at::native::reduce_kernel<512, 1, ReduceOp<float>>", "eager reductions and indexing"),
        ("some_custom_kernel", "other"),
    ],
)
def test_kernel_names_fall_in_their_category(name, category):
    assert categorize(name) == category


def test_summary_of_a_cpu_profile_is_consistent():
    from torch.profiler import profile

    a = torch.randn(256, 256)
    with profile() as prof:
        for _ in range(3):
            (a @ a).relu().sum()
    s = kernel_summary(prof, 3, 10.0, device_type=DeviceType.CPU)
    cats = s["categories_ms_per_step"]
    assert sum(cats.values()) == pytest.approx(s["kernel_ms_per_step"], abs=0.01)
    assert s["gpu_busy_ms_per_step"] <= s["kernel_ms_per_step"] + 1e-6  # nested CPU ops overlap
    assert s["gpu_busy_ms_per_step"] > 0
    assert s["wall_ms_per_step"] == pytest.approx(10.0 / 3 * 1e3)
    assert s["nccl_exposed_ms_per_step"] == 0
    names = {k["name"] for k in s["top_kernels"]}
    assert "aten::mm" in names and all(k["calls_per_step"] > 0 for k in s["top_kernels"])


def test_torch_profile_callback_writes_a_summary_for_its_window(tiny_mds, tmp_path):  # noqa: F811
    from flex_bert.train.run import train

    callbacks = {"torch_profile": {"start_batch": 2, "num_batches": 2}}
    y = tiny_yaml(tiny_mds, tmp_path, "prof", max_duration="5ba", save_interval="5ba", callbacks=callbacks)
    train([str(y)], [])
    out = json.loads((tmp_path / "prof" / "profile" / "kernels_rank0.json").read_text())
    assert out["steps"] == 2 and out["first_batch"] == 2 and out["world_size"] == 1
    assert out["wall_ms_per_step"] > 0 and out["kernel_ms_per_step"] > 0
    # a run that ends inside the window: the profiler is closed and the batches so far are summarised
    callbacks = {"torch_profile": {"start_batch": 3, "num_batches": 10}}
    y = tiny_yaml(
        tiny_mds, tmp_path, "prof_short", max_duration="5ba", save_interval="5ba", callbacks=callbacks
    )
    train([str(y)], [])
    out = json.loads((tmp_path / "prof_short" / "profile" / "kernels_rank0.json").read_text())
    assert out["steps"] == 2 and out["first_batch"] == 3
    assert torch.autograd.profiler._is_profiler_enabled is False
    y = tiny_yaml(tiny_mds, tmp_path, "prof_bad", callbacks={"torch_profile": {"num_batchs": 2}})
    with pytest.raises(ValueError, match="num_batches"):
        train([str(y)], [])


def test_idle_gaps_are_attributed_to_the_innermost_covering_host_event():
    from flex_bert.train.profiling import idle_gaps

    kernels = [(0, 10), (5, 20), (100, 110), (112, 120), (300, 310)]  # gaps 20..100, 110..112, 120..300
    host = [
        ("step", 0, 400),  # covers everything: outermost
        ("aten::item", 15, 95),  # covers 75 of the 80-us gap: innermost
        ("cudaLaunchKernel", 121, 125),  # too short to cover half of 120..300
    ]
    got, longest = idle_gaps(kernels, host, min_us=5, detail=1)
    assert got == {"aten::item": [80.0, 1], "step": [180.0, 1]}  # the 2-us gap is under min_us
    assert longest[0]["gap_ms"] == 0.18 and longest[0]["at_ms"] == 0.12
    assert [h.split(" [")[0] for h in longest[0]["host"]] == ["step", "cudaLaunchKernel"]
    assert idle_gaps(kernels, [], min_us=5)[0] == {"(host, unprofiled)": [260.0, 2]}


def test_logged_grad_norm_equals_a_float64_reference():
    from types import SimpleNamespace

    from composer.core import Event

    from flex_bert.train.callbacks import LogGradNorm

    model = torch.nn.Sequential(
        torch.nn.Linear(7, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3, bias=False)
    )
    model(torch.randn(4, 7)).square().sum().backward()
    model[0].bias.grad = None  # parameters without a gradient are skipped
    logged = {}
    state = SimpleNamespace(timestamp=SimpleNamespace(batch=20), model=model)
    LogGradNorm(10).run_event(Event.AFTER_TRAIN_BATCH, state, SimpleNamespace(log_metrics=logged.update))
    want = sum(float(p.grad.double().square().sum()) for p in model.parameters() if p.grad is not None) ** 0.5
    assert logged["train/grad_norm"] == pytest.approx(want, rel=1e-6)


def test_the_window_holds_exactly_its_batches_and_not_the_warm_up_one(tmp_path):
    """Batch start_batch - 1 runs under the profiler (CUPTI start-up) but is discarded; batches
    start_batch .. start_batch + n - 1 are summarised, nothing after them."""
    from types import SimpleNamespace

    from composer.devices import DeviceCPU

    from flex_bert.train.profiling import TorchProfile

    cb = TorchProfile(str(tmp_path), start_batch=2, num_batches=3)
    state = SimpleNamespace(timestamp=SimpleNamespace(batch=0), device=DeviceCPU())
    a = torch.randn(128, 128)
    for batch in range(7):
        state.timestamp.batch = batch
        cb.batch_start(state, None)
        if batch == 1:  # the warm-up batch: a big, distinctive op that must not be counted
            torch.linalg.qr(torch.randn(512, 512))
        else:
            for _ in range(batch):  # batch k runs k matrix products: 2 + 3 + 4 in the window
                a @ a
        state.timestamp.batch = batch + 1
        cb.batch_end(state, None)
    cb.fit_end(state, None)
    out = json.loads((tmp_path / "kernels_rank0.json").read_text())
    calls = {k["name"]: k["calls_per_step"] for k in out["top_kernels"]}
    assert out["steps"] == 3 and calls["aten::mm"] == pytest.approx((2 + 3 + 4) / 3)
    assert not any("qr" in name or "geqrf" in name for name in calls)
