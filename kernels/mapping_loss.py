"""Fused linear + cross-entropy with per-group sums: the NTP, CL (both directions) and per-language losses.

One call of :func:`mapping_loss` takes the final hidden states of every token of a packed batch,
the lm_head weight and the targets (``ignore_index`` where no loss is wanted: source side and
tag of a CL pair, padding) plus a group id per token (task x direction x language), and returns
each group's loss sum and token count, never holding the ``N x V`` logits. Means are
``loss_sum / count.clamp(min=1)``, so one call yields L_NTP, L_{a->b}, L_{b->a} and their breakdown.

Three paths, chosen by :func:`clmap.kernels.dispatch.choose_backend`:

* ``triton`` (CUDA, or CPU under ``TRITON_INTERPRET=1``): the kernels of ``mapping_loss_triton``.
* ``torch`` (default on CPU): chunks of tokens with a bounded logits buffer (:data:`CHUNK_BYTES`).
* ``reference``: plain PyTorch with full fp32 logits; the ground truth of the tests.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from clmap.kernels.dispatch import choose_backend
from torch import Tensor

#: Logits buffer of the chunked torch path (fp32 bytes per chunk); bounds its extra memory.
CHUNK_BYTES = 64 * 2**20
#: The torch path computes both gradients in the forward pass (one logits pass instead of two,
#: as ``F.linear_cross_entropy``'s chunked path does) while one fp32 weight-gradient buffer per
#: group present in the batch fits in this many bytes; otherwise it recomputes in backward.
PRECOMPUTE_GRAD_BYTES = 256 * 2**20


class GroupedLoss(NamedTuple):
    """Per-group loss sums (differentiable, fp32) and non-ignored token counts (int64)."""

    loss_sum: Tensor
    count: Tensor


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
    hidden: Tensor, weight: Tensor, targets: Tensor, groups: Tensor | None = None, num_groups: int = 1,
    *, ignore_index: int = -100, z_loss: float = 0.0,
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


class _Compacted(NamedTuple):
    """Non-ignored tokens, ordered by group so each group is a contiguous run."""

    index: Tensor  # [M] positions in the original [N]
    hidden: Tensor  # [M,H]
    targets: Tensor  # [M]
    groups: Tensor  # [M]
    count: Tensor  # [G] int64


def _compact(
    hidden: Tensor, targets: Tensor, groups: Tensor, num_groups: int, ignore_index: int
) -> _Compacted:
    """Drop ignored tokens up front (CL batches ignore about half) and sort the rest by group."""
    valid = targets != ignore_index
    index = valid.nonzero().squeeze(1)
    kept_groups = groups[index]
    kept_groups, order = torch.sort(kept_groups, stable=True)
    index = index[order]
    count = torch.bincount(kept_groups, minlength=num_groups)[:num_groups].long()
    return _Compacted(index, hidden.index_select(0, index).contiguous(), targets[index].contiguous(),
                      kept_groups.contiguous(), count)


def _scatter_rows(rows: Tensor, index: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """Gradient rows of the kept tokens back to all N positions (zeros at ignored ones)."""
    out = torch.zeros(n, rows.shape[1], dtype=dtype, device=rows.device)
    out.index_copy_(0, index, rows.to(dtype))
    return out


def _chunk_rows(vocab: int) -> int:
    return max(1, CHUNK_BYTES // (4 * max(vocab, 1)))


def _dlogits_(logits: Tensor, lse: Tensor, targets: Tensor, z_loss: float) -> Tensor:
    """In place: fp32 logits -> d(per-token loss)/d(logits) = softmax * (1 + 2 z lse) - onehot."""
    logits.sub_(lse[:, None]).exp_()
    if z_loss:
        logits.mul_((1.0 + 2.0 * z_loss * lse)[:, None])
    rows = torch.arange(logits.shape[0], device=logits.device)
    logits[rows, targets] -= 1.0
    return logits


def _segments(groups: Tensor) -> list[tuple[int, int, int]]:
    """(group, start, end) runs of a sorted group vector."""
    if groups.numel() == 0:
        return []
    ids, counts = torch.unique_consecutive(groups, return_counts=True)
    out, start = [], 0
    for g, c in zip(ids.tolist(), counts.tolist(), strict=True):
        out.append((g, start, start + c))
        start += c
    return out


class _ChunkedMappingLoss(torch.autograd.Function):
    """Chunks of tokens, logits buffer bounded by CHUNK_BYTES; see PRECOMPUTE_GRAD_BYTES for the two modes.

    The weight gradient is a product of fp32 ``dlogits`` and fp32 hidden rows whatever the input dtype:
    a low-precision product per chunk and group would round more than plain PyTorch does.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, c_index: Tensor, c_hidden: Tensor, c_targets: Tensor,
                c_groups: Tensor, num_groups: int, z_loss: float, want_grad: bool) -> Tensor:
        dtype = c_hidden.dtype
        M, V = c_hidden.shape[0], weight.shape[0]
        w = weight if weight.dtype == dtype else weight.to(dtype)
        segments = _segments(c_groups)
        present = [g for g, _, _ in segments]
        precompute = want_grad and len(present) * V * w.shape[1] * 4 <= PRECOMPUTE_GRAD_BYTES
        loss_sum = torch.zeros(num_groups, dtype=torch.float32, device=hidden.device)
        lse_all = torch.empty(M, dtype=torch.float32, device=hidden.device)
        if precompute:
            grad_h_unit = torch.empty(M, w.shape[1], dtype=dtype, device=hidden.device)
            grad_w_groups = torch.zeros(len(present), V, w.shape[1], dtype=torch.float32,
                                        device=hidden.device)
        step = _chunk_rows(V)
        for s in range(0, M, step):
            e = min(M, s + step)
            h = c_hidden[s:e]
            t = c_targets[s:e]
            logits = (h @ w.t()).float()
            lse = torch.logsumexp(logits, dim=1)
            loss = lse - logits.gather(1, t[:, None]).squeeze(1)
            if z_loss:
                loss = loss + z_loss * lse * lse
            loss_sum.index_add_(0, c_groups[s:e], loss)
            lse_all[s:e] = lse
            if not precompute:
                continue
            dl = _dlogits_(logits, lse, t, z_loss)
            torch.mm(dl.to(dtype), w, out=grad_h_unit[s:e])
            h32 = h.float()
            for slot, (_, gs, ge) in enumerate(segments):
                lo, hi = max(gs, s), min(ge, e)
                if lo < hi:
                    grad_w_groups[slot].addmm_(dl[lo - s:hi - s].t(), h32[lo - s:hi - s])
            del logits, dl, h32
        ctx.precompute = precompute
        ctx.num_rows = hidden.shape[0]
        ctx.z_loss = z_loss
        ctx.present = present
        ctx.dtypes = (hidden.dtype, weight.dtype)
        if precompute:
            ctx.save_for_backward(c_index, c_groups, grad_h_unit, grad_w_groups)
        else:
            ctx.save_for_backward(c_index, c_hidden, c_targets, c_groups, lse_all, weight)
        return loss_sum

    @staticmethod
    def backward(ctx, grad_loss_sum: Tensor):
        h_dtype, w_dtype = ctx.dtypes
        grad_loss_sum = grad_loss_sum.float()
        if ctx.precompute:
            c_index, c_groups, grad_h_unit, grad_w_groups = ctx.saved_tensors
            scale = grad_loss_sum[c_groups]
            grad_h = grad_h_unit.float() * scale[:, None]
            g = grad_loss_sum[torch.tensor(ctx.present, dtype=torch.long, device=grad_loss_sum.device)]
            if len(ctx.present) == 1:
                grad_w = grad_w_groups[0] * g[0]
            else:
                grad_w = torch.einsum("g,gvh->vh", g, grad_w_groups)
        else:
            c_index, c_hidden, c_targets, c_groups, lse_all, weight = ctx.saved_tensors
            dtype = c_hidden.dtype
            w = weight if weight.dtype == dtype else weight.to(dtype)
            M, V = c_hidden.shape[0], w.shape[0]
            scale = grad_loss_sum[c_groups]
            grad_h = torch.empty(M, w.shape[1], dtype=dtype, device=w.device)
            grad_w = torch.zeros(V, w.shape[1], dtype=torch.float32, device=w.device)
            step = _chunk_rows(V)
            for s in range(0, M, step):
                e = min(M, s + step)
                h = c_hidden[s:e]
                logits = (h @ w.t()).float()
                dl = _dlogits_(logits, lse_all[s:e], c_targets[s:e], ctx.z_loss)
                dl.mul_(scale[s:e, None])
                torch.mm(dl.to(dtype), w, out=grad_h[s:e])
                grad_w.addmm_(dl.t(), h.float())
                del logits, dl
        grad_hidden = _scatter_rows(grad_h, c_index, ctx.num_rows, h_dtype)
        return grad_hidden, grad_w.to(w_dtype), None, None, None, None, None, None, None


