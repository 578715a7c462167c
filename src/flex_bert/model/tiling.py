"""A larger FlexBERT initialised from a smaller one's weights: upstream's Phi-style weight tiling.

Upstream ModernBERT-large started from ModernBERT-base this way (``init_from_checkpoint``). Each parameter of
the new model is filled from the same parameter of the smaller one, per dimension:

- ``tile_weights_from_middle``: the small tensor sits in the middle and repeats outwards; index ``i`` of a
  dimension of new size ``N`` (old ``n``) reads old index ``(i - (N - n) // 2) mod n``;
- ``tile_weights_from_edge``: the small tensor repeats from index 0: old index ``i mod n``;
- ``center_weights``: the small tensor in the middle, the new model's own initialisation around it.

Fused matrices are tiled part by part: ``Wqkv`` as Q, K and V, the GLU's ``Wi`` as its input and gate halves.
New layer ``i`` of ``L`` reads old layer ``round(i * l / L)`` of ``l`` (Gopher's layer scaling; Python's round,
as upstream, kept inside the old layers). As upstream, ``final_norm`` keeps its initialisation, the decoder
weight stays tied to the (tiled) token embedding, and a layer without ``attn_norm`` in the small model (layer 0)
leaves the new one's as initialised. The vocabulary must be the same size.
"""

from __future__ import annotations

import re

import torch

TILE_MODES = ("tile_weights_from_middle", "tile_weights_from_edge", "center_weights")
_LAYER = re.compile(r"^bert\.encoder\.layers\.(\d+)\.(.+)$")
_PARTS = {"attn.Wqkv": 3, "mlp.Wi": 2}  # fused matrices: tiled part by part along dim 0


def tile(small: torch.Tensor, init: torch.Tensor, mode: str) -> torch.Tensor:
    """``small`` tiled to the shape of ``init`` (1-D or 2-D; no dimension may shrink)."""
    if small.dim() != init.dim() or any(s > n for s, n in zip(small.shape, init.shape)):
        raise ValueError(f"cannot tile a {tuple(small.shape)} tensor into {tuple(init.shape)}")
    out = small
    if mode == "center_weights":
        out = init.clone()
        out[tuple(slice((n - s) // 2, (n - s) // 2 + s) for s, n in zip(small.shape, init.shape))] = small
        return out
    for dim, (s, n) in enumerate(zip(small.shape, init.shape)):
        offset = (n - s) // 2 if mode == "tile_weights_from_middle" else 0
        index = (torch.arange(n, device=small.device) - offset) % s
        out = out.index_select(dim, index)
    return out.to(init.dtype).clone()


def _tile_param(key: str, small: torch.Tensor, init: torch.Tensor, mode: str) -> torch.Tensor:
    parts = next((k for name, k in _PARTS.items() if f".{name}." in f".{key}"), 1)
    if parts == 1:
        return tile(small, init, mode)
    pieces = zip(small.chunk(parts, dim=0), init.chunk(parts, dim=0))
    return torch.cat([tile(s, i, mode) for s, i in pieces], dim=0)


def layer_map(small_layers: int, new_layers: int) -> list[int]:
    return [min(round(i * small_layers / new_layers), small_layers - 1) for i in range(new_layers)]


def _num_layers(state: dict) -> int:
    return 1 + max(int(m.group(1)) for key in state if (m := _LAYER.match(key)))


def tile_state_dict(small: dict, new: dict, mode: str = TILE_MODES[0]) -> dict:
    """The new model's state dict with every parameter tiled from ``small`` (both FlexBertForMaskedLM keys)."""
    if mode not in TILE_MODES:
        raise ValueError(f"init_from_checkpoint.mode {mode!r} is not one of {', '.join(TILE_MODES)}")
    vocab = "bert.embeddings.tok_embeddings.weight"
    if small[vocab].shape[0] != new[vocab].shape[0]:
        raise ValueError(
            f"init_from_checkpoint: the checkpoint's vocabulary ({small[vocab].shape[0]}) differs from "
            f"model_config.vocab_size ({new[vocab].shape[0]}); tiling keeps the vocabulary"
        )
    mapping = layer_map(_num_layers(small), _num_layers(new))
    out = {}
    for key, init in new.items():
        match = _LAYER.match(key)
        source = f"bert.encoder.layers.{mapping[int(match.group(1))]}.{match.group(2)}" if match else key
        if key in ("bert.final_norm.weight", "decoder.weight") or source not in small:
            out[key] = (
                init  # as upstream: initialised (final_norm), tied (decoder), absent in the small model
            )
        else:
            out[key] = _tile_param(key, small[source], init, mode)
    if "decoder.weight" in out:
        out["decoder.weight"] = out[vocab]
    return out
