"""Fused kernels with no model knowledge, imported as ``clmap.kernels``.

Each public function dispatches by device: CUDA tensors run the Triton kernel, CPU tensors the
chunked (memory-bounded) PyTorch path. ``backend=`` or the environment variable
``CLMAP_KERNEL_BACKEND`` (``triton`` | ``torch`` | ``reference``) forces a path; with
``TRITON_INTERPRET=1`` the Triton kernels run on CPU tensors too (that is how the tests run them).
"""

from clmap.kernels.mapping_loss import GroupedLoss, mapping_loss, mapping_loss_reference
from clmap.kernels.pooled_similarity import (
    cosine_matrix,
    cosine_matrix_reference,
    paired_cosine,
    paired_cosine_reference,
    pool_spans,
    pool_spans_reference,
)

__all__ = [
    "GroupedLoss",
    "mapping_loss",
    "mapping_loss_reference",
    "pool_spans",
    "pool_spans_reference",
    "paired_cosine",
    "paired_cosine_reference",
    "cosine_matrix",
    "cosine_matrix_reference",
]
