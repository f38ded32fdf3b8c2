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

from clmap.data.examples import mapping_prompt
from clmap.evaluate.lm import LoadedModel, generate
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


def mt_prompts(
    lm: LoadedModel,
    sources: Sequence[str],
    src_lang: str,
    tgt_lang: str,
    shots: Sequence[ParallelSegment] = (),
    template: str | None = None,
) -> tuple[list[list[int]], bool]:
    """(prompt ids, uses the text template) for each source sentence.

    clmap checkpoints get their training format ``<bos> x <2b>``; other models (or an explicit
    ``template``) get the few-shot text template.
    """
    tok = lm.tokenizer
    if lm.trained_by_clmap and template is None:
        return [mapping_prompt(tok, src, tgt_lang) for src in sources], False
    template = template or DEFAULT_TEMPLATE
    prompts = [
        [tok.bos_id] + tok.encode(few_shot_prompt(src, src_lang, tgt_lang, shots, template))
        for src in sources
    ]
    return prompts, True


def evaluate_mt(
    lm: LoadedModel,
    src_lang: str,
    tgt_lang: str,
    segments: Sequence[ParallelSegment],
    shots: Sequence[ParallelSegment] = (),
    template: str | None = None,
    batch_size: int = 8,
    num_beams: int = 1,
    max_new_tokens: int = 128,
) -> dict:
    """Translate ``segments`` src→tgt and score them; empty outputs are counted, not hidden."""
    prompts, templated = mt_prompts(lm, [s.src for s in segments], src_lang, tgt_lang, shots, template)
    hypotheses = generate(
        lm,
        prompts,
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        batch_size=batch_size,
        stop=first_line if templated else None,
        desc=f"MT {src_lang}->{tgt_lang}",
    )
    scores = score_translations(hypotheses, [s.tgt for s in segments], tgt_lang)
    scores.update(
        n=len(segments),
        empty_generations=sum(1 for h in hypotheses if not h.strip()),
        prompt="few-shot template" if templated else "clmap mapping format",
        examples=[
            {"src": s.src, "ref": s.tgt, "hyp": h} for s, h in zip(segments[:5], hypotheses[:5], strict=True)
        ],
    )
    return scores
