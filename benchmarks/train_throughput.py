"""Training throughput: clmap's trainer against a torchtitan-style and a plain Hugging Face loop, in one run.

    python -m benchmarks.train_throughput [--config tiny|100m|1b|all] [--impls clmap,ntp,titan,plain]
        [--device cpu|cuda] [--steps N] [--warmup W] [--profile-steps P] [--nproc N]
        [--ab A,B] [--ab-export REF,...] [--section.key=value ...]

Implementations (each in a fresh process, same data stream, same model built from the same config):
``clmap`` is ``python -m clmap.train`` with the full objective (NTP + mapping loss + pooled-similarity
term); ``ntp`` the same trainer with NTP only (``data.ntp_share=1``: no pairs, no mapping term);
``titan`` and ``plain`` are the loops of ``benchmarks/baselines.py`` (torchtitan-style: FSDP2, compiled
blocks, fused AdamW, chunked fused cross-entropy, packed rows, NTP only; plain: unpacked HF loop).

Each run trains ``--steps`` steps; the first ``--warmup`` (compilation, allocator) are not measured;
then ``--profile-steps`` more run under torch.profiler for the GPU busy share (not measured either).
tokens/s is non-pad tokens over wall time of the measured steps, with the device synced only at the
ends of log windows (``metrics.log_every`` = gcd(W, N − W)), as a real run logs. MFU uses
``clmap.metrics.flops_per_token`` (torchtitan's 6·N + 12·L·H·Q·T). Rows go to
``results/train_throughput.csv`` (``$CLMAP_BENCH_OUT`` when set), profiler summaries to
``train_profiles.txt`` beside it. Each implementation also gets a row of its own in
``train_throughput_impl.csv`` the moment it finishes (a later one timing out loses nothing). The runs
save no checkpoint and export nothing (``checkpoint.at_end=false``).

``--tokenizers DIR`` holds the presets' tokenizers, built once with ``--prepare-tokenizers`` (the 1b
preset's 128256-piece BPE: a few MB, carried to a GPU machine, which then runs with
``--no-train-tokenizer`` so no device time goes to training it).

``--ab A,B`` runs the trainer of two commits on the same machine, in one call: each commit's tree is
extracted from this checkout's ``.git`` (or from ``.ab/<ref>.tar``, written beforehand by
``--ab-export`` where the history is, for a machine whose copy lacks it); ``HEAD`` means this working
tree as it is. Rows go to ``results/train_throughput_ab.csv``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import append_csv, environment_tags, results_folder, run_case_subprocess
from clmap.cli import add_debug_flag, run_main
from clmap.config import ConfigError, check_batch, check_flag_ranges, existing_path, load_config
from clmap.launch import train_command
from clmap.outputs import writable_folder

REPO = Path(__file__).resolve().parent.parent
TINY_TOML = REPO / "configs" / "tiny.toml"
IMPLS = ("clmap", "ntp", "titan", "plain")
TRAINER_IMPLS = ("clmap", "ntp")
# What makes a trainer run NTP-only: no parallel data, so no mapping pairs and no mapping term.
NTP_ONLY = ["--data.ntp_share=1.0"]

# Presets: (config file, overrides, default implementations). tiny and 100m start from configs/tiny.toml;
# 100m: 12 x (4·768² attention + 3·768·2048 MLP) + 8000·768 tied embeddings ≈ 91M parameters.
PRESETS: dict[str, tuple[str, list[str], tuple[str, ...]]] = {
    "tiny": ("configs/tiny.toml", [], ("clmap", "plain")),
    "100m": (
        "configs/tiny.toml",
        [
            "--model.hidden_size=768",
            "--model.intermediate_size=2048",
            "--model.num_layers=12",
            "--model.num_heads=12",
            "--model.num_kv_heads=12",
            "--model.max_position=1024",
            "--data.seq_len=1024",
            "--data.max_segment_tokens=120",
        ],
        ("clmap", "plain"),
    ),
    "1b": ("configs/1b.toml", [], ("clmap", "ntp", "titan")),
}
# What a benchmark run does not need: evaluation, TensorBoard, the progress bar, exports, resuming.
BENCH_OVERRIDES = [
    "--metrics.eval_every=0",
    "--metrics.tensorboard=false",
    "--metrics.progress=false",
    "--checkpoint.export_hf=false",
    "--checkpoint.resume=false",
    "--checkpoint.every=1000000",
    "--checkpoint.at_end=false",  # a 1B checkpoint is ~15 GB of writes and hashes, no step's time
]
METRICS = (
    "tokens_per_s",
    "mfu",
    "mfu_doc",
    "peak_memory_gib",
    "gpu_busy_share",
    "data_time_share",
    "step_time_s",
)


def log_every(steps: int, warmup: int) -> int:
    """Log windows that end exactly at the warm-up's end and at the last measured step."""
    return math.gcd(warmup, steps - warmup)


