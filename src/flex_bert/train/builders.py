"""``build_<thing>`` factories: each makes one component from its own config section and the run's shape
(``shape.RunShape``), and checks what it makes."""

from __future__ import annotations

import os
import tempfile

import torch
from composer.core import DataSpec, Evaluator, Time
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from flex_bert.data.batch_warmup import BatchSizeWarmup
from flex_bert.data.eval_batches import MaskedDocuments, collate_flat, split_flat
from flex_bert.data.loaders import PackedMLMDataset
from flex_bert.data.masking import MaskingSpec
from flex_bert.model import FlexBertConfig
from flex_bert.train import tiled_init
from flex_bert.train.compilation import prepare
from flex_bert.train.composer_model import FlexBertComposer
from flex_bert.train.shape import RunShape
from flex_bert.train.upstream_model import from_upstream


def set_cpu_threads(loader_workers: int) -> None:
    """On a CPU run, torch's intra-op threads share the cores with the loader workers: one core is left to the
    data path, the rest split between them (torch's default, a thread per core, thrashed a busy 2-core machine
    at a tenth of the speed). OMP_NUM_THREADS, when set, decides instead."""
    if os.environ.get("OMP_NUM_THREADS"):
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, (cores - 1) // (1 + loader_workers))
    torch.set_num_threads(threads)
    print(f"cpu: {threads} intra-op thread(s) on {cores} core(s) (OMP_NUM_THREADS overrides)", flush=True)


def build_model_config(settings: dict, tokenizer) -> FlexBertConfig:
    """The model config of upstream-style ``settings`` (``compat.model_settings``), its special-token ids from
    the tokenizer where unset."""
    settings = dict(settings)
    for key in ("pad_token_id", "cls_token_id", "sep_token_id", "mask_token_id"):
        token_id = getattr(tokenizer, key, None)
        if key not in settings and token_id is not None:
            settings[key] = int(token_id)
    config = from_upstream(settings)
    if len(tokenizer) > config.vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but model_config.vocab_size is {config.vocab_size}"
        )
    return config


def build_model(
    config: FlexBertConfig, section: DictConfig, *, weights: str | None, trust: bool, tiled=None
) -> FlexBertComposer:
    """The model of ``config``: tiled from a smaller checkpoint (``init_from_checkpoint``), then the weights of
    ``weights`` (the phase's weights-only checkpoint, ``restart.Phase.weights_path``), then prepared for
    training (``compilation.prepare``: compile, activation checkpointing)."""
    model = FlexBertComposer(config, disable_train_metrics=section.disable_train_metrics)
    if tiled is not None:
        tiled_init.init_from_checkpoint(model.model, tiled, trust=trust)
    if weights:
        model.model.load_state_dict(load_weights(weights, trust), strict=True)
    prepare(model.model, config, tune=section.compile_tuning)
    return model


def load_weights(path: str, trust: bool) -> dict:
    """A checkpoint's model weights, read without running code from it (a remote one is downloaded first,
    with composer's own downloader, as ``load_path`` would be)."""
    from composer.utils import get_file

    from flex_bert.checkpoint_io import TRUST_KEY
    from flex_bert.hf_checkpoint import load_composer_model_state

    if "://" not in path:
        return load_composer_model_state(path, trust, TRUST_KEY)
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, os.path.basename(path))
        get_file(path, local)
        return load_composer_model_state(local, trust, TRUST_KEY)


def open_documents(dataset_cfg: DictConfig, tokenizer, *, vocab_size: int, role: str):
    """The documents of a split (or a weighted mixture), after checking they were converted for this run
    (``merge.open_split``; a remote split is streaming's to check, as its files arrive while reading)."""
    from streaming import StreamingDataset

    from flex_bert.data.merge import open_split
    from flex_bert.data.mixture import build_streams
    from flex_bert.data.tokenize import tokenizer_fingerprint

    fingerprint = tokenizer_fingerprint(tokenizer)
    common = dict(shuffle=False, shuffle_seed=dataset_cfg.shuffle_seed, batch_size=1)
    if not dataset_cfg.streams:
        return open_split(
            os.path.join(dataset_cfg.local, dataset_cfg.split or ""),
            remote=dataset_cfg.remote and os.path.join(dataset_cfg.remote, dataset_cfg.split or ""),
            max_seq_len=dataset_cfg.max_seq_len,
            tokenizer_fingerprint=fingerprint,
            vocab_size=vocab_size,
            role=role,
            **common,
        )
    specs = []
    for name, spec in OmegaConf.to_container(dataset_cfg.streams).items():
        if spec.get("remote") or spec.get("split"):
            raise ValueError(f"streams.{name}: give the dataset folder as `local` (remote/split unsupported)")
        specs.append({"name": name, **{k: v for k, v in spec.items() if v is not None and k != "split"}})
    streams = build_streams(
        specs, max_seq_len=dataset_cfg.max_seq_len, tokenizer_fingerprint=fingerprint, vocab_size=vocab_size
    )
    return StreamingDataset(streams=streams, **common)


