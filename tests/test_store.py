"""Token store: read-back equals direct tokenisation, num_proc=2 equals num_proc=1, wrong tokenizer fails."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from clmap.data.readers import read_monolingual, read_parallel
from clmap.data.store import STORE_FILE, StoreError, TokenStore, build_store, main
from clmap.data.tokenizer import train_sentencepiece

EN = ["the", "cat", "dog", "sleeps", "runs", "house", "green", "small", "river", "city", "reads", "a", "book"]
CS = ["kočka", "pes", "spí", "běží", "dům", "zelený", "malý", "řeka", "město", "čte", "knihu", "velký"]
ZH = list("猫狗睡觉跑房子绿色小河城市读书大")


def _sentences(words: list[str], n: int, seed: int, sep: str = " ") -> list[str]:
    rng = np.random.default_rng(seed)
    return [sep.join(rng.choice(words, size=int(rng.integers(3, 12)))) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    en, cs, zh = _sentences(EN, 200, 0), _sentences(CS, 200, 1), _sentences(ZH, 200, 2, sep="")
    tok_dir = root / "tok"
    tok = train_sentencepiece(en + cs + zh, tok_dir, ["en", "cs", "zh"], vocab_size=400)
    mono = root / "mono.jsonl"
    mono.write_text(
        "".join(
            json.dumps({"lang": lang, "text": t}, ensure_ascii=False) + "\n"
            for lang, texts in (("en", en), ("cs", cs), ("zh", zh))
            for t in texts[:120]
        ),
        encoding="utf-8",
    )
    par = root / "train.en-cs.tsv"
    par.write_text("".join(f"{a}\t{b}\n" for a, b in zip(en, cs, strict=True)), encoding="utf-8")
    par2 = root / "zh.jsonl"
    par2.write_text(
        "".join(
            json.dumps({"en": a, "zh": b}, ensure_ascii=False) + "\n"
            for a, b in zip(en[:50], zh[:50], strict=True)
        ),
        encoding="utf-8",
    )
    return {"root": root, "tok_dir": tok_dir, "tok": tok, "mono": mono, "par": par, "par2": par2}


def test_mono_store_round_trip_and_shards(corpus, tmp_path):
    tok = corpus["tok"]
    out = build_store(corpus["tok_dir"], [corpus["mono"]], "mono", tmp_path / "s", shard_tokens=1000)
    store = TokenStore(out, vocab_size=tok.vocab_size)
    ds = read_monolingual(corpus["mono"])
    assert len(store) == len(ds) == 360
    expected = tok.encode_batch(list(ds["text"]))
    for i in range(len(store)):
        assert store[i].tolist() == expected[i]
    assert store[-1].tolist() == expected[-1]
    assert store.record_langs()[:1] == ["en"] and store.record_langs()[-1] == "zh"
    meta = json.loads((out / STORE_FILE).read_text())
    assert meta["dtype"] == "uint16" and meta["tokenizer"]["vocab_size"] == tok.vocab_size
    assert len(meta["shards"]) > 1 and meta["num_tokens"] == sum(map(len, expected)) == int(
        store.lengths().sum()
    )
    assert (
        set(meta["counts"]) == {"en", "cs", "zh"}
        and meta["sources"][0]["size"] == corpus["mono"].stat().st_size
    )
    assert all((out / s["file"]).stat().st_size == 2 * s["tokens"] for s in meta["shards"])
    assert pickle.loads(pickle.dumps(store))[5].tolist() == expected[5]
    with pytest.raises(IndexError):
        store[len(store)]


def test_parallel_store_and_num_proc(corpus, tmp_path):
    tok = corpus["tok"]
    inputs = [corpus["par"], corpus["par2"]]
    one = build_store(corpus["tok_dir"], inputs, "parallel", tmp_path / "p1", num_proc=1, src_lang="en")
    two = build_store(corpus["tok_dir"], inputs, "parallel", tmp_path / "p2", num_proc=2, src_lang="en")
    s1, s2 = TokenStore(one), TokenStore(two)
    pairs = [*read_parallel(corpus["par"]), *read_parallel(corpus["par2"], src_lang="en", tgt_lang="zh")]
    assert len(s1) == len(s2) == len(pairs) == 250
    for i, rec in enumerate(pairs):
        src, tgt, a, b = s1[i]
        assert (src.tolist(), tgt.tolist(), a, b) == (
            tok.encode(rec["src"]),
            tok.encode(rec["tgt"]),
            rec["src_lang"],
            rec["tgt_lang"],
        )
    for name in ("tokens-00000.bin", "index.npz"):
        assert (one / name).read_bytes() == (two / name).read_bytes()
    assert set(json.loads((one / STORE_FILE).read_text())["counts"]) == {"en-cs", "en-zh"}


def test_refusals(corpus, tmp_path):
    out = build_store(corpus["tok_dir"], [corpus["mono"]], "mono", tmp_path / "s", lang="en")
    with pytest.raises(StoreError, match=r"vocab size \d+ .* vocab size 32000; rebuild"):
        TokenStore(out, vocab_size=32000)
    with pytest.raises(StoreError, match="not empty; pass --overwrite"):
        build_store(corpus["tok_dir"], [corpus["mono"]], "mono", out)
    with pytest.raises(StoreError, match="no store.json"):
        TokenStore(tmp_path)


def test_cli(corpus, tmp_path, capsys):
    rc = main(
        [
            "build",
            "--tokenizer",
            str(corpus["tok_dir"]),
            "--input",
            str(corpus["par"]),
            "--kind",
            "parallel",
            "--out",
            str(tmp_path / "c"),
            "--shard-tokens",
            "500",
        ]
    )
    assert rc == 0 and "200 records" in capsys.readouterr().out
    assert len(TokenStore(tmp_path / "c", vocab_size=corpus["tok"].vocab_size)) == 200
    rc = main(
        [
            "build",
            "--tokenizer",
            str(corpus["tok_dir"]),
            "--input",
            str(corpus["par"]),
            "--kind",
            "parallel",
            "--out",
            str(tmp_path / "d"),
            "--src-lang",
            "uk",
            "--tgt-lang",
            "ja",
        ]
    )
    assert rc == 2 and "holds en-cs" in capsys.readouterr().err
