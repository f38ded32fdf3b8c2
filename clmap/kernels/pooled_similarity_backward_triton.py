"""Raw Triton kernels of the pooled-similarity backward (gradient w.r.t. hidden) and their launchers.

grad[r] is the sum of w_s over the spans covering row r, where w_s is the span's gradient w.r.t. the
pooled *sum*. With the span events sorted by position (by the forward, see
``pooled_similarity_forward_triton``), grad[r] = table[count(r)] where count(r) is the number of events
at or before r and table[k] the running sum of the first k events (+w_s at a start, -w_s at an end).
Two launches (three for ``pool_spans``/``cosine_matrix``, whose per-span gradient ``_span_grad_kernel``
forms first):

1. ``_events_scan_kernel`` (one program per H-block): walks the sorted events in tiles, forms w_s on the
   fly (paired cosine: from the saved pooled vectors, norms and cosines; otherwise reads the per-span
   gradient), prefix-sums them in fp64 and writes the [2S+1, H] table in the output dtype (fp64 -> fp32
   -> dtype, to nearest even). fp64 sums of fp32 terms are exact unless they differ by more than ~2^29
   in magnitude, so rows past a span's end get 0 and overlapping spans are summed without cancellation
   error.
2. ``_rows_kernel`` (one program per row tile x H-chunk): binary-searches each row's count in the
   sorted positions and copies its table row to grad_hidden: [N, H] is written once, in the output
   dtype, every row exactly once (uncovered rows get table[0] = 0): no zero-fill, no atomics, no
   host sync, deterministic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from clmap.kernels.pooled_similarity_spans import Spans, span_bounds
from clmap.kernels.triton_common import num_sms, round_to

# ----------------------------------------------------------------------------------------------------
# Kernels
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


@triton.jit(do_not_specialize=["n_a", "n_spans"])  # span/pair counts change every step
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
    start, end = span_bounds(a_starts, a_ends, b_starts, b_ends, s, n_a, s < n_spans)
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


@triton.jit(do_not_specialize=["n_a", "n_spans"])  # span/pair counts change every step
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
            start, end = span_bounds(a_starts, a_ends, b_starts, b_ends, span, n_a, valid)
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


@triton.jit(do_not_specialize=["n_ev", "n_search"])  # span/pair counts change every step
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


# ----------------------------------------------------------------------------------------------------
# Launch heuristics (module functions, so tests can force small blocks) and launchers
# ----------------------------------------------------------------------------------------------------


def choose_loop_block_h(hidden_size: int) -> int:
    """Columns per step of the per-span backward kernel, which loops over H."""
    return min(triton.next_power_of_2(max(hidden_size, 1)), 1024)


def choose_scan_blocks(n_events: int, hidden_size: int, device: torch.device) -> tuple[int, int]:
    """(BLOCK_E, BLOCK_H) of the event scan: one program per H-block walks all events, so narrow
    H-blocks give more programs; tiles of ~4K elements."""
    full = triton.next_power_of_2(max(hidden_size, 1))
    block_h = min(full, 64)
    while block_h > 16 and triton.cdiv(hidden_size, block_h) < num_sms(device):
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
    n_chunks = max(1, min(max_chunks, triton.cdiv(8 * num_sms(device), n_rblocks)))
    per_prog = triton.cdiv(triton.cdiv(hidden_size, n_chunks), block_h) * block_h
    return block_r, block_h, per_prog


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


def pool_backward(
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
