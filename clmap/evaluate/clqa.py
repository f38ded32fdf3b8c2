"""Cross-lingual extractive QA (XQuAD / MLQA SQuAD-format JSON): context in one language, question in
another, answer generated and scored by SQuAD token F1 / exact match and, given a local encoder,
BERTScore precision.

SQuAD normalisation (lower-case, strip punctuation and English articles, collapse spaces) is kept as
is; Chinese and Japanese have no spaces, so their tokens are single characters (as in MLQA's script).
"""

from __future__ import annotations

import json
import re
import string
import sys
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clmap.evaluate.lm import LoadedModel, generate
from clmap.evaluate.mt import first_line
from clmap.evaluate.sources import LANGUAGE_NAMES, EvalDataError, language_file

CHARACTER_TOKEN_LANGS = {"zh", "ja"}


def normalize_answer(text: str, lang: str = "en") -> str:
    """SQuAD normalisation, Unicode-aware for punctuation; articles removed for English only."""
    text = text.lower()
    text = "".join(
        " " if unicodedata.category(ch).startswith("P") or ch in string.punctuation else ch for ch in text
    )
    if lang == "en":
        text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def answer_tokens(text: str, lang: str = "en") -> list[str]:
    normalized = normalize_answer(text, lang)
    if lang in CHARACTER_TOKEN_LANGS:
        return [ch for ch in normalized if not ch.isspace()]
    return normalized.split()


def exact_match(prediction: str, answers: Sequence[str], lang: str = "en") -> float:
    return max(float(normalize_answer(prediction, lang) == normalize_answer(a, lang)) for a in answers)


def token_f1(prediction: str, answers: Sequence[str], lang: str = "en") -> float:
    """Max over gold answers of the token-overlap F1 (SQuAD v1.1 evaluate script)."""
    best = 0.0
    predicted = answer_tokens(prediction, lang)
    for answer in answers:
        gold = answer_tokens(answer, lang)
        common = sum((Counter(predicted) & Counter(gold)).values())
        if not predicted or not gold:
            best = max(best, float(predicted == gold))
            continue
        if common == 0:
            continue
        precision, recall = common / len(predicted), common / len(gold)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


@dataclass
class QAItem:
    qid: str
    context: str
    question: str
    answers: list[str]


