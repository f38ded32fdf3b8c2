"""What every benchmark shares: device and version tags, timing, peak memory, CSV output."""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from clmap.outputs import writable_folder

RESULTS_DIR = Path(os.environ.get("CLMAP_BENCH_OUT", Path(__file__).resolve().parent / "results"))


def device_name(device: torch.device | str = "cpu") -> str:
    """Human name of the device: the GPU's marketing name, or the CPU model from /proc/cpuinfo."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU {line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()}"


def git_commit() -> str:
    """Short hash of HEAD, with ``-dirty`` when tracked files outside ``benchmarks/results`` differ from
    it (the rows then measured uncommitted code)."""

    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=10
        )
        return out.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        # results/ is where rows are appended: editing it does not change the code measured
        dirty = bool(
            git(
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ":(top)",
                ":(top,exclude)benchmarks/results",
            )
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if commit and dirty else commit or "unknown"


def environment_tags(device: torch.device | str = "cpu") -> dict[str, str]:
    """Columns stamped on every result row so a CSV line says where and with what it was measured."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "commit": os.environ.get("CLMAP_COMMIT") or git_commit(),  # set it where .git is not the checkout's
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def results_folder() -> Path:
    """The folder rows are appended to, checked writable before a benchmark measures anything (a path
    under a file or on a read-only disk is one line at once, not a traceback after the measurement)."""
    return writable_folder(RESULTS_DIR, "the results folder (CLMAP_BENCH_OUT)")


def append_csv(name: str, rows: list[dict], out_dir: Path | None = None) -> Path:
    """Append rows to ``<out_dir>/<name>.csv`` (header written once; new columns start a new file)."""
    out_dir = Path(out_dir or RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.csv"
    if not rows:
        return path
    fields = list(rows[0].keys())
    for row in rows[1:]:
        fields += [k for k in row if k not in fields]
    if path.exists():
        with path.open(newline="") as f:
            existing = next(csv.reader(f), [])
        if existing and existing != fields:
            fields = existing + [k for k in fields if k not in existing]
            old = list(csv.DictReader(path.open(newline="")))
            with path.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(old)
    new_file = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new_file:
            writer.writeheader()
        writer.writerows(rows)
    return path


@dataclass
class Timing:
    """Milliseconds: median and the 20th/80th percentiles of repeated runs."""

    median_ms: float
    p20_ms: float
    p80_ms: float


def time_fn(
    fn: Callable[[], object], *, device: torch.device | str = "cpu", warmup: int = 2, rep: int = 5
) -> Timing:
    """Time ``fn``: ``triton.testing.do_bench`` on CUDA, a perf_counter loop after warm-up on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        from triton.testing import do_bench

        med, p20, p80 = do_bench(fn, warmup=25 * warmup, rep=100 * rep, quantiles=[0.5, 0.2, 0.8])
        return Timing(med, p20, p80)
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(rep):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    q = statistics.quantiles(samples, n=5, method="inclusive") if len(samples) > 1 else samples * 4
    return Timing(statistics.median(samples), q[0], q[3])


def max_rss_mb() -> float:
    """High-water mark of this process's resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_peak_extra_mb(fn: Callable[[], object]) -> float:
    """Peak resident memory ``fn`` adds above what the process already reached (run in a fresh process)."""
    before = max_rss_mb()
    fn()
    return max_rss_mb() - before


def run_case_subprocess(module: str, case: dict, timeout: float = 1800) -> dict:
    """Run ``python -m <module> --case '<json>'`` in a fresh process and parse the JSON it prints last.

    A fresh process per case is what makes CPU peak-RSS numbers comparable between implementations.
    """
    cmd = [sys.executable, "-m", module, "--case", json.dumps(case)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).parent.parent
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
