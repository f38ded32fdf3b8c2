"""Raw Triton kernel of the fused mapping loss: one pass over a chunk of fp32 logits rows.

The GEMMs around it are cuBLAS's (``mapping_loss_chunks.chunk_pass``): tensor-core matrix products at the
library's speed, fp32 results. What a GEMM cannot do is the row-wise part, and that is this kernel:
an online log-sum-exp over vocabulary blocks (one read of the row, fp32 math whatever the logits'
dtype), the token's loss added to its group's sum, and, when gradients are wanted, ``dlogits`` written
over the logits in place, already rounded to the GEMM operand's dtype. The first version computed
logits tiles inside Triton (CCE's layout); on an H200 its forward was 1.5x CCE's and the atomics of
its backward cost 1049 ms at N=16384, H=4096, V=128256, where cuBLAS GEMMs around this kernel do the
work in three matrix products.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from clmap.kernels.triton_common import interpreting, round_to


@triton.jit
def _logits_rows_kernel(
    logits_ptr,
    grad_ptr,
    tgt_ptr,
    grp_ptr,
    lse_ptr,
    scale_ptr,
    loss_sum_ptr,
    V,
    stride_logits,
    stride_grad,
    z_loss,
    COMPUTE_LSE: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """One program per row of logits.

    COMPUTE_LSE: online max/sum-exp over the row, ``lse`` stored, ``lse - x[t] + z·lse²`` added to the
    row's group sum (else ``lse`` is read). WRITE_GRAD: ``scale·(softmax·(1 + 2·z·lse) − onehot(t))``
    stored to ``grad_ptr``, which may alias the row itself, in its dtype or a narrower one over fp32
    logits: element ``v`` then lands on bytes the row already read (``2v < 4v``), and a barrier per
    block keeps every warp's reads of a block ahead of any warp's writes into it.
    """
    row = tl.program_id(0).to(tl.int64)
    logits_row = logits_ptr + row * stride_logits
    tgt = tl.load(tgt_ptr + row)
    if COMPUTE_LSE:
        run_max = tl.full([BLOCK_V], -1.0e30, tl.float32)
        run_sum = tl.zeros([BLOCK_V], tl.float32)
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            x = tl.load(logits_row + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
            new_max = tl.maximum(run_max, x)
            run_sum = run_sum * tl.exp(run_max - new_max) + tl.exp(x - new_max)
            run_max = new_max
        row_max = tl.max(run_max, axis=0)
        lse = row_max + tl.log(tl.sum(run_sum * tl.exp(run_max - row_max), axis=0))
        loss = lse - tl.load(logits_row + tgt).to(tl.float32) + z_loss * lse * lse
        tl.store(lse_ptr + row, lse)
        tl.atomic_add(loss_sum_ptr + tl.load(grp_ptr + row), loss)
    else:
        lse = tl.load(lse_ptr + row)
    if WRITE_GRAD:
        tl.debug_barrier()
        scale = tl.load(scale_ptr + row)
        prob_scale = scale * (1.0 + 2.0 * z_loss * lse)
        grad_row = grad_ptr + row * stride_grad
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            mask = cols < V
            x = tl.load(logits_row + cols, mask=mask, other=0.0).to(tl.float32)
            d = tl.exp(x - lse) * prob_scale - tl.where(cols == tgt, scale, 0.0)
            tl.debug_barrier()
            tl.store(grad_row + cols, round_to(d, grad_ptr.dtype.element_ty), mask=mask)


def logits_rows(
    logits: torch.Tensor,
    targets: torch.Tensor,
    groups: torch.Tensor,
    lse: torch.Tensor,
    loss_sum: torch.Tensor | None,
    scale: torch.Tensor | None,
    z_loss: float,
    grad_dtype: torch.dtype | None,
) -> torch.Tensor | None:
    """Run the row kernel over ``logits`` [R, V] (contiguous rows; fp32, or bf16/fp16 with
    low-precision accumulation) in place.

    ``loss_sum`` given: compute ``lse`` (written into ``lse``) and add each row's loss to
    ``loss_sum[groups]``; else read ``lse``. ``grad_dtype`` given (the logits' dtype, or a 2-byte dtype
    over fp32 logits): return ``dlogits`` [R, V] of that dtype, a view of the logits' own storage
    (``scale`` [R] fp32 is each row's upstream gradient).
    """
    R, V = logits.shape
    if R == 0:
        return logits.to(grad_dtype) if grad_dtype is not None else None
    grad = None
    if grad_dtype == logits.dtype:
        grad = logits
    elif grad_dtype is not None:  # fp32 logits, 2-byte dlogits: row r's first half of bytes holds them
        if logits.dtype != torch.float32 or grad_dtype.itemsize != 2:
            raise ValueError(f"dlogits of {grad_dtype} cannot overwrite logits of {logits.dtype}")
        grad = logits.view(grad_dtype)[:, :V]
    block_v = 1024 if interpreting() else 2048
    _logits_rows_kernel[(R,)](
        logits,
        grad if grad is not None else logits,
        targets,
        groups,
        lse,
        scale if scale is not None else lse,
        loss_sum if loss_sum is not None else lse,
        V,
        logits.stride(0),
        grad.stride(0) if grad is not None else 0,
        float(z_loss),
        COMPUTE_LSE=loss_sum is not None,
        WRITE_GRAD=grad is not None,
        BLOCK_V=min(block_v, triton.next_power_of_2(V)),
        num_warps=8,
    )
    return grad
