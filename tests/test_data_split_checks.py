"""Opening a split for training or evaluation. Every way of opening local data (a merged split, one dataset
folder named by `split`, `streaming: true`, scripts/evaluate_mlm.py) checks the same things before streaming
reads a shard: index.json is well-formed, every shard path stays inside its dataset folder, the merged index
describes the folders as they are now, the tokenizer, max_seq_len and largest token id fit the run, and the
split is not empty."""

import json
import os
import shutil
from pathlib import Path

import pytest

pytest.register_assert_rewrite("_data_fixtures")
from _data_fixtures import MALFORMED_INDEXES, read_mds, write_edited  # noqa: E402

from flex_bert.data.sources import DataError  # noqa: E402
from flex_bert.train.run import train  # noqa: E402
from tests._train_fixtures import tiny_mds, tiny_yaml  # noqa: E402, F401

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def data(tiny_mds, tmp_path):  # noqa: F811
    """A private copy of the tiny tokenized corpus: train (clinical + finance, merged) and eval."""
    dst = tmp_path / "mds"
    shutil.copytree(tiny_mds["data"], dst)
    return dst


@pytest.fixture(scope="module")
def tokenizer(tiny_mds):  # noqa: F811
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_mds["tokenizer"]))


@pytest.fixture(scope="module")
def other_tokenizer_dir(tiny_mds, tmp_path_factory):  # noqa: F811
    from flex_bert.data.tiny_tokenizers import train_bpe_tokenizer

    out = tmp_path_factory.mktemp("other_tok")
    train_bpe_tokenizer([tiny_mds["root"] / "corpus" / "finance.csv"], out, vocab_size=300)
    return out


def _yaml(tiny_mds, data, tmp_path, name="run", **changes):  # noqa: F811
    short = dict(max_duration="2ba", eval_interval="2ba", save_interval="2ba")
    return tiny_yaml({**tiny_mds, "data": data}, tmp_path, name, **{**short, **changes})


def _open(data, split, tokenizer, **kwargs):
    """Open a split the way scripts/evaluate_mlm.py does."""
    from flex_bert.evaluate import masked_documents

    return masked_documents(str(data), split, tokenizer, 0.15, 0, 128, **kwargs)


def _one_line(e) -> str:
    text = str(e.value)
    assert "\n" not in text, text
    return text


def _reconvert(tiny_mds, data, name, **options):  # noqa: F811
    from flex_bert.data.convert import ConvertConfig, convert_dataset

    cfg = ConvertConfig(
        dataset=str(tiny_mds["root"] / "corpus" / f"{name}.csv"),
        out_dir=str(data / "train"),
        tokenizer=str(tiny_mds["tokenizer"]),
        max_seq_len=128,
        num_workers=1,
        progress=False,
        **options,
    )
    return convert_dataset(cfg)


# --- 3. a merged index that no longer describes its folders -------------------------------------------------


def test_training_refuses_a_merged_index_made_before_a_reconversion(tiny_mds, data, tmp_path):  # noqa: F811
    _reconvert(tiny_mds, data, "finance", overwrite=True, max_tokens=3000)
    with pytest.raises(DataError) as e:
        train([str(_yaml(tiny_mds, data, tmp_path))], [])
    assert f"python data/merge_index.py {data / 'train'}" in _one_line(e)
    assert "finance" in str(e.value)


def test_opening_refuses_folders_moved_without_a_remerge(tiny_mds, data, tokenizer):  # noqa: F811
    shutil.copytree(data / "eval" / "eval", data / "train" / "eval")  # a folder moved in
    shutil.copy(data / "eval" / "eval.conversion.json", data / "train" / "eval.conversion.json")
    with pytest.raises(DataError, match=r"train/eval is not in .*train/index\.json.*re-merge") as e:
        _open(data, "train", tokenizer)
    _one_line(e)
    shutil.rmtree(data / "train" / "eval")
    (data / "train" / "eval.conversion.json").unlink()
    _open(data, "train", tokenizer)  # as merged again
    shutil.rmtree(data / "train" / "finance")  # a folder moved out
    (data / "train" / "finance.conversion.json").unlink()
    with pytest.raises(DataError, match=r"names finance, which is not in .*re-merge"):
        _open(data, "train", tokenizer)


def test_opening_refuses_a_shard_changed_after_the_merge(tiny_mds, data, tokenizer):  # noqa: F811
    shard = data / "train" / "clinical" / "shard.00000.mds"
    shard.write_bytes(shard.read_bytes()[:-100])  # truncated (a copy that did not finish)
    with pytest.raises(DataError, match=r"shard\.00000\.mds has \d+ bytes, .*index\.json says \d+") as e:
        _open(data, "train", tokenizer)
    _one_line(e)


