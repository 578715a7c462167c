"""Task heads on the FlexBERT encoder: sequence classification (single- and multi-label) and token
classification, on packed tokens as in pre-training. Shapes: T tokens, n documents, C hidden, L labels.

Each model is Hugging Face's ModernBertFor{Sequence,Token}Classification, parameter for parameter:
`bert.*` (HF `model.*`), `head.dense/norm` (the MLM head's module, `PredictionHead`: dense, GELU, LayerNorm;
HF builds both heads from the same config keys), then dropout and `classifier` (H -> L, with bias).
Starting from an MLM checkpoint keeps `bert.*` and `head.*` (HF's `from_pretrained` does the same) and
initialises only `classifier`, as HF: truncated normal with std hidden_size ** -0.5, zero bias.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .config import FlexBertConfig
from .mlm import IGNORE_INDEX, FlexBertModel, PredictionHead, init_weights
from .padding import packed_bounds, repad, unpad

TASKS = ("single_label", "multi_label", "token")
POOLINGS = ("cls", "mean")


@dataclass
class TaskConfig:
    """What the head predicts; stored with every fine-tuned model (the labels are its id -> name map)."""

    task: str
    labels: list[str] = field(default_factory=list)  # id -> name, as HF's id2label
    pooling: str = "cls"  # classifier_pooling (sequence tasks): the [CLS] token, or the mean over tokens
    dropout: float = 0.0  # classifier_dropout, between the head and the classifier

    def __post_init__(self) -> None:
        self.labels = [str(x) for x in self.labels]
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r} is not supported; choose one of {list(TASKS)}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling {self.pooling!r} is not supported; choose one of {list(POOLINGS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"classifier dropout must be in [0, 1), got {self.dropout}")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be distinct, got {self.labels}")
        if len(self.labels) < (1 if self.task == "multi_label" else 2):
            raise ValueError(f"a {self.task} task needs more labels than {self.labels}")

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ClassifierOutput:
    loss: torch.Tensor | None  # fp32; None without labels
    logits: torch.Tensor  # sequence: (n, L) or (B, L); token: (T, L), or (B, S, L) for padded input


class _TaskModel(nn.Module):
    def __init__(self, config: FlexBertConfig, task: TaskConfig):
        super().__init__()
        self.config, self.task = config, task
        self.bert = FlexBertModel(config)
        self.head = PredictionHead(config)
        self.drop = nn.Dropout(task.dropout)
        self.classifier = nn.Linear(config.hidden_size, task.num_labels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_weights(self, self.config)  # encoder and head as FlexBertForMaskedLM; the classifier as HF
        std, cut = self.config.hidden_size**-0.5, self.config.init_cutoff_factor
        nn.init.trunc_normal_(self.classifier.weight, std=std, a=-cut * std, b=cut * std)
        nn.init.zeros_(self.classifier.bias)

    def load_encoder_state(self, mlm_state: Mapping[str, torch.Tensor]) -> None:
        """`bert.*` and `head.*` from a FlexBertForMaskedLM state dict (no `model.` prefix); the decoder is
        not used and the classifier keeps its initialisation. A missing encoder key is an error."""
        own = {k for k in self.state_dict() if not k.startswith("classifier.")}
        missing = sorted(own - set(mlm_state))
        if missing:
            raise ValueError(f"the starting checkpoint lacks {missing[:5]} (not a FlexBERT MLM state?)")
        self.load_state_dict({k: mlm_state[k] for k in own}, strict=False)

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ClassifierOutput:
        """Packed: `input_ids (T,)`, `cu_seqlens (n+1,)` int32, `max_seqlen`. Padded: `(B, S)` + mask."""
        if input_ids.dim() == 2:
            B, S = input_ids.shape
            mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
            ids_T, indices, cu_seqlens, max_seqlen = unpad(input_ids, mask)
            if labels is not None and self.task.task == "token":
                labels = labels.flatten()[indices]
            out = self._forward_packed(ids_T, cu_seqlens, max_seqlen, labels)
            if self.task.task == "token":
                out.logits = repad(out.logits, indices, B, S)
            return out
        cu_seqlens, max_seqlen = packed_bounds(input_ids, cu_seqlens, max_seqlen, attention_mask)
        return self._forward_packed(input_ids, cu_seqlens, max_seqlen, labels)

    def _forward_packed(self, ids_T, cu_seqlens, max_seqlen, labels) -> ClassifierOutput:
        raise NotImplementedError

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class FlexBertForSequenceClassification(_TaskModel):
    """One label (cross-entropy on `labels (n,)` int64) or a set of labels (binary cross-entropy on
    `labels (n, L)` float multi-hot) per document; the document is its [CLS] token or its mean."""

    def _forward_packed(self, ids_T, cu_seqlens, max_seqlen, labels) -> ClassifierOutput:
        hidden_TC = self.bert(ids_T, cu_seqlens, max_seqlen)
        pooled_nC = pool(hidden_TC, cu_seqlens, self.task.pooling)
        logits = self.classifier(self.drop(self.head(pooled_nC)))
        if labels is None:
            return ClassifierOutput(None, logits)
        if self.task.task == "multi_label":
            loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        else:
            loss = F.cross_entropy(logits.float(), labels.long())
        return ClassifierOutput(loss, logits)


class FlexBertForTokenClassification(_TaskModel):
    """A label per token: cross-entropy over `labels (T,)` != -100 (word continuation pieces and special
    tokens carry -100)."""

    def _forward_packed(self, ids_T, cu_seqlens, max_seqlen, labels) -> ClassifierOutput:
        hidden_TC = self.bert(ids_T, cu_seqlens, max_seqlen)
        logits = self.classifier(self.drop(self.head(hidden_TC)))
        if labels is None:
            return ClassifierOutput(None, logits)
        return ClassifierOutput(F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX), logits)


def pool(hidden_TC: torch.Tensor, cu_seqlens: torch.Tensor, pooling: str) -> torch.Tensor:
    """(T, C) packed hidden states -> (n, C): each document's first token ([CLS]) or its mean."""
    starts = cu_seqlens[:-1].long()
    if pooling == "cls":
        return hidden_TC.index_select(0, starts)
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(hidden_TC.dtype)
    idx_T = torch.arange(hidden_TC.shape[0], device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    doc_T = torch.searchsorted(cu_seqlens, idx_T, right=True) - 1
    sums = hidden_TC.new_zeros(starts.shape[0], hidden_TC.shape[1]).index_add_(0, doc_T, hidden_TC)
    return sums / lengths[:, None]


TASK_MODELS = {
    "single_label": FlexBertForSequenceClassification,
    "multi_label": FlexBertForSequenceClassification,
    "token": FlexBertForTokenClassification,
}


def build_task_model(config: FlexBertConfig, task: TaskConfig) -> _TaskModel:
    return TASK_MODELS[task.task](config, task)
