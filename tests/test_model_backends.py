"""Attention backends against a plain float64 dense reference; GPU kernels against the exact SDPA backend."""

import math

import pytest
import torch
import torch.nn.attention.flex_attention as torch_flex

from flex_bert.kernels import BACKENDS, backends, get_backend, policy
from flex_bert.kernels.backends import sdpa_attention, varlen_attention
from flex_bert.kernels.flex import flex_attention_backend, flex_block_mask
from flex_bert.kernels.rotary import positions_from_cu_seqlens
from flex_bert.model import FlexBertConfig, FlexBertForMaskedLM
from flex_bert.model.padding import cu_seqlens_from_lengths
from flex_bert.train.compilation import compile_layers

H, D = 4, 16


def dense_reference(q, k, v, cu_seqlens, window):
    """Straightforward float64: for every query, softmax over the keys of its document (and window)."""
    q, k, v = q.double(), k.double(), v.double()
    T = q.shape[0]
    doc = torch.searchsorted(cu_seqlens, torch.arange(T, dtype=cu_seqlens.dtype), right=True)
    i = torch.arange(T)
    allowed = doc[:, None] == doc[None, :]
    if window is not None:
        allowed &= (i[:, None] - i[None, :]).abs() <= window // 2
    scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed[None], float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def random_qkv(lengths, dtype=torch.float32, device="cpu", seed=0, head_dim=D):
    g = torch.Generator(device="cpu").manual_seed(seed)
    T = sum(lengths)
    q, k, v = (torch.randn(T, H, head_dim, generator=g).to(device=device, dtype=dtype) for _ in range(3))
    cu = cu_seqlens_from_lengths(torch.tensor(lengths)).to(device)
    return q, k, v, cu, max(lengths)


LENGTHS = [1, 5, 23, 40, 8]  # a one-token document, documents shorter and longer than the window


@pytest.mark.parametrize("window", [None, 8, 128])
def test_sdpa_matches_dense_float64_reference(window):
    q, k, v, cu, max_len = random_qkv(LENGTHS)
    out = sdpa_attention(q, k, v, cu, max_len, window)
    torch.testing.assert_close(out.double(), dense_reference(q, k, v, cu, window), rtol=1e-5, atol=1e-6)


def test_sdpa_gradients_finite_and_document_local():
    q, k, v, cu, max_len = random_qkv([6, 9])
    q.requires_grad_(True)
    v.requires_grad_(True)
    sdpa_attention(q, k, v, cu, max_len, 4)[:6].sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(v.grad).all()
    assert (v.grad[6:] == 0).all()  # the second document never sees the first


def test_positions_restart_per_document_and_skip_empty_segments():
    cu = torch.tensor([0, 3, 3, 7, 8], dtype=torch.int32)
    assert positions_from_cu_seqlens(cu, 8).tolist() == [0, 1, 2, 0, 1, 2, 3, 0]


def test_registry_and_errors():
    with pytest.raises(ValueError, match=r"unknown attention backend 'xformers'; choose one of \['auto'"):
        get_backend("xformers")
    q, k, v, cu, max_len = random_qkv([4])
    with pytest.raises(ValueError, match="needs CUDA fp16/bf16"):
        varlen_attention(q, k, v, cu, max_len, None)
    with pytest.raises(ValueError, match="'band' needs CUDA fp16/bf16"):
        get_backend("band")(q, k, v, cu, max_len, 128)
    torch.testing.assert_close(
        get_backend("auto")(q, k, v, cu, max_len, None), sdpa_attention(q, k, v, cu, 4, None)
    )


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("name", list(BACKENDS))
def test_every_backend_matches_the_reference_on_cpu_or_refuses_in_one_line(name):
    """Each backend of the table, on CPU fp32 inputs: the float64 reference, or a ValueError naming another."""
    q, k, v, cu, max_len = random_qkv(LENGTHS)
    for window in (None, 8):
        try:
            out = get_backend(name)(q, k, v, cu, max_len, window)
        except ValueError as e:
            assert "use '" in str(e) and "\n" not in str(e), str(e)
            continue
        want = dense_reference(q, k, v, cu, window)
        torch.testing.assert_close(out.double(), want, rtol=1e-4, atol=1e-5)


