"""Item sampling and the document-clustered bootstrap (clmap.evaluate.bootstrap) against plain loops."""

from __future__ import annotations

import random

import numpy as np
import pytest

from clmap.evaluate.bootstrap import (
    MIN_DOCUMENTS,
    TOO_FEW,
    ItemScores,
    clustered_interval,
    paired_interval,
    point,
    sample_items,
    summary,
)
from clmap.evaluate.report import compare_reports, metric, render_comparison, render_markdown
from clmap.evaluate.sources import parallel_segments

# -- sampling --------------------------------------------------------------------------------------


def _docs(sizes: list[int]) -> list[str]:
    return [f"d{d}" for d, size in enumerate(sizes) for _ in range(size)]


def test_sample_is_seeded_and_stratified_over_documents():
    docs = _docs([30, 2, 5, 40, 1, 12, 10])  # 100 items in 7 documents of unequal size
    first = sample_items(docs, 20, seed=0, stratum="en-cs/test")
    assert first == sample_items(docs, 20, seed=0, stratum="en-cs/test")  # same seed: same items
    assert first != sample_items(docs, 20, seed=1, stratum="en-cs/test")  # another seed: others
    assert len(first) == len(set(first)) == 20 and first == sorted(first)
    # each document gets its proportional share of 20, rounded down or up
    for d, size in enumerate([30, 2, 5, 40, 1, 12, 10]):
        taken = sum(1 for i in first if docs[i] == f"d{d}")
        assert int(20 * size / 100) <= taken <= int(20 * size / 100) + 1
    assert sample_items(docs, None, 0, "x") == sample_items(docs, 500, 0, "x") == list(range(100))


def test_bundled_sample_spans_documents_and_is_shared_by_both_directions():
    first = parallel_segments("en", "cs", "test", limit=32, items="first")
    drawn = parallel_segments("en", "cs", "test", limit=32, items="sample", seed=0)
    back = parallel_segments("cs", "en", "test", limit=32, items="sample", seed=0)
    other = parallel_segments("en", "cs", "test", limit=32, items="sample", seed=1)
    assert [s.id for s in drawn] == [s.id for s in back]  # one set of items per pair, both directions
    assert [s.id for s in drawn] == [s.id for s in parallel_segments("en", "cs", limit=32, items="sample")]
    assert {s.id for s in drawn} != {s.id for s in other}
    assert len({s.doc for s in first}) <= 5  # the first 32 rows: a handful of documents
    assert len({s.doc for s in drawn}) >= 25  # the sample: spread over the split's 84 documents
    assert all(s.id == f"{s.doc}#{s.index}" for s in drawn)


# -- the clustered bootstrap against loops ----------------------------------------------------------


def _loop_interval(values: list[float], docs: list[str], n_boot: int, seed: int) -> tuple[float, float]:
    """Documents resampled with replacement written out: the same seeded draws of document indices,
    each replicate the mean of every item of every drawn document (a document drawn twice counts twice)."""
    names = list(dict.fromkeys(docs))
    draws = np.random.default_rng(seed).integers(0, len(names), size=(n_boot, len(names)))
    stats = []
    for row in draws:
        picked = [v for d in row for v, doc in zip(values, docs, strict=True) if doc == names[d]]
        stats.append(sum(picked) / len(picked))
    lo, hi = np.quantile(stats, [0.025, 0.975])
    return float(lo), float(hi)


def _clustered_hits(n_docs: int, per_doc: int, seed: int) -> ItemScores:
    """0/1 items whose success rate is a property of the document (strong clustering)."""
    rng = random.Random(seed)
    ids, docs, values = [], [], []
    for d in range(n_docs):
        rate = rng.choice([0.05, 0.95])
        for k in range(per_doc):
            ids.append(f"d{d}#{k}")
            docs.append(f"d{d}")
            values.append([float(rng.random() < rate)])
    return ItemScores(ids, docs, values)


def test_clustered_interval_equals_the_loop_definition():
    scores = _clustered_hits(n_docs=12, per_doc=3, seed=0)
    scores = ItemScores(scores.ids[:-2], scores.docs[:-2], scores.values[:-2])  # unequal document sizes
    lo, hi = clustered_interval(scores, n_boot=200, seed=5)
    ref = _loop_interval([v[0] for v in scores.values], scores.docs, 200, 5)
    assert (lo, hi) == (pytest.approx(ref[0], abs=1e-12), pytest.approx(ref[1], abs=1e-12))


def test_chrf_interval_equals_resampled_sacrebleu_corpus_scores():
    from sacrebleu.metrics import CHRF

    from clmap.evaluate.mt import chrf_item_statistics

    rng = random.Random(3)
    words = "the a cat dog sat ran on under mat hat big red".split()
    refs = [" ".join(rng.choices(words, k=6)) for _ in range(24)]
    hyps = [" ".join(w if rng.random() < 0.6 else rng.choice(words) for w in r.split()) for r in refs]
    docs = [f"d{i // 2}" for i in range(24)]
    scores = ItemScores([str(i) for i in range(24)], docs, chrf_item_statistics(hyps, refs), "chrf++")
    chrf = CHRF(word_order=2)
    assert point(scores) == pytest.approx(chrf.corpus_score(hyps, [refs]).score, abs=1e-9)
    names = list(dict.fromkeys(docs))
    draws = np.random.default_rng(1).integers(0, len(names), size=(50, len(names)))
    stats = []
    for row in draws:
        picked = [i for d in row for i, doc in enumerate(docs) if doc == names[d]]
        stats.append(chrf.corpus_score([hyps[i] for i in picked], [[refs[i] for i in picked]]).score)
    lo, hi = clustered_interval(scores, n_boot=50, seed=1)
    ref_lo, ref_hi = np.quantile(stats, [0.025, 0.975])
    assert (lo, hi) == (pytest.approx(ref_lo, abs=1e-9), pytest.approx(ref_hi, abs=1e-9))