def summarize(records: list[dict], warmup: int, steps: int) -> dict[str, float | str]:
    """Aggregate the log windows of steps warmup+1..steps: tokens over time (not a mean of rates),
    time-weighted shares, max memory. A record covers ``log_steps`` steps ending at ``step`` (1 for
    commits that logged single steps)."""
    chosen = [r for r in records if r["step"] - r.get("log_steps", 1) >= warmup and r["step"] <= steps]
    if not chosen:
        raise ValueError("no measured steps: raise --steps above --warmup")
    times = [r["step_time_s"] * r.get("log_steps", 1) for r in chosen]
    total_time = sum(times)

    def weighted(key: str) -> float:
        return sum(r[key] * t for r, t in zip(chosen, times, strict=True)) / total_time

    out: dict[str, float | str] = {
        "tokens_per_s": weighted("tokens_per_s"),
        "step_time_s": total_time / sum(r.get("log_steps", 1) for r in chosen),
        "data_time_share": weighted("data_time_share"),
        "peak_memory_gib": max(r["peak_memory_gib"] for r in chosen),
        "mfu": "",
        "mfu_doc": "",
    }
    for key in ("mfu", "mfu_doc"):  # mfu_doc: commits that predate it have none
        if all(isinstance(r.get(key), (int, float)) for r in chosen):
            out[key] = weighted(key)
    return out


def trace_busy_share(profile_dir: Path) -> float | None:
    """GPU busy share from a Chrome trace the trainer's profiler wrote (commits that did not compute it):
    the union of kernel / copy / memset intervals over their span, as ``clmap.metrics.gpu_busy_share``."""
    from clmap.metrics import busy_share

    intervals = []
    for path in sorted(profile_dir.glob("*.json")):
        for event in json.loads(path.read_text()).get("traceEvents", []):
            if event.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and event.get("dur", 0) > 0:
                intervals.append((float(event["ts"]), float(event["ts"]) + float(event["dur"])))
    return busy_share(intervals)


# -- the driver ----------------------------------------------------------------------------------
def prepare_tokenizer_dir(config: Path, overrides: list[str], work: Path, train: bool = True) -> Path:
    """Train the preset's tokenizer once, outside the timed processes, and share it by path. ``work`` may
    hold it already (``--tokenizers``: built beforehand, carried to the GPU machine); ``train`` False makes
    a missing one an error (the 128256-piece BPE takes minutes of one core: never on the device's clock)."""
    from clmap.config import load_config
    from clmap.data.pipeline import load_texts, prepare_tokenizer
    from clmap.data.tokenizer import META_FILE
    from clmap.parallel import DistInfo

    cfg = load_config(config, overrides)
    if cfg.tokenizer.path or cfg.model.path:
        return Path(cfg.tokenizer.path or cfg.model.path)
    out = work / f"tokenizer_{cfg.tokenizer.kind}_v{cfg.tokenizer.vocab_size}"
    if not (out / "tokenizer" / META_FILE).is_file():
        if not train:
            raise SystemExit(
                f"--no-train-tokenizer: no {out / 'tokenizer' / META_FILE}; build it first with `python -m "
                f"benchmarks.train_throughput --config <preset> --tokenizers {work} --prepare-tokenizers`"
            )
        start = time.perf_counter()
        mono, parallel = load_texts(cfg, "train")
        prepare_tokenizer(cfg, out, DistInfo(0, 1, 0, torch.device("cpu")), mono, parallel)
        print(f"tokenizer {out.name}: trained in {time.perf_counter() - start:.0f} s", flush=True)
    return out / "tokenizer"