def test_a_backend_is_one_entry_of_the_table(monkeypatch):
    """An entry in BACKENDS is all a backend needs to be a config choice, `get_backend`'s, and the profiler's
    (its kernel names fall in the attention categories)."""
    from flex_bert.kernels import Backend
    from flex_bert.train.profiling import categorize

    monkeypatch.setitem(BACKENDS, "mine", Backend(sdpa_attention, r"^_mine_fwd", r"^_mine_bwd"))
    assert FlexBertConfig.from_dict({"attention_backend": "mine"}).attention_backend == "mine"
    assert get_backend("mine") is sdpa_attention
    assert categorize("_mine_fwd_kernel") == "attention forward"
    assert categorize("_mine_bwd_dq") == "attention backward"


# ---------------------------------------------------------------------------------------------- flex
# Documents of 1 token, shorter and longer than the windows, spanning 128-token blocks; T = 483 (not a multiple
# of 128: the backend pads to 512 with a padding document).
FLEX_LENGTHS = [1, 5, 130, 40, 300, 7]
FLEX_WINDOWS = [None, 8, 16, 128, 300]  # 300: half 150 > 127, so local layers get full blocks too


@pytest.fixture
def flex_cpu_backward(monkeypatch):
    """flex_attention refuses backward on CPU (a device check in its front end); its eager path is the exact
    math reference with autograd, so the check is lifted to test our wrapper's gradients here."""
    monkeypatch.setattr(torch_flex, "_validate_device", lambda *args: None)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("window", FLEX_WINDOWS)
def test_flex_matches_dense_float64_reference(window):
    q, k, v, cu, max_len = random_qkv(FLEX_LENGTHS)
    out = flex_attention_backend(q, k, v, cu, max_len, window)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out.double(), dense_reference(q, k, v, cu, window), rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("window", [None, 16, 128])
def test_flex_gradients_match_sdpa(window, flex_cpu_backward):
    q, k, v, cu, max_len = random_qkv(FLEX_LENGTHS)
    ours = [t.clone().requires_grad_(True) for t in (q, k, v)]
    ref = [t.clone().requires_grad_(True) for t in (q, k, v)]
    grad = torch.randn_like(q)
    flex_attention_backend(*ours, cu, max_len, window).backward(grad)
    sdpa_attention(*ref, cu, max_len, window).backward(grad)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)


def _dense_blocks(num_blocks, indices):
    """(1, 1, NB) counts + (1, 1, NB, K) lists -> (NB, NB) bool; a block listed twice fails."""
    nb = num_blocks.shape[-1]
    dense = torch.zeros(nb, nb, dtype=torch.bool)
    for row in range(nb):
        cols = indices[0, 0, row, : num_blocks[0, 0, row]].long()
        assert cols.unique().numel() == cols.numel() and (cols >= 0).all() and (cols < nb).all()
        dense[row, cols] = True
    return dense


