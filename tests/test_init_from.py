"""``--init-from RUN`` (``model.init_from``): a run starts from another run's weights and tokenizer with a
fresh optimizer and schedule, a resume continues from the run's own checkpoints, and a source that is
missing, empty or of another shape is a clear error."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import run_train, tiny_overrides
from safetensors.torch import load_file

from clmap.checkpoint import InitFromError, init_source, load_model_weights
from clmap.config import ConfigError, load_config


def _overrides(corpus, tokenizer, run_dir, **extra) -> list[str]:
    """The tiny run of conftest without a tokenizer path (an initialised run brings its source's)."""
    values = {"metrics.eval_every": 0, **extra}
    return [
        o
        for o in tiny_overrides(corpus, tokenizer, run_dir, **values)
        if not o.startswith("--tokenizer.path")
    ]


def _hf_weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "hf" / "model.safetensors"))


@pytest.fixture(scope="module")
def source(small_corpus, small_tokenizer, tmp_path_factory):
    """A finished 4-step run with checkpoints at steps 2 and 4 and an hf/ export."""
    run_dir = tmp_path_factory.mktemp("init") / "source"
    run_train(
        tiny_overrides(small_corpus, small_tokenizer, run_dir, **{"train.steps": 4, "checkpoint.every": 2})
    )
    return run_dir


def _built_model(run_dir):
    """A model of the source's configured shape with fresh random weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(run_dir / "hf"), dtype=torch.float32)


def test_weights_come_from_the_export_or_the_latest_checkpoint(source, small_tokenizer, tmp_path):
    exported = _hf_weights(source)
    model = _built_model(source)
    assert load_model_weights(model, source) == source / "hf"
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in exported.items())
    # without the export: the latest checkpoint (step 4 = the exported weights), with the run's tokenizer
    no_export = tmp_path / "no_export"
    shutil.copytree(source, no_export, ignore=shutil.ignore_patterns("hf"))
    assert init_source(no_export) == (no_export / "checkpoints" / "step_00000004", small_tokenizer)
    model = _built_model(source)
    assert load_model_weights(model, no_export).name == "step_00000004"
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in exported.items())
    # one named checkpoint: step 2, which differs from the final weights
    model = _built_model(source)
    load_model_weights(model, no_export / "checkpoints" / "step_00000002")
    assert not torch.equal(
        model.state_dict()["model.embed_tokens.weight"], exported["model.embed_tokens.weight"]
    )


def test_bad_sources_are_clear_errors(source, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    with pytest.raises(InitFromError, match="is not a folder"):
        init_source(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InitFromError, match="neither a complete hf/ export .* nor a complete checkpoint"):
        init_source(tmp_path / "empty")
    config = AutoConfig.from_pretrained(source / "hf")
    config.hidden_size, config.intermediate_size = 48, 96
    wider = AutoModelForCausalLM.from_config(config)
    with pytest.raises(
        InitFromError, match=r"does not fit the configured model .*embed_tokens.weight is \[\d+, 32\]"
    ):
        load_model_weights(wider, source)
    with pytest.raises(ConfigError, match="model.init_from brings that run's tokenizer"):
        load_config(None, [f"--model.init_from={source}", "--tokenizer.path=/some/tokenizer"])


def test_continues_the_source_with_a_fresh_optimizer_and_resumes_on_its_own(
    source, small_corpus, small_tokenizer, tmp_path
):
    """Step 1's loss is the source model's loss on that batch; schedule and AdamW state start at step 1;
    interrupted after step 1 and resumed with the source gone, the run ends with the same weights."""
    from transformers import AutoModelForCausalLM

    from clmap.data.examples import GroupTable
    from clmap.data.pipeline import load_texts, make_stream
    from clmap.data.stream import collate
    from clmap.data.tokenizer import load_tokenizer
    from clmap.objectives import MappingObjective, summarize_totals

    copy, run_dir = tmp_path / "source_copy", tmp_path / "continued"
    shutil.copytree(source, copy)
    extra = {"train.steps": 2, "checkpoint.every": 1, "optim.warmup_steps": 4}
    overrides = _overrides(small_corpus, small_tokenizer, run_dir, **extra)
    proc = run_train(["--init-from", str(copy), *overrides])
    assert f"initialised from {copy / 'hf'}" in proc.stdout
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["model"]["init_from"] == str(copy)
    # the source's vocabulary, not the configured default: said and recorded (issue 23)
    vocab = load_config(None, overrides).tokenizer.vocab_size
    trained_vocab = saved["tokenizer"]["vocab_size"]
    assert trained_vocab == load_tokenizer(run_dir / "tokenizer").vocab_size != vocab
    assert (
        f"the tokenizer of {copy} has {trained_vocab} tokens, not tokenizer.vocab_size={vocab}" in proc.stdout
    )
    assert (run_dir / "tokenizer" / "tokenizer.model").read_bytes() == (
        copy / "hf" / "tokenizer.model"
    ).read_bytes()

    cfg = load_config(None, [*overrides, f"--model.init_from={copy}"])
    tok = load_tokenizer(run_dir / "tokenizer")
    table = GroupTable(cfg.data.languages, cfg.data.pairs)
    rows = make_stream(cfg, tok, table, *load_texts(cfg, "train"), cfg.train.seed).rows(0)
    batch = [next(rows) for _ in range(cfg.train.global_batch)]
    lm = AutoModelForCausalLM.from_pretrained(copy / "hf", dtype=torch.float32, attn_implementation="sdpa")
    with torch.no_grad():
        totals = MappingObjective(lm, table, cfg.objective)(**collate(batch)).totals()
    expected = summarize_totals(table, totals, cfg.objective)
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged[0]["loss/total"] == pytest.approx(expected["loss/total"], rel=1e-4)
    assert logged[0]["loss/ntp"] == pytest.approx(expected["loss/ntp"], rel=1e-4)
    assert logged[0]["lr"] == pytest.approx(
        cfg.optim.lr * 2 / 4
    )  # the warm-up restarts (logged after step 1)
    # the optimizer state of step 1 is one step old (AdamW's step count), the scheduler too
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    step1 = run_dir / "checkpoints" / "step_00000001"
    dcp_to_torch_save(step1, tmp_path / "step1.pt")
    optim_state = torch.load(tmp_path / "step1.pt", weights_only=False)["optim"]["state"]
    assert optim_state and {float(s["step"]) for s in optim_state.values()} == {1.0}
    assert torch.load(step1 / "scheduler.pt", weights_only=False)["scheduler"]["last_epoch"] == 1

    # interrupted after step 1, the source deleted: the resume reads the run's own checkpoint and tokenizer
    final = _hf_weights(run_dir)
    shutil.rmtree(run_dir / "hf")
    shutil.rmtree(run_dir / "checkpoints" / "step_00000002")
    shutil.rmtree(copy)
    proc = run_train(["--init-from", str(copy), *overrides])
    assert "resumed from" in proc.stdout and "initialised from" not in proc.stdout
    again = _hf_weights(run_dir)
    assert all(torch.equal(again[k], v) for k, v in final.items())
