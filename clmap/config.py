"""The one configuration of a run: dataclasses, loaded from TOML and overridden from the command line.

``python -m clmap.train --config configs/tiny.toml --optim.lr=3e-4 --data.pairs=en-cs,cs-uk``.
An unknown key or a value of the wrong type is an error that names the valid keys. Every field is
declared once, by ``option(default, doc, range=..., resume=...)``: its type (the annotation), a one-line
doc, its allowed range (checked at load by ``validate``) and how a resume treats a change of it (read by
clmap/run_folder.py), all in the field's metadata; ``python -m clmap.train --help`` lists them, generated
from these dataclasses by ``config_help``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from clmap.cli import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


# How a resume treats a change of a field against the run folder's config.json (clmap/run_folder.py).
SAFE = "safe"  # may differ (steps, logging, checkpoint cadence, evaluation, devices): applied and printed
TRAINED = "trained"  # alters what is trained: refused unless listed in resume.allow_changes
NOT_COMPARED = "not compared"  # where the folder lives, how this one command resumes; evaluator options
RESUME_CLASSES = (SAFE, TRAINED, NOT_COMPARED)


def option(default, doc: str, *, range: str | None = None, resume: str | None = None):
    """A config field, declared once: its default, one-line doc (``--help`` prints it), allowed ``range``
    in interval notation (``"[1, inf)"``, checked at load) and its ``resume`` class (SAFE, TRAINED or
    NOT_COMPARED). A leaf field must name its resume class: when in doubt TRAINED, since a refused resume
    can be allowed while a silent change cannot be seen. A section (a dataclass default) takes neither."""
    section = dataclasses.is_dataclass(default)
    if section and (range is not None or resume is not None):
        raise TypeError("a config section takes no range or resume class")
    if not section and resume not in RESUME_CLASSES:
        raise TypeError(f"option({default!r}, {doc!r}): resume must be one of {RESUME_CLASSES}")
    if range is not None:
        _parse_interval(range)
    metadata = {"doc": doc, "range": range, "resume": resume}
    if isinstance(default, (list, dict)) or section:
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _parse_interval(interval: str) -> tuple[float, float]:
    """``"[1, inf)"`` → ``(1.0, inf)``; a malformed range is a programming error, raised at import."""
    if interval[:1] not in "[(" or interval[-1:] not in "])" or interval.count(",") != 1:
        raise ValueError(f"range {interval!r} is not written like [lo, hi] or (lo, inf)")
    lo, hi = (float(x) for x in interval[1:-1].split(","))
    return lo, hi


@dataclass
class ModelConfig:
    """A local Hugging Face causal LM (``path``) or a Llama-architecture model built from these fields."""

    path: str = option(
        "",
        "local Hugging Face causal-LM folder to continue from; empty: build the model below",
        resume=TRAINED,
    )
    hidden_size: int = option(
        128, "width of the built model (ignored with model.path)", range="[1, inf)", resume=TRAINED
    )
    intermediate_size: int = option(
        384, "MLP inner width of the built model", range="[1, inf)", resume=TRAINED
    )
    num_layers: int = option(4, "decoder layers of the built model", range="[1, inf)", resume=TRAINED)
    num_heads: int = option(
        4, "attention heads of the built model; must divide hidden_size", range="[1, inf)", resume=TRAINED
    )
    num_kv_heads: int = option(
        2,
        "key/value heads (grouped-query attention); must divide num_heads",
        range="[1, inf)",
        resume=TRAINED,
    )
    max_position: int = option(
        2048,
        "longest sequence the built model supports, in tokens (≥ data.seq_len)",
        range="[1, inf)",
        resume=TRAINED,
    )
    rope_theta: float = option(
        10000.0, "RoPE base frequency of the built model", range="(0, inf)", resume=TRAINED
    )
    tie_embeddings: bool = option(
        True, "share the input embedding and the output projection (built model)", resume=TRAINED
    )
    # the same attention computed by another kernel
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2", "varlen_attn"] = option(
        "auto",
        "attention kernel; auto: flash_attention_2 if flash-attn is importable on CUDA, else torch's "
        "varlen_attn on CUDA (torch >= 2.10), else sdpa",
        resume=SAFE,
    )
    # how parameters are sharded; DCP reshards on load
    fsdp_wrap: list[str] = option(
        [],
        "module classes sharded as one FSDP unit each (LlamaDecoderLayer); empty: its _no_split_modules",
        resume=SAFE,
    )
    # what a new run starts from (a resume reads its own checkpoints)
    init_from: str = option(
        "",
        "run to start from: its weights (hf/ export, else last checkpoint) and tokenizer; fresh optimizer",
        resume=TRAINED,
    )


@dataclass
class TokenizerConfig:
    """A local tokenizer folder (``path``) or one trained on the training corpus (``kind``)."""

    path: str = option(
        "", "local tokenizer folder; empty: model.path's tokenizer, else one trained here", resume=TRAINED
    )
    kind: Literal["sentencepiece", "bpe"] = option(
        "sentencepiece",
        "tokenizer trained when none is given: SentencePiece (byte fallback), byte-level BPE",
        resume=TRAINED,
    )
    vocab_size: int = option(
        8000,
        "vocabulary size of a trained tokenizer (special pieces included)",
        range="[1, inf)",
        resume=TRAINED,
    )
    tag_format: str = option(
        "",
        'language tag, {lang} replaced; "": <2xx> special pieces (trained), "\\n[xx] " text (pretrained)',
        resume=TRAINED,
    )
    train_sentences: int = option(
        200_000,
        "sentences sampled from the training corpus to train the tokenizer",
        range="[1, inf)",
        resume=TRAINED,
    )


@dataclass
class DataConfig:
    """Where text comes from and how samples are mixed, built into sequences and packed."""

    corpus: str = option(
        "bundled", 'a folder laid out like clmap/assets/corpus, or "bundled"', resume=TRAINED
    )
    languages: list[str] = option(
        ["en", "cs", "zh", "ja", "uk"], "languages of the NTP streams (ISO codes)", resume=TRAINED
    )
    pairs: list[str] = option(
        ["en-cs", "en-zh", "en-ja", "en-uk", "cs-uk", "zh-ja"],
        "language pairs a-b of the mapping task",
        resume=TRAINED,
    )
    mono_paths: dict[str, str] = option(
        {},
        "lang → file or folder that replaces the corpus' monolingual train",
        resume=TRAINED,
    )
    parallel_paths: dict[str, str] = option(
        {},
        '"a-b" → file or folder that replaces the corpus\' parallel train',
        resume=TRAINED,
    )
    # shorter rows leave a pair (both directions in one row) ≤ 6 tokens a side
    seq_len: int = option(256, "tokens per training row", range="[32, inf)", resume=TRAINED)
    packing: bool = option(
        True, "pack several samples into one row (false: one sample per row, padded)", resume=TRAINED
    )
    temperature: float = option(
        3.0,
        "source sampling p ∝ n^(1/T), T > 0: 1 proportional to size, larger flattens towards uniform",
        range="(0, inf)",
        resume=TRAINED,
    )
    ntp_share: float = option(
        0.5,
        "share of samples drawn from the monolingual (NTP) streams, in [0, 1]",
        range="[0, 1]",
        resume=TRAINED,
    )
    cl_directions: Literal["both", "forward"] = option(
        "both",
        "mapping directions: both (a→b and b→a) or forward (a→b only, the one-direction ablation)",
        resume=TRAINED,
    )
    parallel_as_text: bool = option(
        False,
        "ablation: pairs as plain concatenated NTP text, no tags, no masking",
        resume=TRAINED,
    )
    placebo_pairs: bool = option(
        False,
        "ablation placebo: each source paired with the target of another pair of its language pair "
        "(seeded by train.seed), everything else as real pairs",
        resume=TRAINED,
    )
    parallel_as_mono: bool = option(
        False,
        "each side of a pair as its own NTP document in its language (no pairing, tags or masking)",
        resume=TRAINED,
    )
    max_segment_tokens: int = option(
        120, "each side of a pair is cut to this many tokens", range="[1, inf)", resume=TRAINED
    )
    pack_window: int = option(256, "samples planned together by the packer", range="[1, inf)", resume=TRAINED)
    store: str = option(
        "",
        "folder of token stores (python -m clmap.data.store build --config ...) to train from, read "
        "memory-mapped; empty: read and tokenise the corpus files",
        resume=TRAINED,
    )
    weights: dict[str, float] = option(
        {},
        'language or pair → sampling weight ("en=2,en-cs=0.5"): p ∝ weight × n^(1/T) within its task; '
        "1 when not named",
        resume=TRAINED,
    )
    token_budget: dict[str, int] = option(
        {},
        "language or pair → most tokens of its training data used (its first records); not named: all",
        resume=TRAINED,
    )
    # evaluation only
    dev_pairs: int = option(
        64,
        "dev records per language and per pair for the periodic dev loss and LAC",
        range="[1, inf)",
        resume=SAFE,
    )


@dataclass
class ObjectiveConfig:
    """L = L_NTP + λ_CL·L_CL + λ_map·L_map (docs/design.md, "The objective")."""

    lambda_cl: float = option(
        1.0,
        "λ_CL, weight of the cross-lingual (translation) token loss, ≥ 0",
        range="[0, inf)",
        resume=TRAINED,
    )
    lambda_map: float = option(
        0.1,
        "λ_map, weight of the mapping loss between the pooled spans of a pair, ≥ 0",
        range="[0, inf)",
        resume=TRAINED,
    )
    map_layer: int = option(
        -1,
        "hidden state mapped: 0 embeddings, i after decoder layer i, -1 the middle layer",
        range="[-1, inf)",
        resume=TRAINED,
    )
    map_loss: Literal["cosine", "centered", "infonce", "margin"] = option(
        "cosine",
        "mapping loss: cosine (the paper's 1 − cos per pair); centered, infonce, margin compare each pair "
        "with the step's other pairs, on all ranks, after removing a mean (map_center; docs/design.md)",
        resume=TRAINED,
    )
    map_center: Literal["language", "all"] = option(
        "language",
        "mean removed by the centered/infonce/margin forms: each language's over the step's pooled states, "
        "or all of them together",
        resume=TRAINED,
    )
    infonce_temperature: float = option(
        0.05, "softmax temperature of the infonce mapping loss, > 0", range="(0, inf)", resume=TRAINED
    )
    map_margin: float = option(
        0.2,
        "margin mapping loss: how far a pair's centred cosine must exceed a non-pair's, ≥ 0",
        range="[0, inf)",
        resume=TRAINED,
    )
    z_loss: float = option(
        0.0,
        "weight of the z-loss (squared log of the softmax normaliser) on every token loss; 0 off",
        range="[0, inf)",
        resume=TRAINED,
    )
    loss_accum_dtype: Literal["fp32", "bf16"] = option(
        "fp32",
        "fused loss: dtype of its logits chunks and weight-gradient sum; bf16 (bf16 compute) saves memory",
        resume=TRAINED,
    )


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay."""

    lr: float = option(
        1e-3, "peak learning rate, reached after warmup_steps", range="(0, inf)", resume=TRAINED
    )
    min_lr_ratio: float = option(
        0.1, "final learning rate as a fraction of lr, in [0, 1]", range="[0, 1]", resume=TRAINED
    )
    warmup_steps: int = option(
        20, "optimizer steps of linear warm-up from lr/warmup_steps to lr", range="[0, inf)", resume=TRAINED
    )
    weight_decay: float = option(
        0.1,
        "AdamW decoupled weight decay on matrices and embeddings (none on norms and biases)",
        range="[0, inf)",
        resume=TRAINED,
    )
    beta1: float = option(0.9, "AdamW β1, in [0, 1)", range="[0, 1)", resume=TRAINED)
    beta2: float = option(0.95, "AdamW β2, in [0, 1)", range="[0, 1)", resume=TRAINED)
    eps: float = option(1e-8, "AdamW ε", range="(0, inf)", resume=TRAINED)
    grad_clip: float = option(
        1.0, "clip the global gradient norm to this; 0 disables", range="[0, inf)", resume=TRAINED
    )


