"""The objective's arithmetic, the kernels vs the reference in a real training step, non-finite steps."""

from __future__ import annotations

import os

import pytest
import torch

from clmap.config import load_config
from clmap.data.examples import GroupTable
from clmap.model import build_model
from clmap.objectives import MappingObjective, loss_coefficients, summarize, summarize_totals
from clmap.parallel import shard_model
from clmap.train import build_optimizer, prepare_step, train_step


def test_loss_coefficients_follow_the_definition():
    table = GroupTable(["en", "cs"], ["en-cs"])
    cfg = load_config(None, ["--objective.lambda_cl=0.5", "--objective.lambda_map=0.2"]).objective
    counts = torch.zeros(len(table))
    sums = torch.zeros(len(table))
    for name, (n, mean) in {
        "ntp:en": (10, 2.0),
        "ntp:cs": (30, 4.0),
        "cl:en>cs": (5, 3.0),
        "cl:cs>en": (15, 1.0),
    }.items():
        counts[table[name]], sums[table[name]] = n, n * mean
    coef, map_coef = loss_coefficients(table, counts, num_pairs=4, cfg=cfg)
    ntp = (10 * 2.0 + 30 * 4.0) / 40  # token mean over all NTP tokens
    cl = 0.5 * (3.0 + 1.0)  # each direction a token mean of its own
    map_sum = 4 * 0.25
    expected = ntp + 0.5 * cl + 0.2 * map_sum / 4
    assert float((coef * sums).sum()) + map_coef * map_sum == pytest.approx(expected)
    summary = summarize(table, sums, counts, map_sum, 4.0, cos_sum=3.0, cfg=cfg)
    assert summary["loss/total"] == pytest.approx(expected)
    assert summary["loss/cl"] == pytest.approx(cl) and summary["map/mean_cos"] == pytest.approx(0.75)
    assert summary["group/ntp:cs"] == pytest.approx(4.0)
    # one direction only: L_CL is that direction's mean
    counts[table["cl:cs>en"]] = 0
    sums[table["cl:cs>en"]] = 0
    coef, _ = loss_coefficients(table, counts, num_pairs=0, cfg=cfg)
    assert float((coef * sums).sum()) == pytest.approx(ntp + 0.5 * 3.0)


@pytest.fixture(scope="module")
def setup(training_setup):
    return training_setup


def _train(setup, backend: str | None, steps: int = 3, activation_checkpointing: bool = False):
    cfg, dist_info, tok, table, rows = setup
    if backend:
        os.environ["CLMAP_KERNEL_BACKEND"] = backend
    try:
        torch.manual_seed(0)
        objective = MappingObjective(build_model(cfg.model, tok, dist_info.device), table, cfg.objective)
        objective = shard_model(objective, "fp32", activation_checkpointing)
        optimizer, scheduler = build_optimizer(objective, cfg)
        losses = []
        gb = cfg.train.global_batch
        for step in range(steps):
            batch = prepare_step(rows[step * gb : (step + 1) * gb], cfg, table, dist_info)
            sums, grad_norm, applied = train_step(objective, optimizer, batch, cfg, dist_info)
            scheduler.step()
            losses.append(summarize_totals(table, sums, cfg.objective))
        return objective, optimizer, losses
    finally:
        os.environ.pop("CLMAP_KERNEL_BACKEND", None)


