"""Token stores: read-back equals direct tokenisation, a killed build resumes to the same store, damaged or
foreign stores are refused by name, and training rows from stores equal rows from the same texts."""

from __future__ import annotations

import copy
import json
import os
import pickle
import shutil
import subprocess
import sys
from itertools import islice

import numpy as np
import pytest
import torch
from conftest import LANGS, PAIRS, REPO, tiny_overrides

from clmap.config import load_config
from clmap.data.examples import IGNORE_INDEX, GroupTable
from clmap.data.pipeline import check_stores, load_texts, make_stream, open_stores, train_data
from clmap.data.readers import DataError, read_monolingual, read_parallel
from clmap.data.store import (
    INDEX_DIR,
    KILL_AFTER_SHARDS,
    STORE_FILE,
    StoreError,
    TokenStore,
    _write_store,
    build_store,
    main,
    repeat_store,
)
from clmap.data.stream import token_counts
from clmap.data.tokenizer import load_tokenizer, train_sentencepiece
from clmap.parallel import DistInfo

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


def _files(folder) -> dict[str, bytes]:
    """Every file of a store but store.json's build time: what two equal builds share byte for byte."""
    out = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    meta = json.loads(out.pop(STORE_FILE))
    meta.pop("created")
    out[STORE_FILE] = json.dumps(meta, sort_keys=True).encode()
    return out


def test_mono_store_round_trip_and_shards(corpus, tmp_path):
    tok = corpus["tok"]
    # blocks of 50 records: a shard is filled by several blocks, and a block spans shards
    out = build_store(
        corpus["tok_dir"], [corpus["mono"]], "mono", tmp_path / "s", shard_tokens=1000, batch_size=50
    )
    store = TokenStore(out, tokenizer=tok)
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
    assert meta["counts"]["en"]["records"] == 120 and set(meta["counts"]) == {"en", "cs", "zh"}
    assert meta["sources"][0]["size"] == corpus["mono"].stat().st_size
    assert all((out / s["file"]).stat().st_size == 2 * s["tokens"] == s["bytes"] for s in meta["shards"])
    assert not (out / "build").exists()  # the journal of the build is gone once store.json is written
    assert pickle.loads(pickle.dumps(store))[5].tolist() == expected[5]
    with pytest.raises(IndexError):
        store[len(store)]
    tripled = TokenStore(repeat_store(out, tmp_path / "x3", 3), tokenizer=tok)  # the benchmarks' 100x
    assert (
        len(tripled) == 3 * len(store)
        and tripled.meta["counts"]["zh"]["tokens"] == 3 * meta["counts"]["zh"]["tokens"]
    )
    assert all(
        tripled[i + r * len(store)].tolist() == expected[i] for r in range(3) for i in range(0, 360, 7)
    )


def test_a_store_given_as_a_text_corpus_is_named_as_a_store(corpus, tmp_path):
    """``data.mono_paths=en=STORE``: one line saying it is a store and how to train from it (before,
    the reader parsed store.json as JSONL: "store.json, line 1: invalid JSON")."""
    out = build_store(corpus["tok_dir"], [corpus["mono"]], "mono", tmp_path / "s", shard_tokens=1000)
    for read in (read_monolingual, read_parallel):
        with pytest.raises(DataError, match=rf"^{out}: is a token store .* data\.store=FOLDER"):
            read(out)


