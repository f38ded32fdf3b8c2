"""Cross-lingual understanding by option log-likelihood: Belebele (passage in one language, question and
options in another) and a built-in translation-choice task made from the bundled parallel test split.

Options are scored by log p(option | prompt) divided by the option's UTF-8 byte length (the
``acc_norm`` convention of lm-evaluation-harness): byte length is tokenizer-independent, so two
checkpoints with different vocabularies are normalised the same way.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from clmap.evaluate.lm import LoadedModel, score_continuations
from clmap.evaluate.sources import (
    LANGUAGE_NAMES,
    EvalDataError,
    ParallelSegment,
    language_file,
    read_jsonl_records,
)

BELEBELE_FIELDS = (
    "flores_passage",
    "question",
    "mc_answer1",
    "mc_answer2",
    "mc_answer3",
    "mc_answer4",
    "correct_answer_num",
)


@dataclass
class ChoiceItem:
    """One multiple-choice question: a prompt (ids) and candidate texts, ``gold`` indexes the answer."""

    prompt: list[int]
    candidates: list[str]
    gold: int


# A scorer returns one score per candidate of each item (higher = preferred).
Scorer = Callable[[Sequence[ChoiceItem]], list[list[float]]]


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion (well-behaved at 0, 1 and small n)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def model_scorer(lm: LoadedModel, batch_size: int = 8, desc: str = "choices") -> Scorer:
    """Length-normalised log-likelihood of each candidate given its item's prompt."""
    tok = lm.tokenizer

    def score(items: Sequence[ChoiceItem]) -> list[list[float]]:
        contexts, continuations, lengths = [], [], []
        for item in items:
            for text in item.candidates:
                contexts.append(item.prompt)
                continuations.append(tok.encode(text))
                lengths.append(max(1, len(text.encode("utf-8"))))
        scored = score_continuations(lm, contexts, continuations, batch_size=batch_size, desc=desc)
        flat = [logp / length for (logp, _), length in zip(scored, lengths, strict=False)]
        out, cursor = [], 0
        for item in items:
            out.append(flat[cursor : cursor + len(item.candidates)])
            cursor += len(item.candidates)
        return out

    return score


def choice_accuracy(items: Sequence[ChoiceItem], scorer: Scorer) -> dict:
    """Accuracy (ties count as wrong unless the gold is the first maximum) with a Wilson interval."""
    scores = scorer(items)
    correct = sum(
        1
        for item, s in zip(items, scores, strict=False)
        if max(range(len(s)), key=s.__getitem__) == item.gold
    )
    lo, hi = wilson_interval(correct, len(items))
    return {
        "accuracy": correct / len(items) if items else 0.0,
        "ci": [lo, hi],
        "n": len(items),
        "correct": correct,
        "chance": 1 / len(items[0].candidates) if items else None,
    }


# -- translation choice ----------------------------------------------------------------------------


def translation_choice_candidates(
    segments: Sequence[ParallelSegment], n_candidates: int = 4, seed: int = 0, n_items: int | None = None
) -> list[tuple[list[str], int]]:
    """(candidates, gold index) for the first ``n_items`` segments (default all): gold target + distractors.

    Distractors are drawn from all ``segments``, so a small ``--limit`` still has a full pool.

    Distractors come from the same document when it has enough other segments (hardest, topical),
    else the remaining ones are the targets nearest in length (so length alone does not give it away).
    Duplicated target texts are never used as distractors. Seeded per item: deterministic.
    """
    if len({s.tgt for s in segments}) < n_candidates:
        raise EvalDataError(f"translation choice needs at least {n_candidates} distinct target segments")
    by_doc: dict[str, list[int]] = {}
    for index, segment in enumerate(segments):
        by_doc.setdefault(segment.doc, []).append(index)
    items = []
    for index, segment in enumerate(segments[:n_items]):
        rng = random.Random(seed * 1_000_003 + index)
        chosen: list[str] = []
        same_doc = [segments[j].tgt for j in by_doc[segment.doc] if segments[j].tgt != segment.tgt]
        rng.shuffle(same_doc)
        for text in same_doc:
            if text not in chosen and len(chosen) < n_candidates - 1:
                chosen.append(text)
        if len(chosen) < n_candidates - 1:
            others = sorted(
                {s.tgt for s in segments} - {segment.tgt, *chosen},
                key=lambda t: (abs(len(t) - len(segment.tgt)), t),
            )
            chosen.extend(others[: n_candidates - 1 - len(chosen)])
        gold = rng.randrange(n_candidates)
        candidates = chosen[:gold] + [segment.tgt] + chosen[gold:]
        items.append((candidates, gold))
    return items


