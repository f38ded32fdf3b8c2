"""Fused linear + cross-entropy with per-group sums: the NTP, CL (both directions) and per-language losses.

One call of :func:`mapping_loss` takes the final hidden states of every token of a packed batch,
the lm_head weight and the targets (``ignore_index`` where no loss is wanted: source side and
tag of a CL pair, padding) plus a group id per token (task x direction x language), and returns
each group's loss sum and token count, never holding the ``N x V`` logits. Means are
``loss_sum / count.clamp(min=1)``, so one call yields L_NTP, L_{a->b}, L_{b->a} and their breakdown.

This file reads top to bottom: the readable definition (:func:`mapping_loss_reference`, the
``reference`` backend and the tests' oracle), the two private autograd Functions, the public
:func:`mapping_loss`. Both fast backends walk the non-ignored tokens in chunks of rows
(``mapping_loss_chunks``: logits GEMM, row pass, gradient GEMMs); the row pass is a Triton kernel
(``mapping_loss_triton``; ``triton`` backend: CUDA, or CPU under ``TRITON_INTERPRET=1``) or plain torch
(``torch`` backend, the CPU default).

Two ways to get gradients:

* ``group_weights`` given (the trainer knows each group's loss coefficient before the forward): the
  gradients of ``weighted_loss = sum_g w_g * loss_sum_g`` are computed during the forward walk, three
  GEMMs in all (Liger-Kernel's trick); ``loss_sum`` is then returned detached, for logging.
* no weights: ``loss_sum`` itself is differentiable; the backward walks the chunks again (one more GEMM).

``accum_dtype`` picks the precision of the logits chunks and of the weight-gradient accumulator: fp32
(default, the more accurate) or the inputs' bf16/fp16, which needs half the memory (Liger-Kernel's and
Cut Cross-Entropy's layout).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from clmap.kernels.dispatch import choose_backend
from clmap.kernels.mapping_loss_chunks import ChunkPlan, KeptTokens, chunk_pass, make_plan


class GroupedLoss(NamedTuple):
    """Per-group loss sums (fp32) and non-ignored token counts (int64).

    ``weighted_loss`` is ``sum_g group_weights[g] * loss_sum[g]`` when weights were given: then it carries
    the gradient and ``loss_sum`` is detached; without weights it is None and ``loss_sum`` is differentiable.
    """

    loss_sum: Tensor
    count: Tensor
    weighted_loss: Tensor | None = None


def _groups_or_zeros(targets: Tensor, groups: Tensor | None) -> Tensor:
    if groups is None:
        return torch.zeros_like(targets)
    if groups.shape != targets.shape:
        raise ValueError(f"groups {tuple(groups.shape)} must match targets {tuple(targets.shape)}")
    return groups.long()


def _check(hidden: Tensor, weight: Tensor, targets: Tensor) -> None:
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"expected hidden [N,H] and weight [V,H], got {tuple(hidden.shape)}, {tuple(weight.shape)}"
        )
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets {tuple(targets.shape)} must be [N] with N={hidden.shape[0]}")


def mapping_loss_reference(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    groups: Tensor | None = None,
    num_groups: int = 1,
    *,
    ignore_index: int = -100,
    z_loss: float = 0.0,
) -> GroupedLoss:
    """Readable definition: fp32 logits, per-token loss ``lse - logit[t] + z * lse^2``, summed by group.

    fp64 inputs are computed (and summed) in fp64: that is the ground truth of the tests.
    """
    _check(hidden, weight, targets)
    groups = _groups_or_zeros(targets, groups)
    valid = targets != ignore_index
    dtype = torch.float64 if torch.float64 in (hidden.dtype, weight.dtype) else torch.float32
    logits = hidden.to(dtype) @ weight.to(dtype).t()
    lse = torch.logsumexp(logits, dim=-1)
    safe_targets = torch.where(valid, targets, torch.zeros_like(targets))
    target_logit = logits.gather(1, safe_targets[:, None]).squeeze(1)
    per_token = (lse - target_logit + z_loss * lse * lse) * valid
    loss_sum = torch.zeros(num_groups, dtype=dtype, device=hidden.device).index_add(0, groups, per_token)
    count = torch.bincount(groups[valid], minlength=num_groups)[:num_groups].long()
    return GroupedLoss(loss_sum, count)


class _MappingLoss(torch.autograd.Function):
    """Differentiable per-group sums: the forward keeps only ``lse``; the backward walks again."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, plan: ChunkPlan) -> Tensor:
        lse, loss_sum, _, _ = chunk_pass(hidden, weight, plan)
        ctx.save_for_backward(hidden, weight, lse)
        ctx.plan = plan
        return loss_sum

    @staticmethod
    def backward(ctx, grad_loss_sum: Tensor):
        hidden, weight, lse = ctx.saved_tensors
        scale = grad_loss_sum.float()[ctx.plan.groups].contiguous()
        _, _, gh, gw = chunk_pass(
            hidden,
            weight,
            ctx.plan,
            lse=lse,
            scale=scale,
            grad_hidden=ctx.needs_input_grad[0],
            grad_weight=ctx.needs_input_grad[1],
        )
        return gh, None if gw is None else gw.to(weight.dtype), None


