"""Benchmark: pooled embedding similarity (span mean-pool + normalise + paired cosine), fwd and fwd+bwd.

    python -m benchmarks.pooled_similarity [--device cpu|cuda] [--quick] [--no-reference] [--threads T]

Sweeps tokens N, hidden size H and number of spans S (training-like: S disjoint spans tiling all N
rows, paired as S/2 cosines, i.e. the L_map call). Times the reference loop, the vectorised torch path
and, on CUDA, the Triton kernel; reports achieved bandwidth against the bytes that must move
(forward: read hidden once + write [S, H] fp32; fwd+bwd adds writing grad [N, H] once) and, on CUDA,
the ratio to a device-to-device copy roofline measured in the same run and the number of GPU kernels
(and memsets/copies) one Triton fwd+bwd runs (torch.profiler). ``fwd_bwd`` is what the trainer runs:
L = sum_p (1 - cos_p), then ``torch.autograd.grad(L, hidden)`` (no .grad accumulation). Appends to
benchmarks/results/pooled_similarity.csv.
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.common import append_csv, environment_tags, results_folder, time_fn
from clmap.cli import add_debug_flag, run_main
from clmap.config import ConfigError, check_flag_ranges
from clmap.kernels.pooled_similarity import paired_cosine

FULL_CPU = [(n, h, s) for n in (4096, 16384) for h in (256, 1024) for s in (16, 256)]
QUICK_CPU = [(4096, 256, 64)]
FULL_CUDA = [(n, h, s) for n in (8192, 32768, 131072) for h in (1024, 4096) for s in (64, 1024)]
QUICK_CUDA = [(32768, 4096, 256)]


def copy_roofline_gbps(device: torch.device) -> float:
    """Achievable DRAM bandwidth: a 1 GiB device-to-device copy, counting bytes read + written."""
    src = torch.empty(1 << 28, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device=device)
    return 2 * src.numel() * 4 / (t.median_ms * 1e-3) / 1e9


def tiled_spans(n: int, s: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """S disjoint spans of (almost) equal length covering rows 0..n-1."""
    bounds = torch.linspace(0, n, s + 1, device=device).round().long()
    return bounds[:-1].contiguous(), bounds[1:].contiguous()


def count_gpu_kernels(fn) -> int | str:
    """GPU kernels, memsets and copies one call of ``fn`` runs, by torch.profiler ("" if unavailable)."""
    try:
        from torch.profiler import ProfilerActivity, profile

        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    except Exception as exc:  # noqa: BLE001 - the count is informative only
        print(f"kernel count unavailable: {exc}")
        return ""


def bench_case(
    n: int, h: int, s: int, device: torch.device, dtype: torch.dtype, impls: list[str], roofline: float | None
) -> list[dict]:
    hidden = torch.randn(n, h, device=device, dtype=dtype)
    starts, ends = tiled_spans(n, s, device)
    p = s // 2
    a, b = (starts[:p], ends[:p]), (starts[p : 2 * p], ends[p : 2 * p])
    esize = hidden.element_size()
    bytes_fwd = n * h * esize + s * h * 4
    bytes_bwd = bytes_fwd + n * h * esize
    leaf = hidden.clone().requires_grad_(True)
    cuda = device.type == "cuda"
    rows = []
    for impl in impls:

        def fwd(impl=impl):
            with torch.no_grad():
                return paired_cosine(hidden, *a, *b, backend=impl)

        def fwd_bwd(impl=impl):
            # as in clmap.objectives: map_sum = (1 - cos).sum(), differentiated w.r.t. the hidden states
            cos = paired_cosine(leaf, *a, *b, backend=impl)
            return torch.autograd.grad((1.0 - cos).sum(), leaf)

        for name, fn, nbytes in (("fwd", fwd, bytes_fwd), ("fwd_bwd", fwd_bwd, bytes_bwd)):
            if impl == "reference" and name == "fwd_bwd" and s * n * h > 1 << 30:
                continue  # its autograd writes a full [N, H] gradient per span: minutes per case
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t = time_fn(fn, device=device, warmup=2, rep=5 if cuda else 9)
            gbps = nbytes / (t.median_ms * 1e-3) / 1e9
            # the Triton fwd+bwd only: a profiler run per row would eat the GPU suite's time cap
            kernels = count_gpu_kernels(fn) if cuda and impl == "triton" and name == "fwd_bwd" else ""
            row = {
                "impl": impl,
                "pass": name,
                "tokens": n,
                "hidden": h,
                "spans": s,
                "dtype": str(dtype),
                "median_ms": round(t.median_ms, 4),
                "p20_ms": round(t.p20_ms, 4),
                "p80_ms": round(t.p80_ms, 4),
                "bytes": nbytes,
                "gbps": round(gbps, 2),
                "roofline_gbps": round(roofline, 1) if roofline else "",
                "frac_of_roofline": round(gbps / roofline, 3) if roofline else "",
                "peak_mem_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else "",
                "gpu_kernels": kernels,
            }
            rows.append(row)
            print(
                f"{impl:>9} {name:>7} N={n:<6} H={h:<5} S={s:<5} median {t.median_ms:9.3f} ms "
                f"[{t.p20_ms:.3f}, {t.p80_ms:.3f}]  {gbps:8.1f} GB/s"
                + (f"  {gbps / roofline:.2f} of roofline" if roofline else "")
                + (f"  {kernels} GPU kernels" if kernels != "" else ""),
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", choices=["cpu", "cuda"], default=default_device)
    parser.add_argument("--quick", action="store_true", help="one case only")
    parser.add_argument("--no-reference", action="store_true", help="skip the (slow) reference loop")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    check_flag_ranges(args, {"--threads": "[0, inf)"})
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible to torch")
    results_folder()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    cases = (QUICK_CUDA if args.quick else FULL_CUDA) if cuda else (QUICK_CPU if args.quick else FULL_CPU)
    impls = (["triton"] if cuda else []) + ["torch"] + ([] if args.no_reference else ["reference"])
    roofline = copy_roofline_gbps(device) if cuda else None
    if roofline:
        print(f"device-to-device copy roofline: {roofline:.0f} GB/s")
    tags = environment_tags(device)
    path = None
    for n, h, s in cases:  # case by case: a timed-out run keeps the cases it finished
        path = append_csv(
            "pooled_similarity", [{**tags, **r} for r in bench_case(n, h, s, device, dtype, impls, roofline)]
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(run_main(main, None, "benchmarks.pooled_similarity"))
