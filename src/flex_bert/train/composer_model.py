"""FlexBERT as a Composer model: batch layout, loss, metrics, FLOPs per batch.

The wrapper holds the network as ``self.model``, so checkpoint keys are ``model.bert...`` exactly as upstream's.
A training micro-batch is one packed row (``input_ids (1, C)``) or several, flattened into one sequence with
their ``cu_seqlens`` offset; an evaluation batch is whole documents laid out the same way.
"""

from __future__ import annotations

import torch
from composer.metrics.nlp import LanguageCrossEntropy, MaskedAccuracy
from composer.models import ComposerModel

from flex_bert.data.masking import IGNORE_INDEX
from flex_bert.model import FlexBertConfig, FlexBertForMaskedLM


def flatten_rows(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(R, C) rows with per-row cu_seqlens -> one flat sequence with global cu_seqlens."""
    ids, labels = batch["input_ids"], batch["labels"]
    rows, width = ids.shape
    cus = [cu + r * width if r else cu for r, cu in enumerate(batch["cu_seqlens"])]
    cu = torch.cat([cus[0]] + [c[1:] for c in cus[1:]]).to(torch.int32)
    return ids.reshape(-1), labels.reshape(-1), cu, int(max(batch["max_seqlen"]))


def model_inputs(batch: dict) -> dict:
    """FlexBertForMaskedLM's keyword arguments for a loader batch: the rows flattened, and the loader's count
    of labels (host ints: masked prediction then selects the labelled tokens without a device sync)."""
    ids, labels, cu, max_seqlen = flatten_rows(batch)
    counts = batch.get("num_labelled")
    n = None if counts is None else sum(counts)
    return dict(input_ids=ids, cu_seqlens=cu, max_seqlen=max_seqlen, labels=labels, num_labelled=n)


class FlexBertComposer(ComposerModel):
    def __init__(self, config: FlexBertConfig, disable_train_metrics: bool = True):
        super().__init__()
        self.config = config
        self.model = FlexBertForMaskedLM(config)
        self.train_metrics = {} if disable_train_metrics else self._metrics()
        self.val_metrics = self._metrics()

    @staticmethod
    def _metrics() -> dict:
        return {
            "LanguageCrossEntropy": LanguageCrossEntropy(ignore_index=IGNORE_INDEX),
            "MaskedAccuracy": MaskedAccuracy(ignore_index=IGNORE_INDEX),
        }

    def forward(self, batch: dict):
        return self.model(**model_inputs(batch))

    def loss(self, outputs, batch: dict) -> torch.Tensor:
        return outputs.loss

    def eval_forward(self, batch: dict, outputs=None):
        return outputs if outputs is not None else self.forward(batch)

    def update_metric(self, batch: dict, outputs, metric) -> None:
        labels = batch["labels"].reshape(-1)
        logits = outputs.logits.reshape(-1, outputs.logits.shape[-1])
        if logits.shape[0] != labels.shape[0]:  # masked_prediction: logits only at labelled positions
            labels = labels[labels != IGNORE_INDEX]
        metric.update(logits.float(), labels)

    def get_metrics(self, is_train: bool = False) -> dict:
        return self.train_metrics if is_train else self.val_metrics

    def flops_per_batch(self, batch: dict) -> float:
        """Training FLOPs of this batch (composer's SpeedMonitor turns it into MFU); padding does no work.

        Python ints only (the loader's counts), no tensor op: SpeedMonitor calls this after every batch with the
        host batch, and torch ops on the CPU here compete with the loader workers for the cores while the GPU
        waits (docs/PERFORMANCE.md)."""
        from flex_bert.model.flops import training_flops_per_token

        lengths = [n for row in batch["doc_lengths"] for n in row]
        n_tokens = sum(lengths)
        masked_fraction = sum(batch["num_labelled"]) / max(1, n_tokens)
        return training_flops_per_token(self.config, lengths, masked_fraction) * n_tokens