@dataclass
class TrainConfig:
    """Steps, batch sizes, precision and the process group."""

    # a longer or shorter run: the cosine schedule then ends at the new last step
    steps: int = option(200, "optimizer steps of the whole run", range="[1, inf)", resume=SAFE)
    global_batch: int = option(
        16,
        "rows per optimizer step, all ranks together; a multiple of micro_batch × world size",
        resume=TRAINED,
    )
    # gradient accumulation only: the same step in other slices
    micro_batch: int = option(
        8, "rows per forward on one rank (gradient accumulation fills global_batch)", resume=SAFE
    )
    seed: int = option(
        0,
        "seed of the model initialisation, the data stream and the tokenizer sample",
        range="[0, inf)",
        resume=TRAINED,
    )
    device: Literal["auto", "cpu", "cuda"] = option(
        "auto", "device; auto: cuda if available, else cpu", resume=SAFE
    )
    mixed_precision: Literal["auto", "bf16", "fp32"] = option(
        "auto",
        "compute precision (parameters stay fp32); auto: bf16 on CUDA and, for models of ≥ 100M "
        "parameters, on CPUs with AMX-BF16 or AVX512-BF16; fp32 otherwise",
        resume=SAFE,
    )
    activation_checkpointing: bool = option(
        False, "recompute each decoder layer's activations in backward", resume=SAFE
    )
    max_nonfinite_in_a_row: int = option(
        5,
        "non-finite steps (skipped, not applied) tolerated in a row; checked at log and checkpoint steps",
        range="[0, inf)",
        resume=SAFE,
    )
    backend: Literal["auto", "nccl", "gloo"] = option(
        "auto",
        "torch.distributed backend; auto: nccl on CUDA, gloo on CPU",
        resume=SAFE,
    )
    # the same blocks, compiled or not
    compile: Literal["auto", "true", "false"] = option(
        "auto",
        "torch.compile each decoder block; auto: on CUDA only (CPU compile time outweighs the gain)",
        resume=SAFE,
    )
    reshard_after_forward: Literal["auto", "true", "false"] = option(
        "auto",
        "FSDP2: free gathered block parameters after forward (re-gathered in backward); auto: ranks > 1",
        resume=SAFE,
    )
    fsdp_prefetch: int = option(
        0,
        "FSDP2: blocks whose all-gather is issued ahead, forward and backward; 0: FSDP2's implicit one",
        range="[0, inf)",
        resume=SAFE,
    )
    # how far ahead rows are prepared, not which rows
    prefetch_steps: int = option(
        2,
        "steps of data a background thread prepares ahead (rows drawn, collated, pinned), ≥ 1",
        range="[1, inf)",
        resume=SAFE,
    )


