"""Raw Triton kernels of the fused mapping loss (linear layer + cross-entropy, logits never stored).

The design follows Cut Cross-Entropy: the forward pass walks the vocabulary in blocks with an
online log-sum-exp and keeps only ``lse[N]``; the backward pass recomputes each logit tile,
turns it into ``dlogits`` and adds its two products into fp32 gradient buffers with atomics.
Callers pass only the non-ignored tokens (compacted), so no work is spent on ignored ones.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


@triton.jit
def _dot(a, b, acc, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """``acc + a @ b`` in fp32; UPCAST works around the interpreter's wrong bf16 ``tl.dot`` (Triton 3.9)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@triton.jit
def _mapping_loss_fwd_kernel(
    h_ptr, w_ptr, tgt_ptr, grp_ptr, lse_ptr, loss_sum_ptr,
    N, V, H, stride_hn, stride_wv, z_loss,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """One program per token block: online lse over all vocabulary blocks, then per-group loss sums."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    tgt = tl.load(tgt_ptr + rows, mask=row_mask, other=0)
    run_max = tl.full([BLOCK_N], float("-inf"), tl.float32)
    run_sum = tl.zeros([BLOCK_N], tl.float32)
    tgt_logit = tl.zeros([BLOCK_N], tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_mask = cols < V
        acc = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
        for k0 in range(0, H, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_mask = ks < H
            h = tl.load(h_ptr + rows[:, None] * stride_hn + ks[None, :],
                        mask=row_mask[:, None] & k_mask[None, :], other=0.0)
            w = tl.load(w_ptr + cols[:, None] * stride_wv + ks[None, :],
                        mask=col_mask[:, None] & k_mask[None, :], other=0.0)
            acc = _dot(h, tl.trans(w), acc, DOT_PRECISION, UPCAST)
        acc = tl.where(col_mask[None, :], acc, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(acc, axis=1))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(acc - new_max[:, None]), axis=1)
        run_max = new_max
        tgt_logit += tl.sum(tl.where(cols[None, :] == tgt[:, None], acc, 0.0), axis=1)
    lse = run_max + tl.log(run_sum)
    loss = lse - tgt_logit + z_loss * lse * lse
    tl.store(lse_ptr + rows, lse, mask=row_mask)
    grp = tl.load(grp_ptr + rows, mask=row_mask, other=0)
    tl.atomic_add(loss_sum_ptr + grp, loss, mask=row_mask)


@triton.jit
def _mapping_loss_bwd_kernel(
    h_ptr, w_ptr, tgt_ptr, lse_ptr, scale_ptr, gh_ptr, gw_ptr,
    N, V, H, stride_hn, stride_wv, z_loss,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """One program per (token block, vocab block): recompute the logit tile, add its two gradient products.

    ``gh`` [N,H] and ``gw`` [V,H] are fp32 buffers; tiles whose ``dlogits`` are all zero (for
    example tokens whose group got no upstream gradient) skip the products and the atomics.
    """
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    col_mask = cols < V
    acc = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < H
        h = tl.load(h_ptr + rows[:, None] * stride_hn + ks[None, :],
                    mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(w_ptr + cols[:, None] * stride_wv + ks[None, :],
                    mask=col_mask[:, None] & k_mask[None, :], other=0.0)
        acc = _dot(h, tl.trans(w), acc, DOT_PRECISION, UPCAST)
    tgt = tl.load(tgt_ptr + rows, mask=row_mask, other=-1)
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    scale = tl.load(scale_ptr + rows, mask=row_mask, other=0.0)
    prob = tl.exp(acc - lse[:, None])
    prob = tl.where(row_mask[:, None] & col_mask[None, :], prob, 0.0)
    dlogits = prob * (1.0 + 2.0 * z_loss * lse)[:, None] - tl.where(cols[None, :] == tgt[:, None], 1.0, 0.0)
    dlogits = dlogits * scale[:, None]
    if tl.max(tl.abs(dlogits)) > 0.0:
        dl = dlogits.to(h_ptr.dtype.element_ty)
        for k0 in range(0, H, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_mask = ks < H
            h = tl.load(h_ptr + rows[:, None] * stride_hn + ks[None, :],
                        mask=row_mask[:, None] & k_mask[None, :], other=0.0)
            w = tl.load(w_ptr + cols[:, None] * stride_wv + ks[None, :],
                        mask=col_mask[:, None] & k_mask[None, :], other=0.0)
            gh = _dot(dl, w, tl.zeros([BLOCK_N, BLOCK_K], tl.float32), DOT_PRECISION, UPCAST)
            tl.atomic_add(gh_ptr + rows[:, None] * H + ks[None, :], gh,
                          mask=row_mask[:, None] & k_mask[None, :])
            gw = _dot(tl.trans(dl), h, tl.zeros([BLOCK_V, BLOCK_K], tl.float32), DOT_PRECISION, UPCAST)
            tl.atomic_add(gw_ptr + cols[:, None] * H + ks[None, :], gw,
                          mask=col_mask[:, None] & k_mask[None, :])


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _blocks(hidden: torch.Tensor, weight_rows: int, backward: bool) -> dict:
    """Block sizes: wide tiles under the interpreter (fewer Python-level steps), tensor-core tiles on CUDA."""
    H = hidden.shape[1]
    block_k = min(64, max(16, triton.next_power_of_2(H)))
    if _interpreting() or not hidden.is_cuda:
        # Each program costs milliseconds of Python: few, wide vocabulary tiles for a big vocabulary.
        return dict(BLOCK_N=16, BLOCK_V=64 if weight_rows <= 4096 else 1024, BLOCK_K=block_k, num_warps=4)
    if hidden.dtype == torch.float32:
        return dict(BLOCK_N=64, BLOCK_V=64, BLOCK_K=min(block_k, 32), num_warps=4, num_stages=2)
    if backward:
        return dict(BLOCK_N=128, BLOCK_V=128, BLOCK_K=block_k, num_warps=8, num_stages=3)
    return dict(BLOCK_N=64, BLOCK_V=128, BLOCK_K=block_k, num_warps=8, num_stages=3)


def _upcast(dtype: torch.dtype) -> bool:
    return _interpreting() and dtype == torch.bfloat16


def _precision(dtype: torch.dtype) -> str:
    """Full-precision fp32 dots (plain PyTorch fp32 matmuls do not use TF32 by default)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def mapping_loss_fwd(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor,
    num_groups: int, z_loss: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compacted tokens only (no ignore_index): returns ``lse`` [N] fp32 and ``loss_sum`` [G] fp32."""
    N, H = hidden.shape
    V = weight.shape[0]
    lse = torch.empty(N, device=hidden.device, dtype=torch.float32)
    loss_sum = torch.zeros(num_groups, device=hidden.device, dtype=torch.float32)
    if N == 0:
        return lse, loss_sum
    cfg = _blocks(hidden, V, backward=False)
    grid = (triton.cdiv(N, cfg["BLOCK_N"]),)
    _mapping_loss_fwd_kernel[grid](
        hidden, weight, targets, groups, lse, loss_sum,
        N, V, H, hidden.stride(0), weight.stride(0), float(z_loss),
        DOT_PRECISION=_precision(hidden.dtype), UPCAST=_upcast(hidden.dtype), **cfg,
    )
    return lse, loss_sum


def mapping_loss_bwd(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor,
    scale: torch.Tensor, z_loss: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``scale`` [N] fp32: upstream gradient of each token's group. Returns fp32 grad_hidden, grad_weight."""
    N, H = hidden.shape
    V = weight.shape[0]
    grad_hidden = torch.zeros(N, H, device=hidden.device, dtype=torch.float32)
    grad_weight = torch.zeros(V, H, device=weight.device, dtype=torch.float32)
    if N == 0:
        return grad_hidden, grad_weight
    cfg = _blocks(hidden, V, backward=True)
    grid = (triton.cdiv(N, cfg["BLOCK_N"]), triton.cdiv(V, cfg["BLOCK_V"]))
    _mapping_loss_bwd_kernel[grid](
        hidden, weight, targets, lse, scale, grad_hidden, grad_weight,
        N, V, H, hidden.stride(0), weight.stride(0), float(z_loss),
        DOT_PRECISION=_precision(hidden.dtype), UPCAST=_upcast(hidden.dtype), **cfg,
    )
    return grad_hidden, grad_weight
