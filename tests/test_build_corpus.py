"""Tests for the corpus builder: extraction on tiny fixtures, and integrity of the committed corpus."""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import shutil
import struct
from collections import Counter
from pathlib import Path

import pytest
import torch

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
            "text/swriter/01/a.html": help_page(
                "Insert <b>Table</b>",
                {
                    "par_id2": 'Choose <a href="x">Format &amp; Style</a>.',
                    "par_id3": "%PRODUCTNAME opens  the\n dialog.",
                },
            ),
            "text/swriter/b.html": help_page("Untranslated page", {"par_id2": "Only English here."}),
        },
        "cs": {
            "text/swriter/01/a.html": help_page(
                "Vložit <b>tabulku</b>",
                {
                    "par_id2": 'Zvolte <a href="x">Formát &amp; styl</a>.',
                    "par_id3": "%PRODUCTNAME otevře dialog.",
                },
            ),
            "text/swriter/b.html": help_page("Untranslated page", {"par_id2": "Only English here."}),
        },
        "ja": {
            "text/swriter/01/a.html": help_page(
                "表の挿入", {"par_id2": "書式を選択します。", "par_id3": "%PRODUCTNAME opens the dialog."}
            ),
        },
        "zh-CN": {
            "text/swriter/01/a.html": help_page(
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
    paragraphs = bc.parse_help_page((help_root / "en-US/text/swriter/01/a.html").read_text("utf-8"))
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
    doc = "help/text/swriter/01/a.html"
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


# ------------------------------------------------------------------ Debian package descriptions (ood)

TRANSLATION_LISTS = {
    "en": {
        "aaa": (
            "alpha",
            "fast text editor for programmers\n Alpha is a fast text editor. It opens large files\n"
            " in a second.\n .\n This package contains the program.",
        ),
        "bbb": ("beta", "image viewer\n Beta shows images.\n .\n It supports PNG."),
    },
    "cs": {
        "aaa": (
            "alpha",
            "rychlý textový editor pro programátory\n Alpha je rychlý textový editor. Otevře velké\n"
            " soubory za sekundu.\n .\n Tento balíček obsahuje program.",
        ),
        "bbb": ("beta", "prohlížeč obrázků\n Beta zobrazuje obrázky a podporuje PNG."),  # 1 paragraph, not 2
    },
    "ja": {
        "aaa": (
            "alpha",
            "プログラマ向けの高速テキストエディタ\n Alpha は高速なテキストエディタです。大きなファイル\n"
            " を一秒で開きます。\n .\n 本パッケージにはプログラムが含まれます。",
        ),
    },
    "uk": {
        "aaa": (
            "alpha",
            "швидкий текстовий редактор для програмістів\n Alpha — швидкий текстовий редактор.\n"
            " .\n This package contains the program.",
        ),  # second paragraph left in English
    },
    "zh": {
        "aaa": (
            "alpha",
            "面向程序员的快速文本编辑器\n Alpha 是一个快速的文本编辑器。\n .\n 本软件包包含该程序。",
        ),
    },
}


def translation_list_text(lang: str) -> str:
    code = bc.DDTP_LANGUAGES[lang]
    return "".join(
        f"Package: {package}\nDescription-md5: {md5}\nDescription-{code}: {description}\n\n"
        for md5, (package, description) in TRANSLATION_LISTS[lang].items()
    )


def test_description_segments_join_wrapped_lines_per_paragraph() -> None:
    entries = bc.parse_translation_list(translation_list_text("ja"), "Translation-ja")
    assert bc.description_segments(entries["aaa"][1]) == [
        "プログラマ向けの高速テキストエディタ",
        "Alpha は高速なテキストエディタです。大きなファイルを一秒で開きます。",  # no space inside Japanese
        "本パッケージにはプログラムが含まれます。",
    ]
    with pytest.raises(ValueError, match="Translation-cs, lines 1-2: expected fields Package, Descr"):
        bc.parse_translation_list("Package: x\nDescription-cs: y\n", "Translation-cs")


def test_descriptions_align_by_md5_and_paragraph() -> None:
    lists = {lang: bc.parse_translation_list(translation_list_text(lang), lang) for lang in TRANSLATION_LISTS}
    pairs = {key: [(r.doc, r.src, r.tgt) for r in records] for key, records in bc.ddtp_pairs(lists).items()}
    assert pairs["en", "cs"] == [
        ("ddtp/alpha", "fast text editor for programmers", "rychlý textový editor pro programátory"),
        (
            "ddtp/alpha",
            "Alpha is a fast text editor. It opens large files in a second.",
            "Alpha je rychlý textový editor. Otevře velké soubory za sekundu.",
        ),
        ("ddtp/alpha", "This package contains the program.", "Tento balíček obsahuje program."),
    ]  # beta: 1 paragraph against 2, left out
    assert [src for _, src, _ in pairs["en", "uk"]] == [
        "fast text editor for programmers",
        "Alpha is a fast text editor. It opens large files in a second.",
    ]  # the paragraph left in English is no translation
    assert [tgt for _, _, tgt in pairs["cs", "uk"]] == [
        "швидкий текстовий редактор для програмістів",
        "Alpha — швидкий текстовий редактор.",
    ]  # the uk paragraph still in English is no translation of the cs one
    assert len(pairs["zh", "ja"]) == 3 and len(pairs["en", "zh"]) == 3


def write_lists_folder(folder: Path, texts: dict[str, str]) -> None:
    """An apt lists folder: an InRelease that lists the sha256 of each list, lists in mixed compression."""
    folder.mkdir(parents=True, exist_ok=True)
    table = []
    for lang, text in texts.items():
        code = bc.DDTP_LANGUAGES[lang]
        data = text.encode("utf-8")
        table.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} main/i18n/Translation-{code}")
        stem = folder / f"mirror_debian_dists_bookworm_main_i18n_Translation-{code.replace('_', '%5f')}"
        if lang == "cs":
            stem.with_name(stem.name + ".xz").write_bytes(lzma.compress(data))
        elif lang == "ja":
            stem.with_name(stem.name + ".gz").write_bytes(gzip.compress(data))
        else:
            stem.write_bytes(data)
    (folder / "mirror_debian_dists_bookworm_InRelease").write_text(
        "Suite: oldstable\nVersion: 12.99\nCodename: bookworm\nDate: Sat, 01 Jan 2028 00:00:00 UTC\n"
        "SHA256:\n" + "\n".join(table) + "\n",
        "utf-8",
    )


def test_description_lists_are_verified_against_release_and_pins(tmp_path: Path) -> None:
    texts = {lang: translation_list_text(lang) for lang in TRANSLATION_LISTS}
    write_lists_folder(tmp_path / "lists", texts)
    with pytest.raises(ValueError, match="--accept-new-sources"):
        bc.load_ddtp(tmp_path / "lists", None, accept_new=False)  # nothing pinned yet
    records, source = bc.load_ddtp(tmp_path / "lists", None, accept_new=True)
    assert source["release_version"] == "12.99" and source["suite"] == "bookworm"
    assert source["lists"]["cs"]["sha256"] == hashlib.sha256(texts["cs"].encode()).hexdigest()
    assert len(records["en", "cs"]) == 3
    assert bc.load_ddtp(tmp_path / "lists", source, accept_new=False)[1] == source  # pinned: same lists pass

    texts["uk"] += "Package: gamma\nDescription-md5: ccc\nDescription-uk: новий опис\n\n"
    write_lists_folder(tmp_path / "newer", texts)
    with pytest.raises(ValueError, match=r"Translation-uk: pinned [0-9a-f]{64}, given"):
        bc.load_ddtp(tmp_path / "newer", source, accept_new=False)
    cs_list = next((tmp_path / "newer").glob("*Translation-cs*"))
    cs_list.write_bytes(lzma.compress(b"Package: tampered\n"))
    with pytest.raises(ValueError, match="inconsistent"):
        bc.load_ddtp(tmp_path / "newer", source, accept_new=True)


def test_pinned_debian_version_that_cannot_be_fetched_is_a_clear_error(tmp_path: Path) -> None:
    class GoneFromTheArchive:
        def download(self, spec: str, folder: Path) -> None:
            raise RuntimeError(f"apt-get download {spec} failed: Version '1.0-1' for 'pkg' was not found")

    pins = {"pkg": {"version": "1.0-1", "sha256": "0" * 64}}
    with pytest.raises(RuntimeError, match=r"(?s)pkg 1\.0-1, pinned by the manifest.*--accept-new-sources"):
        bc.fetch_debian(tmp_path, ["pkg"], pins, accept_new=False, apt=GoneFromTheArchive())
    with pytest.raises(ValueError, match="no version pinned"):
        bc.fetch_debian(tmp_path, ["other"], pins, accept_new=False, apt=GoneFromTheArchive())


# ------------------------------------------------------------------------ held-out text never trained on


def test_held_out_segments_leave_monolingual_training_text() -> None:
    held = "Choose Format - Character to open the dialog."
    records = {
        "en": [
            bc.MonoRecord("help/a.html", 0, f"First line.\nTip: {held} Then press OK.\nLast line."),
            bc.MonoRecord("help/a.html", 1, f"{held}"),
            bc.MonoRecord("help/b.html", 0, f"Dev page: {held}"),
        ]
    }
    splits = {"help/a.html": "train", "help/b.html": "dev"}
    mono, removed = bc.finalise_mono(records, splits, {"en": {held}})
    assert [r.text for r in mono["en"]["train"]] == ["First line.\nLast line."]  # record 1 had nothing else
    assert [r.text for r in mono["en"]["dev"]] == [f"Dev page: {held}"]  # held-out text may be held out
    assert removed["en"]["lines"] == 2


def test_ood_segments_are_held_out_from_parallel_training() -> None:
    shared = "A text editor for programmers that opens large files."
    records = {
        ("en", "cs"): [
            bc.PairRecord("ddtp/alpha", shared, "Textový editor pro programátory."),
            bc.PairRecord("help/p0.html", shared, "Jiný překlad."),
            bc.PairRecord("help/p1.html", "Another sentence for training.", "Jiná věta."),
        ]
    }
    splits = {"ddtp/alpha": bc.OOD_SPLIT, "help/p0.html": "train", "help/p1.html": "train"}
    final = bc.finalise_pairs(records, splits)["en", "cs"]
    assert [r.doc for r in final[bc.OOD_SPLIT]] == ["ddtp/alpha"]
    assert [r.src for r in final["train"]] == ["Another sentence for training."]
    assert bc.held_out_texts({("en", "cs"): final}) == {
        "en": {shared},
        "cs": {"Textový editor pro programátory."},
    }


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
        assert 1000 <= manifest["files"][f"parallel/{pair}/ood.jsonl.gz"]["records"] <= bc.OOD_CAP_PAIRS, pair
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


def test_ood_split_is_debian_descriptions_in_the_test_schema(manifest: dict) -> None:
    source = manifest["ood_source"]
    assert source["suite"] == bc.DDTP_SUITE and source["release_date"]
    assert set(source["lists"]) == set(bc.DDTP_LANGUAGES)
    assert all(len(entry["sha256"]) == 64 for entry in source["lists"].values())
    assert "DDTP" in (CORPUS / "LICENSES.md").read_text("utf-8")
    for pair in manifest["pairs"]:
        test, ood = (
            read_records(f"parallel/{pair}/test.jsonl.gz"),
            read_records(f"parallel/{pair}/ood.jsonl.gz"),
        )
        assert [set(record) for record in ood] == [set(test[0])] * len(ood), pair
        assert all(record["doc"].startswith("ddtp/") for record in ood), pair
        assert all(not record["doc"].startswith("ddtp/") for record in test), pair
        assert len({record["src"] for record in ood}) == len(ood), pair  # one reference per source


def test_held_out_segments_never_occur_in_training_text(manifest: dict) -> None:
    """No dev, test or ood segment of >= 30 characters is a parallel train side or inside monolingual
    train text of its language (measured before the fix: up to 16.5 % of a test side were)."""
    mono_train = {
        lang: "\n".join(record["text"] for record in read_records(f"mono/{lang}/train.jsonl.gz"))
        for lang in manifest["languages"]
    }
    parallel_train: dict[str, set[str]] = {lang: set() for lang in manifest["languages"]}
    for pair in manifest["pairs"]:
        src_lang, tgt_lang = pair.split("-")
        for record in read_records(f"parallel/{pair}/train.jsonl.gz"):
            parallel_train[src_lang].add(record["src"])
            parallel_train[tgt_lang].add(record["tgt"])
    leaks, checked = [], 0
    for pair in manifest["pairs"]:
        src_lang, tgt_lang = pair.split("-")
        for split in bc.HELD_OUT_SPLITS:
            for record in read_records(f"parallel/{pair}/{split}.jsonl.gz"):
                for lang, text in ((src_lang, record["src"]), (tgt_lang, record["tgt"])):
                    if len(text) < bc.LEAK_MIN_CHARS:
                        continue
                    checked += 1
                    if text in parallel_train[lang] or text in mono_train[lang]:
                        leaks.append((pair, split, lang, text))
    assert checked > 20_000
    assert not leaks, f"{len(leaks)} held-out segments occur in training text, e.g. {leaks[:3]}"


class _DataLoaded(Exception):
    """Raised where the trainer would build the model: all of its data has been read by then."""


def test_trainer_reads_train_and_dev_but_never_ood(
    small_corpus, small_tokenizer, tmp_path, monkeypatch
) -> None:
    """The ood split is test-only: run the trainer's start-up on a corpus that has ood files and record
    every file its readers open."""
    from conftest import tiny_overrides

    import clmap.data.pipeline as pipeline
    import clmap.train as train
    from clmap.config import load_config
    from clmap.parallel import DistInfo

    corpus = tmp_path / "corpus"
    shutil.copytree(small_corpus, corpus)
    for pair_folder in (corpus / "parallel").iterdir():
        shutil.copy(CORPUS / "parallel" / pair_folder.name / "ood.jsonl.gz", pair_folder / "ood.jsonl.gz")
    opened: list[str] = []

    def recording(reader):
        def read(path, *args, **kwargs):
            opened.append(Path(path).name)
            return reader(path, *args, **kwargs)

        return read

    def stop(*args, **kwargs):
        raise _DataLoaded

    monkeypatch.setattr(pipeline, "read_monolingual", recording(pipeline.read_monolingual))
    monkeypatch.setattr(pipeline, "read_parallel", recording(pipeline.read_parallel))
    monkeypatch.setattr(train, "init_distributed", lambda *a: DistInfo(0, 1, 0, torch.device("cpu")))
    monkeypatch.setattr(train, "build_model", stop)
    cfg = load_config(None, tiny_overrides(corpus, small_tokenizer, tmp_path / "run"))
    with pytest.raises(_DataLoaded):
        train.run(cfg)
    assert {"train.jsonl.gz", "dev.jsonl.gz"} <= set(opened)
    assert "ood.jsonl.gz" not in opened and "test.jsonl.gz" not in opened