def test_kernels_and_reference_give_the_same_training_curve(setup):
    _, _, fused = _train(setup, None)
    _, _, reference = _train(setup, "reference")
    for a, b in zip(fused, reference, strict=True):
        for key in ("loss/total", "loss/ntp", "loss/cl", "loss/map"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key


def test_activation_checkpointing_changes_nothing_but_memory(setup):
    _, _, plain = _train(setup, None, steps=2)
    objective, _, recomputed = _train(setup, None, steps=2, activation_checkpointing=True)
    assert objective.lm.is_gradient_checkpointing
    for a, b in zip(plain, recomputed, strict=True):
        assert a["loss/total"] == pytest.approx(b["loss/total"], rel=1e-6)


def test_non_finite_step_is_skipped(setup):
    cfg, dist_info, tok, table, rows = setup
    objective, optimizer, _ = _train(setup, None, steps=1)
    embed = objective.lm.get_input_embeddings().weight
    with torch.no_grad():
        embed.to_local()[0, 0] = float("nan")
        before = [p.detach().to_local().clone() for p in objective.parameters()]
        state_before = {k: v.clone() for st in optimizer.state.values() for k, v in _local_state(st).items()}
    rows_with_nan_token = [row for row in rows if 0 in row.input_ids] or rows
    batch = prepare_step(rows_with_nan_token[: cfg.train.global_batch], cfg, table, dist_info)
    _, _, applied = train_step(objective, optimizer, batch, cfg, dist_info)
    assert not applied
    after = [p.detach().to_local() for p in objective.parameters()]
    for b, a in zip(before, after, strict=True):
        torch.testing.assert_close(a, b, equal_nan=True)
    # The optimizer state (moments and step count) is untouched too: the step never happened.
    state_after = {k: v for st in optimizer.state.values() for k, v in _local_state(st).items()}
    assert state_before.keys() == state_after.keys()
    for key, value in state_before.items():
        torch.testing.assert_close(state_after[key], value, equal_nan=True)


def _local_state(state: dict) -> dict:
    """An optimizer state entry as local tensors keyed by (name, id) (step is a plain tensor)."""
    return {
        (name, id(state)): value.to_local() if hasattr(value, "to_local") else value
        for name, value in state.items()
    }


def test_loss_accum_dtype_reaches_the_fused_loss(setup, monkeypatch):
    """objective.loss_accum_dtype picks the fused loss's accumulation; bf16 only under bf16 compute."""
    import dataclasses

    import clmap.objectives as objectives
    from clmap.config import ConfigError
    from clmap.data.stream import collate

    cfg, dist_info, tok, table, rows = setup
    seen = []
    real = objectives.mapping_loss

    def recording(*args, **kwargs):
        seen.append(kwargs["accum_dtype"])
        return real(*args, **kwargs)

    monkeypatch.setattr(objectives, "mapping_loss", recording)
    batch = collate(rows[:2])

    def forward(setting: str, dtype: torch.dtype):
        lm = build_model(cfg.model, tok, dist_info.device).to(dtype)
        objective = MappingObjective(lm, table, dataclasses.replace(cfg.objective, loss_accum_dtype=setting))
        with torch.no_grad():
            return objective(**batch)

    forward("fp32", torch.bfloat16)
    out = forward("bf16", torch.bfloat16)
    assert seen == [torch.float32, torch.bfloat16] and torch.isfinite(out.loss_sum).all()
    with pytest.raises(ValueError, match="loss_accum_dtype=bf16 needs bf16 compute"):
        forward("bf16", torch.float32)
    with pytest.raises(ConfigError, match="loss_accum_dtype=bf16 needs bf16 compute"):
        load_config(None, ["--objective.loss_accum_dtype=bf16", "--train.mixed_precision=fp32"])


def test_truncated_decoder_keeps_the_mapped_hidden_state(training_setup):
    """map_separation encodes with the decoder cut after the mapping layer: that hidden state is unchanged."""
    import copy
    import dataclasses

    from clmap.experiments.map_separation import truncated_decoder

    cfg, _, tok, _, rows = training_setup
    lm = build_model(dataclasses.replace(cfg.model, num_layers=4), tok, torch.device("cpu")).eval()
    ids = torch.tensor([rows[0].input_ids[:40]])
    layer = lm.config.num_hidden_layers // 2
    with torch.no_grad():
        want = lm(input_ids=ids, output_hidden_states=True).hidden_states[layer]
        cut = truncated_decoder(copy.deepcopy(lm), layer)
        got = cut(input_ids=ids, output_hidden_states=True).hidden_states
    assert len(cut.layers) == layer + 1 < lm.config.num_hidden_layers
    torch.testing.assert_close(got[layer], want, rtol=0, atol=0)
