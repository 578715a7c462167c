"""Graph breaks in FlexBERT's compiled pieces (torch._dynamo.explain): expect one graph and no break each.

Explains the first layer (no attention norm), a local layer, a later global layer and head + decoder + loss,
under bf16 autocast on a GPU (fp32 on the CPU), with the model's configured attention backend. Exit status 1
when a piece breaks.

python scripts/check_compile.py [--size base|large] [--seq 8192] [--docs 12]
python scripts/check_compile.py --tiny            # a tiny model on the CPU in seconds
"""

from __future__ import annotations

import argparse
import sys

import torch

from flex_bert.bench.train import TINY_MODEL
from flex_bert.kernels.rotary import positions_from_cu_seqlens, rotary_cos_sin
from flex_bert.model import FlexBertConfig, FlexBertForMaskedLM


def explain(name: str, fn, *args) -> bool:
    """Print the piece's graph and break counts (and why it broke); True when it is one graph."""
    report = torch._dynamo.explain(fn)(*args)
    print(f"{name}: graphs {report.graph_count}, graph breaks {report.graph_break_count}", flush=True)
    for reason in report.break_reasons:
        print("   break:", reason.reason)
    return report.graph_count == 1 and report.graph_break_count == 0


def pieces(layers) -> list[int]:
    """The first layer, the first local layer and the first global layer after layer 0 (where they exist)."""
    local = next((i for i, layer in enumerate(layers) if layer.is_local), None)
    later_global = next((i for i, layer in enumerate(layers) if i and not layer.is_local), None)
    return sorted({0} | {i for i in (local, later_global) if i is not None})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="base", choices=["base", "large"])
    p.add_argument("--tiny", action="store_true", help="a 4-layer model of width 64 (CPU, seconds)")
    p.add_argument("--seq", type=int, help="tokens in the packed row (default 8192; tiny 256)")
    p.add_argument("--docs", type=int, default=12, help="documents in the packed row")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.tiny:
        cfg = FlexBertConfig(**{**TINY_MODEL, "num_hidden_layers": 4})
    else:
        cfg = getattr(FlexBertConfig, args.size)()
    T = args.seq or (256 if args.tiny else 8192)
    torch.manual_seed(0)
    model = FlexBertForMaskedLM(cfg).to(device)
    cu = torch.linspace(0, T, args.docs + 1, device=device).round().to(torch.int32)
    max_seqlen = int((cu[1:] - cu[:-1]).max())
    ids = torch.randint(5, cfg.vocab_size, (T,), device=device)
    labels = torch.where(torch.rand(T, device=device) < 0.3, ids, -100)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ok = True
    with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
        x = model.bert.embeddings(ids)
        positions = positions_from_cu_seqlens(cu, T)
        rope = {
            True: rotary_cos_sin(positions, cfg.head_dim, cfg.local_rope_theta),
            False: rotary_cos_sin(positions, cfg.head_dim, cfg.rotary_emb_base),
        }
        layers = model.bert.encoder.layers
        mlp_out = None
        for i in range(max(pieces(layers)) + 1):  # run every layer, explain the chosen ones
            layer, args_i = layers[i], (x, mlp_out, rope[layers[i].is_local], cu, max_seqlen)
            if i in pieces(layers):
                kind = "local" if layer.is_local else "global"
                ok &= explain(f"layer {i} ({kind}{', no attn_norm' if i == 0 else ''})", layer, *args_i)
            x, mlp_out = layer(*args_i)
        labelled = labels != -100
        ok &= explain("head+decoder+loss", model.predict, x[labelled], labels[labelled])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
