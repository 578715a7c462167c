"""CUDA graphs over the encoder: a training step's encoder forward and backward replayed as two CUDA graphs
(`torch.cuda.make_graphed_callables`) instead of about 30 kernel launches per layer issued from Python.

A short step (fine-tuning: a few thousand tokens) is bound by those launches, not by the GPU; a graph replays
them all in one call. A long one (pre-training) leaves the GPU idle where the host falls behind the kernels it
launches (the start of the step, the forward's layers). A graph needs static shapes, so each batch of T tokens
in n documents is padded to a *bucket*: T_b = ceil(T / bucket_tokens) * bucket_tokens tokens (the pad tokens
form one padding document after the real ones) and D + 1 documents (empty ones after that), attended with
the static `max_seqlen`. D is `max_docs` (fine-tuning: the micro-batch), or with `min_docs` n's document
bucket (`doc_bucket`; pre-training: a row holds tens to thousands of documents, and a global layer's
attention launches work for each document slot). Documents do not see each other, so the real tokens'
outputs are those of the batch as given; the padding rows are cut off before the head, and heads, losses and
labels see the batch unchanged.

One graph pair per bucket, captured at its first use (after `WARMUP` eager passes, in which compilation and
autotuning happen). All buckets share one memory pool: every step replays one bucket's forward then its
backward, and what crosses a step (weights, gradients accumulated outside the graph, the static inputs) is
never pool memory, so a step of one bucket cannot overwrite what another needs.

Each graph pair keeps its own static output, output gradient and gradients of every encoder parameter (what
`make_graphed_callables` returns from a replay), so every bucket holds about the parameters' size in memory
(ModernBERT-base's encoder: 0.6 GB in fp32). Buckets are captured while these static buffers stay within
`memory_budget` bytes (default: GRAPH_MEMORY_FRACTION of the GPU's memory); a batch of a new bucket past it
runs eagerly. The activations are not counted: the shared pool holds them once, for the largest bucket
captured, as an eager step would; a batch that runs eagerly needs its own besides the pool.

Graphs are used only for training passes (module in train mode, gradients enabled, CUDA); evaluation,
batches outside the static bounds (more than `max_docs` documents, a document longer than `max_seqlen`) and
batches past the memory budget run eagerly, counted in `eager_batches` by reason.
"""

from __future__ import annotations

import inspect
import time
import warnings

import torch
from torch import nn

from flex_bert.model.mlm import call_layer

WARMUP = 3  # eager passes before a capture (make_graphed_callables' default)
PRETRAIN_MIN_DOCS = 64  # the smallest document bucket of pre-training's rows (pretraining_graphs)
DOC_BUCKET_BITS = 3  # significant bits a document bucket keeps (doc_bucket)
GRAPH_MEMORY_FRACTION = 0.25  # of the GPU's memory, for the graphs' static outputs and gradients
OUTSIDE_BOUNDS, OVER_BUDGET = "outside the static bounds", "past the graph memory budget"
# A DataLoader's pinning thread may call CUDA during a capture: only this thread's calls may not (where torch
# takes the mode; older torch captures in "global" mode, where such a thread must be quiet)
CAPTURE_MODE = (
    {"capture_error_mode": "thread_local"}
    if "capture_error_mode" in inspect.signature(torch.cuda.make_graphed_callables).parameters
    else {}
)


