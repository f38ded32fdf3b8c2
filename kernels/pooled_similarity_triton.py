"""Raw Triton kernels for varlen segment mean-pooling + L2 normalisation, and their launchers.

Spans come as one or two index lists (``a`` and ``b``: span ``s < n_a`` is ``a[s]``, the others
``b[s - n_a]``), read by the kernels directly, so callers never concatenate them.

Forward: one program per (span or pair, H-block) walks its span's rows in [BLOCK_N, BLOCK_H] tiles and
accumulates in fp32, so the hidden states are read once and nothing of size [N, H] is written. When one
H-block covers the whole row the same program also normalises (and, for paired spans, forms the
cosine); otherwise it writes per-block partial sums and a second tiny kernel finishes, which keeps the
reduction deterministic (no atomics). When a backward will follow, the programs of H-block 0 also rank
the 2S span start/end events by position (a counting sort: O(S) compares per program) and scatter them
into sorted order; above MAX_KERNEL_RANK_EVENTS events ``torch.sort`` does it instead.

Backward (default, ``BACKWARD = "prefix"`` in pooled_similarity): grad[r] is the sum of w_s over the
spans covering row r, where w_s is the span's gradient w.r.t. the pooled *sum*. With the events sorted
by position, grad[r] = table[count(r)] where count(r) is the number of events at or before r and
table[k] the running sum of the first k events (+w_s at a start, -w_s at an end). Two launches:

1. ``_events_scan_kernel`` (one program per H-block): walks the sorted events in tiles, forms w_s on the
   fly (paired cosine: from the saved pooled vectors, norms and cosines; otherwise from a per-span
   gradient written by ``_span_grad_kernel``), prefix-sums them in fp64 and writes the [2S+1, H] table
   in the output dtype (fp64 -> fp32 -> dtype, to nearest even). fp64 sums of fp32 terms are exact
   unless they differ by more than ~2^29 in magnitude, so rows past a span's end get 0 and
   overlapping spans are summed without cancellation error.
2. ``_rows_kernel`` (one program per row tile x H-chunk): binary-searches each row's count in the
   sorted positions and copies its table row to grad_hidden: [N, H] is written once, in the output
   dtype, every row exactly once (uncovered rows get table[0] = 0): no zero-fill, no atomics, no
   host sync, deterministic.

The alternative backward (``pool_normalize_backward``, selected by ``BACKWARD = "atomic"`` in
pooled_similarity) scatters w/len to the span's rows with fp32 atomic adds into a zeroed [N, H] fp32
buffer: summation order of overlapping spans is then not deterministic.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from clmap.kernels.triton_common import round_to

BLOCK_N = 16  # rows per tile: several independent row loads in flight per program
MAX_FUSED_BLOCK_H = 256  # up to this H a single program pools and normalises a span in one pass
RANK_EVENTS_PER_THREAD = 1  # events compared per thread and step of the in-kernel ranking: wider steps
# would raise the pooling kernel's register count (it is the max over both code paths) and cut occupancy
#: Above this many events (2 per span) the in-kernel O(S^2) ranking gives way to torch.sort.
#: The ranking reads 8 bytes per event per pair (from L2): 32 MB at 4096 events, a few microseconds.
MAX_KERNEL_RANK_EVENTS = 4096


# ----------------------------------------------------------------------------------------------------
# Device helpers
# ----------------------------------------------------------------------------------------------------


@triton.jit
def _span_bounds(a_starts, a_ends, b_starts, b_ends, span, n_a, mask):
    """(start, end) as int64 of span indices ``span`` (scalar or vector): a-list below n_a, else b."""
    in_a = mask & (span < n_a)
    in_b = mask & (span >= n_a)
    ia = tl.where(span < n_a, span, 0)
    ib = tl.where(span < n_a, 0, span - n_a)
    start = tl.load(a_starts + ia, mask=in_a, other=0).to(tl.int64)
    start += tl.load(b_starts + ib, mask=in_b, other=0).to(tl.int64)
    end = tl.load(a_ends + ia, mask=in_a, other=0).to(tl.int64)
    end += tl.load(b_ends + ib, mask=in_b, other=0).to(tl.int64)
    return start, end


@triton.jit
def _event_pos(a_starts, a_ends, b_starts, b_ends, ev, n_a, n_spans, mask):
    """Row position of events ``ev``: event e < n_spans is span e's start, else span (e - n_spans)'s end."""
    is_end = ev >= n_spans
    span = tl.where(is_end, ev - n_spans, ev)
    ia = tl.where(span < n_a, span, 0)
    ib = tl.where(span < n_a, 0, span - n_a)
    in_a = mask & (span < n_a)
    in_b = mask & (span >= n_a)
    pos = tl.load(a_starts + ia, mask=in_a & (ev < n_spans), other=0).to(tl.int64)
    pos += tl.load(b_starts + ib, mask=in_b & (ev < n_spans), other=0).to(tl.int64)
    pos += tl.load(a_ends + ia, mask=in_a & is_end, other=0).to(tl.int64)
    pos += tl.load(b_ends + ib, mask=in_b & is_end, other=0).to(tl.int64)
    return pos


@triton.jit
def _rank_events(
    a_starts,
    a_ends,
    b_starts,
    b_ends,
    n_a,
    n_spans,
    my_ev,
    sorted_pos_ptr,
    sorted_ev_ptr,
    BLOCK_R: tl.constexpr,
):
    """Stable counting sort of the 2S events by position: scatter events ``my_ev`` to their ranks.

    rank(e) = #{e' : (pos(e'), e') < (pos(e), e)}, so ties keep event order, exactly like a stable sort.
    """
    n_ev = 2 * n_spans
    my_pos = _event_pos(a_starts, a_ends, b_starts, b_ends, my_ev, n_a, n_spans, my_ev >= 0)
    my_key = my_pos * n_ev + my_ev
    rank = my_key * 0
    for j0 in range(0, n_ev, BLOCK_R):
        j = j0 + tl.arange(0, BLOCK_R)
        valid = j < n_ev
        key = _event_pos(a_starts, a_ends, b_starts, b_ends, j, n_a, n_spans, valid) * n_ev + j
        less = (key[None, :] < my_key[:, None]) & valid[None, :]
        rank += tl.sum(less.to(tl.int64), axis=1)
    tl.store(sorted_pos_ptr + rank, my_pos)
    tl.store(sorted_ev_ptr + rank, my_ev)


@triton.jit
def _mean_rows(
    hidden_ptr, start, end, cols, col_mask, stride_row, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr
):
    """fp32 mean of hidden[start:end, cols]."""
    acc = tl.zeros([BLOCK_N, BLOCK_H], dtype=tl.float32)
    for r0 in range(start, end, BLOCK_N):
        rows = r0 + tl.arange(0, BLOCK_N)
        mask = (rows < end)[:, None] & col_mask[None, :]
        ptrs = hidden_ptr + rows.to(tl.int64)[:, None] * stride_row + cols[None, :]
        acc += tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    return tl.sum(acc, axis=0) / tl.maximum(end - start, 1).to(tl.float32)


# ----------------------------------------------------------------------------------------------------
# Forward kernels
# ----------------------------------------------------------------------------------------------------


@triton.jit
def _pool_fwd_kernel(
    hidden_ptr,
    a_starts,
    a_ends,
    b_starts,
    b_ends,
    pooled_ptr,
    unit_ptr,
    norm_ptr,
    sumsq_ptr,
    sorted_pos_ptr,
    sorted_ev_ptr,
    H,
    stride_row,
    n_a,
    n_spans,
    n_hblocks,
    eps,
    FUSE_NORM: tl.constexpr,
    WITH_RANK: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    s = tl.program_id(0)
    hb = tl.program_id(1)
    start, end = _span_bounds(a_starts, a_ends, b_starts, b_ends, s, n_a, s < n_spans)
    cols = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    col_mask = cols < H
    mean = _mean_rows(hidden_ptr, start, end, cols, col_mask, stride_row, BLOCK_N, BLOCK_H)
    out = s.to(tl.int64) * H + cols
    tl.store(pooled_ptr + out, mean, mask=col_mask)
    if FUSE_NORM:
        norm = tl.sqrt(tl.sum(mean * mean, axis=0))
        tl.store(unit_ptr + out, mean / tl.maximum(norm, eps), mask=col_mask)
        tl.store(norm_ptr + s, norm)
    else:
        tl.store(sumsq_ptr + s * n_hblocks + hb, tl.sum(mean * mean, axis=0))
    if WITH_RANK:
        if hb == 0:
            my_ev = s + tl.arange(0, 2) * n_spans
            _rank_events(
                a_starts,
                a_ends,
                b_starts,
                b_ends,
                n_a,
                n_spans,
                my_ev,
                sorted_pos_ptr,
                sorted_ev_ptr,
                BLOCK_R,
            )


@triton.jit
def _normalize_kernel(
    pooled_ptr,
    sumsq_ptr,
    unit_ptr,
    norm_ptr,
    H,
    n_hblocks,
    eps,
    BLOCK_H: tl.constexpr,
    BLOCK_HB: tl.constexpr,
):
    s = tl.program_id(0)
    hb = tl.program_id(1)
    parts = tl.arange(0, BLOCK_HB)
    sumsq = tl.load(sumsq_ptr + s * n_hblocks + parts, mask=parts < n_hblocks, other=0.0)
    norm = tl.sqrt(tl.sum(sumsq, axis=0))
    cols = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    col_mask = cols < H
    out = s.to(tl.int64) * H + cols
    u = tl.load(pooled_ptr + out, mask=col_mask, other=0.0)
    tl.store(unit_ptr + out, u / tl.maximum(norm, eps), mask=col_mask)
    if hb == 0:
        tl.store(norm_ptr + s, norm)


@triton.jit
def _paired_fwd_kernel(
    hidden_ptr,
    a_starts,
    a_ends,
    b_starts,
    b_ends,
    pooled_ptr,
    norm_ptr,
    cos_ptr,
    stats_ptr,
    sorted_pos_ptr,
    sorted_ev_ptr,
    H,
    stride_row,
    n_pairs,
    n_hblocks,
    eps,
    FUSE: tl.constexpr,
    WITH_RANK: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """Pair p: pool a[p] and b[p] (rows p and n_pairs + p of pooled), then norms and cosine (or partials)."""
    p = tl.program_id(0)
    hb = tl.program_id(1)
    start_a = tl.load(a_starts + p).to(tl.int64)
    end_a = tl.load(a_ends + p).to(tl.int64)
    start_b = tl.load(b_starts + p).to(tl.int64)
    end_b = tl.load(b_ends + p).to(tl.int64)
    cols = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    col_mask = cols < H
    mean_a = _mean_rows(hidden_ptr, start_a, end_a, cols, col_mask, stride_row, BLOCK_N, BLOCK_H)
    mean_b = _mean_rows(hidden_ptr, start_b, end_b, cols, col_mask, stride_row, BLOCK_N, BLOCK_H)
    tl.store(pooled_ptr + p.to(tl.int64) * H + cols, mean_a, mask=col_mask)
    tl.store(pooled_ptr + (p + n_pairs).to(tl.int64) * H + cols, mean_b, mask=col_mask)
    ss_a = tl.sum(mean_a * mean_a, axis=0)
    ss_b = tl.sum(mean_b * mean_b, axis=0)
    dot = tl.sum(mean_a * mean_b, axis=0)
    if FUSE:
        norm_a = tl.sqrt(ss_a)
        norm_b = tl.sqrt(ss_b)
        tl.store(norm_ptr + p, norm_a)
        tl.store(norm_ptr + n_pairs + p, norm_b)
        tl.store(cos_ptr + p, dot / (tl.maximum(norm_a, eps) * tl.maximum(norm_b, eps)))
    else:
        part = p * n_hblocks + hb
        tl.store(stats_ptr + part, ss_a)
        tl.store(stats_ptr + n_pairs * n_hblocks + part, ss_b)
        tl.store(stats_ptr + 2 * n_pairs * n_hblocks + part, dot)
    if WITH_RANK:
        if hb == 0:
            k = tl.arange(0, 4)
            my_ev = p + (k % 2) * n_pairs + (k // 2) * (2 * n_pairs)
            _rank_events(
                a_starts,
                a_ends,
                b_starts,
                b_ends,
                n_pairs,
                2 * n_pairs,
                my_ev,
                sorted_pos_ptr,
                sorted_ev_ptr,
                BLOCK_R,
            )


@triton.jit
def _paired_finalize_kernel(
    stats_ptr,
    norm_ptr,
    cos_ptr,
    n_pairs,
    n_hblocks,
    eps,
    BLOCK_P: tl.constexpr,
    BLOCK_HB: tl.constexpr,
):
    """Sum the per-H-block partials of _paired_fwd_kernel (fixed order): norms and cosines."""
    pairs = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    parts = tl.arange(0, BLOCK_HB)
    mask = (pairs < n_pairs)[:, None] & (parts < n_hblocks)[None, :]
    off = pairs[:, None] * n_hblocks + parts[None, :]
    stride = n_pairs * n_hblocks
    norm_a = tl.sqrt(tl.sum(tl.load(stats_ptr + off, mask=mask, other=0.0), axis=1))
    norm_b = tl.sqrt(tl.sum(tl.load(stats_ptr + stride + off, mask=mask, other=0.0), axis=1))
    dot = tl.sum(tl.load(stats_ptr + 2 * stride + off, mask=mask, other=0.0), axis=1)
    pm = pairs < n_pairs
    tl.store(norm_ptr + pairs, norm_a, mask=pm)
    tl.store(norm_ptr + n_pairs + pairs, norm_b, mask=pm)
    tl.store(cos_ptr + pairs, dot / (tl.maximum(norm_a, eps) * tl.maximum(norm_b, eps)), mask=pm)


# ----------------------------------------------------------------------------------------------------
# Backward kernels
# ----------------------------------------------------------------------------------------------------


@triton.jit
def _unit_grad(
    grad_ua_ptr,
    gua_stride0,
    gua_stride1,
    grad_ub_ptr,
    gub_stride0,
    gub_stride1,
    s,
    n_a,
    g_row,
    cols,
    cm,
    HAS_GRAD_UA: tl.constexpr,
    HAS_GRAD_UB: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """Gradient w.r.t. span s's unit vector: row g_row of grad_ua (s < n_a) or of grad_ub."""
    g = tl.zeros([BLOCK_H], dtype=tl.float32)
    span = cols * 0 + s  # as a vector: the interpreter cannot AND a vector mask with a scalar one
    if HAS_GRAD_UA:
        g += tl.load(
            grad_ua_ptr + g_row * gua_stride0 + cols * gua_stride1, mask=cm & (span < n_a), other=0.0
        )
    if HAS_GRAD_UB:
        g += tl.load(
            grad_ub_ptr + g_row * gub_stride0 + cols * gub_stride1, mask=cm & (span >= n_a), other=0.0
        )
    return g


