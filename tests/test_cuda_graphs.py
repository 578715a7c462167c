"""CUDA graphs over the encoder (train/cuda_graphs.py): the bucket padding leaves the real tokens' outputs and
every gradient unchanged (CPU, fp32, against the unpadded batch), and graphed training steps give what eager
steps on the same padded batches give, over buckets replayed out of capture order with weights that change
between steps (GPU)."""

import re

import pytest
import torch

from flex_bert.model import FlexBertConfig
from flex_bert.model.classification import TaskConfig, build_task_model
from flex_bert.model.mlm import FlexBertForMaskedLM, FlexBertModel
from flex_bert.model.padding import cu_seqlens_from_lengths
from flex_bert.train.compilation import checkpoint_layers, compile_layers
from flex_bert.train.cuda_graphs import (
    OUTSIDE_BOUNDS,
    OVER_BUDGET,
    PRETRAIN_MIN_DOCS,
    doc_bucket,
    pad_to_bucket,
    pretraining_graphs,
    use_cuda_graphs,
)
from flex_bert.train.finetune import run_graphs
from flex_bert.train.finetune_config import load_finetune_config

CFG = dict(
    vocab_size=128, num_hidden_layers=3, hidden_size=64, intermediate_size=96, num_attention_heads=4,
    sliding_window=16, global_attn_every_n_layers=3, pad_token_id=3, cls_token_id=1, sep_token_id=2,
    mask_token_id=4, attn_out_dropout_prob=0.0,
)  # fmt: skip


def batch(lengths, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 128, (sum(lengths),), generator=g)
    cu = cu_seqlens_from_lengths(torch.tensor(lengths))
    labels = torch.randint(0, 3, (len(lengths),), generator=g)
    return ids.to(device), cu.to(device), max(lengths), labels.to(device)


def test_pad_to_bucket_appends_one_padding_document_and_empty_ones():
    ids, cu, _, _ = batch([3, 4])
    ids_b, cu_b = pad_to_bucket(ids, cu, pad_id=3, bucket_tokens=4, docs=4)
    assert ids_b.shape == (8,) and torch.equal(ids_b[:7], ids) and ids_b[7].item() == 3
    assert cu_b.tolist() == [0, 3, 7, 8, 8, 8] and cu_b.dtype == cu.dtype  # docs + 2 entries
    ids_b, cu_b = pad_to_bucket(ids[:4], cu_seqlens_from_lengths(torch.tensor([4])), 3, 4, 1)
    assert ids_b.shape == (4,) and cu_b.tolist() == [0, 4, 4]  # a full bucket: the padding document is empty
    with pytest.raises(ValueError, match="3 documents do not fit the static 2"):
        pad_to_bucket(ids, cu_seqlens_from_lengths(torch.tensor([2, 2, 3])), 3, 4, 2)


def test_doc_bucket_rounds_the_count_up_to_three_significant_bits_within_the_bounds():
    counts = (1, 3, 5, 8, 9, 17, 64, 65, 129, 153, 160, 161, 1000)
    assert [doc_bucket(n, 1, 4096) for n in counts] == [1, 3, 5, 8, 10, 20, 64, 80, 160, 160, 160, 192, 1024]
    assert [doc_bucket(n, 4, 64) for n in (1, 3, 4, 5, 17)] == [4, 4, 4, 5, 20]
    assert [doc_bucket(n, 8, 8) for n in (1, 5, 8)] == [8, 8, 8]  # min_docs = max_docs: one bucket
    assert doc_bucket(100, 4, 96) == 96  # capped at max_docs
    for n in range(1, 5000):  # never fewer slots than documents, at most a quarter more beyond 8
        assert n <= doc_bucket(n, 1, 10**6) <= max(n, 8) * 1.25


def test_document_buckets_pad_cu_seqlens_to_their_count():
    """With min_docs, a batch's documents are padded to its document bucket (`doc_bucket`), not to max_docs (a
    budget of 0 bytes: nothing is captured, so this runs on the CPU)."""
    model = build_task_model(FlexBertConfig(**CFG), TaskConfig("single_label", ["a", "b"]))
    graphed = use_cuda_graphs(model.bert, max_docs=64, max_seqlen=64, bucket_tokens=32, min_docs=4,
                              memory_budget=0)  # fmt: skip
    for lengths, docs in (([20, 33], 4), ([8] * 5, 5), ([1] * 33, 40)):
        ids, cu, _, _ = batch(lengths)
        ids_b, cu_b, graph = graphed.prepare(ids, cu)
        assert graph is None and cu_b.shape == (docs + 2,) and cu_b[: len(lengths) + 1].equal(cu)
        assert ids_b.shape[0] % 32 == 0 and torch.equal(ids_b[: ids.shape[0]], ids)
    with pytest.raises(ValueError, match=r"min_docs \(65\) must be between 1 and max_docs \(64\)"):
        use_cuda_graphs(model.bert, max_docs=64, max_seqlen=64, bucket_tokens=32, min_docs=65)


