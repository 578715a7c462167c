"""Attention kernels on one packed row: varlen (flash, sliding window) vs flex (block-sparse BlockMask).

One row of `--tokens` tokens (98,304 = 12 x 8192) of log-normal document lengths (median 600, sigma 1, clipped
to 50..8192), H=12, D=64, bf16 on CUDA. For a local layer (window 128) and a global one, forward + backward
(CUDA events after warm-up, median of `--iters`) of:
  every backend of `flex_bert.kernels.BACKENDS`, by its name (one that cannot run here is reported failed:
                    varlen, band, fa4 and flash_attn need CUDA, fa4 and flash_attn their packages), and
  flex compiled     the flex backend under torch.compile, as inside compiled layers (mask built in the graph)
  flex premask      compiled flex_attention with a prebuilt block mask (attention alone)
  band (full)       the band kernel on a global layer, its window wider than any document
  mask only         `flex_block_mask` alone, eager (no FLOPs)
Useful TFLOP/s counts only allowed (query, key) pairs: 4*H*D*pairs, x3.5 for forward + backward. Accuracy: max
abs error of output and input gradients against the exact `sdpa` backend (fp32) on a smaller row
(`--check-tokens`, documents clipped to 2048 so the padded reference fits in memory).

On CPU (smoke test) flex has no backward: forward only, fp32. Usage:
  python scripts/bench_attention.py [--tokens 98304] [--iters 20] [--block-size 128] [--json OUT.json]
                                    [--max-len 1024] [--kernels varlen,band]
  python scripts/bench_attention.py --sweep [FWD,BWD]  # the band kernel's tile shapes, forward and backward
  python scripts/bench_attention.py --sweep defaults   # both backwards of the band kernel at their defaults
  python scripts/bench_attention.py --device cpu --tokens 2048
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from flex_bert.bench.attention import make_inputs, max_errors, time_ms, useful_pairs
from flex_bert.bench.corpora import packed_lengths
from flex_bert.kernels import BACKENDS, band_attention, flex
from flex_bert.kernels.flex import flex_attention_backend, flex_block_mask

# the band kernel with half a window of 2^30 tokens: global attention, one compilation
GLOBAL_WINDOW = 1 << 31


def sweep(inputs, cu, iters: int, kernels: list[str], window: int = 128) -> list[dict]:
    """Every tile shape and launch setting of each named kernel of the band attention (the others at their
    defaults), for a local layer (window 128) or another window (`GLOBAL_WINDOW`: a global layer): the forward
    (FWD) timed alone, the backward kernels by forward + backward. BWD is the one-pass backward; DKDV and DQ
    are the two kernels of the split one (the deterministic mode's). The defaults of both backwards are timed
    first. Restores the defaults."""
    import itertools

    names = ("FWD", "BWD", "DKDV", "DQ")
    defaults = {n: dict(getattr(band_attention, n)) for n in names}
    fn = lambda: band_attention.band_attention(*inputs, cu, window)  # noqa: E731
    rows = []
    for split in (False, True):
        torch.use_deterministic_algorithms(split, warn_only=True)
        ms = time_ms(fn, inputs, True, iters)
        rows.append(dict(kernel="defaults", split_bwd=split, ms=ms))
        print(f"defaults, {'split' if split else 'one-pass'} backward: fwd+bwd {ms:8.3f} ms")
    tiles = [(32, 64), (64, 32), (64, 64), (128, 64), (64, 128), (32, 128), (128, 32), (128, 128)]
    launches = [(4, 2), (4, 3), (4, 4), (8, 2), (8, 3)]  # (num_warps, num_stages)
    for which in (n for n in kernels if n in names):  # "--sweep defaults": the defaults alone
        torch.use_deterministic_algorithms(which in ("DKDV", "DQ"), warn_only=True)
        for (bm, bn), (warps, stages) in itertools.product(tiles, launches):
            cfg = dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)
            for n in names:
                setattr(band_attention, n, dict(cfg if n == which else defaults[n]))
            try:
                ms = time_ms(fn, inputs, which != "FWD", iters)
            except Exception as e:  # noqa: BLE001  (e.g. out of shared memory)
                print(f"{which} {cfg} failed: {type(e).__name__}: {str(e)[-200:]}")
                continue
            rows.append(dict(kernel=which, ms=ms, **cfg))
            print(f"{which:<5}BM={bm:<4}BN={bn:<4}warps={warps} stages={stages} {ms:8.3f} ms")
    torch.use_deterministic_algorithms(False)
    for n in names:
        setattr(band_attention, n, defaults[n])
    for n in kernels:
        best = min((r for r in rows if r["kernel"] == n), key=lambda r: r["ms"], default=None)
        print(f"best {n}: {best}")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tokens", type=int, default=98_304)
    ap.add_argument("--check-tokens", type=int, default=8192)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--block-size", type=int, default=128, help="flex sparse block (power of two >= 16)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--max-len", type=int, default=8192, help="longest document (8192; 1024 as at a 1024 context)"
    )
    ap.add_argument("--kernels", help="comma-separated subset of the kernels to time (default all)")
    ap.add_argument(
        "--sweep",
        nargs="?",
        const="FWD,BWD,DKDV,DQ",
        help="only sweep the band kernel's tile shapes (CUDA): these of FWD,BWD,DKDV,DQ (default all)",
    )
    ap.add_argument(
        "--sweep-window",
        default="128",
        help="the window of --sweep: a total window (128, a local layer's) or 'global' (a global layer)",
    )
    ap.add_argument("--json", metavar="OUT", help="also write the results as JSON to this file")
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda")
    dtype, backward = (torch.bfloat16, True) if cuda else (torch.float32, False)
    flex.FLEX_BLOCK_SIZE = args.block_size
    H, D, bs = args.heads, args.head_dim, args.block_size
    lengths = packed_lengths(args.tokens, args.seed, hi=args.max_len)
    check_lengths = packed_lengths(min(args.check_tokens, args.tokens), args.seed + 1, hi=2048)
    q, k, v, cu, max_len = make_inputs(lengths, H, D, dtype, args.device)
    inputs = [t.requires_grad_(backward) for t in (q, k, v)]
    if args.sweep:
        window = GLOBAL_WINDOW if args.sweep_window == "global" else int(args.sweep_window)
        rows = sweep(inputs, cu, args.iters, args.sweep.split(","), window)
        if args.json:
            Path(args.json).write_text(json.dumps({"sweep": rows}, indent=2))
        return 0
    chosen = args.kernels.split(",") if args.kernels else None
    compiled = torch.compile(flex_attention_backend, dynamic=False)
    print(f"{args.tokens:,} tokens, {len(lengths)} documents (max {max_len}), H={H} D={D} {dtype}, "
          f"flex block {bs}, {'fwd+bwd' if backward else 'fwd only'}, median of {args.iters}")  # fmt: skip
    print(f"{'layer':<8}{'kernel':<16}{'ms':>9}{'TFLOP/s':>9}{'err_out':>10}{'err_grad':>10}")
    results = []
    for layer, window in (("local", 128), ("global", None)):
        flops = 4 * H * D * useful_pairs(lengths, window) * (3.5 if backward else 1.0)
        build = lambda w=window: flex_block_mask(cu, q.shape[0], w, block_size=bs, full_width=not cuda)  # noqa: E731
        mask = build()
        kernels = {name: backend.fn for name, backend in BACKENDS.items()}
        kernels["flex compiled"] = compiled
        kernels["flex premask"] = lambda *a, m=mask: flex_attention_backend(*a, block_mask=m)
        if window is None and cuda:  # the band kernel with a window wider than any document: full attention
            kernels["band (full)"] = lambda q, k, v, cu, n, w: band_attention.band_attention(
                q, k, v, cu, GLOBAL_WINDOW
            )
        if chosen:
            kernels = {n: f for n, f in kernels.items() if n in chosen}
        rows = []
        for name, fn in kernels.items():
            try:  # an unsupported kernel (forward or backward) is a result, not a crash
                ms = time_ms(
                    lambda fn=fn, w=window: fn(*inputs, cu, max_len, w), inputs, backward, args.iters
                )
                check_fn = flex_attention_backend if name == "flex premask" else fn
                err = max_errors(check_fn, check_lengths, H, D, dtype, args.device, window, backward)
            except Exception as e:  # noqa: BLE001
                if "CUDA error" in str(e) or type(e).__name__ == "AcceleratorError":
                    raise  # sticky: every later kernel would "fail" too
                rows.append(
                    dict(layer=layer, window=window, kernel=name, error=f"{type(e).__name__}: {e}"[:300])
                )
                print(f"{layer:<8}{name:<16} failed: {rows[-1]['error']}")
                continue
            rows.append(dict(layer=layer, window=window, kernel=name, ms=ms, tflops=flops / ms / 1e9, **err))
        if not chosen or "mask only" in chosen:
            rows.append(
                dict(layer=layer, window=window, kernel="mask only", ms=time_ms(build, inputs, False, 20))
            )
        for r in rows:
            if "error" in r:
                continue
            tf = f"{r['tflops']:9.1f}" if "tflops" in r else " " * 9
            errs = "".join(f"{r[e]:10.2e}" if e in r else " " * 10 for e in ("err_out", "err_grad"))
            print(f"{layer:<8}{r['kernel']:<16}{r['ms']:9.3f}{tf}{errs}")
        results += rows
    if args.json:
        meta = dict(tokens=args.tokens, documents=len(lengths), heads=H, head_dim=D, dtype=str(dtype),
                    block_size=bs, backward=backward, device=torch.cuda.get_device_name() if cuda else "cpu")  # fmt: skip
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
