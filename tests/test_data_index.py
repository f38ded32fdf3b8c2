"""The C++ data-index builders must equal the plain-Python references exactly, and keep their promises."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from clmap.data.index import (
    blended_index,
    blended_index_reference,
    pack_bins,
    plan_packing,
    plan_packing_reference,
    temperature_weights,
)

try:
    import clmap._csrc  # noqa: F401
except ImportError as exc:
    # CI builds the extension (``pip install -e .``): there a missing one is a failure, not a skip.
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"CI is set but the C++ extension clmap._csrc is not built: {exc}", pytrace=False)
    pytest.skip("C++ extension not built: run `pip install -e .`", allow_module_level=True)


def _random_blend_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    k = int(rng.choice([1, 1, 2, 3, 5, 10, 17]))
    weights = rng.random(k) ** 3  # skewed, as temperature-smoothed language weights are
    weights[rng.random(k) < 0.25] = 0.0
    if weights.sum() == 0:
        weights[rng.integers(k)] = rng.random() + 0.1
    sizes = rng.integers(1, 5, k) if rng.random() < 0.5 else rng.integers(1, 10_000, k)  # tiny: forces wraps
    sizes[(weights == 0) & (rng.random(k) < 0.5)] = 0  # an empty source is fine when it has no weight
    return weights, sizes, int(rng.integers(0, 2_000))


def _prefix_deviation(source: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """taken_k(n) - w_k * n for every prefix length n (rows) and source k (columns)."""
    n, k = len(source), len(weights)
    one_hot = np.zeros((n, k))
    one_hot[np.arange(n), source] = 1
    return np.cumsum(one_hot, axis=0) - np.outer(np.arange(1, n + 1), weights / weights.sum())


def test_blended_index_cpp_matches_reference_and_properties() -> None:
    rng = np.random.default_rng(1234)
    for _ in range(150):
        weights, sizes, n = _random_blend_case(rng)
        src, smp = blended_index(weights, sizes, n)
        ref_src, ref_smp = blended_index_reference(weights.tolist(), sizes.tolist(), n)
        assert src.dtype == np.int32 and smp.dtype == np.int64 and src.shape == smp.shape == (n,)
        np.testing.assert_array_equal(src, ref_src)
        np.testing.assert_array_equal(smp, ref_smp)
        if n == 0:
            continue
        k = len(weights)
        assert np.all(weights[src] > 0), "a zero-weight source was sampled"
        assert np.all((smp >= 0) & (smp < sizes[src]))
        # Within a source, samples run 0, 1, 2, ... and wrap: sample j of source k is j % size_k.
        for s in np.unique(src):
            np.testing.assert_array_equal(smp[src == s], np.arange((src == s).sum()) % sizes[s])
        # Every prefix tracks the target weights. A source is never ahead of its share by 1 - 1/K or more
        # (provable for this greedy); it can lag by slightly more than 1 when K >= 3, so that side gets
        # the provable (K-1)(1-1/K) bound; with K <= 2 both sides are within 1.
        dev = _prefix_deviation(src, weights)
        assert dev.max() <= 1 - 1 / k + 1e-9
        assert -dev.min() <= max(1.0, (k - 1) * (1 - 1 / k)) + 1e-9
        if k <= 2:
            assert np.abs(dev).max() < 1


def test_blended_index_long_stream_tracks_weights() -> None:
    weights = np.array([0.5, 0.25, 0.125, 0.0625, 0.0625])
    src, _ = blended_index(weights, np.full(5, 7), 100_000)
    dev = _prefix_deviation(src[:20_000], weights)
    assert dev.max() < 1 and -dev.min() < 2
    np.testing.assert_allclose(np.bincount(src, minlength=5) / 1e5, weights, atol=1e-5)


def test_blended_index_is_resumable_prefix() -> None:
    """The index for n samples is a prefix of the index for more: a resumed run sees the same stream."""
    weights, sizes = [3.0, 1.0, 0.5], [10, 3, 1]
    short = blended_index(weights, sizes, 500)
    long = blended_index(weights, sizes, 5_000)
    np.testing.assert_array_equal(short[0], long[0][:500])
    np.testing.assert_array_equal(short[1], long[1][:500])
    # Weights are normalised inside: scaling them changes nothing.
    scaled = blended_index([30.0, 10.0, 5.0], sizes, 5_000)
    np.testing.assert_array_equal(scaled[0], long[0])


@pytest.mark.parametrize("backend", ["cpp", "python"])
def test_blended_index_continues_from_counts(backend) -> None:
    """Positions [start, start + n) given the counts before start equal that slice of the whole index, so
    the stream can build it in chunks of bounded memory; counts that do not add up to start are refused."""
    weights, sizes = [0.5, 0.3, 0.2], [5, 7, 100]
    whole = blended_index(weights, sizes, 1_000, backend=backend)
    taken, start, parts = np.zeros(3, dtype=np.int64), 0, []
    for n in (1, 13, 300, 686):
        part = blended_index(weights, sizes, n, backend=backend, start=start, taken=taken)
        parts.append(part)
        taken, start = taken + np.bincount(part[0], minlength=3), start + n
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), whole[0])
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), whole[1])
    with pytest.raises(ValueError, match="taken must add up to start"):
        blended_index(weights, sizes, 3, backend=backend, start=2, taken=[1, 0, 0])
    with pytest.raises(ValueError, match="start must be >= 0"):
        blended_index(weights, sizes, 3, backend=backend, start=-1, taken=[0, 0, 0])


def test_blended_index_single_source_and_ties() -> None:
    src, smp = blended_index([2.0], [3], 7)
    np.testing.assert_array_equal(src, 0)
    np.testing.assert_array_equal(smp, [0, 1, 2, 0, 1, 2, 0])
    src, _ = blended_index([1.0, 1.0, 1.0], [5, 5, 5], 6)
    np.testing.assert_array_equal(src, [0, 1, 2, 0, 1, 2])  # ties go to the lowest source


@pytest.mark.parametrize("backend", ["cpp", "python"])
@pytest.mark.parametrize(
    ("weights", "sizes", "n", "match"),
    [
        ([1.0, -0.5], [3, 3], 4, r"weights\[1\] = -0.5"),
        ([1.0, math.nan], [3, 3], 4, "finite"),
        ([0.0, 0.0], [3, 3], 4, "all be zero"),
        ([1.0, 2.0], [3, 0], 4, "source 1 has weight 2.* size 0"),
        ([1.0, 2.0], [3], 4, "same length, got 2 and 1"),
        ([], [], 4, "at least one source"),
        ([1.0], [-1], 4, r"sizes\[0\] = -1"),
        ([1.0], [3], -1, "num_samples must be >= 0"),
    ],
)
def test_blended_index_errors(backend: str, weights: list, sizes: list, n: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        blended_index(weights, sizes, n, backend=backend)


def _random_lengths(rng: np.random.Generator, capacity: int) -> np.ndarray:
    m = int(rng.integers(0, 3_000))
    kind = rng.integers(4)
    if kind == 0:  # many equal lengths: ties in the sort and between equally full bins
        return rng.choice([1, capacity // 4 + 1, capacity // 2, capacity], size=m)
    if kind == 1:  # documents: mostly short, a long tail clipped at the capacity (exactly == capacity)
        return np.minimum(rng.lognormal(np.log(capacity) - 2.5, 1.3, m).astype(np.int64) + 1, capacity)
    if kind == 2:
        return rng.integers(0, capacity + 1, m)  # includes zero-length items
    return rng.integers(1, max(2, capacity // 8), m)


def _check_plan(lengths: np.ndarray, bins: np.ndarray, capacity: int) -> None:
    assert bins.dtype == np.int64 and bins.shape == lengths.shape
    if len(lengths) == 0:
        return
    num_bins = int(bins.max()) + 1
    assert set(np.unique(bins).tolist()) == set(range(num_bins)), "bin ids must be 0..B-1 without gaps"
    loads = np.bincount(bins, weights=lengths, minlength=num_bins)
    assert loads.max() <= capacity
    assert loads.sum() == lengths.sum()
    # Bins are numbered in order of opening: each bin's first item (in placement order) opened it.
    order = np.argsort(-lengths, kind="stable")
    first_seen = bins[order][np.sort(np.unique(bins[order], return_index=True)[1])]
    np.testing.assert_array_equal(first_seen, np.arange(num_bins))


def test_plan_packing_cpp_matches_reference_and_properties() -> None:
    rng = np.random.default_rng(99)
    # Capacities above 2**20 take the C++ ordered-set path, the rest the bucket path: both must match.
    for capacity in [1, 2, 7, 63, 64, 65, 2048, 4095, 4096, 4097, 100_000, 2**20, 2**20 + 1, 3_000_000]:
        for _ in range(6):
            lengths = _random_lengths(rng, capacity)
            bins = plan_packing(lengths, capacity)
            np.testing.assert_array_equal(bins, plan_packing_reference(lengths.tolist(), capacity))
            _check_plan(lengths, bins, capacity)


def test_plan_packing_best_fit_decreasing_example() -> None:
    # Sorted: 6(i=1), 5(i=3), 4(i=0), 3(i=2), 2(i=4). 6 -> bin0 (rem 4); 5 -> bin1 (rem 5);
    # 4 -> best fit bin0 (rem 0); 3 -> bin1 (rem 2); 2 -> bin1 (rem 0).
    lengths = [4, 6, 3, 5, 2]
    np.testing.assert_array_equal(plan_packing(lengths, 10), [0, 0, 1, 1, 1])
    assert pack_bins(lengths, 10) == [[1, 0], [3, 2, 4]]
    assert pack_bins(lengths, 10, backend="python") == [[1, 0], [3, 2, 4]]
    assert pack_bins([], 10) == []
    # Equally full bins: the lowest bin id wins.
    assert pack_bins([3, 3, 1], 4) == [[0, 2], [1]]


@pytest.mark.parametrize("backend", ["cpp", "python"])
def test_plan_packing_errors(backend: str) -> None:
    with pytest.raises(ValueError, match="item 2 has length 9 which exceeds the capacity 8"):
        plan_packing([1, 8, 9, 3], 8, backend=backend)
    with pytest.raises(ValueError, match=r"lengths\[1\] = -1"):
        plan_packing([1, -1], 8, backend=backend)
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        plan_packing([1], 0, backend=backend)
    with pytest.raises(ValueError, match="1-D"):
        plan_packing([[1, 2]], 8, backend=backend)
    with pytest.raises(ValueError, match="backend"):
        plan_packing([1], 8, backend="rust")  # type: ignore[arg-type]


def test_temperature_weights() -> None:
    counts = {"en": 1000.0, "cs": 100.0, "uk": 10.0}
    prop = temperature_weights(counts, 1.0)
    assert list(prop) == ["en", "cs", "uk"]
    assert prop["en"] == pytest.approx(1000 / 1110) and prop["uk"] == pytest.approx(10 / 1110)
    flat = temperature_weights(counts, math.inf)
    assert all(v == pytest.approx(1 / 3) for v in flat.values())
    smoothed = temperature_weights(counts, 2.0)  # sqrt: 31.6 : 10 : 3.16
    assert smoothed["en"] == pytest.approx(math.sqrt(1000) / (math.sqrt(1000) + 10 + math.sqrt(10)))
    assert sum(smoothed.values()) == pytest.approx(1.0)
    assert prop["uk"] < smoothed["uk"] < flat["uk"]  # higher T up-samples the low-resource language
    seq = temperature_weights([4.0, 0.0, 1.0], 2.0)
    assert isinstance(seq, list) and seq == pytest.approx([2 / 3, 0.0, 1 / 3])
    assert temperature_weights([0.0, 5.0], math.inf) == [0.0, 1.0]  # empty sources stay empty
    huge = temperature_weights([1e300, 1e299], 0.05)  # would overflow outside log space
    assert huge[0] == pytest.approx(1.0) and sum(huge) == pytest.approx(1.0)
    for bad, temperature in [([1.0], 0.0), ([1.0], -1.0), ([0.0, 0.0], 1.0), ([], 1.0), ([-1.0], 1.0)]:
        with pytest.raises(ValueError):
            temperature_weights(bad, temperature)


def test_missing_extension_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import clmap

    monkeypatch.delattr(clmap, "_csrc", raising=False)
    monkeypatch.setitem(sys.modules, "clmap._csrc", None)  # makes `from clmap import _csrc` fail
    with pytest.raises(ImportError, match="pip install -e ."):
        blended_index([1.0], [1], 3)
    assert blended_index([1.0], [1], 3, backend="python")[0].tolist() == [0, 0, 0]


def test_backend_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``$CLMAP_DATA_BACKEND=python`` (what the GPU suite sets when the extension fails to build) reaches
    every default call, so the trainer runs without the extension; a bad value is an error."""
    import sys

    import clmap

    monkeypatch.delattr(clmap, "_csrc", raising=False)
    monkeypatch.setitem(sys.modules, "clmap._csrc", None)
    monkeypatch.setenv("CLMAP_DATA_BACKEND", "python")
    source, sample = blended_index([3.0, 1.0], [5, 5], 8)
    ref_source, ref_sample = blended_index_reference([3.0, 1.0], [5, 5], 8)
    assert source.tolist() == list(ref_source) and sample.tolist() == list(ref_sample)
    assert pack_bins([5, 3, 4], 8) == pack_bins([5, 3, 4], 8, backend="python")
    monkeypatch.setenv("CLMAP_DATA_BACKEND", "fortran")
    with pytest.raises(ValueError, match="CLMAP_DATA_BACKEND"):
        plan_packing([1], 8)
