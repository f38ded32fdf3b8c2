"""Where each task's data comes from: the bundled corpus by default, a local file/folder when given.

All reading goes through ``clmap.data.readers`` (imported lazily so the evaluator's pure metrics
import without it); this module only picks the source, applies ``--limit`` and names the failure.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from clmap.cli import UserError
from clmap.data.languages import FLORES_CODES, LANGUAGES


class EvalDataError(UserError, ValueError):
    """Input data the evaluator cannot use; the message names the file, record and field."""


@dataclass(frozen=True)
class ParallelSegment:
    doc: str
    src: str
    tgt: str
    index: int = -1  # row of the file / split: with doc, the item's id in every run and direction

    @property
    def id(self) -> str:
        return f"{self.doc}#{self.index}"


def _readers():
    from clmap.data import readers

    return readers


def _data_errors() -> tuple[type[BaseException], ...]:
    try:
        return (_readers().DataError, FileNotFoundError, KeyError)
    except ImportError:
        return (FileNotFoundError, KeyError)


@dataclass(frozen=True)
class DataSource:
    """Where one task's items come from: a bundled corpus split, or a local file/folder."""

    label: str  # what report.json records: "bundled test" or the path
    split: str | None = None  # the bundled split; None for local data
    path: Path | None = None

    @staticmethod
    def bundled(split: str) -> DataSource:
        return DataSource(f"bundled {split}", split=split)

    @staticmethod
    def local(path: str | Path) -> DataSource:
        """A local file/folder; the label of a FLORES download's root names the devtest folder scored."""
        return DataSource(str(flores_split_folder(path, FLORES_EVAL_SPLIT) or path), path=Path(path))


# How ``--limit`` picks the scored rows: a seeded sample stratified over documents (the default), or
# the first rows of the file / split (what the evaluator did before items were sampled).
# how --limit picks the items (clmap.evaluate.bootstrap.sample_items / first_items)
ItemSelection = Literal["sample", "first"]
ITEM_SELECTIONS: tuple[str, ...] = typing.get_args(ItemSelection)


def select_items(docs: Sequence[str], limit: int | None, items: str, seed: int, stratum: str) -> list[int]:
    """Indices of the rows scored: :func:`clmap.evaluate.bootstrap.sample_items` or the first rows."""
    from clmap.evaluate.bootstrap import first_items, sample_items

    if items not in ITEM_SELECTIONS:
        raise ValueError(f"--items {items!r}: choose from {', '.join(ITEM_SELECTIONS)}")
    return sample_items(docs, limit, seed, stratum) if items == "sample" else first_items(docs, limit)


def data_sources(path: str | Path | None, splits: Sequence[str]) -> list[DataSource]:
    """The local path when the user gave one (used once, whatever the splits), else one source per split."""
    return [DataSource.local(path)] if path is not None else [DataSource.bundled(s) for s in splits]


# A FLORES-200 / FLORES+ download keeps each split in a sub-folder: flores200_dataset/{dev,devtest}/,
# floresp-v2.0-rc.3/{dev,devtest}/, flores_plus/{dev,devtest}/. The evaluator scores on devtest and
# takes few-shot examples from dev.
FLORES_EVAL_SPLIT, FLORES_SHOT_SPLIT = "devtest", "dev"


def flores_split_folder(path: str | Path, which: str) -> Path | None:
    """``path/which`` when ``path`` is the root of a FLORES download, else None."""
    path = Path(path)
    folder = path / which
    return folder if path.is_dir() and folder.is_dir() else None


def bundled_pair_splits(src_lang: str, tgt_lang: str) -> list[str] | None:
    """Splits stored for a pair in the bundled corpus (either order); None when the pair is not there."""
    readers = _readers()
    stored = [p for p in (f"{src_lang}-{tgt_lang}", f"{tgt_lang}-{src_lang}") if p in readers.bundled_pairs()]
    if not stored:
        return None
    folder = readers.BUNDLED_CORPUS / "parallel" / stored[0]
    return sorted(f.name.split(".")[0] for f in folder.glob("*.jsonl.gz"))


def parallel_segments(
    src_lang: str,
    tgt_lang: str,
    split: str = "test",
    path: str | Path | None = None,
    limit: int | None = None,
    items: str = "first",
    seed: int = 0,
) -> list[ParallelSegment]:
    """Aligned (src, tgt) segments for a direction: ``path`` if given, else the bundled split.

    ``path`` is anything ``clmap.data.readers.read_parallel`` reads (JSONL/TSV/Parquet/CSV, a FLORES
    folder), or the root of a FLORES download, whose devtest folder is used. ``limit`` rows are taken
    as ``items`` says (:data:`ITEM_SELECTIONS`): ``sample``, a seeded sample stratified over documents,
    the same for both directions of a pair; ``first``, the first rows."""
    readers = _readers()
    if path is not None:
        path = flores_split_folder(path, FLORES_EVAL_SPLIT) or Path(path)
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
        if items == "first" and limit is not None and index >= limit:
            break
        segments.append(ParallelSegment(str(row.get("doc", index)), row["src"], row["tgt"], index))
    pair = "-".join(sorted((src_lang, tgt_lang)))
    chosen = select_items([s.doc for s in segments], limit, items, seed, f"{pair}/{path or split}")
    segments = [segments[i] for i in chosen]
    if not segments:
        raise EvalDataError(f"no {src_lang}-{tgt_lang} parallel segments found ({path or split})")
    return segments


