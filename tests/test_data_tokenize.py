"""Tokenizing and chunking: one call per document, exact slicing, segment cuts that cannot change ids,
fingerprints, and the demo corpus/tokenizer builders."""

import json

import numpy as np

from flex_bert.data.demo_corpus import write_demo_corpus
from flex_bert.data.tiny_tokenizers import train_bpe_tokenizer
from flex_bert.data.tokenize import (
    DocumentProcessor,
    _segmentable,
    chunk_ids,
    ids_dtype,
    load_tokenizer,
    segment_text,
    tokenizer_fingerprint,
)

pytest_plugins = ["_data_fixtures"]  # session fixtures: demo_corpus, tiny_tokenizer_dir, tiny_tokenizer

TRICKY = (
    "Pt's BP 120/80 -- stable.  Two  spaces, tabs\tand\nnewlines\n\n  indented 3.5mg x2 "
    "café résumé naïve e\u0301 [MASK] masked, don't won't 2024-11-21 ### ... end "
)


def _processor(tokenizer_dir, **kw) -> DocumentProcessor:
    info = load_tokenizer(str(tokenizer_dir))
    return DocumentProcessor(info.json, kw.pop("max_seq_len", 64), info.cls_id, info.sep_id, info.dtype, **kw)


def test_ids_match_what_fine_tuning_sees(tiny_tokenizer_dir, tiny_tokenizer):
    proc = _processor(tiny_tokenizer_dir)
    texts = [TRICKY, " leading space", "hello", "x"]
    for text, ids in zip(texts, proc.encode(texts)):
        assert ids.tolist() == tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    # no prefix space: "hello" at the start of a document is not " hello"
    assert proc.encode(["hello"])[0].tolist() != proc.encode([" hello"])[0].tolist()


def test_segment_cuts_do_not_change_the_ids(tiny_tokenizer_dir):
    text = " ".join([TRICKY] * 40)
    whole = _processor(tiny_tokenizer_dir, segment_chars=10**9)
    cut = _processor(tiny_tokenizer_dir, segment_chars=37)
    cut._tokenizer()
    assert cut._can_segment and len(segment_text(text, 37)) > 50
    assert "".join(segment_text(text, 37)) == text
    assert np.array_equal(whole.encode([text])[0], cut.encode([text])[0])


def test_segmenting_is_refused_where_it_could_change_ids(tiny_tokenizer_dir):
    obj = json.loads((tiny_tokenizer_dir / "tokenizer.json").read_text())
    assert _segmentable(json.dumps(obj))
    rstrip = json.loads(json.dumps(obj))
    rstrip["added_tokens"][4]["rstrip"] = True
    metaspace = {
        **obj,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always"},
    }
    lowercase = {**obj, "normalizer": {"type": "Lowercase"}}
    for variant in (rstrip, metaspace, lowercase):
        assert not _segmentable(json.dumps(variant))


def test_chunking_slices_exactly():
    ids = np.arange(10, 10 + 25, dtype=np.uint16)
    pieces = chunk_ids(ids, max_seq_len=7, cls_id=1, sep_id=2)
    assert [len(p) for p in pieces] == [7, 7, 7, 7, 7]  # 25 = 5 x 5, no empty last piece
    assert all(p[0] == 1 and p[-1] == 2 and p.dtype == np.uint16 for p in pieces)
    assert np.array_equal(np.concatenate([p[1:-1] for p in pieces]), ids)
    assert [len(p) for p in chunk_ids(ids[:11], 7, 1, 2)] == [7, 7, 3]


def test_processor_counts_problems_and_keeps_order(tiny_tokenizer_dir):
    proc = _processor(tiny_tokenizer_dir, max_seq_len=16, min_chars=5)
    result = proc(["", "bad\x00", "tiny", "a fine document " * 4, "bad \udcff byte", "ok text"])
    assert {i: r for i, (r, _) in result.problems.items()} == {
        0: "empty",
        1: "bad_encoding",
        2: "too_short",
        4: "bad_encoding",
    }
    n = len(proc.encode(["a fine document " * 4])[0])
    assert result.doc_samples == [0, 0, 0, -(-n // 14), 0, 1] and len(result.sample_lens) == sum(
        result.doc_samples
    )
    assert (
        result.ids.dtype == np.uint16 and result.ids.sum() > 0 and len(result.ids) == result.sample_lens.sum()
    )


def test_fingerprint_identifies_the_tokenizer(tiny_tokenizer_dir, tiny_tokenizer, demo_corpus, tmp_path):
    fp = tokenizer_fingerprint(str(tiny_tokenizer_dir))
    assert fp == tokenizer_fingerprint(tiny_tokenizer) == load_tokenizer(str(tiny_tokenizer_dir)).fingerprint
    tiny_tokenizer.save_pretrained(str(tmp_path / "copy"))
    assert tokenizer_fingerprint(str(tmp_path / "copy")) == fp
    other = train_bpe_tokenizer([demo_corpus["clinical"]], tmp_path / "other", vocab_size=600)
    assert tokenizer_fingerprint(other) != fp
    assert ids_dtype(len(tiny_tokenizer)) == "uint16" and ids_dtype(65536) == "uint16"
    assert ids_dtype(65537) == "uint32"


def test_demo_corpus_and_tokenizer_are_deterministic_and_modernbert_shaped(
    tmp_path, tiny_tokenizer_dir, tiny_tokenizer, demo_corpus
):
    a = write_demo_corpus(tmp_path / "a", seed=0, docs_per_domain=60, eval_docs=10)
    assert all(a[k].read_bytes() == demo_corpus[k].read_bytes() for k in a)
    assert a["clinical"].read_text().splitlines()[0] == "id,notes"
    assert a["finance"].read_text().splitlines()[0] == "id,text"
    train_bpe_tokenizer([a["clinical"], a["finance"]], tmp_path / "tok", vocab_size=1024)
    assert (tmp_path / "tok" / "tokenizer.json").read_bytes() == (
        tiny_tokenizer_dir / "tokenizer.json"
    ).read_bytes()
    tok = tiny_tokenizer
    assert [tok.unk_token, tok.cls_token, tok.sep_token, tok.pad_token, tok.mask_token] == [
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[PAD]",
        "[MASK]",
    ]
    ids = tok("The patient [MASK] stable.")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id and tok.mask_token_id in ids
    assert tok("x [MASK]")["input_ids"] == tok("x[MASK]")["input_ids"]  # [MASK] strips the space before it
    from flex_bert.data.sources import iter_dataset_texts

    lengths = [len(tok(t)["input_ids"]) for t in iter_dataset_texts(str(a["clinical"]))]
    assert max(lengths) > 512 and min(lengths) < 64
