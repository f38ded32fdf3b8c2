"""The evaluator's settings, declared like the trainer's (:func:`clmap.config.option`): each field of
:class:`EvalConfig` is one flag of ``python -m clmap.evaluate`` (``batch_size`` is ``--batch-size``),
and its type, doc and range are what ``--help`` prints and what :func:`eval_config` checks, up front,
before any model is loaded."""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from clmap.config import NOT_COMPARED, ConfigError, check_ranges, coerce, option
from clmap.evaluate.sources import ItemSelection
from clmap.evaluate.tasks import ALL_TASKS, DATA_KEYS

PromptFormatName = Literal["auto", "mapping", "template"]
# How MT and translation choice prompt a model (clmap.evaluate.mt.choose_prompt_format).
PROMPT_FORMATS: tuple[str, ...] = typing.get_args(PromptFormatName)
DEFAULT_PAIRS = ("en-cs", "cs-uk", "zh-ja")

# an evaluation is never resumed: its options are not compared against a run folder
eval_option = functools.partial(option, resume=NOT_COMPARED)


@dataclass
class EvalConfig:
    """How a checkpoint is evaluated (what is evaluated, ``--checkpoint``/``--compare``, and where the
    report goes, ``--out``, are the command's own arguments)."""

    tasks: list[str] = eval_option(list(ALL_TASKS), f"comma list of {', '.join(ALL_TASKS)}; empty: all")
    pairs: list[str] = eval_option(list(DEFAULT_PAIRS), "comma list of src-tgt pairs")
    data: dict[str, str] = eval_option(
        {},
        f"TASK=PATH: local input per task ({', '.join(DATA_KEYS)}); repeatable; mt, choice (translation "
        "choice) and lac take any parallel file or FLORES folder, with any pair; default: bundled splits",
    )
    split: list[str] = eval_option(
        ["test"],
        "bundled corpus split(s) for MT, choice, LAC and PPL: test, dev, ood or a comma list "
        "(test,ood reports in- and out-of-domain side by side)",
    )
    limit: int | None = eval_option(
        None, "at most N items per task and pair (language); unset: all", range="[1, inf)"
    )
    task_limit: dict[str, int] = eval_option(
        {},
        "TASK=N: a task's own --limit, e.g. mt=128 beside --limit 256 (generation costs more than "
        "scoring); comma list or repeatable; N >= 1",
    )
    items: ItemSelection = eval_option(
        "sample",
        "how --limit picks the items: sample (seeded by --seed, stratified over documents, the same "
        "for every checkpoint) or first (the first rows)",
    )
    device: str = eval_option("cpu", "cpu or cuda")
    batch_size: int = eval_option(8, "sequences per forward pass", range="[1, inf)")
    num_beams: int = eval_option(1, "beam size for MT (1 = greedy)", range="[1, inf)")
    max_new_tokens: int = eval_option(
        128, "longest generation (MT, CLQA, CLSum), in tokens", range="[1, inf)"
    )
    mt_template: str | None = eval_option(
        None, "text prompt template with {src_name} {tgt_name} {src} (implies --prompt-format template)"
    )
    prompt_format: PromptFormatName = eval_option(
        "auto",
        "MT / translation-choice prompt: mapping (<bos> x <2b>, as clmap trains), template "
        "(few-shot text), auto (mapping only for runs that trained tagged pairs: run config "
        "objective.lambda_cl > 0, data.ntp_share < 1, data.parallel_as_text false)",
    )
    few_shot: int = eval_option(1, "solved examples in the text template (dev split)", range="[0, inf)")
    bertscore_model: str | None = eval_option(None, "local encoder folder for BERTScore (CLQA)")
    bertscore_layer: int | None = eval_option(
        None, "encoder layer for BERTScore; unset: bert-score's tuned layer for that model", range="[0, inf)"
    )
    lac_layer: int | None = eval_option(
        None,
        "hidden state reported for LAC: 0 = embeddings, i = output of decoder layer i, the last = after "
        "the final norm, -1 = the middle layer; unset: -1",
        range="[-1, inf)",
    )
    n_boot: int = eval_option(
        1000, "bootstrap replicates (over documents) for the intervals", range="[1, inf)"
    )
    seed: int = eval_option(0, "seed of the item sample, the distractors and the bootstrap")


def flag(name: str) -> str:
    """The command-line flag of a field: ``batch_size`` → ``--batch-size``."""
    return "--" + name.replace("_", "-")


