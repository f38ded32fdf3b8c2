"""Language Alignment Coefficient (docs/design.md), mean parallel cosine and bitext retrieval, per layer.

LAC is rank-based: for pair i it asks whether the translation v_i is closer to u_i than every other
v_j (row direction) and whether u_i is closer to v_i than every other u_j is (column direction), so the
anisotropy that inflates raw cosine in LLM hidden states cancels out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from clmap.evaluate.bootstrap import MIN_DOCUMENTS, ItemScores, document_counts
from clmap.evaluate.lm import LoadedModel, pooled_hidden_states
from clmap.evaluate.sources import ParallelSegment


def _pairwise_sign_matrix(S: Tensor) -> Tensor:
    """M_ij = ½[sign(S_ii − S_ij) + sign(S_ii − S_ji)] for i≠j, 0 on the diagonal (float64)."""
    S = S.double()
    diag = S.diagonal().unsqueeze(1)
    M = 0.5 * (torch.sign(diag - S) + torch.sign(diag - S.T))
    M.fill_diagonal_(0.0)
    return M


def lac_of(M: Tensor) -> float:
    """LAC of a sign matrix: the mean of M_ij over all ordered pairs i≠j."""
    n = M.shape[0]
    return float(M.sum() / (n * (n - 1)))


def lac_interval(
    M: Tensor, docs: Sequence[str], n_boot: int = 1000, seed: int = 0
) -> tuple[float, float] | None:
    """95 % bootstrap interval of LAC resampling *documents* (all pairs of a drawn document at once).

    With c_i the number of copies of pair i in a resample, the statistic is
    Σ_{i≠j} c_i c_j M_ij / Σ_{i≠j} c_i c_j: a comparison between two copies of the same pair is skipped
    (0 by construction, it would bias the interval towards 0), comparisons between different pairs of
    one drawn document count. All replicates in one einsum. ``M`` may also be a difference of two
    layers' sign matrices (LAC above the floor). None below ``MIN_DOCUMENTS`` documents.
    """
    if len(set(docs)) < MIN_DOCUMENTS or n_boot <= 0:
        return None
    names, doc_counts = document_counts(docs, n_boot, seed)
    column = {d: i for i, d in enumerate(names)}
    counts = torch.from_numpy(doc_counts[:, [column[d] for d in docs]])
    numerator = torch.einsum("bi,ij,bj->b", counts, M.double(), counts)
    denominator = counts.sum(1) ** 2 - (counts**2).sum(1)
    valid = denominator > 0  # a replicate that drew one pair n times has no comparison at all
    stats = numerator[valid] / denominator[valid]
    if stats.numel() == 0:
        return None
    lo, hi = torch.quantile(stats, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return float(lo), float(hi)


def lac_item_values(M: Tensor) -> list[float]:
    """Per-pair pseudo-values ψ_i = 2·h1_i − LAC, h1_i = mean_{j≠i} (M_ij + M_ji)/2, whose mean is LAC.

    LAC is a U-statistic of order 2, so its first-order error is (2/n)·Σ(h1_i − LAC) (Hoeffding): a
    bootstrap of the mean of ψ has LAC's width, where one of h1 alone would be half as wide. Reports
    store ψ so that two runs can be compared by a paired bootstrap over shared pairs
    (:func:`clmap.evaluate.bootstrap.paired_interval`) without storing n × n matrices.
    """
    n = M.shape[0]
    h1 = ((M + M.T) / 2).sum(1) / (n - 1)
    return (2 * h1 - lac_of(M)).tolist()


def language_alignment_coefficient(
    S: Tensor, n_boot: int = 1000, seed: int = 0, docs: Sequence[str] | None = None
) -> tuple[float, float | None, float | None]:
    """(LAC, 2.5 %, 97.5 % bounds) of a square cosine matrix ``S_ij = cos(u_i, v_j)``.

    The bootstrap resamples the documents ``docs`` of the pairs (default: each pair its own document);
    no interval (None, None) below ``MIN_DOCUMENTS`` documents or with ``n_boot`` 0.
    """
    if S.dim() != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"LAC needs a square similarity matrix, got shape {tuple(S.shape)}")
    n = S.shape[0]
    if n < 2:
        raise ValueError("LAC needs at least 2 parallel pairs")
    M = _pairwise_sign_matrix(S.detach().cpu())
    interval = lac_interval(M, list(docs) if docs is not None else [str(i) for i in range(n)], n_boot, seed)
    return (lac_of(M), *(interval or (None, None)))


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
    lac_lo: float | None  # None: too few documents for an interval
    lac_hi: float | None
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
    documents: int = 0  # documents the pairs came from (the bootstrap's clusters)
    item_ids: list[str] = field(default_factory=list)
    floor_layer: int = 0  # the embeddings: what shared characters, numbers and names align alone
    map_layer: int = 0  # the hidden state the run's map term trains (objective.map_layer)
    best_layer: int = 0  # the layer of highest LAC (chosen on these pairs: exploratory)
    above_floor: dict = field(default_factory=dict)  # LAC at map_layer - at floor_layer: lac, lo, hi
    # ItemScores (as dicts) of LAC at "floor", "map", "best" and of "map-floor", for paired comparisons
    items: dict[str, dict] = field(default_factory=dict)


def trained_map_layer(checkpoint) -> tuple[int, str]:
    """(objective.map_layer of the run the checkpoint comes from, where it was read): the run's
    config.json, else the training default (a model clmap did not train)."""
    from clmap.config import load_config
    from clmap.evaluate.lm import training_config

    config, where = training_config(checkpoint)
    if config is not None and "map_layer" in config.get("objective", {}):
        return int(config["objective"]["map_layer"]), f"from {where}"
    return int(load_config(None, []).objective.map_layer), "the training default: no clmap run config"


def lac_views(result: PairAlignment) -> dict[str, tuple[float, float | None, float | None]]:
    """(LAC, lo, hi) at the floor (embeddings), the map layer, the best layer, and the headline
    ``lac@map-floor`` (its interval from the same document resamples as each layer's)."""
    rows = {name: result.layers[i] for name, i in (("floor", result.floor_layer), ("map", result.map_layer))}
    rows["best"] = result.layers[result.best_layer]
    views = {f"lac@{name}": (row.lac, row.lac_lo, row.lac_hi) for name, row in rows.items()}
    lift = result.above_floor
    views["lac@map-floor"] = (lift["lac"], lift["lo"], lift["hi"])
    return views


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
    map_layer: int = -1,
) -> PairAlignment:
    """LAC with its document-clustered interval, mean parallel cosine and P@1 for every layer; ``layer``
    (default middle, numbered as :func:`clmap.objectives.hidden_state_layer` says) is the one reported in
    the summary table and drawn as the heat-map. LAC is also read at the floor (embeddings), at the
    layer the map term trains (``map_layer``, the run's ``objective.map_layer``) and at the best layer,
    with the headline LAC above the floor = map layer − floor (its interval from the same resamples)."""
    from clmap.objectives import hidden_state_layer

    report_layer = hidden_state_layer(-1 if layer is None else layer, lm.num_layers, "--lac-layer")
    map_index = hidden_state_layer(map_layer, lm.num_layers, "objective.map_layer")
    u_layers = pooled_hidden_states(lm, [s.src for s in segments], batch_size, desc=f"LAC {pair} src")
    v_layers = pooled_hidden_states(lm, [s.tgt for s in segments], batch_size, desc=f"LAC {pair} tgt")
    docs = [s.doc for s in segments]
    ids = [s.id for s in segments]
    result = PairAlignment(
        pair=pair,
        n=len(segments),
        report_layer=report_layer,
        split=split,
        data=data,
        documents=len(set(docs)),
        item_ids=ids,
        map_layer=map_index,
    )
    signs = []
    for index in range(u_layers.shape[0]):
        S = similarity_matrix(u_layers[index], v_layers[index]).cpu()
        M = _pairwise_sign_matrix(S)
        signs.append(M)
        lo, hi = lac_interval(M, docs, n_boot, seed) or (None, None)
        p_ab, p_ba = retrieval_precision_at_1(S)
        label = layer_label(index, u_layers.shape[0] - 1)
        result.layers.append(
            LayerAlignment(index, label, lac_of(M), lo, hi, float(S.diagonal().mean()), p_ab, p_ba)
        )
        if index == report_layer:
            result.heatmap = S.tolist()
    result.best_layer = max(range(len(result.layers)), key=lambda i: result.layers[i].lac)
    lift = signs[map_index] - signs[result.floor_layer]
    lo, hi = lac_interval(lift, docs, n_boot, seed) or (None, None)
    result.above_floor = {"lac": lac_of(lift), "lo": lo, "hi": hi}
    for name, M in (
        ("floor", signs[result.floor_layer]),
        ("map", signs[map_index]),
        ("best", signs[result.best_layer]),
        ("map-floor", lift),
        ("report", signs[report_layer]),
    ):
        result.items[name] = ItemScores(ids, docs, [[v] for v in lac_item_values(M)]).as_dict()
    return result
