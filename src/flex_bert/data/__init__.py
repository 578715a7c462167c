"""Data: read documents, tokenize them into `[CLS] ... [SEP]` samples, write/merge MDS, mix folders.

Kept import-light on purpose (no streaming, transformers or torch here): import what you need from
    flex_bert.data.convert   ConvertConfig, convert_dataset        (data/convert_dataset_to_mds.py)
    flex_bert.data.merge     read_conversion_stats, check_compatible, merge_datasets  (data/merge_index.py),
                             check_split, open_split  (how training and evaluation open a local split)
    flex_bert.data.mds_index read_index, check_shard_paths  (an index.json checked before streaming reads it)
    flex_bert.data.mixture   StreamSpec, build_streams             (weighted mixtures for training)
    flex_bert.data.tokenize  tokenizer_fingerprint, load_tokenizer, DocumentProcessor
    flex_bert.data.sources   DataError, iter_rows, resolve_dataset_files
    flex_bert.data.demo_corpus  write_demo_corpus, tokenize_demo_corpus   (tests, offline demo)
    flex_bert.data.tiny_tokenizers  train_bpe_tokenizer, word_level_tokenizer   (tests, demo, make_tokenizer)
packing and masking (training side) live in flex_bert.data.packing and flex_bert.data.masking.
"""
