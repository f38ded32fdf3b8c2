"""The span lists as the pooled-similarity kernels read them, shared by their forward and backward.

Spans come as one or two index lists (``a`` and ``b``: span ``s < n_a`` is ``a[s]``, the others
``b[s - n_a]``), read by the kernels directly, so callers never concatenate them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl


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


@triton.jit
def span_bounds(a_starts, a_ends, b_starts, b_ends, span, n_a, mask):
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
