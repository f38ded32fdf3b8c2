"""The ablation in one command: does the mapping task help, and by how much?

``python -m clmap.experiments.ablation [--protocol continue|scratch] [--preset cpu|gpu] [--seeds 0,1,2]``

1. one tokenizer for every run (trained once on the training split unless the model brings its own);
2. the runs of the protocol (:mod:`clmap.experiments.recipe`): by default the paper's continued
   pre-training (a stage-1 base model, then every variant continued from it with the same budget,
   seed and tokenizer, plus a scale curve over stage-2 budgets), or every variant from scratch;
3. the evaluator on every run, once per prompt format it is compared in, on the in-domain and
   out-of-domain test splits;
4. the results file (``docs/ablation_results.json``: every run's raw scores), from which the
   statistics, ``docs/ablation_results.md``, the figures and the marked blocks of ``docs/ablation.md``
   are generated (:mod:`clmap.experiments.writeup`). ``--report-only`` regenerates them from the
   results file alone.

``--skip-existing`` keeps finished runs (a run folder with ``hf/``) and matching evaluations, so an
interrupted recipe resumes; an unfinished run resumes from its own checkpoint (the trainer does that).
``--stores DIR`` trains every run from token stores built once in DIR (``recipe.use_stores``), the same
rows as from the corpus files, for corpora that do not fit in memory.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from clmap.cli import add_debug_flag, run_main
from clmap.config import ConfigError, check_flag_ranges, comma_numbers, existing_path
from clmap.experiments import recipe, results, writeup
from clmap.outputs import writable_folder

if TYPE_CHECKING:
    from clmap.evaluate.options import EvalConfig

DEFAULT_TASKS = "mt,clnlu,ppl,lac"
DEFAULT_SPLITS = "test,ood"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m clmap.experiments.ablation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_debug_flag(p)
    add = p.add_argument
    add("--protocol", choices=("continue", "scratch"), default="continue", help="default: continue")
    add("--preset", choices=sorted(recipe.PRESETS), default="cpu", help="sizes and machine settings")
    add("--variants", default=None, help="comma list of configs/ablation/<variant>.toml (preset)")
    add("--seeds", default=None, help="comma list of training seeds (preset: 0,1,2)")
    add("--base-steps", type=int, default=None, help="continue: steps of the stage-1 base model")
    add("--budgets", default=None, help="continue: stage-2 budgets of the scale curve, e.g. 150,600,2400")
    add("--main-budget", type=int, default=None, help="continue: stage-2 steps of every variant and seed")
    add("--stage-lr", default=None, help="continue: peak learning rates of stage 1 and stage 2 (preset)")
    add("--scale-variants", default=None, help="continue: variants of the scale curve (preset)")
    add("--steps", type=int, default=None, help="scratch: override train.steps for every variant")
    add("--out", default=None, help="folder of the runs and evaluations (default runs/STEM_<protocol>)")
    add("--docs", default=str(recipe.REPO / "docs"), help="where the write-up, tables and figures are")
    add("--stem", default=None, help="name of the write-up DOCS/STEM.md and its files (preset: ablation)")
    add("--results", default=None, help="the results file (default DOCS/STEM_results.json)")
    add("--base", default=None, help="shared config (preset: configs/ablation/base.toml)")
    add("--config-dir", default=str(recipe.CONFIG_DIR), help="folder of the variants' override files")
    add("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override for every run")
    add("--tokenizer", default=None, help="an existing tokenizer folder for every run")
    add("--stores", default=None, help="train from token stores built (once) in this folder, not the texts")
    add("--jobs", type=int, default=None, help="independent runs at a time (preset cpu: 2)")
    add("--nproc", type=int, default=1, help="processes per stage-2 / scratch run (torchrun when > 1)")
    add("--threads", type=int, default=None, help="OMP threads per stage-2 / scratch run and evaluation")
    add("--base-nproc", type=int, default=None, help="processes of the stage-1 run")
    add("--base-threads", type=int, default=None, help="OMP threads per process of the stage-1 run")
    add("--eval-limit", type=int, default=None, help="items per task, direction and split (0 = all)")
    add(
        "--eval-task-limit",
        default=None,
        metavar="TASK=N,...",
        help="a task's own --eval-limit, e.g. mt=128 (the evaluator's --task-limit; preset)",
    )
    add("--tasks", default=DEFAULT_TASKS, help="evaluator tasks")
    add("--pairs", default=None, help="evaluation language pairs (preset)")
    add("--splits", default=DEFAULT_SPLITS, help="bundled splits scored side by side (test, ood)")
    add("--device", default=None, help="evaluation device (preset)")
    add(
        "--data",
        action="append",
        default=[],
        metavar="TASK=PATH",
        help="evaluator input per task, repeatable",
    )
    add("--max-new-tokens", type=int, default=None, help="MT generation length")
    add("--eval-batch-size", type=int, default=None)
    add("--skip-existing", action="store_true", help="reuse finished runs/evaluations, resume the rest")
    add("--overwrite", action="store_true", help="delete and redo existing runs and evaluations")
    add("--report-only", action="store_true", help="only regenerate the docs from the results file")
    add("--verbose", action="store_true", help="show the trainer's and evaluator's output")
    return p


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill what the command line left open from the preset; parse the comma lists."""
    for key, value in recipe.PRESETS[args.preset].items():
        if key == "set":  # the preset's overrides first: the command line's win
            args.set = [*value, *args.set]
        elif getattr(args, key) is None:
            setattr(args, key, value)
    split = lambda text: [x.strip() for x in str(text).split(",") if x.strip()]  # noqa: E731
    args.variants, args.scale_variants, args.splits = (
        split(args.variants),
        split(args.scale_variants),
        split(args.splits),
    )
    args.seeds = comma_numbers("--seeds", split(args.seeds), int, 0)
    args.budgets = comma_numbers("--budgets", split(args.budgets), int, 1)
    args.stage_lr = comma_numbers("--stage-lr", split(args.stage_lr), float, 0)
    if len(args.stage_lr) != 2 or not args.stage_lr[1] > 0:
        raise ConfigError(
            f"--stage-lr {args.stage_lr}: expected two learning rates, stage 1 (≥ 0) and stage 2 (> 0)"
        )
    args.eval_task_limit = check_arguments(args).task_limit  # {"mt": 128}: parsed by the evaluator's rules
    if args.protocol == "continue" and args.main_budget not in args.budgets:
        args.budgets = sorted({*args.budgets, args.main_budget})
    args.eval_limit = args.eval_limit or None
    args.base = str(Path(args.base).resolve())
    args.out = str(Path(args.out or f"runs/{args.stem}_{args.protocol}").resolve())
    args.results = Path(args.results or Path(args.docs) / f"{args.stem}_results.json")
    args.timing = {}
    if args.skip_existing and args.overwrite:
        raise ConfigError("--skip-existing and --overwrite exclude each other")
    unknown = [v for v in args.scale_variants if v not in args.variants]
    if args.protocol == "continue" and unknown:
        raise ConfigError(f"--scale-variants {unknown} are not among --variants")
    return args


