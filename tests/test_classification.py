"""Task heads compute what Hugging Face's ModernBertFor{Sequence,Token}Classification compute (fp32, CPU),
on padded and on packed input, with the same parameter names; the export loads back through AutoModelFor...

The tiny model has global and local layers, a window shorter than the documents and different rotary bases,
as the MLM parity test; norms and biases are perturbed so that a swapped or missing one shows.
"""

import json

import pytest
import torch

from flex_bert.hf_tasks import (
    export_task_to_hf,
    load_task_checkpoint,
    save_task_checkpoint,
    task_config_to_hf,
    task_state_to_hf,
)
from flex_bert.model import FlexBertForMaskedLM
from flex_bert.model.classification import (
    FlexBertForSequenceClassification,
    FlexBertForTokenClassification,
    TaskConfig,
    build_task_model,
)
from flex_bert.model.padding import cu_seqlens_from_lengths
from tests import _parity
from tests._parity import perturb_norms_and_biases, tiny_config

transformers = pytest.importorskip("transformers")

VOCAB = 128
TOL = dict(rtol=1e-5, atol=1e-5)
LENGTHS = [20, 33, 40, 7]
HF_CLASSES = {
    "single_label": "ModernBertForSequenceClassification",
    "multi_label": "ModernBertForSequenceClassification",
    "token": "ModernBertForTokenClassification",
}


def make_pair(task: TaskConfig, attn_implementation: str = "sdpa"):
    torch.manual_seed(0)
    flex = build_task_model(tiny_config(VOCAB), task).eval()
    perturb_norms_and_biases(flex)
    cls = getattr(transformers, HF_CLASSES[task.task])
    hf = cls._from_config(
        task_config_to_hf(flex.config, task), attn_implementation=attn_implementation
    ).eval()
    hf.load_state_dict(task_state_to_hf(flex.state_dict()), strict=True)  # same names, nothing left over
    return flex, hf


def padded_batch(lengths, seed=1):
    return _parity.padded_batch(lengths, VOCAB, seed, cls_id=2)


def packed(ids, mask):
    lengths = mask.sum(1)
    return ids[mask.bool()], cu_seqlens_from_lengths(lengths), int(lengths.max())


TASKS = [
    TaskConfig("single_label", ["a", "b", "c"], pooling="cls"),
    TaskConfig("single_label", ["a", "b", "c"], pooling="mean"),
    TaskConfig("multi_label", ["x", "y", "z", "w"], pooling="mean"),
]


@pytest.mark.parametrize("task", TASKS, ids=lambda t: f"{t.task}-{t.pooling}")
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_sequence_logits_match_hf_padded_and_packed(task, attn_implementation):
    flex, hf = make_pair(task, attn_implementation)
    ids, mask = padded_batch(LENGTHS)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
        ours_padded = flex(ids, attention_mask=mask).logits
        ids_T, cu, max_len = packed(ids, mask)
        ours_packed = flex(ids_T, cu_seqlens=cu, max_seqlen=max_len).logits
    assert ref.shape == (len(LENGTHS), task.num_labels)
    torch.testing.assert_close(ours_padded, ref, **TOL)
    torch.testing.assert_close(ours_packed, ref, **TOL)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_token_logits_match_hf_padded_and_packed(attn_implementation):
    flex, hf = make_pair(TaskConfig("token", ["O", "B-X", "I-X"]), attn_implementation)
    ids, mask = padded_batch(LENGTHS)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
        ours_padded = flex(ids, attention_mask=mask).logits
        ids_T, cu, max_len = packed(ids, mask)
        ours_packed = flex(ids_T, cu_seqlens=cu, max_seqlen=max_len).logits
    valid = mask.bool()
    torch.testing.assert_close(ours_padded[valid], ref[valid], **TOL)
    torch.testing.assert_close(ours_packed, ref[valid], **TOL)
    assert (ours_padded[~valid] == 0).all()


