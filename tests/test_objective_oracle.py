"""train_step against an independent computation of L (tests/objective_oracle.py), and each mapping form
of clmap/objectives.py against its plain-PyTorch definition."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
from conftest import LANGS, PAIRS, REPO, child_env, tiny_overrides
from objective_oracle import (
    ORACLE,
    check_against_oracle,
    reference_map_terms,
    train_step_gradients,
)

from clmap.config import load_config
from clmap.objectives import map_terms

FORMS = ["cosine", "centered", "infonce", "margin"]


@pytest.fixture(scope="module")
def oracle_setup(training_setup):
    cfg, dist_info, tok, table, rows = training_setup
    overrides = tiny_overrides(cfg.data.corpus, cfg.tokenizer.path, cfg.run_dir, **ORACLE)
    return overrides, dist_info, tok, table, rows[: cfg.train.global_batch]


@pytest.mark.parametrize("form,center", [(form, "language") for form in FORMS] + [("infonce", "all")])
def test_train_step_gradient_is_that_of_the_documented_loss(oracle_setup, form, center):
    """One process, 2 micro-batches of 4 rows (the 2-process test below splits the step 4 ways)."""
    overrides, dist_info, tok, table, rows = oracle_setup
    forms = [f"--objective.map_loss={form}", f"--objective.map_center={center}"]
    cfg = load_config(None, [*overrides, "--train.micro_batch=4", *forms])
    assert sum(len(row.pairs) for row in rows) >= 4  # the step forms need other pairs to compare with
    initial, grads, grad_norm = train_step_gradients(cfg, dist_info, tok, table, rows)
    check_against_oracle(cfg, tok, table, rows, initial, grads, grad_norm)


def test_two_process_train_step_gradient_is_that_of_the_documented_loss(oracle_setup, tmp_path):
    """Two processes over gloo, 2 micro-batches each: the step forms gather the other rank's pairs."""
    overrides, _, tok, table, rows = oracle_setup
    payload = {
        "overrides": overrides,
        "tokenizer": str(load_config(None, overrides).tokenizer.path),
        "languages": LANGS,
        "pairs": PAIRS,
        "rows": rows,
        "forms": FORMS,
    }
    torch.save(payload, tmp_path / "payload.pt")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [
        str(REPO / "tests" / "objective_oracle.py"),
        str(tmp_path / "payload.pt"),
        str(tmp_path / "out.pt"),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = torch.load(tmp_path / "out.pt", weights_only=False)
    cfg = load_config(None, overrides)
    for form in FORMS:
        form_cfg = dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, map_loss=form))
        check_against_oracle(form_cfg, tok, table, rows, *results[form])


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("pairs", [1, 2, 7])
@pytest.mark.parametrize("by_language", [False, True])
def test_map_terms_follow_their_definitions(form, pairs, by_language):
    """The vectorised forms (value and gradient) against the pair-by-pair definitions, on states that
    share a dominant direction and a per-language offset as a pretrained model's do."""
    cfg = load_config(None, [f"--objective.map_loss={form}", "--objective.map_margin=0.3"]).objective
    gen = torch.Generator().manual_seed(pairs)
    shared = 20 * torch.randn(16, generator=gen, dtype=torch.float64)
    offset = 5 * torch.randn(3, 16, generator=gen, dtype=torch.float64)  # languages x, y, z
    langs_u = ["x" if i % 2 else "y" for i in range(pairs)]  # pairs of x-z and y-z, z seen once when P = 1
    langs_v = ["z"] * pairs
    lang_offset = torch.stack([offset["xyz".index(lang)] for lang in langs_u + langs_v])
    u = shared + lang_offset[:pairs] + torch.randn(pairs, 16, generator=gen, dtype=torch.float64)
    v = shared + lang_offset[pairs:] + torch.randn(pairs, 16, generator=gen, dtype=torch.float64)
    u, v = u.requires_grad_(), v.requires_grad_()
    ids = torch.tensor(["xyz".index(lang) for lang in langs_u + langs_v]) if by_language else None
    got = map_terms(u, v, cfg, ids)
    langs = (langs_u, langs_v) if by_language else ()
    want = torch.stack(reference_map_terms(u, v, form, cfg.infonce_temperature, cfg.map_margin, *langs))
    torch.testing.assert_close(got, want)
    grads = torch.autograd.grad(got.sum(), (u, v))
    for g, w in zip(grads, torch.autograd.grad(want.sum(), (u, v)), strict=True):
        torch.testing.assert_close(g, w)
