"""Command line: ``python -m clmap.evaluate --checkpoint DIR [...]`` or ``--compare DIR_A DIR_B [...]``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path

from clmap.cli import add_debug_flag, run_main
from clmap.config import option_summary
from clmap.evaluate import evaluate
from clmap.evaluate.lm import CheckpointError
from clmap.evaluate.options import EvalConfig, eval_config, flag, task_table
from clmap.evaluate.sources import EvalDataError
from clmap.outputs import output_lock, writable_folder


def build_parser() -> argparse.ArgumentParser:
    """The command's own arguments (what to evaluate, where to write), then one flag per
    :class:`EvalConfig` field, its help generated from the field's ``option`` (doc, type, default,
    range). Values stay strings here (None: not given); :func:`eval_config` parses and checks them."""
    parser = argparse.ArgumentParser(
        prog="python -m clmap.evaluate",
        description="Evaluate a clmap run (RUN or RUN/hf) or any local Hugging Face causal LM.",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--checkpoint", help="clmap run folder or Hugging Face model folder")
    target.add_argument(
        "--compare",
        nargs="+",
        metavar="DIR",
        help="two or more checkpoints or report folders (with report.json); deltas vs the first",
    )
    parser.add_argument("--out", default="eval_report", help="output folder")
    hints = typing.get_type_hints(EvalConfig)
    defaults = EvalConfig()
    for f in dataclasses.fields(EvalConfig):
        annotation, default = hints[f.name], getattr(defaults, f.name)
        summary = option_summary(annotation, default, f.metadata)
        parser.add_argument(
            flag(f.name),
            dest=f.name,
            default=None,
            action="append" if typing.get_origin(annotation) is dict else "store",
            metavar={"data": "TASK=PATH", "task_limit": "TASK=N"}.get(f.name, f.name.upper()),
            help=f"{f.metadata['doc']} [{summary}]".replace("%", "%%"),
        )
    return parser


def settings_of(args: argparse.Namespace) -> EvalConfig:
    """The evaluator's settings from the parsed command line, every one checked before any work."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(EvalConfig)}
    given["data"] = task_table(given["data"], "--data", "PATH", commas=False)
    given["task_limit"] = task_table(given["task_limit"], "--task-limit", "N", commas=True)
    return eval_config(given)


def run_compare(args: argparse.Namespace, config: EvalConfig) -> Path:
    """Read each folder's report.json, or evaluate it into OUT/run{i}_{name}; then compare."""
    from clmap.evaluate.report import compare_reports, write_comparison

    if len(args.compare) < 2:
        raise ValueError("--compare needs at least two folders")
    out = Path(args.out)
    named = []
    for index, folder in enumerate(args.compare):
        folder = Path(folder)
        name = f"{index}:{folder.name}"
        if (folder / "report.json").is_file():
            report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        else:
            report = evaluate(folder, out_dir=out / f"run{index}_{folder.name}", config=config)
        named.append((name, report))
    write_comparison(compare_reports(named, config.n_boot, config.seed), out)
    return out / "comparison.md"


USER_ERRORS = (CheckpointError, EvalDataError, FileNotFoundError, ValueError, KeyError)


def main(argv: list[str] | None = None) -> int:
    """Exit status 2 with one line for a user error (``--debug`` shows the traceback)."""
    return run_main(_main, argv, "clmap.evaluate", user_errors=USER_ERRORS)


def _main(argv: list[str]) -> int:
    parser = build_parser()
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    config = settings_of(args)
    # --out is checked and locked before any model is loaded (clmap/outputs.py)
    with output_lock(writable_folder(args.out, "--out"), "evaluation"):
        if args.compare:
            written = run_compare(args, config)
        else:
            evaluate(args.checkpoint, out_dir=args.out, config=config)
            written = Path(args.out) / "report.md"
    print(written.read_text(encoding="utf-8"))
    print(f"written to {written.parent}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