def test_parallel_store_and_num_proc(corpus, tmp_path):
    tok = corpus["tok"]
    inputs = [corpus["par"], corpus["par2"]]
    kwargs = {"src_lang": "en", "shard_tokens": 700, "batch_size": 64}
    one = build_store(corpus["tok_dir"], inputs, "parallel", tmp_path / "p1", num_proc=1, **kwargs)
    two = build_store(corpus["tok_dir"], inputs, "parallel", tmp_path / "p2", num_proc=2, **kwargs)
    s1 = TokenStore(one)
    pairs = [*read_parallel(corpus["par"]), *read_parallel(corpus["par2"], src_lang="en", tgt_lang="zh")]
    assert len(s1) == len(pairs) == 250 and len(json.loads((one / STORE_FILE).read_text())["shards"]) > 2
    for i, rec in enumerate(pairs):
        src, tgt, a, b = s1[i]
        assert (src.tolist(), tgt.tolist(), a, b) == (
            tok.encode(rec["src"]),
            tok.encode(rec["tgt"]),
            rec["src_lang"],
            rec["tgt_lang"],
        )
    assert _files(one) == _files(two)
    assert set(json.loads((one / STORE_FILE).read_text())["counts"]) == {"en-cs", "en-zh"}


def test_killed_build_resumes_to_the_same_store(corpus, tmp_path):
    """SIGKILL after two shards (a torn third one on disk); the same command again finishes the build, and
    the store equals an uninterrupted build byte for byte."""
    reference = build_store(corpus["tok_dir"], [corpus["mono"]], "mono", tmp_path / "ref", shard_tokens=500)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "clmap.data.store", "build", "--tokenizer", str(corpus["tok_dir"])]
    cmd += ["--input", str(corpus["mono"]), "--kind", "mono", "--out", str(out), "--shard-tokens", "500"]
    cmd += ["--num-proc", "1"]
    env = {**os.environ, KILL_AFTER_SHARDS: "2", "PYTHONPATH": str(REPO)}
    killed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (out / STORE_FILE).exists() and (out / "tokens-00002.bin").stat().st_size == 3
    with pytest.raises(StoreError, match="unfinished build: run the same build command again"):
        TokenStore(out)
    env.pop(KILL_AFTER_SHARDS)
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "continuing an unfinished build after" in done.stderr
    assert _files(out) == _files(reference)
    assert len(json.loads((out / STORE_FILE).read_text())["shards"]) > 3


def test_damaged_and_foreign_stores_are_refused_by_name(corpus, tmp_path):
    out = build_store(corpus["tok_dir"], [corpus["mono"]], "mono", tmp_path / "s", shard_tokens=1000)
    with pytest.raises(StoreError, match=r"vocab size \d+ .* vocab size 32000; rebuild"):
        TokenStore(out, vocab_size=32000)
    # same vocabulary size, other pieces: only the fingerprint tells them apart
    other = train_sentencepiece(
        _sentences(EN, 300, 7) + _sentences(CS, 300, 8),
        tmp_path / "other",
        ["en", "cs", "zh"],
        vocab_size=400,
    )
    assert other.vocab_size == corpus["tok"].vocab_size
    with pytest.raises(StoreError, match=r"s: store was tokenised with tokenizer .* fingerprint"):
        TokenStore(out, tokenizer=other)
    with pytest.raises(StoreError, match="not empty; pass --overwrite"):
        build_store(corpus["tok_dir"], [corpus["mono"]], "mono", out)
    with pytest.raises(StoreError, match="no store.json"):
        TokenStore(tmp_path)
    shard = out / "tokens-00001.bin"
    saved = shard.read_bytes()
    size = len(saved)
    with open(shard, "r+b") as f:
        f.truncate(size - 2)
    with pytest.raises(
        StoreError, match=rf"tokens-00001.bin: shard is {size - 2} bytes, store.json records {size}"
    ):
        TokenStore(out)
    shard.unlink()
    with pytest.raises(StoreError, match="tokens-00001.bin: shard missing"):
        TokenStore(out)
    shard.write_bytes(saved)
    TokenStore(out)  # restored: opens again
    (out / INDEX_DIR / "length.npy").write_bytes(b"garbage")
    with pytest.raises(StoreError, match="length.npy: unreadable index"):
        TokenStore(out)


