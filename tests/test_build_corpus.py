"""Tests for the corpus builder: extraction on tiny fixtures, and integrity of the committed corpus."""

from __future__ import annotations

import gzip
import hashlib
import json
import struct
from collections import Counter
from pathlib import Path

import pytest

from clmap.data import build_corpus as bc

CORPUS = Path(__file__).resolve().parents[1] / "clmap" / "assets" / "corpus"


# ------------------------------------------------------------------------------------------ fixtures


def write_mo(path: Path, catalog: dict[str, str]) -> None:
    """A minimal GNU .mo writer (little-endian, no hash table), enough to exercise the reader."""
    entries = sorted({"": "Content-Type: text/plain; charset=UTF-8\n", **catalog}.items())
    originals = [key.encode() for key, _ in entries]
    translations = [value.encode() for _, value in entries]
    count = len(entries)
    header_size = 7 * 4
    originals_table = header_size
    translations_table = originals_table + 8 * count
    data_start = translations_table + 8 * count
    blob = b""
    orig_index, trans_index = [], []
    for text in originals:
        orig_index.append((len(text), data_start + len(blob)))
        blob += text + b"\x00"
    for text in translations:
        trans_index.append((len(text), data_start + len(blob)))
        blob += text + b"\x00"
    out = struct.pack("<7I", 0x950412DE, 0, count, originals_table, translations_table, 0, 0)
    out += b"".join(struct.pack("<2I", *item) for item in orig_index)
    out += b"".join(struct.pack("<2I", *item) for item in trans_index)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out + blob)


def help_page(title: str, paragraphs: dict[str, str]) -> str:
    body = "".join(
        f'<p id="{key}" class="paragraph" dir="auto">{text}</p>\n' for key, text in paragraphs.items()
    )
    return (
        '<!DOCTYPE html><html><head><title>x</title><script>var ignored = "<p>";</script></head><body>'
        '<header><p dir="auto">LibreOffice 7.4 Help</p></header><div id="DisplayArea">'
        f'<h1 id="hd_id1" dir="auto">{title}</h1>\n{body}'
        '<p id="par_id9" class="code">Sub Main</p></div></body></html>'
    )


@pytest.fixture
def help_root(tmp_path: Path) -> Path:
    pages = {
        "en-US": {
            "text/shared/01/a.html": help_page(
                "Insert <b>Table</b>",
                {
                    "par_id2": 'Choose <a href="x">Format &amp; Style</a>.',
                    "par_id3": "%PRODUCTNAME opens  the\n dialog.",
                },
            ),
            "text/swriter/b.html": help_page("Untranslated page", {"par_id2": "Only English here."}),
        },
        "cs": {
            "text/shared/01/a.html": help_page(
                "Vložit <b>tabulku</b>",
                {
                    "par_id2": 'Zvolte <a href="x">Formát &amp; styl</a>.',
                    "par_id3": "%PRODUCTNAME otevře dialog.",
                },
            ),
            "text/swriter/b.html": help_page("Untranslated page", {"par_id2": "Only English here."}),
        },
        "ja": {
            "text/shared/01/a.html": help_page(
                "表の挿入", {"par_id2": "書式を選択します。", "par_id3": "%PRODUCTNAME opens the dialog."}
            ),
        },
        "zh-CN": {
            "text/shared/01/a.html": help_page(
                "插入表格", {"par_id2": "选择格式。", "par_id3": "打开对话框。"}
            ),
        },
    }
    for folder, files in pages.items():
        for relative, text in files.items():
            path = tmp_path / "help" / folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, "utf-8")
    return tmp_path / "help"


# ------------------------------------------------------------------------------- extraction, cleaning


def test_parse_help_page_keeps_keyed_paragraphs_as_plain_text(help_root: Path) -> None:
    paragraphs = bc.parse_help_page((help_root / "en-US/text/shared/01/a.html").read_text("utf-8"))
    assert paragraphs == {
        "hd_id1": "Insert Table",
        "par_id2": "Choose Format & Style.",
        "par_id3": "LibreOffice opens the dialog.",
    }  # the unkeyed header and the code paragraph are skipped


