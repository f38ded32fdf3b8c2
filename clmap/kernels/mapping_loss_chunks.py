"""The chunk walk of the fused mapping loss: which rows to visit, the GEMMs and the torch row pass.

:func:`chunk_pass` walks the non-ignored tokens in chunks of rows. Per chunk one GEMM gives the logits,
a row pass turns them into log-sum-exp, per-group sums and (when gradients are due) ``dlogits`` in
place, and two GEMMs give the chunk's hidden gradient and add its weight gradient to one accumulator.
The row pass is the Triton kernel of ``mapping_loss_triton`` or :func:`_logits_rows_torch`.

Precision (``ChunkPlan.accum_dtype``): fp32 (default) keeps fp32 logits chunks and an fp32 weight-gradient
accumulator; bf16/fp16 (the inputs' own dtype) keeps both in that dtype, Liger-Kernel's layout, which
halves the accumulator and the chunk. Either way the row math (max, exp, sums, lse) is fp32 and every
GEMM accumulates in fp32; only what is stored is rounded.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

#: Bytes of logits per chunk: the memory price of the fused loss beyond its gradients. On CUDA a larger
#: chunk means fewer passes over the weight-gradient accumulator; on CPU it stays in cache.
CHUNK_BYTES = {"cpu": 64 * 2**20, "cuda": 1024 * 2**20}
#: The same with bf16/fp16 accumulation, whose point is memory: at V=128256, H=4096, N=16384 the
#: weight gradient (1002 MiB), hidden gradient (128 MiB) and a 192 MiB chunk stay within 1.2x of Cut
#: Cross-Entropy's 1132 MiB.
LOW_PRECISION_CHUNK_BYTES = {"cpu": 64 * 2**20, "cuda": 192 * 2**20}
#: fp32 rows upcast at once by the torch row pass over bf16/fp16 logits.
_UPCAST_BLOCK_BYTES = 16 * 2**20


@dataclass
class ChunkPlan:
    """What every walk over the chunks needs: the kept tokens and how to split them."""

    index: Tensor | None  # [M] positions of the non-ignored tokens in [N]; None: all N are kept
    targets: Tensor  # [M] int64
    groups: Tensor  # [M] int64
    count: Tensor  # [G] int64
    num_rows: int  # N
    num_groups: int
    dtype: torch.dtype  # compute dtype: promote(hidden, weight)
    accum_dtype: torch.dtype  # logits chunks and weight-gradient accumulator: fp32 or ``dtype``
    z_loss: float
    backend: str  # "triton" | "torch"
    chunk_rows: int


class KeptTokens(NamedTuple):
    """The tokens a loss call keeps, found on the host before the step (:func:`kept_tokens`), so that
    :func:`make_plan` asks the device nothing. ``index`` None: every token is kept."""

    index: Tensor | None  # [M] int64 positions of the kept tokens in [N]
    targets: Tensor  # [M] int64
    groups: Tensor  # [M] int64
    count: Tensor  # [G] int64
    max_target: int  # the largest kept target, checked against the vocabulary without a device read
    max_at: int  # its token's position in [N] (the error names it)


def kept_tokens(
    targets: Tensor, groups: Tensor, num_groups: int, ignore_index: int, pin_memory: bool = False
) -> KeptTokens:
    """:class:`KeptTokens` of host tensors ``targets`` / ``groups`` [N] (a collated micro-batch, flattened):
    what :func:`make_plan` would otherwise find on the device with three host syncs (``nonzero``, the range
    check, ``bincount``). The trainer calls it on its prefetch thread; ``pin_memory`` for CUDA copies."""
    if targets.is_cuda or groups.is_cuda:
        raise ValueError("kept_tokens works on host tensors (collate's); make_plan handles device ones")
    targets, groups = targets.reshape(-1).long(), groups.reshape(-1).long()
    index = (targets != ignore_index).nonzero().squeeze(1)
    kept_targets, kept_groups = targets[index], groups[index]
    bad = (kept_targets < 0) | (kept_groups < 0) | (kept_groups >= num_groups)
    if bool(bad.any()):
        i = int(index[bad.nonzero()[0, 0]])
        raise ValueError(
            f"token {i}: target {int(targets[i])} must be ≥ 0 or ignore_index={ignore_index}, and group "
            f"{int(groups[i])} in [0, {num_groups})"
        )
    count = torch.bincount(kept_groups, minlength=num_groups)[:num_groups]
    top = int(kept_targets.argmax()) if kept_targets.numel() else 0
    max_target = int(kept_targets[top]) if kept_targets.numel() else -1
    max_at = int(index[top]) if kept_targets.numel() else -1
    if index.numel() == targets.numel():  # nothing ignored: read rows in place, no gather
        index = None
    parts = [index, kept_targets, kept_groups, count]
    if pin_memory:
        parts = [None if t is None else t.pin_memory() for t in parts]
    return KeptTokens(*parts, max_target, max_at)


def make_plan(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    groups: Tensor,
    num_groups: int,
    ignore_index: int,
    z_loss: float,
    backend: str,
    chunk_bytes: int | None,
    accum_dtype: torch.dtype,
    kept: KeptTokens | None = None,
) -> ChunkPlan:
    """Drop ignored tokens up front (CL rows ignore about half) and check the rest: on the device (two
    host syncs) unless ``kept`` (:func:`kept_tokens`) found them on the host before the step."""
    vocab = weight.shape[0]
    if kept is not None:
        if kept.max_target >= vocab:
            raise ValueError(
                f"token {kept.max_at}: target {kept.max_target} must be in [0, {vocab}) or "
                f"ignore_index={ignore_index}"
            )
        index, kept_targets, kept_groups, count = (
            None if t is None else t.to(hidden.device, non_blocking=True) for t in kept[:4]
        )
    else:
        index, kept_targets, kept_groups, count = _device_kept_tokens(
            targets, groups, num_groups, vocab, ignore_index
        )
    if index is None:
        kept_targets, kept_groups = kept_targets.contiguous(), kept_groups.contiguous()
    if chunk_bytes is None:
        defaults = CHUNK_BYTES if accum_dtype == torch.float32 else LOW_PRECISION_CHUNK_BYTES
        chunk_bytes = defaults["cuda" if hidden.is_cuda else "cpu"]
    logit_bytes = accum_dtype.itemsize
    return ChunkPlan(
        index,
        kept_targets,
        kept_groups,
        count,
        hidden.shape[0],
        num_groups,
        torch.promote_types(hidden.dtype, weight.dtype),
        accum_dtype,
        float(z_loss),
        backend,
        max(1, chunk_bytes // (logit_bytes * max(vocab, 1))),
    )


def _device_kept_tokens(targets: Tensor, groups: Tensor, num_groups: int, vocab: int, ignore_index: int):
    """(index or None, kept targets, kept groups, count) found on the device: two host syncs."""
    index = (targets != ignore_index).nonzero().squeeze(1)
    kept_targets, kept_groups = targets[index], groups[index]
    bad = (kept_targets < 0) | (kept_targets >= vocab) | (kept_groups < 0) | (kept_groups >= num_groups)
    if bad.any():
        i = int(index[bad.nonzero()[0, 0]])
        raise ValueError(
            f"token {i}: target {int(targets[i])} must be in [0, {vocab}) or ignore_index={ignore_index}, "
            f"and group {int(groups[i])} in [0, {num_groups})"
        )
    count = torch.bincount(kept_groups, minlength=num_groups)[:num_groups].long()
    if index.numel() == targets.numel():  # nothing ignored: read rows in place, no gather
        return None, targets, groups, count
    return index, kept_targets, kept_groups, count


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
    """``a @ b`` as ``out_dtype``. Low-precision operands with a result of their own dtype: one GEMM
    (fp32 accumulation, one rounding) on any device. On CUDA, cuBLAS keeps bf16/fp16 operands on the
    tensor cores and writes an fp32 result directly; other CPU products run in fp32."""
    if a.dtype != torch.float32 and out_dtype == a.dtype == b.dtype:
        return a @ b
    if a.is_cuda and a.dtype != torch.float32:
        if _fp32_out_gemm(a.device):
            return torch.mm(a, b, out_dtype=out_dtype)
        return (a @ b).to(out_dtype)
    return (a.float() @ b.float()).to(out_dtype)


def _addmm_(acc: Tensor, a: Tensor, b: Tensor) -> None:
    """``acc += a @ b`` into the accumulator ``acc`` (fp32, or the operands' own dtype)."""
    if acc.dtype == a.dtype == b.dtype:
        acc.addmm_(a, b)
    elif a.is_cuda and a.dtype != torch.float32 and _fp32_out_gemm(a.device):
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    else:
        acc.addmm_(a.float(), b.float())


def _logits_rows_fp32(
    logits: Tensor,
    targets: Tensor,
    groups: Tensor,
    lse: Tensor,
    loss_sum: Tensor | None,
    z_loss: float,
    want_grad: bool,
) -> Tensor | None:
    """The row pass over fp32 ``logits`` in place; returns *unscaled* dlogits (the same storage)."""
    if loss_sum is not None:  # in-place softmax: max, exp, sum (fewest passes over [R, V], no temporary)
        loss = -logits.gather(1, targets[:, None]).squeeze(1)
        row_max = logits.amax(dim=1)
        logits.sub_(row_max[:, None]).exp_()
        sum_exp = logits.sum(dim=1)
        lse.copy_(row_max + sum_exp.log())
        loss += lse + z_loss * lse * lse if z_loss else lse
        loss_sum.index_add_(0, groups, loss)
        if not want_grad:
            return None
        factor = 1.0 / sum_exp
    else:
        if not want_grad:
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
    """The row pass in torch ops, as ``mapping_loss_triton.logits_rows``.

    fp32 logits: dlogits come back *unscaled* (``scale`` unused): on the CPU one more pass over [R, V]
    costs more than scaling the [R, H] operands, which :func:`chunk_pass` does instead. bf16/fp16 logits
    (low-precision accumulation): fp32 math by blocks of rows, scaled dlogits rounded back in place, like
    the Triton kernel.
    """
    want_grad = grad_dtype is not None
    if logits.dtype == torch.float32:
        return _logits_rows_fp32(logits, targets, groups, lse, loss_sum, z_loss, want_grad)
    rows, vocab = logits.shape
    step = max(1, _UPCAST_BLOCK_BYTES // (4 * max(vocab, 1)))
    for s in range(0, rows, step):
        e = min(rows, s + step)
        block = logits[s:e].float()
        dl = _logits_rows_fp32(block, targets[s:e], groups[s:e], lse[s:e], loss_sum, z_loss, want_grad)
        if dl is not None:
            logits[s:e] = dl if scale is None else dl.mul_(scale[s:e, None])
    return logits if want_grad else None


def chunk_pass(
    hidden: Tensor,
    weight: Tensor,
    plan: ChunkPlan,
    *,
    lse: Tensor | None = None,
    scale: Tensor | None = None,
    grad_hidden: bool = False,
    grad_weight: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """One walk over the kept tokens: per chunk, logits GEMM -> row pass -> gradient GEMMs.

    ``lse`` None: compute it and the per-group sums; else reuse it (the backward's walk). ``scale`` [M]:
    each kept token's upstream gradient, needed when a gradient is asked for. Returns ``(lse, loss_sum or
    None, grad_hidden [N,H] in hidden's dtype or None, grad_weight [V,H] in accum_dtype or None)``.
    """
    device, dtype, accum = hidden.device, plan.dtype, plan.accum_dtype
    low_precision = accum != torch.float32
    w = weight.to(dtype)
    if not low_precision and (not w.is_cuda or plan.backend == "torch"):
        w = w.float()  # the torch path's GEMMs run in fp32: convert the weight once, not per chunk
    num_kept, (vocab, width) = plan.targets.numel(), w.shape
    loss_sum = None
    if lse is None:
        lse = torch.empty(num_kept, dtype=torch.float32, device=device)
        loss_sum = torch.zeros(plan.num_groups, dtype=torch.float32, device=device)
    grad_dtype = None
    if grad_hidden or grad_weight:
        grad_dtype = dtype if plan.backend == "triton" or low_precision else torch.float32
    gh = gw = None
    if grad_hidden:
        alloc = torch.empty if plan.index is None else torch.zeros
        gh = alloc(plan.num_rows, width, dtype=hidden.dtype, device=device)
    if grad_weight:
        gw = torch.zeros(vocab, width, dtype=accum, device=device)
    if plan.backend == "triton":
        from clmap.kernels.mapping_loss_triton import logits_rows as rows_pass
    else:
        rows_pass = _logits_rows_torch
    # fp32 torch row pass: dlogits come unscaled, the [R, H] operands are scaled (see _logits_rows_torch)
    scale_after = plan.backend != "triton" and not low_precision and scale is not None
    for s in range(0, num_kept, plan.chunk_rows):
        e = min(num_kept, s + plan.chunk_rows)
        idx = None if plan.index is None else plan.index[s:e]
        h = (hidden[s:e] if idx is None else hidden.index_select(0, idx)).to(dtype)
        logits = _mm(h, w.t(), accum)
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
