"""Language Alignment Coefficient (docs/design.md), mean parallel cosine and bitext retrieval, per layer.

LAC is rank-based: for pair i it asks whether the translation v_i is closer to u_i than every other
v_j (row direction) and whether u_i is closer to v_i than every other u_j is (column direction), so the
anisotropy that inflates raw cosine in LLM hidden states cancels out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from clmap.evaluate.lm import LoadedModel, pooled_hidden_states
from clmap.evaluate.sources import ParallelSegment


def _pairwise_sign_matrix(S: Tensor) -> Tensor:
    """M_ij = ½[sign(S_ii − S_ij) + sign(S_ii − S_ji)] for i≠j, 0 on the diagonal (float64)."""
    S = S.double()
    diag = S.diagonal().unsqueeze(1)
    M = 0.5 * (torch.sign(diag - S) + torch.sign(diag - S.T))
    M.fill_diagonal_(0.0)
    return M


def language_alignment_coefficient(
    S: Tensor, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """(LAC, 2.5 %, 97.5 % bootstrap bounds) of a square cosine matrix ``S_ij = cos(u_i, v_j)``.

    The bootstrap resamples pair indices; a comparison between two copies of the same pair is skipped
    (it is 0 by construction and would bias the interval towards 0). With resample counts c, the
    statistic is Σ_{i≠j} c_i c_j M_ij / Σ_{i≠j} c_i c_j, computed for all replicates in one einsum.
    """
    if S.dim() != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"LAC needs a square similarity matrix, got shape {tuple(S.shape)}")
    n = S.shape[0]
    if n < 2:
        raise ValueError("LAC needs at least 2 parallel pairs")
    M = _pairwise_sign_matrix(S.detach().cpu())
    lac = float(M.sum() / (n * (n - 1)))
    if n_boot <= 0:
        return lac, lac, lac
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, n, (n_boot, n), generator=generator)
    counts = torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones(n_boot, n, dtype=torch.float64)
    )
    numerator = torch.einsum("bi,ij,bj->b", counts, M, counts)
    denominator = counts.sum(1) ** 2 - (counts**2).sum(1)
    valid = denominator > 0  # a replicate that drew one pair n times has no comparison at all
    stats = numerator[valid] / denominator[valid]
    if stats.numel() == 0:
        return lac, lac, lac
    lo, hi = torch.quantile(stats, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return lac, float(lo), float(hi)


def retrieval_precision_at_1(S: Tensor) -> tuple[float, float]:
    """(P@1 a→b, P@1 b→a): how often the translation is the nearest neighbour among all candidates."""
    gold = torch.arange(S.shape[0])
    return float((S.argmax(1).cpu() == gold).double().mean()), float(
        (S.argmax(0).cpu() == gold).double().mean()
    )


def similarity_matrix(u: Tensor, v: Tensor) -> Tensor:
    """[A, B] cosine of already pooled vectors through ``clmap.kernels.cosine_matrix``.

    Each vector is a span of length one, so the kernel's mean-pool is the identity and its normalised
    dot product is the one cosine implementation the whole project shares.
    """
    from clmap.kernels import cosine_matrix

    a_starts = torch.arange(u.shape[0], device=u.device)
    b_starts = torch.arange(v.shape[0], device=v.device)
    return cosine_matrix(u, a_starts, a_starts + 1, v, b_starts, b_starts + 1)


def layer_label(layer: int, num_layers: int) -> str:
    """What ``hidden_states[layer]`` is (:func:`clmap.objectives.hidden_state_layer`'s convention)."""
    if layer == 0:
        return "embeddings"
    if layer == num_layers:
        return f"layer {layer} + final norm"
    return f"layer {layer}"


@dataclass
class LayerAlignment:
    layer: int
    label: str  # "embeddings", "layer i", "layer L + final norm" (the last entry is after the final norm)
    lac: float
    lac_lo: float
    lac_hi: float
    parallel_cosine: float
    p_at_1_ab: float
    p_at_1_ba: float


@dataclass
class PairAlignment:
    pair: str
    n: int
    report_layer: int
    split: str | None = None  # the bundled split scored, None for local data
    data: str = ""  # where the pairs came from: "bundled test" or the path
    layers: list[LayerAlignment] = field(default_factory=list)
    heatmap: list[list[float]] = field(default_factory=list)  # S at report_layer, for the plot


def evaluate_alignment(
    lm: LoadedModel,
    pair: str,
    segments: list[ParallelSegment],
    batch_size: int = 8,
    n_boot: int = 1000,
    seed: int = 0,
    layer: int | None = None,
    split: str | None = None,
    data: str = "",
) -> PairAlignment:
    """LAC with its interval, mean parallel cosine and P@1 for every layer; ``layer`` (default middle,
    numbered as :func:`clmap.objectives.hidden_state_layer` says) is the one reported in the summary
    table and drawn as the heat-map."""
    from clmap.objectives import hidden_state_layer

    report_layer = hidden_state_layer(-1 if layer is None else layer, lm.num_layers, "--lac-layer")
    u_layers = pooled_hidden_states(lm, [s.src for s in segments], batch_size, desc=f"LAC {pair} src")
    v_layers = pooled_hidden_states(lm, [s.tgt for s in segments], batch_size, desc=f"LAC {pair} tgt")
    result = PairAlignment(pair=pair, n=len(segments), report_layer=report_layer, split=split, data=data)
    for index in range(u_layers.shape[0]):
        S = similarity_matrix(u_layers[index], v_layers[index]).cpu()
        lac, lo, hi = language_alignment_coefficient(S, n_boot=n_boot, seed=seed)
        p_ab, p_ba = retrieval_precision_at_1(S)
        label = layer_label(index, u_layers.shape[0] - 1)
        result.layers.append(
            LayerAlignment(index, label, lac, lo, hi, float(S.diagonal().mean()), p_ab, p_ba)
        )
        if index == report_layer:
            result.heatmap = S.tolist()
    return result
