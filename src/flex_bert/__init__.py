"""FlexBERT: continued (domain-adaptive) pre-training of ModernBERT.

Layers (imports go downwards only):
  flex_bert.model  plain PyTorch ModernBERT (no composer, omegaconf or hub imports)
  flex_bert.data   read, tokenize, write MDS, merge, mixtures, packing, masking
  flex_bert.hf     Hugging Face <-> FlexBERT state dicts and configs
  flex_bert.train  Composer glue: config, builders, callbacks, optimizer, schedulers, checkpoints
"""

__version__ = "0.1.0"