def test_verify_finds_a_shard_changed_in_place(corpus, tmp_path, capsys):
    """A shard of the right size with other bytes opens (sizes only), and ``verify`` names it from its
    sha256 in store.json, through the CLI too (exit 2, one line); the hashes are part of the store's
    fingerprint, so a store whose shards hold other tokens under the same index is another store."""
    out = build_store(corpus["tok_dir"], [corpus["mono"]], "mono", tmp_path / "s", shard_tokens=1000)
    meta = json.loads((out / STORE_FILE).read_text())
    assert all(len(shard["sha256"]) == 64 for shard in meta["shards"])
    assert TokenStore(out).verify(progress=False) == sum(shard["bytes"] for shard in meta["shards"])
    assert main(["verify", str(out)]) == 0 and "match store.json" in capsys.readouterr().out
    shard = out / "tokens-00001.bin"
    data = bytearray(shard.read_bytes())
    data[0:2] = data[2:4]
    shard.write_bytes(bytes(data))
    store = TokenStore(out)  # same size: opening cannot tell
    with pytest.raises(StoreError, match=r"tokens-00001.bin: content differs from store.json's sha256"):
        store.verify(progress=False)
    assert main(["verify", str(tmp_path)]) == 2  # a folder of stores: each one under it
    assert "tokens-00001.bin: content differs" in capsys.readouterr().err
    copy = tmp_path / "other"
    shutil.copytree(out, copy)
    meta["shards"][1]["sha256"] = "0" * 64
    (copy / STORE_FILE).unlink()
    _write_store(copy, *_store_parts(meta, TokenStore(out)))
    assert TokenStore(copy).fingerprint != store.fingerprint


def _store_parts(meta: dict, store: TokenStore) -> tuple:
    """What ``_write_store`` is given for ``store`` with ``meta``'s shard records."""
    head = {k: meta[k] for k in ("kind", "tokenizer", "dtype", "shard_tokens")}
    index = {field: np.asarray(values) for field, values in store.index.items()}
    return head, index, meta["shards"], meta["languages"], meta["sources"]


def test_cli(corpus, tmp_path, capsys):
    args = [
        "build",
        "--tokenizer",
        str(corpus["tok_dir"]),
        "--input",
        str(corpus["par"]),
        "--kind",
        "parallel",
    ]
    rc = main([*args, "--out", str(tmp_path / "c"), "--shard-tokens", "500"])
    assert rc == 0 and "200 records" in capsys.readouterr().out
    assert len(TokenStore(tmp_path / "c", vocab_size=corpus["tok"].vocab_size)) == 200
    rc = main([*args, "--out", str(tmp_path / "d"), "--src-lang", "uk", "--tgt-lang", "ja"])
    assert rc == 2 and "holds en-cs" in capsys.readouterr().err


# -- training from stores --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stores(small_corpus, small_tokenizer, tmp_path_factory):
    """The small corpus as stores (``build --config``), several shards per store, and the config of both."""
    root = tmp_path_factory.mktemp("stores")
    overrides = tiny_overrides(small_corpus, small_tokenizer, root / "run")
    cfg = load_config(None, overrides)
    argv = ["build", "--config", str(REPO / "configs" / "tiny.toml"), "--out", str(root / "s")]
    assert main([*argv, "--shard-tokens", "3000", *overrides]) == 0  # the config's corpus and tokenizer
    store_cfg = load_config(None, [*overrides, f"--data.store={root / 's'}"])
    return cfg, store_cfg, root


def _layout(row):
    """What a row is without its tokens: which positions are scored, positions, groups, spans, lengths."""
    scored = [t != IGNORE_INDEX for t in row.targets]
    return scored, row.position_ids, row.groups, row.spans, row.pairs, row.seq_lens