@pytest.mark.parametrize("task", ["single_label", "multi_label", "token"])
def test_losses_match_hf(task):
    spec = TaskConfig(task, ["a", "b", "c"], pooling="mean")
    flex, hf = make_pair(spec)
    ids, mask = padded_batch(LENGTHS)
    g = torch.Generator().manual_seed(3)
    if task == "single_label":
        labels = torch.tensor([0, 2, 1, 2])
    elif task == "multi_label":
        labels = (torch.rand(len(LENGTHS), 3, generator=g) < 0.5).float()
    else:
        labels = torch.randint(0, 3, ids.shape, generator=g)
        labels[~mask.bool()] = -100
        labels[:, 1::3] = -100  # continuation pieces
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, labels=labels).loss
        ours = flex(ids, attention_mask=mask, labels=labels).loss
        if task == "token":  # packed: the labels of real tokens, in order
            ids_T, cu, max_len = packed(ids, mask)
            ours_packed = flex(ids_T, cu_seqlens=cu, max_seqlen=max_len, labels=labels[mask.bool()]).loss
            torch.testing.assert_close(ours_packed, ref, **TOL)
    torch.testing.assert_close(ours, ref, **TOL)


def test_start_from_mlm_keeps_encoder_and_head_and_inits_classifier_as_hf():
    mlm = FlexBertForMaskedLM(tiny_config(VOCAB))
    model = FlexBertForSequenceClassification(tiny_config(VOCAB), TaskConfig("single_label", ["a", "b"]))
    model.load_encoder_state(mlm.state_dict())
    ours, theirs = model.state_dict(), mlm.state_dict()
    for key in ours:
        if not key.startswith("classifier."):
            assert torch.equal(ours[key], theirs[key]), key
    w = model.classifier.weight.detach()
    std = 64**-0.5
    assert w.abs().max() <= 2 * std + 1e-6 and abs(float(w.std()) - std) < 0.35 * std  # trunc normal, 2 sigma
    assert (model.classifier.bias == 0).all()
    with pytest.raises(ValueError, match="lacks"):
        model.load_encoder_state({"bert.embeddings.norm.weight": torch.ones(64)})


def test_task_config_refuses_bad_values():
    for kwargs, match in [
        (dict(task="regression", labels=["a", "b"]), "task 'regression' is not supported"),
        (dict(task="single_label", labels=["a"]), "needs more labels"),
        (dict(task="single_label", labels=["a", "a"]), "distinct"),
        (dict(task="single_label", labels=["a", "b"], pooling="max"), "pooling 'max'"),
        (dict(task="token", labels=["O", "B"], dropout=1.0), r"dropout must be in \[0, 1\)"),
    ]:
        with pytest.raises(ValueError, match=match):
            TaskConfig(**kwargs)


@pytest.mark.parametrize("task", ["single_label", "multi_label", "token"])
def test_export_loads_through_auto_classes_with_labels(tmp_path, task):
    from flex_bert.data.tiny_tokenizers import save_word_level_tokenizer

    spec = TaskConfig(task, ["neg", "pos", "mixed"], pooling="mean", dropout=0.1)
    flex, _ = make_pair(spec)
    tok = save_word_level_tokenizer(tmp_path / "tok", VOCAB)
    ckpt = save_task_checkpoint(tmp_path / "best.pt", flex, tok)
    reloaded, _ = load_task_checkpoint(ckpt)
    assert type(reloaded) is type(flex) and reloaded.task == spec
    out = export_task_to_hf(ckpt, tmp_path / "hf")
    auto = (
        transformers.AutoModelForTokenClassification
        if task == "token"
        else transformers.AutoModelForSequenceClassification
    )
    hf = auto.from_pretrained(out, attn_implementation="sdpa").eval()
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [HF_CLASSES[task]]
    assert config["id2label"] == {"0": "neg", "1": "pos", "2": "mixed"}
    assert config["label2id"] == {"neg": 0, "pos": 1, "mixed": 2}
    assert config["classifier_pooling"] == "mean" and config["classifier_dropout"] == 0.1
    assert transformers.AutoTokenizer.from_pretrained(out).cls_token_id == 2
    ids, mask = padded_batch(LENGTHS)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
        ours = flex(ids, attention_mask=mask).logits
    valid = mask.bool()
    torch.testing.assert_close(
        ours if task != "token" else ours[valid], ref if task != "token" else ref[valid], **TOL
    )
    assert isinstance(reloaded, FlexBertForTokenClassification) == (task == "token")