class _TritonMappingLoss(torch.autograd.Function):
    """Triton forward (online lse, per-group atomics); backward: chunked GEMMs + a Triton dlogits kernel."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, c_index: Tensor, c_hidden: Tensor, c_targets: Tensor,
                c_groups: Tensor, num_groups: int, z_loss: float) -> Tensor:
        from clmap.kernels.mapping_loss_triton import mapping_loss_fwd

        w = (weight if weight.dtype == c_hidden.dtype else weight.to(c_hidden.dtype)).contiguous()
        lse, loss_sum = mapping_loss_fwd(c_hidden, w, c_targets, c_groups, num_groups, z_loss)
        ctx.save_for_backward(c_index, c_hidden, c_targets, c_groups, lse, weight)
        ctx.num_rows = hidden.shape[0]
        ctx.z_loss = z_loss
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return loss_sum

    @staticmethod
    def backward(ctx, grad_loss_sum: Tensor):
        from clmap.kernels.mapping_loss_triton import mapping_loss_bwd

        c_index, c_hidden, c_targets, c_groups, lse, weight = ctx.saved_tensors
        h_dtype, w_dtype = ctx.dtypes
        w = (weight if weight.dtype == c_hidden.dtype else weight.to(c_hidden.dtype)).contiguous()
        scale = grad_loss_sum.float()[c_groups].contiguous()
        grad_h, grad_w = mapping_loss_bwd(c_hidden, w, c_targets, lse, scale, ctx.z_loss)
        grad_hidden = _scatter_rows(grad_h, c_index, ctx.num_rows, h_dtype)
        return grad_hidden, grad_w.to(w_dtype), None, None, None, None, None, None


def mapping_loss(
    hidden: Tensor, weight: Tensor, targets: Tensor, groups: Tensor | None = None, num_groups: int = 1,
    *, ignore_index: int = -100, z_loss: float = 0.0, backend: str | None = None,
) -> GroupedLoss:
    """Per-group sums of ``logsumexp(h W^T) - (h W^T)[target] + z_loss * logsumexp^2`` without N x V logits.

    hidden [N,H] (fp32/bf16/fp16), weight [V,H] (the lm_head, possibly the tied embedding), targets [N]
    int64 (``ignore_index`` = no loss), groups [N] int64 in ``[0, num_groups)`` (None: all group 0).
    ``loss_sum`` [G] fp32 is differentiable w.r.t. hidden and weight; ``count`` [G] int64 is not.
    """
    _check(hidden, weight, targets)
    choice = choose_backend(hidden, backend)
    if choice == "reference":
        return mapping_loss_reference(hidden, weight, targets, groups, num_groups,
                                      ignore_index=ignore_index, z_loss=z_loss)
    groups = _groups_or_zeros(targets, groups)
    dtype = torch.promote_types(hidden.dtype, weight.dtype)
    with torch.no_grad():
        c = _compact(hidden.detach().to(dtype), targets, groups, num_groups, ignore_index)
    if choice == "triton":
        loss_sum = _TritonMappingLoss.apply(hidden, weight, c.index, c.hidden, c.targets, c.groups,
                                            num_groups, float(z_loss))
    else:
        want_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
        loss_sum = _ChunkedMappingLoss.apply(hidden, weight, c.index, c.hidden, c.targets, c.groups,
                                             num_groups, float(z_loss), want_grad)
    return GroupedLoss(loss_sum, c.count)