def translation_choice_items(
    lm: LoadedModel,
    segments: Sequence[ParallelSegment],
    src_lang: str,
    tgt_lang: str,
    seed: int = 0,
    n_items: int | None = None,
) -> list[ChoiceItem]:
    """Prompt = the MT prompt (clmap format or text template), candidates = 4 target segments."""
    from clmap.evaluate.mt import mt_prompts

    choices = translation_choice_candidates(segments, seed=seed, n_items=n_items)
    prompts, _ = mt_prompts(lm, [s.src for s in segments[: len(choices)]], src_lang, tgt_lang)
    return [
        ChoiceItem(prompt=prompt, candidates=candidates, gold=gold)
        for prompt, (candidates, gold) in zip(prompts, choices, strict=True)
    ]


# -- Belebele --------------------------------------------------------------------------------------


def belebele_items(
    lm: LoadedModel, data: str | Path, passage_lang: str, question_lang: str, limit: int | None = None
) -> list[ChoiceItem]:
    """Join the passage file and the question file (by ``link`` + ``question_number``, else line order)."""
    passage_path = language_file(data, passage_lang, (".jsonl",))
    question_path = language_file(data, question_lang, (".jsonl",))
    passages = read_jsonl_records(passage_path, ("flores_passage",))
    questions = read_jsonl_records(question_path, BELEBELE_FIELDS[1:])
    if len(passages) != len(questions):
        raise EvalDataError(
            f"{passage_path} has {len(passages)} records but {question_path} {len(questions)}"
        )

    def key(record: dict) -> tuple | None:
        return (record["link"], record.get("question_number")) if "link" in record else None

    if all(key(r) is not None for r in passages + questions):
        by_key = {key(r): r for r in passages}
        missing = [number for number, r in enumerate(questions, 1) if key(r) not in by_key]
        if missing:
            raise EvalDataError(
                f"{question_path}: record {missing[0]} has a link not found in {passage_path}"
            )
        passages = [by_key[key(r)] for r in questions]
    if limit is not None:
        passages, questions = passages[:limit], questions[:limit]
    tok = lm.tokenizer
    items = []
    for number, (p, q) in enumerate(zip(passages, questions, strict=False), 1):
        try:
            gold = int(q["correct_answer_num"]) - 1
        except (TypeError, ValueError) as exc:
            raise EvalDataError(
                f"{question_path}: record {number} field 'correct_answer_num' is not 1-4"
            ) from exc
        if not 0 <= gold < 4:
            raise EvalDataError(f"{question_path}: record {number} field 'correct_answer_num' is not 1-4")
        text = (
            f"{LANGUAGE_NAMES.get(passage_lang, passage_lang)} passage: {p['flores_passage']}\n"
            f"Question: {q['question']}\nAnswer:"
        )
        # SentencePiece adds its own word-boundary prefix; byte-level HF tokenizers need the space.
        space = " " if tok.kind == "hf" else ""
        options = [space + str(q[f"mc_answer{k}"]) for k in range(1, 5)]
        items.append(ChoiceItem(prompt=[tok.bos_id] + tok.encode(text), candidates=options, gold=gold))
    if not items:
        raise EvalDataError(f"{question_path}: no Belebele records")
    return items
