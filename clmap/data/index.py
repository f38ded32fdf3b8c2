"""Data-index builders: temperature-smoothed sampling weights, the blended sample index and the packing plan.

The blended index says, for every global sample position, which source (language x task) it comes from and
which sample of that source; the packing plan says which packed row each document goes into. Both are pure
functions of their inputs, so a run resumes from a sample position without storing the stream itself.

The fast paths live in the C++ extension ``clmap._csrc`` (csrc/data_index.cpp). The ``*_reference``
functions here are plain Python, written for clarity; tests check the two agree exactly.
"""

from __future__ import annotations

import math
import os
from bisect import bisect_left, insort
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

Backend = Literal["cpp", "python"]

__all__ = [
    "temperature_weights",
    "blended_index",
    "blended_index_reference",
    "plan_packing",
    "plan_packing_reference",
    "pack_bins",
]


def temperature_weights(
    counts: Mapping[str, float] | Sequence[float], temperature: float
) -> dict[str, float] | list[float]:
    """Sampling weights p_i ∝ n_i^(1/T), normalised to sum to 1.

    T = 1 samples proportionally to data size, T → ∞ uniformly; larger T up-samples low-resource languages
    so they are not drowned out. Sources with zero count always get weight 0 (there is nothing to sample).
    A mapping in gives a dict out (same keys and order); a sequence in gives a list.
    """
    keys: list[str] | None = None
    if isinstance(counts, Mapping):
        keys = list(counts.keys())
        values = [float(counts[k]) for k in keys]
    else:
        values = [float(c) for c in counts]
    if not values:
        raise ValueError("counts must not be empty")
    if not temperature > 0:  # also rejects NaN
        raise ValueError(f"temperature must be > 0, got {temperature}")
    for i, n in enumerate(values):
        if not math.isfinite(n) or n < 0:
            name = keys[i] if keys is not None else i
            raise ValueError(f"counts must be finite and >= 0, got {n} for {name!r}")
    if all(n == 0 for n in values):
        raise ValueError("counts must not all be zero")
    # Log space keeps n^(1/T) finite for large counts and small temperatures.
    exponent = 0.0 if math.isinf(temperature) else 1.0 / temperature
    logs = [math.log(n) * exponent if n > 0 else -math.inf for n in values]
    top = max(logs)
    raw = [math.exp(v - top) if n > 0 else 0.0 for v, n in zip(logs, values, strict=True)]
    total = sum(raw)
    weights = [r / total for r in raw]
    return dict(zip(keys, weights, strict=True)) if keys is not None else weights


def _load_csrc():
    try:
        from clmap import _csrc
    except ImportError as exc:
        raise ImportError(
            "the C++ data-index extension clmap._csrc is not built; run `pip install -e .` "
            "(or `python setup.py build_ext --inplace`) from the repository root, or pass backend='python'"
        ) from exc
    return _csrc


def _check_backend(backend: str | None) -> str:
    """The backend to use: the argument, else ``$CLMAP_DATA_BACKEND``, else ``cpp``."""
    backend = backend or os.environ.get("CLMAP_DATA_BACKEND") or "cpp"
    if backend not in ("cpp", "python"):
        raise ValueError(f"backend must be 'cpp' or 'python' (argument or $CLMAP_DATA_BACKEND): {backend!r}")
    return backend


