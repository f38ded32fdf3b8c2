"""Chooses the implementation a kernel call runs: one rule for every kernel in this folder."""

import os

import torch

BACKENDS = ("triton", "torch", "reference")


def choose_backend(tensor: torch.Tensor, backend: str | None = None) -> str:
    """``backend`` argument, else ``$CLMAP_KERNEL_BACKEND``, else Triton on CUDA and chunked torch on CPU."""
    choice = backend or os.environ.get("CLMAP_KERNEL_BACKEND") or None
    if choice is None:
        return "triton" if tensor.is_cuda else "torch"
    if choice not in BACKENDS:
        raise ValueError(f"unknown kernel backend {choice!r}; expected one of {BACKENDS}")
    if choice == "triton" and not tensor.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "the Triton backend needs CUDA tensors, or TRITON_INTERPRET=1 to run the kernels on the CPU"
        )
    return choice
