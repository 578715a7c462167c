"""FlexBERT computes the same function as Hugging Face's ModernBertForMaskedLM (fp32, CPU).

Tiny model with global *and* local layers, a window shorter than the documents, and different rotary bases
for global and local layers, so that every one of those details shows up in the logits.
"""

import pytest
import torch

from flex_bert.hf_config import flexbert_config_to_hf
from flex_bert.hf_state import flexbert_state_to_hf
from flex_bert.model import FlexBertConfig, FlexBertForMaskedLM
from flex_bert.model.padding import cu_seqlens_from_lengths
from flex_bert.train.compilation import checkpoint_layers, compile_layers
from tests import _parity
from tests._parity import perturb_norms_and_biases, tiny_config

transformers = pytest.importorskip("transformers")

VOCAB = 256
TOL = dict(rtol=1e-5, atol=1e-5)


def make_pair(cfg: FlexBertConfig, attn_implementation: str = "sdpa"):
    torch.manual_seed(0)
    flex = FlexBertForMaskedLM(cfg).eval()
    perturb_norms_and_biases(flex)
    hf = transformers.ModernBertForMaskedLM._from_config(
        flexbert_config_to_hf(cfg), attn_implementation=attn_implementation
    ).eval()
    missing, unexpected = hf.load_state_dict(flexbert_state_to_hf(flex.state_dict()), strict=False)
    assert missing == ["decoder.weight"] and unexpected == []  # tied to the embedding
    assert hf.decoder.weight is hf.model.embeddings.tok_embeddings.weight
    return flex, hf


def padded_batch(lengths, seed=1):
    return _parity.padded_batch(lengths, VOCAB, seed)


def mlm_labels(ids, mask, p=0.3, seed=2):
    g = torch.Generator().manual_seed(seed)
    chosen = (torch.rand(ids.shape, generator=g) < p) & mask.bool()
    return torch.where(chosen, ids, torch.full_like(ids, -100))


@pytest.fixture(scope="module")
def pair():
    return make_pair(tiny_config(VOCAB))


LENGTHS = [20, 33, 40, 7]


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_padded_logits_match_hf(attn_implementation):
    flex, hf = make_pair(tiny_config(VOCAB), attn_implementation)
    ids, mask = padded_batch(LENGTHS)
    with torch.no_grad():
        ours = flex(ids, attention_mask=mask).logits
        ref = hf(input_ids=ids, attention_mask=mask).logits
    assert ours.shape == ref.shape == (4, 40, VOCAB)
    valid = mask.bool()
    torch.testing.assert_close(ours[valid], ref[valid], **TOL)
    assert (ours[~valid] == 0).all()


def test_packed_documents_equal_each_document_alone_in_hf(pair):
    flex, hf = pair
    ids, mask = padded_batch(LENGTHS, seed=3)
    docs = [ids[i, :n] for i, n in enumerate(LENGTHS)]
    packed = torch.cat(docs)
    cu = cu_seqlens_from_lengths(torch.tensor(LENGTHS))
    with torch.no_grad():
        ours = flex(packed, cu_seqlens=cu, max_seqlen=max(LENGTHS)).logits
        ref = torch.cat([hf(input_ids=d[None]).logits[0] for d in docs])
    assert ours.shape == (sum(LENGTHS), VOCAB)
    torch.testing.assert_close(ours, ref, **TOL)


def test_single_document_without_cu_seqlens(pair):
    flex, hf = pair
    ids, _ = padded_batch([30], seed=4)
    with torch.no_grad():
        torch.testing.assert_close(flex(ids[0]).logits, hf(input_ids=ids).logits[0], **TOL)