@dataclass
class CheckpointConfig:
    """Distributed checkpoints in run_dir/checkpoints and the final Hugging Face export."""

    every: int = option(
        100,
        "save a checkpoint every this many steps (and at the last step unless at_end=false)",
        range="[1, inf)",
        resume=SAFE,
    )
    at_end: bool = option(
        True,
        "save a checkpoint after the last step; false for benchmarks (a SIGTERM still saves one)",
        resume=SAFE,
    )
    keep: int = option(
        2, "newest complete checkpoints kept; older ones are deleted", range="[1, inf)", resume=SAFE
    )
    resume: bool = option(
        True,
        "continue from run_dir's newest usable checkpoint; false: step 0, old ones moved to replaced-*/",
        resume=NOT_COMPARED,
    )
    export_hf: bool = option(
        True, "at the end, write a Hugging Face model and tokenizer to run_dir/hf", resume=SAFE
    )


@dataclass
class ResumeConfig:
    """What a resumed run may change against the run folder's config.json (the contract of the run)."""

    allow_changes: list[str] = option(
        [],
        "fields (section.key or a whole section) a resume may change although they alter what is trained",
        resume=NOT_COMPARED,
    )


@dataclass
class MetricsConfig:
    """What is logged to run_dir/metrics.jsonl (and TensorBoard), and how often."""

    log_every: int = option(
        1,
        "log metrics (means over the steps since the last line) every this many steps; only these sync",
        range="[1, inf)",
        resume=SAFE,
    )
    tensorboard: bool = option(True, "also write TensorBoard event files to run_dir/tensorboard", resume=SAFE)
    eval_every: int = option(
        100,
        "dev loss per task + LAC on a small dev set every this many steps; 0 off",
        range="[0, inf)",
        resume=SAFE,
    )
    progress: bool = option(True, "show a progress bar on rank 0", resume=SAFE)