def run_trainer(tree: Path, config: str, overrides: list[str], run_dir: Path, args, env: dict) -> dict:
    """``python -m clmap.train`` of the checkout at ``tree`` in a fresh process (torchrun for several):
    its metrics.jsonl gives the measured windows, its profiler the GPU busy share."""
    from clmap.metrics import read_metrics

    steps, profiled = args.steps, args.profile_steps
    run = [
        f"--train.steps={steps + (1 + profiled if profiled else 0)}",
        f"--metrics.log_every={log_every(steps, args.warmup)}",
        f"--run_dir={run_dir}",
    ]
    if profiled:
        run += ["--profile.enabled=true", f"--profile.wait={steps}", "--profile.warmup=1"]
        run += [f"--profile.active={profiled}"]
    cmd = train_command(args.nproc, ["--config", str(tree / config), *overrides, *run])
    path = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=args.timeout, cwd=tree, env={**env, "PYTHONPATH": path}
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    summary = summarize(read_metrics(run_dir / "metrics.jsonl"), args.warmup, steps)
    found = re.search(r"model: ([0-9.]+)M parameters", proc.stdout)
    summary["params_m"] = float(found.group(1)) if found else ""
    summary["gpu_busy_share"] = ""
    profile = run_dir / "profile"
    if (profile / "gpu_busy.json").is_file():
        busy = json.loads((profile / "gpu_busy.json").read_text())["gpu_busy_share"]
        summary["gpu_busy_share"] = "" if busy is None else busy
    elif profile.is_dir():
        busy = trace_busy_share(profile)
        summary["gpu_busy_share"] = "" if busy is None else busy
    if (profile / "summary.txt").is_file():
        summary["profile"] = (profile / "summary.txt").read_text()
    return summary


HANG_IMPL = "CLMAP_BENCH_HANG_IMPL"  # names an implementation whose run never ends (tests)


