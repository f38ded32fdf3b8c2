"""Fused mapping loss vs its peers: time (median/p20/p80) and peak extra memory, forward and forward+backward.

``python -m benchmarks.mapping_loss [--device cpu|cuda] [--quick] [--dtype fp32|bf16|fp16]``; rows go to
results/mapping_loss.csv. Peers: naive PyTorch (full logits + F.cross_entropy), ``F.linear_cross_entropy``
with chunking options (if this torch has it), Liger-Kernel FLCE (its default bf16 weight-gradient
accumulation, and ``liger_fp32`` with ``accum_dtype=float32`` like clmap's default) and Apple Cut
Cross-Entropy (CUDA, if importable). clmap rows: ``clmap`` is the trainer's call (``group_weights``:
gradients in the forward walk, fp32 logits chunks and weight-gradient accumulator), ``clmap_bf16acc`` the
same with ``accum_dtype=torch.bfloat16`` (bf16 chunks and accumulator: bf16 inputs only),
``clmap_deferred`` differentiates ``loss_sum`` (a second walk in backward), ``clmap_torch`` is the chunked
torch path (the CPU default) on the same device, and ``clmap@MB`` / ``clmap_bf16acc@MB`` set the logits
chunk size. On CPU every case runs in a fresh process (``--case JSON``) so peak-RSS numbers are comparable.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.common import (
    append_csv,
    cpu_peak_extra_mb,
    environment_tags,
    results_folder,
    run_case_subprocess,
    time_fn,
)
from clmap.cli import add_debug_flag, run_main
from clmap.config import ConfigError, check_flag_ranges, comma_numbers

IMPLS = (
    "naive",
    "torch_lce",
    "liger",
    "liger_fp32",
    "cce",
    "clmap",
    "clmap_bf16acc",
    "clmap_deferred",
    "clmap_torch",
)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_SWEEP = [(4096, 512, 32000), (16384, 512, 32000)]
CPU_QUICK = [(2048, 256, 8000)]
CUDA_SWEEP = [(4096, 2048, 32000), (8192, 4096, 128256), (16384, 4096, 128256)]
CUDA_QUICK = [(4096, 2048, 32000)]


def _loss_fn(impl: str) -> Callable | None:
    """Scalar summed loss of ``(h, w, t)`` for one implementation, or None (with a message) if unavailable."""
    if impl == "naive":
        return lambda h, w, t: F.cross_entropy((h @ w.t()).float(), t, reduction="sum")
    if impl == "torch_lce":
        if not hasattr(F, "linear_cross_entropy") or not hasattr(torch.nn, "LinearCrossEntropyOptions"):
            print("skip torch_lce: this torch has no F.linear_cross_entropy with chunking options")
            return None
        opts = torch.nn.LinearCrossEntropyOptions()
        return lambda h, w, t: F.linear_cross_entropy(h, w, t, reduction="sum", options=opts)
    if impl in ("liger", "liger_fp32"):
        try:
            from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
        except ImportError:
            print(f"skip {impl}: liger-kernel is not installed (pip install liger-kernel)")
            return None
        accum = {"accum_dtype": torch.float32} if impl == "liger_fp32" else {}
        return lambda h, w, t: liger_fused_linear_cross_entropy(h, w, t, reduction="sum", **accum)
    if impl == "cce":
        try:
            from cut_cross_entropy import linear_cross_entropy as cce
        except ImportError:
            print("skip cce: cut-cross-entropy is not installed (pip install cut-cross-entropy)")
            return None
        return lambda h, w, t: cce(h, w, t, reduction="sum")
    if impl.startswith("clmap"):
        mapping_loss = importlib.import_module("clmap.kernels.mapping_loss").mapping_loss
        name, _, chunk_mb = impl.partition("@")
        kw = {"chunk_bytes": int(chunk_mb) * 2**20} if chunk_mb else {}
        if name == "clmap_deferred":
            return lambda h, w, t: mapping_loss(h, w, t, **kw).loss_sum.sum()
        if name in ("clmap", "clmap_bf16acc", "clmap_torch"):
            if name == "clmap_torch":  # clmap's chunked torch path (the CPU default) on the same device
                kw["backend"] = "torch"
            if name == "clmap_bf16acc":  # bf16 logits chunks and weight-gradient accumulator
                kw["accum_dtype"] = torch.bfloat16
            # the trainer's call: gradients computed in the forward walk
            return lambda h, w, t: (
                mapping_loss(h, w, t, group_weights=torch.ones(1, device=h.device), **kw).weighted_loss
            )
    raise ValueError(f"unknown implementation {impl!r}")


def _randn(rows: int, cols: int, std: float, dtype: torch.dtype, gen: torch.Generator, device: str):
    """N(0, std^2) as ``dtype``. On CPU drawn by row blocks: a whole fp32 temporary would raise the
    process's peak RSS above what the inputs keep, hiding that much of the measured call's memory."""
    if device != "cpu":
        return (torch.randn(rows, cols, generator=gen, device=device) * std).to(dtype)
    out = torch.empty(rows, cols, dtype=dtype)
    step = max(1, 2**20 // max(cols, 1))
    for s in range(0, rows, step):
        out[s : s + step] = torch.randn(min(step, rows - s), cols, generator=gen).mul_(std)
    return out


def _inputs(n: int, h: int, v: int, dtype: torch.dtype, device: str, ignore: float):
    """Hidden ~ N(0, 1), weight ~ N(0, 1/H), uniform targets; drawn on the device (seeded)."""
    gen = torch.Generator(device=device).manual_seed(0)
    hidden = _randn(n, h, 1.0, dtype, gen, device).requires_grad_()
    weight = _randn(v, h, h**-0.5, dtype, gen, device).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=gen, device=device)
    targets[torch.rand(n, generator=gen, device=device) < ignore] = -100
    return hidden, weight, targets


def _step(loss_fn: Callable, hidden, weight, targets, backward: bool) -> Callable[[], object]:
    if backward:
        return lambda: torch.autograd.grad(loss_fn(hidden, weight, targets), [hidden, weight])

    def forward_only():
        with torch.no_grad():
            return loss_fn(hidden, weight, targets)

    return forward_only


_CACHED: dict[tuple, tuple] = {}


def run_case(case: dict) -> dict | None:
    """One (implementation, shape, dtype, pass) measurement in this process (CUDA inputs reused by shape)."""
    loss_fn = _loss_fn(case["impl"])
    if loss_fn is None:
        return None
    device = case["device"]
    torch.manual_seed(0)
    key = (case["N"], case["H"], case["V"], DTYPES[case["dtype"]], device, case.get("ignore", 0.0))
    if device == "cpu" or key not in _CACHED:
        _CACHED.clear()  # one shape's inputs at a time on the GPU
        _CACHED[key] = _inputs(*key)
    hidden, weight, targets = _CACHED[key]
    fn = _step(loss_fn, hidden, weight, targets, case["pass"] == "fwd+bwd")
    if device == "cpu":
        peak_mb = cpu_peak_extra_mb(fn)  # also the warm-up run
        timing = time_fn(fn, device=device, warmup=0, rep=case.get("rep", 3))
    else:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
        timing = time_fn(fn, device=device)
    return {
        **case,
        "median_ms": round(timing.median_ms, 3),
        "p20_ms": round(timing.p20_ms, 3),
        "p80_ms": round(timing.p80_ms, 3),
        "peak_extra_mb": round(peak_mb, 1),
    }


PASSES = ("fwd+bwd", "fwd")


def check_arguments(args: argparse.Namespace) -> None:
    """Every argument before the first case runs: --rep, --shapes (N,H,V of positive ints), --impls
    (known names, clmap ones with an optional @MB chunk size), --passes, a CUDA --device that exists, and
    the results folder."""
    check_flag_ranges(args, {"--rep": "[1, inf)"})
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible to torch")
    for shape in (args.shapes or "").split(";") if args.shapes else []:
        if len(comma_numbers("--shapes", shape, int, 1)) != 3:
            raise ConfigError(f"--shapes {shape!r}: expected N,H,V (three positive ints)")
    for impl in args.impls.split(","):
        name, at, chunk_mb = impl.partition("@")
        if name not in IMPLS or (at and (not name.startswith("clmap") or not chunk_mb.isdigit())):
            raise ConfigError(
                f"--impls: unknown implementation {impl!r}; choose from {', '.join(IMPLS)} "
                "(clmap ones also as NAME@MB, MB a positive int)"
            )
    unknown = [p for p in args.passes.split(",") if p not in PASSES]
    if unknown:
        raise ConfigError(f"--passes: unknown {unknown}; choose from {', '.join(PASSES)}")
    results_folder()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", choices=("cpu", "cuda"), default=default_device)
    parser.add_argument("--quick", action="store_true", help="one small shape")
    parser.add_argument("--shapes", help="N,H,V[;N,H,V...] instead of the default sweep")
    parser.add_argument(
        "--impls",
        default=",".join(IMPLS),
        help="subset of: " + ",".join(IMPLS) + " and clmap@MB, clmap_bf16acc@MB (MB of logits per chunk)",
    )
    parser.add_argument("--passes", default="fwd+bwd,fwd", help="comma-separated: fwd+bwd, fwd")
    parser.add_argument(
        "--dtype", choices=tuple(DTYPES), help="input dtype (default: fp32 on CPU, bf16 on CUDA)"
    )
    parser.add_argument("--rep", type=int, default=3, help="timed repetitions per case on CPU")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="print the profiler's kernel table of one clmap fwd+bwd (first shape)",
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    check_arguments(args)
    if args.device == "cpu":
        shapes, dtype = (CPU_QUICK if args.quick else CPU_SWEEP), "fp32"
    else:
        shapes, dtype = (CUDA_QUICK if args.quick else CUDA_SWEEP), "bf16"
    dtype = args.dtype or dtype
    if args.shapes:
        shapes = [tuple(int(x) for x in shape.split(",")) for shape in args.shapes.split(";")]
    impls = [i for i in args.impls.split(",") if _loss_fn(i) is not None]
    tags = environment_tags(args.device)
    rows: list[dict] = []
    path = None
    for n, h, v in shapes:
        for pass_ in args.passes.split(","):
            for impl in impls:
                case = {
                    "impl": impl,
                    "N": n,
                    "H": h,
                    "V": v,
                    "dtype": dtype,
                    "pass": pass_,
                    "device": args.device,
                    "rep": args.rep,
                }
                try:
                    if args.device == "cpu":
                        row = run_case_subprocess("benchmarks.mapping_loss", case)
                    else:
                        row = run_case(case)
                except (RuntimeError, torch.OutOfMemoryError) as err:
                    print(f"{impl} N={n} H={h} V={v} {pass_}: failed: {str(err).splitlines()[-1]}")
                    continue
                if row is None:
                    continue
                print(
                    f"{impl:>9} N={n:<6} H={h:<5} V={v:<7} {dtype} {pass_:<8} "
                    f"median {row['median_ms']:>10.1f} ms "
                    f"[p20 {row['p20_ms']:.1f}, p80 {row['p80_ms']:.1f}]  "
                    f"peak extra {row['peak_extra_mb']:>9.1f} MB",
                    flush=True,
                )
                rows.append({**row, **tags})  # the device tag (GPU or CPU name) wins over "cuda"/"cpu"
                path = append_csv("mapping_loss", rows[-1:])  # row by row: a timed-out sweep keeps its rows
    _print_ratios(rows)
    print(f"wrote {len(rows)} rows to {path if rows else 'nowhere'}")
    if args.profile:
        _profile_clmap(*shapes[0], DTYPES[dtype], args.device)


def _profile_clmap(n: int, h: int, v: int, dtype: torch.dtype, device: str) -> None:
    """Where one fwd+bwd of the trainer's call spends its time, kernel by kernel (GEMMs vs the row pass)."""
    from torch.profiler import ProfilerActivity, profile

    fn = _step(_loss_fn("clmap"), *_inputs(n, h, v, dtype, device, 0.0), backward=True)
    fn()  # compile and warm up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
    sort = "cuda_time_total" if device == "cuda" else "cpu_time_total"
    print(f"clmap fwd+bwd N={n} H={h} V={v} {dtype}, by kernel:")
    print(prof.key_averages().table(sort_by=sort, row_limit=14, max_name_column_width=60))


def _print_ratios(rows: list[dict]) -> None:
    """clmap's time (both accumulation dtypes) vs the chunked peers and its memory vs naive and CCE."""
    by_key: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        by_key.setdefault((row["N"], row["H"], row["V"], row["pass"]), {})[row["impl"]] = row
    for (n, h, v, pass_), impls in by_key.items():
        for ours in ("clmap", "clmap_bf16acc"):
            if ours not in impls:
                continue
            mine = impls[ours]
            parts = []
            for peer in ("naive", "cce"):
                if peer in impls and impls[peer]["peak_extra_mb"] > 0:
                    parts.append(f"memory/{peer} {mine['peak_extra_mb'] / impls[peer]['peak_extra_mb']:.3f}")
            for peer in ("torch_lce", "liger", "liger_fp32", "cce"):
                if peer in impls:
                    parts.append(f"time/{peer} {mine['median_ms'] / impls[peer]['median_ms']:.3f}")
            print(f"{ours} N={n} H={h} V={v} {pass_}: " + ", ".join(parts))


if __name__ == "__main__":
    sys.exit(run_main(main, None, "benchmarks.mapping_loss"))