@triton.jit
def _span_grad_kernel(
    grad_pooled_ptr,
    gp_stride0,
    gp_stride1,
    grad_ua_ptr,
    gua_stride0,
    gua_stride1,
    grad_ub_ptr,
    gub_stride0,
    gub_stride1,
    unit_ptr,
    norm_ptr,
    a_starts,
    a_ends,
    b_starts,
    b_ends,
    span_grad_ptr,
    H,
    n_a,
    n_spans,
    eps,
    HAS_GRAD_POOLED: tl.constexpr,
    HAS_GRAD_UA: tl.constexpr,
    HAS_GRAD_UB: tl.constexpr,
    HAS_GRAD_UNIT: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """Span s: gradient w.r.t. the pooled sum, (g_pooled + d(u/|u|)^T g_unit) / len, one [H] row.

    The unit gradient of span s comes from grad_ua (s < n_a) or grad_ub; either may be absent.
    """
    s = tl.program_id(0)
    start, end = _span_bounds(a_starts, a_ends, b_starts, b_ends, s, n_a, s < n_spans)
    inv_len = 1.0 / tl.maximum(end - start, 1).to(tl.float32)
    norm = tl.load(norm_ptr + s)
    denom = tl.maximum(norm, eps)
    row = s.to(tl.int64) * H
    g_row = tl.where(s < n_a, s, s - n_a).to(tl.int64)
    dot = 0.0
    if HAS_GRAD_UNIT:
        acc = tl.zeros([BLOCK_H], dtype=tl.float32)
        for h0 in range(0, H, BLOCK_H):
            cols = h0 + tl.arange(0, BLOCK_H)
            cm = cols < H
            g = _unit_grad(
                grad_ua_ptr,
                gua_stride0,
                gua_stride1,
                grad_ub_ptr,
                gub_stride0,
                gub_stride1,
                s,
                n_a,
                g_row,
                cols,
                cm,
                HAS_GRAD_UA,
                HAS_GRAD_UB,
                BLOCK_H,
            )
            acc += g * tl.load(unit_ptr + row + cols, mask=cm, other=0.0)
        dot = tl.sum(acc, axis=0)
    for h0 in range(0, H, BLOCK_H):
        cols = h0 + tl.arange(0, BLOCK_H)
        cm = cols < H
        w = tl.zeros([BLOCK_H], dtype=tl.float32)
        if HAS_GRAD_POOLED:
            w += tl.load(grad_pooled_ptr + s * gp_stride0 + cols * gp_stride1, mask=cm, other=0.0)
        if HAS_GRAD_UNIT:
            g = _unit_grad(
                grad_ua_ptr,
                gua_stride0,
                gua_stride1,
                grad_ub_ptr,
                gub_stride0,
                gub_stride1,
                s,
                n_a,
                g_row,
                cols,
                cm,
                HAS_GRAD_UA,
                HAS_GRAD_UB,
                BLOCK_H,
            )
            u_hat = tl.load(unit_ptr + row + cols, mask=cm, other=0.0)
            # below eps the forward divided by the constant eps, so there is no projection term
            w += tl.where(norm > eps, g - dot * u_hat, g) / denom
        tl.store(span_grad_ptr + row + cols, w * inv_len, mask=cm)


@triton.jit
def _events_scan_kernel(
    sorted_ev_ptr,
    a_starts,
    a_ends,
    b_starts,
    b_ends,
    span_grad_ptr,
    pooled_ptr,
    norm_ptr,
    cos_ptr,
    grad_cos_ptr,
    grad_cos_stride,
    table_ptr,
    H,
    n_a,
    n_spans,
    eps,
    PAIRED: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """table[k, cols] = sum of the first k sorted events (+w at a start, -w at an end), k = 0..2S.

    PAIRED: spans s and s + n_a are the two sides of pair s (n_a = number of pairs) and w_s, the
    gradient of cos_p w.r.t. span s's pooled sum, is formed here from the forward's saved pooled vectors
    u, norms and cosines: w_s = g_p / (max(|u_s|, eps) len_s) (u_o / max(|u_o|, eps) - c u_s / |u_s|),
    the last term only where |u_s| > eps. Otherwise w_s is read from span_grad (already / len).
    """
    hb = tl.program_id(0)
    cols = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    col_mask = cols < H
    n_ev = 2 * n_spans
    tl.store(table_ptr + cols, tl.zeros([BLOCK_H], dtype=table_ptr.dtype.element_ty), mask=col_mask)
    carry = tl.zeros([BLOCK_H], dtype=tl.float64)
    for e0 in range(0, n_ev, BLOCK_E):
        j = e0 + tl.arange(0, BLOCK_E)
        valid = j < n_ev
        ev = tl.load(sorted_ev_ptr + j, mask=valid, other=0)
        is_end = ev >= n_spans
        span = tl.where(is_end, ev - n_spans, ev)
        mask = valid[:, None] & col_mask[None, :]
        if PAIRED:
            in_a = span < n_a
            other = tl.where(in_a, span + n_a, span - n_a)
            pair = tl.where(in_a, span, span - n_a)
            start, end = _span_bounds(a_starts, a_ends, b_starts, b_ends, span, n_a, valid)
            length = tl.maximum(end - start, 1).to(tl.float32)
            n_self = tl.load(norm_ptr + span, mask=valid, other=1.0)
            n_other = tl.load(norm_ptr + other, mask=valid, other=1.0)
            c = tl.load(cos_ptr + pair, mask=valid, other=0.0)
            g = tl.load(grad_cos_ptr + pair.to(tl.int64) * grad_cos_stride, mask=valid, other=0.0)
            d_self = tl.maximum(n_self, eps)
            scale = g.to(tl.float32) / (d_self * length)
            proj = tl.where(n_self > eps, c / d_self, 0.0)
            inv_other = 1.0 / tl.maximum(n_other, eps)
            self_rows = span.to(tl.int64)[:, None] * H
            other_rows = other.to(tl.int64)[:, None] * H
            u_self = tl.load(pooled_ptr + self_rows + cols[None, :], mask=mask, other=0.0)
            u_other = tl.load(pooled_ptr + other_rows + cols[None, :], mask=mask, other=0.0)
            w = scale[:, None] * (u_other * inv_other[:, None] - proj[:, None] * u_self)
        else:
            w = tl.load(span_grad_ptr + span.to(tl.int64)[:, None] * H + cols[None, :], mask=mask, other=0.0)
        w = tl.where(is_end[:, None], -w, w).to(tl.float64)
        cum = tl.cumsum(w, axis=0) + carry[None, :]
        out = (1 + j).to(tl.int64)[:, None] * H + cols[None, :]
        tl.store(table_ptr + out, round_to(cum.to(tl.float32), table_ptr.dtype.element_ty), mask=mask)
        carry += tl.sum(w, axis=0)


@triton.jit
def _rows_kernel(
    sorted_pos_ptr,
    table_ptr,
    out_ptr,
    N,
    H,
    n_ev,
    stride_out,
    n_search,
    h_per_prog,
    BLOCK_R: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """out[r, cols] = table[#{events at or before r}, cols] for a tile of rows and a chunk of columns."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < N
    lo = tl.zeros([BLOCK_R], dtype=tl.int32)
    hi = lo + n_ev
    for _ in range(n_search):  # first k with sorted_pos[k] > r
        active = lo < hi
        mid = (lo + hi) // 2
        p = tl.load(sorted_pos_ptr + mid, mask=active, other=0)
        right = active & (p <= rows)
        lo = tl.where(right, mid + 1, lo)
        hi = tl.where(active & (p > rows), mid, hi)
    src = lo.to(tl.int64)[:, None] * H
    dst = rows.to(tl.int64)[:, None] * stride_out
    h0 = tl.program_id(1) * h_per_prog
    for dh in range(0, h_per_prog, BLOCK_H):
        cols = h0 + dh + tl.arange(0, BLOCK_H)
        mask = row_mask[:, None] & (cols < H)[None, :]
        v = tl.load(table_ptr + src + cols[None, :], mask=mask, other=0.0)
        tl.store(out_ptr + dst + cols[None, :], v, mask=mask)


@triton.jit
def _pool_bwd_kernel(
    grad_pooled_ptr,
    grad_unit_ptr,
    unit_ptr,
    dot_ptr,
    norm_ptr,
    starts_ptr,
    ends_ptr,
    grad_hidden_ptr,
    H,
    eps,
    HAS_GRAD_POOLED: tl.constexpr,
    HAS_GRAD_UNIT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    s = tl.program_id(0)
    hb = tl.program_id(1)
    start = tl.load(starts_ptr + s)
    end = tl.load(ends_ptr + s)
    cols = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    col_mask = cols < H
    off = s.to(tl.int64) * H + cols
    w = tl.zeros([BLOCK_H], dtype=tl.float32)
    if HAS_GRAD_POOLED:
        w += tl.load(grad_pooled_ptr + off, mask=col_mask, other=0.0)
    if HAS_GRAD_UNIT:
        g = tl.load(grad_unit_ptr + off, mask=col_mask, other=0.0)
        u_hat = tl.load(unit_ptr + off, mask=col_mask, other=0.0)
        dot = tl.load(dot_ptr + s)
        norm = tl.load(norm_ptr + s)
        # below eps the forward divided by the constant eps, so there is no projection term
        w += tl.where(norm > eps, g - dot * u_hat, g) / tl.maximum(norm, eps)
    w = w / (end - start).to(tl.float32)
    tile = tl.broadcast_to(w[None, :], [BLOCK_N, BLOCK_H])
    for r0 in range(start, end, BLOCK_N):
        rows = r0 + tl.arange(0, BLOCK_N)
        mask = (rows < end)[:, None] & col_mask[None, :]
        ptrs = grad_hidden_ptr + rows.to(tl.int64)[:, None] * H + cols[None, :]
        tl.atomic_add(ptrs, tile, mask=mask, sem="relaxed")


# ----------------------------------------------------------------------------------------------------
# Launch heuristics (module functions, so tests can force small blocks)
# ----------------------------------------------------------------------------------------------------


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def choose_block_h(num_spans: int, hidden_size: int, device: torch.device) -> int:
    """Whole row in one program when that still fills the GPU; otherwise narrower blocks for more programs."""
    full = triton.next_power_of_2(max(hidden_size, 1))
    if full <= MAX_FUSED_BLOCK_H and (num_spans >= 4 * _num_sms(device) or full <= 64):
        return full
    block = min(full, MAX_FUSED_BLOCK_H)
    while block > 64 and num_spans * triton.cdiv(hidden_size, block) < 4 * _num_sms(device):
        block //= 2
    return block


def choose_loop_block_h(hidden_size: int) -> int:
    """Columns per step of the per-span backward kernel, which loops over H."""
    return min(triton.next_power_of_2(max(hidden_size, 1)), 1024)


def choose_scan_blocks(n_events: int, hidden_size: int, device: torch.device) -> tuple[int, int]:
    """(BLOCK_E, BLOCK_H) of the event scan: one program per H-block walks all events, so narrow
    H-blocks give more programs; tiles of ~4K elements."""
    full = triton.next_power_of_2(max(hidden_size, 1))
    block_h = min(full, 64)
    while block_h > 16 and triton.cdiv(hidden_size, block_h) < _num_sms(device):
        block_h //= 2
    block_e = max(16, min(4096 // block_h, triton.next_power_of_2(max(n_events, 1))))
    return block_e, block_h


def choose_rows_blocks(num_rows: int, hidden_size: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_H, columns per program) of the row-writing kernel: enough programs for the GPU.

    16 x 256 tiles with 8 warps: 72 registers for sm_90 (32 x 256 needs over 200, cutting occupancy).
    """
    block_r = 16
    block_h = min(triton.next_power_of_2(max(hidden_size, 1)), 256)
    n_rblocks = triton.cdiv(max(num_rows, 1), block_r)
    max_chunks = triton.cdiv(hidden_size, block_h)
    n_chunks = max(1, min(max_chunks, triton.cdiv(8 * _num_sms(device), n_rblocks)))
    per_prog = triton.cdiv(triton.cdiv(hidden_size, n_chunks), block_h) * block_h
    return block_r, block_h, per_prog


# ----------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------


class Spans(NamedTuple):
    """One or two span lists: span s < n_a is (a_starts[s], a_ends[s]), span s >= n_a is b's s - n_a."""

    a_starts: torch.Tensor
    a_ends: torch.Tensor
    b_starts: torch.Tensor
    b_ends: torch.Tensor
    n_a: int
    n_spans: int


def make_spans(
    a_starts: torch.Tensor,
    a_ends: torch.Tensor,
    b_starts: torch.Tensor | None = None,
    b_ends: torch.Tensor | None = None,
) -> Spans:
    """Spans of the a-list, then of the b-list if given (int32/int64 indices; no copy when contiguous)."""
    a_starts, a_ends = a_starts.contiguous(), a_ends.contiguous()
    n_a = a_starts.shape[0]
    if b_starts is None:
        return Spans(a_starts, a_ends, a_starts, a_ends, n_a, n_a)
    b_starts, b_ends = b_starts.contiguous(), b_ends.contiguous()
    return Spans(a_starts, a_ends, b_starts, b_ends, n_a, n_a + b_starts.shape[0])


def _events_torch(spans: Spans) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted positions, event ids) by torch.sort: the many-span fallback of the in-kernel ranking."""
    starts, ends = [spans.a_starts], [spans.a_ends]
    if spans.n_spans > spans.n_a:
        starts.append(spans.b_starts)
        ends.append(spans.b_ends)
    pos = torch.cat([t.long() for t in starts + ends])
    return torch.sort(pos, stable=True)


def _event_buffers(spans: Spans, device: torch.device, rank: bool):
    """(kernel ranks?, sorted_pos, sorted_ev): buffers the forward kernel fills, or torch.sort's result."""
    n_ev = 2 * spans.n_spans
    if not rank or n_ev == 0:
        return False, None, None
    if n_ev > MAX_KERNEL_RANK_EVENTS:
        return False, *_events_torch(spans)
    sorted_pos = torch.empty(n_ev, device=device, dtype=torch.int64)
    sorted_ev = torch.empty(n_ev, device=device, dtype=torch.int32)
    return True, sorted_pos, sorted_ev


def pool_forward(
    hidden: torch.Tensor, spans: Spans, eps: float, *, rank: bool = False, block_h: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """Pool + normalise every span: (pooled [S,H] fp32, unit [S,H] fp32, norm [S] fp32, events).

    ``events`` (with ``rank``): (sorted event positions, event ids) for :func:`pool_backward_events`.
    """
    if hidden.stride(1) != 1:
        hidden = hidden.contiguous()
    n_spans, hidden_size = spans.n_spans, hidden.shape[1]
    dev = hidden.device
    pooled = torch.empty(n_spans, hidden_size, device=dev, dtype=torch.float32)
    unit = torch.empty_like(pooled)
    norm = torch.empty(n_spans, device=dev, dtype=torch.float32)
    if n_spans == 0 or hidden_size == 0:
        pooled.zero_()
        unit.zero_()
        norm.zero_()
        return pooled, unit, norm, (_events_torch(spans) if rank and n_spans else None)
    in_kernel, sorted_pos, sorted_ev = _event_buffers(spans, dev, rank)
    block_h = block_h or choose_block_h(n_spans, hidden_size, dev)
    n_hblocks = triton.cdiv(hidden_size, block_h)
    fuse = n_hblocks == 1
    sumsq = norm if fuse else torch.empty(n_spans, n_hblocks, device=dev, dtype=torch.float32)
    num_warps = 4 if block_h >= 128 else 2
    _pool_fwd_kernel[(n_spans, n_hblocks)](
        hidden,
        *spans[:4],
        pooled,
        unit,
        norm,
        sumsq,
        sorted_pos if in_kernel else norm,
        sorted_ev if in_kernel else norm,
        hidden_size,
        hidden.stride(0),
        spans.n_a,
        n_spans,
        n_hblocks,
        eps,
        FUSE_NORM=fuse,
        WITH_RANK=in_kernel,
        BLOCK_N=BLOCK_N,
        BLOCK_H=block_h,
        BLOCK_R=32 * num_warps * RANK_EVENTS_PER_THREAD,
        num_warps=num_warps,
    )
    if not fuse:
        _normalize_kernel[(n_spans, n_hblocks)](
            pooled,
            sumsq,
            unit,
            norm,
            hidden_size,
            n_hblocks,
            eps,
            BLOCK_H=block_h,
            BLOCK_HB=triton.next_power_of_2(n_hblocks),
            num_warps=num_warps,
        )
    return pooled, unit, norm, ((sorted_pos, sorted_ev) if rank else None)


def pool_normalize_forward(
    hidden: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor, eps: float, block_h: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the forward over one span list: returns pooled [S,H] fp32, unit [S,H] fp32 and norm [S] fp32."""
    return pool_forward(hidden, make_spans(starts, ends), eps, block_h=block_h)[:3]


def paired_forward(
    hidden: torch.Tensor, spans: Spans, eps: float, *, rank: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """cos(pool(a_p), pool(b_p)) for the pairs (a-list and b-list of equal length P).

    Returns (cos [P] fp32, pooled [2P, H] fp32 (a rows, then b rows), norm [2P] fp32, events or None).
    One launch when a program covers all of H, else two (partials, then a tiny finishing kernel).
    """
    if hidden.stride(1) != 1:
        hidden = hidden.contiguous()
    n_pairs, hidden_size = spans.n_a, hidden.shape[1]
    dev = hidden.device
    cos = torch.empty(n_pairs, device=dev, dtype=torch.float32)
    pooled = torch.empty(2 * n_pairs, hidden_size, device=dev, dtype=torch.float32)
    norm = torch.empty(2 * n_pairs, device=dev, dtype=torch.float32)
    if n_pairs == 0 or hidden_size == 0:
        cos.zero_()
        pooled.zero_()
        norm.zero_()
        return cos, pooled, norm, (_events_torch(spans) if rank and n_pairs else None)
    in_kernel, sorted_pos, sorted_ev = _event_buffers(spans, dev, rank)
    block_h = choose_block_h(n_pairs, hidden_size, dev)
    n_hblocks = triton.cdiv(hidden_size, block_h)
    fuse = n_hblocks == 1
    stats = norm if fuse else torch.empty(3, n_pairs, n_hblocks, device=dev, dtype=torch.float32)
    num_warps = 4 if block_h >= 128 else 2
    _paired_fwd_kernel[(n_pairs, n_hblocks)](
        hidden,
        *spans[:4],
        pooled,
        norm,
        cos,
        stats,
        sorted_pos if in_kernel else norm,
        sorted_ev if in_kernel else norm,
        hidden_size,
        hidden.stride(0),
        n_pairs,
        n_hblocks,
        eps,
        FUSE=fuse,
        WITH_RANK=in_kernel,
        BLOCK_N=BLOCK_N,
        BLOCK_H=block_h,
        BLOCK_R=32 * num_warps * RANK_EVENTS_PER_THREAD,
        num_warps=num_warps,
    )
    if not fuse:
        block_hb = triton.next_power_of_2(n_hblocks)
        block_p = max(1, 2048 // block_hb)
        _paired_finalize_kernel[(triton.cdiv(n_pairs, block_p),)](
            stats,
            norm,
            cos,
            n_pairs,
            n_hblocks,
            eps,
            BLOCK_P=block_p,
            BLOCK_HB=block_hb,
            num_warps=4,
        )
    return cos, pooled, norm, ((sorted_pos, sorted_ev) if rank else None)


def _events_to_rows(
    events: tuple[torch.Tensor, torch.Tensor],
    spans: Spans,
    num_rows: int,
    hidden_size: int,
    out_dtype: torch.dtype,
    *,
    span_grad: torch.Tensor | None = None,
    paired: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float] | None = None,
) -> torch.Tensor:
    """Scan the sorted events into the [2S+1, H] table, then write every row of the [N, H] gradient once."""
    sorted_pos, sorted_ev = events
    n_ev = sorted_pos.shape[0]
    dev = sorted_pos.device
    table = torch.empty(n_ev + 1, hidden_size, device=dev, dtype=out_dtype)
    block_e, block_h = choose_scan_blocks(n_ev, hidden_size, dev)
    if paired is not None:
        pooled, norm, cos, grad_cos, eps = paired
        dense = pooled
    else:
        pooled = norm = cos = grad_cos = dense = span_grad
        eps = 0.0
    _events_scan_kernel[(triton.cdiv(hidden_size, block_h),)](
        sorted_ev,
        *spans[:4],
        dense,
        pooled,
        norm,
        cos,
        grad_cos,
        grad_cos.stride(0) if paired is not None else 0,
        table,
        hidden_size,
        spans.n_a,
        spans.n_spans,
        eps,
        PAIRED=paired is not None,
        BLOCK_E=block_e,
        BLOCK_H=block_h,
        num_warps=8 if block_e * block_h >= 4096 else 4,
    )
    grad_hidden = torch.empty(num_rows, hidden_size, device=dev, dtype=out_dtype)
    block_r, block_hr, per_prog = choose_rows_blocks(num_rows, hidden_size, dev)
    grid = (triton.cdiv(num_rows, block_r), triton.cdiv(hidden_size, per_prog))
    _rows_kernel[grid](
        sorted_pos,
        table,
        grad_hidden,
        num_rows,
        hidden_size,
        n_ev,
        grad_hidden.stride(0),
        n_ev.bit_length(),
        per_prog,
        BLOCK_R=block_r,
        BLOCK_H=block_hr,
        num_warps=8 if block_r * block_hr >= 4096 else 4,
    )
    return grad_hidden


def paired_backward(
    grad_cos: torch.Tensor,
    pooled: torch.Tensor,
    norm: torch.Tensor,
    cos: torch.Tensor,
    spans: Spans,
    events: tuple[torch.Tensor, torch.Tensor] | None,
    num_rows: int,
    eps: float,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Gradient w.r.t. hidden of sum_p grad_cos[p] cos_p: [N, H] in ``out_dtype``, two launches."""
    hidden_size = pooled.shape[1]
    if spans.n_spans == 0 or hidden_size == 0 or num_rows == 0:
        return torch.zeros(num_rows, hidden_size, device=pooled.device, dtype=out_dtype)
    if grad_cos.dtype != torch.float32:
        grad_cos = grad_cos.float()
    return _events_to_rows(
        events, spans, num_rows, hidden_size, out_dtype, paired=(pooled, norm, cos, grad_cos, eps)
    )


def pool_backward_events(
    grad_pooled: torch.Tensor | None,
    grad_unit_a: torch.Tensor | None,
    grad_unit_b: torch.Tensor | None,
    unit: torch.Tensor,
    norm: torch.Tensor,
    spans: Spans,
    events: tuple[torch.Tensor, torch.Tensor] | None,
    num_rows: int,
    eps: float,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Gradient w.r.t. hidden of the pool + normalise forward: [N, H] in ``out_dtype``, three launches.

    ``grad_unit_a``/``grad_unit_b``: gradients of the unit vectors of the a-spans (rows :n_a) and the
    b-spans (rows n_a:); any gradient may be None (no contribution).
    """
    n_spans, hidden_size = unit.shape
    if (
        n_spans == 0
        or hidden_size == 0
        or num_rows == 0
        or (grad_pooled is None and grad_unit_a is None and grad_unit_b is None)
    ):
        return torch.zeros(num_rows, hidden_size, device=unit.device, dtype=out_dtype)

    def strides(t: torch.Tensor | None) -> tuple[torch.Tensor, int, int]:
        if t is None:
            return unit, 0, 0
        if t.dtype != torch.float32:
            t = t.float()
        return t, t.stride(0), t.stride(1)

    span_grad = torch.empty(n_spans, hidden_size, device=unit.device, dtype=torch.float32)
    _span_grad_kernel[(n_spans,)](
        *strides(grad_pooled),
        *strides(grad_unit_a),
        *strides(grad_unit_b),
        unit,
        norm,
        *spans[:4],
        span_grad,
        hidden_size,
        spans.n_a,
        n_spans,
        eps,
        HAS_GRAD_POOLED=grad_pooled is not None,
        HAS_GRAD_UA=grad_unit_a is not None,
        HAS_GRAD_UB=grad_unit_b is not None,
        HAS_GRAD_UNIT=grad_unit_a is not None or grad_unit_b is not None,
        BLOCK_H=choose_loop_block_h(hidden_size),
        num_warps=4,
    )
    return _events_to_rows(events, spans, num_rows, hidden_size, out_dtype, span_grad=span_grad)


def pool_normalize_backward(
    grad_pooled: torch.Tensor | None,
    grad_unit: torch.Tensor | None,
    unit: torch.Tensor,
    norm: torch.Tensor,
    starts: torch.Tensor,
    ends: torch.Tensor,
    num_rows: int,
    eps: float,
    block_h: int | None = None,
) -> torch.Tensor:
    """Atomic alternative: returns the gradient w.r.t. hidden as a [N, H] fp32 tensor (zeroed, then adds)."""
    n_spans, hidden_size = unit.shape
    grad_hidden = torch.zeros(num_rows, hidden_size, device=unit.device, dtype=torch.float32)
    if n_spans == 0 or hidden_size == 0 or (grad_pooled is None and grad_unit is None):
        return grad_hidden
    block_h = block_h or choose_block_h(n_spans, hidden_size, unit.device)
    if grad_pooled is not None:
        grad_pooled = grad_pooled.float().contiguous()
    dot = norm  # placeholder pointer when there is no grad w.r.t. the unit vectors
    if grad_unit is not None:
        grad_unit = grad_unit.float().contiguous()
        dot = (grad_unit * unit).sum(dim=1)
    n_hblocks = triton.cdiv(hidden_size, block_h)
    _pool_bwd_kernel[(n_spans, n_hblocks)](
        grad_pooled if grad_pooled is not None else unit,
        grad_unit if grad_unit is not None else unit,
        unit,
        dot,
        norm,
        starts,
        ends,
        grad_hidden,
        hidden_size,
        eps,
        HAS_GRAD_POOLED=grad_pooled is not None,
        HAS_GRAD_UNIT=grad_unit is not None,
        BLOCK_N=BLOCK_N,
        BLOCK_H=block_h,
        num_warps=4 if block_h >= 128 else 2,
    )
    return grad_hidden
