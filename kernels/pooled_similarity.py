"""Pooled embedding similarity: varlen span mean-pooling of ``hidden[N, H]`` and cosine similarities.

Used by L_map = 1 - cos(u_x, u_y) in training (differentiable w.r.t. ``hidden``) and by LAC / bitext
retrieval in evaluation (under ``no_grad``). See DESIGN.md, "Kernels" item 2.

Spans are given as ``starts``/``ends`` (int64 row indices into ``hidden``, end exclusive, end > start);
there is no padding. Pooling accumulates in fp32 and every output is float32 (float64 when ``hidden``
is float64, which only the torch and reference paths accept: that is how tests build their oracle).
Normalisation is ``u / max(|u|, eps)`` (``torch.nn.functional.normalize``), so cos = û_a · û_b.

Three implementations, picked by :func:`clmap.kernels.dispatch.choose_backend`:

- ``triton``: fused pool + normalise kernel (one program per span x H-block). Backward: by default a
  sync-free row formulation (prefix sums over span start/end events, one gather writes [N, H] once);
  a Triton scatter kernel with fp32 atomics is the alternative (``BACKWARD``). Both handle overlapping
  spans; see pooled_similarity_triton.
- ``torch``: vectorised, one ``embedding_bag(mode="mean")`` over (row, span) pairs: memory O(N x H) at
  most whatever the spans overlap; autograd does the backward (overlaps are summed).
- ``reference``: a Python loop over spans, for readability and as the test oracle.

Validation: shapes and dtypes are always checked (free). Value checks (start < end, indices in range)
need the indices on the host; ``validate=None`` (default) does them for CPU tensors only, so CUDA calls
in the training hot path never synchronise. Pass ``validate=True`` to check CUDA inputs too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from clmap.kernels.dispatch import choose_backend
from torch import Tensor


def _acc_dtype(hidden: Tensor) -> torch.dtype:
    return torch.float64 if hidden.dtype == torch.float64 else torch.float32


def _check_spans(hidden: Tensor, starts: Tensor, ends: Tensor, validate: bool | None, name: str = "") -> None:
    """Raise ValueError on malformed spans. Value checks only when ``validate`` (default: off CUDA)."""
    label = f"{name} " if name else ""
    if hidden.dim() != 2:
        raise ValueError(f"{label}hidden must be 2-D [N, H], got shape {tuple(hidden.shape)}")
    if not hidden.is_floating_point():
        raise ValueError(f"{label}hidden must be floating point, got {hidden.dtype}")
    for what, t in (("starts", starts), ("ends", ends)):
        if t.dim() != 1:
            raise ValueError(f"{label}{what} must be 1-D, got shape {tuple(t.shape)}")
        if t.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{label}{what} must be int64 (or int32) row indices, got {t.dtype}")
        if t.device != hidden.device:
            raise ValueError(f"{label}{what} is on {t.device} but hidden is on {hidden.device}")
    if starts.shape[0] != ends.shape[0]:
        raise ValueError(f"{label}starts and ends differ in length: {starts.shape[0]} vs {ends.shape[0]}")
    if validate is None:
        validate = not hidden.is_cuda
    if not validate or starts.numel() == 0:
        return
    n = hidden.shape[0]
    bad = (starts >= ends).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        raise ValueError(
            f"{label}span {i} is empty or reversed: start {int(starts[i])} >= end {int(ends[i])}"
        )
    bad = ((starts < 0) | (ends > n)).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        raise ValueError(
            f"{label}span {i} = [{int(starts[i])}, {int(ends[i])}) is out of range for hidden with {n} rows"
        )


def _check_pairs(a_starts: Tensor, b_starts: Tensor) -> None:
    if a_starts.shape != b_starts.shape:
        raise ValueError(
            "paired spans need as many a-spans as b-spans: "
            f"{tuple(a_starts.shape)} vs {tuple(b_starts.shape)}"
        )


def _check_matrix(hidden_a: Tensor, hidden_b: Tensor) -> None:
    if hidden_a.shape[-1] != hidden_b.shape[-1]:
        raise ValueError(f"hidden sizes differ: {hidden_a.shape[-1]} vs {hidden_b.shape[-1]}")
    if hidden_a.device != hidden_b.device:
        raise ValueError(f"hidden_a is on {hidden_a.device} but hidden_b is on {hidden_b.device}")


# ----------------------------------------------------------------------------------------------------
# Reference: readable loops
# ----------------------------------------------------------------------------------------------------


def pool_spans_reference(hidden: Tensor, starts: Tensor, ends: Tensor) -> Tensor:
    """[S, H]: mean of hidden[starts[s]:ends[s]], one slice at a time."""
    _check_spans(hidden, starts, ends, True)
    acc = _acc_dtype(hidden)
    rows = [hidden[s:e].to(acc).mean(dim=0) for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
    if not rows:
        return hidden.new_zeros(0, hidden.shape[1], dtype=acc)
    return torch.stack(rows)


def paired_cosine_reference(
    hidden: Tensor, a_starts: Tensor, a_ends: Tensor, b_starts: Tensor, b_ends: Tensor, *, eps: float = 1e-8
) -> Tensor:
    """[P]: cos(pool(a_p), pool(b_p)) via F.normalize and a row-wise dot."""
    _check_pairs(a_starts, b_starts)
    u = F.normalize(pool_spans_reference(hidden, a_starts, a_ends), dim=-1, eps=eps)
    v = F.normalize(pool_spans_reference(hidden, b_starts, b_ends), dim=-1, eps=eps)
    return (u * v).sum(dim=-1)


def cosine_matrix_reference(
    hidden_a: Tensor, a_starts: Tensor, a_ends: Tensor, hidden_b: Tensor, b_starts: Tensor, b_ends: Tensor,
    *, eps: float = 1e-8,
) -> Tensor:
    """[A, B]: S_ij = cos(pool_a_i, pool_b_j)."""
    _check_matrix(hidden_a, hidden_b)
    u = F.normalize(pool_spans_reference(hidden_a, a_starts, a_ends), dim=-1, eps=eps)
    v = F.normalize(pool_spans_reference(hidden_b, b_starts, b_ends), dim=-1, eps=eps)
    return u @ v.T


# ----------------------------------------------------------------------------------------------------
# Torch path: vectorised index_add over (row, span) pairs, chunked
# ----------------------------------------------------------------------------------------------------


def _pool_spans_torch(hidden: Tensor, starts: Tensor, ends: Tensor) -> Tensor:
    """One ``embedding_bag(mode="mean")`` over the (row, span) pairs: a fused gather + segment mean.

    Overlapping spans just produce more pairs; embedding_bag's backward scatter-adds into the rows, so
    overlapping rows get the sum of their spans' gradients. No [pairs, H] tensor is materialised; the
    only O(N x H) temporary is the fp32 copy of low-precision ``hidden`` (fp32 accumulation). Needs the
    total span length on the host (a sync on CUDA; that is why CUDA uses the Triton path by default).
    """
    acc = _acc_dtype(hidden)
    n_spans, hidden_size = starts.shape[0], hidden.shape[1]
    starts, ends = starts.long(), ends.long()
    lengths = ends - starts
    total = int(lengths.sum()) if n_spans else 0
    if total == 0:
        return hidden.new_zeros(n_spans, hidden_size, dtype=acc)
    span_ids = torch.arange(n_spans, device=hidden.device)
    span_of_pair = torch.repeat_interleave(span_ids, lengths, output_size=total)
    first_pair = torch.cumsum(lengths, 0) - lengths
    row_of_pair = torch.arange(total, device=hidden.device) - (first_pair - starts)[span_of_pair]
    return F.embedding_bag(row_of_pair, hidden.to(acc), first_pair, mode="mean")


# ----------------------------------------------------------------------------------------------------
# Triton path: autograd Function around the raw kernels
# ----------------------------------------------------------------------------------------------------


#: Backward of the Triton path: "prefix" (row formulation, default: fastest measured, deterministic) or
#: "atomic" (the Triton scatter kernel with fp32 atomics). Both handle overlapping spans exactly.
BACKWARD = "prefix"


class PoolNormalizeFunction(torch.autograd.Function):
    """(hidden, starts, ends, eps) -> (pooled [S,H] fp32, unit [S,H] fp32); backward through both."""

    @staticmethod
    def forward(ctx, hidden: Tensor, starts: Tensor, ends: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        from clmap.kernels.pooled_similarity_triton import pool_normalize_forward

        starts, ends = starts.long().contiguous(), ends.long().contiguous()
        pooled, unit, norm = pool_normalize_forward(hidden, starts, ends, eps)
        ctx.save_for_backward(starts, ends, unit, norm)
        ctx.eps, ctx.num_rows, ctx.hidden_dtype = eps, hidden.shape[0], hidden.dtype
        ctx.set_materialize_grads(False)
        return pooled, unit

    @staticmethod
    def backward(ctx, grad_pooled: Tensor | None, grad_unit: Tensor | None):
        from clmap.kernels import pooled_similarity_triton as tk

        starts, ends, unit, norm = ctx.saved_tensors
        grad_hidden = None
        if ctx.needs_input_grad[0]:
            args = (grad_pooled, grad_unit, unit, norm, starts, ends, ctx.num_rows, ctx.eps)
            if BACKWARD == "prefix":
                grad_hidden = tk.pool_normalize_backward_prefix(*args, ctx.hidden_dtype)
            else:
                grad_hidden = tk.pool_normalize_backward(*args).to(ctx.hidden_dtype)
        return grad_hidden, None, None, None


def _pool_normalize(
    hidden: Tensor, starts: Tensor, ends: Tensor, eps: float, backend: str
) -> tuple[Tensor, Tensor]:
    """(pooled, unit) by the chosen backend."""
    if backend == "triton":
        if hidden.dtype == torch.float64:
            raise ValueError("the Triton backend takes fp32/bf16/fp16 hidden states, not float64")
        return PoolNormalizeFunction.apply(hidden, starts, ends, eps)
    pooled = (_pool_spans_torch if backend == "torch" else pool_spans_reference)(hidden, starts, ends)
    return pooled, F.normalize(pooled, dim=-1, eps=eps)


# ----------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------


def pool_spans(
    hidden: Tensor, starts: Tensor, ends: Tensor, *, backend: str | None = None, validate: bool | None = None
) -> Tensor:
    """[S, H] float32: mean of ``hidden[starts[s]:ends[s]]`` for each span (fp32 accumulation, varlen)."""
    _check_spans(hidden, starts, ends, validate)
    choice = choose_backend(hidden, backend)
    if choice == "reference":
        return pool_spans_reference(hidden, starts, ends)
    if choice == "torch":
        return _pool_spans_torch(hidden, starts, ends)
    return _pool_normalize(hidden, starts, ends, 1e-8, choice)[0]


def paired_cosine(
    hidden: Tensor, a_starts: Tensor, a_ends: Tensor, b_starts: Tensor, b_ends: Tensor,
    *, eps: float = 1e-8, backend: str | None = None, validate: bool | None = None,
) -> Tensor:
    """[P] float32: cos(mean-pool of span a_p, mean-pool of span b_p); both spans index ``hidden``.

    The a- and b-spans are pooled in one kernel launch (concatenated span lists).
    """
    _check_spans(hidden, a_starts, a_ends, validate, "a")
    _check_spans(hidden, b_starts, b_ends, validate, "b")
    _check_pairs(a_starts, b_starts)
    choice = choose_backend(hidden, backend)
    if choice == "reference":
        return paired_cosine_reference(hidden, a_starts, a_ends, b_starts, b_ends, eps=eps)
    n_pairs = a_starts.shape[0]
    starts = torch.cat([a_starts.long(), b_starts.long()])
    ends = torch.cat([a_ends.long(), b_ends.long()])
    _, unit = _pool_normalize(hidden, starts, ends, eps, choice)
    return (unit[:n_pairs] * unit[n_pairs:]).sum(dim=-1)


def cosine_matrix(
    hidden_a: Tensor, a_starts: Tensor, a_ends: Tensor, hidden_b: Tensor, b_starts: Tensor, b_ends: Tensor,
    *, eps: float = 1e-8, backend: str | None = None, validate: bool | None = None,
) -> Tensor:
    """[A, B] float32: S_ij = cos(pool_a_i, pool_b_j). ``hidden_b`` may be ``hidden_a`` (one launch then)."""
    _check_spans(hidden_a, a_starts, a_ends, validate, "a")
    _check_spans(hidden_b, b_starts, b_ends, validate, "b")
    _check_matrix(hidden_a, hidden_b)
    choice = choose_backend(hidden_a, backend)
    if choice == "reference":
        return cosine_matrix_reference(hidden_a, a_starts, a_ends, hidden_b, b_starts, b_ends, eps=eps)
    if hidden_b is hidden_a:
        n_a = a_starts.shape[0]
        starts = torch.cat([a_starts.long(), b_starts.long()])
        ends = torch.cat([a_ends.long(), b_ends.long()])
        _, unit = _pool_normalize(hidden_a, starts, ends, eps, choice)
        u, v = unit[:n_a], unit[n_a:]
    else:
        _, u = _pool_normalize(hidden_a, a_starts, a_ends, eps, choice)
        _, v = _pool_normalize(hidden_b, b_starts, b_ends, eps, choice)
    return u @ v.T
