"""Fused linear + cross-entropy with per-group sums: the NTP, CL (both directions) and per-language losses.

One call of :func:`mapping_loss` takes the final hidden states of every token of a packed batch,
the lm_head weight and the targets (``ignore_index`` where no loss is wanted: source side and
tag of a CL pair, padding) plus a group id per token (task x direction x language), and returns
each group's loss sum and token count, never holding the ``N x V`` logits. Means are
``loss_sum / count.clamp(min=1)``, so one call yields L_NTP, L_{a->b}, L_{b->a} and their breakdown.

Both fast paths walk the non-ignored tokens in chunks of rows: one GEMM gives a chunk's fp32 logits,
a row pass turns them into log-sum-exp, per-group sums and (when gradients are due) ``dlogits`` in
place, and two GEMMs give the chunk's hidden gradient and add its weight gradient (fp32 accumulator).
The row pass is a Triton kernel (``triton`` backend: CUDA, or CPU under ``TRITON_INTERPRET=1``) or
plain torch (``torch`` backend, the CPU default); ``reference`` is the readable, unfused definition.

Two ways to get gradients:

* ``group_weights`` given (the trainer knows each group's loss coefficient before the forward): the
  gradients of ``weighted = sum_g w_g * loss_sum_g`` are computed during the forward walk, three GEMMs
  in all (Liger-Kernel's trick); ``loss_sum`` is then returned detached, for logging.
* no weights: ``loss_sum`` itself is differentiable; the backward walks the chunks again (one more GEMM).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch
from clmap.kernels.dispatch import choose_backend
from torch import Tensor

#: Bytes of fp32 logits per chunk (the memory price of the fused loss beyond its gradients). On CUDA a
#: larger chunk means fewer passes over the fp32 weight-gradient accumulator; on CPU it stays in cache.
CHUNK_BYTES = {"cpu": 64 * 2**20, "cuda": 1024 * 2**20}


class GroupedLoss(NamedTuple):
    """Per-group loss sums (fp32) and non-ignored token counts (int64).

    ``weighted`` is ``sum_g group_weights[g] * loss_sum[g]`` when weights were given: then it carries the
    gradient and ``loss_sum`` is detached; without weights it is None and ``loss_sum`` is differentiable.
    """

    loss_sum: Tensor
    count: Tensor
    weighted: Tensor | None = None


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


@dataclass
class _Plan:
    """What every walk over the chunks needs: the kept tokens and how to split them."""

    index: Tensor | None  # [M] positions of the non-ignored tokens in [N]; None: all N are kept
    targets: Tensor  # [M] int64
    groups: Tensor  # [M] int64
    count: Tensor  # [G] int64
    num_rows: int  # N
    num_groups: int
    dtype: torch.dtype  # compute dtype: promote(hidden, weight)
    z_loss: float
    backend: str  # "triton" | "torch"
    chunk_rows: int


def _make_plan(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    groups: Tensor,
    num_groups: int,
    ignore_index: int,
    z_loss: float,
    backend: str,
    chunk_bytes: int | None,
) -> _Plan:
    """Drop ignored tokens up front (CL rows ignore about half) and check the rest (two host syncs)."""
    valid = targets != ignore_index
    index = valid.nonzero().squeeze(1)
    kept_targets, kept_groups = targets[index], groups[index]
    vocab = weight.shape[0]
    bad = (kept_targets < 0) | (kept_targets >= vocab) | (kept_groups < 0) | (kept_groups >= num_groups)
    if bad.any():
        i = int(index[bad.nonzero()[0, 0]])
        raise ValueError(
            f"token {i}: target {int(targets[i])} must be in [0, {vocab}) or ignore_index={ignore_index}, "
            f"and group {int(groups[i])} in [0, {num_groups})"
        )
    count = torch.bincount(kept_groups, minlength=num_groups)[:num_groups].long()
    if index.numel() == targets.numel():  # nothing ignored: read rows in place, no gather
        index, kept_targets, kept_groups = None, targets.contiguous(), groups.contiguous()
    if chunk_bytes is None:
        chunk_bytes = CHUNK_BYTES["cuda" if hidden.is_cuda else "cpu"]
    return _Plan(
        index,
        kept_targets,
        kept_groups,
        count,
        hidden.shape[0],
        num_groups,
        torch.promote_types(hidden.dtype, weight.dtype),
        float(z_loss),
        backend,
        max(1, chunk_bytes // (4 * max(vocab, 1))),
    )


@functools.cache
def _fp32_out_gemm(device: torch.device) -> bool:
    """Whether torch has cuBLAS fp32-output GEMMs for bf16/fp16 operands (``out_dtype``, torch 2.8+)."""
    a = torch.ones(2, 2, dtype=torch.bfloat16, device=device)
    acc = torch.zeros(2, 2, dtype=torch.float32, device=device)
    try:
        torch.mm(a, a, out_dtype=torch.float32)
        torch.addmm(acc, a, a, out_dtype=torch.float32, out=acc)
    except (RuntimeError, TypeError, NotImplementedError):
        warnings.warn(
            "this torch has no fp32-output bf16 GEMM: the fused loss upcasts its weight-gradient "
            "products (slower, more memory)",
            stacklevel=3,
        )
        return False
    return True


def _mm(a: Tensor, b: Tensor, out_dtype: torch.dtype) -> Tensor:
    """``a @ b`` as ``out_dtype``: cuBLAS keeps bf16/fp16 operands on the tensor cores and writes an fp32
    result directly; CPU products run in fp32."""
    if a.is_cuda and a.dtype != torch.float32:
        if out_dtype == a.dtype:
            return a @ b
        if _fp32_out_gemm(a.device):
            return torch.mm(a, b, out_dtype=out_dtype)
        return (a @ b).to(out_dtype)
    return (a.float() @ b.float()).to(out_dtype)


def _addmm_(acc: Tensor, a: Tensor, b: Tensor) -> None:
    """``acc += a @ b`` into the fp32 accumulator ``acc``, whatever the operands' dtype."""
    if a.is_cuda and a.dtype != torch.float32 and _fp32_out_gemm(a.device):
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    else:
        acc.addmm_(a.float(), b.float())


