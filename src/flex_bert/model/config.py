"""FlexBertConfig: the keys of the upstream `model_config` YAML block that change the computation, typed and
validated; upstream's keys that name the one computation this implementation has are `PINNED`, accepted at
that value only.

Defaults are ModernBERT-base, except `local_attn_rotary_emb_base`, whose default is upstream's -1 ("use
`rotary_emb_base`"): a YAML that omits it trains its local layers as upstream would (the presets `base()` and
`large()` state the released checkpoints' 10000). `from_dict` is the door for YAML: it rejects unknown keys
(with a close-match suggestion), coerces YAML's stringly numbers (`eps: 1e-5` is a *string* to a YAML 1.1
parser), and refuses values that would change the computation in a way this implementation does not
reproduce. Upstream's keys that change nothing here, or have another name here, are the upstream-YAML
adapter's business (`flex_bert.train.upstream_model`), which builds this config.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from flex_bert.kernels import BACKENDS  # attention backends by name: a typo fails at config load

# ModernBERT's context length: the default training length (max_seq_len) and max_position_embeddings.
CONTEXT_LENGTH = 8192

# the opt-in FP8 products' switches (fields below)
FP8_SWITCHES = ("fp8_mlp", "fp8_qkv")


# key -> allowed values, for fields where upstream has several options and we implement a subset.
_ALLOWED: dict[str, Collection] = {
    "init_method": ("full_megatron", "default"),
    "hidden_act": ("gelu",),  # exported to Hugging Face (hf_config.py)
    "head_pred_act": ("gelu",),
    "attention_backend": BACKENDS,  # the table itself: its names when validation runs
    "attention_probs_dropout_prob": (0.0,),  # varlen/flash kernels here run without attention dropout
    "decoder_bias": (True,),
}

# Upstream's keys that name the one computation this implementation has: accepted at these values (a YAML, a
# checkpoint's stored config), any other value refused; they are not fields, since nothing here reads them.
PINNED: dict[str, Collection] = {
    "attention_layer": ("rope",),
    "bert_layer": ("prenorm",),
    "mlp_layer": ("glu",),
    "normalization": ("layernorm",),
    "padding": ("unpadded",),
    "embedding_layer": ("sans_pos",),
    "loss_function": ("cross_entropy", "fa_cross_entropy"),  # same math: mean CE, ignore_index -100
    "activation_function": ("gelu",),
    "rotary_emb_interleaved": (False,),
    "rotary_emb_scale_base": (None,),
    "embed_norm": (True,),
    "final_norm": (True,),
    "head_pred_norm": (True,),
    "init_small_embedding": (False,),  # upstream's RWKV small init of the embeddings: not implemented
    "initial_attention_layer": (None,),  # other layer types for the first layers: not implemented
    "initial_bert_layer": (None,),
    "initial_mlp_layer": (None,),
}


def check_allowed(key: str, value: Any, allowed: Collection) -> None:
    """One line naming the key, its value and the values this implementation computes."""
    if value not in allowed:
        raise ValueError(f"model_config {key}={value!r} is not supported; allowed: {list(allowed)}")


def drop_pinned(d: Mapping[str, Any]) -> dict[str, Any]:
    """``d`` without its pinned keys, each checked against its accepted values."""
    for key in PINNED.keys() & d.keys():
        check_allowed(key, d[key], PINNED[key])
    return {k: v for k, v in d.items() if k not in PINNED}


@dataclass
class FlexBertConfig:
    # --- keys of upstream's model_config (defaults: ModernBERT-base, as in the BioClinical YAML) ---
    vocab_size: int = 50368
    init_method: str = "full_megatron"
    num_hidden_layers: int = 22
    hidden_size: int = 768
    intermediate_size: int = 1152
    num_attention_heads: int = 12
    attention_probs_dropout_prob: float = 0.0
    attn_out_bias: bool = False
    attn_out_dropout_prob: float = 0.1
    attn_qkv_bias: bool = False
    embed_dropout_prob: float = 0.0
    skip_first_prenorm: bool = True
    loss_kwargs: dict[str, Any] = field(default_factory=lambda: {"reduction": "mean"})
    mlp_dropout_prob: float = 0.0
    mlp_in_bias: bool = False
    mlp_out_bias: bool = False
    norm_kwargs: dict[str, Any] = field(default_factory=lambda: {"eps": 1e-5, "bias": False})
    hidden_act: str = "gelu"
    head_pred_act: str = "gelu"
    rotary_emb_dim: int | None = None
    rotary_emb_base: float = 160000.0
    local_attn_rotary_emb_base: float | None = -1.0  # -1 or None: use rotary_emb_base (upstream's default)
    local_attn_rotary_emb_dim: int | None = None
    # Upstream pads the embedding to the tokenizer. Here vocab_size is explicit (50368 already holds ModernBERT's
    # tokenizer) and a checkpoint of another vocabulary size is refused, so nothing is ever resized.
    allow_embedding_resizing: bool = True
    sliding_window: int | None = 128  # total local window (64 each side + self); -1 or None: all global
    global_attn_every_n_layers: int = 3  # layer i is global iff i % n == 0; -1: all global
    unpad_embeddings: bool = True  # we always unpad before the embedding; same math either way
    compile_model: bool = True  # read by the training code (train/compilation.py)
    masked_prediction: bool = True
    # --- upstream keys outside the seed YAML ---
    head_pred_bias: bool = False
    decoder_bias: bool = True
    init_std: float = 0.02
    init_cutoff_factor: float = 2.0
    # --- this implementation ---
    attention_backend: str = "auto"
    # FlexBERT's Triton kernels on CUDA (kernels/ops.py): residual add + dropout + LayerNorm, the GELU gate,
    # rotary of QKV, the MLM loss. false: the PyTorch composition (the same computation, another dropout mask).
    # CPU always runs the composition (kernels/policy.py). (The band attention kernel is a backend.)
    fused_kernels: bool = True
    # FP8 (e4m3, scaled per row; kernels/fp8.py) for some matrix products, opt-in; CUDA needs compute capability
    # 9.0+ (Hopper). fp8_mlp: three of the MLP block's six, Wi's and Wo's forward and Wi's input gradient
    # (kernels/fp8_mlp.py). fp8_qkv: the attention's QKV projection forward (kernels/fused_qkv.py).
    fp8_mlp: bool = False
    fp8_qkv: bool = False
    max_position_embeddings: int = (
        CONTEXT_LENGTH  # exported to Hugging Face; rotary itself has no length limit
    )
    gradient_checkpointing: bool = False  # applied by the training code (train/compilation.py)
    pad_token_id: int = 50283
    cls_token_id: int = 50281
    sep_token_id: int = 50282
    mask_token_id: int = 50284

    def __post_init__(self) -> None:
        self._coerce_types()
        self._validate()

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FlexBertConfig:
        """A config from its own keys (``to_dict``, a checkpoint's stored config) and the ``PINNED`` keys at
        their accepted values; an unknown key is an error with a close match. Upstream's other YAML keys go
        through ``flex_bert.train.upstream_model``."""
        d = drop_pinned(d)
        names = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in names:
                close = difflib.get_close_matches(key, [*names, *PINNED], n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"unknown model_config key {key!r}{hint}")
        return cls(**d)

    @classmethod
    def base(cls, **overrides: Any) -> FlexBertConfig:
        """ModernBERT-base: 22 layers, hidden 768, 149,655,232 parameters, local layers' rotary base 10000."""
        return cls.from_dict({"local_attn_rotary_emb_base": 10000.0, **overrides})

    @classmethod
    def large(cls, **overrides: Any) -> FlexBertConfig:
        """ModernBERT-large: 28 layers, hidden 1024, 395,881,664 parameters, local layers' rotary base 10000."""
        d = dict(num_hidden_layers=28, hidden_size=1024, intermediate_size=2624, num_attention_heads=16)
        return cls.base(**{**d, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ------------------------------------------------------------------ derived values
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def norm_eps(self) -> float:
        return float(self.norm_kwargs.get("eps", 1e-5))

    @property
    def norm_bias(self) -> bool:
        return bool(self.norm_kwargs.get("bias", False))

    @property
    def local_rope_theta(self) -> float:
        """Rotary base of local layers: `local_attn_rotary_emb_base`, or `rotary_emb_base` where unset."""
        base = self.local_attn_rotary_emb_base
        return float(self.rotary_emb_base if base is None or base == -1 else base)

    def is_local_layer(self, layer_id: int) -> bool:
        """Sliding-window layer? Global layers are those with `layer_id % global_attn_every_n_layers == 0`."""
        n = self.global_attn_every_n_layers
        return self.sliding_window not in (None, -1) and n > 0 and layer_id % n != 0

    # ------------------------------------------------------------------ checks
    def _coerce_types(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, hint = getattr(self, f.name), hints[f.name]
            union = typing.get_origin(hint) in (typing.Union, types.UnionType)
            allowed = typing.get_args(hint) if union else (hint,)
            if value is None and type(None) in allowed:
                continue
            base = [typing.get_origin(a) or a for a in allowed if a is not type(None)][0]
            if base is float and isinstance(value, (int, str)) and not isinstance(value, bool):
                try:
                    setattr(self, f.name, float(value))
                    continue
                except ValueError:
                    pass
            if base is dict and isinstance(value, Mapping):
                setattr(self, f.name, dict(value))
                continue
            if not isinstance(value, base) or (base is int and isinstance(value, bool)):
                raise ValueError(f"model_config key {f.name!r} must be {hint}, got {value!r}")
        if isinstance(self.norm_kwargs.get("eps"), str):
            self.norm_kwargs = {**self.norm_kwargs, "eps": float(self.norm_kwargs["eps"])}

    def _validate(self) -> None:
        for key, allowed in _ALLOWED.items():
            check_allowed(key, getattr(self, key), allowed)
        unknown_norm = set(self.norm_kwargs) - {"eps", "bias"}
        if unknown_norm:
            raise ValueError(
                f"norm_kwargs {sorted(unknown_norm)} not supported; allowed keys: ['eps', 'bias']"
            )
        loss = dict(self.loss_kwargs)
        if loss.pop("reduction", "mean") != "mean" or any(loss.pop(k, False) for k in ("return_z_loss",)):
            raise ValueError("loss_kwargs: only reduction='mean' (no z-loss) is supported")
        loss.pop("inplace_backward", None)
        loss.pop("lse_square_scale", None)
        if loss:
            raise ValueError(f"loss_kwargs {sorted(loss)} not supported; allowed keys: ['reduction']")
        self._validate_shapes()

    def _validate_shapes(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(
                f"head dim hidden_size/num_attention_heads = {self.head_dim} must be even (rotary)"
            )
        for key in ("rotary_emb_dim", "local_attn_rotary_emb_dim"):
            if getattr(self, key) not in (None, self.head_dim):
                raise ValueError(
                    f"model_config {key}={getattr(self, key)} is not supported; allowed: [None, {self.head_dim}] "
                    "(rotary over the full head dim)"
                )
        sw = self.sliding_window
        if sw not in (None, -1) and (sw <= 0 or sw % 2):
            raise ValueError(f"sliding_window={sw} must be a positive even number (or -1 to disable)")
        n = self.global_attn_every_n_layers
        if n == 0 or n < -1:
            raise ValueError(f"global_attn_every_n_layers={n} must be positive (or -1: all layers global)")
        for key in ("attn_out_dropout_prob", "embed_dropout_prob", "mlp_dropout_prob"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"model_config {key}={getattr(self, key)} must be in [0, 1)")
        for key in ("pad_token_id", "cls_token_id", "sep_token_id", "mask_token_id"):
            if not 0 <= getattr(self, key) < self.vocab_size:
                raise ValueError(f"{key}={getattr(self, key)} must be < vocab_size={self.vocab_size}")
        if min(self.vocab_size, self.num_hidden_layers, self.intermediate_size) <= 0:
            raise ValueError("vocab_size, num_hidden_layers and intermediate_size must be positive")
        self._validate_fp8()

    def _validate_fp8(self) -> None:
        """What the FP8 products compute: no biases there (nor MLP dropout), widths that FP8 products take."""
        if self.fp8_qkv and (self.attn_qkv_bias or self.hidden_size % 16):
            raise ValueError(
                f"fp8_qkv needs attn_qkv_bias false ({self.attn_qkv_bias}) and hidden_size ({self.hidden_size}) "
                "divisible by 16 (FP8 matrix products)"
            )
        if not self.fp8_mlp:
            return
        unsupported = {k: getattr(self, k) for k in ("mlp_in_bias", "mlp_out_bias", "mlp_dropout_prob")}
        if any(unsupported.values()):
            raise ValueError(
                f"fp8_mlp needs mlp_in_bias, mlp_out_bias false and mlp_dropout_prob 0: {unsupported}"
            )
        if self.hidden_size % 16 or self.intermediate_size % 16:
            raise ValueError(
                f"fp8_mlp needs hidden_size ({self.hidden_size}) and intermediate_size ({self.intermediate_size}) "
                "divisible by 16 (FP8 matrix products)"
            )