def test_help_alignment_drops_untranslated_segments(help_root: Path) -> None:
    pages = {
        lang: bc.read_help_tree(help_root / folder)
        for lang, folder in (("en", "en-US"), ("cs", "cs"), ("ja", "ja"), ("zh", "zh-CN"))
    }
    pairs = bc.help_pairs(pages)
    doc = "help/text/shared/01/a.html"
    assert [(r.doc, r.src, r.tgt) for r in pairs["en", "cs"]] == [
        (doc, "Insert Table", "Vložit tabulku"),
        (doc, "Choose Format & Style.", "Zvolte Formát & styl."),
        (doc, "LibreOffice opens the dialog.", "LibreOffice otevře dialog."),
    ]  # b.html is identical to English in cs: nothing from it
    assert {(r.src, r.tgt) for r in pairs["en", "ja"]} == {
        ("Insert Table", "表の挿入"),
        ("Choose Format & Style.", "書式を選択します。"),
    }
    # zh-ja aligned through par_id, but only where Japanese is really translated
    assert {(r.src, r.tgt) for r in pairs["zh", "ja"]} == {
        ("插入表格", "表の挿入"),
        ("选择格式。", "書式を選択します。"),
    }
    mono = bc.help_monolingual(pages)
    assert all("Only English" not in record.text for record in mono["cs"])
    assert any("Only English" in record.text for record in mono["en"])


def test_mo_reader_and_catalog_alignment(tmp_path: Path) -> None:
    english_keys = {
        "dialog|label\x04_Format": {"cs": "_Formát", "uk": "_Формат", "ja": "書式(_F)", "zh": "格式(_F)"},
        "STR_X\x04~Layout": {"cs": "Rozvrž~ení", "uk": "~Макет", "ja": "レイアウト(~L)", "zh": "布局(~L)"},
        "STR_ARG\x04%1": {"cs": "%1", "uk": "%1", "ja": "%1", "zh": "%1"},
        "STR_SAME\x04PDF": {"cs": "PDF", "uk": "PDF", "ja": "PDF", "zh": "PDF"},
        "STR_B\x04<b>Bold</b> &amp; more": {
            "cs": "<b>Tučné</b> a víc",
            "uk": "Bold &amp; more",
            "ja": "太字など",
            "zh": "粗体等",
        },
    }
    catalogs: dict[str, dict[str, dict[str, str]]] = {}
    for lang in ("cs", "uk", "ja", "zh"):
        mo = tmp_path / lang / "sw.mo"
        write_mo(mo, {key: values[lang] for key, values in english_keys.items()})
        catalogs[lang] = {"sw.mo": bc.parse_mo(mo.read_bytes())}
    assert catalogs["cs"]["sw.mo"]["STR_X\x04~Layout"] == "Rozvrž~ení"
    pairs = {key: {(r.src, r.tgt) for r in records} for key, records in bc.catalog_pairs(catalogs).items()}
    assert pairs["en", "cs"] == {
        ("Format", "Formát"),
        ("Layout", "Rozvržení"),
        ("Bold & more", "Tučné a víc"),
    }
    assert pairs["en", "uk"] == {("Format", "Формат"), ("Layout", "Макет")}  # untranslated uk dropped
    assert pairs["en", "ja"] == {("Format", "書式"), ("Layout", "レイアウト"), ("Bold & more", "太字など")}
    assert pairs["cs", "uk"] == {("Formát", "Формат"), ("Rozvržení", "Макет")}
    assert pairs["zh", "ja"] == {("格式", "書式"), ("布局", "レイアウト"), ("粗体等", "太字など")}
    assert all(r.doc == "l10n/sw.mo" for records in bc.catalog_pairs(catalogs).values() for r in records)


def test_cleaning_helpers() -> None:
    assert bc.clean_markup("<span class='x'>A&nbsp;&lt;b&gt;</span>\n  c") == "A <b> c"
    assert not bc.has_words("%1 $(ARG1) 25 %")
    assert bc.has_words("%1 files")
    assert not bc.keep_pair("Sbalit", "Sbalit")
    assert not bc.keep_pair("Hello", "Ahoj", english="Hello")
    assert bc.keep_pair("Ahoj", "Привіт", english="Hello")
    assert bc.strip_accelerators("file_name_here", ui_string=True) == "file_name_here"
    long_text = "Věta jedna. " * 200
    assert all(len(chunk) <= 1000 for chunk in bc.chunk_segments([long_text, "krátký", "další"]))


