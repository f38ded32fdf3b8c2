"""Cross-lingual summarisation (CrossSum JSONL: ``text`` in one language, ``summary`` in another),
scored with ROUGE-1/2/L F-measure from ``rouge-score``.

rouge-score's default tokenizer keeps only ``[a-z0-9]``, which would erase Czech diacritics, Cyrillic
and CJK. So English keeps the default tokenizer (+ Porter stemmer, the usual setting), Chinese and
Japanese are scored on characters, and every other language on lower-cased Unicode word tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from clmap.evaluate.clqa import CHARACTER_TOKEN_LANGS
from clmap.evaluate.lm import LoadedModel, generate
from clmap.evaluate.mt import first_line
from clmap.evaluate.sources import LANGUAGE_NAMES, EvalDataError, read_jsonl_records

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


class _CharTokenizer:
    def tokenize(self, text: str) -> list[str]:
        return [ch for ch in text.lower() if ch.isalnum()]


class _UnicodeWordTokenizer:
    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())


def rouge_scores(predictions: Sequence[str], references: Sequence[str], lang: str) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 (×100) over the pairs, tokenised for ``lang`` (module docstring)."""
    from rouge_score import rouge_scorer

    if lang == "en":
        scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    else:
        tokenizer = _CharTokenizer() if lang in CHARACTER_TOKEN_LANGS else _UnicodeWordTokenizer()
        scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=tokenizer)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references, strict=False):
        scores = scorer.score(reference, prediction)
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    return {name: 100 * total / max(1, len(predictions)) for name, total in totals.items()}


# CrossSum names its files by lower-case English language names (english-japanese_test.jsonl).
_CROSSSUM_NAMES = {"zh": "chinese_simplified", "sr": "serbian_cyrillic"}


def crosssum_name(lang: str) -> str:
    """CrossSum's name of a language (``ja`` -> ``japanese``, ``zh`` -> ``chinese_simplified``)."""
    return _CROSSSUM_NAMES.get(lang, LANGUAGE_NAMES.get(lang, lang).lower().replace(" ", "_"))


def crosssum_records(data: str | Path, src_lang: str, tgt_lang: str, limit: int | None = None) -> list[dict]:
    """Records (``text`` in ``src_lang``, ``summary`` in ``tgt_lang``) of a CrossSum JSONL file, or, in a
    folder (or its ``data/``), of the release's ``english-japanese_test.jsonl`` or ``en-ja[_test].jsonl``."""
    path = Path(data)
    if path.is_dir():
        names = [
            f"{crosssum_name(src_lang)}-{crosssum_name(tgt_lang)}_test.jsonl",
            f"{src_lang}-{tgt_lang}_test.jsonl",
            f"{src_lang}-{tgt_lang}.jsonl",
        ]
        found = [where / n for where in (path, path / "data") for n in names if (where / n).is_file()]
        if not found:
            raise EvalDataError(
                f"{path}: no CrossSum file for {src_lang}-{tgt_lang} (tried {', '.join(names)})"
            )
        path = found[0]
    records = read_jsonl_records(path, ("text", "summary"), limit=limit)
    if not records:
        raise EvalDataError(f"{path}: no CrossSum records")
    return records


def evaluate_clsum(
    lm: LoadedModel,
    records: Sequence[dict],
    src_lang: str,
    tgt_lang: str,
    batch_size: int = 8,
    max_new_tokens: int = 96,
) -> dict:
    """Generate a one-paragraph summary in ``tgt_lang`` for each text; ROUGE against the reference."""
    tok = lm.tokenizer
    tgt_name = LANGUAGE_NAMES.get(tgt_lang, tgt_lang)
    prompts = [[tok.bos_id] + tok.encode(f"{r['text']}\n\nSummary in {tgt_name}:") for r in records]
    predictions = generate(
        lm,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        stop=first_line,
        desc=f"CLSum {src_lang}-{tgt_lang}",
    )
    result = rouge_scores(predictions, [r["summary"] for r in records], tgt_lang)
    result.update(n=len(records), empty_generations=sum(1 for p in predictions if not p.strip()))
    return result