@dataclass
class ProfileConfig:
    """A torch.profiler trace over a few steps, written to run_dir/profile."""

    enabled: bool = option(
        False, "trace the first wait + warmup + active steps (also: --profile)", resume=SAFE
    )
    wait: int = option(1, "steps skipped before the profiler warms up", range="[0, inf)", resume=SAFE)
    warmup: int = option(1, "steps the profiler runs without recording", range="[0, inf)", resume=SAFE)
    active: int = option(3, "steps recorded in the trace", range="[1, inf)", resume=SAFE)


@dataclass
class Config:
    """Everything about one run; each section is a ``[table]`` of the TOML file."""

    # a copied or moved run folder resumes where it now is
    run_dir: str = option(
        "runs/tiny", "folder of the run: config, metrics, checkpoints, tokenizer, export", resume=NOT_COMPARED
    )
    model: ModelConfig = option(ModelConfig(), "the model")
    tokenizer: TokenizerConfig = option(TokenizerConfig(), "the tokenizer")
    data: DataConfig = option(DataConfig(), "corpus, sampling and packing")
    objective: ObjectiveConfig = option(ObjectiveConfig(), "the loss")
    optim: OptimConfig = option(OptimConfig(), "optimizer and learning-rate schedule")
    train: TrainConfig = option(TrainConfig(), "the training loop")
    checkpoint: CheckpointConfig = option(CheckpointConfig(), "checkpoints and export")
    resume: ResumeConfig = option(ResumeConfig(), "resuming a run folder with a changed config")
    metrics: MetricsConfig = option(MetricsConfig(), "logging and periodic evaluation")
    profile: ProfileConfig = option(ProfileConfig(), "profiling")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