def test_splits_are_whole_documents_and_deterministic() -> None:
    doc_counts = {f"help/p{i}.html": Counter({"en-cs": 10}) for i in range(300)}
    first = bc.assign_splits(doc_counts, eval_min=200, eval_fraction=0.05)
    assert first == bc.assign_splits(dict(reversed(list(doc_counts.items()))), 200, 0.05)
    per_split = Counter(first.values())
    assert per_split["test"] == per_split["dev"] == 20 and per_split["train"] == 260

    records = {("en", "cs"): [bc.PairRecord(doc, "Same text", f"T {doc}") for doc in doc_counts]}
    final = bc.finalise_pairs(records, first)["en", "cs"]
    assert len(final["test"]) == 1  # one reference per source sentence in evaluation
    assert final["dev"] == [] and final["train"] == []  # never train on a test source sentence


def test_jsonl_writer_is_byte_reproducible(tmp_path: Path) -> None:
    rows = [{"doc": "d", "lang": "cs", "text": "Příliš žluťoučký kůň"}]
    first = bc.write_jsonl_gz(tmp_path / "a.jsonl.gz", rows)
    second = bc.write_jsonl_gz(tmp_path / "b.jsonl.gz", rows)
    assert first == second
    assert json.loads(gzip.decompress(first)) == rows[0]


# --------------------------------------------------------------------------------- committed corpus


def read_records(relative: str) -> list[dict]:
    with gzip.open(CORPUS / relative, "rt", encoding="utf-8") as stream:
        return [json.loads(line) for line in stream]


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((CORPUS / "manifest.json").read_text("utf-8"))


def test_manifest_matches_files(manifest: dict) -> None:
    assert (CORPUS / "LICENSES.md").is_file()
    for relative, entry in manifest["files"].items():
        data = (CORPUS / relative).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], relative
        records = [json.loads(line) for line in gzip.decompress(data).decode("utf-8").splitlines()]
        assert len(records) == entry["records"], relative
        assert len({record["doc"] for record in records}) == entry["documents"], relative


def test_languages_pairs_and_split_sizes(manifest: dict) -> None:
    expected_pairs = {"en-cs", "en-zh", "en-ja", "en-uk", "cs-uk", "zh-ja"}
    assert set(manifest["totals"]["pairs"]) == expected_pairs
    for pair in expected_pairs:
        for split in bc.SPLITS:
            count = manifest["files"][f"parallel/{pair}/{split}.jsonl.gz"]["records"]
            assert count >= (1000 if split == "train" else 300), (pair, split)
    for lang in ("en", "cs", "zh", "ja", "uk"):
        for split in bc.SPLITS:
            assert manifest["files"][f"mono/{lang}/{split}.jsonl.gz"]["records"] >= 50, (lang, split)


def test_splits_disjoint_by_document_and_records_clean(manifest: dict) -> None:
    eval_docs_by_lang: dict[str, set[str]] = {lang: set() for lang in bc.LANGS}
    train_docs_by_lang: dict[str, set[str]] = {lang: set() for lang in bc.LANGS}
    for pair in manifest["totals"]["pairs"]:
        src_lang, tgt_lang = pair.split("-")
        docs = {}
        for split in bc.SPLITS:
            records = read_records(f"parallel/{pair}/{split}.jsonl.gz")
            for record in records:
                assert record["src_lang"] == src_lang and record["tgt_lang"] == tgt_lang
                assert record["src"].strip() and record["tgt"].strip() and record["src"] != record["tgt"]
            docs[split] = {record["doc"] for record in records}
            target = train_docs_by_lang if split == "train" else eval_docs_by_lang
            target[src_lang] |= docs[split]
            target[tgt_lang] |= docs[split]
        assert not docs["train"] & docs["dev"] and not docs["train"] & docs["test"]
        assert not docs["dev"] & docs["test"], pair
    for lang in bc.LANGS:
        docs = {}
        for split in bc.SPLITS:
            records = read_records(f"mono/{lang}/{split}.jsonl.gz")
            assert all(record["lang"] == lang and record["text"].strip() for record in records)
            docs[split] = {record["doc"] for record in records}
        assert not docs["train"] & docs["dev"] and not docs["train"] & docs["test"]
        assert not docs["dev"] & docs["test"], lang
        # monolingual training text never comes from a page held out for that language's evaluation
        assert not docs["train"] & eval_docs_by_lang[lang], lang
        assert not (docs["dev"] | docs["test"]) & train_docs_by_lang[lang], lang