class _WeightedMappingLoss(torch.autograd.Function):
    """``sum_g w_g * loss_sum_g`` with its gradients computed in the forward walk (3 GEMMs, not 4)."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, group_weights: Tensor, plan: ChunkPlan):
        scale = group_weights.float()[plan.groups].contiguous()
        _, loss_sum, gh, gw = chunk_pass(
            hidden,
            weight,
            plan,
            scale=scale,
            grad_hidden=ctx.needs_input_grad[0],
            grad_weight=ctx.needs_input_grad[1],
        )
        ctx.save_for_backward(gh, gw)
        ctx.weight_dtype = weight.dtype
        ctx.scaled_in_place = False
        ctx.mark_non_differentiable(loss_sum)
        return _weighted_sum(group_weights, loss_sum), loss_sum

    @staticmethod
    def backward(ctx, grad_weighted: Tensor, _grad_loss_sum: Tensor):
        if ctx.scaled_in_place:
            raise RuntimeError(
                "mapping_loss(accum_dtype=bf16/fp16, group_weights=...) scales its precomputed weight "
                "gradient in place: backpropagate through weighted_loss once"
            )
        gh, gw = ctx.saved_tensors
        g = grad_weighted.float()
        if gw is not None and gw.dtype != torch.float32:
            # low-precision accumulator: already the weight's dtype, scaled in place (no second V x H buffer)
            ctx.scaled_in_place = True
            gw = gw.mul_(g)
        elif gw is not None:
            gw = _scaled_cast(gw, g, ctx.weight_dtype)
        return None if gh is None else gh * g, gw, None, None


def _weighted_sum(group_weights: Tensor, loss_sum: Tensor) -> Tensor:
    """``sum_g w_g * loss_sum_g`` in the sums' dtype (fp32, or fp64 for the reference's oracle)."""
    return (group_weights.to(loss_sum.dtype) * loss_sum).sum()


def _scaled_cast(x: Tensor, scale: Tensor, dtype: torch.dtype, block_bytes: int = 64 * 2**20) -> Tensor:
    """``(x * scale).to(dtype)`` rounded once, by row blocks: no second full-size fp32 tensor."""
    out = torch.empty_like(x, dtype=dtype)
    step = max(1, block_bytes // max(1, x.shape[1] * x.element_size()))
    for s in range(0, x.shape[0], step):
        out[s : s + step] = x[s : s + step] * scale
    return out


def mapping_loss(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    groups: Tensor | None = None,
    num_groups: int = 1,
    *,
    ignore_index: int = -100,
    z_loss: float = 0.0,
    group_weights: Tensor | None = None,
    backend: str | None = None,
    chunk_bytes: int | None = None,
    accum_dtype: torch.dtype = torch.float32,
    kept: KeptTokens | None = None,
) -> GroupedLoss:
    """Per-group sums of ``logsumexp(h W^T) - (h W^T)[target] + z_loss * logsumexp^2`` without N x V logits.

    hidden [N,H] (fp32/bf16/fp16), weight [V,H] (the lm_head, possibly the tied embedding), targets [N]
    int64 (``ignore_index`` = no loss), groups [N] int64 in ``[0, num_groups)`` (None: all group 0).
    ``group_weights`` [G]: also return ``weighted_loss = sum_g w_g loss_sum_g``, whose gradients are
    computed in the forward pass (the fast path for training; ``loss_sum`` is then detached). ``count`` [G]
    int64 is never differentiable. ``chunk_bytes`` bounds the logits held at once (default
    ``mapping_loss_chunks.CHUNK_BYTES``, or ``LOW_PRECISION_CHUNK_BYTES`` with a low ``accum_dtype``).

    ``accum_dtype``: ``torch.float32`` (default) holds fp32 logits chunks and an fp32 weight-gradient
    accumulator; the inputs' own dtype (bf16/fp16 hidden and weight) holds both in that dtype, half the
    memory, at the price of one rounding of each logit and of the accumulator per chunk. Row math and
    GEMM accumulation stay fp32 either way. With ``group_weights`` the low-precision weight gradient is
    scaled in place, so ``weighted_loss`` can be backpropagated once. The ``reference`` backend, being the
    definition, always computes in fp32 (fp64 for fp64 inputs).

    ``kept`` (``mapping_loss_chunks.kept_tokens`` of the same targets and groups, made on the host): the
    kept tokens need not be found on the device, so the call never waits for it (the trainer's path).
    """
    _check(hidden, weight, targets)
    compute_dtype = torch.promote_types(hidden.dtype, weight.dtype)
    if accum_dtype != torch.float32 and (accum_dtype != compute_dtype or accum_dtype.itemsize != 2):
        raise ValueError(
            f"accum_dtype={accum_dtype} must be torch.float32 or the dtype of hidden and weight "
            f"({hidden.dtype}, {weight.dtype}): low-precision accumulation is for bf16/fp16 inputs"
        )
    choice = choose_backend(hidden, backend)
    groups = _groups_or_zeros(targets, groups)
    if group_weights is not None and group_weights.shape != (num_groups,):
        raise ValueError(f"group_weights {tuple(group_weights.shape)} must be [num_groups={num_groups}]")
    if choice == "reference":
        out = mapping_loss_reference(
            hidden, weight, targets, groups, num_groups, ignore_index=ignore_index, z_loss=z_loss
        )
        if group_weights is None:
            return out
        return GroupedLoss(out.loss_sum.detach(), out.count, _weighted_sum(group_weights, out.loss_sum))
    plan = make_plan(
        hidden,
        weight,
        targets,
        groups,
        num_groups,
        ignore_index,
        z_loss,
        choice,
        chunk_bytes,
        accum_dtype,
        kept,
    )
    wants_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    if group_weights is not None and wants_grad:
        weighted, loss_sum = _WeightedMappingLoss.apply(hidden, weight, group_weights, plan)
        return GroupedLoss(loss_sum, plan.count, weighted)
    loss_sum = _MappingLoss.apply(hidden, weight, plan)
    if group_weights is None:
        return GroupedLoss(loss_sum, plan.count)
    return GroupedLoss(loss_sum, plan.count, _weighted_sum(group_weights, loss_sum))