@pytest.mark.parametrize("masked_prediction", [True, False])
def test_loss_matches_hf(masked_prediction):
    cfg = tiny_config(VOCAB, masked_prediction=masked_prediction)
    flex, hf = make_pair(cfg)
    ids, mask = padded_batch(LENGTHS, seed=5)
    labels = mlm_labels(ids, mask)
    n = int((labels != -100).sum())
    with torch.no_grad():
        ours = flex(ids, attention_mask=mask, labels=labels)
        ref = hf(input_ids=ids, attention_mask=mask, labels=labels)
        hf.sparse_prediction = True
        ref_sparse = hf(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(ours.loss, ref.loss, **TOL)
    assert int(ours.num_labelled) == n
    if masked_prediction:  # labelled positions only, in flattened order
        assert ours.logits.shape == (n, VOCAB)
        torch.testing.assert_close(ours.logits, ref_sparse.logits, **TOL)
    else:
        valid = mask.bool()
        torch.testing.assert_close(ours.logits[valid], ref.logits[valid], **TOL)


def test_packed_loss_equals_padded_loss(pair):
    flex, _ = pair
    ids, mask = padded_batch(LENGTHS, seed=6)
    labels = mlm_labels(ids, mask)
    valid = mask.bool()
    cu = cu_seqlens_from_lengths(torch.tensor(LENGTHS))
    with torch.no_grad():
        padded = flex(ids, attention_mask=mask, labels=labels)
        packed = flex(ids[valid], cu_seqlens=cu, max_seqlen=max(LENGTHS), labels=labels[valid])
    torch.testing.assert_close(packed.loss, padded.loss, **TOL)
    torch.testing.assert_close(packed.logits, padded.logits, **TOL)

    # the loader's count of labelled tokens (no host sync) selects the same tokens; a wrong count is an error
    n = int((labels != -100).sum())
    args = dict(cu_seqlens=cu, max_seqlen=max(LENGTHS), labels=labels[valid])
    with torch.no_grad():
        counted = flex(ids[valid], num_labelled=n, **args)
        assert torch.equal(counted.logits, packed.logits) and torch.equal(counted.loss, packed.loss)
        with pytest.raises(RuntimeError, match="num_labelled"):
            flex(ids[valid], num_labelled=n - 1, **args)


def test_gradients_match_hf_and_checkpointing():
    cfg = tiny_config(VOCAB)
    flex, hf = make_pair(cfg)
    flex.train(), hf.train()  # dropouts are all 0 in tiny_config
    ids, mask = padded_batch(LENGTHS, seed=7)
    labels = mlm_labels(ids, mask)
    flex(ids, attention_mask=mask, labels=labels).loss.backward()
    hf(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    ours = {k: p.grad for k, p in flex.named_parameters()}
    theirs = {k: p.grad for k, p in hf.named_parameters()}
    for k, g in flexbert_state_to_hf(ours).items():
        torch.testing.assert_close(g, theirs[k], rtol=1e-4, atol=1e-6, msg=k)

    ckpt = FlexBertForMaskedLM(tiny_config(VOCAB)).train()
    checkpoint_layers(ckpt.bert)
    ckpt.load_state_dict(flex.state_dict())
    ckpt(ids, attention_mask=mask, labels=labels).loss.backward()
    for k, p in ckpt.named_parameters():
        torch.testing.assert_close(p.grad, ours[k], rtol=1e-5, atol=1e-7, msg=k)


def test_dropout_active_in_training_only():
    flex = FlexBertForMaskedLM(tiny_config(VOCAB, attn_out_dropout_prob=0.1))
    ids, mask = padded_batch([20], seed=8)
    flex.eval()
    with torch.no_grad():
        a, b = flex(ids, attention_mask=mask).logits, flex(ids, attention_mask=mask).logits
    assert torch.equal(a, b)
    flex.train()
    with torch.no_grad():
        assert not torch.equal(flex(ids, attention_mask=mask).logits, a)


def test_encoder_traces_without_graph_breaks(pair):
    """fullgraph=True fails on any .item(), data-dependent branch or numpy call inside the packed forward."""
    flex, _ = pair
    ids, _ = padded_batch([12, 9], seed=9)
    packed = torch.cat([ids[0, :12], ids[1, :9]])
    cu = cu_seqlens_from_lengths(torch.tensor([12, 9]))
    torch._dynamo.reset()
    compiled = torch.compile(flex.bert, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(packed, cu, 12), flex.bert(packed, cu, 12), rtol=0, atol=0)


def test_compile_layers_keeps_names_and_values(pair):
    flex, _ = pair
    model = FlexBertForMaskedLM(tiny_config(VOCAB)).eval()
    model.load_state_dict(flex.state_dict())
    keys = list(model.state_dict())
    torch._dynamo.reset()
    compile_layers(model, backend="eager")
    assert list(model.state_dict()) == keys  # no `_orig_mod.`
    ids, mask = padded_batch([15, 11], seed=10)
    labels = mlm_labels(ids, mask)
    with torch.no_grad():
        got, want = (
            model(ids, attention_mask=mask, labels=labels),
            flex(ids, attention_mask=mask, labels=labels),
        )
    torch.testing.assert_close(got.loss, want.loss, rtol=0, atol=0)


def test_full_megatron_init_statistics():
    cfg = tiny_config(VOCAB, num_hidden_layers=2, hidden_size=128, intermediate_size=256, init_std=0.02)
    torch.manual_seed(0)
    m = FlexBertForMaskedLM(cfg)
    out_std = 0.02 / (2 * 2) ** 0.5
    layer = m.bert.encoder.layers[1]
    for w, sigma in [
        (m.bert.embeddings.tok_embeddings.weight, 0.02),
        (layer.attn.Wqkv.weight, 0.02),
        (layer.mlp.Wi.weight, 0.02),
        (m.head.dense.weight, 0.02),
        (layer.attn.Wo.weight, out_std),
        (layer.mlp.Wo.weight, out_std),
    ]:
        assert w.abs().max() <= 2 * sigma + 1e-7
        # std of a normal truncated at +-2 sigma is 0.8796 sigma
        assert abs(w.std().item() / (0.8796 * sigma) - 1) < 0.05
    assert all((n.weight == 1).all() for n in m.modules() if isinstance(n, torch.nn.LayerNorm))
    assert (m.decoder.bias == 0).all()
    assert m.decoder.weight is m.bert.embeddings.tok_embeddings.weight


def test_meta_build_then_materialise_reties_decoder():
    with torch.device("meta"):
        m = FlexBertForMaskedLM(tiny_config(VOCAB))
    m.to_empty(device="cpu")
    m.tie_weights()
    m.reset_parameters()
    assert m.decoder.weight is m.bert.embeddings.tok_embeddings.weight
    assert torch.isfinite(m(torch.arange(5, 25)).logits).all()


def test_logits_are_detached_where_a_loss_is_computed(pair):
    """With labels the logits serve metrics: detached, so the compiled head's backward gets no zero (N, V)
    gradient for them; without labels they stay differentiable."""
    flex, _ = pair
    ids, mask = padded_batch(LENGTHS, seed=7)
    with_loss = flex(ids, attention_mask=mask, labels=mlm_labels(ids, mask))
    assert with_loss.loss.requires_grad and not with_loss.logits.requires_grad
    assert flex(ids, attention_mask=mask).logits.requires_grad