def test_clustered_interval_is_wider_than_the_naive_one_on_clustered_data():
    scores = _clustered_hits(n_docs=30, per_doc=8, seed=1)
    clustered = clustered_interval(scores, n_boot=1000, seed=0)
    naive = clustered_interval(ItemScores(scores.ids, scores.ids, scores.values), n_boot=1000, seed=0)
    # 8 items of one document agree: the effective sample is ~30 documents, not 240 items (√8 ≈ 2.8×)
    assert (clustered[1] - clustered[0]) > 2.0 * (naive[1] - naive[0])


def test_too_few_documents_give_no_interval_and_say_so():
    scores = _clustered_hits(n_docs=MIN_DOCUMENTS - 1, per_doc=20, seed=2)  # 180 items, 9 documents
    assert clustered_interval(scores) is None
    fields = summary(scores, n_boot=100)
    assert fields["ci"] is None and fields["documents"] == MIN_DOCUMENTS - 1
    report = {"tasks": {"clnlu": {"metrics": [metric("en→cs choice", "accuracy", 0.5, n=180, **fields)]}}}
    text = render_markdown(report)
    assert TOO_FEW in text and "180 items from 9 documents" in text


# -- paired comparison -----------------------------------------------------------------------------


def test_paired_interval_equals_the_loop_definition_over_shared_items():
    a = _clustered_hits(n_docs=15, per_doc=4, seed=4)
    rng = random.Random(9)
    b_values = [[v[0] if rng.random() < 0.8 else 1 - v[0]] for v in a.values]
    b = ItemScores(a.ids[5:], a.docs[5:], b_values[5:])  # b lacks the first 5 items: pair on the rest
    paired = paired_interval([(a, b)], n_boot=300, seed=2)
    shared = a.ids[5:]
    diffs = [a.values[i][0] - b_values[i][0] for i in range(5, len(a.ids))]
    assert paired["items"] == len(shared) and paired["delta"] == pytest.approx(sum(diffs) / len(diffs))
    ref = _loop_interval(diffs, a.docs[5:], 300, 2)
    assert (paired["lo"], paired["hi"]) == (
        pytest.approx(ref[0], abs=1e-12),
        pytest.approx(ref[1], abs=1e-12),
    )


def test_compare_reports_a_paired_interval_where_both_runs_have_items():
    a = _clustered_hits(n_docs=20, per_doc=5, seed=6)
    better = ItemScores(a.ids, a.docs, [[1.0] if i % 4 == 0 else v for i, v in enumerate(a.values)])

    def report(scores: ItemScores) -> dict:
        entry = metric("en→cs choice", "accuracy", point(scores), n=100, **summary(scores, 200))
        return {"tasks": {"clnlu": {"metrics": [entry]}}}

    comparison = compare_reports([("a", report(a)), ("b", report(better))], n_boot=500)
    paired = comparison["rows"][0]["paired"]["b"]
    assert paired["delta"] == pytest.approx(point(better) - point(a)) and paired["documents"] == 20
    assert 0 < paired["lo"] < paired["delta"] < paired["hi"]
    # the same items, improved on some: the paired interval is far narrower than either run's own
    own = report(a)["tasks"]["clnlu"]["metrics"][0]["ci"]
    assert paired["hi"] - paired["lo"] < 0.5 * (own[1] - own[0])
    assert "paired bootstrap" in render_comparison(comparison)
    assert f"[{paired['lo']:.4g}, {paired['hi']:.4g}]*" in render_comparison(comparison)


def test_a_mean_over_keys_resamples_their_shared_documents_together():
    """Two keys on the same 12 documents whose run-to-run deltas cancel document by document: every joint
    resample keeps them cancelling (interval [0, 0]); resampling the keys apart would not."""
    from clmap.evaluate.bootstrap import ItemScores, paired_interval, paired_mean_interval

    docs = [f"doc{i // 2}" for i in range(24)]
    ids = [f"{d}#{i}" for i, d in enumerate(docs)]
    gain = [float(i % 5) for i in range(24)]  # differs by document, so a resample moves each key's delta

    def scores(values):
        return ItemScores(ids, docs, [[v] for v in values])

    zero = scores([0.0] * 24)
    up, down = (scores(gain), zero), (scores([0.0] * 24), scores(gain))
    joint = paired_mean_interval([[up], [down]], n_boot=500, seed=1)
    assert joint["delta"] == pytest.approx(0.0) and joint["documents"] == 12 and joint["items"] == 48
    assert joint["lo"] == pytest.approx(0.0) and joint["hi"] == pytest.approx(0.0)
    alone = paired_interval([up], n_boot=500, seed=1)
    assert alone["hi"] - alone["lo"] > 0.5  # each key alone does move under resampling
    assert paired_mean_interval([[up]], n_boot=500, seed=1) == alone
    halves = paired_mean_interval([[up], [(scores(gain), scores(gain))]], n_boot=500, seed=1)
    assert halves["delta"] == pytest.approx(alone["delta"] / 2)
