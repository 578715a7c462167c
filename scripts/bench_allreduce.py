"""NCCL all-reduce bandwidth between the GPUs of one host, at DDP's bucket size and at a whole model's size.

    composer -n 2 scripts/bench_allreduce.py [--json OUT]      (or torchrun --nproc_per_node 2 ...)

Bus bandwidth = 2 (n - 1) / n x bytes / time (NCCL's convention: comparable across GPU counts). DDP reduces
fp32 gradients in 25 MB buckets; FlexBERT-base has 150M parameters (0.6 GB of fp32 gradients). Run with
NCCL_DEBUG=INFO to see the transport NCCL picked (P2P/CUMEM or NVLS over NVLink, SHM through host memory).
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist

SIZES_MB = (25, 150, 600)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", help="rank 0 writes the results here")
    p.add_argument("--iters", type=int, default=10)
    args = p.parse_args()
    local = int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    n, rank = dist.get_world_size(), dist.get_rank()
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        for mb in SIZES_MB:
            x = torch.ones(mb * 2**20 // dtype.itemsize, dtype=dtype, device="cuda")
            for _ in range(3):
                dist.all_reduce(x)
            torch.cuda.synchronize()
            dist.barrier()  # both ranks start the timed loop together
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(args.iters):
                dist.all_reduce(x)
            end.record()
            torch.cuda.synchronize()
            s = start.elapsed_time(end) / 1e3 / args.iters
            nbytes = x.numel() * dtype.itemsize
            row = {
                "dtype": str(dtype).removeprefix("torch."),
                "MB": mb,
                "ms": round(1e3 * s, 3),
                "busbw_GBps": round(2 * (n - 1) / n * nbytes / s / 1e9, 1),
            }
            results.append(row)
            if rank == 0:
                print(json.dumps(row), flush=True)
    if rank == 0 and args.json:
        info = {
            "world_size": n,
            "device": torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "nccl": ".".join(map(str, torch.cuda.nccl.version())),
            "results": results,
        }
        with open(args.json, "w") as f:
            json.dump(info, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