def run_impl(
    impl: str, name: str, overrides: list[str], args, work: Path, tree: Path = REPO, label: str = ""
) -> dict:
    """One implementation of one preset; an empty dict (and a message) if it failed."""
    config = PRESETS[name][0]
    overrides = overrides + (NTP_ONLY if impl in ("ntp", "titan") else [])
    start = time.perf_counter()
    if os.environ.get(HANG_IMPL) == impl:  # fault injection (tests): a stuck child, as a hung trainer
        subprocess.run([sys.executable, "-c", "import time; time.sleep(3600)", str(work)], check=False)
    try:
        if impl in TRAINER_IMPLS:
            run_dir = work / f"run_{name}_{impl}_{int(time.time() * 1e3)}"
            result = run_trainer(tree, config, overrides, run_dir, args, dict(os.environ))
        else:
            case = {
                "impl": impl,
                "config": str(REPO / config),
                "overrides": overrides,
                "steps": args.steps,
                "warmup": args.warmup,
                "log_every": log_every(args.steps, args.warmup),
                "profile_steps": args.profile_steps,
            }
            result = run_case_subprocess("benchmarks.baselines", case, timeout=args.timeout)
    except (RuntimeError, ValueError, subprocess.TimeoutExpired) as err:
        print(f"{name} {impl}{label}: failed: {str(err)[-3000:]}", flush=True)
        return {}
    profile = result.pop("profile", None)
    print(
        f"{name} {impl}{label}: {json.dumps({k: _fmt(v) for k, v in result.items()})} "
        f"({time.perf_counter() - start:.0f} s wall)",
        flush=True,
    )
    if profile:
        out = Path(os.environ.get("CLMAP_BENCH_OUT", REPO / "benchmarks" / "results")) / "train_profiles.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            f.write(f"=== {name} {impl}{label} {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
            f.write(profile + "\n")
    return result


def _fmt(value, digits: int = 4):
    return round(value, digits) if isinstance(value, float) else value


def _ratio(a, b) -> float | str:
    return round(a / b, 3) if isinstance(a, float) and isinstance(b, float) and b else ""


def preset_overrides(name: str, args, extra: list[str], work: Path) -> list[str]:
    """The preset's overrides, the benchmark's, and the shared tokenizer (trained once here)."""
    config, preset, _ = PRESETS[name]
    overrides = [*preset, *BENCH_OVERRIDES, f"--train.device={args.device}", *extra]
    tokenizers = Path(args.tokenizers).resolve() if args.tokenizers else work
    tokenizer = prepare_tokenizer_dir(REPO / config, overrides, tokenizers, train=not args.no_train_tokenizer)
    return overrides + [f"--tokenizer.path={tokenizer}"]


def bench_config(name: str, args, extra: list[str], work: Path) -> dict:
    """One preset: each implementation in a fresh process; one CSV row with every side and the ratios."""
    from clmap.config import load_config

    overrides = preset_overrides(name, args, extra, work)
    cfg = load_config(REPO / PRESETS[name][0], overrides)
    impls = args.impls or PRESETS[name][2]
    results = {}
    for impl in impls:  # each implementation's row as soon as it is measured: a later timeout loses none
        results[impl] = run_impl(impl, name, overrides, args, work)
        if results[impl]:
            row = {
                "config": name,
                "impl": impl,
                "nproc": args.nproc,
                "steps": args.steps,
                "warmup_steps": args.warmup,
            }
            row.update({key: _fmt(results[impl].get(key, "")) for key in METRICS})
            append_csv("train_throughput_impl", [{**environment_tags(args.device), **row}])
    row: dict = {
        "config": name,
        "nproc": args.nproc,
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "seq_len": cfg.data.seq_len,
        "global_batch": cfg.train.global_batch,
        "micro_batch": cfg.train.micro_batch,
        "hidden": cfg.model.hidden_size,
        "layers": cfg.model.num_layers,
        "params_m": next((r["params_m"] for r in results.values() if r.get("params_m")), ""),
    }
    for impl, result in results.items():
        for key in METRICS:
            row[f"{impl}_{key}"] = _fmt(result.get(key, ""))
    if "plain" in results:
        row["plain_pad_share"] = _fmt(results["plain"].get("pad_share", ""))
    if "titan" in results:
        row["titan_loss"] = results["titan"].get("loss_impl", "")
    clmap = results.get("clmap", {})
    per_device = clmap.get("tokens_per_s", 0.0) / args.nproc if clmap.get("tokens_per_s") else ""
    for impl, column in (("plain", "tokens_per_s_ratio"), ("ntp", "ntp_ratio"), ("titan", "titan_ratio")):
        if impl in results:
            other = results[impl].get("tokens_per_s")
            row[column] = _ratio(per_device if impl == "plain" else clmap.get("tokens_per_s"), other)
    if "plain" in results:
        row["peak_memory_ratio"] = _ratio(
            clmap.get("peak_memory_gib"), results["plain"].get("peak_memory_gib")
        )
    return row


# -- A/B between commits ---------------------------------------------------------------------------
AB_DIR = REPO / ".ab"


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=120)


def ab_export(refs: list[str]) -> None:
    """Write ``.ab/<ref>.tar`` (``git archive``) for each ref, to carry to a machine without the history."""
    AB_DIR.mkdir(exist_ok=True)
    for ref in refs:
        out = AB_DIR / f"{ref}.tar"
        proc = subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(out), ref], capture_output=True)
        if proc.returncode != 0:
            raise SystemExit(f"--ab-export: git archive {ref} failed: {proc.stderr.decode()[-500:]}")
        print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")


