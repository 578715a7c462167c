"""FlexBERT = ModernBERT in plain PyTorch: packed (unpadded) tokens, global/local attention, rotary.

No composer, omegaconf, hub or transformers imports here; see docs/CONTRACTS.md for the interface.
"""

from flex_bert.kernels import BACKENDS, get_backend

from .attention import Attention
from .classification import (
    FlexBertForSequenceClassification,
    FlexBertForTokenClassification,
    TaskConfig,
    build_task_model,
)
from .config import FlexBertConfig
from .mlm import FlexBertForMaskedLM, FlexBertModel, MaskedLMOutput, init_weights

__all__ = [
    "BACKENDS",
    "Attention",
    "FlexBertConfig",
    "FlexBertForMaskedLM",
    "FlexBertForSequenceClassification",
    "FlexBertForTokenClassification",
    "FlexBertModel",
    "MaskedLMOutput",
    "TaskConfig",
    "build_task_model",
    "get_backend",
    "init_weights",
]