class ConfigError(UserError, ValueError):
    """A config file or override that does not fit the dataclasses above."""


def coerce(value, annotation, where: str):
    """Check ``value`` against ``annotation``; strings from the command line are parsed. ``where`` names
    the key in the error (``train.steps``, ``--batch-size``)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        origin = typing.get_origin(annotation)
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, allowed))}")
        return value
    if origin is list:
        (item,) = typing.get_args(annotation)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if isinstance(value, str):
            value = dict(kv.split("=", 1) for kv in value.split(",") if kv)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        _, item = typing.get_args(annotation) or (str, str)
        return {str(k): coerce(v, item, f"{where}[{k!r}]") for k, v in value.items()}
    if annotation is bool:
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}")
        try:
            converted = annotation(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}") from None
        if annotation is int and isinstance(value, float) and value != converted:
            raise ConfigError(f"{where}: expected int, got {value!r}")
        return converted
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {annotation}")


def _merge(obj, data: dict, where: str):
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key {key!r}; valid keys: {', '.join(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key} is a section; got {value!r}")
            _merge(current, value, f"{where}.{key}")
        else:
            setattr(obj, key, coerce(value, hints[key], f"{where}.{key}"))
    return obj


def parse_overrides(args: list[str]) -> dict:
    """``["--optim.lr=3e-4", "--train.steps", "10"]``
    → ``{"optim": {"lr": "3e-4"}, "train": {"steps": "10"}}``

    Values stay strings here; the dataclass field types convert them.
    """
    tree: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"command line: expected --section.key=value, got {arg!r}")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"command line: {arg} needs a value")
            key, value = arg[2:], args[i + 1]
            i += 1
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
        i += 1
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the TOML file, then the command-line overrides."""
    config = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        _merge(config, data, str(path))
    if overrides:
        _merge(config, parse_overrides(overrides), "command line")
    validate(config)
    return config


def in_range(value: float, interval: str) -> bool:
    """``value`` lies in ``interval``, written ``[lo, hi]``, ``(lo, inf)``, ...; NaN never does."""
    lo, hi = _parse_interval(interval)
    above = value >= lo if interval[0] == "[" else value > lo
    below = value <= hi if interval[-1] == "]" else value < hi
    return above and below and not math.isnan(value)


def get_field(config, key: str):
    """The value of ``section.key`` (or of a top-level field) of a config dataclass."""
    node = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


def field_keys(obj=None, prefix: str = "") -> list[str]:
    """Every leaf field as ``section.key`` (``run_dir`` for top-level ones), in declaration order."""
    return list(field_metadata(obj, prefix))


