"""C++ data-index builders (csrc/data_index.cpp) against the plain-Python references in clmap/data/index.py.

    python -m benchmarks.data_index [--num-samples 10000000] [--num-lengths 1000000] [--capacity 2048]

The Python reference is timed once at full size unless a probe run predicts it would take longer than
``--reference-budget-s``; then it is timed at a tenth of the size (column ``reference_samples``) and the
speed ratio compares it with the C++ code at that same size.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import numpy as np

from benchmarks.common import append_csv, environment_tags, results_folder, time_fn
from clmap.cli import add_debug_flag, run_main
from clmap.config import check_flag_ranges
from clmap.data.index import blended_index, plan_packing, temperature_weights


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _compare(
    op: str, make_fn: Callable[[int, str], Callable[[], object]], n: int, budget_s: float, extra: dict
) -> dict:
    """Time C++ at n, the reference at n (or n/10 when too slow), and their ratio at equal size."""
    cpp = time_fn(make_fn(n, "cpp"), warmup=1, rep=5)
    probe_n = max(1, n // 100)
    predicted_s = _seconds(make_fn(probe_n, "python")) * n / probe_n
    ref_n = n if predicted_s <= budget_s else max(1, n // 10)
    ref_ms = _seconds(make_fn(ref_n, "python")) * 1e3
    cpp_at_ref = cpp if ref_n == n else time_fn(make_fn(ref_n, "cpp"), warmup=1, rep=5)
    row = {
        "op": op,
        "num_samples": n,
        "cpp_ms": round(cpp.median_ms, 3),
        "cpp_p20_ms": round(cpp.p20_ms, 3),
        "cpp_p80_ms": round(cpp.p80_ms, 3),
        "reference_samples": ref_n,
        "reference_ms": round(ref_ms, 1),
        "cpp_ms_at_reference_samples": round(cpp_at_ref.median_ms, 3),
        "speedup": round(ref_ms / cpp_at_ref.median_ms, 1),
        **extra,
    }
    print(
        f"{op}: cpp {cpp.median_ms:.1f} ms at {n:,}; python {ref_ms:.0f} ms at {ref_n:,} "
        f"(cpp {cpp_at_ref.median_ms:.1f} ms there) -> {row['speedup']}x",
        flush=True,
    )
    return row


RANGES = {
    "--num-samples": "[1, inf)",
    "--sources": "[1, inf)",
    "--num-lengths": "[1, inf)",
    "--capacity": "[1, inf)",
    "--reference-budget-s": "(0, inf)",
    "--seed": "[0, inf)",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-samples", type=int, default=10_000_000, help="blended-index length")
    parser.add_argument("--sources", type=int, default=10, help="number of blended sources (K)")
    parser.add_argument("--num-lengths", type=int, default=1_000_000, help="documents to pack")
    parser.add_argument("--capacity", type=int, default=2048, help="packed sequence length")
    parser.add_argument("--reference-budget-s", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=0)
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    check_flag_ranges(args, RANGES)
    results_folder()
    rng = np.random.default_rng(args.seed)

    # Blending: K sources with Zipf-like sizes, temperature-smoothed (T=3) as for languages x tasks.
    sizes = (1e8 / np.arange(1, args.sources + 1) ** 1.5).astype(np.int64)
    weights = np.asarray(temperature_weights(sizes.astype(float).tolist(), 3.0))

    def blend(n: int, backend: str) -> Callable[[], object]:
        return lambda: blended_index(weights, sizes, n, backend=backend)

    # Packing: document lengths log-normal (median ~ capacity/12) clipped to the capacity.
    all_lengths = np.minimum(
        rng.lognormal(np.log(args.capacity) - 2.5, 1.3, args.num_lengths).astype(np.int64) + 1, args.capacity
    )

    def pack(n: int, backend: str) -> Callable[[], object]:
        lengths = all_lengths[:n]
        return lambda: plan_packing(lengths, args.capacity, backend=backend)

    tags = environment_tags()
    rows = [
        _compare(
            "build_blended_index",
            blend,
            args.num_samples,
            args.reference_budget_s,
            {"k_sources": args.sources, "capacity": "", "distribution": "zipf1.5 sizes, T=3"},
        ),
        _compare(
            "plan_packing",
            pack,
            args.num_lengths,
            args.reference_budget_s,
            {"k_sources": "", "capacity": args.capacity, "distribution": "lognormal, median cap/12"},
        ),
    ]
    bins = plan_packing(all_lengths, args.capacity)
    fill = all_lengths.sum() / ((int(bins.max()) + 1) * args.capacity)
    rows[1]["distribution"] += f", fill {fill:.4f}"
    path = append_csv("data_index", [{**row, **tags} for row in rows])
    print(f"packing fill {fill:.4f}; wrote {path}")


if __name__ == "__main__":
    sys.exit(run_main(main, None, "benchmarks.data_index"))