def test_buckets_and_the_summary_name_tokens_and_documents_where_documents_are_bucketed():
    """The graphs are keyed by (tokens, documents, dtype): `buckets()` lists (tokens, documents) once per pair;
    the summary names the pairs where documents are bucketed, the token counts where they are not."""
    model = build_task_model(FlexBertConfig(**CFG), TaskConfig("single_label", ["a", "b"]))
    graphed = use_cuda_graphs(model.bert, max_docs=64, max_seqlen=64, bucket_tokens=32, min_docs=4)
    graphed.graphs = {(64, 8, torch.bfloat16): None, (64, 8, None): None, (32, 4, torch.bfloat16): None}
    assert graphed.buckets() == [(32, 4), (64, 8)]
    assert graphed.summary().startswith("CUDA graphs: 2 bucket(s) of [(32, 4), (64, 8)] (tokens, documents) ")
    graphed.release()
    graphed = use_cuda_graphs(model.bert, max_docs=8, max_seqlen=64, bucket_tokens=32)
    graphed.graphs = {(64, 8, torch.bfloat16): None, (32, 8, torch.bfloat16): None}
    assert graphed.summary().startswith("CUDA graphs: 2 bucket(s) of [32, 64] tokens captured in ")
    graphed.release()


def test_pretraining_graphs_take_one_token_bucket_a_row_and_document_buckets():
    model = build_task_model(FlexBertConfig(**CFG), TaskConfig("single_label", ["a", "b"]))
    graphed = pretraining_graphs(model.bert, row_len=96 * 1024, max_seq_len=1024)
    assert (graphed.max_docs, graphed.min_docs, graphed.max_seqlen, graphed.bucket_tokens) == (
        96 * 1024, PRETRAIN_MIN_DOCS, 1024, 1024)  # fmt: skip
    graphed.release()
    graphed = pretraining_graphs(model.bert, row_len=32, max_seq_len=16)  # row_len < PRETRAIN_MIN_DOCS
    assert (graphed.max_docs, graphed.min_docs) == (32, 32)  # one document bucket: 32 slots
    graphed.release()


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_bucket_padding_changes_no_output_and_no_gradient(pooling):
    """The classification model on a batch as given, and with its encoder fed the bucket-padded batch (one
    padding document of 26 tokens, 2 empty ones) and cut back: same loss, logits and gradients (fp32)."""
    cfg = FlexBertConfig(**CFG)
    ids, cu, max_len, labels = batch([20, 33, 9])  # 62 tokens -> a bucket of 88 (> the 16-token window)
    runs = []
    for padded in (False, True):
        torch.manual_seed(0)
        model = build_task_model(cfg, TaskConfig("single_label", ["a", "b", "c"], pooling=pooling))
        if padded:

            def forward(ids_T, cu_seqlens, max_seqlen, bert=model.bert):
                ids_b, cu_b = pad_to_bucket(ids_T, cu_seqlens, cfg.pad_token_id, bucket_tokens=44, docs=5)
                assert ids_b.shape == (88,) and cu_b.shape == (7,)
                return FlexBertModel.forward(bert, ids_b, cu_b, 44)[: ids_T.shape[0]]

            model.bert.forward = forward
        out = model(ids, cu_seqlens=cu, max_seqlen=max_len, labels=labels)
        out.loss.backward()
        runs.append(
            (out.loss.detach(), out.logits.detach(), {n: p.grad for n, p in model.named_parameters()})
        )
    (loss, logits, grads), (loss_p, logits_p, grads_p) = runs
    torch.testing.assert_close(loss_p, loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logits_p, logits, rtol=1e-5, atol=1e-6)
    for name, g in grads.items():
        torch.testing.assert_close(grads_p[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_graphed_encoder_runs_eagerly_off_the_gpu_and_checks_its_bounds():
    cfg = FlexBertConfig(**CFG)
    torch.manual_seed(0)
    model = build_task_model(cfg, TaskConfig("single_label", ["a", "b", "c"]))
    ids, cu, max_len, labels = batch([20, 33, 9])
    before = model(ids, cu_seqlens=cu, max_seqlen=max_len, labels=labels).loss
    names = list(model.state_dict())
    graphed = use_cuda_graphs(model.bert, max_docs=4, max_seqlen=64, bucket_tokens=32)
    assert model.bert.forward is graphed
    after = model(ids, cu_seqlens=cu, max_seqlen=max_len, labels=labels).loss
    assert torch.equal(before, after) and list(model.state_dict()) == names  # checkpoints unchanged
    assert graphed.graphs == {} and graphed.eager_batches == {OUTSIDE_BOUNDS: 0, OVER_BUDGET: 0}
    graphed.release()
    assert "forward" not in vars(model.bert) and model.bert.forward.__func__ is FlexBertModel.forward
    with pytest.raises(ValueError, match=r"bucket_tokens \(65\) must be between 1 and max_seqlen \(64\)"):
        use_cuda_graphs(model.bert, max_docs=4, max_seqlen=64, bucket_tokens=65)
    checkpoint_layers(model.bert)
    with pytest.raises(ValueError, match="CUDA graphs and gradient_checkpointing do not go together"):
        use_cuda_graphs(model.bert, max_docs=4, max_seqlen=64, bucket_tokens=32)


def test_a_bucket_past_the_memory_budget_is_not_captured():
    """Each bucket's graph keeps every encoder parameter's gradient and its output: a new bucket whose static
    memory would pass the budget gets no graph (its batch runs eagerly)."""
    model = build_task_model(FlexBertConfig(**CFG), TaskConfig("single_label", ["a", "b"]))
    params = sum(p.numel() * 4 for p in model.bert.parameters())  # fp32 gradients
    graphed = use_cuda_graphs(model.bert, max_docs=4, max_seqlen=64, bucket_tokens=32, memory_budget=params)
    # the output and its gradient, (64, hidden) each
    assert graphed.graph_bytes(64, torch.bfloat16) == params + 2 * 64 * CFG["hidden_size"] * 2
    assert graphed.graph_bytes(64, None) == params + 2 * 64 * CFG["hidden_size"] * 4
    ids, cu, _, _ = batch([20, 33])
    ids_b, cu_b, graph = graphed.prepare(ids, cu)
    assert graph is None and graphed.graphs == {} and graphed.static_bytes == 0
    assert ids_b.shape == (64,) and cu_b.tolist() == [0, 20, 53, 64, 64, 64]


def test_task_file_takes_the_graph_keys(tmp_path):
    base = ["task=single_label", "train_file=x.csv", "start=s", f"save_folder={tmp_path}"]
    assert load_finetune_config([], base).cuda_graphs == "auto"
    for value, parsed in (("true", True), ("false", False), ("auto", "auto")):
        cfg = load_finetune_config([], [*base, f"cuda_graphs={value}", "graph_bucket_tokens=128"])
        assert cfg.cuda_graphs is parsed if isinstance(parsed, bool) else cfg.cuda_graphs == parsed
        assert cfg.graph_bucket_tokens == 128
    for wrong, shown in (("maybe", "'maybe'"), ("1", "1")):
        with pytest.raises(ValueError, match=f"cuda_graphs must be auto, true or false, got {shown}$"):
            load_finetune_config([], [*base, f"cuda_graphs={wrong}"])
    with pytest.raises(ValueError, match="graph_bucket_tokens must be at least 1, got 0"):
        load_finetune_config([], [*base, "graph_bucket_tokens=0"])


@pytest.mark.parametrize(
    "device, world, checkpointing, why_not",
    [("cpu", 1, False, "this run is on the CPU"), ("gpu", 2, False, "this run is on 2 GPUs (graphs run on one)"),
     ("gpu", 1, True, "gradient checkpointing is on")],
)  # fmt: skip
def test_a_run_that_cannot_replay_graphs_is_eager_under_auto_and_refused_under_true(
    device, world, checkpointing, why_not, tmp_path, capsys
):
    model = build_task_model(FlexBertConfig(**CFG), TaskConfig("single_label", ["a", "b"]))
    if checkpointing:
        checkpoint_layers(model.bert)
    base = ["task=single_label", "train_file=x.csv", "start=s", f"save_folder={tmp_path}"]
    auto, true, false = (
        load_finetune_config([], [*base, f"cuda_graphs={v}"]) for v in ("auto", "true", "false")
    )
    assert run_graphs(model, auto, device, world, 8) == (None, why_not)
    assert capsys.readouterr().out == f"cuda_graphs: auto runs eagerly: {why_not}\n"
    with pytest.raises(
        ValueError, match=re.escape(f"cuda_graphs: true, but {why_not}; set cuda_graphs=auto or false")
    ):
        run_graphs(model, true, device, world, 8)
    assert run_graphs(model, false, device, world, 8) == (None, "cuda_graphs: false")
    assert capsys.readouterr().out == "" and "forward" not in vars(model.bert)


def test_a_run_on_one_gpu_replays_graphs_under_auto_and_true(tmp_path):
    """One GPU, no checkpointing: both `auto` and `true` give the encoder graphs with the task's bounds (the
    bucket capped at max_seq_len). Building them needs no GPU; capturing does."""
    model = build_task_model(FlexBertConfig(**CFG), TaskConfig("single_label", ["a", "b"]))
    base = ["task=single_label", "train_file=x.csv", "start=s", f"save_folder={tmp_path}", "max_seq_len=48"]
    for value in ("auto", "true"):
        cfg = load_finetune_config([], [*base, f"cuda_graphs={value}"])
        graphed, why_not = run_graphs(model, cfg, "gpu", 1, 8)
        assert why_not is None and model.bert.forward is graphed
        assert (graphed.max_docs, graphed.max_seqlen, graphed.bucket_tokens) == (8, 48, 48)
        graphed.release()


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["varlen", "auto"])
def test_graphed_steps_match_eager_steps_on_the_same_padding(backend):
    """Two equal bf16 models trained with SGD over batches whose buckets come in the order 256, 512, 256, 768,
    512, 256 (each replayed after others were captured into the shared pool; the weights change each step):
    the graphed model's losses, logits and gradients equal those of eager steps on the same padded batches,
    a batch with more documents than max_docs runs eagerly, and evaluation is eager."""
    cfg = FlexBertConfig(**{**CFG, "num_hidden_layers": 4, "hidden_size": 256, "intermediate_size": 384,
                            "sliding_window": 32, "attention_backend": backend})  # fmt: skip
    bounds = dict(max_docs=8, max_seqlen=256, bucket_tokens=256)
    lengths = [[50, 120, 60], [200, 150, 90, 30], [10, 20], [256, 256, 100, 80], [100] * 4, [64] * 3,
               [20] * 10]  # fmt: skip
    models = []
    for graphs in (True, False):
        torch.manual_seed(0)
        model = build_task_model(cfg, TaskConfig("single_label", ["a", "b", "c"])).cuda().train()
        if graphs:
            graphed = use_cuda_graphs(model.bert, **bounds)
        else:

            def forward(ids_T, cu_seqlens, max_seqlen, bert=model.bert):
                if cu_seqlens.shape[0] - 1 > bounds["max_docs"]:
                    return FlexBertModel.forward(bert, ids_T, cu_seqlens, max_seqlen)
                ids_b, cu_b = pad_to_bucket(ids_T, cu_seqlens, cfg.pad_token_id, 256, bounds["max_docs"])
                return FlexBertModel.forward(bert, ids_b, cu_b, bounds["max_seqlen"])[: ids_T.shape[0]]

            model.bert.forward = forward
        models.append((model, torch.optim.SGD(model.parameters(), lr=0.5)))
    for i, lens in enumerate(lengths):
        ids, cu, max_len, labels = batch(lens, "cuda", seed=i)
        got = []
        for model, opt in models:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(ids, cu_seqlens=cu, max_seqlen=max_len, labels=labels)
            out.loss.backward()
            got.append((out.loss.detach(), out.logits.detach().float(),
                        {n: p.grad.clone() for n, p in model.named_parameters()}))  # fmt: skip
            opt.step()
            opt.zero_grad(set_to_none=True)
        (loss, logits, grads), (loss_e, logits_e, grads_e) = got
        torch.testing.assert_close(loss, loss_e, rtol=1e-3, atol=1e-4, msg=f"batch {i}")
        torch.testing.assert_close(logits, logits_e, rtol=1e-2, atol=1e-2, msg=f"batch {i}")
        for name, g in grads.items():
            err = ((g - grads_e[name]).norm() / (grads_e[name].norm() + 1e-12)).item()
            assert err < 1e-2, (i, name, err)
    assert graphed.buckets() == [(256, 8), (512, 8), (768, 8)]
    assert graphed.eager_batches == {OUTSIDE_BOUNDS: 1, OVER_BUDGET: 0}
    assert "3 bucket(s) of [256, 512, 768] tokens captured in " in graphed.summary()
    model = models[0][0].eval()
    ids, cu, max_len, _ = batch([30, 40], "cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        model(ids, cu_seqlens=cu, max_seqlen=max_len)
    assert len(graphed.graphs) == 3


@pytest.mark.gpu
def test_buckets_past_the_budget_run_eagerly_and_give_the_eager_loss():
    """A budget of one bucket: the first bucket (256 tokens) is captured, a batch of the next (512) runs
    eagerly, counted, with the loss and gradients of the plain model."""
    cfg = FlexBertConfig(**{**CFG, "attention_backend": "varlen"})
    torch.manual_seed(0)
    model = build_task_model(cfg, TaskConfig("single_label", ["a", "b", "c"])).cuda().train()
    probe = use_cuda_graphs(model.bert, max_docs=8, max_seqlen=256, bucket_tokens=256)
    budget = probe.graph_bytes(256, torch.bfloat16) + 1
    probe.release()
    graphed = use_cuda_graphs(model.bert, max_docs=8, max_seqlen=256, bucket_tokens=256, memory_budget=budget)
    runs = []
    for lens in ([50, 60], [200, 150, 90], [200, 150, 90]):  # bucket 256, then 512 twice: past the budget
        if len(runs) == 2:  # the first two through the graphed encoder, the third through the plain model
            assert graphed.buckets() == [(256, 8)]
            assert graphed.eager_batches == {OUTSIDE_BOUNDS: 0, OVER_BUDGET: 1}
            assert "1 training batch(es) past the graph memory budget ran eagerly" in graphed.summary()
            graphed.release()
        ids, cu, max_len, labels = batch(lens, "cuda", seed=len(lens))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(ids, cu_seqlens=cu, max_seqlen=max_len, labels=labels).loss
        loss.backward()
        runs.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
        model.zero_grad(set_to_none=True)
    (loss, grads), (loss_e, grads_e) = runs[1], runs[2]
    torch.testing.assert_close(loss, loss_e, rtol=1e-5, atol=1e-6)
    for g, g_e in zip(grads, grads_e, strict=True):  # the same kernels; varlen's dQ atomics may reorder sums
        torch.testing.assert_close(g, g_e, rtol=1e-3, atol=1e-5)


@pytest.mark.gpu
def test_pretraining_graphs_of_a_compiled_mlm_model_match_its_eager_steps():
    """Pre-training's arrangement (`pretraining_graphs` over `compile_layers`, full rows of 512 tokens): two
    equal bf16 MLM models trained with SGD over rows of 4, 8, 100 and 6 documents (document buckets
    PRETRAIN_MIN_DOCS, the same, 112, the same: each replayed after the other was captured); the graphed
    model's losses and gradients equal those of the same compiled model run eagerly."""
    cfg = FlexBertConfig(**{**CFG, "num_hidden_layers": 4, "hidden_size": 256, "intermediate_size": 384,
                            "sliding_window": 32, "attention_backend": "auto"})  # fmt: skip
    rows = [[128] * 4, [64] * 8, [5] * 99 + [17], [100, 100, 100, 100, 100, 12]]
    models = []
    for graphs in (True, False):
        torch.manual_seed(0)
        model = FlexBertForMaskedLM(cfg).cuda().train()
        compile_layers(model)
        graphed = pretraining_graphs(model.bert, row_len=512, max_seq_len=128) if graphs else None
        models.append((model, torch.optim.SGD(model.parameters(), lr=0.5), graphed))
    for i, lens in enumerate(rows):
        ids, cu, max_len, _ = batch(lens, "cuda", seed=i)
        g = torch.Generator().manual_seed(i)
        labels = torch.where(torch.rand(ids.shape[0], generator=g) < 0.3, ids.cpu(), -100).cuda()
        got = []
        for model, opt, _ in models:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(ids, cu_seqlens=cu, max_seqlen=max_len, labels=labels).loss
            loss.backward()
            got.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
            opt.step()
            opt.zero_grad(set_to_none=True)
        (loss, grads), (loss_e, grads_e) = got
        torch.testing.assert_close(loss, loss_e, rtol=1e-3, atol=1e-4, msg=f"row {i}")
        for name, g in grads.items():
            err = ((g - grads_e[name]).norm() / (grads_e[name].norm() + 1e-12)).item()
            assert err < 1e-2, (i, name, err)
    graphed = models[0][2]
    buckets = [(512, PRETRAIN_MIN_DOCS), (512, doc_bucket(100, PRETRAIN_MIN_DOCS, 512))]
    assert graphed.buckets() == buckets == [(512, 64), (512, 112)]
    assert graphed.eager_batches == {OUTSIDE_BOUNDS: 0, OVER_BUDGET: 0}
    assert f"2 bucket(s) of {buckets} (tokens, documents) captured in " in graphed.summary()
