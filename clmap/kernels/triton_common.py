"""Small Triton helpers shared by the kernels of this folder."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1`` (kernels run on CPU tensors, one program at a time)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (1 elsewhere): what launch heuristics fill."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


@triton.jit
def round_to(x, out_ty: tl.constexpr):
    """fp32 -> out_ty, rounding to nearest even. bf16 is rounded by hand (then the cast is exact): the
    interpreter's fp32 -> bf16 cast truncates, and fp64 -> bf16 it gets wrong outright; on a GPU the
    few integer operations cost nothing next to the memory traffic."""
    if out_ty == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        x = tl.where(x != x, x, bits.to(tl.float32, bitcast=True))  # NaN stays NaN (no carry out)
    return x.to(out_ty)