def ab_tree(ref: str, work: Path) -> tuple[Path, str]:
    """(source tree, label) of one side: this working tree for HEAD, else the commit extracted."""
    if ref in ("HEAD", "."):
        return REPO, environment_tags()["commit"]
    tree = work / f"ab_{ref}"
    sha = _git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").stdout.strip()
    if sha:
        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", sha], capture_output=True, check=True)
        tarfile.open(fileobj=io.BytesIO(archive.stdout)).extractall(tree, filter="data")
        label = sha[:7]
        same_ext = _git("diff", "--quiet", sha, "--", "csrc", "setup.py").returncode == 0
    elif (AB_DIR / f"{ref}.tar").is_file():
        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir(parents=True)
        with tarfile.open(AB_DIR / f"{ref}.tar") as tar:
            tar.extractall(tree, filter="data")
        label, same_ext = ref, False
    else:
        raise SystemExit(
            f"--ab: commit {ref!r} is not in this checkout's .git ({REPO / '.git'}) and there is no "
            f"{AB_DIR / (ref + '.tar')}; run `python -m benchmarks.train_throughput --ab-export {ref}` where "
            "the history is and bring .ab/ along"
        )
    built = sorted((REPO / "clmap").glob("_csrc*.so"))
    if same_ext and built:
        shutil.copy2(built[0], tree / "clmap" / built[0].name)
    else:
        cmd = [sys.executable, "setup.py", "-q", "build_ext", "--inplace"]
        proc = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            print(f"--ab {ref}: the C++ extension did not build; its data index runs in Python", flush=True)
    return tree, label


def bench_ab(name: str, refs: list[str], args, extra: list[str], work: Path) -> list[dict]:
    """The same trainer measurement for two commits, one after the other on this machine: one row per
    trainer implementation with both sides and B/A."""
    sides = [ab_tree(ref, work) for ref in refs]
    overrides = preset_overrides(name, args, extra, work)
    rows = []
    for impl in [i for i in (args.impls or ("clmap",)) if i in TRAINER_IMPLS]:
        row: dict = {"config": name, "impl": impl, "steps": args.steps, "warmup_steps": args.warmup}
        results = []
        for (tree, label), side in zip(sides, "ab", strict=True):
            row[side] = label
            results.append(run_impl(impl, name, overrides, args, work, tree=tree, label=f" @{label}"))
        for side, result in zip("ab", results, strict=True):
            for key in METRICS:
                row[f"{side}_{key}"] = _fmt(result.get(key, ""))
        row["b_over_a"] = _ratio(results[1].get("tokens_per_s"), results[0].get("tokens_per_s"))
        rows.append(row)
    return rows


RANGES = {
    "--steps": "[2, inf)",
    "--warmup": "[1, inf)",
    "--profile-steps": "[0, inf)",
    "--nproc": "[1, inf)",
    "--timeout": "(0, inf)",
}


