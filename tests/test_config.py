"""The configuration explains itself: every field has a doc that --help prints; choices and batch sizes are
checked in one place each, with errors that name the key, the value and what is allowed."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import REPO

from clmap.config import Config, ConfigError, TrainConfig, check_batch, load_config
from clmap.train import main


def _settings(obj, prefix: str = ""):
    """(``section.key``, field, is_section) of every field, sections and their keys alike."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        yield f"{prefix}{f.name}", f, dataclasses.is_dataclass(value)
        if dataclasses.is_dataclass(value):
            yield from _settings(value, f"{prefix}{f.name}.")


def test_every_field_has_a_one_line_doc():
    for key, f, _ in _settings(Config()):
        doc = f.metadata.get("doc", "")
        assert doc.strip(), f"{key} has no doc: declare it with option(default, doc)"
        assert "\n" not in doc, f"{key}: the doc must be one line"


def test_help_lists_every_field_with_type_default_and_doc(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    for key, f, is_section in _settings(Config()):
        if is_section:
            assert f"[{key}] {f.metadata.get('doc')}" in lines, key
            continue
        entry = next((i for i, line in enumerate(lines) if line.startswith(f"--{key}  ")), None)
        assert entry is not None, f"--help does not list --{key}"
        assert lines[entry + 1] == f.metadata.get("doc"), key
    assert "--train.device  {auto,cpu,cuda}, default 'auto'; on resume: safe" in lines
    assert "--data.pairs  list[str], default en-cs,en-zh,en-ja,en-uk,cs-uk,zh-ja; on resume: trained" in lines
    assert "--checkpoint.resume  bool, default true; on resume: not compared" in lines
    assert "--optim.lr  float, default 0.001, range (0, inf); on resume: trained" in lines


def test_overrides_through_the_command_line_still_name_the_valid_keys():
    with pytest.raises(
        ConfigError, match="command line.optim: unknown key 'lrr'; valid keys: lr, min_lr_ratio"
    ):
        main(["--config", str(REPO / "configs" / "tiny.toml"), "--optim.lrr=1"])


def test_choices_are_checked_with_the_key_the_value_and_the_allowed_values(tmp_path):
    with pytest.raises(ConfigError, match=r"command line.train.device: 'gpu' is not one of auto, cpu, cuda"):
        load_config(None, ["--train.device=gpu"])
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\nattn_implementation = "flash"\n')
    with pytest.raises(
        ConfigError, match=r"bad.toml.model.attn_implementation: 'flash' is not one of auto, sdpa, eager"
    ):
        load_config(bad)
    cfg = load_config(None, ["--model.attn_implementation=flash_attention_2", "--objective.map_loss=infonce"])
    assert (cfg.model.attn_implementation, cfg.objective.map_loss) == ("flash_attention_2", "infonce")
    for key, allowed in {
        "data.cl_directions": ("both", "forward"),
        "objective.map_loss": ("cosine", "centered", "infonce", "margin"),
        "train.mixed_precision": ("auto", "bf16", "fp32"),
        "train.backend": ("auto", "nccl", "gloo"),
    }.items():
        for value in allowed:
            section, name = key.split(".")
            assert getattr(getattr(load_config(None, [f"--{key}={value}"]), section), name) == value
        with pytest.raises(ConfigError, match=f"{key}: 'other' is not one of"):
            load_config(None, [f"--{key}=other"])


def test_the_batch_check_is_one_function_for_the_config_and_the_world_size():
    with pytest.raises(ConfigError, match=r"train.global_batch \(12\) must be a multiple of .* \(8 × 1\)"):
        load_config(None, ["--train.global_batch=12", "--train.micro_batch=8"])
    check_batch(TrainConfig(global_batch=16, micro_batch=8), world_size=2)
    with pytest.raises(ConfigError, match=r"train.global_batch \(16\) must be a multiple of .* \(8 × 4\)"):
        check_batch(TrainConfig(global_batch=16, micro_batch=8), world_size=4)


@pytest.mark.parametrize(
    "setting, device, flags, params, expected",
    [
        ("auto", "cuda", (), 10**6, "bf16"),
        ("auto", "cpu", ("amx_bf16", "avx512_bf16"), 268_000_000, "bf16"),
        ("auto", "cpu", ("avx512_bf16",), 268_000_000, "bf16"),
        ("auto", "cpu", (), 268_000_000, "fp32"),  # no bf16 matmul instructions
        ("auto", "cpu", ("amx_bf16",), 1_800_000, "fp32"),  # too small for bf16 to pay
        ("fp32", "cpu", ("amx_bf16",), 268_000_000, "fp32"),
        ("bf16", "cpu", (), 10**6, "bf16"),
    ],
)
def test_auto_precision_is_bf16_where_it_was_measured_faster(
    monkeypatch, setting, device, flags, params, expected
):
    import torch

    from clmap import parallel

    monkeypatch.setattr(parallel, "cpu_bf16_features", lambda: flags)
    assert parallel.resolve_mixed_precision(setting, torch.device(device), params) == expected
    note = parallel.precision_note(setting, torch.device(device), params)
    assert (note is not None) == (setting == "auto" and device == "cpu" and expected == "bf16")
    if note:
        assert note.startswith(f"train.mixed_precision=auto: bf16 compute on this CPU ({'+'.join(flags)}")