# Counts of the command line and their ranges (None: unset, the preset's value applies).
COUNTS = {
    "--jobs": "[1, inf)",
    "--nproc": "[1, inf)",
    "--threads": "[1, inf)",
    "--base-nproc": "[1, inf)",
    "--base-threads": "[1, inf)",
    "--base-steps": "[0, inf)",
    "--main-budget": "[1, inf)",
    "--steps": "[1, inf)",
    "--eval-limit": "[0, inf)",
}
# The evaluator's settings the ablation passes on: its own checks (clmap/evaluate/options.py), named
# by the ablation's flags.
EVAL_FLAGS = {
    "tasks": "--tasks",
    "pairs": "--pairs",
    "split": "--splits",
    "limit": "--eval-limit",
    "task_limit": "--eval-task-limit",
    "device": "--device",
    "batch_size": "--eval-batch-size",
    "max_new_tokens": "--max-new-tokens",
    "data": "--data",
}


def check_arguments(args: argparse.Namespace) -> EvalConfig:
    """Every argument against its meaning before any work (a bad one would otherwise surface after
    hours of training, in the evaluator): counts, the variants' files, the base config, the tokenizer
    and, with the evaluator's own rules, what is passed on to it (returned, parsed)."""
    from clmap.evaluate.options import eval_config, task_table

    check_flag_ranges(args, COUNTS)
    config_dir = Path(args.config_dir)
    for variant in args.variants:
        try:
            recipe.variant_overrides(variant, config_dir)
        except FileNotFoundError as exc:
            raise ConfigError(f"--variants: {exc}") from None
    if not args.variants:
        raise ConfigError("--variants: no variant given")
    for flag, path in (("--base", args.base), ("--tokenizer", args.tokenizer)):
        if path is not None:
            existing_path(flag, path)
    settings = {
        "tasks": args.tasks,
        "pairs": args.pairs,
        "split": args.splits,
        "limit": args.eval_limit or None,
        "task_limit": task_table(
            args.eval_task_limit and [args.eval_task_limit], "--eval-task-limit", "N", commas=True
        ),
        "device": args.device,
        "batch_size": args.eval_batch_size,
        "max_new_tokens": args.max_new_tokens,
        "data": task_table(args.data, "--data", "PATH", commas=False),
    }
    return eval_config(settings, name=lambda key: EVAL_FLAGS[key])