def build_train_dataspec(
    loader: DictConfig, run: RunShape, tokenizer, *, vocab_size: int, seed: int, count_padding_tokens: bool
) -> DataSpec:
    ds_cfg = loader.dataset
    whole_word = ds_cfg.whole_word_mask
    documents = open_documents(ds_cfg, tokenizer, vocab_size=vocab_size, role="training")
    dataset = PackedMLMDataset(
        documents,  # the packed dataset orders documents itself
        rows_per_batch=run.rows_per_global_batch,
        row_len=run.row_len,
        max_seq_len=ds_cfg.max_seq_len,
        pad_id=tokenizer.pad_token_id,
        masking=MaskingSpec.from_tokenizer(tokenizer, whole_word=whole_word),
        mlm_probability=ds_cfg.mlm_probability,
        whole_word_mask=whole_word,
        seed=seed,
        shuffle=ds_cfg.shuffle,
        shuffle_seed=ds_cfg.shuffle_seed,
        buffer_docs=loader.packing_buffer_docs,
        drop_last=loader.drop_last,
        docs_per_row=None if loader.sequence_packing else run.slots_per_row,
        warmup=batch_size_warmup(loader, run),
    )
    dataloader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory and torch.cuda.is_available(),
        prefetch_factor=loader.prefetch_factor if loader.num_workers else None,
    )
    slots_per_row = run.slots_per_row
    return DataSpec(
        dataloader,
        split_batch=split_rows,
        get_num_samples_in_batch=lambda b: b["input_ids"].shape[0] * slots_per_row,
        get_num_tokens_in_batch=lambda b: (
            b["input_ids"].numel() if count_padding_tokens else int(b["num_tokens"])
        ),
    )


def batch_size_warmup_given(loader: DictConfig) -> bool:
    """Upstream's batch-size warmup applies to packed training only (``compat`` checked the settings)."""
    return loader.batch_size_warmup_min_size is not None and loader.sequence_packing


def batch_size_warmup(loader: DictConfig, run: RunShape) -> BatchSizeWarmup | None:
    """Upstream's batch-size warmup for packed training, per device."""
    if not batch_size_warmup_given(loader):
        return None
    tokens = Time.from_timestring(str(loader.batch_size_warmup_tokens)).value
    min_rows, max_rows = loader.batch_size_warmup_min_size // run.slots_per_row, run.rows_per_device
    if min_rows >= max_rows:
        print(f"batch-size warmup: {max_rows} row(s) per GPU is the minimum already; no warmup", flush=True)
        return None
    return BatchSizeWarmup(min_rows, max_rows, tokens=-(-tokens // run.world_size))


def split_rows(batch: dict, microbatch_size: int | float) -> list[dict]:
    """Micro-batches of whole packed rows (composer's micro-batch size counts rows here)."""
    n = int(microbatch_size)
    rows = batch["input_ids"].shape[0]
    out = []
    for start in range(0, rows, n):
        sl = slice(start, start + n)
        doc_lengths = batch["doc_lengths"][sl]
        out.append(
            {
                "input_ids": batch["input_ids"][sl],
                "labels": batch["labels"][sl],
                "cu_seqlens": batch["cu_seqlens"][sl],
                "max_seqlen": batch["max_seqlen"][sl],
                "num_tokens": sum(sum(d) for d in doc_lengths),
                "num_labelled": batch["num_labelled"][sl],
                "doc_lengths": doc_lengths,
            }
        )
    return out


def build_evaluator(
    loader: DictConfig | None,
    run: RunShape,
    tokenizer,
    *,
    vocab_size: int,
    subset_num_batches: int,
    microbatch_size: int | None,
) -> Evaluator | None:
    if loader is None:
        return None
    ds_cfg = loader.dataset
    dataset = MaskedDocuments(
        open_documents(ds_cfg, tokenizer, vocab_size=vocab_size, role="evaluation"),
        max_seq_len=ds_cfg.max_seq_len,
        masking=MaskingSpec.from_tokenizer(tokenizer),
        mlm_probability=ds_cfg.mlm_probability,
        seed=ds_cfg.eval_seed,
    )
    from composer.utils import dist

    dataloader = DataLoader(
        dataset,
        batch_size=run.eval_batch_size,
        sampler=dist.get_sampler(dataset, shuffle=False, drop_last=loader.drop_last),
        collate_fn=collate_flat,
        num_workers=loader.num_workers,
        drop_last=loader.drop_last,
    )
    if len(dataloader) == 0:  # composer would report NaN metrics from no batch at all
        raise ValueError(
            f"the eval split has {len(dataset)} documents, fewer than one batch ({run.eval_batch_size} "
            f"documents x {run.world_size} GPU(s)) with eval_loader.drop_last: true; set drop_last: "
            "false or a smaller device_eval_batch_size"
        )
    spec = DataSpec(
        dataloader,
        split_batch=split_flat,
        get_num_samples_in_batch=lambda b: len(b["doc_lengths"][0]),
        get_num_tokens_in_batch=lambda b: int(b["num_tokens"]),
    )
    return Evaluator(
        label="eval",
        dataloader=spec,
        metric_names=["LanguageCrossEntropy", "MaskedAccuracy"],
        subset_num_batches=subset_num_batches,
        device_eval_microbatch_size=microbatch_size,
    )


def run_train_data(cfg: DictConfig, run: RunShape, tokenizer, vocab_size: int):
    """The run's training DataSpec from the root config: what training and ``--dry_run`` both build."""
    return build_train_dataspec(
        cfg.train_loader,
        run,
        tokenizer,
        vocab_size=vocab_size,
        seed=cfg.seed,
        count_padding_tokens=cfg.count_padding_tokens,
    )


def run_evaluator(cfg: DictConfig, run: RunShape, tokenizer, vocab_size: int):
    """The run's evaluator from the root config: what training and ``--dry_run`` both build."""
    return build_evaluator(
        cfg.eval_loader,
        run,
        tokenizer,
        vocab_size=vocab_size,
        subset_num_batches=cfg.eval_subset_num_batches,
        microbatch_size=cfg.device_eval_microbatch_size,
    )
