"""Which items are scored, and how uncertain a score is given that the items come in documents.

Sentences of one document share topic, style and translator, so they are not independent draws: an
interval that resamples sentences one by one is too narrow. Here

- :func:`sample_items` draws the scored items by a seeded sample stratified over documents (the same
  items for every run given the same seed, pair and split, whatever the model);
- :func:`clustered_interval` is a percentile bootstrap that resamples whole *documents* with
  replacement (documents only, their items kept as they are: with a sample stratified over documents
  most documents hold one to three scored items, so a second, within-document stage adds almost no
  variance, and resampling at both stages is known to overstate it; resampling the clusters alone is
  the standard consistent choice); below :data:`MIN_DOCUMENTS` documents it gives no interval at all;
- :func:`paired_interval` is the same bootstrap of a difference between runs over the items they
  share, so the item sampling cancels out of a run-to-run delta.

A score is described by :class:`ItemScores`: one vector per item and a statistic of their sums
(``mean``: the mean of one value per item, e.g. correct = 1; ``chrf++``: sacrebleu's chrF++ from
summed n-gram statistics, i.e. the corpus score of the resampled sentences).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

# Fewer documents than this: no interval (a bootstrap over 2-9 clusters knows almost nothing of the
# between-document spread and is too narrow by a factor that depends on that unknown spread).
MIN_DOCUMENTS = 10
CONFIDENCE = 0.95
TOO_FEW = "too few documents for an interval"


def sample_items(docs: Sequence[str], n: int | None, seed: int, stratum: str) -> list[int]:
    """Indices (in corpus order) of ``n`` items drawn without replacement, stratified over ``docs``.

    Each document gets its proportional share of ``n`` (largest remainders, ties broken by the seeded
    generator), then its items are a seeded sample within the document. ``stratum`` (e.g.
    ``"en-cs/test"``) is part of the seed, so both directions of a pair score the same items and two
    runs compared on one split see identical items. ``n`` of None (or ≥ the number of items): all.
    """
    total = len(docs)
    if n is None or n >= total:
        return list(range(total))
    rng = random.Random(f"clmap-items:{seed}:{stratum}")
    by_doc: dict[str, list[int]] = {}
    for index, doc in enumerate(docs):
        by_doc.setdefault(doc, []).append(index)
    names = list(by_doc)
    quotas = {d: n * len(by_doc[d]) / total for d in names}
    take = {d: int(quotas[d]) for d in names}
    tie = {d: rng.random() for d in names}
    by_remainder = sorted(names, key=lambda d: (-(quotas[d] - take[d]), tie[d]))
    for d in by_remainder[: n - sum(take.values())]:
        take[d] += 1
    chosen = [i for d in names for i in rng.sample(by_doc[d], take[d])]
    return sorted(chosen)


def first_items(docs: Sequence[str], n: int | None) -> list[int]:
    """The first ``n`` rows (the evaluator's behaviour before items were sampled; ``--items first``)."""
    return list(range(len(docs) if n is None else min(n, len(docs))))


@dataclass
class ItemScores:
    """Per-item vectors of one score (stored in report.json as the metric's ``items``)."""

    ids: list[str]  # stable item ids ("doc#row"): the same item has the same id in every run
    docs: list[str]  # the document of each item: the bootstrap's clusters
    values: list[list[float]]  # one vector per item; the statistic reads their (weighted) sum
    statistic: str = "mean"  # "mean" (of the single value per item) or "chrf++" (n-gram statistics)

    def as_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict) -> ItemScores:
        return ItemScores(
            list(data["ids"]), list(data["docs"]), data["values"], data.get("statistic", "mean")
        )

    @property
    def documents(self) -> int:
        return len(set(self.docs))


def _chrf_statistic(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    from sacrebleu.metrics import CHRF

    chrf = CHRF(word_order=2)
    return np.array([chrf._compute_score_from_stats(list(row)).score for row in sums])


def _mean_statistic(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    return sums[:, 0] / np.maximum(counts, 1)


STATISTICS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "mean": _mean_statistic,
    "chrf++": _chrf_statistic,
}


def document_counts(docs: Sequence[str], n_boot: int, seed: int) -> tuple[list[str], np.ndarray]:
    """(the distinct documents, [n_boot, D] counts of each document in each resample of D documents)."""
    names = list(dict.fromkeys(docs))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(names), size=(n_boot, len(names)))
    counts = np.zeros((n_boot, len(names)))
    np.add.at(counts, (np.arange(n_boot)[:, None], draws), 1.0)
    return names, counts


def _replicates(scores: ItemScores, names: list[str], counts: np.ndarray, ids: Sequence[str]) -> np.ndarray:
    """The statistic of ``scores`` restricted to ``ids`` in every document resample."""
    position = {item: i for i, item in enumerate(scores.ids)}
    rows = [position[item] for item in ids]
    values = np.asarray(scores.values, dtype=np.float64)[rows]
    doc_index = {d: i for i, d in enumerate(names)}
    membership = np.zeros((len(rows), len(names)))
    membership[np.arange(len(rows)), [doc_index[scores.docs[r]] for r in rows]] = 1.0
    per_doc = membership.T @ values  # [D, k] summed vectors of each document
    item_counts = counts @ membership.T.sum(1, keepdims=True)  # [B, 1]
    return STATISTICS[scores.statistic](counts @ per_doc, item_counts[:, 0])