class _StaticEncoder(nn.Module):
    """The encoder's own forward at the static max_seqlen: the tensors-only callable a graph is made of."""

    def __init__(self, encoder: nn.Module, max_seqlen: int):
        super().__init__()
        self.encoder, self.max_seqlen = encoder, max_seqlen

    def forward(self, ids_T: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        return type(self.encoder).forward(self.encoder, ids_T, cu_seqlens, self.max_seqlen)


class GraphedEncoder:
    """Replaces an encoder's `forward` (`use_cuda_graphs`); same signature, `(ids_T, cu_seqlens, max_seqlen)`."""

    def __init__(
        self,
        encoder: nn.Module,
        *,
        max_docs: int,
        max_seqlen: int,
        bucket_tokens: int,
        min_docs: int | None = None,
        memory_budget: int | None = None,
    ):
        if not 1 <= bucket_tokens <= max_seqlen:
            raise ValueError(
                f"bucket_tokens ({bucket_tokens}) must be between 1 and max_seqlen ({max_seqlen}): the padding "
                "document is shorter than one bucket and must fit in max_seqlen"
            )
        if max_docs < 1:
            raise ValueError(f"max_docs must be at least 1, got {max_docs}")
        min_docs = max_docs if min_docs is None else min_docs
        if not 1 <= min_docs <= max_docs:
            raise ValueError(f"min_docs ({min_docs}) must be between 1 and max_docs ({max_docs})")
        if checkpointed(encoder):
            raise ValueError(
                "CUDA graphs and gradient_checkpointing do not go together: graphs pay off for short steps, "
                "checkpointing for memory; turn one off"
            )
        self.encoder, self.max_docs, self.min_docs, self.max_seqlen = encoder, max_docs, min_docs, max_seqlen
        self.bucket_tokens, self.pad_id = bucket_tokens, encoder.config.pad_token_id
        self.graphs: dict[tuple, nn.Module] = {}
        self.pool = None
        self.eager_batches = {OUTSIDE_BOUNDS: 0, OVER_BUDGET: 0}
        self.capture_seconds = 0.0
        self.memory_budget, self.static_bytes = memory_budget, 0
        self.grad_bytes = sum(p.numel() * p.element_size() for p in encoder.parameters() if p.requires_grad)

    def __call__(self, ids_T: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
        enc = self.encoder
        if enc.training and torch.is_grad_enabled() and ids_T.is_cuda:  # a training pass: graphed, or counted
            if cu_seqlens.shape[0] - 1 > self.max_docs or max_seqlen > self.max_seqlen:
                self.eager_batches[OUTSIDE_BOUNDS] += 1
            else:
                ids_b, cu_b, graphed = self.prepare(ids_T, cu_seqlens)
                if graphed is not None:
                    return graphed(ids_b, cu_b)[: ids_T.shape[0]]
                self.eager_batches[OVER_BUDGET] += 1
        return type(enc).forward(enc, ids_T, cu_seqlens, max_seqlen)

    def prepare(self, ids_T: torch.Tensor, cu_seqlens: torch.Tensor):
        """(padded ids, padded cu_seqlens, the bucket's graph), capturing the graph if the bucket is new; the
        graph is None where a new bucket's static memory would pass the budget. The warm-up passes of a capture
        compute gradients without storing them: the model and its `.grad` do not change."""
        docs = doc_bucket(cu_seqlens.shape[0] - 1, self.min_docs, self.max_docs)
        ids_b, cu_b = pad_to_bucket(ids_T, cu_seqlens, self.pad_id, self.bucket_tokens, docs)
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
        key = (ids_b.shape[0], docs, dtype)
        if key not in self.graphs:
            if self.memory_budget is None:
                total = torch.cuda.get_device_properties(ids_b.device).total_memory
                self.memory_budget = int(GRAPH_MEMORY_FRACTION * total)
            cost = self.graph_bytes(ids_b.shape[0], dtype)
            if self.static_bytes + cost > self.memory_budget:
                return ids_b, cu_b, None
            torch.cuda.synchronize()
            started = time.perf_counter()
            self.graphs[key] = self._capture(ids_b, cu_b, dtype)
            torch.cuda.synchronize()
            self.capture_seconds += time.perf_counter() - started
            self.static_bytes += cost
        return ids_b, cu_b, self.graphs[key]

    def graph_bytes(self, tokens: int, dtype: torch.dtype | None) -> int:
        """The static memory one bucket's graph pair keeps: every encoder parameter's gradient, the output and
        the output's gradient."""
        out_dtype = dtype or next(self.encoder.parameters()).dtype
        hidden = self.encoder.config.hidden_size
        return self.grad_bytes + 2 * tokens * hidden * out_dtype.itemsize

    def _capture(self, ids_b: torch.Tensor, cu_b: torch.Tensor, dtype: torch.dtype | None) -> nn.Module:
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        # make_graphed_callables refuses autocast's weight-cast cache (a cached cast would be captured)
        with torch.autocast(
            "cuda", dtype=dtype or torch.bfloat16, enabled=dtype is not None, cache_enabled=False
        ):
            return torch.cuda.make_graphed_callables(
                _StaticEncoder(self.encoder, self.max_seqlen),
                (ids_b, cu_b),
                num_warmup_iters=WARMUP,
                pool=self.pool,
                **CAPTURE_MODE,
            )

    def release(self) -> None:
        """Drop the graphs and the pool handle (their memory is freed once no autograd node of a replay is
        left), and give the encoder back its own forward."""
        self.graphs.clear()
        self.pool, self.static_bytes = None, 0
        if self.encoder.__dict__.get("forward") is self:
            del self.encoder.forward

    def buckets(self) -> list[tuple[int, int]]:
        """(tokens, documents) of each bucket captured, sorted."""
        return sorted({(tokens, docs) for tokens, docs, _ in self.graphs})

    def summary(self) -> str:
        sizes = self.buckets()
        eager = "; ".join(
            f"{n} training batch(es) {why} ran eagerly" for why, n in self.eager_batches.items()
        )
        shown, what = (
            (sizes, "(tokens, documents)")
            if self.min_docs < self.max_docs
            else ([t for t, _ in sizes], "tokens")
        )
        return (
            f"CUDA graphs: {len(sizes)} bucket(s) of {shown} {what} captured in {self.capture_seconds:.1f} s, "
            f"{self.static_bytes / 2**30:.1f} of {(self.memory_budget or 0) / 2**30:.1f} GiB budget; {eager}"
        )


def pretraining_graphs(encoder: nn.Module, row_len: int, max_seq_len: int) -> GraphedEncoder:
    """CUDA graphs for pre-training's packed batches of one row of `row_len` tokens (documents of at most
    max_seq_len; the packer's one row a micro-batch): one token bucket (a row is always full), document buckets
    (`doc_bucket`) from PRETRAIN_MIN_DOCS (or row_len, if shorter) up to one a token."""
    return use_cuda_graphs(
        encoder,
        max_docs=row_len,
        max_seqlen=max_seq_len,
        bucket_tokens=max_seq_len,
        min_docs=min(PRETRAIN_MIN_DOCS, row_len),
    )


def checkpointed(encoder: nn.Module) -> bool:
    """Whether the encoder's layers run under gradient checkpointing (which saves and restores RNG state: not
    capturable)."""
    return encoder.call_layer is not call_layer


def doc_bucket(n: int, min_docs: int, max_docs: int) -> int:
    """The static document count for a batch of n documents: n rounded up to DOC_BUCKET_BITS significant bits
    (never fewer slots than documents; with 3 bits at most a quarter more past 8: 129 -> 160, 161 -> 192),
    clamped to [min_docs, max_docs] (max_docs where they are equal)."""
    step = 1 << max((n - 1).bit_length() - DOC_BUCKET_BITS, 0)
    return min(max_docs, max(min_docs, -(-n // step) * step))


def pad_to_bucket(
    ids_T: torch.Tensor, cu_seqlens: torch.Tensor, pad_id: int, bucket_tokens: int, docs: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids_T, cu_seqlens) -> (ids padded to a multiple of bucket_tokens, cu_seqlens of length docs + 2):
    the pad tokens are one document after the real ones, and the documents after it are empty."""
    T, n = ids_T.shape[0], cu_seqlens.shape[0] - 1
    if n > docs:
        raise ValueError(f"{n} documents do not fit the static {docs}")
    T_b = max(1, -(-T // bucket_tokens)) * bucket_tokens
    ids_b = torch.cat([ids_T, ids_T.new_full((T_b - T,), pad_id)])
    cu_b = torch.cat([cu_seqlens, cu_seqlens.new_full((docs + 1 - n,), T_b)])
    return ids_b, cu_b


def use_cuda_graphs(
    encoder: nn.Module,
    *,
    max_docs: int,
    max_seqlen: int,
    bucket_tokens: int,
    min_docs: int | None = None,
    memory_budget: int | None = None,
) -> GraphedEncoder:
    """Make `encoder` (a FlexBertModel) run its training passes as CUDA graphs; returns the GraphedEncoder
    (its `summary()` says what was captured). Parameter names and checkpoints do not change."""
    graphed = GraphedEncoder(
        encoder,
        max_docs=max_docs,
        max_seqlen=max_seqlen,
        bucket_tokens=bucket_tokens,
        min_docs=min_docs,
        memory_budget=memory_budget,
    )
    # make_graphed_callables warms up and captures on a side stream, and the captured autograd graph keeps the
    # parameters' AccumulateGrad nodes of that stream alive; a replay's gradients arrive from the current
    # stream, so torch warns at the first backward. The engine orders the two streams (the side one is idle
    # by then): the gradients equal eager ones (tests/test_cuda_graphs.py), and the graphed step takes about
    # the GPU time of its kernels (docs/benchmarks/finetune_graphs_h100_2026-12-07.md).
    quiet = getattr(torch.autograd.graph, "set_warn_on_accumulate_grad_stream_mismatch", None)
    if quiet is not None:
        quiet(False)
    else:
        warnings.filterwarnings("ignore", message="The AccumulateGrad node's stream does not match")
    encoder.forward = graphed  # an instance attribute: nn.Module.__call__ finds it before the class's
    return graphed
