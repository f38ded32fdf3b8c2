"""Evaluate a clmap run or any local Hugging Face causal LM on the project's tasks (docs/design.md,
"Evaluation"): MT, CLNLU, CLQA, cross-lingual summarisation, per-language perplexity and LAC, one
module each under :mod:`clmap.evaluate.tasks`.

``evaluate(...)`` runs the chosen tasks and, given ``out_dir``, writes report.json, report.md and the
plots; ``python -m clmap.evaluate`` is its command line, its flags the fields of
:class:`clmap.evaluate.options.EvalConfig`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from clmap.evaluate.options import (
    DEFAULT_PAIRS,
    PROMPT_FORMATS,
    EvalConfig,
    check_bundled_inputs,
    eval_config,
    parse_pairs,
    parse_splits,
)
from clmap.evaluate.sources import EvalDataError
from clmap.evaluate.tasks import ALL_TASKS, DATA_KEYS, TASKS

__all__ = [
    "ALL_TASKS",
    "DATA_KEYS",
    "DEFAULT_PAIRS",
    "PROMPT_FORMATS",
    "EvalConfig",
    "EvalDataError",
    "evaluate",
    "parse_pairs",
    "parse_splits",
]


def evaluate(
    checkpoint: str | Path, out_dir: str | Path | None = None, config: EvalConfig | None = None, **settings
) -> dict:
    """Run the tasks of ``config`` (or of ``settings``: :class:`~clmap.evaluate.options.EvalConfig`
    fields, e.g. ``tasks=["mt"], limit=8``) on ``checkpoint``; returns the report (and writes it to
    ``out_dir``).

    Without ``--data`` for a task, MT, translation choice, LAC and perplexity read the bundled corpus,
    once per split (``"test,ood"`` scores in- and out-of-domain side by side; a split a pair lacks is
    skipped with a note), while Belebele, CLQA and CLSum (no bundled data) are skipped with a note.
    ``prompt_format`` ``auto`` follows what the run trained (:func:`clmap.evaluate.mt.choose_prompt_format`).
    ``limit`` items per pair / language are a sample stratified over documents, seeded by ``seed``,
    the same for every checkpoint and recorded by id; chrF++, accuracies and LAC carry a 95 % bootstrap
    interval over documents, or say that there are too few documents for one
    (:mod:`clmap.evaluate.bootstrap`).
    """
    import torch

    from clmap.evaluate.lm import load_checkpoint
    from clmap.evaluate.mt import choose_prompt_format
    from clmap.evaluate.report import write_report
    from clmap.evaluate.tasks import EvalContext

    if config is None:
        config = eval_config(settings)
    elif settings:
        raise TypeError("evaluate(): pass either config or settings, not both")
    tasks = [TASKS[name] for name in config.tasks]
    data = dict(config.data)
    pairs, splits = parse_pairs(config.pairs), parse_splits(config.split)
    prompt = choose_prompt_format(checkpoint, config.prompt_format, config.mt_template)
    check_bundled_inputs(config)
    torch.manual_seed(config.seed)
    lm = load_checkpoint(checkpoint, device=config.device)
    context = EvalContext(Path(checkpoint), config, lm, pairs, splits, data, prompt)
    for task in tasks:  # every setting the loaded model judges, before any task runs
        task.check(context)
    report: dict = {
        "checkpoint": str(checkpoint),
        "settings": {
            "tasks": ",".join(config.tasks),
            "pairs": ",".join(f"{a}-{b}" for a, b in pairs),
            "split": ",".join(splits),
            "limit": config.limit,
            "task_limit": dict(config.task_limit) or None,
            "items": config.items,
            "num_beams": config.num_beams,
            "device": config.device,
            "prompt_format": config.prompt_format,
            "prompt": f"{prompt.name} ({prompt.reason})",
            "few_shot": config.few_shot if prompt.name == "template" else None,
        },
        "tasks": {},
    }
    for task in tasks:
        print(f"[clmap.evaluate] {task.name} ...", file=sys.stderr)
        result = task.run(context)
        result.note_empty_generations()
        report["tasks"][task.name] = result.to_dict()
    if out_dir is not None:
        write_report(report, out_dir)
    return report