def test_rows_from_stores_equal_rows_from_texts(stores, small_tokenizer, monkeypatch, tmp_path):
    cfg, store_cfg, root = stores
    tok = load_tokenizer(small_tokenizer)
    table = GroupTable(LANGS, PAIRS)
    mono, parallel = load_texts(cfg, "train")
    texts = make_stream(cfg, tok, table, mono, parallel, seed=3)
    smono, spar = open_stores(store_cfg, tok)
    assert len(json.loads((root / "s" / "mono" / "en" / STORE_FILE).read_text())["shards"]) > 1
    monkeypatch.setattr("clmap.data.store.CHUNK", 7)  # the derived indexes are built chunk by chunk
    from_store = make_stream(store_cfg, tok, table, smono, spar, seed=3, cache_dir=tmp_path / "index")
    assert [(s.name, len(s.records), s.dropped) for s in texts.sources] == [
        (s.name, len(s.records), s.dropped) for s in from_store.sources
    ]
    np.testing.assert_array_equal(texts.weights, from_store.weights)
    start, n = 5, 3 * cfg.data.pack_window  # windows 0..3: rows before the start are skipped, as on resume
    expected = list(islice(texts.rows(start), n))
    assert list(islice(from_store.rows(start), n)) == expected
    # the derived indexes were written once and are memory-mapped by the next stream (every rank)
    assert sorted(p.name.split("-")[-1] for p in (tmp_path / "index").iterdir())[:1] == ["pairs24.npy"]
    again = make_stream(store_cfg, tok, table, smono, spar, seed=3, cache_dir=tmp_path / "index")
    assert isinstance(again.sources[0].records.ends, np.memmap)

    # one rank of two: the tokens of its rows only are read; every other row keeps its layout (loss counts)
    reads = []
    real_span = TokenStore._span
    monkeypatch.setattr(TokenStore, "_span", lambda self, *a: reads.append(a) or real_span(self, *a))
    batch = cfg.train.global_batch

    def mine(p: int) -> bool:
        return p % batch < batch // 2

    lazy = list(islice(from_store.rows(start, keep=mine), n))
    for p, (row, want) in enumerate(zip(lazy, expected, strict=True), start=start):
        if mine(p):
            assert row == want, p
        else:
            assert _layout(row) == _layout(want), p
            # special tokens (bos, tags, eos) are there; the text's tokens were never read (zeros)
            assert row.input_ids != want.input_ids, p
            assert all(a in (0, b) for a, b in zip(row.input_ids, want.input_ids, strict=True)), p
    spans_mine = sum(len(want.seq_lens) for p, want in enumerate(expected, start=start) if mine(p))
    assert 0 < len(reads) <= 2 * spans_mine  # a pair reads its two sides; a document piece one span


def test_placebo_rows_from_stores_equal_those_from_texts(stores, small_tokenizer, tmp_path):
    """The placebo arm (``data.placebo_pairs``) from stores: the same derangement of the targets as from
    the texts, so the rows are equal, and no pair keeps its own target."""
    cfg, store_cfg, _ = stores
    tok = load_tokenizer(small_tokenizer)
    table = GroupTable(LANGS, PAIRS)
    cfg, store_cfg = copy.deepcopy(cfg), copy.deepcopy(store_cfg)
    cfg.data.placebo_pairs = store_cfg.data.placebo_pairs = True
    mono, parallel = load_texts(cfg, "train")
    texts = make_stream(cfg, tok, table, mono, parallel, seed=3)
    smono, spar = open_stores(store_cfg, tok)
    from_store = make_stream(store_cfg, tok, table, smono, spar, seed=3, cache_dir=tmp_path / "index")
    n = 2 * cfg.data.pack_window
    assert list(islice(from_store.rows(0), n)) == list(islice(texts.rows(0), n))
    pairs = next(s for s in from_store.sources if s.kind == "cl").records
    assert pairs.targets is not pairs.keep and not np.any(pairs.targets == pairs.keep)
    assert pairs.total_tokens() == int(pairs.token_counts().sum()) == pairs.head(len(pairs)).total_tokens()


