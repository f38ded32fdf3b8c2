"""Readers: every format round-trips, bad input fails with file + line + field, streaming == non-streaming."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clmap.data.languages import FLORES_CODES, LANGUAGES, is_known_lang, normalize_lang
from clmap.data.readers import (
    DataError,
    bundled_languages,
    bundled_monolingual,
    bundled_pairs,
    bundled_parallel,
    read_monolingual,
    read_parallel,
    shard_for_rank,
)

PAIRS = [("Hello world.", "Ahoj světe."), ("The cat sleeps.", "Kočka spí."), ("Good night!", "Dobrou noc!")]
COLUMNS = ["doc", "src_lang", "tgt_lang", "src", "tgt"]


def _write_jsonl(path: Path, records: list, raw_lines: dict[int, str] | None = None) -> Path:
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    for i, raw in (raw_lines or {}).items():
        lines.insert(i - 1, raw)
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _pairs(ds) -> list[tuple[str, str, str, str]]:
    return [(r["src_lang"], r["tgt_lang"], r["src"], r["tgt"]) for r in ds]


EXPECTED = [("en", "cs", s, t) for s, t in PAIRS]


# -- languages --------------------------------------------------------------------------------------------
def test_language_codes():
    assert {"en", "cs", "zh", "ja", "uk", "de", "fr", "es", "ru", "pl", "sk", "ko", "ar", "hi"} <= set(
        LANGUAGES
    )
    assert LANGUAGES["cs"] == "Czech"
    for flores, code in [
        ("eng_Latn", "en"),
        ("ces_Latn", "cs"),
        ("zho_Hans", "zh"),
        ("jpn_Jpan", "ja"),
        ("ukr_Cyrl", "uk"),
    ]:
        assert FLORES_CODES[flores] == code and normalize_lang(flores, "t") == code
    assert [normalize_lang(c, "t") for c in ("EN", "en-US", "zh_CN", "ces", "cze")] == [
        "en",
        "en",
        "zh",
        "cs",
        "cs",
    ]
    assert not is_known_lang("en-cs") and not is_known_lang("train")
    with pytest.raises(ValueError, match=r"corpus.jsonl, line 7: unknown language code 'xx'; known: en, cs"):
        normalize_lang("xx", "corpus.jsonl, line 7")


# -- parallel formats -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["train.jsonl", "train.jsonl.gz", "train.json"])
def test_jsonl_pair_records(tmp_path, name):
    path = _write_jsonl(
        tmp_path / name,
        [
            {"doc": f"d{i}", "src_lang": "eng_Latn", "tgt_lang": "cs", "src": s, "tgt": t}
            for i, (s, t) in enumerate(PAIRS)
        ],
    )
    ds = read_parallel(path)
    assert ds.column_names == COLUMNS
    assert _pairs(ds) == EXPECTED and ds["doc"][:3] == ["d0", "d1", "d2"]
    # Reversed orientation on request.
    assert _pairs(read_parallel(path, src_lang="cs", tgt_lang="en")) == [
        (b, a, t, s) for a, b, s, t in EXPECTED
    ]


def test_jsonl_field_per_language_and_default_doc(tmp_path):
    path = _write_jsonl(tmp_path / "flores.jsonl", [{"en": s, "cs": t, "de": "x"} for s, t in PAIRS])
    ds = read_parallel(path, src_lang="en", tgt_lang="cs")
    assert _pairs(ds) == EXPECTED
    assert ds["doc"][0] == "flores.jsonl:1-100"
    with pytest.raises(DataError, match=r"flores.jsonl, line 1: .*pass src_lang= and tgt_lang="):
        read_parallel(path)


def test_mixed_pairs_filtered_by_language(tmp_path):
    recs = [
        {"src_lang": "en", "tgt_lang": "cs", "src": "a", "tgt": "b"},
        {"src_lang": "cs", "tgt_lang": "en", "src": "c", "tgt": "d"},
        {"src_lang": "en", "tgt_lang": "zh", "src": "e", "tgt": "f"},
    ]
    path = _write_jsonl(tmp_path / "mixed.jsonl", recs)
    assert _pairs(read_parallel(path, src_lang="en", tgt_lang="cs")) == [
        ("en", "cs", "a", "b"),
        ("en", "cs", "d", "c"),
    ]
    with pytest.raises(DataError, match=r"mixed.jsonl: no sentence pairs left after filtering .*3 record"):
        read_parallel(path, src_lang="uk", tgt_lang="ja")


@pytest.mark.parametrize("name", ["train.en-cs.tsv", "en-cs.tsv", "en-cs/train.tsv"])
def test_tsv(tmp_path, name):
    path = tmp_path / name
    path.parent.mkdir(exist_ok=True)
    path.write_text("".join(f"{s}\t{t}\n" for s, t in PAIRS), encoding="utf-8")
    assert _pairs(read_parallel(path)) == EXPECTED
    assert _pairs(read_parallel(path, src_lang="cs", tgt_lang="en"))[0] == (
        "cs",
        "en",
        PAIRS[0][1],
        PAIRS[0][0],
    )


def test_tsv_header_args_and_verbatim_text(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text('eng_Latn\tces_Latn\n"quoted" NA\tnull\n', encoding="utf-8")
    assert _pairs(read_parallel(path)) == [("en", "cs", '"quoted" NA', "null")]
    bare = tmp_path / "bare.tsv"
    bare.write_text("a\tb\n", encoding="utf-8")
    assert _pairs(read_parallel(bare, src_lang="en", tgt_lang="uk")) == [("en", "uk", "a", "b")]
    with pytest.raises(DataError, match=r"bare.tsv: cannot tell the languages"):
        read_parallel(bare)


def test_parquet_and_csv(tmp_path):
    table = pa.table(
        {
            "src_lang": ["en"] * 3,
            "tgt_lang": ["cs"] * 3,
            "src": [s for s, _ in PAIRS],
            "tgt": [t for _, t in PAIRS],
        }
    )
    pq.write_table(table, tmp_path / "train.parquet")
    assert _pairs(read_parallel(tmp_path / "train.parquet")) == EXPECTED
    pq.write_table(
        pa.table({"en": [s for s, _ in PAIRS], "cs": [t for _, t in PAIRS]}), tmp_path / "wide.parquet"
    )
    assert _pairs(read_parallel(tmp_path / "wide.parquet", src_lang="en", tgt_lang="cs")) == EXPECTED
    (tmp_path / "c.csv").write_text("en,cs\n" + "".join(f'"{s}","{t}"\n' for s, t in PAIRS), encoding="utf-8")
    assert _pairs(read_parallel(tmp_path / "c.csv", src_lang="en", tgt_lang="cs")) == EXPECTED


@pytest.mark.parametrize("names", [("eng_Latn.devtest", "ces_Latn.devtest"), ("en.txt", "cs.txt")])
def test_flores_folder(tmp_path, names):
    (tmp_path / names[0]).write_text("".join(s + "\n" for s, _ in PAIRS), encoding="utf-8")
    (tmp_path / names[1]).write_text("".join(t + "\n" for _, t in PAIRS), encoding="utf-8")
    (tmp_path / names[1].replace("ces", "zho").replace("cs", "zh")).write_text(
        "一\n二\n三\n", encoding="utf-8"
    )
    assert _pairs(read_parallel(tmp_path, src_lang="en", tgt_lang="cs")) == EXPECTED
    assert [r[2:] for r in _pairs(read_parallel(tmp_path, src_lang="zh", tgt_lang="cs"))][0] == (
        "一",
        PAIRS[0][1],
    )
    with pytest.raises(DataError, match="pass src_lang= and tgt_lang="):
        read_parallel(tmp_path)


def test_multiple_files_and_folder(tmp_path):
    for i in range(2):
        _write_jsonl(
            tmp_path / f"part{i}.jsonl",
            [{"src_lang": "en", "tgt_lang": "cs", "src": s, "tgt": t} for s, t in PAIRS],
        )
    assert len(read_parallel(tmp_path)) == 6
    assert len(read_parallel([tmp_path / "part0.jsonl", tmp_path / "part1.jsonl"])) == 6


# -- bad input ------------------------------------------------------------------------------------------
def _good(i: int) -> dict:
    return {"src_lang": "en", "tgt_lang": "cs", "src": f"s{i}", "tgt": f"t{i}"}


@pytest.mark.parametrize("streaming", [False, True])
def test_malformed_json_line(tmp_path, streaming):
    path = _write_jsonl(tmp_path / "bad.jsonl", [_good(i) for i in range(4)], {3: '{"src": "x", "tgt": '})
    with pytest.raises(
        DataError, match=r"bad.jsonl, line 3: invalid JSON .*expected one JSON object per line"
    ):
        list(read_parallel(path, streaming=streaming))


@pytest.mark.parametrize("streaming", [False, True])
def test_missing_field(tmp_path, streaming):
    recs = [_good(i) for i in range(5)]
    del recs[3]["tgt"]
    path = _write_jsonl(tmp_path / "missing.jsonl", recs)
    with pytest.raises(DataError, match=r"missing.jsonl, line 4: missing field 'tgt' \(expected"):
        list(read_parallel(path, streaming=streaming))
    mono = _write_jsonl(tmp_path / "mono.jsonl", [{"lang": "en", "text": "a"}, {"lang": "en", "txt": "b"}])
    with pytest.raises(DataError, match=r"mono.jsonl, line 2: missing field 'text'"):
        list(read_monolingual(mono, streaming=streaming))


def test_wrong_type_and_null_row(tmp_path):
    recs = [_good(0), {**_good(1), "src": 5}]
    with pytest.raises(DataError, match=r"types.jsonl, line 2: field 'src' must be a string, got int"):
        read_parallel(_write_jsonl(tmp_path / "types.jsonl", recs))
    pq.write_table(pa.table({"lang": ["en", "en"], "text": ["a", None]}), tmp_path / "nulls.parquet")
    with pytest.raises(DataError, match=r"nulls.parquet, row 2: field 'text' must be a string, got NoneType"):
        read_monolingual(tmp_path / "nulls.parquet")


@pytest.mark.parametrize("streaming", [False, True])
def test_tsv_wrong_column_count(tmp_path, streaming):
    path = tmp_path / "train.en-cs.tsv"
    path.write_text("a\tb\nc\td\ne\tf\tg\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train.en-cs.tsv, line 3: expected 2 tab-separated columns .*got 3"):
        list(read_parallel(path, streaming=streaming))


def test_flores_length_mismatch(tmp_path):
    (tmp_path / "eng_Latn.dev").write_text("a\nb\nc\n", encoding="utf-8")
    (tmp_path / "ces_Latn.dev").write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_parallel(tmp_path, src_lang="en", tgt_lang="cs")
    msg = str(err.value)
    assert "eng_Latn.dev has 3 lines" in msg and "ces_Latn.dev has 2 lines" in msg


@pytest.mark.parametrize("streaming", [False, True])
def test_unknown_language(tmp_path, streaming):
    path = _write_jsonl(tmp_path / "langs.jsonl", [_good(0), {**_good(1), "tgt_lang": "cz"}])
    with pytest.raises(DataError, match=r"langs.jsonl, line 2: field 'tgt_lang': unknown language code 'cz'"):
        list(read_parallel(path, streaming=streaming))
    with pytest.raises(DataError, match="src_lang argument: unknown language code 'english'"):
        read_parallel(path, src_lang="english", tgt_lang="cs")


def test_empty_segments_skipped_and_reported(tmp_path, caplog):
    recs = [_good(0), {**_good(1), "tgt": "  "}, _good(2), {**_good(3), "src": ""}]
    path = _write_jsonl(tmp_path / "gaps.jsonl", recs, {5: ""})
    with caplog.at_level(logging.WARNING, logger="clmap.data.readers"):
        ds = read_parallel(path)
    assert ds["src"] == ["s0", "s2"]
    assert any("gaps.jsonl: skipped 3 empty segment(s)" in r.getMessage() for r in caplog.records)
    empty = _write_jsonl(tmp_path / "empty.jsonl", [{**_good(0), "src": ""}])
    with pytest.raises(DataError, match=r"empty.jsonl: no sentence pairs left after filtering \(1 empty"):
        read_parallel(empty)
    with pytest.raises(DataError, match=r"empty.jsonl: no sentence pairs left after filtering"):
        read_parallel(empty, streaming=True)


# -- monolingual ------------------------------------------------------------------------------------------
def test_monolingual_formats(tmp_path):
    texts = ["První dokument.", "Druhý dokument.", "Třetí."]
    _write_jsonl(tmp_path / "cs.jsonl.gz", [{"text": t} for t in texts])
    ds = read_monolingual(tmp_path / "cs.jsonl.gz")
    assert ds.column_names == ["doc", "lang", "text"] and ds["text"] == texts and set(ds["lang"]) == {"cs"}
    assert ds["doc"][1] == "cs.jsonl.gz:2"
    _write_jsonl(tmp_path / "mixed.jsonl", [{"lang": "en", "body": "Hi"}, {"lang": "ces", "body": "Ahoj"}])
    assert read_monolingual(tmp_path / "mixed.jsonl", text_field="body", lang="cs")["text"] == ["Ahoj"]
    pq.write_table(pa.table({"text": texts, "url": ["u1", "u2", "u3"]}), tmp_path / "data.parquet")
    ds = read_monolingual(tmp_path / "data.parquet", lang="cs")
    assert ds["text"] == texts and ds["doc"] == ["u1", "u2", "u3"]
    (tmp_path / "uk").mkdir()
    (tmp_path / "uk" / "a.txt").write_text("Привіт.\nДругий рядок.\n\nТретій абзац.\n", encoding="utf-8")
    ds = read_monolingual(tmp_path / "uk" / "a.txt")
    assert ds["text"] == ["Привіт.", "Другий рядок.", "Третій абзац."] and ds["lang"] == ["uk"] * 3
    paragraphs = read_monolingual(tmp_path / "uk" / "a.txt", by="paragraph")["text"]
    assert paragraphs == ["Привіт.\nДругий рядок.", "Третій абзац.\n"]
    with pytest.raises(DataError, match=r"plain.txt: plain text has no language"):
        (tmp_path / "plain.txt").write_text("x\n")
        read_monolingual(tmp_path / "plain.txt")


# -- streaming and sharding -------------------------------------------------------------------------------
def test_streaming_equals_in_memory(tmp_path):
    recs = [
        {"src_lang": "en", "tgt_lang": "cs", "src": f"s{i}", "tgt": f"t{i}" if i % 7 else ""}
        for i in range(50)
    ]
    path = _write_jsonl(tmp_path / "s.jsonl.gz", recs)
    assert list(read_parallel(path, streaming=True)) == list(read_parallel(path))
    tsv = tmp_path / "x.en-uk.tsv"
    tsv.write_text("".join(f"a{i}\tb{i}\n" for i in range(30)), encoding="utf-8")
    assert list(read_parallel(tsv, streaming=True)) == list(read_parallel(tsv))
    mono = _write_jsonl(tmp_path / "m.jsonl", [{"lang": "en", "text": f"t{i}"} for i in range(20)])
    assert list(read_monolingual(mono, streaming=True)) == list(read_monolingual(mono))


def test_shard_for_rank_partitions(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", [_good(i) for i in range(23)])
    ds = read_parallel(path)
    parts = [list(shard_for_rank(ds, r, 3)["src"]) for r in range(3)]
    assert sorted(sum(parts, [])) == sorted(ds["src"]) and all(7 <= len(p) <= 8 for p in parts)
    stream = read_parallel(path, streaming=True)
    sparts = [[r["src"] for r in shard_for_rank(stream, r, 3)] for r in range(3)]
    assert sorted(sum(sparts, [])) == sorted(ds["src"]) and all(sparts)
    with pytest.raises(ValueError):
        shard_for_rank(ds, 3, 3)


# -- the bundled corpus -----------------------------------------------------------------------------------
def test_bundled_corpus():
    pairs = bundled_pairs()
    assert {"en-cs", "en-zh", "en-ja", "en-uk", "cs-uk", "zh-ja"} <= set(pairs)
    assert {"en", "cs", "zh", "ja", "uk"} <= set(bundled_languages())
    fwd = bundled_parallel("en-cs", "dev")
    rev = bundled_parallel("cs-en", "dev")
    assert len(fwd) > 0 and fwd.column_names == COLUMNS
    assert set(fwd["src_lang"]) == {"en"} and set(rev["src_lang"]) == {"cs"}
    assert fwd[0]["src"] == rev[0]["tgt"] and fwd[0]["tgt"] == rev[0]["src"]
    mono = bundled_monolingual("uk", "dev")
    assert len(mono) > 0 and set(mono["lang"]) == {"uk"}
    with pytest.raises(DataError, match="available pairs: .*en-cs"):
        bundled_parallel("en-ko", "train")
    with pytest.raises(DataError, match="no split 'nope'"):
        bundled_parallel("en-cs", "nope")