def describe_model(args: argparse.Namespace, run: recipe.Run) -> str:
    from clmap.config import load_config

    cfg = load_config(args.base, run.overrides)
    if cfg.model.path:
        return cfg.model.path
    return (
        f"Llama {cfg.model.num_layers} layers × {cfg.model.hidden_size} hidden, "
        f"vocab {cfg.tokenizer.vocab_size}, seq_len {cfg.data.seq_len}, global batch {cfg.train.global_batch}"
    )


def main(argv: list[str] | None = None) -> int:
    args = resolve(build_parser().parse_args(argv))
    for folder, what in ((args.results.parent, "--results"), (Path(args.docs), "--docs")):
        writable_folder(folder, what)  # before hours of training, not after them
    if not args.report_only:
        writable_folder(args.out, "--out")
        if args.stores:
            writable_folder(args.stores, "--stores")
    command = "python -m clmap.experiments.ablation " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.report_only:
        written = writeup.write_docs(results.read_results(args.results), Path(args.docs), args.stem)
        print(f"[ablation] regenerated {', '.join(str(p) for p in written)} from {args.results}")
        return 0
    t_start = time.perf_counter()
    tokenizer = recipe.shared_tokenizer(args)
    runs = recipe.plan_runs(args, tokenizer)
    if args.stores:
        recipe.use_stores(runs, args, tokenizer)
    reports = recipe.execute(runs, args)
    meta = {
        "command": command.strip(),
        "protocol": args.protocol,
        "base": os.path.relpath(args.base, recipe.REPO),
        "model": describe_model(args, runs[0]),
        "seeds": args.seeds,
        "main_budget": args.main_budget if args.protocol == "continue" else runs[0].steps,
        "base_steps": args.base_steps,
        "stage_lr": args.stage_lr,  # peak learning rates of stage 1 and stage 2
        "budgets": args.budgets,
        "scale_variants": args.scale_variants,
        "tasks": args.tasks,
        "pairs": args.pairs,
        "splits": ",".join(args.splits),
        "eval_limit": args.eval_limit,
        "eval_task_limit": args.eval_task_limit,
        "wall_min": (time.perf_counter() - t_start) / 60,
        "train_min": args.timing.get("train", 0.0) / 60,
        "eval_min": args.timing.get("eval", 0.0) / 60,
        **{k: args.timing.get(k, 0) for k in ("train_jobs", "train_reused", "eval_jobs", "eval_reused")},
    }
    records = [results.run_record(run, reports[run.name]) for run in runs]
    results.write_results(args.results, meta, records)
    # after the training a value the page needs but this run lacks (fewer arms, another preset) is
    # named and printed as "–", not a traceback; --report-only regenerates strictly
    written = writeup.write_docs(results.read_results(args.results), Path(args.docs), args.stem, strict=False)
    print(
        f"[ablation] wrote {args.results} and {', '.join(str(p) for p in written)} "
        f"({meta['wall_min']:.1f} min: training {meta['train_min']:.1f}, evaluation {meta['eval_min']:.1f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None, "clmap.experiments.ablation"))
