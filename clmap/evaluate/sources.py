"""Where each task's data comes from: the bundled corpus by default, a local file/folder when given.

All reading goes through ``clmap.data.readers`` (imported lazily so the evaluator's pure metrics
import without it); this module only picks the source, applies ``--limit`` and names the failure.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


class EvalDataError(ValueError):
    """Input data the evaluator cannot use; the message names the file, record and field."""


@dataclass(frozen=True)
class ParallelSegment:
    doc: str
    src: str
    tgt: str


def _readers():
    from clmap.data import readers

    return readers


def _data_errors() -> tuple[type[BaseException], ...]:
    try:
        return (_readers().DataError, FileNotFoundError, KeyError)
    except ImportError:
        return (FileNotFoundError, KeyError)


def parallel_segments(
    src_lang: str,
    tgt_lang: str,
    split: str = "test",
    path: str | Path | None = None,
    limit: int | None = None,
) -> list[ParallelSegment]:
    """Aligned (src, tgt) segments for a direction: ``path`` if given, else the bundled split."""
    readers = _readers()
    try:
        if path is not None:
            dataset = readers.read_parallel(path, src_lang=src_lang, tgt_lang=tgt_lang)
        else:
            dataset = readers.bundled_parallel(f"{src_lang}-{tgt_lang}", split)
    except _data_errors() as exc:
        where = path if path is not None else f"the bundled {split} split"
        raise EvalDataError(f"no {src_lang}-{tgt_lang} parallel data in {where}: {exc}") from exc
    segments = []
    for index, row in enumerate(dataset):
        if limit is not None and index >= limit:
            break
        segments.append(ParallelSegment(doc=str(row.get("doc", index)), src=row["src"], tgt=row["tgt"]))
    if not segments:
        raise EvalDataError(f"no {src_lang}-{tgt_lang} parallel segments found ({path or split})")
    return segments


def monolingual_texts(
    lang: str, split: str = "test", path: str | Path | None = None, limit: int | None = None
) -> list[str]:
    """Held-out monolingual texts of ``lang``: ``path`` if given, else the bundled split."""
    readers = _readers()
    try:
        if path is not None:
            dataset = readers.read_monolingual(path, lang=lang)
        else:
            dataset = readers.bundled_monolingual(lang, split)
    except _data_errors() as exc:
        where = path if path is not None else f"the bundled {split} split"
        raise EvalDataError(f"no {lang} monolingual data in {where}: {exc}") from exc
    texts = []
    for index, row in enumerate(dataset):
        if limit is not None and index >= limit:
            break
        if row["text"].strip():
            texts.append(row["text"])
    if not texts:
        raise EvalDataError(f"no {lang} monolingual texts found ({path or split})")
    return texts


def check_bundled_coverage(pairs: list[tuple[str, str]], languages: list[str]) -> None:
    """Fail before any model work when a requested pair or language is not in the bundled corpus."""
    readers = _readers()
    stored = set(readers.bundled_pairs())
    missing = [f"{a}-{b}" for a, b in pairs if f"{a}-{b}" not in stored and f"{b}-{a}" not in stored]
    if missing:
        raise EvalDataError(
            f"no bundled parallel data for {', '.join(missing)} (available: {', '.join(sorted(stored))}); "
            "pass --data TASK=PATH for other pairs"
        )
    available = set(readers.bundled_languages())
    missing = [lang for lang in languages if lang not in available]
    if missing:
        raise EvalDataError(
            f"no bundled monolingual data for language(s) {', '.join(missing)} "
            f"(available: {', '.join(sorted(available))}); pass --data ppl=PATH"
        )


# Belebele / FLORES-200 file names use these codes; the evaluator speaks ISO 639-1.
FLORES_CODES = {
    "en": "eng_Latn",
    "cs": "ces_Latn",
    "uk": "ukr_Cyrl",
    "zh": "zho_Hans",
    "ja": "jpn_Jpan",
    "de": "deu_Latn",
    "fr": "fra_Latn",
    "es": "spa_Latn",
    "ru": "rus_Cyrl",
    "pl": "pol_Latn",
}
LANGUAGE_NAMES = {
    "en": "English",
    "cs": "Czech",
    "uk": "Ukrainian",
    "zh": "Chinese",
    "ja": "Japanese",
    "de": "German",
    "fr": "French",
    "es": "Spanish",
    "ru": "Russian",
    "pl": "Polish",
}


def language_file(folder: str | Path, lang: str, suffixes: tuple[str, ...]) -> Path:
    """The file of ``lang`` in a per-language folder (``cs.jsonl``, ``ces_Latn.jsonl``, ``xquad.cs.json``)."""
    folder = Path(folder)
    if folder.is_file():
        return folder
    stems = [lang, FLORES_CODES.get(lang, lang)]
    for stem in stems:
        for suffix in suffixes:
            for name in (f"{stem}{suffix}", f"xquad.{stem}{suffix}", f"test-{stem}{suffix}"):
                if (folder / name).is_file():
                    return folder / name
    raise EvalDataError(
        f"{folder}: no file for language {lang!r} (tried {', '.join(s + suffixes[0] for s in stems)})"
    )


def read_jsonl_records(path: Path, fields: Sequence[str], limit: int | None = None) -> list[dict]:
    """Records of a task's JSONL file (Belebele, CrossSum); a bad line or a missing field names the
    file, the record number and the field."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvalDataError(f"{path}: record {number} is not valid JSON ({exc.msg})") from exc
            for name in fields:
                if record.get(name) is None:
                    raise EvalDataError(f"{path}: record {number} has no field {name!r}")
            records.append(record)
            if limit is not None and len(records) >= limit:
                break
    return records
