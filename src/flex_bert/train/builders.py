"""``build_<thing>(cfg)`` factories: each makes one component from the validated config and checks it."""

from __future__ import annotations

import os

import torch
from composer.core import DataSpec, Evaluator, Time
from composer.utils import dist
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from flex_bert.data.batch_warmup import BatchSizeWarmup
from flex_bert.data.eval_batches import MaskedDocuments, collate_flat, split_flat
from flex_bert.data.loaders import PackedMLMDataset
from flex_bert.data.masking import MaskingSpec
from flex_bert.model import FlexBertConfig
from flex_bert.train import compat, tiled_init
from flex_bert.train.compilation import prepare
from flex_bert.train.composer_model import FlexBertComposer


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


def build_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except OSError as e:
        raise ValueError(
            f"cannot load tokenizer {name!r}: give a local folder, or download it first with "
            f"`hf download {name}` (runs never reach the hub on their own)"
        ) from e


def build_model_config(cfg: DictConfig, tokenizer) -> FlexBertConfig:
    settings = compat.model_settings(cfg)
    for key in ("pad_token_id", "cls_token_id", "sep_token_id", "mask_token_id"):
        token_id = getattr(tokenizer, key, None)
        if key not in settings and token_id is not None:
            settings[key] = int(token_id)
    config = FlexBertConfig.from_dict(settings)
    if len(tokenizer) > config.vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but model_config.vocab_size is {config.vocab_size}"
        )
    return config


def build_model(cfg: DictConfig, tokenizer) -> FlexBertComposer:
    config = build_model_config(cfg, tokenizer)
    model = FlexBertComposer(config, disable_train_metrics=cfg.model.disable_train_metrics)
    if cfg.model.pretrained_checkpoint:
        from flex_bert.checkpoint_io import TRUST_KEY
        from flex_bert.hf_checkpoint import load_composer_model_state

        state = load_composer_model_state(cfg.model.pretrained_checkpoint, cfg.trust_checkpoint, TRUST_KEY)
        model.model.load_state_dict(state, strict=True)
    if cfg.init_from_checkpoint is not None:
        tiled_init.init_from_checkpoint(model.model, cfg.init_from_checkpoint, trust=cfg.trust_checkpoint)
    prepare(model.model, config, tune=cfg.model.compile_tuning)
    return model


def _documents(dataset_cfg: DictConfig, tokenizer, *, shuffle: bool, vocab_size: int, role: str):
    """The documents of a split (or a weighted mixture), after checking they were converted for this run
    (merge.check_split; a remote split is streaming's to check, as its files arrive while reading)."""
    from streaming import StreamingDataset

    from flex_bert.data.merge import open_split
    from flex_bert.data.mixture import build_streams
    from flex_bert.data.tokenize import tokenizer_fingerprint

    fingerprint = tokenizer_fingerprint(tokenizer)
    common = dict(shuffle=shuffle, shuffle_seed=dataset_cfg.shuffle_seed, batch_size=1)
    if dataset_cfg.streams:
        specs = []
        for name, spec in OmegaConf.to_container(dataset_cfg.streams).items():
            if spec.get("remote") or spec.get("split"):
                raise ValueError(
                    f"streams.{name}: give the dataset folder as `local` (remote/split unsupported)"
                )
            specs.append({"name": name, **{k: v for k, v in spec.items() if v is not None and k != "split"}})
        streams = build_streams(
            specs,
            max_seq_len=dataset_cfg.max_seq_len,
            tokenizer_fingerprint=fingerprint,
            vocab_size=vocab_size,
        )
        return StreamingDataset(streams=streams, **common)
    if dataset_cfg.remote:
        return StreamingDataset(
            local=dataset_cfg.local, remote=dataset_cfg.remote, split=dataset_cfg.split, **common
        )
    return open_split(
        os.path.join(dataset_cfg.local, dataset_cfg.split or ""),
        max_seq_len=dataset_cfg.max_seq_len,
        tokenizer_fingerprint=fingerprint,
        vocab_size=vocab_size,
        role=role,
        **common,
    )


def rows_per_global_batch(cfg: DictConfig) -> int:
    """Packed rows (one per micro-batch) in a global batch; they must split evenly over the GPUs."""
    world = dist.get_world_size()
    slots = cfg.global_train_batch_size // world
    if cfg.global_train_batch_size % world or slots % cfg.device_train_microbatch_size:
        raise ValueError(
            f"global_train_batch_size ({cfg.global_train_batch_size}) must divide into {world} GPU(s) x "
            f"device_train_microbatch_size ({cfg.device_train_microbatch_size})"
        )
    return cfg.global_train_batch_size // cfg.device_train_microbatch_size