@dataclass(frozen=True)
class MonolingualText:
    doc: str
    text: str
    index: int = -1  # row of the file / split

    @property
    def id(self) -> str:
        return f"{self.doc}#{self.index}"


def monolingual_rows(
    lang: str,
    split: str = "test",
    path: str | Path | None = None,
    limit: int | None = None,
    items: str = "first",
    seed: int = 0,
) -> list[MonolingualText]:
    """Held-out monolingual texts of ``lang`` with their documents and ids: ``path`` if given, else the
    bundled split; ``limit`` texts taken as ``items`` says (see :func:`parallel_segments`)."""
    readers = _readers()
    try:
        if path is not None:
            dataset = readers.read_monolingual(path, lang=lang)
        else:
            dataset = readers.bundled_monolingual(lang, split)
    except _data_errors() as exc:
        where = path if path is not None else f"the bundled {split} split"
        raise EvalDataError(f"no {lang} monolingual data in {where}: {exc}") from exc
    rows = []
    for index, row in enumerate(dataset):
        if items == "first" and limit is not None and index >= limit:
            break
        if row["text"].strip():
            rows.append(MonolingualText(str(row.get("doc", index)), row["text"], index))
    chosen = select_items([r.doc for r in rows], limit, items, seed, f"{lang}/{path or split}")
    rows = [rows[i] for i in chosen]
    if not rows:
        raise EvalDataError(f"no {lang} monolingual texts found ({path or split})")
    return rows


def bundled_language_splits(lang: str) -> list[str]:
    """Splits stored for a language in the bundled monolingual corpus ([] when the language is not there)."""
    readers = _readers()
    folder = readers.BUNDLED_CORPUS / "mono" / lang
    return sorted(f.name.split(".")[0] for f in folder.glob("*.jsonl.gz")) if folder.is_dir() else []


def check_bundled_coverage(
    pairs: list[tuple[str, str]],
    languages: list[str],
    pair_tasks: Sequence[str] = ("mt",),
    splits: Sequence[str] = (),
    name=lambda key: f"--{key}",
) -> None:
    """Fail before any model work when a pair or language that ``pair_tasks`` (or perplexity) read from
    the bundled corpus is not in it (local data, ``--data TASK=PATH``, may hold any pair), or a split
    no part of the bundled corpus has (a typo: every pair would be skipped; a split only some pairs
    lack, ``ood`` for the languages, is skipped there with a note). ``name``: a setting's flag."""
    readers = _readers()
    stored = set(readers.bundled_pairs())
    missing = [f"{a}-{b}" for a, b in pairs if f"{a}-{b}" not in stored and f"{b}-{a}" not in stored]
    if missing:
        hint = " or ".join(f"{name('data')} {task}=PATH" for task in pair_tasks)
        raise EvalDataError(
            f"no bundled parallel data for {', '.join(missing)} (available: {', '.join(sorted(stored))}); "
            f"{', '.join(pair_tasks)} would read it: pass {hint} (a parallel file or FLORES folder)"
        )
    available = set(readers.bundled_languages())
    missing = [lang for lang in languages if lang not in available]
    if missing:
        raise EvalDataError(
            f"no bundled monolingual data for language(s) {', '.join(missing)} "
            f"(available: {', '.join(sorted(available))}); pass {name('data')} ppl=PATH"
        )
    known = readers.bundled_split_names() if pairs or languages else []
    unknown = [split for split in splits if known and split not in known]
    if unknown:
        raise EvalDataError(
            f"{name('split')} {','.join(unknown)}: no such split in the bundled corpus "
            f"(it has {', '.join(known)})"
        )


# Report prompts name languages in English ("Czech"); the one table is clmap.data.languages.
LANGUAGE_NAMES = LANGUAGES


def flores_codes(lang: str) -> list[str]:
    """FLORES-200 spellings of a clmap language code (``cs`` -> ``["ces_Latn"]``), for file lookup."""
    return [flores for flores, code in FLORES_CODES.items() if code == lang]


def language_file(
    folder: str | Path, lang: str, suffixes: tuple[str, ...], prefixes: tuple[str, ...] = ("",)
) -> Path:
    """The file of ``lang`` in a per-language folder: ``{prefix}{code}{suffix}`` with the ISO code or a
    FLORES-200 code (``cs.jsonl``, ``ces_Latn.jsonl``, ``xquad.cs.json``), in ``folder`` or its ``data/``
    sub-folder (the layout of the Belebele dataset repository)."""
    folder = Path(folder)
    if folder.is_file():
        return folder
    stems = [lang, *flores_codes(lang)]
    names = [f"{prefix}{stem}{suffix}" for stem in stems for prefix in prefixes for suffix in suffixes]
    for where in (folder, folder / "data"):
        for name in names:
            if (where / name).is_file():
                return where / name
    raise EvalDataError(f"{folder}: no file for language {lang!r} (tried {', '.join(names)})")


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