@pytest.mark.parametrize("window", FLEX_WINDOWS)
@pytest.mark.parametrize(
    "lengths", [FLEX_LENGTHS, [128, 256], [700], [3, 0, 250, 0], [1] * 130, [129, 127, 1, 255]]
)
def test_flex_block_mask_is_exact(lengths, window):
    """Visited blocks are exactly those with an allowed pair, full ones exactly those with only allowed pairs,
    the mask_mod is the token mask (in bounds for every padded index), and the backward lists are the
    transposed forward lists (also as BlockMask.from_kv_blocks derives them)."""
    cu = cu_seqlens_from_lengths(torch.tensor(lengths))
    T = sum(lengths)
    bm = flex_block_mask(cu, T, window)
    Tp = -(-T // 128) * 128
    nb = Tp // 128
    assert bm.seq_lengths == (Tp, Tp) and bm.BLOCK_SIZE == (128, 128)
    assert bm.kv_indices.dtype == bm.kv_num_blocks.dtype == torch.int32
    i = torch.arange(Tp)
    doc = torch.searchsorted(cu, i.to(cu.dtype), right=True)  # padding tokens (>= T) share one id
    allowed = doc[:, None] == doc[None, :]
    if window is not None:
        allowed &= (i[:, None] - i[None, :]).abs() <= window // 2
    tiles = allowed.view(nb, 128, nb, 128)
    any_allowed, all_allowed = tiles.any(3).any(1), tiles.all(3).all(1)
    partial = _dense_blocks(bm.kv_num_blocks, bm.kv_indices)
    full = _dense_blocks(bm.full_kv_num_blocks, bm.full_kv_indices)
    assert not (partial & full).any()
    assert torch.equal(partial | full, any_allowed)
    assert torch.equal(full, all_allowed)
    assert torch.equal(torch_flex.create_mask(bm.mask_mod, 1, 1, Tp, Tp, device="cpu")[0, 0], allowed)
    assert torch.equal(_dense_blocks(bm.q_num_blocks, bm.q_indices), partial.T)
    assert torch.equal(_dense_blocks(bm.full_q_num_blocks, bm.full_q_indices), full.T)
    torch_transposed = flex_block_mask(cu, T, window, symmetric=False)
    assert torch.equal(_dense_blocks(torch_transposed.q_num_blocks, torch_transposed.q_indices), partial.T)
    assert torch.equal(
        _dense_blocks(torch_transposed.full_q_num_blocks, torch_transposed.full_q_indices), full.T
    )


def test_flex_block_mask_sparsity():
    # Local (window 128): at most 3 key blocks per query block, whatever the documents.
    cu = cu_seqlens_from_lengths(torch.tensor([3000, 1, 900, 4000, 292]))  # T = 8193
    bm = flex_block_mask(cu, 8193, 128)
    visited = bm.kv_num_blocks + bm.full_kv_num_blocks
    nb = 65
    assert bm.kv_indices.shape == (1, 1, nb, 3) and visited.max() <= 3 and visited.sum() <= 3 * nb
    assert bm.full_kv_num_blocks.sum() == 0  # a 128-block spans 127 positions > 64: nothing is full
    one_doc = flex_block_mask(cu_seqlens_from_lengths(torch.tensor([1024])), 1024, 128)
    assert (one_doc.kv_num_blocks + one_doc.full_kv_num_blocks).sum() == 3 * 8 - 2
    # Global, two documents of 2 and 3 blocks: block-diagonal, all blocks full, none across documents.
    bm = flex_block_mask(cu_seqlens_from_lengths(torch.tensor([256, 384])), 640, None)
    full = _dense_blocks(bm.full_kv_num_blocks, bm.full_kv_indices)
    assert bm.kv_num_blocks.sum() == 0
    assert torch.equal(full, torch.block_diag(torch.ones(2, 2), torch.ones(3, 3)).bool())


@pytest.mark.parametrize("lengths", [FLEX_LENGTHS, [128, 256]])
def test_flex_compiled_cpu_kernel_matches_reference(lengths):
    """The whole backend under torch.compile (as inside `compile_layers`): the block mask is built in the
    graph and Inductor's CPU flex kernel walks the block lists (forward only: no flex backward on CPU)."""
    torch._dynamo.reset()
    fn = torch.compile(flex_attention_backend, dynamic=False)
    q, k, v, cu, max_len = random_qkv(lengths)
    for window in (None, 16, 300):
        want = dense_reference(q, k, v, cu, window)
        torch.testing.assert_close(fn(q, k, v, cu, max_len, window).double(), want, rtol=1e-4, atol=1e-5)
    # The kernel really skips unlisted blocks: dropping all but one listed block changes the result.
    bm = flex_block_mask(cu, q.shape[0], None, full_width=True)
    bm.kv_num_blocks.clamp_(max=0)
    bm.full_kv_num_blocks.clamp_(max=1)
    assert not torch.allclose(fn(q, k, v, cu, max_len, None, block_mask=bm).double(), want)


def test_flex_backend_compiles_with_dynamic_document_count():
    """torch.compile's default (as `compile_layers`): after a second document count the number of documents
    becomes symbolic, and the in-graph block mask stays correct without further recompilation."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    fn = torch.compile(flex_attention_backend)
    for lengths in ([1, 5, 130, 40, 300, 7], [200, 3, 280], [483], [50] * 9 + [33]):
        q, k, v, cu, max_len = random_qkv(lengths)
        want = dense_reference(q, k, v, cu, 128)
        torch.testing.assert_close(fn(q, k, v, cu, max_len, 128).double(), want, rtol=1e-4, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 2


def test_flex_compiled_does_not_recompile_per_document_count():
    """The module-level compiled flex_attention sees only (T,)- and (T/128, ...)-shaped tensors: a new number
    of documents reuses the compiled kernel (one graph per window)."""
    from torch._dynamo.utils import counters

    from flex_bert.kernels.flex import _compiled_flex_attention

    torch._dynamo.reset()
    counters.clear()
    for lengths in ([1, 5, 130, 40, 300, 7], [200, 3, 280], [483]):
        for window in (None, 128):
            q, k, v, cu, _ = random_qkv(lengths)
            bm = flex_block_mask(cu, 483, window, full_width=True)
            q, k, v = (
                torch.nn.functional.pad(t, (0, 0, 0, 0, 0, 29)).transpose(0, 1)[None] for t in (q, k, v)
            )
            _compiled_flex_attention()(q, k, v, block_mask=bm)
    assert counters["stats"]["unique_graphs"] == 2


# ----------------------------------------------------------------------------------------------- GPU
BF16_TOL = dict(rtol=2e-2, atol=2e-2)


# fa4 refuses head dims that are not multiples of 32 (attention.FA4_HEAD_DIM_MULTIPLE): it runs at the models' 64
KERNEL_HEAD_DIM = {"fa4": 64}


def _kernel_vs_reference(backend_name, window, lengths=(1, 100, 300, 64, 129, 2000), fn=None):
    head_dim = KERNEL_HEAD_DIM.get(backend_name, D)
    q, k, v, cu, max_len = random_qkv(list(lengths), dtype=torch.bfloat16, device="cuda", head_dim=head_dim)
    for t in (q, k, v):
        t.requires_grad_(True)
    out = (fn or get_backend(backend_name))(q, k, v, cu, max_len, window)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    ref_inputs = [t.detach().float().requires_grad_(True) for t in (q, k, v)]
    ref = sdpa_attention(*ref_inputs, cu, max_len, window)
    torch.testing.assert_close(out.float(), ref, **BF16_TOL)
    grad = torch.randn_like(ref)
    out.backward(grad.bfloat16())
    ref.backward(grad)
    for ours, theirs in zip((q, k, v), ref_inputs):
        torch.testing.assert_close(ours.grad.float(), theirs.grad, **BF16_TOL)


@pytest.mark.gpu
@pytest.mark.parametrize("window", [None, 128])
def test_varlen_matches_sdpa_reference(window):
    _kernel_vs_reference("varlen", window)


@pytest.mark.gpu
@pytest.mark.parametrize("window", [None, 16, 128])
def test_band_matches_sdpa_reference(window):
    _kernel_vs_reference("band", window)


@pytest.mark.gpu
def test_auto_runs_band_on_local_and_varlen_on_global_layers(monkeypatch):
    """`auto` on CUDA in bf16: the band kernel on local layers only, varlen on global ones."""
    from flex_bert.kernels import band_attention

    calls = []
    band = band_attention.band_attention
    monkeypatch.setattr(band_attention, "band_attention", lambda *a: calls.append(a[-1]) or band(*a))
    q, k, v, cu, max_len = random_qkv([300, 20, 700], torch.bfloat16, "cuda")
    for window in (128, None):
        out = get_backend("auto")(q, k, v, cu, max_len, window)
        torch.testing.assert_close(
            out, get_backend("varlen")(q, k, v, cu, max_len, window), rtol=0, atol=2e-2
        )
    assert calls == [128]


@pytest.mark.gpu
@pytest.mark.parametrize("window", [None, 128])
def test_flash_attn_matches_sdpa_reference(window):
    pytest.importorskip("flash_attn")
    _kernel_vs_reference("flash_attn", window)


# 4096 tokens: documents of 1 token, shorter and longer than the window, one of 2000 spanning 16 blocks.
FLEX_GPU_LENGTHS = (1, 100, 300, 64, 129, 2000, 1502)


@pytest.mark.gpu
@pytest.mark.parametrize("lengths", [(1, 100, 300, 64, 129, 2000), FLEX_GPU_LENGTHS])  # T = 2594, 4096
@pytest.mark.parametrize("window", [None, 128])
def test_flex_matches_sdpa_reference(window, lengths):
    _kernel_vs_reference("flex", window, lengths)


@pytest.mark.gpu
@pytest.mark.parametrize("window", [None, 128])
def test_flex_inside_compiled_graph_matches_sdpa_reference(window):
    """As inside `compile_layers`: block mask built in the traced graph, raw flex_attention, fwd + bwd."""
    torch._dynamo.reset()
    _kernel_vs_reference("flex", window, FLEX_GPU_LENGTHS, fn=torch.compile(flex_attention_backend))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", [name for name in BACKENDS if name != "sdpa"])
def test_model_bf16_matches_fp32_sdpa_and_compiles(backend):
    if backend == "flash_attn":
        pytest.importorskip("flash_attn")
    if backend == "fa4":
        pytest.importorskip("flash_attn.cute")
        if torch.cuda.get_device_capability()[0] not in (9, 10):
            pytest.skip("attention_backend 'fa4' needs compute capability 9.x or 10.x")
    common = dict(vocab_size=512, hidden_size=128, intermediate_size=192, num_hidden_layers=4,
                  num_attention_heads=2, sliding_window=16, global_attn_every_n_layers=3, pad_token_id=0,
                  cls_token_id=1, sep_token_id=2, mask_token_id=3, attn_out_dropout_prob=0.0)  # fmt: skip
    torch.manual_seed(0)
    ref = FlexBertForMaskedLM(FlexBertConfig.from_dict({**common, "attention_backend": "sdpa"})).cuda().eval()
    fast = (
        FlexBertForMaskedLM(FlexBertConfig.from_dict({**common, "attention_backend": backend})).cuda().eval()
    )
    fast.load_state_dict(ref.state_dict())
    lengths = [50, 300, 7, 200]
    ids = torch.randint(4, 512, (sum(lengths),), device="cuda")
    labels = torch.where(torch.rand(ids.shape, device="cuda") < 0.3, ids, -100)
    cu = cu_seqlens_from_lengths(torch.tensor(lengths)).cuda()
    with torch.no_grad():
        want = ref(ids, cu_seqlens=cu, max_seqlen=300, labels=labels)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = fast(ids, cu_seqlens=cu, max_seqlen=300, labels=labels)
            compile_layers(fast)
            compiled = fast(ids, cu_seqlens=cu, max_seqlen=300, labels=labels)
    torch.testing.assert_close(got.loss, want.loss, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(compiled.loss, got.loss, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("capability", [(9, 0), (10, 0), (8, 0), (12, 0)])
@pytest.mark.parametrize("installed", [True, False])
@pytest.mark.parametrize("window", [None, 128])
@pytest.mark.parametrize("head_dim", [64, 16])
def test_auto_kernel_choice(monkeypatch, capability, installed, window, head_dim):
    """`auto` on CUDA in half precision: FA4 on the layer types of AUTO_FA4_LAYERS when flash-attn-4 imports,
    the GPU is Hopper or data-centre Blackwell and the head dim a multiple of 32, else band on local and varlen
    on global layers; SDPA on CPU and in fp32. (CPU test: a stand-in for the CUDA tensor, the GPU's
    generation and the package.)"""
    from types import SimpleNamespace

    def interface():
        if not installed:
            raise ValueError("attention_backend 'fa4' needs the flash-attn-4 package")
        return object()

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(policy.fa4_attention, "_interface", interface)
    policy._fa4_usable_on.cache_clear()
    try:
        cuda0 = torch.device("cuda", 0)
        q = SimpleNamespace(is_cuda=True, dtype=torch.bfloat16, shape=(10, 12, head_dim), device=cuda0)
        layer = "global" if window is None else "local"
        fa4 = (
            installed
            and capability[0] in (9, 10)
            and head_dim % 32 == 0
            and layer in backends.AUTO_FA4_LAYERS
        )
        other = backends.varlen_attention if window is None else backends.band_backend
        assert backends.auto_kernel(q, window) is (backends.fa4_backend if fa4 else other)
        for off in (dict(is_cuda=False), dict(dtype=torch.float32)):  # CPU, fp32: the reference
            other_q = SimpleNamespace(**{**vars(q), **off})
            assert backends.auto_kernel(other_q, window) is backends.sdpa_attention
    finally:
        policy._fa4_usable_on.cache_clear()


def test_auto_runs_fa4_where_measured_faster():
    """The layer types measured faster with FA4 (docs/PERFORMANCE.md, 2026-12-07): global ones only."""
    assert {"global"} == set(backends.AUTO_FA4_LAYERS)


def test_fa4_backend_refuses_head_dims_its_backward_gets_wrong(monkeypatch):
    """FA4 4.0.0b40's Hopper backward returned a wrong dQ at head dim 16: the backend refuses head dims that
    are not multiples of 32 before calling it (the CUDA check stubbed out, so this runs on the CPU)."""
    monkeypatch.setattr(backends, "_require_cuda_half", lambda backend, q: None)
    monkeypatch.setattr(backends, "fa4_attention", lambda *a: pytest.fail("FA4 called"))
    q, k, v, cu, max_len = random_qkv([5, 7], head_dim=48)
    with pytest.raises(ValueError, match="'fa4' needs a head dim that is a multiple of 32 .* got 48"):
        backends.fa4_backend(q, k, v, cu, max_len, None)