def eval_config(settings: Mapping[str, object], name: Callable[[str], str] = flag) -> EvalConfig:
    """An :class:`EvalConfig` from ``settings`` (field name → value; strings from the command line are
    parsed, None leaves the default), every field checked: its type, its range, the task names, the
    ``--data`` keys, the pairs and the splits. An error is one line naming the flag and the rule."""
    config = EvalConfig()
    hints = typing.get_type_hints(EvalConfig)
    fields = [f.name for f in dataclasses.fields(EvalConfig)]
    for key, value in settings.items():
        if key not in fields:
            raise TypeError(f"evaluate() has no setting {key!r}; settings: {', '.join(fields)}")
        if key == "data" and isinstance(value, Mapping):  # paths may be Path objects; empty ones mean none
            value = {str(k): str(v) for k, v in value.items() if v}
        if value is not None:
            setattr(config, key, coerce(value, hints[key], name(key)))
    check_ranges(config, name)
    config.tasks = config.tasks or list(ALL_TASKS)
    unknown = [t for t in config.tasks if t not in ALL_TASKS]
    if unknown:
        raise ConfigError(f"{name('tasks')}: unknown task(s) {unknown}; choose from {', '.join(ALL_TASKS)}")
    bad_limits = [f"{k}={n}" for k, n in config.task_limit.items() if k not in ALL_TASKS or n < 1]
    if bad_limits:
        raise ConfigError(
            f"{name('task_limit')}: {', '.join(bad_limits)} not of the form TASK=N with a task of "
            f"{', '.join(ALL_TASKS)} and N >= 1"
        )
    bad_keys = [k for k in config.data if k not in DATA_KEYS]
    if bad_keys:
        raise ConfigError(
            f"{name('data')} keys {bad_keys} unknown; use {', '.join(DATA_KEYS)} (e.g. mt=PATH)"
        )
    parse_pairs(config.pairs, name("pairs"))
    parse_splits(config.split, name("split"))
    check_bundled_inputs(config, name)
    return config


def check_bundled_inputs(config: EvalConfig, name: Callable[[str], str] = flag) -> None:
    """What ``config``'s tasks would read from the bundled corpus (every task without a ``--data``
    file) is there: its pairs, languages and splits, before any model work (one line naming the flag)."""
    from clmap.evaluate.sources import check_bundled_coverage
    from clmap.evaluate.tasks import TASKS

    tasks = [TASKS[task] for task in config.tasks]
    reads_bundled = [t for t in tasks if t.bundled is not None and t.data_keys[0] not in config.data]
    pair_keys = [t.data_keys[0] for t in reads_bundled if t.bundled == "pairs"]
    pairs = parse_pairs(config.pairs, name("pairs"))
    languages = list(dict.fromkeys(lang for pair in pairs for lang in pair))
    check_bundled_coverage(
        pairs if pair_keys else [],
        languages if any(t.bundled == "languages" for t in reads_bundled) else [],
        pair_keys,
        parse_splits(config.split, name("split")),
        name,
    )


def task_table(entries: list[str] | None, option: str, value: str, commas: bool) -> dict[str, str] | None:
    """``["mt=PATH", ...]`` (a repeated ``option``) → ``{"mt": "PATH"}``; with ``commas`` an entry may
    hold several (``mt=128,clnlu=256``; paths may contain commas, so ``--data`` takes one each)."""
    if entries is None:
        return None
    table = {}
    for entry in (e for given in entries for e in (given.split(",") if commas else [given])):
        task, sep, text = entry.partition("=")
        if not sep or not task.strip() or not text:
            raise ConfigError(f"{option} {entry!r}: expected TASK={value}")
        table[task.strip()] = text
    return table


def parse_pairs(pairs: str | Sequence[str], where: str = "--pairs") -> list[tuple[str, str]]:
    """``"en-cs,zh-ja"`` → [("en", "cs"), ("zh", "ja")]; rejects malformed codes early."""
    items = pairs.split(",") if isinstance(pairs, str) else list(pairs)
    parsed = []
    for item in (p.strip() for p in items if p.strip()):
        a, sep, b = item.partition("-")
        if not sep or not a or not b or a == b:
            raise ConfigError(
                f"{where}: language pair {item!r} is not of the form 'src-tgt' with two different codes"
            )
        parsed.append((a, b))
    if not parsed:
        raise ConfigError(f"{where}: no language pair given (expected a comma list such as en-cs,zh-ja)")
    return parsed


def parse_splits(split: str | Sequence[str], where: str = "--split") -> list[str]:
    """``"test,ood"`` → ["test", "ood"]: the bundled splits MT, translation choice, LAC and PPL score."""
    items = split.split(",") if isinstance(split, str) else list(split)
    splits = list(dict.fromkeys(s.strip() for s in items if s.strip()))
    bad = [s for s in splits if not re.fullmatch(r"[A-Za-z0-9_]+", s)]
    if not splits or bad:
        raise ConfigError(
            f"{where} {','.join(items)!r}: expected a comma list of split names such as test,ood"
        )
    return splits
