"""Machine translation: batched greedy/beam generation, sacrebleu BLEU (+ spBLEU when offline-available)
and chrF++ per direction.

BLEU tokenisation follows the target language: ``zh`` for Chinese; for Japanese ``ja-mecab`` when the
MeCab bindings are installed, otherwise ``char`` (every character a token, the usual fallback for an
unsegmented script, so scores are comparable run to run but not with MeCab-tokenised papers);
``13a`` otherwise. The method used is written into every score's signature in the report.
spBLEU (``flores200``) needs sacrebleu's SentencePiece model in ``$SACREBLEU/models``; it is never
downloaded here, and omitted (with a note) when absent.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clmap.data.examples import mapping_prompt
from clmap.evaluate.lm import LoadedModel, generate, training_config
from clmap.evaluate.options import PROMPT_FORMATS
from clmap.evaluate.sources import LANGUAGE_NAMES, ParallelSegment

DEFAULT_TEMPLATE = "{src_name}: {src}\n{tgt_name}:"


def bleu_tokenizer_for(lang: str) -> str:
    """sacrebleu tokenizer name for a target language (see module docstring)."""
    if lang == "zh":
        return "zh"
    if lang == "ja":
        try:
            import ipadic  # noqa: F401
            import MeCab  # noqa: F401

            return "ja-mecab"
        except ImportError:
            return "char"
    return "13a"


def flores200_spm_available() -> bool:
    from sacrebleu.utils import SACREBLEU_DIR

    return os.path.isfile(os.path.join(SACREBLEU_DIR, "models", "flores200sacrebleuspm"))


def score_translations(hypotheses: Sequence[str], references: Sequence[str], tgt_lang: str) -> dict:
    """BLEU, chrF++ (and spBLEU when available) of one direction, with sacrebleu signatures."""
    from sacrebleu.metrics import BLEU, CHRF

    bleu = BLEU(tokenize=bleu_tokenizer_for(tgt_lang))
    chrf = CHRF(word_order=2)
    refs = [list(references)]
    scores = {
        "bleu": bleu.corpus_score(list(hypotheses), refs).score,
        "chrf++": chrf.corpus_score(list(hypotheses), refs).score,
        "signatures": {"bleu": str(bleu.get_signature()), "chrf++": str(chrf.get_signature())},
    }
    if flores200_spm_available():
        spbleu = BLEU(tokenize="flores200")
        scores["spbleu"] = spbleu.corpus_score(list(hypotheses), refs).score
        scores["signatures"]["spbleu"] = str(spbleu.get_signature())
    return scores


def chrf_item_statistics(hypotheses: Sequence[str], references: Sequence[str]) -> list[list[float]]:
    """sacrebleu's chrF++ n-gram statistics of each sentence; their sum gives the corpus chrF++
    (what :func:`clmap.evaluate.bootstrap.clustered_interval` resamples)."""
    from sacrebleu.metrics import CHRF

    stats = CHRF(word_order=2)._extract_corpus_statistics(list(hypotheses), [list(references)])
    return [[float(x) for x in row] for row in stats]


def few_shot_prompt(
    src: str, src_lang: str, tgt_lang: str, shots: Sequence[ParallelSegment], template: str = DEFAULT_TEMPLATE
) -> str:
    """Text prompt for models not trained by clmap: ``shots`` solved examples, then the source."""
    names = {
        "src_name": LANGUAGE_NAMES.get(src_lang, src_lang),
        "tgt_name": LANGUAGE_NAMES.get(tgt_lang, tgt_lang),
    }
    solved = [template.format(src=s.src, **names) + " " + s.tgt for s in shots]
    return "\n\n".join([*solved, template.format(src=src, **names)])


def first_line(text: str) -> str:
    """Few-shot prompts continue with the next example; the answer is the first line."""
    return text.strip().split("\n", 1)[0]


@dataclass(frozen=True)
class PromptFormat:
    """How MT and translation choice prompt a model, and why (report.json records both)."""

    name: str  # "mapping": <bos> x <2b>, the format clmap trains; "template": few-shot text
    reason: str


def choose_prompt_format(
    checkpoint: str | Path, requested: str = "auto", template: str | None = None
) -> PromptFormat:
    """The prompt format a checkpoint is scored with.

    ``auto`` follows what the run trained, read from the clmap run folder's config.json: the mapping
    format only when translation pairs were trained with language tags (``objective.lambda_cl > 0``,
    ``data.ntp_share < 1``, ``data.parallel_as_text = false``); a base model (no clmap config), an
    NTP-only or a pairs-as-text run never saw a tag, so it gets the few-shot text template. A custom
    ``template`` implies the template format.
    """
    if requested not in PROMPT_FORMATS:
        raise ValueError(f"prompt format {requested!r} unknown; choose from {', '.join(PROMPT_FORMATS)}")
    if requested == "mapping" and template is not None:
        raise ValueError("--mt-template is a text template; it cannot be used with --prompt-format mapping")
    if requested != "auto":
        return PromptFormat(requested, f"forced by --prompt-format {requested}")
    if template is not None:
        return PromptFormat("template", "--mt-template given")
    config, where = training_config(checkpoint)
    if config is None:
        return PromptFormat("template", "no clmap run config.json: not trained by clmap (base model)")
    objective, data = config.get("objective", {}), config.get("data", {})
    facts = (
        f"objective.lambda_cl={objective.get('lambda_cl')}, data.ntp_share={data.get('ntp_share')}, "
        f"data.parallel_as_text={str(data.get('parallel_as_text')).lower()} in {where}"
    )
    trained_tags = (
        float(objective.get("lambda_cl", 0.0)) > 0
        and float(data.get("ntp_share", 1.0)) < 1
        and not data.get("parallel_as_text", False)
    )
    if trained_tags:
        return PromptFormat("mapping", f"run trained tagged pairs ({facts})")
    return PromptFormat("template", f"run never trained a language tag ({facts})")


def mt_prompts(
    lm: LoadedModel,
    sources: Sequence[str],
    src_lang: str,
    tgt_lang: str,
    prompt_format: str,
    shots: Sequence[ParallelSegment] = (),
    template: str | None = None,
) -> tuple[list[list[int]], list[str] | None]:
    """(prompt ids, prompt texts) for each source sentence; texts are None for the mapping format.

    ``mapping``: the training format ``<bos> x <2b>``; ``template``: ``<bos>`` + the few-shot text
    (a continuation follows it after one space, see :func:`clmap.evaluate.lm.continuation_ids`).
    """
    tok = lm.tokenizer
    if prompt_format == "mapping":
        return [mapping_prompt(tok, src, tgt_lang) for src in sources], None
    if prompt_format != "template":
        raise ValueError(f"prompt format {prompt_format!r} is neither 'mapping' nor 'template'")
    texts = [few_shot_prompt(src, src_lang, tgt_lang, shots, template or DEFAULT_TEMPLATE) for src in sources]
    return [[tok.bos_id] + tok.encode(text) for text in texts], texts


def evaluate_mt(
    lm: LoadedModel,
    src_lang: str,
    tgt_lang: str,
    segments: Sequence[ParallelSegment],
    prompt_format: str = "template",
    shots: Sequence[ParallelSegment] = (),
    template: str | None = None,
    batch_size: int = 8,
    num_beams: int = 1,
    max_new_tokens: int = 128,
) -> dict:
    """Translate ``segments`` src→tgt and score them; empty outputs are counted, not hidden. ``scores``
    holds each sentence's chrF++ statistics (:class:`clmap.evaluate.bootstrap.ItemScores`)."""
    from clmap.evaluate.bootstrap import ItemScores

    prompts, texts = mt_prompts(
        lm, [s.src for s in segments], src_lang, tgt_lang, prompt_format, shots, template
    )
    templated = texts is not None
    hypotheses = generate(
        lm,
        prompts,
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        batch_size=batch_size,
        stop=first_line if templated else None,
        desc=f"MT {src_lang}->{tgt_lang}",
    )
    references = [s.tgt for s in segments]
    scores = score_translations(hypotheses, references, tgt_lang)
    scores.update(
        n=len(segments),
        empty_generations=sum(1 for h in hypotheses if not h.strip()),
        prompt=f"text template, {len(shots)}-shot" if templated else "clmap mapping format",
        examples=[
            {"src": s.src, "ref": s.tgt, "hyp": h} for s, h in zip(segments[:5], hypotheses[:5], strict=True)
        ],
        scores=ItemScores(
            [s.id for s in segments],
            [s.doc for s in segments],
            chrf_item_statistics(hypotheses, references),
            "chrf++",
        ),
    )
    return scores
