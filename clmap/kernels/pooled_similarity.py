"""Pooled embedding similarity: varlen span mean-pooling of ``hidden[N, H]`` and cosine similarities.

Used by L_map = 1 - cos(u_x, u_y) in training (differentiable w.r.t. ``hidden``) and by LAC / bitext
retrieval in evaluation (under ``no_grad``). See docs/design.md, "Kernels".

Spans are given as ``starts``/``ends`` (int64 row indices into ``hidden``, end exclusive, end > start);
there is no padding. Pooling accumulates in fp32 and every output is float32 (float64 when ``hidden``
is float64, which only the torch and reference paths accept: that is how tests build their oracle).
Normalisation is ``u / max(|u|, eps)`` (``torch.nn.functional.normalize``), so cos = û_a · û_b.

This file reads top to bottom: checks, the readable reference, the torch path, the private autograd
Functions of the Triton path, the public functions. Three implementations, picked by
:func:`clmap.kernels.dispatch.choose_backend`:

- ``triton``: fused kernels, no host sync, no concatenation of span lists. ``paired_cosine`` is one
  autograd Function: forward = one launch (pool both spans of each pair, normalise, cosine; plus a
  tiny finishing launch when H is split across programs), backward = two launches (a prefix-sum table
  of the per-span gradients over the sorted span start/end events, then one kernel writing every row
  of grad_hidden [N, H] once, in hidden's dtype). ``pool_spans``/``cosine_matrix`` use the pool +
  normalise Function (backward: one more small launch for the per-span gradient). Overlapping spans
  are exact and the backward is deterministic (no atomics). The kernels are in
  ``pooled_similarity_forward_triton`` and ``pooled_similarity_backward_triton``.
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
from torch import Tensor

from clmap.kernels.dispatch import choose_backend


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
    hidden_a: Tensor,
    a_starts: Tensor,
    a_ends: Tensor,
    hidden_b: Tensor,
    b_starts: Tensor,
    b_ends: Tensor,
    *,
    eps: float = 1e-8,
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
# Triton path: autograd Functions around the raw kernels
# ----------------------------------------------------------------------------------------------------


def _needs_grad(hidden: Tensor) -> bool:
    return torch.is_grad_enabled() and hidden.requires_grad


class _PairedCosine(torch.autograd.Function):
    """(hidden, a_starts, a_ends, b_starts, b_ends, eps, need_grad) -> cos [P] fp32, all fused.

    Forward: one launch pools both spans of each pair, normalises and forms the cosine (a second tiny
    launch when H is split across programs); with ``need_grad`` it also sorts the span events. Backward:
    one launch builds the prefix table of the per-span gradients (formed on the fly from the saved
    pooled vectors, norms and cosines), one writes grad_hidden [N, H] once.
    """

    @staticmethod
    def forward(
        ctx,
        hidden: Tensor,
        a_starts: Tensor,
        a_ends: Tensor,
        b_starts: Tensor,
        b_ends: Tensor,
        eps: float,
        need_grad: bool,
    ) -> Tensor:
        from clmap.kernels.pooled_similarity_forward_triton import paired_forward
        from clmap.kernels.pooled_similarity_spans import make_spans

        spans = make_spans(a_starts, a_ends, b_starts, b_ends)
        cos, pooled, norm, events = paired_forward(hidden, spans, eps, rank=need_grad)
        if need_grad:
            ctx.save_for_backward(pooled, norm, cos, *(events or ()), *spans[:4])
            ctx.has_events = events is not None
            ctx.n_a, ctx.n_spans = spans.n_a, spans.n_spans
            ctx.eps, ctx.num_rows, ctx.hidden_dtype = eps, hidden.shape[0], hidden.dtype
        return cos

    @staticmethod
    def backward(ctx, grad_cos: Tensor):
        from clmap.kernels.pooled_similarity_backward_triton import paired_backward
        from clmap.kernels.pooled_similarity_spans import Spans

        saved = ctx.saved_tensors
        pooled, norm, cos = saved[:3]
        events = saved[3:5] if ctx.has_events else None
        spans = Spans(*saved[-4:], ctx.n_a, ctx.n_spans)
        grad_hidden = paired_backward(
            grad_cos, pooled, norm, cos, spans, events, ctx.num_rows, ctx.eps, ctx.hidden_dtype
        )
        return grad_hidden, None, None, None, None, None, None


class _PoolNormalize(torch.autograd.Function):
    """(hidden, a_starts, a_ends, b_starts|None, b_ends|None, eps, need_grad)
    -> (pooled [S,H] fp32, unit_a [n_a,H] fp32, unit_b [S-n_a,H] fp32); backward through all three.

    S spans: the a-list, then the b-list if given (one launch for both). ``unit_a``/``unit_b`` are views
    of one buffer, so no slicing (and no slice backward) is needed by the callers.
    """

    @staticmethod
    def forward(
        ctx,
        hidden: Tensor,
        a_starts: Tensor,
        a_ends: Tensor,
        b_starts: Tensor | None,
        b_ends: Tensor | None,
        eps: float,
        need_grad: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        from clmap.kernels.pooled_similarity_forward_triton import pool_forward
        from clmap.kernels.pooled_similarity_spans import make_spans

        spans = make_spans(a_starts, a_ends, b_starts, b_ends)
        pooled, unit, norm, events = pool_forward(hidden, spans, eps, rank=need_grad)
        if need_grad:
            ctx.save_for_backward(unit, norm, *(events or ()), *spans[:4])
            ctx.has_events = events is not None
            ctx.n_a, ctx.n_spans = spans.n_a, spans.n_spans
            ctx.eps, ctx.num_rows, ctx.hidden_dtype = eps, hidden.shape[0], hidden.dtype
        ctx.set_materialize_grads(False)
        return pooled, unit[: spans.n_a], unit[spans.n_a :]

    @staticmethod
    def backward(ctx, grad_pooled: Tensor | None, grad_unit_a: Tensor | None, grad_unit_b: Tensor | None):
        from clmap.kernels.pooled_similarity_backward_triton import pool_backward
        from clmap.kernels.pooled_similarity_spans import Spans

        saved = ctx.saved_tensors
        unit, norm = saved[:2]
        events = saved[2:4] if ctx.has_events else None
        spans = Spans(*saved[-4:], ctx.n_a, ctx.n_spans)
        grad_hidden = pool_backward(
            grad_pooled,
            grad_unit_a,
            grad_unit_b,
            unit,
            norm,
            spans,
            events,
            ctx.num_rows,
            ctx.eps,
            ctx.hidden_dtype,
        )
        return grad_hidden, None, None, None, None, None, None


def _check_triton_dtype(hidden: Tensor) -> None:
    if hidden.dtype == torch.float64:
        raise ValueError("the Triton backend takes fp32/bf16/fp16 hidden states, not float64")


def _pool_normalize(
    hidden: Tensor,
    starts: Tensor,
    ends: Tensor,
    eps: float,
    backend: str,
    b_starts: Tensor | None = None,
    b_ends: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(pooled [S, H], unit vectors of the a-spans, unit vectors of the b-spans or None) by ``backend``."""
    if backend == "triton":
        _check_triton_dtype(hidden)
        pooled, unit_a, unit_b = _PoolNormalize.apply(
            hidden, starts, ends, b_starts, b_ends, eps, _needs_grad(hidden)
        )
        return pooled, unit_a, (unit_b if b_starts is not None else None)
    if b_starts is not None:
        starts = torch.cat([starts.long(), b_starts.long()])
        ends = torch.cat([ends.long(), b_ends.long()])
    pooled = (_pool_spans_torch if backend == "torch" else pool_spans_reference)(hidden, starts, ends)
    unit = F.normalize(pooled, dim=-1, eps=eps)
    if b_starts is None:
        return pooled, unit, None
    n_a = pooled.shape[0] - b_starts.shape[0]
    return pooled, unit[:n_a], unit[n_a:]


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
    hidden: Tensor,
    a_starts: Tensor,
    a_ends: Tensor,
    b_starts: Tensor,
    b_ends: Tensor,
    *,
    eps: float = 1e-8,
    backend: str | None = None,
    validate: bool | None = None,
) -> Tensor:
    """[P] float32: cos(mean-pool of span a_p, mean-pool of span b_p); both spans index ``hidden``.

    Triton: one fused autograd Function (one forward launch, two backward launches; see the module doc).
    """
    _check_spans(hidden, a_starts, a_ends, validate, "a")
    _check_spans(hidden, b_starts, b_ends, validate, "b")
    _check_pairs(a_starts, b_starts)
    choice = choose_backend(hidden, backend)
    if choice == "reference":
        return paired_cosine_reference(hidden, a_starts, a_ends, b_starts, b_ends, eps=eps)
    if choice == "triton":
        _check_triton_dtype(hidden)
        return _PairedCosine.apply(hidden, a_starts, a_ends, b_starts, b_ends, eps, _needs_grad(hidden))
    _, u, v = _pool_normalize(hidden, a_starts, a_ends, eps, choice, b_starts, b_ends)
    return (u * v).sum(dim=-1)


def cosine_matrix(
    hidden_a: Tensor,
    a_starts: Tensor,
    a_ends: Tensor,
    hidden_b: Tensor,
    b_starts: Tensor,
    b_ends: Tensor,
    *,
    eps: float = 1e-8,
    backend: str | None = None,
    validate: bool | None = None,
) -> Tensor:
    """[A, B] float32: S_ij = cos(pool_a_i, pool_b_j). ``hidden_b`` may be ``hidden_a`` (one launch then)."""
    _check_spans(hidden_a, a_starts, a_ends, validate, "a")
    _check_spans(hidden_b, b_starts, b_ends, validate, "b")
    _check_matrix(hidden_a, hidden_b)
    choice = choose_backend(hidden_a, backend)
    if choice == "reference":
        return cosine_matrix_reference(hidden_a, a_starts, a_ends, hidden_b, b_starts, b_ends, eps=eps)
    if hidden_b is hidden_a:
        _, u, v = _pool_normalize(hidden_a, a_starts, a_ends, eps, choice, b_starts, b_ends)
    else:
        _, u, _ = _pool_normalize(hidden_a, a_starts, a_ends, eps, choice)
        _, v, _ = _pool_normalize(hidden_b, b_starts, b_ends, eps, choice)
    return u @ v.T