def _percentiles(stats: np.ndarray) -> tuple[float, float]:
    tail = (1 - CONFIDENCE) / 2
    lo, hi = np.quantile(stats, [tail, 1 - tail])
    return float(lo), float(hi)


def clustered_interval(scores: ItemScores, n_boot: int = 1000, seed: int = 0) -> tuple[float, float] | None:
    """95 % percentile interval resampling documents; None below :data:`MIN_DOCUMENTS` documents."""
    if scores.documents < MIN_DOCUMENTS or n_boot <= 0:
        return None
    names, counts = document_counts(scores.docs, n_boot, seed)
    return _percentiles(_replicates(scores, names, counts, scores.ids))


def point(scores: ItemScores, ids: Sequence[str] | None = None) -> float:
    """The statistic over ``ids`` (default all items), each counted once."""
    ids = scores.ids if ids is None else ids
    names = list(dict.fromkeys(scores.docs))
    return float(_replicates(scores, names, np.ones((1, len(names))), ids)[0])


def interval_method(documents: int, n_boot: int) -> str:
    """What a metric's ``ci`` is, in words (``interval``; report.md prints it when there is no ``ci``)."""
    if n_boot <= 0:
        return "no interval (--n-boot 0)"
    if documents < MIN_DOCUMENTS:
        return f"{TOO_FEW} ({documents} < {MIN_DOCUMENTS})"
    return f"95 % bootstrap over {documents} documents"


def summary(scores: ItemScores, n_boot: int = 1000, seed: int = 0) -> dict:
    """The metric fields of a score with items: its clustered ``ci`` (or None), ``documents``,
    ``interval`` (what the ci is, or why there is none) and ``items`` (ids, docs, per-item values)."""
    ci = clustered_interval(scores, n_boot, seed)
    return {
        "ci": list(ci) if ci is not None else None,
        "documents": scores.documents,
        "interval": interval_method(scores.documents, n_boot),
        "items": scores.as_dict(),
    }


def paired_interval(
    pairs: Sequence[tuple[ItemScores, ItemScores]], n_boot: int = 1000, seed: int = 0
) -> dict | None:
    """Mean over ``pairs`` of statistic(a) − statistic(b) on the items every score shares, with a 95 %
    bootstrap interval resampling their documents jointly (one resample serves every pair, e.g. every
    seed of an ablation arm scored on the same items). None when no item is shared; the interval is
    None below :data:`MIN_DOCUMENTS` shared documents."""
    return paired_mean_interval([pairs], n_boot, seed)


def paired_mean_interval(
    keys: Sequence[Sequence[tuple[ItemScores, ItemScores]]], n_boot: int = 1000, seed: int = 0
) -> dict | None:
    """The mean over ``keys`` (e.g. the directions of a headline metric) of each key's paired delta as
    :func:`paired_interval` computes it, with one 95 % bootstrap that resamples the documents of all
    keys jointly: a source document scored under several keys (both directions of a pair, or the same
    source text in two pairs) moves as one cluster. None when a key shares no item."""
    shared_ids, docs_of = [], []
    for pairs in keys:
        if not pairs:
            return None
        shared = set(pairs[0][0].ids)
        for a, b in pairs:
            if a.statistic != b.statistic:
                raise ValueError(f"cannot pair a {a.statistic!r} score with a {b.statistic!r} score")
            shared &= set(a.ids) & set(b.ids)
        ids = [item for item in pairs[0][0].ids if item in shared]
        if not ids:
            return None
        doc_of = dict(zip(pairs[0][0].ids, pairs[0][0].docs, strict=True))
        shared_ids.append(ids)
        docs_of.append([doc_of[item] for item in ids])
    docs = [doc for key_docs in docs_of for doc in key_docs]

    def key_mean(pairs, ids, stat) -> float | np.ndarray:
        return sum(stat(a, ids) - stat(b, ids) for a, b in pairs) / len(pairs)

    delta = sum(key_mean(p, ids, point) for p, ids in zip(keys, shared_ids, strict=True)) / len(keys)
    documents = len(set(docs))
    out = {"delta": delta, "lo": None, "hi": None, "items": len(docs), "documents": documents}
    if documents >= MIN_DOCUMENTS and n_boot > 0:
        names, counts = document_counts(docs, n_boot, seed)
        replicate = lambda scores, ids: _replicates(scores, names, counts, ids)  # noqa: E731
        stats = sum(key_mean(p, ids, replicate) for p, ids in zip(keys, shared_ids, strict=True)) / len(keys)
        out["lo"], out["hi"] = _percentiles(stats)
    return out
