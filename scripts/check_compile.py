"""Graph breaks in FlexBERT's compiled pieces (torch._dynamo.explain), on the GPU: expect none.

python scripts/check_compile.py [--size base|large] [--seq 8192] [--docs 12]
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", default="base", choices=["base", "large"])
    p.add_argument("--seq", type=int, default=8192)
    p.add_argument("--docs", type=int, default=12)
    args = p.parse_args()
    from flex_bert.model import FlexBertConfig, FlexBertForMaskedLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = getattr(FlexBertConfig, args.size)(attention_backend="auto")
    model = FlexBertForMaskedLM(cfg).to(device)
    T = args.seq
    cu = torch.linspace(0, T, args.docs + 1, device=device).round().to(torch.int32)
    max_seqlen = int((cu[1:] - cu[:-1]).max())
    ids = torch.randint(5, 50000, (T,), device=device)
    labels = torch.where(torch.rand(T, device=device) < 0.3, ids, -100)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.autocast(device, dtype=dtype):
        x = model.bert.embeddings(ids)
        positions = (
            torch.arange(T, device=device)
            - cu[torch.searchsorted(cu, torch.arange(T, device=device, dtype=torch.int32), right=True) - 1]
        )
        from flex_bert.kernels.rotary import rotary_cos_sin

        rope = rotary_cos_sin(positions, cfg.head_dim, cfg.local_rope_theta)
        for i in (0, 1):  # a global and a local layer
            layer = model.bert.encoder.layers[i]
            report = torch._dynamo.explain(layer)(x, rope, cu, max_seqlen)
            print(
                f"layer {i} ({'local' if layer.is_local else 'global'}): graphs {report.graph_count}, "
                f"graph breaks {report.graph_break_count}"
            )
            for reason in report.break_reasons:
                print("   break:", reason.reason)
        labelled = labels != -100
        report = torch._dynamo.explain(model.predict)(x[labelled], labels[labelled])
        print(f"head+decoder+loss: graphs {report.graph_count}, graph breaks {report.graph_break_count}")


if __name__ == "__main__":
    main()
