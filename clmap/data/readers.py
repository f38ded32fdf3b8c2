"""Corpus readers: local JSONL / TSV / Parquet / CSV / plain text / FLORES folders -> normalised datasets.

Every reader returns a Hugging Face ``Dataset`` (or ``IterableDataset`` with ``streaming=True``, for corpora
such as CulturaX shards that do not fit on disk twice) with fixed columns:

* parallel: ``doc, src_lang, tgt_lang, src, tgt``
* monolingual: ``doc, lang, text``

Line-oriented files (JSONL, TSV, text, FLORES) are read with the ``text`` builder and parsed here, one line
at a time, because the JSON/CSV builders report a malformed line without its number. So every bad input raises
:class:`DataError` naming the file, the line (or row) and what was expected, in streaming mode too. Empty
segments are skipped and reported with their count and file. ``doc`` (the unit that train/dev splits and
document-level sampling keep together) defaults to the file name plus a block of lines. An empty file, or
bytes that are not UTF-8 (reported with their byte offset and line), are a :class:`DataError` too, and a
parallel file whose two sides look like one language (``clmap/data/sniff.py``) gets a warning.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import itertools
import json
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, IterableDataset, Value, concatenate_datasets, load_dataset
from datasets.distributed import split_dataset_by_node

from clmap import BUNDLED_CORPUS
from clmap.cli import UserError, root_cause
from clmap.data.languages import is_known_lang, normalize_lang
from clmap.data.sniff import same_language_evidence

__all__ = [
    "DataError",
    "read_parallel",
    "read_monolingual",
    "bundled_parallel",
    "bundled_monolingual",
    "bundled_pairs",
    "bundled_languages",
    "shard_for_rank",
    "PARALLEL_FEATURES",
    "MONO_FEATURES",
]

logger = logging.getLogger(__name__)

PathLike = str | Path
Paths = PathLike | Sequence[PathLike]
AnyDataset = Dataset | IterableDataset

PARALLEL_FEATURES = Features({k: Value("string") for k in ("doc", "src_lang", "tgt_lang", "src", "tgt")})
MONO_FEATURES = Features({k: Value("string") for k in ("doc", "lang", "text")})
# Rows carry a skip code until they are counted and dropped: keep, empty segment, other language, header.
_KEEP, _EMPTY, _OTHER_LANG, _HEADER = 0, 1, 2, 3
_SKIP = "_skip"
DOC_BLOCK_LINES = 100  # consecutive lines of a file without doc ids form one pseudo-document
_RESERVED = {"doc", "id", "url", "src", "tgt", "src_lang", "tgt_lang", "lang", "text", "meta", "source"}
_JSON_EXT = (".jsonl", ".json", ".ndjson")
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst")


class DataError(UserError, ValueError):
    """Bad corpus input; the message names the file, the line or row, and what was expected."""


# -- small helpers ----------------------------------------------------------------------------------------
def _ext(path: Path) -> str:
    """File type suffix without a compression suffix: ``train.jsonl.gz`` -> ``.jsonl``."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _not_utf8(path: Path) -> DataError | None:
    """Where ``path`` (decompressed) stops being UTF-8: byte offset, line and bytes; None if it never does."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    consumed = newlines = line_start = 0
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
        for chunk in itertools.chain(iter(lambda: f.read(1 << 20), b""), [None]):
            try:
                decoder.decode(chunk or b"", final=chunk is None)
            except UnicodeDecodeError as exc:
                data = chunk or b""
                at = max(0, exc.start - (len(exc.object) - len(data)))  # the decoder keeps a partial sequence
                line = newlines + data.count(b"\n", 0, at) + 1
                last_newline = data.rfind(b"\n", 0, at)
                column = at - last_newline - 1 if last_newline >= 0 else consumed + at - line_start
                return DataError(
                    f"{path}, line {line}: not UTF-8 at byte {consumed + at} (byte {column} of the line: "
                    f"{exc.object[exc.start : exc.end]!r}); expected UTF-8 (convert it, e.g. with iconv)"
                )
            if chunk:
                newlines += chunk.count(b"\n")
                if b"\n" in chunk:
                    line_start = consumed + chunk.rfind(b"\n") + 1
                consumed += len(chunk)
    return None


_UTF8_CHECKED: set[str] = set()


def _check_decoded(texts: list[str], file: str | Path) -> None:
    """The text builder replaces undecodable bytes with U+FFFD: find them in the file and say where."""
    if str(file) not in _UTF8_CHECKED and any("\ufffd" in t for t in texts):
        error = _not_utf8(Path(file))
        if error is not None:
            raise error
        _UTF8_CHECKED.add(str(file))  # a genuine U+FFFD in valid UTF-8


def _head_text(path: Path, read):
    """``read(text file)``, with bytes that are not UTF-8 reported by offset and line."""
    try:
        with _open_text(path) as f:
            return read(f)
    except UnicodeDecodeError:
        raise (_not_utf8(path) or DataError(f"{path}: not UTF-8 text")) from None


def _first_line(path: Path) -> str:
    return _head_text(path, lambda f: f.readline().rstrip("\n"))


def _count_lines(path: Path) -> int:
    """Line count as the ``text`` builder sees it (universal newlines, no trailing empty line)."""
    return _head_text(path, lambda f: sum(1 for _ in f))


def _lang(code: object, where: str) -> str:
    try:
        return normalize_lang(code, where)
    except ValueError as exc:
        raise DataError(str(exc)) from None


def _expand(path: Paths, exts: Iterable[str]) -> list[Path]:
    """Files named by ``path``: a file, a list of files, or a folder (its files with one of ``exts``)."""
    items = [path] if isinstance(path, (str, Path)) else list(path)
    if not items:
        raise DataError("no input files given")
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir() and (p / "store.json").is_file():  # clmap.data.store.STORE_FILE (store imports us)
            raise DataError(
                f"{p}: is a token store (python -m clmap.data.store build), not a text corpus; "
                "train from stores with data.store=FOLDER (the folder that holds them)"
            )
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and _ext(f) in exts)
            if not found:
                raise DataError(f"{p}: folder holds no files of type {', '.join(exts)}")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    for file in files:
        if file.stat().st_size == 0:
            raise DataError(f"{file}: empty file; expected at least one record")
    return files


def _doc_block(name: str, line: int) -> str:
    lo = (line - 1) // DOC_BLOCK_LINES * DOC_BLOCK_LINES + 1
    return f"{name}:{lo}-{lo + DOC_BLOCK_LINES - 1}"


def _text_field(rec: dict, field: str, where: str, expected: str) -> str:
    if field not in rec:
        raise DataError(f"{where}: missing field '{field}' (expected {expected}; record has {sorted(rec)})")
    value = rec[field]
    if not isinstance(value, str):
        raise DataError(
            f"{where}: field '{field}' must be a string, got {type(value).__name__} ({value!r:.40})"
        )
    return value


def _doc_of(rec: dict, default: str) -> str:
    for key in ("doc", "id", "url"):
        value = rec.get(key)
        if value is not None and value != "":
            return str(value)
    return default


def _load_text(file: Path, streaming: bool, sample_by: str = "line") -> AnyDataset:
    """Lines (or paragraphs) of a text file; undecodable bytes become U+FFFD for ``_check_decoded``."""
    return load_dataset(
        "text",
        data_files=str(file),
        split="train",
        streaming=streaming,
        sample_by=sample_by,
        features=Features({"text": Value("string")}),  # an empty file is 0 rows, not a schema error
        encoding_errors="replace",
    )


def _load_columns(file: Path, streaming: bool) -> AnyDataset:
    """Parquet, CSV or a JSON array file through the matching builder (strings kept verbatim)."""
    ext = _ext(file)
    kwargs: dict[str, Any] = {}
    if ext == ".parquet":
        builder = "parquet"
    elif ext == ".csv":
        # Every column a string, and "NA"/"null" kept as text: it is corpus text, not a missing value.
        names = next(csv.reader([_first_line(file)]), [])
        features = Features({name: Value("string") for name in names})
        builder, kwargs = "csv", {"keep_default_na": False, "na_filter": False, "features": features}
    else:
        builder = "json"
    builder_log = logging.getLogger("datasets")
    level = builder_log.level
    builder_log.setLevel(logging.CRITICAL)  # a builder logs its error before raising it: we say it once
    try:
        return load_dataset(builder, data_files=str(file), split="train", streaming=streaming, **kwargs)
    except Exception as exc:  # the builders' own errors do not name the file
        cause = root_cause(exc)
        if isinstance(cause, UnicodeDecodeError):
            raise (_not_utf8(file) or DataError(f"{file}: not UTF-8 text")) from None
        raise DataError(
            f"{file}: cannot read as {builder}: {str(cause).strip() or type(cause).__name__}"
        ) from exc
    finally:
        builder_log.setLevel(level)


def _is_json_array(file: Path) -> bool:
    return _head_text(file, lambda f: f.read(4096).lstrip().startswith("["))


def _rows(batch: dict[str, list]) -> list[dict]:
    keys = list(batch)
    return [dict(zip(keys, values, strict=True)) for values in zip(*batch.values(), strict=True)]


class _SkipReporter:
    """Batched filter for streaming datasets: drops skipped rows and logs how many empty ones, per file."""

    def __init__(self, file: Path):
        self.file = file
        self.empty = 0

    def __call__(self, batch: dict[str, list]) -> list[bool]:
        codes = batch[_SKIP]
        empty = sum(1 for c in codes if c == _EMPTY)
        if empty:
            self.empty += empty
            logger.warning("%s: skipped %d empty segment(s) (%d so far)", self.file, empty, self.empty)
        return [c == _KEEP for c in codes]


def _keep_rows(batch: dict[str, list]) -> list[bool]:
    return [c == _KEEP for c in batch[_SKIP]]


def _finish(parts: list[tuple[Path, AnyDataset]], streaming: bool, what: str) -> AnyDataset:
    """Count and drop skipped rows per file, concatenate, and refuse an empty result."""
    done: list[AnyDataset] = []
    counts = {_EMPTY: 0, _OTHER_LANG: 0}
    for file, ds in parts:
        if streaming:
            done.append(ds.filter(_SkipReporter(file), batched=True).remove_columns(_SKIP))
            continue
        codes = ds.data.column(_SKIP).to_pylist()
        n_empty, n_other = codes.count(_EMPTY), codes.count(_OTHER_LANG)
        counts[_EMPTY] += n_empty
        counts[_OTHER_LANG] += n_other
        if n_empty:
            logger.warning("%s: skipped %d empty segment(s)", file, n_empty)
        if n_empty or n_other or _HEADER in codes:
            ds = ds.filter(_keep_rows, batched=True)
        done.append(ds.remove_columns(_SKIP))
    result = done[0] if len(done) == 1 else concatenate_datasets(done)
    empty = next(iter(result.take(1)), None) is None if streaming else len(result) == 0
    if empty:
        names = ", ".join(str(f) for f, _ in parts)
        detail = (
            ""
            if streaming
            else (
                f" ({counts[_EMPTY]} empty segment(s) skipped, "
                f"{counts[_OTHER_LANG]} record(s) of other languages)"
            )
        )
        raise DataError(f"{names}: no {what} left after filtering{detail}; expected at least one")
    return result


# -- parallel ---------------------------------------------------------------------------------------------
_PAIR_EXPECTED = (
    'fields src_lang, tgt_lang, src, tgt, or one field per language such as {"en": ..., "cs": ...}'
)


class _ParallelRow:
    """Turns one record (any accepted shape) into normalised columns, orienting it as the caller asked."""

    def __init__(self, src_lang: str | None, tgt_lang: str | None):
        self.want = (src_lang, tgt_lang)
        self._key_lang: dict[str, str | None] = {}

    def _key(self, key: str) -> str | None:
        if key not in self._key_lang:
            self._key_lang[key] = (
                normalize_lang(key, "") if key not in _RESERVED and is_known_lang(key) else None
            )
        return self._key_lang[key]

    def orient(self, a: str, b: str, s: str, t: str) -> tuple[str, str, str, str, int]:
        want_a, want_b = self.want
        if (want_a in (None, a)) and (want_b in (None, b)):
            return a, b, s, t, _KEEP
        if (want_a in (None, b)) and (want_b in (None, a)):
            return b, a, t, s, _KEEP
        return a, b, s, t, _OTHER_LANG

    def __call__(self, rec: Any, where: str, default_doc: str) -> tuple[str, str, str, str, str, int]:
        if not isinstance(rec, dict):
            raise DataError(
                f"{where}: expected a JSON object with {_PAIR_EXPECTED}, got {type(rec).__name__}"
            )
        if "src" in rec or "tgt" in rec:
            s = _text_field(rec, "src", where, _PAIR_EXPECTED)
            t = _text_field(rec, "tgt", where, _PAIR_EXPECTED)
            langs = []
            for field, given in (("src_lang", self.want[0]), ("tgt_lang", self.want[1])):
                if rec.get(field) is not None:
                    langs.append(_lang(rec[field], f"{where}: field '{field}'"))
                elif given is not None:
                    langs.append(given)
                else:
                    raise DataError(
                        f"{where}: missing field '{field}' (expected {_PAIR_EXPECTED}, "
                        f"or pass {field}= to the reader)"
                    )
            a, b = langs
        else:
            by_lang = {}
            for key in rec:
                code = self._key(key)
                if code is not None and code not in by_lang:
                    by_lang[code] = key
            if self.want[0] is not None and self.want[1] is not None:
                a, b = self.want
            elif len(by_lang) == 2:
                a, b = by_lang
            else:
                raise DataError(
                    f"{where}: record has no 'src'/'tgt' fields and language fields {sorted(by_lang)}; "
                    f"expected {_PAIR_EXPECTED} (pass src_lang= and tgt_lang= to pick two)"
                )
            for code in (a, b):
                if code not in by_lang:
                    raise DataError(
                        f"{where}: missing field '{code}' (expected one field per language, "
                        f"e.g. '{code}'; record has {sorted(rec)})"
                    )
            s = _text_field(rec, by_lang[a], where, _PAIR_EXPECTED)
            t = _text_field(rec, by_lang[b], where, _PAIR_EXPECTED)
        a, b, s, t, code = self.orient(a, b, s, t)
        if code == _KEEP and (not s.strip() or not t.strip()):
            code = _EMPTY
        return _doc_of(rec, default_doc), a, b, s, t, code


def _parallel_columns(rows: list[tuple[str, str, str, str, str, int]]) -> dict[str, list]:
    names = ("doc", "src_lang", "tgt_lang", "src", "tgt", _SKIP)
    return {name: [row[i] for row in rows] for i, name in enumerate(names)}


_PARALLEL_WORK = Features({**PARALLEL_FEATURES, _SKIP: Value("int8")})
_MONO_WORK = Features({**MONO_FEATURES, _SKIP: Value("int8")})


def _parse_jsonl_parallel(batch: dict, idx: list[int], file: str, make: _ParallelRow) -> dict[str, list]:
    _check_decoded(batch["text"], file)
    name = Path(file).name
    rows = []
    for line, i in zip(batch["text"], idx, strict=True):
        where = f"{file}, line {i + 1}"
        if not line.strip():
            rows.append(("", "", "", "", "", _EMPTY))
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON ({exc}); expected one JSON object per line") from None
        rows.append(make(rec, where, _doc_block(name, i + 1)))
    return _parallel_columns(rows)


def _parse_rows_parallel(
    batch: dict, idx: list[int], file: str, make: _ParallelRow, unit: str, first: int
) -> dict[str, list]:
    name = Path(file).name
    rows = [
        make(rec, f"{file}, {unit} {i + first}", _doc_block(name, i + first))
        for rec, i in zip(_rows(batch), idx, strict=True)
    ]
    return _parallel_columns(rows)


def _parse_tsv(
    batch: dict, idx: list[int], file: str, make: _ParallelRow, langs: tuple[str, str], header: bool
) -> dict[str, list]:
    _check_decoded(batch["text"], file)
    name = Path(file).name
    rows = []
    for line, i in zip(batch["text"], idx, strict=True):
        n = i + 1
        if header and n == 1:
            rows.append(("", "", "", "", "", _HEADER))
            continue
        if not line.strip():
            rows.append(("", "", "", "", "", _EMPTY))
            continue
        cells = line.split("\t")
        if len(cells) != 2:
            raise DataError(
                f"{file}, line {n}: expected 2 tab-separated columns (src<TAB>tgt), got {len(cells)}"
            )
        a, b, s, t, code = make.orient(langs[0], langs[1], cells[0], cells[1])
        if code == _KEEP and (not s.strip() or not t.strip()):
            code = _EMPTY
        rows.append((_doc_block(name, n), a, b, s, t, code))
    return _parallel_columns(rows)


def _parse_flores(batch: dict, idx: list[int], doc: str, langs: tuple[str, str]) -> dict[str, list]:
    rows = []
    for s, t, i in zip(batch["src"], batch["tgt"], idx, strict=True):
        code = _EMPTY if not s.strip() or not t.strip() else _KEEP
        rows.append((_doc_block(doc, i + 1), langs[0], langs[1], s, t, code))
    return _parallel_columns(rows)


_PAIR_NAME = re.compile(
    r"(?:^|[._/])([A-Za-z]{2,3}(?:_[A-Za-z]{4})?)-([A-Za-z]{2,3}(?:_[A-Za-z]{4})?)(?=\.|$)"
)


def _pair_from_name(file: Path) -> tuple[str, str] | None:
    """Languages from ``train.en-cs.tsv``, ``en-cs.tsv`` or a parent folder named ``en-cs``."""
    for text in (file.name, file.parent.name):
        for m in _PAIR_NAME.finditer(text):
            if is_known_lang(m.group(1)) and is_known_lang(m.group(2)):
                return normalize_lang(m.group(1), str(file)), normalize_lang(m.group(2), str(file))
    return None


def _read_tsv(file: Path, make: _ParallelRow, streaming: bool) -> AnyDataset:
    first = _first_line(file).split("\t")
    header = len(first) == 2 and all(is_known_lang(c.strip()) for c in first)
    langs = (
        (_lang(first[0].strip(), f"{file}, line 1"), _lang(first[1].strip(), f"{file}, line 1"))
        if header
        else _pair_from_name(file)
    )
    if langs is None:
        if make.want[0] is None or make.want[1] is None:
            raise DataError(
                f"{file}: cannot tell the languages of this TSV; expected a name like "
                "train.en-cs.tsv, a header line 'en<TAB>cs', or src_lang=/tgt_lang= arguments"
            )
        langs = (make.want[0], make.want[1])
    elif make.orient(*langs, "", "")[4] != _KEEP:
        raise DataError(
            f"{file}: holds {langs[0]}-{langs[1]}, but {make.want[0]}-{make.want[1]} was asked for"
        )
    ds = _load_text(file, streaming)
    return ds.map(
        _parse_tsv,
        with_indices=True,
        batched=True,
        remove_columns=["text"],
        features=_PARALLEL_WORK,
        fn_kwargs={"file": str(file), "make": make, "langs": langs, "header": header},
    )


_RECORD_EXT = (*_JSON_EXT, ".tsv", ".csv")  # files that hold pairs themselves, never one FLORES language


def _flores_lang(file: Path) -> str | None:
    """Language of one per-language file of a FLORES-style folder, from its name: ``eng_Latn.devtest``
    (FLORES-200), ``devtest.eng_Latn`` (FLORES+ releases), ``eng_Latn.parquet`` (flores_plus), ``en.txt``."""
    if not file.is_file() or file.name.startswith(".") or _ext(file) in _RECORD_EXT:
        return None
    parts = file.name.split(".")
    for candidate in (parts[0], parts[-1] if len(parts) > 1 else ""):
        if candidate and is_known_lang(candidate):
            return normalize_lang(candidate, str(file))
    return None


def _flores_files(folder: Path) -> dict[str, list[Path]]:
    by_lang: dict[str, list[Path]] = {}
    for f in sorted(folder.iterdir()):
        lang = _flores_lang(f)
        if lang is not None:
            by_lang.setdefault(lang, []).append(f)
    return by_lang


def _is_flores_folder(folder: Path, kinds: Sequence[str]) -> bool:
    """A folder whose files of a parallel type are all per-language files (or that has none of them)."""
    return not any(_ext(f) in kinds and _flores_lang(f) is None for f in folder.iterdir() if f.is_file())


def _flores_side(file: Path, streaming: bool, column: str) -> tuple[AnyDataset, int, list[str] | None]:
    """(one language's sentences as column ``column``, their number, their ids when the file has them).

    Plain files hold one sentence per line; flores_plus parquet files one row per sentence with the
    sentence in ``text`` (and ``id``, ``iso_639_3``, ``iso_15924``, ``url``, ... beside it)."""
    if _ext(file) != ".parquet":
        return _load_text(file, streaming).rename_column("text", column), _count_lines(file), None
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(file)
    names = meta.schema_arrow.names
    if "text" not in names:
        raise DataError(f"{file}: no column 'text' (expected a flores_plus parquet file; columns: {names})")
    ids = (
        [str(i) for i in pq.read_table(file, columns=["id"]).column("id").to_pylist()]
        if "id" in names
        else None
    )
    ds = _load_columns(file, streaming).select_columns(["text"]).rename_column("text", column)
    return ds, meta.metadata.num_rows, ids


def _read_flores(folder: Path, src_lang: str | None, tgt_lang: str | None, streaming: bool) -> AnyDataset:
    """One file per language with aligned lines or rows (``eng_Latn.devtest``, ``devtest.eng_Latn``,
    ``eng_Latn.parquet``, ``en.txt``): pick two of them."""
    by_lang = _flores_files(folder)
    if not by_lang:
        raise DataError(
            f"{folder}: no per-language files found; expected FLORES-style names such as "
            "eng_Latn.devtest, devtest.eng_Latn, eng_Latn.parquet or en.txt"
        )
    if src_lang is None or tgt_lang is None:
        given = src_lang or tgt_lang
        if len(by_lang) != 2 or (given is not None and given not in by_lang):
            raise DataError(
                f"{folder}: holds languages {sorted(by_lang)}; pass src_lang= and tgt_lang= to pick two"
            )
        first, second = by_lang
        if given is None:
            src_lang, tgt_lang = first, second
        elif src_lang is None:
            src_lang = second if tgt_lang == first else first
        else:
            tgt_lang = second if src_lang == first else first
    files = []
    for code in (src_lang, tgt_lang):
        found = by_lang.get(code, [])
        if len(found) != 1:
            problem = "no file" if not found else f"several files ({', '.join(f.name for f in found)})"
            raise DataError(
                f"{folder}: {problem} for language '{code}'; expected exactly one "
                f"(languages there: {sorted(by_lang)})"
            )
        files.append(found[0])
    (src, n_src, src_ids), (tgt, n_tgt, tgt_ids) = (
        _flores_side(files[0], streaming, "src"),
        _flores_side(files[1], streaming, "tgt"),
    )
    if n_src != n_tgt:
        raise DataError(
            f"FLORES files are not aligned: {files[0]} has {n_src} lines, "
            f"{files[1]} has {n_tgt} lines; expected the same number of lines"
        )
    if src_ids is not None and tgt_ids is not None and src_ids != tgt_ids:
        row = next(i for i, (a, b) in enumerate(zip(src_ids, tgt_ids, strict=True)) if a != b)
        raise DataError(
            f"FLORES files are not aligned: {files[0]}, row {row + 1} has id {src_ids[row]!r} but "
            f"{files[1]}, row {row + 1} has id {tgt_ids[row]!r}; expected the same ids in the same order"
        )
    both = concatenate_datasets([src, tgt], axis=1)
    split = next((p for p in files[0].name.split(".") if not is_known_lang(p)), "txt")
    return both.map(
        _parse_flores,
        with_indices=True,
        batched=True,
        remove_columns=["src", "tgt"],
        features=_PARALLEL_WORK,
        fn_kwargs={"doc": f"{folder.name}.{split}", "langs": (src_lang, tgt_lang)},
    )


def read_parallel(
    path: Paths, *, src_lang: str | None = None, tgt_lang: str | None = None, streaming: bool = False
) -> AnyDataset:
    """Parallel text with columns ``doc, src_lang, tgt_lang, src, tgt``, oriented ``src_lang -> tgt_lang``.

    ``path``: a file (JSONL/JSON, TSV, Parquet, CSV), a list of them, a folder of them, or a FLORES-style
    folder (one file per language, aligned lines). ``src_lang``/``tgt_lang`` pick the fields of
    one-field-per-language records and the files of a FLORES folder, name the languages of a TSV without
    them, and for records that carry their own languages keep only that pair (swapping reversed records).
    """
    want_a = _lang(src_lang, "src_lang argument") if src_lang is not None else None
    want_b = _lang(tgt_lang, "tgt_lang argument") if tgt_lang is not None else None
    if want_a is not None and want_a == want_b:
        raise DataError(f"src_lang and tgt_lang are both '{want_a}'; expected two different languages")
    kinds = (*_JSON_EXT, ".tsv", ".parquet", ".csv")
    single = Path(path) if isinstance(path, (str, Path)) else None
    if single is not None and single.is_dir() and _is_flores_folder(single, kinds):
        parts = [(single, _read_flores(single, want_a, want_b, streaming))]
        return _warn_same_language(_finish(parts, streaming, "sentence pairs"), parts)
    make = _ParallelRow(want_a, want_b)
    parts = []
    for file in _expand(path, kinds):
        ext = _ext(file)
        if ext == ".tsv":
            ds = _read_tsv(file, make, streaming)
        elif ext in _JSON_EXT and not _is_json_array(file):
            ds = _load_text(file, streaming).map(
                _parse_jsonl_parallel,
                with_indices=True,
                batched=True,
                remove_columns=["text"],
                features=_PARALLEL_WORK,
                fn_kwargs={"file": str(file), "make": make},
            )
        elif ext in (*_JSON_EXT, ".parquet", ".csv"):
            ds = _load_columns(file, streaming)
            unit, first = ("line", 2) if ext == ".csv" else ("row", 1)
            ds = ds.map(
                _parse_rows_parallel,
                with_indices=True,
                batched=True,
                remove_columns=list(ds.column_names or []),
                features=_PARALLEL_WORK,
                fn_kwargs={"file": str(file), "make": make, "unit": unit, "first": first},
            )
        else:
            raise DataError(
                f"{file}: unsupported file type '{ext}'; expected one of {', '.join(kinds)} "
                "or a FLORES-style folder"
            )
        parts.append((file, ds))
    return _warn_same_language(_finish(parts, streaming, "sentence pairs"), parts)


SNIFF_SAMPLE = 200  # records per language pair looked at by the same-language check


def _warn_same_language(ds: AnyDataset, parts: list[tuple[Path, AnyDataset]]) -> AnyDataset:
    """Warn when the two sides of a pair look like one language (see clmap/data/sniff.py)."""
    sample = ds.take(SNIFF_SAMPLE) if streaming_dataset(ds) else ds.select(range(min(SNIFF_SAMPLE, len(ds))))
    by_pair: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
    for row in sample:
        src, tgt = by_pair.setdefault((row["src_lang"], row["tgt_lang"]), ([], []))
        src.append(row["src"])
        tgt.append(row["tgt"])
    for (a, b), (src, tgt) in by_pair.items():
        evidence = same_language_evidence(src, tgt)
        if evidence:
            names = ", ".join(str(f) for f, _ in parts)
            logger.warning(
                "%s: the %s and %s sides look like one language (%s); check the file", names, a, b, evidence
            )
    return ds


def streaming_dataset(ds: AnyDataset) -> bool:
    return isinstance(ds, IterableDataset)


# -- monolingual ------------------------------------------------------------------------------------------
def _lang_from_name(file: Path) -> str | None:
    """``mono/en/train.jsonl.gz`` or ``en_part_00000.parquet`` -> ``en`` (None when the path says nothing)."""
    head = re.split(r"[._-]", file.name)[0]
    for candidate in (file.parent.name, head):
        if candidate not in _RESERVED and is_known_lang(candidate):
            return normalize_lang(candidate, str(file))
    return None


class _MonoRow:
    def __init__(self, file: Path, lang: str | None, text_field: str):
        self.file = file
        self.want = lang
        self.fallback = lang or _lang_from_name(file)
        self.text_field = text_field

    def __call__(self, rec: Any, where: str, default_doc: str) -> tuple[str, str, str, int]:
        expected = f"field '{self.text_field}' (and optionally 'lang', 'doc')"
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected a JSON object with {expected}, got {type(rec).__name__}")
        text = _text_field(rec, self.text_field, where, expected)
        if rec.get("lang") is not None:
            lang = _lang(rec["lang"], f"{where}: field 'lang'")
        elif self.fallback is not None:
            lang = self.fallback
        else:
            raise DataError(
                f"{where}: missing field 'lang' and no language given (expected a 'lang' field, "
                "a lang= argument, or a path naming the language such as mono/en/...)"
            )
        code = _KEEP if self.want in (None, lang) else _OTHER_LANG
        if code == _KEEP and not text.strip():
            code = _EMPTY
        return _doc_of(rec, default_doc), lang, text, code


def _mono_columns(rows: list[tuple[str, str, str, int]]) -> dict[str, list]:
    return {name: [row[i] for row in rows] for i, name in enumerate(("doc", "lang", "text", _SKIP))}


def _parse_jsonl_mono(batch: dict, idx: list[int], make: _MonoRow) -> dict[str, list]:
    _check_decoded(batch["text"], make.file)
    rows = []
    for line, i in zip(batch["text"], idx, strict=True):
        where = f"{make.file}, line {i + 1}"
        if not line.strip():
            rows.append(("", "", "", _EMPTY))
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON ({exc}); expected one JSON object per line") from None
        rows.append(make(rec, where, f"{make.file.name}:{i + 1}"))
    return _mono_columns(rows)


def _parse_rows_mono(batch: dict, idx: list[int], make: _MonoRow, unit: str, first: int) -> dict[str, list]:
    return _mono_columns(
        [
            make(rec, f"{make.file}, {unit} {i + first}", f"{make.file.name}:{i + first}")
            for rec, i in zip(_rows(batch), idx, strict=True)
        ]
    )


def _parse_plain(batch: dict, idx: list[int], file: str, lang: str, unit: str) -> dict[str, list]:
    _check_decoded(batch["text"], file)
    name = Path(file).name
    texts = batch["text"]
    return {
        "doc": [f"{name}:{unit}{i + 1}" for i in idx],
        "lang": [lang] * len(texts),
        "text": texts,
        _SKIP: [_KEEP if t.strip() else _EMPTY for t in texts],
    }


def read_monolingual(
    path: Paths,
    *,
    lang: str | None = None,
    text_field: str = "text",
    streaming: bool = False,
    by: str = "line",
) -> AnyDataset:
    """Monolingual text with columns ``doc, lang, text``.

    ``path``: JSONL/JSON, Parquet or CSV records (``text_field`` holds the text, ``lang``/``doc`` optional) or
    plain text (``.txt``: one document per line, or per blank-line-separated paragraph with
    ``by="paragraph"``); a list of files or a folder of them. ``lang`` names the language of records
    without a ``lang`` field (else the path must, e.g. ``mono/en/``) and keeps only that language otherwise.
    """
    if by not in ("line", "paragraph"):
        raise DataError(f"by={by!r}; expected 'line' or 'paragraph'")
    want = _lang(lang, "lang argument") if lang is not None else None
    kinds = (*_JSON_EXT, ".parquet", ".csv", ".txt")
    parts = []
    for file in _expand(path, kinds):
        ext = _ext(file)
        make = _MonoRow(file, want, text_field)
        if ext == ".txt":
            if make.fallback is None:
                raise DataError(
                    f"{file}: plain text has no language; expected lang= or a path naming it "
                    "(mono/en/train.txt, en.txt)"
                )
            ds = _load_text(file, streaming, sample_by=by).map(
                _parse_plain,
                with_indices=True,
                batched=True,
                remove_columns=["text"],
                features=_MONO_WORK,
                fn_kwargs={"file": str(file), "lang": make.fallback, "unit": "" if by == "line" else "p"},
            )
        elif ext in _JSON_EXT and not _is_json_array(file):
            ds = _load_text(file, streaming).map(
                _parse_jsonl_mono,
                with_indices=True,
                batched=True,
                remove_columns=["text"],
                features=_MONO_WORK,
                fn_kwargs={"make": make},
            )
        elif ext in (*_JSON_EXT, ".parquet", ".csv"):
            ds = _load_columns(file, streaming)
            unit, first = ("line", 2) if ext == ".csv" else ("row", 1)
            ds = ds.map(
                _parse_rows_mono,
                with_indices=True,
                batched=True,
                remove_columns=list(ds.column_names or []),
                features=_MONO_WORK,
                fn_kwargs={"make": make, "unit": unit, "first": first},
            )
        else:
            raise DataError(f"{file}: unsupported file type '{ext}'; expected one of {', '.join(kinds)}")
        parts.append((file, ds))
    return _finish(parts, streaming, "documents")


# -- the bundled corpus -----------------------------------------------------------------------------------
def _corpus(kind: str) -> Path:
    folder = BUNDLED_CORPUS / kind
    if not folder.is_dir():
        raise DataError(f"{folder}: bundled corpus not found (expected clmap/assets/corpus/{kind}/...)")
    return folder


def bundled_pairs() -> list[str]:
    """Language pairs of the bundled parallel corpus, as stored (``en-cs``); either order can be read."""
    return sorted(p.name for p in _corpus("parallel").iterdir() if p.is_dir())


def bundled_languages() -> list[str]:
    """Languages of the bundled monolingual corpus."""
    return sorted(p.name for p in _corpus("mono").iterdir() if p.is_dir())


def bundled_split_names() -> list[str]:
    """Every split some pair or language of the bundled corpus has (``ood``: the pairs only)."""
    files = [*_corpus("parallel").glob("*/*.jsonl.gz"), *_corpus("mono").glob("*/*.jsonl.gz")]
    return sorted({f.name.split(".")[0] for f in files})


def _split_file(folder: Path, split: str) -> Path:
    file = folder / f"{split}.jsonl.gz"
    if not file.is_file():
        splits = sorted(f.name.split(".")[0] for f in folder.glob("*.jsonl.gz"))
        raise DataError(f"{file}: no split '{split}' in the bundled corpus; available: {', '.join(splits)}")
    return file


def bundled_parallel(pair: str, split: str) -> Dataset:
    """One pair and split of the bundled corpus; ``cs-en`` reads the stored ``en-cs`` with sides swapped."""
    parts = pair.split("-")
    if len(parts) != 2:
        raise DataError(f"pair {pair!r}: expected two language codes joined by '-', e.g. 'en-cs'")
    a, b = (_lang(p, f"pair {pair!r}") for p in parts)
    available = bundled_pairs()
    stored = f"{a}-{b}" if f"{a}-{b}" in available else f"{b}-{a}" if f"{b}-{a}" in available else None
    if stored is None:
        raise DataError(
            f"pair {pair!r} is not in the bundled corpus; available pairs: {', '.join(available)} "
            "(either order)"
        )
    file = _split_file(_corpus("parallel") / stored, split)
    return read_parallel(file, src_lang=a, tgt_lang=b)  # type: ignore[return-value]


def bundled_monolingual(lang: str, split: str) -> Dataset:
    """One language and split of the bundled monolingual corpus."""
    code = _lang(lang, "lang argument")
    available = bundled_languages()
    if code not in available:
        raise DataError(f"language '{code}' is not in the bundled corpus; available: {', '.join(available)}")
    return read_monolingual(_split_file(_corpus("mono") / code, split), lang=code)  # type: ignore[return-value]


# -- distribution -----------------------------------------------------------------------------------------
def shard_for_rank(ds: AnyDataset, rank: int, world_size: int) -> AnyDataset:
    """This rank's part of ``ds`` (contiguous chunks, or shards/every n-th example when streaming)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    return split_dataset_by_node(ds, rank=rank, world_size=world_size)