def blended_index_reference(
    weights: Sequence[float],
    sizes: Sequence[int],
    num_samples: int,
    start: int = 0,
    taken: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Plain-Python greedy blending; the specification ``build_blended_index`` in C++ must match exactly.

    At step i pick the source k maximising ``w_k * (i + 1) - taken_k`` (ties → lowest k), emit sample
    ``taken_k % size_k`` of it (wrapping into a new epoch), then count it as taken. ``start`` and
    ``taken`` (the samples each source took before ``start``) continue the index from position ``start``.
    """
    weights = [float(w) for w in weights]
    sizes = [int(s) for s in sizes]
    _validate_blend(weights, sizes, num_samples)
    taken = _validate_start(start, taken, len(weights))
    total = 0.0
    for w in weights:  # sequential sum, same order as the C++ loop, so normalised weights agree bit for bit
        total += w
    weights = [w / total for w in weights]

    source = np.empty(num_samples, dtype=np.int32)
    sample = np.empty(num_samples, dtype=np.int64)
    for i in range(start, start + num_samples):
        best, best_err = 0, weights[0] * (i + 1) - taken[0]
        for k in range(1, len(weights)):
            err = weights[k] * (i + 1) - taken[k]
            if err > best_err:
                best, best_err = k, err
        source[i - start] = best
        sample[i - start] = taken[best] % sizes[best]
        taken[best] += 1
    return source, sample


def _validate_blend(weights: list[float], sizes: list[int], num_samples: int) -> None:
    """The same checks (and messages) as the C++ side, so both backends fail alike."""
    if not weights:
        raise ValueError("weights must name at least one source")
    if len(sizes) != len(weights):
        raise ValueError(f"weights and sizes must have the same length, got {len(weights)} and {len(sizes)}")
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    for k, (w, s) in enumerate(zip(weights, sizes, strict=True)):
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"weights must be finite and >= 0, got weights[{k}] = {w}")
        if s < 0:
            raise ValueError(f"sizes must be >= 0, got sizes[{k}] = {s}")
        if s == 0 and w > 0:
            raise ValueError(f"source {k} has weight {w} but size 0: it cannot supply samples")
    if not sum(weights) > 0:
        raise ValueError("weights must not all be zero")


def _validate_start(start: int, taken: Sequence[int] | None, num_sources: int) -> list[int]:
    """The counts a continued index starts from (the C++ side checks the same)."""
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if start == 0 and taken is None:
        return [0] * num_sources
    counts = [int(t) for t in (taken if taken is not None else [])]
    if len(counts) != num_sources:
        raise ValueError(f"taken must have one count per source, got {len(counts)} for {num_sources}")
    if any(t < 0 for t in counts):
        raise ValueError("taken must be >= 0")
    if sum(counts) != start:
        raise ValueError(f"taken must add up to start ({start}), got {sum(counts)}")
    return counts


def blended_index(
    weights: Sequence[float] | np.ndarray,
    sizes: Sequence[int] | np.ndarray,
    num_samples: int,
    backend: Backend | None = None,
    *,
    start: int = 0,
    taken: Sequence[int] | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Interleave K sources by weight: returns ``(source int32[n], sample int64[n])``.

    Every prefix of the stream holds each source within one sample of its target share, and the index is a
    pure function of its inputs, so sample position p of a resumed run is the same sample as before.
    Weights need not be normalised; a source that runs out wraps into a new epoch. ``start`` and
    ``taken`` (how many samples of each source positions [0, start) took: the bincount of their source
    ids) give positions [start, start + n) of the same index, so it can be built in chunks of bounded size.
    """
    backend = _check_backend(backend)
    num_samples = int(num_samples)
    w = np.ascontiguousarray(weights, dtype=np.float64)
    s = np.ascontiguousarray(sizes, dtype=np.int64)
    for name, arr in (("weights", w), ("sizes", s)):
        if arr.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got {arr.ndim} dimensions")
    if backend == "python":
        return blended_index_reference(w.tolist(), s.tolist(), num_samples, int(start), taken)
    counts = np.ascontiguousarray(taken if taken is not None else [], dtype=np.int64)
    return _load_csrc().build_blended_index(w, s, num_samples, int(start), counts)


def plan_packing_reference(lengths: Sequence[int], capacity: int) -> np.ndarray:
    """Plain-Python best-fit decreasing; the specification ``plan_packing`` in C++ must match exactly.

    Items go longest first (ties by original index) into the open bin with the least remaining space that
    still fits (ties → lowest bin id), else into a new bin. Bins are numbered in order of opening.
    """
    lengths = [int(n) for n in lengths]
    _validate_packing(lengths, capacity)
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # sorted() is stable
    bins = np.empty(len(lengths), dtype=np.int64)
    open_bins: list[tuple[int, int]] = []  # sorted (remaining space, bin id); full bins are dropped
    num_bins = 0
    for i in order:
        j = bisect_left(open_bins, (lengths[i], -1))  # first bin with remaining >= length
        if j < len(open_bins):
            remaining, b = open_bins.pop(j)
        else:
            remaining, b = capacity, num_bins
            num_bins += 1
        bins[i] = b
        remaining -= lengths[i]
        if remaining > 0:
            insort(open_bins, (remaining, b))
    return bins


def _validate_packing(lengths: list[int], capacity: int) -> None:
    """The same checks (and messages) as the C++ side."""
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    for i, n in enumerate(lengths):
        if n < 0:
            raise ValueError(f"lengths must be >= 0, got lengths[{i}] = {n}")
        if n > capacity:
            raise ValueError(
                f"item {i} has length {n} which exceeds the capacity {capacity}; "
                "truncate or split it before packing"
            )


def plan_packing(
    lengths: Sequence[int] | np.ndarray, capacity: int, backend: Backend | None = None
) -> np.ndarray:
    """Bin id (numbered in order of opening) for every item, by best-fit decreasing packing.

    Raises ValueError naming the first item longer than ``capacity``.
    """
    backend = _check_backend(backend)
    capacity = int(capacity)
    arr = np.asarray(lengths)
    if arr.ndim != 1:
        raise ValueError(f"lengths must be 1-D, got {arr.ndim} dimensions")
    if backend == "python":
        return plan_packing_reference(arr.tolist(), capacity)
    return _load_csrc().plan_packing(np.ascontiguousarray(arr, dtype=np.int64), capacity)


def pack_bins(
    lengths: Sequence[int] | np.ndarray, capacity: int, backend: Backend | None = None
) -> list[list[int]]:
    """Item indices per bin, bins in order of opening, items within a bin in the order they were placed."""
    arr = np.asarray(lengths, dtype=np.int64)
    bins = plan_packing(arr, capacity, backend=backend)
    if len(bins) == 0:
        return []
    order = np.argsort(-arr, kind="stable")  # placement order: longest first, ties by index
    result: list[list[int]] = [[] for _ in range(int(bins.max()) + 1)]
    for i in order.tolist():
        result[int(bins[i])].append(i)
    return result