def build_train_dataspec(cfg: DictConfig, tokenizer) -> DataSpec:
    loader = cfg.train_loader
    ds_cfg = loader.dataset
    whole_word = ds_cfg.whole_word_mask
    vocab_size = build_model_config(cfg, tokenizer).vocab_size
    documents = _documents(ds_cfg, tokenizer, shuffle=False, vocab_size=vocab_size, role="training")
    dataset = PackedMLMDataset(
        documents,  # the packed dataset orders documents itself
        rows_per_batch=rows_per_global_batch(cfg),
        row_len=cfg.device_train_microbatch_size * ds_cfg.max_seq_len,
        max_seq_len=ds_cfg.max_seq_len,
        pad_id=tokenizer.pad_token_id,
        masking=MaskingSpec.from_tokenizer(tokenizer, whole_word=whole_word),
        mlm_probability=ds_cfg.mlm_probability,
        whole_word_mask=whole_word,
        seed=cfg.seed,
        shuffle=ds_cfg.shuffle,
        shuffle_seed=ds_cfg.shuffle_seed,
        buffer_docs=loader.packing_buffer_docs,
        drop_last=loader.drop_last,
        docs_per_row=None if loader.sequence_packing else cfg.device_train_microbatch_size,
        warmup=batch_size_warmup(cfg),
    )
    dataloader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory and torch.cuda.is_available(),
        prefetch_factor=loader.prefetch_factor if loader.num_workers else None,
    )
    slots_per_row = cfg.device_train_microbatch_size
    count_padding = cfg.count_padding_tokens
    return DataSpec(
        dataloader,
        split_batch=split_rows,
        get_num_samples_in_batch=lambda b: b["input_ids"].shape[0] * slots_per_row,
        get_num_tokens_in_batch=lambda b: b["input_ids"].numel() if count_padding else int(b["num_tokens"]),
    )


def batch_size_warmup_given(cfg: DictConfig) -> bool:
    """Upstream's batch-size warmup applies to packed training only (``compat`` checked the settings)."""
    return cfg.train_loader.batch_size_warmup_min_size is not None and cfg.train_loader.sequence_packing


def batch_size_warmup(cfg: DictConfig) -> BatchSizeWarmup | None:
    """Upstream's batch-size warmup for packed training, per device."""
    loader = cfg.train_loader
    if not batch_size_warmup_given(cfg):
        return None
    world, micro = dist.get_world_size(), cfg.device_train_microbatch_size
    tokens = Time.from_timestring(str(loader.batch_size_warmup_tokens)).value
    min_rows, max_rows = loader.batch_size_warmup_min_size // micro, rows_per_global_batch(cfg) // world
    if min_rows >= max_rows:
        print(f"batch-size warmup: {max_rows} row(s) per GPU is the minimum already; no warmup", flush=True)
        return None
    return BatchSizeWarmup(min_rows, max_rows, tokens=-(-tokens // world))


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


def eval_batch_size(cfg: DictConfig) -> int:
    """Documents per GPU and evaluation batch: device_eval_batch_size, else global_eval_batch_size / GPUs (as
    upstream), else 32."""
    world = dist.get_world_size()
    if cfg.device_eval_batch_size is None:
        return max(1, cfg.global_eval_batch_size // world) if cfg.global_eval_batch_size else 32
    if (
        cfg.global_eval_batch_size is not None
        and cfg.global_eval_batch_size != cfg.device_eval_batch_size * world
    ):
        import warnings

        warnings.warn(
            f"global_eval_batch_size ({cfg.global_eval_batch_size}) has no effect: evaluation takes "
            f"device_eval_batch_size ({cfg.device_eval_batch_size}) documents per GPU x {world} GPU(s)",
            stacklevel=2,
        )
    return cfg.device_eval_batch_size


def build_evaluator(cfg: DictConfig, tokenizer) -> Evaluator | None:
    if cfg.eval_loader is None:
        return None
    loader, ds_cfg = cfg.eval_loader, cfg.eval_loader.dataset
    world = dist.get_world_size()
    vocab_size = build_model_config(cfg, tokenizer).vocab_size
    dataset = MaskedDocuments(
        _documents(ds_cfg, tokenizer, shuffle=False, vocab_size=vocab_size, role="evaluation"),
        max_seq_len=ds_cfg.max_seq_len,
        masking=MaskingSpec.from_tokenizer(tokenizer),
        mlm_probability=ds_cfg.mlm_probability,
        seed=ds_cfg.eval_seed,
    )
    dataloader = DataLoader(
        dataset,
        batch_size=eval_batch_size(cfg),
        sampler=dist.get_sampler(dataset, shuffle=False, drop_last=loader.drop_last),
        collate_fn=collate_flat,
        num_workers=loader.num_workers,
        drop_last=loader.drop_last,
    )
    if len(dataloader) == 0:  # composer would report NaN metrics from no batch at all
        raise ValueError(
            f"the eval split has {len(dataset)} documents, fewer than one batch ({eval_batch_size(cfg)} "
            f"documents x {world} GPU(s)) with eval_loader.drop_last: true; set drop_last: "
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
        subset_num_batches=cfg.eval_subset_num_batches,
        device_eval_microbatch_size=cfg.device_eval_microbatch_size,
    )
