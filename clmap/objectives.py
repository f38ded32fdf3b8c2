"""The training objective: L = L_NTP + λ_CL · L_CL + λ_map · L_map (docs/design.md, "The objective").

One forward gives, through the fused kernel, a loss sum and a token count per group (NTP per
language, mapping per direction and pair); the mapping term pools the source spans of the two
directions of each pair at layer ℓ from the same forward. Token means are taken over the whole
optimizer step (all micro-batches, all ranks): the trainer counts the step's targets first and
passes the coefficients in, so 1 process and N processes compute the same loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from clmap.config import ObjectiveConfig
from clmap.data.examples import IGNORE_INDEX, GroupTable
from clmap.kernels import mapping_loss, paired_cosine, pool_spans
from clmap.kernels.mapping_loss_chunks import KeptTokens
from clmap.model import check_packed_attention, decoder_layers, packed_attention_inputs


def hidden_state_layer(layer: int, num_layers: int, name: str) -> int:
    """Index into ``hidden_states`` of a layer setting (``objective.map_layer``, ``--lac-layer``).

    The one convention for layer numbers: ``hidden_states[0]`` is the embedding output,
    ``hidden_states[i]`` the output of decoder layer i, and ``hidden_states[num_layers]`` the output of
    the last decoder layer after the model's final norm (transformers replaces the last entry with
    ``last_hidden_state``). -1 picks the middle layer, ``num_layers // 2``.
    """
    if layer == -1:
        return num_layers // 2
    if not 0 <= layer <= num_layers:
        raise ValueError(
            f"{name}={layer} is outside -1..{num_layers}: 0 = embeddings, i = output of decoder layer i, "
            f"{num_layers} = the last layer after the final norm, -1 = the middle layer ({num_layers // 2})"
        )
    return layer


#: mapping forms that compare each pair with the step's other pairs: their term needs every pair of the
#: optimizer step, so ``train_step`` pools the step first (:func:`step_mapping_plan`)
STEP_FORMS = ("centered", "infonce", "margin")


def map_terms(
    u: torch.Tensor, v: torch.Tensor, cfg: ObjectiveConfig, center_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """[P] the mapping term of each pair (u_i, v_i) of pooled encodings; L_map is their mean.

    ``cosine`` (the paper's): 1 − cos(u_i, v_i). The step forms first centre the 2P pooled states: a
    pretrained model's pooled states share a dominant direction that makes every raw cosine ≈ 1, and each
    language adds its own offset (docs/design.md, "The mapping term"). ``center_ids`` [2P] (u's then
    v's) says which states share a mean: each state loses the mean of the states with its id (None: one
    mean of all). ``centered``: 1 − cos of the centred pair. ``infonce``: ½ (CE of row i + CE of column
    i) of the centred cosine matrix over τ, the other pairs as negatives. ``margin``: ½ the mean over
    j ≠ i of relu(m − S_ii + S_ij) and of relu(m − S_ii + S_ji).
    """
    if cfg.map_loss == "cosine":
        return 1.0 - (F.normalize(u, dim=-1, eps=1e-8) * F.normalize(v, dim=-1, eps=1e-8)).sum(-1)
    states = torch.cat([u, v])
    if center_ids is None:
        states = states - states.mean(0)
    else:
        ids = torch.unique(center_ids, return_inverse=True)[1]
        sums = states.new_zeros(int(ids.max()) + 1, states.shape[1]).index_add(0, ids, states)
        counts = torch.bincount(ids).to(states.dtype)
        states = states - (sums / counts[:, None])[ids]
    u, v = F.normalize(states, dim=-1, eps=1e-8).split(u.shape[0])
    if cfg.map_loss == "centered":
        return 1.0 - (u * v).sum(-1)
    sim = u @ v.T
    if cfg.map_loss == "infonce":
        logits, labels = sim / cfg.infonce_temperature, torch.arange(sim.shape[0], device=sim.device)
        return 0.5 * (
            F.cross_entropy(logits, labels, reduction="none")
            + F.cross_entropy(logits.T, labels, reduction="none")
        )
    if cfg.map_loss == "margin":
        others = ~torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)

        def hinge(s: torch.Tensor) -> torch.Tensor:  # row i: pair i against every other candidate j
            return (F.relu(cfg.map_margin - s.diagonal()[:, None] + s) * others).sum(1)

        return 0.5 * (hinge(sim) + hinge(sim.T)) / max(sim.shape[0] - 1, 1)
    raise ValueError(f"objective.map_loss={cfg.map_loss!r} is not one of cosine, {', '.join(STEP_FORMS)}")


class ObjectiveOutput(NamedTuple):
    loss_sum: torch.Tensor  # [G] fp32 per-group sums of token losses
    count: torch.Tensor  # [G] non-ignored tokens per group
    map_sum: torch.Tensor  # scalar: sum over pairs of the mapping term
    map_count: torch.Tensor  # scalar: number of pairs
    cos_sum: torch.Tensor  # scalar: sum of the pairs' cosines (logged)
    pooled_a: torch.Tensor | None = None  # [P, H] source encodings of a→b sequences (return_pooled=True)
    pooled_b: torch.Tensor | None = None  # [P, H] source encodings of b→a sequences
    #: Σ_g group_weights[g]·loss_sum[g] when the caller passed weights: it carries the gradient (computed
    #: in the fused loss's forward) and loss_sum is then detached
    weighted_loss: torch.Tensor | None = None

    def totals(self) -> torch.Tensor:
        """``[loss_sum (G) | count (G) | map_sum, map_count, cos_sum]`` in float64: the one vector a step
        adds up over micro-batches and all-reduces over ranks (read back by :func:`summarize_totals`)."""
        scalars = torch.stack([self.map_sum.detach(), self.map_count, self.cos_sum])
        return torch.cat([self.loss_sum.detach(), self.count.to(self.loss_sum.dtype), scalars]).double()

    @staticmethod
    def zero_totals(num_groups: int, device: torch.device) -> torch.Tensor:
        return torch.zeros(2 * num_groups + 3, dtype=torch.float64, device=device)


class MappingObjective(nn.Module):
    """Wraps the causal LM so the loss runs inside the FSDP root's forward (lm_head unsharded there)."""

    def __init__(self, lm: PreTrainedModel, table: GroupTable, cfg: ObjectiveConfig):
        super().__init__()
        self.lm = lm
        self.table = table
        self.cfg = cfg
        self.attn_implementation = check_packed_attention(lm)  # refuses before training if packing would leak
        self.map_layer = hidden_state_layer(cfg.map_layer, len(decoder_layers(lm)), "objective.map_layer")
        # the source language of each group's sequences (cl:a>b → a), by first appearance; -1 for the rest
        languages = {name.split(":")[1].split(">")[0]: None for name in table.names if name.startswith("cl:")}
        index = {lang: i for i, lang in enumerate(languages)}
        self._source_language = [
            index[name.split(":")[1].split(">")[0]] if name.startswith("cl:") else -1 for name in table.names
        ]

    def center_ids(
        self, groups: torch.Tensor, span_starts: torch.Tensor, pair_a: torch.Tensor, pair_b: torch.Tensor
    ) -> torch.Tensor:
        """[2p] which pooled states of these pairs share a mean in a step form (``objective.map_center``):
        the language of each source span (the a→b sequences' then the b→a ones'), or 0 for all."""
        if self.cfg.map_center == "all":
            return torch.zeros(2 * pair_a.numel(), dtype=torch.long, device=pair_a.device)
        source = torch.tensor(self._source_language, device=groups.device)
        span_group = groups.flatten()[torch.cat([span_starts[pair_a], span_starts[pair_b]])]
        return source[span_group]

    def _accum_dtype(self, compute: torch.dtype) -> torch.dtype:
        """The fused loss's chunk and weight-gradient dtype (``objective.loss_accum_dtype``)."""
        if self.cfg.loss_accum_dtype == "fp32":
            return torch.float32
        if compute != torch.bfloat16:
            raise ValueError(
                f"objective.loss_accum_dtype=bf16 needs bf16 compute (train.mixed_precision=bf16, or auto "
                f"where it means bf16); the hidden states are {compute}"
            )
        return torch.bfloat16

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        cu_seq_lens: torch.Tensor,
        max_seq_len: int,
        targets: torch.Tensor,
        groups: torch.Tensor,
        span_starts: torch.Tensor,
        span_ends: torch.Tensor,
        pair_a: torch.Tensor,
        pair_b: torch.Tensor,
        return_pooled: bool = False,
        group_weights: torch.Tensor | None = None,
        pooled_only: bool = False,
        map_plan: MapPlan | None = None,
        kept: KeptTokens | None = None,
    ) -> ObjectiveOutput:
        """Per-group loss sums/counts and the mapping term; ``return_pooled`` also returns the pooled
        source encodings of each pair (the dev-set LAC reads them: no second forward). ``group_weights``
        (the step's loss coefficients, :func:`loss_coefficients`) let the fused loss compute its
        gradients during the forward: ``weighted_loss`` is then the differentiable LM part of L.
        ``cu_seq_lens`` / ``max_seq_len`` (from :func:`~clmap.data.stream.collate`) are where the packed
        sequences start and end: no token attends across them, whatever the attention implementation.
        ``kept`` (``prepare_step``'s, made on the host) spares the loss finding its tokens on the device.

        A step form of the mapping term (:data:`STEP_FORMS`) compares every pair of the optimizer step:
        ``pooled_only`` (under no_grad) returns just the pooled encodings, from which
        :func:`step_mapping_plan` computes the term's gradient w.r.t. each of them; given that ``map_plan``,
        ``map_sum`` has the value of this micro-batch's share of the term and exactly that gradient.
        Without a plan a step form is computed over this forward's own pairs (dev metrics)."""
        want_map = (self.cfg.lambda_map > 0 or return_pooled or pooled_only) and pair_a.numel() > 0
        inputs = packed_attention_inputs(
            self.attn_implementation,
            self.lm.get_input_embeddings()(input_ids),
            position_ids,
            cu_seq_lens,
            max_seq_len,
            self.lm.config,
        )
        out = self.lm.get_decoder()(**inputs, use_cache=False, output_hidden_states=want_map)
        hidden = out.last_hidden_state
        zero = hidden.new_zeros((), dtype=torch.float32)
        if pooled_only:  # the pooled sources only (step_mapping_plan): no output layer
            none = zero.new_zeros(len(self.table))
            if want_map:
                layer = out.hidden_states[self.map_layer].flatten(0, 1)
                pooled = self._pool(layer, span_starts, span_ends, pair_a, pair_b)
            else:
                pooled = (hidden.new_zeros(0, hidden.shape[-1], dtype=torch.float32),) * 2
            return ObjectiveOutput(none, none, zero, zero, zero, *pooled)
        loss = mapping_loss(
            hidden.flatten(0, 1),
            self.lm.get_output_embeddings().weight,
            targets.flatten(),
            groups.flatten(),
            len(self.table),
            ignore_index=IGNORE_INDEX,
            z_loss=self.cfg.z_loss,
            group_weights=group_weights,
            accum_dtype=self._accum_dtype(hidden.dtype),
            kept=kept,
        )
        if not want_map:
            return ObjectiveOutput(
                loss.loss_sum,
                loss.count,
                zero,
                zero.detach(),
                zero.detach(),
                weighted_loss=loss.weighted_loss,
            )
        layer = out.hidden_states[self.map_layer].flatten(0, 1)
        if self.cfg.map_loss in STEP_FORMS:
            u, v = self._pool(layer, span_starts, span_ends, pair_a, pair_b)
            cos = F.cosine_similarity(u.detach(), v.detach(), dim=-1, eps=1e-8)
            if map_plan is None:
                ids = self.center_ids(groups, span_starts, pair_a, pair_b)
                map_sum = map_terms(u, v, self.cfg, ids).sum()
            else:  # the value of this share of the step's term, the gradient the whole step's term has
                surrogate = (u * map_plan.grad_a).sum() + (v * map_plan.grad_b).sum()
                map_sum = surrogate - surrogate.detach() + map_plan.value
            pooled = (u.detach(), v.detach()) if return_pooled else (None, None)
        else:
            a_starts, a_ends = span_starts[pair_a], span_ends[pair_a]
            cos = paired_cosine(layer, a_starts, a_ends, span_starts[pair_b], span_ends[pair_b])
            map_sum = (1.0 - cos).sum()
            pooled = (None, None)
            if return_pooled:
                pooled = tuple(p.detach() for p in self._pool(layer, span_starts, span_ends, pair_a, pair_b))
        pairs = cos.new_full((), float(cos.numel()), dtype=torch.float32)  # a fill, not a host copy
        return ObjectiveOutput(
            loss.loss_sum,
            loss.count,
            map_sum,
            pairs,
            cos.detach().sum(),
            *pooled,
            weighted_loss=loss.weighted_loss,
        )

    @staticmethod
    def _pool(layer, starts, ends, pair_a, pair_b) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean-pooled source spans of the a→b and of the b→a sequence of each pair, [P, H] each."""
        return pool_spans(layer, starts[pair_a], ends[pair_a]), pool_spans(
            layer, starts[pair_b], ends[pair_b]
        )


class MapPlan(NamedTuple):
    """One micro-batch's share of a step form of the mapping term (:func:`step_mapping_plan`)."""

    grad_a: torch.Tensor  # [p, H] d(Σ over the step's pairs of the term) / d(pooled a→b source) of its pairs
    grad_b: torch.Tensor  # [p, H] the same for the b→a sources
    value: torch.Tensor  # scalar: Σ of the term over its own pairs (logged)