def _logits_rows_torch(
    logits: Tensor,
    targets: Tensor,
    groups: Tensor,
    lse: Tensor,
    loss_sum: Tensor | None,
    scale: Tensor | None,
    z_loss: float,
    grad_dtype: torch.dtype | None,
) -> Tensor | None:
    """The row pass in torch ops, as ``mapping_loss_triton.logits_rows`` but returning *unscaled* fp32
    dlogits: on the CPU one more pass over [R, V] costs more than scaling the [R, H] operands, which
    :func:`_chunk_pass` does instead (``scale`` is unused here)."""
    if loss_sum is not None:  # in-place softmax: max, exp, sum (fewest passes over [R, V], no temporary)
        loss = -logits.gather(1, targets[:, None]).squeeze(1)
        row_max = logits.amax(dim=1)
        logits.sub_(row_max[:, None]).exp_()
        sum_exp = logits.sum(dim=1)
        lse.copy_(row_max + sum_exp.log())
        loss += lse + z_loss * lse * lse if z_loss else lse
        loss_sum.index_add_(0, groups, loss)
        if grad_dtype is None:
            return None
        factor = 1.0 / sum_exp
    else:
        if grad_dtype is None:
            return None
        logits.sub_(lse[:, None]).exp_()
        factor = None
    if z_loss:
        z_factor = 1.0 + 2.0 * z_loss * lse
        factor = z_factor if factor is None else factor * z_factor
    if factor is not None:
        logits.mul_(factor[:, None])
    logits[torch.arange(logits.shape[0], device=logits.device), targets] -= 1.0
    return logits