def test_stores_are_read_only_as_their_layout_was_built(stores, small_tokenizer):
    """A folder of stores built without data.parallel_as_mono (pairs apart) is refused by name for a
    config with it (its mono stores would lack the pair sides), and the other way round."""
    _, store_cfg, root = stores
    tok = load_tokenizer(small_tokenizer)
    merged = copy.deepcopy(store_cfg)
    merged.data.parallel_as_mono = True
    with pytest.raises(
        StoreError, match=r"built for \{'parallel_as_mono': False\}.*--data.parallel_as_mono=true"
    ):
        open_stores(merged, tok)
    layout = root / "s" / "layout.json"
    saved = layout.read_text()
    layout.write_text(json.dumps({"parallel_as_mono": True, "pairs": store_cfg.data.pairs}))
    try:
        with pytest.raises(StoreError, match="--data.parallel_as_mono=false"):
            open_stores(store_cfg, tok)
    finally:
        layout.write_text(saved)


def test_mixture_weights_and_token_budget(stores, small_tokenizer, tmp_path, monkeypatch):
    """Counts per source over a window of draws are within sampling error of p ∝ weight × n^(1/T) (per task);
    a budgeted source keeps its first records within the budget."""
    cfg, store_cfg, root = stores
    tok = load_tokenizer(small_tokenizer)
    table = GroupTable(LANGS, PAIRS)
    overrides = tiny_overrides(cfg.data.corpus, small_tokenizer, root / "run")
    weights = {"en": 3.0, "uk": 0.5, "cs-uk": 2.0}
    mixed = load_config(
        None,
        [
            *overrides,
            f"--data.store={root / 's'}",
            "--data.weights=en=3,uk=0.5,cs-uk=2",
            "--data.token_budget=cs=5000",
        ],
    )
    smono, spar = open_stores(mixed, tok)
    stream = make_stream(mixed, tok, table, smono, spar, seed=0, cache_dir=tmp_path)
    by_name = {s.name: s for s in stream.sources}
    monkeypatch.setattr("clmap.data.store.CHUNK", 7)  # the start-up passes' chunks, several per store
    for source in stream.sources:  # the printed totals, chunk by chunk, budgeted view included
        assert source.records.total_tokens() == int(token_counts(source.records).sum()), source.name
    cs = by_name["ntp:cs"].records
    full = make_stream(store_cfg, tok, table, smono, spar, seed=0).sources[1].records
    assert (
        sum(len(cs[i].ids) for i in range(len(cs)))
        <= 5000
        < sum(len(full[i].ids) for i in range(len(cs) + 1))
    )
    assert [cs[i] for i in range(len(cs))] == [full[i] for i in range(len(cs))]  # its first records
    share = {"ntp": cfg.data.ntp_share, "cl": 1 - cfg.data.ntp_share}
    expect = np.zeros(len(stream.sources))
    for task in share:
        members = [i for i, s in enumerate(stream.sources) if s.kind == task]
        raw = np.array(
            [
                weights.get("-".join(stream.sources[i].langs), 1.0)
                * len(stream.sources[i].records) ** (1 / cfg.data.temperature)
                for i in members
            ]
        )
        expect[members] = share[task] * raw / raw.sum()
    np.testing.assert_allclose(stream.weights, expect, rtol=1e-12)
    draws = 20000
    counts = np.bincount(stream._blend(0, draws)[0], minlength=len(expect))
    sigma = np.sqrt(draws * expect * (1 - expect))
    assert np.all(np.abs(counts - draws * expect) <= 3 * sigma + 1), (counts, draws * expect)
    from clmap.data.pipeline import describe_mixture

    text = describe_mixture(stream)
    assert "ntp:en" in text and f"{expect[0]:6.1%}" in text


