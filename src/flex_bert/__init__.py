"""FlexBERT: continued (domain-adaptive) pre-training of ModernBERT.

Layers (imports go downwards only):
  flex_bert.model  plain PyTorch ModernBERT (no composer, omegaconf or hub imports)
  flex_bert.data   read, tokenize, write MDS, merge, mixtures, packing, masking
  flex_bert.hf_config, hf_state, hf_checkpoint   Hugging Face <-> FlexBERT configs, state dicts, checkpoint I/O
  flex_bert.train  Composer glue: config, builders, callbacks, optimizer, schedulers, checkpoints
  flex_bert.bench  benchmark machinery behind scripts/bench_*.py (uses model, data and train)
"""

__version__ = "0.1.0"
