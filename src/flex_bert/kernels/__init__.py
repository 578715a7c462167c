"""FlexBERT's kernels behind one door: the fused-or-plain operations the model calls (`add_norm`,
`add_norm_fp8`, `gelu_gate`, `qkv_attention`, `cross_entropy`; ops.py), the MLP block with FP8 products (`fp8_glu`; fp8_mlp.py), the
attention backends by name (`BACKENDS`, backends.py), the policy that decides where each kernel runs (policy.py) and the one way a kernel becomes an
autograd op (op.py).

Nothing here imports the model, train/ or composer.
"""

from .backends import BACKENDS, Backend, get_backend
from .fp8_mlp import fp8_glu
from .ops import add_norm, add_norm_fp8, cross_entropy, gelu_gate, qkv_attention

__all__ = [
    "BACKENDS",
    "Backend",
    "add_norm",
    "add_norm_fp8",
    "cross_entropy",
    "fp8_glu",
    "gelu_gate",
    "get_backend",
    "qkv_attention",
]