def read_squad(path: Path) -> dict[str, QAItem]:
    """Question id → item; errors name the file, the record (question number) and the missing field."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise EvalDataError(f"{path}: not valid JSON ({exc.msg})") from exc
    if "data" not in payload:
        raise EvalDataError(f"{path}: record 0 has no field 'data' (expected SQuAD format)")
    items: dict[str, QAItem] = {}
    number = 0
    for article in payload["data"]:
        for paragraph in article.get("paragraphs", []):
            for qa in paragraph.get("qas", []):
                number += 1
                for field in ("id", "question", "answers"):
                    if field not in qa:
                        raise EvalDataError(f"{path}: record {number} has no field {field!r}")
                if "context" not in paragraph:
                    raise EvalDataError(f"{path}: record {number} has no field 'context'")
                answers = []
                for answer in qa["answers"]:
                    if "text" not in answer:
                        raise EvalDataError(f"{path}: record {number} has no field 'answers[].text'")
                    answers.append(answer["text"])
                items[str(qa["id"])] = QAItem(str(qa["id"]), paragraph["context"], qa["question"], answers)
    return items


def mlqa_file(data: str | Path, context_lang: str, question_lang: str) -> Path | None:
    """MLQA's own cross-lingual file ``test-context-{c}-question-{q}.json`` in ``data`` or ``data/test``
    (the layout of ``MLQA_V1/``); None when ``data`` is not an MLQA folder."""
    folder = Path(data)
    name = f"test-context-{context_lang}-question-{question_lang}.json"
    for where in (folder, folder / "test"):
        if (where / name).is_file():
            return where / name
    return None


def clqa_items(
    data: str | Path, context_lang: str, question_lang: str, limit: int | None = None
) -> list[QAItem]:
    """Context + answers in ``context_lang``, question in ``question_lang``.

    MLQA ships each combination as one file (``test-context-en-question-de.json``); XQuAD ships one file
    per language (``xquad.en.json``, SQuAD v1.1 layout) with the same question ids in every language,
    so context and answers come from the context-language file and the question from the other,
    joined by id."""
    mlqa = mlqa_file(data, context_lang, question_lang) if Path(data).is_dir() else None
    if mlqa is not None:
        items = list(read_squad(mlqa).values())
        if not items:
            raise EvalDataError(f"{mlqa}: no questions")
        return items[:limit] if limit is not None else items
    context_path = language_file(data, context_lang, (".json",), prefixes=("xquad.", ""))
    question_path = language_file(data, question_lang, (".json",), prefixes=("xquad.", ""))
    contexts, questions = read_squad(context_path), read_squad(question_path)
    items = []
    for qid, item in contexts.items():
        if qid in questions:
            items.append(QAItem(qid, item.context, questions[qid].question, item.answers))
    if not items:
        raise EvalDataError(f"no shared question ids between {context_path} and {question_path}")
    return items[:limit] if limit is not None else items


def bertscore_available() -> bool:
    try:
        import bert_score  # noqa: F401
    except ImportError:
        return False
    return True


def encoder_names(model_path: str | Path) -> list[str]:
    """Names a local encoder folder may have in bert-score's tables: its config's ``_name_or_path``,
    ``org/name`` of a hub cache folder (``models--org--name/snapshots/...``), its own (parent/)name."""
    path = Path(model_path)
    names = []
    config = path / "config.json"
    if config.is_file():
        recorded = json.loads(config.read_text(encoding="utf-8")).get("_name_or_path") or ""
        names += [recorded, "/".join(Path(recorded).parts[-2:]), Path(recorded).name]
    for part in path.parts:
        if part.startswith("models--"):
            repo = part.removeprefix("models--").replace("--", "/")
            names += [repo, repo.rsplit("/", 1)[-1]]
    names += [f"{path.parent.name}/{path.name}", path.name]
    return [n for n in dict.fromkeys(names) if n]


def resolve_bertscore_layer(model_path: str | Path, layer: int | None = None) -> tuple[int, str]:
    """(layer, why): ``layer`` when given, else bert-score's own tuned layer for the encoder (its
    ``model2layers`` table, the layer published BERTScore numbers use). An encoder the table does not
    know needs an explicit layer: its last layer would not compare with anything published."""
    config_path = Path(model_path) / "config.json"
    if not config_path.is_file():
        raise EvalDataError(
            f"{model_path}: not a local encoder folder (no config.json) for --bertscore-model"
        )
    depth = json.loads(config_path.read_text(encoding="utf-8")).get("num_hidden_layers")
    if layer is None:
        from bert_score.utils import model2layers

        known = next((n for n in encoder_names(model_path) if n in model2layers), None)
        if known is None:
            raise EvalDataError(
                f"{model_path}: bert-score has no tuned layer for this encoder (looked up "
                f"{', '.join(encoder_names(model_path))}); pass --bertscore-layer N"
            )
        layer, why = int(model2layers[known]), f"bert-score's tuned layer for {known}"
    else:
        why = "--bertscore-layer"
    if depth is not None and not 0 <= layer <= int(depth):
        raise EvalDataError(f"--bertscore-layer {layer} is outside 0..{depth} for {model_path}")
    return layer, why


def bertscore_precision(
    predictions: Sequence[str],
    references: Sequence[str],
    model_path: str | None,
    lang: str,
    num_layers: int | None,
    device: str = "cpu",
) -> tuple[float | None, str | None]:
    """(mean BERTScore-P, None) or (None, why it was omitted). Never downloads an encoder."""
    if not model_path:
        return None, "BERTScore omitted: no --bertscore-model PATH (a local encoder folder) was given"
    if not bertscore_available():
        return None, "BERTScore omitted: the bert-score package is not installed (pip install 'clmap[clqa]')"
    import bert_score

    if num_layers is None:
        num_layers, _ = resolve_bertscore_layer(model_path)
    precision, _, _ = bert_score.score(
        list(predictions),
        list(references),
        model_type=str(model_path),
        num_layers=num_layers,
        lang=lang,
        device=device,
        verbose=False,
    )
    return float(precision.mean()), None


def evaluate_clqa(
    lm: LoadedModel,
    items: Sequence[QAItem],
    context_lang: str,
    question_lang: str,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    bertscore_model: str | None = None,
    bertscore_layer: int | None = None,
) -> dict:
    """Generate an answer per item (first line of the continuation) and score it; BERTScore-P uses
    encoder layer ``bertscore_layer`` (resolved by :func:`resolve_bertscore_layer` when None)."""
    tok = lm.tokenizer
    ctx_name = LANGUAGE_NAMES.get(context_lang, context_lang)
    prompts = [
        [tok.bos_id]
        + tok.encode(f"{ctx_name} context: {item.context}\nQuestion: {item.question}\nAnswer in {ctx_name}:")
        for item in items
    ]
    predictions = generate(
        lm,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        stop=first_line,
        desc=f"CLQA {context_lang}-{question_lang}",
    )
    f1 = [token_f1(p, item.answers, context_lang) for p, item in zip(predictions, items, strict=False)]
    em = [exact_match(p, item.answers, context_lang) for p, item in zip(predictions, items, strict=False)]
    result = {
        "f1": 100 * sum(f1) / len(items),
        "em": 100 * sum(em) / len(items),
        "n": len(items),
        "empty_generations": sum(1 for p in predictions if not p.strip()),
        "examples": [
            {"question": i.question, "answers": i.answers, "prediction": p}
            for i, p in list(zip(items, predictions, strict=False))[:5]
        ],
    }
    precision, note = bertscore_precision(
        predictions,
        [item.answers[0] if item.answers else "" for item in items],
        bertscore_model,
        context_lang,
        num_layers=bertscore_layer,
        device=str(lm.device),
    )
    if precision is not None:
        result["bertscore_p"] = 100 * precision
    else:
        result["note"] = note
        print(note, file=sys.stderr)
    return result