def check_arguments(args: argparse.Namespace, extra: list[str], names: list[str]) -> None:
    """Every argument before a tokenizer is trained or a process started: the counts, --warmup below
    --steps, --impls, a CUDA --device that exists, --ab, the folders, and each preset's config with the
    benchmark's and the command line's overrides (the trainer's own checks, the batch over --nproc)."""
    check_flag_ranges(args, RANGES)
    if not args.warmup < args.steps:
        raise ConfigError(f"--warmup: {args.warmup} leaves no measured step below --steps {args.steps}")
    if args.impls and set(args.impls) - set(IMPLS):
        raise ConfigError(f"--impls: unknown {sorted(set(args.impls) - set(IMPLS))}; choose from {IMPLS}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible to torch")
    if args.ab and len(args.ab.split(",")) != 2:
        raise ConfigError(f"--ab {args.ab}: expected two commits, A,B")
    if args.tokenizers:
        existing_path("--tokenizers", args.tokenizers, "folder")
    if args.work:
        writable_folder(args.work, "--work")
    results_folder()
    for name in names:
        config, preset, _ = PRESETS[name]
        overrides = [*preset, *BENCH_OVERRIDES, f"--train.device={args.device}", *extra]
        check_batch(load_config(REPO / config, overrides).train, args.nproc)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Other --section.key=value arguments override the config of every run.",
    )
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument(
        "--config", choices=(*PRESETS, "all"), default=None, help="preset (default: tiny on CPU, all on CUDA)"
    )
    parser.add_argument("--impls", default=None, help=f"comma-separated subset of {','.join(IMPLS)}")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=default_device)
    parser.add_argument("--steps", type=int, default=10, help="measured steps end here (warm-up included)")
    parser.add_argument("--warmup", type=int, default=None, help="steps not measured (default: steps // 3)")
    parser.add_argument(
        "--profile-steps",
        type=int,
        default=None,
        help="profiled steps after the measured (GPU: 2, CPU: 0)",
    )
    parser.add_argument("--nproc", type=int, default=1, help="trainer processes (torchrun); baselines use 1")
    parser.add_argument("--work", default=None, help="tokenizer + run folders (default: temp)")
    parser.add_argument("--tokenizers", default=None, help="folder of prepared tokenizers (default: --work)")
    parser.add_argument(
        "--no-train-tokenizer", action="store_true", help="a tokenizer missing from --tokenizers is an error"
    )
    parser.add_argument(
        "--prepare-tokenizers", action="store_true", help="only build the presets' tokenizers in --tokenizers"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per training process")
    parser.add_argument("--ab", default=None, help="A,B: the trainer of two commits (HEAD: this tree)")
    parser.add_argument("--ab-export", default=None, help="REF,...: write .ab/<ref>.tar for --ab elsewhere")
    add_debug_flag(parser)
    args, extra = parser.parse_known_args(argv)
    if args.ab_export:
        ab_export(args.ab_export.split(","))
        return
    bad = [a for a in extra if not a.startswith("--") or "." not in a.split("=", 1)[0]]
    if bad:
        raise ConfigError(f"unrecognized arguments: {' '.join(bad)} (overrides are --section.key=value)")
    args.impls = tuple(args.impls.split(",")) if args.impls else None
    args.warmup = args.steps // 3 if args.warmup is None else args.warmup
    if args.profile_steps is None:
        args.profile_steps = 2 if args.device == "cuda" else 0
    names = (
        [args.config]
        if args.config not in (None, "all")
        else (list(PRESETS) if args.config == "all" or args.device == "cuda" else ["tiny"])
    )
    check_arguments(args, extra, names)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="clmap_throughput_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.prepare_tokenizers:
        for name in names:
            print(preset_overrides(name, args, extra, work)[-1], flush=True)
        return
    tags = environment_tags(args.device)
    if args.ab:
        refs = args.ab.split(",")
        for name in names:
            for row in bench_ab(name, refs, args, extra, work):
                print(
                    f"{name} A/B {row['impl']}: {row['a']} → {row['b']}: {row['b_over_a']}× tokens/s",
                    flush=True,
                )
                path = append_csv("train_throughput_ab", [{**tags, **row}])
        print(f"wrote A/B rows to {path}")
        return
    for name in names:
        row = bench_config(name, args, extra, work)
        summary = ", ".join(f"{k} {row[k]}" for k in row if k.endswith(("tokens_per_s", "_ratio", "_mfu")))
        print(f"{name}: {summary}", flush=True)
        # Row by row: a timeout in a later preset keeps what was already measured.
        path = append_csv("train_throughput", [{**tags, **row}])
    print(f"wrote {len(names)} rows to {path}")


if __name__ == "__main__":
    sys.exit(run_main(main, None, "benchmarks.train_throughput"))
