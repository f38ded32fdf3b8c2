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

from clmap.launch import train_command

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nproc", type=int, default=2, help="training processes (FSDP2 over gloo on CPU)")
    parser.add_argument("--config", default=str(REPO / "configs" / "tiny.toml"))
    parser.add_argument("--run-dir", default=str(REPO / "runs" / "tiny"))
    parser.add_argument("--eval-limit", type=int, default=200, help="examples per evaluation task and pair")
    args, overrides = parser.parse_known_args(argv)

    run_dir = Path(args.run_dir)
    started = time.perf_counter()
    train = train_command(args.nproc, ["--config", args.config, f"--run_dir={run_dir}", *overrides])
    print("$", " ".join(train), flush=True)
    subprocess.run(train, check=True, cwd=REPO)
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
    subprocess.run(evaluate, check=True, cwd=REPO)
    total = time.perf_counter() - started

    print("\n" + (eval_dir / "report.md").read_text())
    print(f"training: {trained / 60:.1f} min, training + evaluation: {total / 60:.1f} min")
    print(f"run folder:   {run_dir}  (metrics.jsonl, tensorboard/, checkpoints/, hf/)")
    print(f"report:       {eval_dir / 'report.md'}  and  {eval_dir / 'report.json'}")
    print(f"plots:        {', '.join(str(p) for p in sorted(eval_dir.glob('*.png')))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
