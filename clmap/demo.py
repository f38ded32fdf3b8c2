"""``make demo``: train the embedded default on the CPU with two processes, then evaluate it.

Runs ``torchrun --nproc_per_node=N -m clmap.train --config configs/tiny.toml`` and
``python -m clmap.evaluate --checkpoint RUN``, then prints the report and where everything is.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from clmap.cli import DEBUG_FLAG, add_debug_flag, run_main
from clmap.config import check_flag_ranges
from clmap.launch import train_command
from clmap.outputs import writable_folder

REPO = Path(__file__).resolve().parent.parent


PROG = "clmap.demo"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m {PROG}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nproc", type=int, default=2, help="training processes (FSDP2 over gloo on CPU)")
    parser.add_argument("--config", default=str(REPO / "configs" / "tiny.toml"))
    parser.add_argument("--run-dir", default=str(REPO / "runs" / "tiny"))
    parser.add_argument("--eval-limit", type=int, default=200, help="examples per evaluation task and pair")
    add_debug_flag(parser)
    return parser


def check_arguments(args: argparse.Namespace, train_args: list[str]) -> None:
    """Everything the two commands will be given, before either starts: the process count, the
    trainer's config and overrides (its own checks, and the batch split over --nproc), --eval-limit (the
    evaluator's --limit rule) and the run folder, writable."""
    from clmap.config import check_batch
    from clmap.evaluate.options import eval_config
    from clmap.train import config_from_args

    check_flag_ranges(args, {"--nproc": "[1, inf)"})
    eval_config({"limit": args.eval_limit}, name=lambda key: "--eval-limit")
    check_batch(config_from_args(train_args).train, args.nproc)
    writable_folder(args.run_dir, "--run-dir")


def main(argv: list[str] | None = None) -> int:
    """Exit status 2 with one line for a bad argument; a failing step's own exit status otherwise."""
    return run_main(_main, argv, PROG)


def _main(argv: list[str]) -> int:
    args, overrides = build_parser().parse_known_args(argv)
    run_dir = Path(args.run_dir)
    train_args = ["--config", args.config, f"--run_dir={run_dir}", *overrides]
    if args.debug:  # the trainer's traceback too
        train_args.append(DEBUG_FLAG)
    check_arguments(args, train_args)
    started = time.perf_counter()
    train = train_command(args.nproc, train_args)
    print("$", " ".join(train), flush=True)
    status = subprocess.run(train, cwd=REPO).returncode
    if status:  # the trainer said why (one line for a user error)
        return status
    trained = time.perf_counter() - started

    eval_dir = run_dir / "eval"
    evaluate = [
        sys.executable,
        "-m",
        "clmap.evaluate",
        "--checkpoint",
        str(run_dir),
        "--out",
        str(eval_dir),
        "--limit",
        str(args.eval_limit),
    ]
    print("$", " ".join(evaluate), flush=True)
    status = subprocess.run(evaluate, cwd=REPO).returncode
    if status:
        return status
    total = time.perf_counter() - started

    print("\n" + (eval_dir / "report.md").read_text())
    print(f"training: {trained / 60:.1f} min, training + evaluation: {total / 60:.1f} min")
    print(f"run folder:   {run_dir}  (metrics.jsonl, tensorboard/, checkpoints/, hf/)")
    print(f"report:       {eval_dir / 'report.md'}  and  {eval_dir / 'report.json'}")
    print(f"plots:        {', '.join(str(p) for p in sorted(eval_dir.glob('*.png')))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
