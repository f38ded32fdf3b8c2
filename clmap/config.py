"""The one configuration of a run: dataclasses, loaded from TOML and overridden from the command line.

``python -m clmap.train --config configs/tiny.toml --optim.lr=3e-4 --data.pairs=en-cs,cs-uk``.
An unknown key or a value of the wrong type is an error that names the valid keys.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class ModelConfig:
    """A local Hugging Face causal LM (``path``) or a Llama-architecture model built from these fields."""

    path: str = ""
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position: int = 2048
    rope_theta: float = 10000.0
    tie_embeddings: bool = True
    attn_implementation: str = "auto"  # auto: flash_attention_2 if importable on CUDA, else sdpa


@dataclass
class TokenizerConfig:
    """A local tokenizer folder (``path``) or a SentencePiece model trained on the training corpus."""

    path: str = ""
    vocab_size: int = 8000
    tag_format: str = (
        ""  # "" = <2xx> special pieces for a trained tokenizer, "\n[xx] " text for a pretrained one
    )
    train_sentences: int = 200_000


@dataclass
class DataConfig:
    """Where text comes from and how samples are mixed, built into sequences and packed."""

    corpus: str = "bundled"  # a folder laid out like clmap/assets/corpus, or "bundled"
    languages: list[str] = field(default_factory=lambda: ["en", "cs", "zh", "ja", "uk"])
    pairs: list[str] = field(default_factory=lambda: ["en-cs", "en-zh", "en-ja", "en-uk", "cs-uk", "zh-ja"])
    mono_paths: dict[str, str] = field(default_factory=dict)  # lang -> file/folder, replaces the corpus' mono
    parallel_paths: dict[str, str] = field(default_factory=dict)  # "a-b" -> file/folder
    seq_len: int = 256
    packing: bool = True
    temperature: float = 3.0  # p(source) ∝ n^(1/T): T=1 proportional, larger flattens towards uniform
    ntp_share: float = 0.5  # share of samples drawn from the monolingual (NTP) streams
    cl_directions: str = "both"  # both | forward (a→b only, the one-direction ablation)
    parallel_as_text: bool = False  # ablation: pairs as plain concatenated NTP text, no tags, no masking
    max_segment_tokens: int = 120  # each side of a pair is cut to this many tokens
    pack_window: int = 256  # samples planned together by the packer
    dev_pairs: int = 64  # pairs per language pair for the periodic LAC / dev loss


@dataclass
class ObjectiveConfig:
    """L = L_NTP + λ_CL·L_CL + λ_map·L_map (DESIGN.md, The objective)."""

    lambda_cl: float = 1.0
    lambda_map: float = 0.1
    map_layer: int = -1  # -1: the middle decoder layer
    map_loss: str = "cosine"  # cosine (1 − cos) | infonce (over the batch's pairs)
    infonce_temperature: float = 0.05
    z_loss: float = 0.0


@dataclass
class OptimConfig:
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0


@dataclass
class TrainConfig:
    steps: int = 200
    global_batch: int = 16  # rows per optimizer step, all ranks together
    micro_batch: int = 8  # rows per forward on one rank
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    mixed_precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    activation_checkpointing: bool = False
    max_nonfinite_in_a_row: int = 5
    backend: str = "auto"  # torch.distributed backend: auto (nccl on CUDA, gloo on CPU) | nccl | gloo


@dataclass
class CheckpointConfig:
    every: int = 100
    keep: int = 2
    resume: bool = True  # continue from run_dir's latest complete checkpoint if there is one
    export_hf: bool = True


@dataclass
class MetricsConfig:
    log_every: int = 1
    tensorboard: bool = True
    eval_every: int = 100  # dev loss per task + LAC on a small dev set; 0 disables
    progress: bool = True


@dataclass
class ProfileConfig:
    enabled: bool = False
    wait: int = 1
    warmup: int = 1
    active: int = 3


@dataclass
class Config:
    run_dir: str = "runs/tiny"
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


class ConfigError(ValueError):
    """A config file or override that does not fit the dataclasses above."""


def _coerce(value, annotation, where: str):
    """Check ``value`` against ``annotation``; strings from the command line are parsed."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        origin = typing.get_origin(annotation)
    if origin is list:
        (item,) = typing.get_args(annotation)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if isinstance(value, str):
            value = dict(kv.split("=", 1) for kv in value.split(",") if kv)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return {str(k): str(v) for k, v in value.items()}
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
            setattr(obj, key, _coerce(value, hints[key], f"{where}.{key}"))
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


def validate(config: Config) -> None:
    """Cross-field checks that a type alone cannot express."""
    choices = {
        "data.cl_directions": (config.data.cl_directions, ("both", "forward")),
        "objective.map_loss": (config.objective.map_loss, ("cosine", "infonce")),
        "train.mixed_precision": (config.train.mixed_precision, ("auto", "bf16", "fp32")),
        "train.device": (config.train.device, ("auto", "cpu", "cuda")),
        "train.backend": (config.train.backend, ("auto", "gloo", "nccl")),
    }
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{name}: {value!r} is not one of {allowed}")
    for pair in config.data.pairs:
        a, _, b = pair.partition("-")
        if not a or not b or a == b:
            raise ConfigError(f"data.pairs: {pair!r} is not of the form a-b with two languages")
    if config.train.global_batch % config.train.micro_batch:
        raise ConfigError(
            f"train.global_batch ({config.train.global_batch}) must be a multiple of "
            f"train.micro_batch ({config.train.micro_batch})"
        )
    if not 0.0 <= config.data.ntp_share <= 1.0:
        raise ConfigError(f"data.ntp_share: {config.data.ntp_share} is not in [0, 1]")