def field_metadata(obj=None, prefix: str = "") -> dict[str, dict]:
    """Every leaf field's ``option`` metadata (doc, range, resume) by ``section.key``, in order."""
    obj = Config() if obj is None else obj
    found = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            found.update(field_metadata(value, f"{prefix}{f.name}."))
        else:
            found[f"{prefix}{f.name}"] = dict(f.metadata)
    return found


def check_ranges(obj, name: typing.Callable[[str], str] = str) -> None:
    """Every field of the dataclass ``obj`` (a ``Config``, or the evaluator's) inside its option's range;
    a field left unset (None) has nothing to check. ``name`` turns ``section.key`` into what the error
    calls it (the evaluator: ``--batch-size``)."""
    for key, meta in field_metadata(obj).items():
        interval, value = meta["range"], get_field(obj, key)
        if interval is not None and value is not None and not in_range(value, interval):
            raise ConfigError(f"{name(key)}: {value} is outside the allowed range {interval}")


# -- the same rules for commands whose flags are plain argparse ones (the ablation, map_separation, the
# demo, the benchmarks): each checked up front, the error one line naming the flag and the rule
def flag_dest(flag: str) -> str:
    """argparse's attribute of a flag: ``--base-steps`` → ``base_steps``."""
    return flag.lstrip("-").replace("-", "_")


def check_flag_ranges(args, ranges: Mapping[str, str]) -> None:
    """Every flag of ``ranges`` (``{"--steps": "[1, inf)"}``, written as an option's range) inside its range
    in the parsed ``args``; a flag not given (None) has nothing to check."""
    for flag, interval in ranges.items():
        value = getattr(args, flag_dest(flag))
        if value is not None and not in_range(value, interval):
            raise ConfigError(f"{flag}: {value} is outside the allowed range {interval}")


def comma_numbers(flag: str, text: str | typing.Sequence[str], kind: type, least: float) -> list:
    """A comma list of numbers, each at least ``least``; anything else is one line naming the flag."""
    items = [x.strip() for x in text.split(",") if x.strip()] if isinstance(text, str) else list(text)
    shown, name = ",".join(items), kind.__name__
    try:
        values = [kind(x) for x in items]
    except ValueError:
        raise ConfigError(f"{flag}: expected a comma list of {name} values, got {shown!r}") from None
    if not values or any(not v >= least for v in values):  # not >=: NaN is refused too
        raise ConfigError(f"{flag}: expected {name} values of at least {least}, got {shown!r}")
    return values