def step_mapping_plan(
    objective: nn.Module, micro: Sequence[dict], rank_pairs: Sequence[int], cfg: ObjectiveConfig
) -> list[MapPlan] | None:
    """The gradient of a step form of L_map w.r.t. every pooled encoding of the step, split by micro-batch.

    A step form (:data:`STEP_FORMS`) compares each pair with every other pair of the optimizer step, on
    every rank, but a step runs its micro-batches' backward one at a time. So, as GradCache does, the
    step's source spans are first pooled without gradients (one more forward of the decoder, no output
    layer), gathered from all ranks in rank order (``rank_pairs``: pairs of each rank, known on every
    host), and the term is differentiated w.r.t. those pooled states; each micro-batch's forward then
    back-propagates its own states' share. The gradient is exactly that of the step's term, whatever
    the micro-batch split and world size (this assumes a deterministic forward: no dropout).
    None when the step has no pairs or the form is the paper's per-pair cosine.
    """
    if cfg.map_loss not in STEP_FORMS or cfg.lambda_map == 0 or sum(rank_pairs) == 0:
        return None
    with torch.no_grad():
        pooled = [objective(**batch, pooled_only=True) for batch in micro]
    sizes = [out.pooled_a.shape[0] for out in pooled]
    u = torch.cat([out.pooled_a for out in pooled])
    v = torch.cat([out.pooled_b for out in pooled])
    ids = [objective.center_ids(b["groups"], b["span_starts"], b["pair_a"], b["pair_b"]) for b in micro]
    ids_u = torch.cat([i[: len(i) // 2] for i in ids]).to(u.dtype)  # small integers: exact in a float
    ids_v = torch.cat([i[len(i) // 2 :] for i in ids]).to(u.dtype)
    rank = 0
    if dist.is_initialized() and dist.get_world_size() > 1:
        rank, most = dist.get_rank(), max(rank_pairs)
        local = torch.cat([u, v, ids_u[:, None], ids_v[:, None]], dim=1)
        padded = local.new_zeros(most, local.shape[1])
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in rank_pairs]
        dist.all_gather(parts, padded)
        both = torch.cat([part[:n] for part, n in zip(parts, rank_pairs, strict=True)])
        u, v, ids_u, ids_v = both.split([u.shape[1], u.shape[1], 1, 1], dim=1)
        ids_u, ids_v = ids_u[:, 0], ids_v[:, 0]
    u, v = u.detach().requires_grad_(), v.detach().requires_grad_()
    with torch.enable_grad():
        terms = map_terms(u, v, cfg, torch.cat([ids_u, ids_v]).long())
        grad_a, grad_b = torch.autograd.grad(terms.sum(), (u, v))
    start = sum(rank_pairs[:rank])
    plans = []
    for n in sizes:
        mine = slice(start, start + n)
        plans.append(MapPlan(grad_a[mine], grad_b[mine], terms[mine].detach().sum()))
        start += n
    return plans


def loss_coefficients(
    table: GroupTable, counts: torch.Tensor, num_pairs: float, cfg: ObjectiveConfig
) -> tuple[torch.Tensor, float]:
    """Weights that turn per-group sums into L for a whole step, given the step's global counts.

    L_NTP is a token mean over all NTP (and pairs-as-text) tokens; L_CL = ½(L_a→b + L_b→a), each a
    token mean over its own direction (L_CL = L_a→b when one direction is trained); L_map a mean
    over pairs.
    """
    kinds = table.kinds
    counts = counts.double()
    coef = torch.zeros(len(table), dtype=torch.float64, device=counts.device)
    ntp = torch.tensor([k in ("ntp", "text") for k in kinds], device=counts.device)
    if counts[ntp].sum() > 0:
        coef[ntp] = 1.0 / counts[ntp].sum()
    directions = [d for d in ("cl_forward", "cl_backward") if counts[_mask(kinds, d, counts)].sum() > 0]
    for d in directions:
        mask = _mask(kinds, d, counts)
        coef[mask] = cfg.lambda_cl / len(directions) / counts[mask].sum()
    map_coef = cfg.lambda_map / num_pairs if num_pairs > 0 else 0.0
    return coef.float(), map_coef


def _mask(kinds: list[str], kind: str, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor([k == kind for k in kinds], device=like.device)


def summarize(
    table: GroupTable,
    loss_sum: torch.Tensor,
    count: torch.Tensor,
    map_sum: float,
    map_count: float,
    cos_sum: float,
    cfg: ObjectiveConfig,
) -> dict[str, float]:
    """Per-task and per-group means of a step (sums already reduced over micro-batches and ranks)."""
    loss_sum, count = loss_sum.double().cpu(), count.double().cpu()
    coef, map_coef = loss_coefficients(table, count, map_count, cfg)
    metrics: dict[str, float] = {}

    def mean(kinds: tuple[str, ...]) -> float | None:
        mask = torch.tensor([k in kinds for k in table.kinds])
        n = count[mask].sum()
        return float(loss_sum[mask].sum() / n) if n > 0 else None

    for name, kinds in {
        "ntp": ("ntp", "text"),
        "cl_forward": ("cl_forward",),
        "cl_backward": ("cl_backward",),
    }.items():
        value = mean(kinds)
        if value is not None:
            metrics[f"loss/{name}"] = value
    directions = [metrics[k] for k in ("loss/cl_forward", "loss/cl_backward") if k in metrics]
    if directions:
        metrics["loss/cl"] = sum(directions) / len(directions)
    if map_count > 0:
        metrics["loss/map"] = map_sum / map_count
        metrics["map/mean_cos"] = cos_sum / map_count
    metrics["loss/total"] = float((coef.double() * loss_sum).sum()) + map_coef * map_sum
    for g, name in enumerate(table.names):
        if count[g] > 0:
            metrics[f"group/{name}"] = float(loss_sum[g] / count[g])
    metrics["tokens/targets"] = float(count.sum())
    return metrics


def summarize_totals(table: GroupTable, totals: torch.Tensor, cfg: ObjectiveConfig) -> dict[str, float]:
    """:func:`summarize` of a vector laid out by :meth:`ObjectiveOutput.totals`."""
    g = len(table)
    return summarize(table, totals[:g], totals[g : 2 * g], *totals[2 * g :].tolist(), cfg)