def test_changed_store_is_refused_on_resume(stores, small_tokenizer, tmp_path):
    cfg, store_cfg, root = stores
    dist_info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    run_dir = tmp_path / "run"
    tok, mono, parallel = train_data(store_cfg, run_dir, dist_info, resuming=False)
    assert (
        json.loads((run_dir / "data_stores.json").read_text())["en"]["fingerprint"] == mono["en"].fingerprint
    )
    train_data(store_cfg, run_dir, dist_info, resuming=True)  # the same stores: fine
    changed = tmp_path / "s"
    shutil.copytree(root / "s", changed)
    shutil.rmtree(changed / "mono" / "uk")
    build_store(
        changed / "tokenizer",
        [cfg.data.corpus + "/mono/uk/train.jsonl.gz"],
        "mono",
        changed / "mono" / "uk",
        lang="uk",
        shard_tokens=2000,
    )
    moved = load_config(
        None, [*tiny_overrides(cfg.data.corpus, small_tokenizer, run_dir), f"--data.store={changed}"]
    )
    check_stores(run_dir, {}, resuming=True, main=False)
    with pytest.raises(
        StoreError, match=r"changed since: uk \(.*mono/uk: fingerprint [0-9a-f]+ -> [0-9a-f]+\)"
    ):
        train_data(moved, run_dir, dist_info, resuming=True)


def test_two_process_run_from_stores_resumes_on_the_curve_of_the_texts(
    stores, small_corpus, small_tokenizer, tmp_path
):
    """One run from the texts (1 process, 6 steps) is the reference; a run from the stores stops after 3 steps
    (1 process) and resumes to 6 under 2 processes, each reading its own rows: every step's losses are the
    reference's (same rows, exact resume)."""
    from conftest import run_train

    from clmap.metrics import read_metrics

    _, store_cfg, _ = stores
    flat_lr = {
        "optim.min_lr_ratio": 1.0,
        "checkpoint.every": 3,
        "metrics.eval_every": 0,
    }  # lr free of train.steps
    reference = run_train(
        tiny_overrides(small_corpus, small_tokenizer, tmp_path / "texts", **flat_lr), nproc=1
    )
    assert "data mixture" in reference.stdout
    run = tmp_path / "stores"
    args = {**flat_lr, "data.store": store_cfg.data.store}
    first = run_train(
        tiny_overrides(small_corpus, small_tokenizer, run, **args, **{"train.steps": 3}), nproc=2
    )
    assert "ntp:en" in first.stdout and (run / "data_index").is_dir()
    resumed = run_train(tiny_overrides(small_corpus, small_tokenizer, run, **args), nproc=2)
    assert "resumed from" in resumed.stdout
    keys = [
        "loss/total",
        "loss/ntp",
        "loss/cl_forward",
        "loss/cl_backward",
        "loss/map",
        "mix/en",
        "mix/en-cs",
    ]
    want = {r["step"]: r for r in read_metrics(tmp_path / "texts" / "metrics.jsonl")}
    got = {r["step"]: r for r in read_metrics(run / "metrics.jsonl")}
    assert sorted(got) == sorted(want) == list(range(1, 7))
    for step in want:
        for key in keys:
            assert got[step][key] == pytest.approx(want[step][key], rel=2e-4, abs=1e-5), (step, key)


def test_tokenizer_sample_is_bounded_seeded_and_read_lazily(stores):
    """The tokenizer's sample: ``n`` texts, the first ``n`` of a seeded permutation of all texts end to end
    (what the trainer has always drawn), the same from in-memory lists and from lazy dataset columns."""
    from clmap.data.pipeline import corpus_columns, sample_texts

    cfg, _, _ = stores
    lazy = corpus_columns(cfg)
    mono, parallel = load_texts(cfg, "train")
    lists = [*mono.values(), *(side for sides in parallel.values() for side in sides)]
    assert [len(c) for c in lazy] == [len(c) for c in lists]
    flat = [t for column in lists for t in column]
    expected = [flat[i] for i in np.random.default_rng(5).permutation(len(flat))[:200]]
    assert sample_texts(lists, 200, 5) == expected
    assert sample_texts(lazy, 200, 5) == expected
    assert sample_texts(lazy, 200, 6) != expected and len(sample_texts(lists, 10**6, 5)) == len(flat)