def existing_path(flag: str, path: str | Path, kind: Literal["file", "folder", "any"] = "any") -> Path:
    """``path`` as a Path when it exists and is of ``kind``; otherwise one line naming the flag."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{flag} {path}: no such file or folder")
    if kind == "file" and not path.is_file():
        raise ConfigError(f"{flag} {path}: expected a file, found a folder")
    if kind == "folder" and not path.is_dir():
        raise ConfigError(f"{flag} {path}: expected a folder, found a file")
    return path


def validate(config: Config) -> None:
    """Ranges and cross-field checks that a type alone cannot express (choices are checked by ``coerce``)."""
    check_ranges(config)
    for pair in config.data.pairs:
        a, _, b = pair.partition("-")
        if not a or not b or a == b:
            raise ConfigError(f"data.pairs: {pair!r} is not of the form a-b with two languages")
    check_batch(config.train, world_size=1)
    m = config.model
    if not m.path:
        if m.hidden_size % m.num_heads:
            raise ConfigError(
                f"model.num_heads ({m.num_heads}) must divide model.hidden_size ({m.hidden_size})"
            )
        if m.num_heads % m.num_kv_heads:
            raise ConfigError(
                f"model.num_kv_heads ({m.num_kv_heads}) must divide model.num_heads ({m.num_heads})"
            )
        if m.max_position < config.data.seq_len:
            raise ConfigError(
                f"model.max_position ({m.max_position}) must be at least data.seq_len ({config.data.seq_len})"
            )
        if config.objective.map_layer > m.num_layers:
            raise ConfigError(
                f"objective.map_layer: {config.objective.map_layer} is outside the allowed range "
                f"[-1, {m.num_layers}] (model.num_layers={m.num_layers})"
            )
    keys = field_keys()
    sections = {k.split(".")[0] for k in keys if "." in k}
    for name in config.resume.allow_changes:
        if name not in keys and name not in sections:
            close = difflib.get_close_matches(name, keys, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "; see --help for the fields"
            raise ConfigError(f"resume.allow_changes: {name!r} is not a config field or section{hint}")
    names = set(config.data.languages) | set(config.data.pairs)
    for key in ("weights", "token_budget"):
        for name, value in getattr(config.data, key).items():
            if name not in names:
                raise ConfigError(
                    f"data.{key}: {name!r} is neither one of data.languages nor one of data.pairs "
                    f"({', '.join([*config.data.languages, *config.data.pairs])})"
                )
            if not (math.isfinite(value) and value >= (0 if key == "weights" else 1)):
                rule = "a finite weight ≥ 0" if key == "weights" else "at least 1 token"
                raise ConfigError(f"data.{key}[{name!r}]: {value} is not {rule}")
    if config.data.parallel_as_mono:
        pair_langs = {lang for pair in config.data.pairs for lang in pair.split("-")}
        missing = sorted(pair_langs - set(config.data.languages))
        if missing:
            raise ConfigError(f"data.parallel_as_mono: pair languages {missing} are not in data.languages")
        if config.data.parallel_as_text:
            raise ConfigError("data.parallel_as_mono and data.parallel_as_text exclude each other")
        if config.data.placebo_pairs:
            raise ConfigError(
                "data.placebo_pairs shuffles pairs; data.parallel_as_mono has no pairs to shuffle"
            )
    if config.objective.loss_accum_dtype == "bf16" and config.train.mixed_precision == "fp32":
        raise ConfigError("objective.loss_accum_dtype=bf16 needs bf16 compute; train.mixed_precision is fp32")
    if config.model.init_from and config.tokenizer.path:
        raise ConfigError(
            "model.init_from brings that run's tokenizer; leave tokenizer.path empty "
            f"(got {config.tokenizer.path!r})"
        )


def check_batch(train: TrainConfig, world_size: int) -> None:
    """The one batch-size check: both sizes positive, and global_batch splits into whole micro-batches on
    every rank; the trainer calls it again with the world size, which is only known once the process
    group is up."""
    for key in ("global_batch", "micro_batch"):
        if getattr(train, key) < 1:
            raise ConfigError(f"train.{key}: {getattr(train, key)} is outside the allowed range [1, inf)")
    if train.global_batch % (train.micro_batch * world_size):
        raise ConfigError(
            f"train.global_batch ({train.global_batch}) must be a multiple of train.micro_batch × world "
            f"size ({train.micro_batch} × {world_size})"
        )


def _type_name(annotation) -> str:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # an option that may stay unset
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is Literal:
        return "{" + ",".join(typing.get_args(annotation)) + "}"
    return str(annotation) if typing.get_origin(annotation) else annotation.__name__


def _shown(value) -> str:
    """A default as it is written on the command line."""
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(value) or "(empty)"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "(empty)"
    return repr(value) if isinstance(value, str) else str(value)


def option_summary(annotation, value, metadata: Mapping) -> str:
    """``int, default 8, range [1, inf)``: an option's type, default and range as ``--help`` shows them
    (the trainer's and the evaluator's)."""
    where = f", range {metadata['range']}" if metadata.get("range") else ""
    return f"{_type_name(annotation)}, default {_shown(value)}{where}"


def config_help() -> str:
    """Every ``--section.key`` with its type, default, range, resume class and doc, one block per section
    (for ``--help``)."""
    lines = []

    def describe(obj, prefix: str) -> None:
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                lines.extend(["", f"[{f.name}] {f.metadata.get('doc', '')}"])
                describe(value, f"{prefix}{f.name}.")
            else:
                lines.append(
                    f"  --{prefix}{f.name}  {option_summary(hints[f.name], value, f.metadata)}"
                    f"; on resume: {f.metadata['resume']}"
                )
                lines.append(f"      {f.metadata.get('doc', '(no doc)')}")

    describe(Config(), "")
    return "\n".join(lines)