def _chunk_pass(
    hidden: Tensor,
    weight: Tensor,
    plan: _Plan,
    *,
    lse: Tensor | None = None,
    scale: Tensor | None = None,
    grad_hidden: bool = False,
    grad_weight: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """One walk over the kept tokens: per chunk, logits GEMM -> row pass -> gradient GEMMs.

    ``lse`` None: compute it and the per-group sums; else reuse it (the backward's walk). ``scale`` [M]:
    each kept token's upstream gradient, needed when a gradient is asked for. Returns ``(lse, loss_sum or
    None, grad_hidden [N,H] in hidden's dtype or None, grad_weight [V,H] fp32 or None)``.
    """
    device, dtype = hidden.device, plan.dtype
    w = weight.to(dtype)
    if not w.is_cuda or plan.backend == "torch":
        w = w.float()  # the torch path's GEMMs run in fp32: convert the weight once, not per chunk
    num_kept, (vocab, width) = plan.targets.numel(), w.shape
    loss_sum = None
    if lse is None:
        lse = torch.empty(num_kept, dtype=torch.float32, device=device)
        loss_sum = torch.zeros(plan.num_groups, dtype=torch.float32, device=device)
    grad_dtype = None
    if grad_hidden or grad_weight:
        grad_dtype = dtype if plan.backend == "triton" else torch.float32
    gh = gw = None
    if grad_hidden:
        alloc = torch.empty if plan.index is None else torch.zeros
        gh = alloc(plan.num_rows, width, dtype=hidden.dtype, device=device)
    if grad_weight:
        gw = torch.zeros(vocab, width, dtype=torch.float32, device=device)
    if plan.backend == "triton":
        from clmap.kernels.mapping_loss_triton import logits_rows as rows_pass
    else:
        rows_pass = _logits_rows_torch
    scale_after = plan.backend != "triton" and scale is not None  # see _logits_rows_torch
    for s in range(0, num_kept, plan.chunk_rows):
        e = min(num_kept, s + plan.chunk_rows)
        idx = None if plan.index is None else plan.index[s:e]
        h = (hidden[s:e] if idx is None else hidden.index_select(0, idx)).to(dtype)
        logits = _mm(h, w.t(), torch.float32)
        dl = rows_pass(
            logits,
            plan.targets[s:e],
            plan.groups[s:e],
            lse[s:e],
            loss_sum,
            None if scale is None else scale[s:e],
            plan.z_loss,
            grad_dtype,
        )
        row_scale = scale[s:e, None] if scale_after else None
        if gh is not None:
            part = _mm(dl, w, torch.float32 if scale_after else hidden.dtype)
            if scale_after:
                part = part.mul_(row_scale).to(hidden.dtype)
            if idx is None:
                gh[s:e] = part
            else:
                gh.index_copy_(0, idx, part)
        if gw is not None:
            _addmm_(gw, dl.t(), h.float() * row_scale if scale_after else h)
        del logits, dl
    return lse, loss_sum, gh, gw


class _MappingLoss(torch.autograd.Function):
    """Differentiable per-group sums: the forward keeps only ``lse``; the backward walks again."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, plan: _Plan) -> Tensor:
        lse, loss_sum, _, _ = _chunk_pass(hidden, weight, plan)
        ctx.save_for_backward(hidden, weight, lse)
        ctx.plan = plan
        return loss_sum

    @staticmethod
    def backward(ctx, grad_loss_sum: Tensor):
        hidden, weight, lse = ctx.saved_tensors
        scale = grad_loss_sum.float()[ctx.plan.groups].contiguous()
        _, _, gh, gw = _chunk_pass(
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
    def forward(ctx, hidden: Tensor, weight: Tensor, group_weights: Tensor, plan: _Plan):
        scale = group_weights.float()[plan.groups].contiguous()
        _, loss_sum, gh, gw = _chunk_pass(
            hidden,
            weight,
            plan,
            scale=scale,
            grad_hidden=ctx.needs_input_grad[0],
            grad_weight=ctx.needs_input_grad[1],
        )
        ctx.save_for_backward(gh, gw)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(loss_sum)
        return _weighted_sum(group_weights, loss_sum), loss_sum

    @staticmethod
    def backward(ctx, grad_weighted: Tensor, _grad_loss_sum: Tensor):
        gh, gw = ctx.saved_tensors
        g = grad_weighted.float()
        return (
            None if gh is None else gh * g,
            None if gw is None else _scaled_cast(gw, g, ctx.weight_dtype),
            None,
            None,
        )


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
) -> GroupedLoss:
    """Per-group sums of ``logsumexp(h W^T) - (h W^T)[target] + z_loss * logsumexp^2`` without N x V logits.

    hidden [N,H] (fp32/bf16/fp16), weight [V,H] (the lm_head, possibly the tied embedding), targets [N]
    int64 (``ignore_index`` = no loss), groups [N] int64 in ``[0, num_groups)`` (None: all group 0).
    ``group_weights`` [G]: also return ``weighted = sum_g w_g loss_sum_g``, whose gradients are computed
    in the forward pass (the fast path for training; ``loss_sum`` is then detached). ``count`` [G] int64
    is never differentiable. ``chunk_bytes`` bounds the fp32 logits held at once (:data:`CHUNK_BYTES`).
    """
    _check(hidden, weight, targets)
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
    plan = _make_plan(hidden, weight, targets, groups, num_groups, ignore_index, z_loss, choice, chunk_bytes)
    wants_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    if group_weights is not None and wants_grad:
        weighted, loss_sum = _WeightedMappingLoss.apply(hidden, weight, group_weights, plan)
        return GroupedLoss(loss_sum, plan.count, weighted)
    loss_sum = _MappingLoss.apply(hidden, weight, plan)
    if group_weights is None:
        return GroupedLoss(loss_sum, plan.count)
    return GroupedLoss(loss_sum, plan.count, _weighted_sum(group_weights, loss_sum))