def test_remerging_makes_a_stale_split_usable_again(tiny_mds, data, tokenizer):  # noqa: F811
    from flex_bert.data.merge import merge_datasets

    stats = _reconvert(tiny_mds, data, "finance", overwrite=True, max_tokens=3000)["train"]
    with pytest.raises(DataError, match="re-merge"):
        _open(data, "train", tokenizer)
    merge_datasets(data / "train")
    clinical = json.loads((data / "train" / "clinical.conversion.json").read_text())["samples"]
    assert (
        len(_open(data, "train", tokenizer))
        == clinical + stats["samples"]
        == len(read_mds(data / "train" / "clinical") + read_mds(data / "train" / "finance"))
    )


# --- 3. every way of opening a split checks the tokenizer ---------------------------------------------------


def test_streaming_true_checks_the_tokenizer(tiny_mds, data, tmp_path, other_tokenizer_dir):  # noqa: F811
    y = _yaml(
        tiny_mds,
        data,
        tmp_path,
        tokenizer_name=str(other_tokenizer_dir),
        **{"train_loader.dataset.streaming": True, "eval_loader.dataset.streaming": True},
    )
    with pytest.raises(DataError, match="not with the training tokenizer") as e:
        train([str(y)], [])
    _one_line(e)


def test_one_folder_split_checks_the_tokenizer(tiny_mds, data, tmp_path, other_tokenizer_dir):  # noqa: F811
    y = _yaml(
        tiny_mds,
        data,
        tmp_path,
        tokenizer_name=str(other_tokenizer_dir),
        **{"train_loader.dataset.split": "train/clinical", "eval_loader.dataset.split": "eval/eval"},
    )
    with pytest.raises(DataError, match="not with the training tokenizer"):
        train([str(y)], [])


def test_evaluation_checks_the_tokenizer(data, other_tokenizer_dir):
    from transformers import AutoTokenizer

    other = AutoTokenizer.from_pretrained(str(other_tokenizer_dir))
    with pytest.raises(DataError, match="not with the training tokenizer") as e:
        _open(data, "eval", other)
    _one_line(e)


# --- 1. shard paths stay inside their dataset folder --------------------------------------------------------


def _outside_copy(data, tmp_path) -> Path:
    """A valid shard outside the data folder (what an attacker's basename would point at)."""
    outside = tmp_path / "outside" / "shard.00000.mds"
    outside.parent.mkdir()
    shutil.copy(data / "train" / "clinical" / "shard.00000.mds", outside)
    return outside


def _set_basename(index: Path, value: str) -> None:
    obj = json.loads(index.read_text())
    obj["shards"][0]["raw_data"]["basename"] = value
    index.write_text(json.dumps(obj))


def test_training_refuses_a_shard_path_that_leaves_the_dataset_folder(tiny_mds, data, tmp_path):  # noqa: F811
    _outside_copy(data, tmp_path)
    _set_basename(data / "train" / "index.json", "clinical/../../../outside/shard.00000.mds")
    with pytest.raises(DataError) as e:
        train([str(_yaml(tiny_mds, data, tmp_path))], [])
    text = _one_line(e)
    assert str(data / "train" / "index.json") in text and "outside of" in text and "shard 0" in text


@pytest.mark.parametrize("index", ["index.json", "clinical/index.json"])
@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_opening_refuses_shards_outside_their_folder(data, tmp_path, tokenizer, index, how):
    outside = _outside_copy(data, tmp_path)
    prefix = "clinical/" if index == "index.json" else ""
    if how == "dotdot":
        _set_basename(data / "train" / index, f"{prefix}../../../outside/shard.00000.mds")
    elif how == "absolute":
        _set_basename(data / "train" / index, str(outside))
    else:
        shard = data / "train" / "clinical" / "shard.00000.mds"
        shard.unlink()
        os.symlink(outside, shard)
    with pytest.raises(DataError, match=r"shard 0 .*is outside of its dataset folder") as e:
        _open(data, "train", tokenizer)
    _one_line(e)


