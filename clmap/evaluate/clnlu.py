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

from clmap.evaluate.lm import LoadedModel, continuation_ids, score_continuations
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
    """One multiple-choice question: a prompt (ids) and candidate texts, ``gold`` indexes the answer.

    ``candidate_ids`` are the candidates' tokens as they follow the prompt
    (:func:`clmap.evaluate.lm.continuation_ids`); without them each text is encoded on its own."""

    prompt: list[int]
    candidates: list[str]
    gold: int
    candidate_ids: list[list[int]] | None = None
    id: str = ""  # stable across runs ("doc#row", Belebele "link#question"): what paired comparisons match
    doc: str = ""  # the document (Belebele: the passage): the bootstrap's cluster


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
    """Log-likelihood of each candidate given its item's prompt, per UTF-8 byte of the candidate text
    (the space that joins it to a text prompt is scored but not counted, the same for every tokenizer)."""
    tok = lm.tokenizer

    def score(items: Sequence[ChoiceItem]) -> list[list[float]]:
        contexts, continuations, lengths = [], [], []
        for item in items:
            ids = item.candidate_ids or [tok.encode(text) for text in item.candidates]
            for text, candidate in zip(item.candidates, ids, strict=True):
                contexts.append(item.prompt)
                continuations.append(candidate)
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
    """Accuracy (ties count as wrong unless the gold is the first maximum), the Wilson interval that
    treats items as independent (``wilson_ci``) and each item's 0/1 (``scores``: :class:`ItemScores`,
    for the interval clustered by document, :func:`clmap.evaluate.bootstrap.summary`)."""
    from clmap.evaluate.bootstrap import ItemScores

    scores = scorer(items)
    hits = [
        int(max(range(len(s)), key=s.__getitem__) == item.gold)
        for item, s in zip(items, scores, strict=False)
    ]
    correct = sum(hits)
    lo, hi = wilson_interval(correct, len(items))
    ids = [item.id or str(index) for index, item in enumerate(items)]
    docs = [item.doc or item_id for item, item_id in zip(items, ids, strict=True)]
    return {
        "accuracy": correct / len(items) if items else 0.0,
        "wilson_ci": [lo, hi],
        "n": len(items),
        "correct": correct,
        "chance": 1 / len(items[0].candidates) if items else None,
        "scores": ItemScores(ids, docs, [[float(h)] for h in hits]),
    }


# -- translation choice ----------------------------------------------------------------------------


def translation_choice_candidates(
    segments: Sequence[ParallelSegment],
    n_candidates: int = 4,
    seed: int = 0,
    n_items: int | None = None,
    chosen: Sequence[int] | None = None,
) -> list[tuple[list[str], int]]:
    """(candidates, gold index) for the segments at ``chosen`` (default the first ``n_items``, default
    all): gold target + distractors.

    Distractors are drawn from all ``segments``, so a small ``--limit`` still has a full pool.

    Distractors come from the same document when it has enough other segments (hardest, topical),
    else the remaining ones are the targets nearest in length (so length alone does not give it away).
    Duplicated target texts are never used as distractors. Seeded per item: deterministic.
    """
    distinct = len({s.tgt for s in segments})
    if distinct < n_candidates:
        raise EvalDataError(
            f"translation choice needs at least {n_candidates} distinct target segments (one right answer, "
            f"{n_candidates - 1} distractors), found {distinct} in {len(segments)} rows"
        )
    by_doc: dict[str, list[int]] = {}
    for index, segment in enumerate(segments):
        by_doc.setdefault(segment.doc, []).append(index)
    items = []
    for index in range(len(segments[:n_items])) if chosen is None else chosen:
        segment = segments[index]
        rng = random.Random(seed * 1_000_003 + index)
        picked: list[str] = []
        same_doc = [segments[j].tgt for j in by_doc[segment.doc] if segments[j].tgt != segment.tgt]
        rng.shuffle(same_doc)
        for text in same_doc:
            if text not in picked and len(picked) < n_candidates - 1:
                picked.append(text)
        if len(picked) < n_candidates - 1:
            others = sorted(
                {s.tgt for s in segments} - {segment.tgt, *picked},
                key=lambda t: (abs(len(t) - len(segment.tgt)), t),
            )
            picked.extend(others[: n_candidates - 1 - len(picked)])
        gold = rng.randrange(n_candidates)
        candidates = picked[:gold] + [segment.tgt] + picked[gold:]
        items.append((candidates, gold))
    return items


