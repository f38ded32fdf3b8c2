"""Evaluator metrics against hand-computed values (no model needed)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clmap.evaluate.alignment import (
    _pairwise_sign_matrix,
    language_alignment_coefficient,
    retrieval_precision_at_1,
)
from clmap.evaluate.clnlu import ChoiceItem, choice_accuracy, translation_choice_candidates, wilson_interval
from clmap.evaluate.clqa import exact_match, token_f1
from clmap.evaluate.clsum import rouge_scores
from clmap.evaluate.mt import bleu_tokenizer_for, score_translations
from clmap.evaluate.report import compare_reports, metric, render_comparison
from clmap.evaluate.sources import ParallelSegment

# -- LAC -------------------------------------------------------------------------------------------


def test_lac_identity_like_is_one():
    S = torch.full((20, 20), 0.3) + 0.5 * torch.eye(20)
    lac, lo, hi = language_alignment_coefficient(S, n_boot=200)
    assert lac == pytest.approx(1.0)
    assert lo == pytest.approx(1.0) and hi == pytest.approx(1.0)


def test_lac_reversed_is_minus_one():
    S = torch.full((15, 15), 0.8) - 0.5 * torch.eye(15)
    assert language_alignment_coefficient(S, n_boot=100)[0] == pytest.approx(-1.0)


def _bootstrap_by_loops(S: torch.Tensor, docs: list[str], n_boot: int, seed: int) -> tuple[float, float]:
    """The document bootstrap written out: each replicate draws as many documents as there are, with
    replacement (the same seeded draws as clmap.evaluate.bootstrap.document_counts), takes every pair of
    each drawn document, and averages over all ordered pairs of drawn positions whose pairs differ (two
    copies of one pair are no comparison)."""
    names = list(dict.fromkeys(docs))
    draws = np.random.default_rng(seed).integers(0, len(names), size=(n_boot, len(names))).tolist()
    s = S.double().tolist()

    def sign(x: float) -> float:
        return (x > 0) - (x < 0)

    stats = []
    for row in draws:
        positions = [i for d in row for i, doc in enumerate(docs) if doc == names[d]]
        total, count = 0.0, 0
        for i in positions:
            for j in positions:
                if i != j:
                    total += 0.5 * (sign(s[i][i] - s[i][j]) + sign(s[i][i] - s[j][i]))
                    count += 1
        if count:
            stats.append(total / count)
    lo, hi = np.quantile(np.array(stats), [0.025, 0.975])
    return float(lo), float(hi)


def test_lac_bootstrap_interval_equals_the_loop_definition():
    S = torch.randn(24, 24, generator=torch.Generator().manual_seed(4)) + 0.4 * torch.eye(24)
    docs = [f"d{i // 2}" for i in range(24)]  # 12 documents of 2 pairs
    _, lo, hi = language_alignment_coefficient(S, n_boot=60, seed=7, docs=docs)
    ref_lo, ref_hi = _bootstrap_by_loops(S, docs, n_boot=60, seed=7)
    assert (lo, hi) == (pytest.approx(ref_lo, abs=1e-12), pytest.approx(ref_hi, abs=1e-12))


def test_lac_bootstrap_width_matches_the_u_statistic_standard_error():
    # LAC is a U-statistic of order 2 with kernel h(i, j) = (M_ij + M_ji) / 2; its standard error is
    # 2·sd(h1)/√n with h1_i = mean_j h(i, j) (Hoeffding), so a 95 % interval is about ±1.96 of it.
    n = 200
    S = torch.randn(n, n, generator=torch.Generator().manual_seed(1)) + 0.3 * torch.eye(n)
    lac, lo, hi = language_alignment_coefficient(S, n_boot=300, seed=3)
    M = _pairwise_sign_matrix(S)
    h1 = ((M + M.T) / 2).sum(1) / (n - 1)
    expected_width = 2 * 1.959964 * 2 * float(h1.std()) / math.sqrt(n)
    assert float(h1.mean()) == pytest.approx(lac, abs=1e-12)
    assert 0.85 < (hi - lo) / expected_width < 1.15
    assert abs((lo + hi) / 2 - lac) < 0.15 * (hi - lo)


def test_lac_matches_the_definition_by_loops():
    S = torch.randn(7, 7, generator=torch.Generator().manual_seed(0))
    total = 0.0
    for i in range(7):
        for j in range(7):
            if i != j:
                total += 0.5 * (float(torch.sign(S[i, i] - S[i, j])) + float(torch.sign(S[i, i] - S[j, i])))
    assert language_alignment_coefficient(S, n_boot=0)[0] == pytest.approx(total / 42)


def test_lac_bootstrap_skips_copies_of_the_same_pair():
    # Perfect alignment: every valid comparison is +1, so every replicate must be exactly 1 (a bootstrap
    # that counted copy-vs-copy comparisons as 0 would pull the lower bound below 1).
    S = torch.eye(12)
    lac, lo, hi = language_alignment_coefficient(S, n_boot=500)
    assert (lac, lo, hi) == (pytest.approx(1.0), pytest.approx(1.0), pytest.approx(1.0))


def test_lac_has_no_interval_from_too_few_documents():
    # 12 pairs but from 3 documents: below MIN_DOCUMENTS there is no interval, however many pairs.
    S = torch.eye(12) + 0.1
    lac, lo, hi = language_alignment_coefficient(S, n_boot=100, docs=[f"d{i % 3}" for i in range(12)])
    assert lac == pytest.approx(1.0) and (lo, hi) == (None, None)


def test_lac_views_are_floor_map_best_and_stay_out_of_the_ablation_lac_headline():
    from clmap.evaluate.alignment import LayerAlignment, PairAlignment, lac_views
    from clmap.experiments.stats import headline_values

    layers = [
        LayerAlignment(i, f"layer {i}", lac, None, None, 0.5, 0.5, 0.5)
        for i, lac in enumerate([0.2, 0.5, 0.7])
    ]
    result = PairAlignment("en-cs", 12, 1, layers=layers, map_layer=1, best_layer=2)
    result.above_floor = {"lac": 0.3, "lo": 0.1, "hi": 0.5}
    views = lac_views(result)
    assert {name: v[0] for name, v in views.items()} == {
        "lac@floor": 0.2,
        "lac@map": 0.5,
        "lac@best": 0.7,
        "lac@map-floor": 0.3,
    }
    metrics = {("lac", "en-cs", name, "test"): {"value": v[0]} for name, v in views.items()}
    metrics["lac", "en-cs (layer 1)", "lac", "test"] = {"value": 0.5}
    assert headline_values(metrics)["LAC", "test"] == {"en-cs (layer 1) lac": 0.5}


def test_lac_rejects_non_square():
    with pytest.raises(ValueError, match="square"):
        language_alignment_coefficient(torch.zeros(3, 4))


def test_retrieval_precision():
    S = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.1, 0.8], [0.0, 0.3, 0.5]])
    # rows: argmax 0, 2, 2 -> 2/3 correct; columns: argmax 0, 2, 1 -> 1/3 correct
    assert retrieval_precision_at_1(S) == (pytest.approx(2 / 3), pytest.approx(1 / 3))


# -- MT --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lang", ["cs", "zh"])
def test_bleu_equals_sacrebleu_cli(tmp_path: Path, lang: str):
    if lang == "zh":
        refs = ["我们今天去公园散步。", "这本书非常有意思。", "请把窗户关上。"]
        hyps = ["我们今天去公园。", "这本书很有意思。", "请关上窗户。"]
    else:
        refs = ["Dnes jdeme do parku.", "Tato kniha je velmi zajímavá.", "Zavřete prosím okno."]
        hyps = ["Dnes jdeme do parku na procházku.", "Ta kniha je zajímavá.", "Prosím zavřete okno."]
    (tmp_path / "ref.txt").write_text("\n".join(refs) + "\n", encoding="utf-8")
    (tmp_path / "hyp.txt").write_text("\n".join(hyps) + "\n", encoding="utf-8")
    cli = Path(sys.executable).parent / "sacrebleu"

    def run_cli(*metric_args: str) -> float:
        command = [
            str(cli),
            str(tmp_path / "ref.txt"),
            "-i",
            str(tmp_path / "hyp.txt"),
            *metric_args,
            "-b",
            "-w",
            "6",
        ]
        return float(subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip())

    scores = score_translations(hyps, refs, lang)
    assert scores["bleu"] == pytest.approx(run_cli("-m", "bleu", "-tok", bleu_tokenizer_for(lang)), abs=1e-5)
    assert scores["chrf++"] == pytest.approx(run_cli("-m", "chrf", "--chrf-word-order", "2"), abs=1e-5)
    assert f"tok:{bleu_tokenizer_for(lang)}" in scores["signatures"]["bleu"]


def test_bleu_tokenizer_choice():
    assert bleu_tokenizer_for("zh") == "zh"
    assert bleu_tokenizer_for("en") == "13a"
    assert bleu_tokenizer_for("ja") in {"ja-mecab", "char"}


# -- CLNLU -----------------------------------------------------------------------------------------


def _segments(n_docs: int = 3, per_doc: int = 5) -> list[ParallelSegment]:
    return [
        ParallelSegment(doc=f"d{d}", src=f"source {d}-{i}", tgt=f"target sentence {d}-{i}" + "x" * i)
        for d in range(n_docs)
        for i in range(per_doc)
    ]


def test_translation_choice_candidates_are_deterministic_and_from_the_same_document():
    segments = _segments()
    first = translation_choice_candidates(segments, seed=0)
    assert first == translation_choice_candidates(segments, seed=0)
    for segment, (candidates, gold) in zip(segments, first, strict=True):
        assert len(candidates) == 4 and len(set(candidates)) == 4
        assert candidates[gold] == segment.tgt
        assert all(c.startswith(f"target sentence {segment.doc[1:]}-") for c in candidates)


def test_translation_choice_falls_back_to_nearest_length():
    segments = [ParallelSegment(doc=str(i), src=str(i), tgt="y" * (i + 1)) for i in range(8)]
    candidates, gold = (
        translation_choice_candidates(segments, seed=0)[4][0],
        translation_choice_candidates(segments, seed=0)[4][1],
    )
    assert candidates[gold] == "y" * 5
    assert sorted(len(c) for c in candidates) == [3, 4, 5, 6]


def test_choice_accuracy_is_one_for_a_gold_preferring_scorer():
    items = [
        ChoiceItem(prompt=[1], candidates=list(c), gold=g)
        for c, g in translation_choice_candidates(_segments())
    ]

    def oracle(batch):
        return [[1.0 if k == item.gold else 0.0 for k in range(len(item.candidates))] for item in batch]

    result = choice_accuracy(items, oracle)
    assert result["accuracy"] == 1.0 and result["n"] == 15 and result["correct"] == 15
    # Wilson at p = 1: lower bound n / (n + z²), upper bound 1
    assert result["wilson_ci"] == [pytest.approx(15 / (15 + 1.959964**2), abs=1e-9), pytest.approx(1.0)]


def test_wilson_interval_hand_value():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    # 50/200 by hand: centre (0.25 + z²/400)/(1 + z²/200) = 0.25471, half-width 0.05963
    lo, hi = wilson_interval(50, 200)
    assert lo == pytest.approx(0.19508, abs=1e-4) and hi == pytest.approx(0.31434, abs=1e-4)
    assert wilson_interval(0, 20) == (0.0, pytest.approx(1.959964**2 / (20 + 1.959964**2), abs=1e-9))


# -- CLQA ------------------------------------------------------------------------------------------


def test_token_f1_and_exact_match_by_hand():
    assert exact_match("The Eiffel Tower!", ["eiffel tower"]) == 1.0
    assert exact_match("Eiffel", ["eiffel tower"]) == 0.0
    # prediction tokens {eiffel, tower, paris}, gold {eiffel, tower}: P = 2/3, R = 1, F1 = 0.8
    assert token_f1("the Eiffel tower, Paris", ["Eiffel Tower"]) == pytest.approx(0.8)
    assert token_f1("nothing", ["Eiffel Tower", "nothing at all"]) == pytest.approx(0.5)
    assert token_f1("", ["x"]) == 0.0


def test_token_f1_uses_characters_for_chinese():
    # prediction chars 北京市 vs gold 北京: common 2, P = 2/3, R = 1 -> F1 = 0.8
    assert token_f1("北京市。", ["北京"], lang="zh") == pytest.approx(0.8)
    assert exact_match("北京。", ["北京"], lang="zh") == 1.0


# -- summarisation ---------------------------------------------------------------------------------


def test_rouge_by_hand():
    # unicode words: ref [kočka, sedí, na, rohožce], pred [kočka, leží, na, rohožce]
    scores = rouge_scores(["Kočka leží na rohožce."], ["Kočka sedí na rohožce."], "cs")
    assert scores["rouge1"] == pytest.approx(75.0)  # 3 of 4 unigrams both ways
    assert scores["rouge2"] == pytest.approx(100 / 3)  # 1 of 3 bigrams (na rohožce)
    assert scores["rougeL"] == pytest.approx(75.0)  # LCS kočka na rohožce


def test_rouge_characters_for_japanese():
    scores = rouge_scores(["猫が寝る"], ["猫が座る"], "ja")
    assert scores["rouge1"] == pytest.approx(75.0)


# -- comparison ------------------------------------------------------------------------------------


def test_compare_reports_deltas_and_interval_flags():
    base = {
        "tasks": {"lac": {"metrics": [metric("en-cs", "lac", 0.2, (0.1, 0.3)), metric("en-cs", "cos", 0.5)]}}
    }
    other = {
        "tasks": {"lac": {"metrics": [metric("en-cs", "lac", 0.45, (0.3, 0.6)), metric("en-cs", "cos", 0.4)]}}
    }
    same = {"tasks": {"lac": {"metrics": [metric("en-cs", "lac", 0.25, (0.1, 0.4))]}}}
    comparison = compare_reports([("a", base), ("b", other), ("c", same)])
    lac_row = next(r for r in comparison["rows"] if r["metric"] == "lac")
    assert lac_row["deltas"] == {"b": pytest.approx(0.25), "c": pytest.approx(0.05)}
    assert lac_row["outside_ci"] == {"b": True, "c": False}
    cos_row = next(r for r in comparison["rows"] if r["metric"] == "cos")
    assert cos_row["outside_ci"]["b"] is None and "c" not in cos_row["deltas"]
    assert "+0.25†" in render_comparison(comparison)


def test_translation_choice_limited_items_draw_from_the_whole_pool():
    segments = _segments(n_docs=1, per_doc=6)
    items = translation_choice_candidates(segments, seed=0, n_items=2)
    assert len(items) == 2
    assert all(len(set(candidates)) == 4 for candidates, _ in items)