def test_a_wrong_sample_count_in_a_foreign_index_is_refused(data, tokenizer):
    """MDS from another tool (no conversion stats): the index's sample count must be the shard's own."""
    foreign = data / "foreign"
    shutil.copytree(data / "train" / "clinical", foreign)
    held = int.from_bytes((foreign / "shard.00000.mds").read_bytes()[:4], "little")
    obj = json.loads((foreign / "index.json").read_text())
    obj["shards"][0]["samples"] = held + 40  # streaming would fail on sample held + 1, mid-run
    (foreign / "index.json").write_text(json.dumps(obj))
    with pytest.raises(DataError, match=rf"holds {held} samples, the index.json says {held + 40}") as e:
        _open(data, "foreign", tokenizer)
    _one_line(e)


def test_a_symlink_that_stays_inside_the_folder_is_fine(data, tokenizer):
    shard = data / "train" / "clinical" / "shard.00000.mds"
    shard.rename(shard.with_name("real.mds"))
    os.symlink("real.mds", shard)
    assert len(_open(data, "train", tokenizer)) > 0


@pytest.mark.parametrize("index", ["index.json", "clinical/index.json"])
@pytest.mark.parametrize("case", MALFORMED_INDEXES, ids=[c[0] for c in MALFORMED_INDEXES])
def test_a_malformed_index_is_one_line_naming_it(data, tokenizer, index, case):
    _, edit, message = case
    path = data / "train" / index
    write_edited(path, edit)
    with pytest.raises(DataError, match=message) as e:
        _open(data, "train", tokenizer)
    assert _one_line(e).startswith(str(path))


# --- 4. token ids the model has no embedding for ------------------------------------------------------------


@pytest.fixture(scope="module")
def holey_data(tiny_mds, tmp_path_factory):  # noqa: F811
    """Data tokenized with a tokenizer of 512 tokens whose ids are not 0..511: " the" has id 600. The model's
    vocab_size (512) passes the tokenizer-length check, but the data holds id 600."""
    from flex_bert.data.demo_corpus import tokenize_demo_corpus

    root = tmp_path_factory.mktemp("holey")
    tok_dir = root / "tokenizer"
    shutil.copytree(tiny_mds["tokenizer"], tok_dir)
    obj = json.loads((tok_dir / "tokenizer.json").read_text())
    obj["model"]["vocab"]["Ġthe"] = 600
    (tok_dir / "tokenizer.json").write_text(json.dumps(obj))
    corpus = tiny_mds["root"] / "corpus"
    files = {name: corpus / f"{name}.csv" for name in ("clinical", "finance", "eval")}
    tokenize_demo_corpus(files, tok_dir, root / "mds", 128, num_workers=1)
    return {"root": root, "data": root / "mds", "tokenizer": tok_dir}


def test_training_refuses_token_ids_beyond_the_models_vocabulary(holey_data, tmp_path):
    largest = max(int(s.max()) for s in read_mds(holey_data["data"] / "train" / "clinical"))
    assert largest == 600  # the fact the check must catch, read from the shards themselves
    y = _yaml(holey_data, holey_data["data"], tmp_path)
    with pytest.raises(DataError, match=r"token ids up to 600 .*vocab_size is 512") as e:
        train([str(y)], [])
    _one_line(e)


def test_stats_without_max_token_id_fall_back_to_the_tokenizers_size(holey_data, tmp_path, recwarn):
    data = tmp_path / "mds"
    shutil.copytree(holey_data["data"], data)
    for stats_file in data.glob("*/*.conversion.json"):
        stats = json.loads(stats_file.read_text())
        del stats["max_token_id"]
        stats_file.write_text(json.dumps(stats))
    with pytest.raises(DataError, match=r"tokenizer's vocabulary \(601 ids\) .*vocab_size is 512"):
        train([str(_yaml(holey_data, data, tmp_path))], [])


# --- 8. an empty split -------------------------------------------------------------------------------------


def test_training_refuses_an_empty_eval_split(tiny_mds, data, tmp_path):  # noqa: F811
    shutil.rmtree(data / "eval")
    (data / "eval").mkdir()
    (data / "eval" / "index.json").write_text(json.dumps({"version": 2, "shards": []}))
    with pytest.raises(DataError, match=r"eval.* holds no samples") as e:
        train([str(_yaml(tiny_mds, data, tmp_path))], [])
    _one_line(e)


def test_training_refuses_an_evaluation_that_would_run_no_batch(tiny_mds, data, tmp_path):  # noqa: F811
    samples = json.loads((data / "eval" / "eval.conversion.json").read_text())["samples"]
    y = _yaml(tiny_mds, data, tmp_path, device_eval_batch_size=samples + 1, **{"eval_loader.drop_last": True})
    with pytest.raises(ValueError, match=rf"has {samples} documents, fewer than one batch .*drop_last") as e:
        train([str(y)], [])
    _one_line(e)
