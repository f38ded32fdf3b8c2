"""An independent computation of the training objective L, written out from docs/design.md "The loss".

Plain PyTorch and plain transformers: every packed sequence is run alone through the model's own
forward (its own causal mask, no clmap attention path), full logits and ``F.cross_entropy`` per token,
the documented normalisation per group, and the mapping term over mean-pooled spans by its definition
(loops over pairs, no clmap kernel or helper). ``train_step``'s gradients are compared with this one's
autograd gradients (tests/test_objective_oracle.py), at 1 process in the test and at 2 processes by
running this file under torchrun: ``python -m torch.distributed.run --nproc_per_node=2
tests/objective_oracle.py PAYLOAD OUT``.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

IGNORE = -100  # docs/design.md: positions without loss hold the ignore index
#: λ_map = 1 so the mapping term's share of the gradient is large; no clipping so the gradient is the raw one
ORACLE = {"objective.lambda_map": 1.0, "optim.grad_clip": 0.0, "objective.map_margin": 0.5}


def reference_map_terms(
    u: torch.Tensor,
    v: torch.Tensor,
    form: str,
    temperature: float,
    margin: float,
    langs_u: list[str] | None = None,
    langs_v: list[str] | None = None,
) -> list[torch.Tensor]:
    """The mapping term of each pair (u_i, v_i) by the definitions of docs/design.md, one pair at a time.
    ``langs_u``/``langs_v``: the language of each state (map_center=language); None: one mean of all."""
    n = len(u)
    if form == "cosine":  # the paper's: 1 − cos(pool(x), pool(y))
        return [1 - F.cosine_similarity(u[i], v[i], dim=0) for i in range(n)]
    states = [*u, *v]
    langs = [*langs_u, *langs_v] if langs_u is not None else ["all"] * (2 * n)

    def mean_of(lang: str) -> torch.Tensor:  # the mean of the step's pooled states of that language
        mine = [x for x, other in zip(states, langs, strict=True) if other == lang]
        return sum(mine) / len(mine)

    centred = [x - mean_of(lang) for x, lang in zip(states, langs, strict=True)]
    cu, cv = centred[:n], centred[n:]
    # cos with the training code's eps: a language seen once in the step is centred to exactly 0
    s = [[F.cosine_similarity(cu[i], cv[j], dim=0, eps=1e-8) for j in range(n)] for i in range(n)]
    if form == "centered":
        return [1 - s[i][i] for i in range(n)]
    if form == "infonce":  # ½ (−log softmax of row i at i − log softmax of column i at i), logits cos / τ
        terms = []
        for i in range(n):
            row = torch.stack([s[i][j] for j in range(n)]) / temperature
            col = torch.stack([s[j][i] for j in range(n)]) / temperature
            terms.append(0.5 * ((torch.logsumexp(row, 0) - row[i]) + (torch.logsumexp(col, 0) - col[i])))
        return terms
    if form == "margin":  # ½ mean over j ≠ i of the two hinges
        terms = []
        for i in range(n):
            others = [j for j in range(n) if j != i]
            if not others:
                terms.append(s[i][i] * 0)
                continue
            row = sum(torch.clamp(margin - s[i][i] + s[i][j], min=0) for j in others)
            col = sum(torch.clamp(margin - s[i][i] + s[j][i], min=0) for j in others)
            terms.append(0.5 * (row + col) / len(others))
        return terms
    raise ValueError(form)


def oracle_loss(lm, rows, kinds: list[str], names: list[str], cfg) -> torch.Tensor:
    """L of one optimizer step over ``rows`` (the global batch); ``kinds[g]`` the kind of loss group g
    and ``names[g]`` its name (``cl:a>b``: sequences whose source span is in language a)."""
    num_layers = lm.config.num_hidden_layers
    layer = num_layers // 2 if cfg.map_layer == -1 else cfg.map_layer
    sums = [torch.zeros((), dtype=lm.dtype) for _ in kinds]
    counts = [0] * len(kinds)
    pooled_u, pooled_v, langs_u, langs_v = [], [], [], []
    for row in rows:
        pooled: dict[int, torch.Tensor] = {}
        offset = 0
        for length in row.seq_lens:
            ids = torch.tensor([row.input_ids[offset : offset + length]])
            assert row.position_ids[offset : offset + length] == list(range(length))
            out = lm(input_ids=ids, output_hidden_states=True)
            logits, hidden = out.logits[0], out.hidden_states[layer][0]
            targets = torch.tensor(row.targets[offset : offset + length])
            groups = torch.tensor(row.groups[offset : offset + length])
            token_loss = F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="none")
            for g in groups[targets != IGNORE].unique().tolist():
                mine = (groups == g) & (targets != IGNORE)
                sums[g] = sums[g] + token_loss[mine].sum()
                counts[g] += int(mine.sum())
            for k, (start, end) in enumerate(row.spans):
                if offset <= start < offset + length:
                    assert end <= offset + length
                    pooled[k] = hidden[start - offset : end - offset].mean(0)
            offset += length
        for a, b in row.pairs:
            pooled_u.append(pooled[a])
            pooled_v.append(pooled[b])
            for k, langs in ((a, langs_u), (b, langs_v)):
                name = names[row.groups[row.spans[k][0]]]
                assert name.startswith("cl:")
                langs.append(name.removeprefix("cl:").split(">")[0])

    def token_mean(wanted: tuple[str, ...]) -> torch.Tensor | None:
        groups = [g for g, kind in enumerate(kinds) if kind in wanted and counts[g]]
        if not groups:
            return None
        return sum(sums[g] for g in groups) / sum(counts[g] for g in groups)

    loss = token_mean(("ntp", "text"))
    loss = loss if loss is not None else torch.zeros((), dtype=lm.dtype)
    directions = [m for m in (token_mean(("cl_forward",)), token_mean(("cl_backward",))) if m is not None]
    if directions:
        loss = loss + cfg.lambda_cl * sum(directions) / len(directions)
    if pooled_u and cfg.lambda_map:
        terms = reference_map_terms(
            torch.stack(pooled_u),
            torch.stack(pooled_v),
            cfg.map_loss,
            cfg.infonce_temperature,
            cfg.map_margin,
            *((langs_u, langs_v) if cfg.map_center == "language" else ()),
        )
        loss = loss + cfg.lambda_map * sum(terms) / len(terms)
    return loss


def check_against_oracle(cfg, tok, table, rows, initial, grads, grad_norm) -> None:
    """``train_step``'s gradients and norm (:func:`train_step_gradients`) against the fp64 oracle's."""
    import pytest

    from clmap.model import build_model

    lm = build_model(cfg.model, tok, torch.device("cpu"))
    lm.load_state_dict(initial)
    lm = lm.double()
    loss = oracle_loss(lm, rows, table.kinds, table.names, cfg.objective)
    loss.backward()
    expected = {name: p.grad for name, p in lm.named_parameters()}
    assert expected.keys() == grads.keys()
    for name, want in expected.items():
        # fp32 training against the fp64 oracle: an absolute slack of 1e-5 of the tensor's largest entry
        atol = 1e-5 * float(want.abs().max()) + 1e-9
        torch.testing.assert_close(
            grads[name].double(), want, rtol=1e-4, atol=atol, msg=lambda m, name=name: f"{name}: {m}"
        )
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in expected.values()))
    assert grad_norm == pytest.approx(float(norm), rel=1e-5)


class RecordingOptimizer:
    """Stands in for the optimizer in ``train_step``: keeps the full gradients it is asked to apply."""

    def __init__(self, module: torch.nn.Module):
        self.named = list(module.named_parameters())
        self.grads: dict[str, torch.Tensor] = {}
        self.found_inf = None

    def step(self) -> None:
        for name, p in self.named:
            grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            self.grads[name.removeprefix("lm.")] = grad.detach().clone()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for _, p in self.named:
            p.grad = None


def train_step_gradients(cfg, dist_info, tok, table, rows):
    """(initial weights, the gradients ``train_step`` applies, its gradient norm) for one step on ``rows``."""
    from clmap.model import build_model
    from clmap.objectives import MappingObjective
    from clmap.parallel import shard_model
    from clmap.train import prepare_step, train_step

    torch.manual_seed(0)
    lm = build_model(cfg.model, tok, dist_info.device)
    initial = {k: v.detach().clone() for k, v in lm.state_dict().items()}
    objective = shard_model(MappingObjective(lm, table, cfg.objective), "fp32", False)
    optimizer = RecordingOptimizer(objective)
    batch = prepare_step(rows, cfg, table, dist_info)
    _, grad_norm, finite = train_step(objective, optimizer, batch, cfg, dist_info)
    assert bool(finite)
    return initial, optimizer.grads, float(grad_norm)


def main(payload_path: str, out_path: str) -> None:
    """Under torchrun: ``train_step``'s gradients for each form in the payload, saved by rank 0."""
    import dataclasses

    from clmap.config import load_config
    from clmap.data.examples import GroupTable
    from clmap.data.tokenizer import load_tokenizer
    from clmap.parallel import cleanup, init_distributed

    payload = torch.load(payload_path, weights_only=False)
    dist_info = init_distributed("cpu", "gloo")
    cfg = load_config(None, payload["overrides"])
    tok = load_tokenizer(payload["tokenizer"])
    table = GroupTable(payload["languages"], payload["pairs"])
    results = {}
    for form in payload["forms"]:
        form_cfg = dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, map_loss=form))
        results[form] = train_step_gradients(form_cfg, dist_info, tok, table, payload["rows"])
    if dist_info.rank == 0:
        torch.save(results, out_path)
    cleanup()


if __name__ == "__main__":
    main(*sys.argv[1:3])
