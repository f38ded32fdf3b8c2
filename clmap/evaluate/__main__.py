"""Command line: ``python -m clmap.evaluate --checkpoint DIR [...]`` or ``--compare DIR_A DIR_B [...]``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clmap.cli import UserError, add_debug_flag, run_main
from clmap.evaluate import ALL_TASKS, DATA_KEYS, DEFAULT_PAIRS, PROMPT_FORMATS, evaluate
from clmap.evaluate.lm import CheckpointError
from clmap.evaluate.sources import ITEM_SELECTIONS, EvalDataError
from clmap.outputs import output_lock, writable_folder


def build_parser() -> argparse.ArgumentParser:
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
    parser.add_argument("--tasks", default=",".join(ALL_TASKS), help=f"comma list of {', '.join(ALL_TASKS)}")
    parser.add_argument("--pairs", default=",".join(DEFAULT_PAIRS), help="comma list of src-tgt pairs")
    parser.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="TASK=PATH",
        help=f"local input per task ({', '.join(DATA_KEYS)}); repeatable; mt, choice (translation "
        "choice) and lac take any parallel file or FLORES folder, with any pair; default: bundled splits",
    )
    parser.add_argument(
        "--split",
        default="test",
        help="bundled corpus split(s) for MT, choice, LAC and PPL: test, dev, ood or a comma list "
        "(test,ood reports in- and out-of-domain side by side)",
    )
    parser.add_argument("--out", default="eval_report", help="output folder")
    parser.add_argument("--limit", type=int, default=None, help="at most N examples per task and pair")
    parser.add_argument(
        "--items",
        default="sample",
        choices=ITEM_SELECTIONS,
        help="how --limit picks the items: sample (seeded by --seed, stratified over documents, the same "
        "for every checkpoint) or first (the first rows)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-beams", type=int, default=1, help="beam size for MT (1 = greedy)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument(
        "--mt-template",
        default=None,
        help="text prompt template with {src_name} {tgt_name} {src} (implies --prompt-format template)",
    )
    parser.add_argument(
        "--prompt-format",
        default="auto",
        choices=PROMPT_FORMATS,
        help="MT / translation-choice prompt: mapping (<bos> x <2b>, as clmap trains), template "
        "(few-shot text), auto (mapping only for runs that trained tagged pairs: run config "
        "objective.lambda_cl > 0, data.ntp_share < 1, data.parallel_as_text false)",
    )
    parser.add_argument(
        "--few-shot", type=int, default=1, help="solved examples in the text template (dev split)"
    )
    parser.add_argument("--bertscore-model", default=None, help="local encoder folder for BERTScore (CLQA)")
    parser.add_argument(
        "--bertscore-layer",
        type=int,
        default=None,
        help="encoder layer for BERTScore (default: bert-score's tuned layer for that model)",
    )
    parser.add_argument(
        "--lac-layer",
        type=int,
        default=None,
        help="hidden state reported for LAC: 0 = embeddings, i = output of decoder layer i, "
        "the last = after the final norm; default (-1): the middle layer",
    )
    parser.add_argument(
        "--n-boot", type=int, default=1000, help="bootstrap replicates (over documents) for the intervals"
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser


def _data_map(entries: list[str]) -> dict[str, str]:
    data = {}
    for entry in entries:
        task, sep, path = entry.partition("=")
        if not sep or not path:
            raise ValueError(f"--data {entry!r}: expected TASK=PATH")
        data[task.strip()] = path
    return data


def _evaluate_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        tasks=[t.strip() for t in args.tasks.split(",") if t.strip()],
        pairs=args.pairs,
        data=_data_map(args.data),
        limit=args.limit,
        device=args.device,
        batch_size=args.batch_size,
        num_beams=args.num_beams,
        split=args.split,
        max_new_tokens=args.max_new_tokens,
        mt_template=args.mt_template,
        few_shot=args.few_shot,
        prompt_format=args.prompt_format,
        bertscore_model=args.bertscore_model,
        bertscore_layer=args.bertscore_layer,
        lac_layer=args.lac_layer,
        n_boot=args.n_boot,
        seed=args.seed,
        items=args.items,
    )


def run_compare(args: argparse.Namespace) -> Path:
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
            report = evaluate(folder, out_dir=out / f"run{index}_{folder.name}", **_evaluate_kwargs(args))
        named.append((name, report))
    write_comparison(compare_reports(named, args.n_boot, args.seed), out)
    return out / "comparison.md"


USER_ERRORS = (CheckpointError, EvalDataError, FileNotFoundError, ValueError, KeyError)
# The least value of each count option (--limit 0 would score nothing; None, its default, is all).
LEAST = {"limit": 1, "batch_size": 1, "num_beams": 1, "max_new_tokens": 1, "few_shot": 0, "n_boot": 1}


def check_counts(args: argparse.Namespace) -> None:
    """Each count option checked against its meaning before any work, not found wrong deep inside it."""
    for name, least in LEAST.items():
        value = getattr(args, name)
        if value is not None and value < least:
            raise UserError(f"--{name.replace('_', '-')} {value}: must be at least {least}")


def main(argv: list[str] | None = None) -> int:
    """Exit status 2 with one line for a user error (``--debug`` shows the traceback)."""
    return run_main(_main, argv, "clmap.evaluate", user_errors=USER_ERRORS)


def _main(argv: list[str]) -> int:
    parser = build_parser()
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    check_counts(args)
    # --out is checked and locked before any model is loaded (clmap/outputs.py)
    with output_lock(writable_folder(args.out, "--out"), "evaluation"):
        if args.compare:
            written = run_compare(args)
        else:
            evaluate(args.checkpoint, out_dir=args.out, **_evaluate_kwargs(args))
            written = Path(args.out) / "report.md"
    print(written.read_text(encoding="utf-8"))
    print(f"written to {written.parent}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