def translation_choice_items(
    lm: LoadedModel,
    segments: Sequence[ParallelSegment],
    src_lang: str,
    tgt_lang: str,
    prompt_format: str = "template",
    shots: Sequence[ParallelSegment] = (),
    seed: int = 0,
    n_items: int | None = None,
    template: str | None = None,
    chosen: Sequence[int] | None = None,
    source: str = "the data",
) -> list[ChoiceItem]:
    """Prompt = the MT prompt in ``prompt_format`` (with the same few-shot examples as MT), candidates =
    4 target segments; after a text template each candidate follows the prompt with a space. The
    scored segments are those at ``chosen`` (default the first ``n_items``); distractors come from all.
    ``source`` names the data in the error for too few segments."""
    from clmap.evaluate.mt import mt_prompts

    if chosen is None:
        chosen = range(len(segments[:n_items]))
    try:
        choices = translation_choice_candidates(segments, seed=seed, chosen=chosen)
    except EvalDataError as exc:  # name the data and the pair
        raise EvalDataError(f"{source}: {src_lang}→{tgt_lang} {exc}") from None
    scored = [segments[i] for i in chosen]
    prompts, texts = mt_prompts(
        lm, [s.src for s in scored], src_lang, tgt_lang, prompt_format, shots, template
    )
    items = []
    for index, (prompt, (candidates, gold)) in enumerate(zip(prompts, choices, strict=True)):
        context = texts[index] if texts is not None else None
        ids = [continuation_ids(lm.tokenizer, context, c) for c in candidates]
        segment = scored[index]
        items.append(
            ChoiceItem(
                prompt, candidates, gold, ids, id=segment.id if segment.index >= 0 else "", doc=segment.doc
            )
        )
    return items


# -- Belebele --------------------------------------------------------------------------------------


def _belebele_key(record: dict) -> tuple:
    """A question's identity: ``link`` (+ ``split`` where the file has it) + ``question_number``."""
    return (str(record.get("link")), str(record.get("split", "")), str(record.get("question_number")))


def _join_belebele(
    passages: list[dict], questions: list[dict], passage_path: Path, question_path: Path
) -> list[dict]:
    """The passage record of each question. Belebele's language files list the same questions in the
    same order, which is used when the keys agree line by line; otherwise the keys must be unique."""
    if len(passages) != len(questions):
        raise EvalDataError(
            f"{passage_path} has {len(passages)} records but {question_path} {len(questions)}"
        )
    if not all("link" in r for r in passages + questions):
        return passages
    if [_belebele_key(r) for r in passages] == [_belebele_key(r) for r in questions]:
        return passages
    by_key = {_belebele_key(r): r for r in passages}
    if len(by_key) != len(passages):
        raise EvalDataError(
            f"{passage_path} and {question_path} list their questions in different orders and "
            "link + question_number does not identify a question; use files of the same Belebele release"
        )
    missing = [number for number, r in enumerate(questions, 1) if _belebele_key(r) not in by_key]
    if missing:
        raise EvalDataError(f"{question_path}: record {missing[0]} has a link not found in {passage_path}")
    return [by_key[_belebele_key(r)] for r in questions]


def belebele_items(
    lm: LoadedModel,
    data: str | Path,
    passage_lang: str,
    question_lang: str,
    limit: int | None = None,
    items: str = "first",
    seed: int = 0,
) -> list[ChoiceItem]:
    """Passage from the ``passage_lang`` file, question and options from the ``question_lang`` file
    (``eng_Latn.jsonl`` ..., in ``data`` or its ``data/`` sub-folder as in the dataset repository).
    ``limit`` questions taken as ``items`` says (:func:`clmap.evaluate.sources.select_items`; the
    passage is the document), the same questions for every pair given the seed."""
    from clmap.evaluate.sources import select_items

    passage_path = language_file(data, passage_lang, (".jsonl",))
    question_path = language_file(data, question_lang, (".jsonl",))
    passages = read_jsonl_records(passage_path, ("flores_passage",))
    questions = read_jsonl_records(question_path, BELEBELE_FIELDS[1:])
    passages = _join_belebele(passages, questions, passage_path, question_path)
    docs = [str(q.get("link", number)) for number, q in enumerate(questions, 1)]
    chosen = select_items(docs, limit, items, seed, "belebele")
    tok = lm.tokenizer
    scored = []
    for index in chosen:
        number, p, q = index + 1, passages[index], questions[index]
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
        options = [str(q[f"mc_answer{k}"]) for k in range(1, 5)]
        ids = [continuation_ids(tok, text, option) for option in options]
        item_id = f"{docs[index]}#{q.get('question_number', number)}"
        scored.append(
            ChoiceItem([tok.bos_id] + tok.encode(text), options, gold, ids, id=item_id, doc=docs[index])
        )
    if not scored:
        raise EvalDataError(f"{question_path}: no Belebele records")
    return scored
