"""Raw Triton kernels of the pooled-similarity forward (varlen span mean-pooling, L2 normalisation,
paired cosine) and their launchers.

One program per (span or pair, H-block) walks its span's rows in [BLOCK_N, BLOCK_H] tiles and
accumulates in fp32, so the hidden states are read once and nothing of size [N, H] is written. When one
H-block covers the whole row the same program also normalises (and, for paired spans, forms the
cosine); otherwise it writes per-block partial sums and a second tiny kernel finishes, which keeps the
reduction deterministic (no atomics). When a backward will follow, the programs of H-block 0 also rank
the 2S span start/end events by position (a counting sort: O(S) compares per program) and scatter them
into sorted order for ``pooled_similarity_backward_triton``; above MAX_KERNEL_RANK_EVENTS events
``torch.sort`` does it instead.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from clmap.kernels.pooled_similarity_spans import Spans, span_bounds
from clmap.kernels.triton_common import num_sms

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
# Kernels
# ----------------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["n_a", "n_spans"])  # span/pair counts change every step
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
    start, end = span_bounds(a_starts, a_ends, b_starts, b_ends, s, n_a, s < n_spans)
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


@triton.jit(do_not_specialize=["n_pairs"])  # span/pair counts change every step
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


@triton.jit(do_not_specialize=["n_pairs"])  # span/pair counts change every step
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
# Launch heuristic (a module function, so tests can force small blocks) and launchers
# ----------------------------------------------------------------------------------------------------


def choose_block_h(num_spans: int, hidden_size: int, device: torch.device) -> int:
    """Whole row in one program when that still fills the GPU; otherwise narrower blocks for more programs."""
    full = triton.next_power_of_2(max(hidden_size, 1))
    if full <= MAX_FUSED_BLOCK_H and (num_spans >= 4 * num_sms(device) or full <= 64):
        return full
    block = min(full, MAX_FUSED_BLOCK_H)
    while block > 64 and num_spans * triton.cdiv(hidden_size, block) < 4 * num_sms(device):
        block //= 2
    return block


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

    ``events`` (with ``rank``): (sorted event positions, event ids) for ``pooled_similarity_backward_triton``.
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
