"""Benchmark machinery, shared by the `scripts/bench_*.py` command lines and tested on the CPU.

- `timing`: the device environment, warm-up until nothing compiles, timed steps, one guarded measurement.
- `corpora`: synthetic documents and packed-row lengths (log-normal), the real packed loader over them.
- `hf_baseline`: Hugging Face ModernBERT of FlexBERT's shape, on full rows or FlexBERT's own padded documents.
- `report`: throughput and MFU of a timed run, the printed line, the markdown table and the JSON file.
- `train`: the training-throughput benchmark (`scripts/bench_train.py`).
- `attention`: attention kernels on one packed row, timed and checked (`scripts/bench_attention.py`).
- `distributed`: N-process training runs through main.py, compared step by step (`scripts/check_distributed.py`).
"""
