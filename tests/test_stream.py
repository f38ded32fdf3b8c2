"""Mapping examples, document pieces, pair filtering, blending, packing and the resumable stream.

That packed sequences never attend to each other is tested per attention implementation in test_packing.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import LANGS, PAIRS

from clmap.data.examples import (
    IGNORE_INDEX,
    GroupTable,
    mapping_prompt,
    mapping_sequence,
    ntp_sequence,
    pair_unit,
)
from clmap.data.stream import Row, TrainingStream, build_sources, collate, placebo_records, source_weights
from clmap.data.tokenizer import load_tokenizer
from clmap.train import data_cursor


@pytest.fixture(scope="module")
def tok(small_tokenizer):
    return load_tokenizer(small_tokenizer)


def _stream(tok, seq_len=96, packing=True, directions="both", ntp_share=0.4, seed=0):
    mono = {lang: [f"{lang} text number {i} " * (1 + i % 7) for i in range(40)] for lang in LANGS}
    parallel = {
        p: ([f"source {i} words" for i in range(30)], [f"target {i} slova" for i in range(30)]) for p in PAIRS
    }
    table = GroupTable(LANGS, PAIRS)
    sources = build_sources(tok, mono, parallel, seq_len=seq_len, max_segment_tokens=16)
    weights = source_weights(sources, ntp_share, temperature=2.0)
    stream = TrainingStream(
        tok,
        table,
        sources,
        weights,
        seq_len=seq_len,
        packing=packing,
        window=32,
        directions=directions,
        seed=seed,
    )
    return stream, table, sources, weights


def test_mapping_sequence_masks_source_and_tag(tok):
    src, tgt = tok.encode("Dobrý den"), tok.encode("Good morning")
    seq = mapping_sequence(tok, src, tgt, "en", group=3)
    assert seq.input_ids == [tok.bos_id, *src, *tok.lang_tag("en"), *tgt, tok.eos_id]
    assert seq.input_ids[: len(src) + 1 + len(tok.lang_tag("en"))] == mapping_prompt(tok, "Dobrý den", "en")
    scored = [t for t in seq.targets if t != IGNORE_INDEX]
    assert scored == [*tgt, tok.eos_id]  # loss on the target side and eos only
    start, end = seq.source_span
    assert seq.input_ids[start:end] == src
    # targets are shifted: position t predicts input t+1
    for t, target in enumerate(seq.targets):
        if target != IGNORE_INDEX:
            assert seq.input_ids[t + 1] == target


def test_pair_unit_is_bidirectional_and_linked(tok):
    table = GroupTable(LANGS, PAIRS)
    x, y = tok.encode("Ahoj"), tok.encode("Hello")
    unit = (
        pair_unit(tok, table, x, y, "cs", "en")
        if "cs-en" in PAIRS
        else pair_unit(tok, table, y, x, "en", "cs")
    )
    forward, backward = unit.sequences
    assert table.names[forward.group] == "cl:en>cs" and table.names[backward.group] == "cl:cs>en"
    assert unit.pairs == [(0, 1)]
    fs, fe = forward.source_span
    bs, be = backward.source_span
    assert forward.input_ids[fs:fe] == y and backward.input_ids[bs:be] == x
    one_way = pair_unit(tok, table, y, x, "en", "cs", directions="forward")
    assert len(one_way.sequences) == 1 and one_way.pairs == []


def _sequences(row):
    """(start, length) of each packed sequence of a row, from its own layout."""
    starts = np.cumsum([0, *row.seq_lens[:-1]]).tolist()
    return list(zip(starts, row.seq_lens, strict=True))


def test_packed_rows_hold_each_unit_once_in_its_layout(tok):
    """Every sequence of a window lands in exactly one row, whole, with its own targets, group and source span
    (relative to where it starts) and positions 0, 1, ...; no row holds more than seq_len real tokens; the
    padding tail is pad ids without loss; rows are mostly full."""
    stream, *_ = _stream(tok)
    source_ids, samples = stream._blend(0, stream.window)
    units = [
        stream._unit(int(i), stream._record(int(i), int(j))) for i, j in zip(source_ids, samples, strict=True)
    ]
    expected = sorted(
        (tuple(seq.input_ids), tuple(seq.targets), seq.group, seq.source_span)
        for unit in units
        for seq in unit.sequences
    )
    rows = stream.window_rows(0)
    seen = []
    for row in rows:
        assert row.num_tokens <= 96 and row.num_tokens == sum(row.seq_lens)
        for start, n in _sequences(row):
            assert row.position_ids[start : start + n] == list(range(n))
            (group,) = set(row.groups[start : start + n])
            spans = [(a - start, b - start) for a, b in row.spans if start <= a < start + n]
            assert len(spans) <= 1 and all(b <= n for _, b in spans)
            layout = (tuple(row.input_ids[start : start + n]), tuple(row.targets[start : start + n]), group)
            seen.append((*layout, spans[0] if spans else None))
        pad = range(row.num_tokens, 96)
        assert all(row.targets[i] == IGNORE_INDEX and row.input_ids[i] == tok.pad_id for i in pad)
        assert row.position_ids[row.num_tokens :] == list(range(len(pad)))
    assert sorted(seen) == expected  # each sequence once, none cut, none lost, nothing shifted
    assert np.mean([r.num_tokens / 96 for r in rows]) > 0.8  # packed, not padded


def test_collate_gives_every_segment_boundary_once(tok):
    """cu_seq_lens: each sequence and each padding tail, row after row, over the flat B·T axis (int32)."""
    stream, *_ = _stream(tok)
    rows = stream.window_rows(0)[:4]
    batch = collate(rows)
    expected = [0]
    for row in rows:
        for n in row.seq_lens + ([96 - row.num_tokens] if row.num_tokens < 96 else []):
            expected.append(expected[-1] + n)
    assert batch["cu_seq_lens"].dtype == torch.int32 and batch["cu_seq_lens"].tolist() == expected
    assert batch["max_seq_len"] == max(np.diff(expected)) and isinstance(batch["max_seq_len"], int)
    # the positions restart exactly at those boundaries
    starts = set(expected[:-1])
    flat_positions = batch["position_ids"].flatten().tolist()
    assert {i for i, p in enumerate(flat_positions) if p == 0} == starts


def test_stream_resumes_from_any_row(tok):
    stream, *_ = _stream(tok)
    reference = [row for _, row in zip(range(60), stream.rows(), strict=False)]
    fresh, *_ = _stream(tok)
    resumed = [row for _, row in zip(range(23), fresh.rows(37), strict=False)]
    assert [r.input_ids for r in resumed] == [r.input_ids for r in reference[37:60]]
    other_seed, *_ = _stream(tok, seed=1)
    assert [r.input_ids for r in other_seed.window_rows(0)] != [r.input_ids for r in stream.window_rows(0)]


def test_blended_index_in_small_chunks_gives_the_same_rows(tok):
    """The stream builds its blended index in chunks (bounded memory, whatever the run's length): with
    chunks of 7 samples, so that every window of 32 straddles several, the rows from the start and from a
    resume equal those of one chunk, and only the two newest chunks stay in memory."""
    stream, *_ = _stream(tok)
    reference = [row.input_ids for _, row in zip(range(60), stream.rows(), strict=False)]
    for start in (0, 37):
        chunked, *_ = _stream(tok)
        chunked.BLEND_CHUNK = 7
        rows = [row.input_ids for _, row in zip(range(60 - start), chunked.rows(start), strict=False)]
        assert rows == reference[start:]
        assert len(chunked._chunks) <= 2 and len(chunked._taken_before) > 10


def test_resume_from_a_cursor_plans_no_window_before_it(tok, capsys):
    """A checkpoint's cursor (the window of the last row trained and the rows before that window) lets a
    resume start at that window: the same rows as counting from row 0, and no earlier window planned. A
    cursor of another stream (other seed) is refused by the stream and dropped by the trainer, said once."""
    stream, *_ = _stream(tok)
    reference = [row for _, row in zip(range(60), stream.rows(), strict=False)]
    cursor = stream.cursor(reference[36], 36)
    assert cursor["window"] > 0
    fresh, *_ = _stream(tok)
    planned = []
    plan = fresh.window_rows
    fresh.window_rows = lambda w, keep=None: planned.append(w) or plan(w, keep)
    resumed = [row for _, row in zip(range(23), fresh.rows(37, cursor=cursor), strict=False)]
    assert [r.input_ids for r in resumed] == [r.input_ids for r in reference[37:60]]
    assert min(planned) == cursor["window"]
    other_seed, *_ = _stream(tok, seed=1)
    with pytest.raises(ValueError, match="not one of this stream's"):
        next(other_seed.rows(37, cursor=cursor))
    assert data_cursor(other_seed, cursor, main=True) is None
    assert "counting its rows from the start" in capsys.readouterr().out
    assert data_cursor(fresh, cursor, main=True) == cursor


def test_blend_follows_temperature_weights(tok):
    stream, _, sources, weights = _stream(tok)
    source_ids, _ = stream._blend(0, 6000)
    observed = np.bincount(source_ids[:6000], minlength=len(sources)) / 6000
    np.testing.assert_allclose(observed, weights, atol=2e-3)
    ntp = sum(w for w, s in zip(weights, sources, strict=True) if s.kind == "ntp")
    assert ntp == pytest.approx(0.4)


def test_padded_mode_one_unit_per_row(tok):
    stream, *_ = _stream(tok, packing=False)
    for row in stream.window_rows(0):
        assert len(row.seq_lens) == (2 if row.pairs else 1)  # one unit: an NTP text or both sides of a pair


def test_collate_flat_span_offsets(tok):
    stream, *_ = _stream(tok)
    rows = stream.window_rows(0)[:4]
    batch = collate(rows)
    flat = batch["input_ids"].flatten()
    k = 0
    for r, row in enumerate(rows):
        for start, end in row.spans:
            assert batch["span_starts"][k] == r * 96 + start
            assert torch.equal(
                flat[batch["span_starts"][k] : batch["span_ends"][k]], torch.tensor(row.input_ids[start:end])
            )
            k += 1


def test_long_documents_end_in_eos_only_at_their_real_end(tok):
    """A document longer than a row becomes pieces: the first has loss from its first token, a continuation
    starts with bos but no loss on the token after it, and only the last piece ends in eos."""
    text = " ".join(f"word{i}" for i in range(200))
    ids = tok.encode(text)
    sources = build_sources(tok, {"en": [text, "short one"]}, {}, seq_len=40, max_segment_tokens=16)
    pieces = sources[0].records
    assert [p.ids for p in pieces[:-1]] == [ids[i : i + 38] for i in range(0, len(ids), 38)]
    assert [p.doc_start for p in pieces] == [True] + [False] * (len(pieces) - 3) + [False, True]
    assert [p.doc_end for p in pieces] == [False] * (len(pieces) - 2) + [True, True]
    table = GroupTable(LANGS, PAIRS)
    stream = TrainingStream(tok, table, sources, np.ones(1), seq_len=40, window=len(pieces))
    for piece in pieces:
        seq = stream._unit(0, piece).sequences[0]
        assert seq.input_ids[0] == tok.bos_id
        assert (seq.input_ids[-1] == tok.eos_id) == piece.doc_end
        assert seq.input_ids[1 : 1 + len(piece.ids)] == piece.ids
        assert (seq.targets[0] == IGNORE_INDEX) == (not piece.doc_start)
        assert seq.targets[-1] == IGNORE_INDEX
    rows = stream.window_rows(0)
    eos_count = sum(r.input_ids[: r.num_tokens].count(tok.eos_id) for r in rows)
    assert eos_count == 2  # one per document


def test_ntp_sequence_continuation_layout(tok):
    whole = ntp_sequence(tok, [10, 11, 12], group=0)
    assert whole.input_ids == [tok.bos_id, 10, 11, 12, tok.eos_id]
    assert whole.targets == [10, 11, 12, tok.eos_id, IGNORE_INDEX]
    middle = ntp_sequence(tok, [10, 11, 12], group=0, doc_start=False, doc_end=False)
    assert middle.input_ids == [tok.bos_id, 10, 11, 12]
    assert middle.targets == [IGNORE_INDEX, 11, 12, IGNORE_INDEX]


def test_pairs_that_do_not_fit_are_dropped_and_counted(tok, capsys):
    """A pair with a side over the cap is left out whole (a truncated pair is no longer parallel)."""
    long, short = "slovo " * 300, "slovo"
    src = [short, long, short, "dva", short]
    tgt = [short, short, long, "two", short]
    sources = build_sources(tok, {}, {"en-cs": (src, tgt)}, seq_len=40, max_segment_tokens=1000)
    (source,) = sources
    side_cap = (40 - 4 - 2 * len(tok.lang_tag("cs"))) // 4
    assert source.dropped == 2
    assert source.records == [(tok.encode(src[i]), tok.encode(tgt[i])) for i in (0, 3, 4)]
    assert all(len(s) <= side_cap and len(t) <= side_cap for s, t in source.records)
    out = capsys.readouterr().out
    assert f"over {side_cap} tokens" in out and "cl:en-cs 2/5" in out
    stream = TrainingStream(tok, GroupTable(LANGS, PAIRS), sources, np.ones(1), seq_len=40, window=4)
    for row in stream.window_rows(0):
        assert row.num_tokens <= 40 and len(row.spans) == 2 * len(row.pairs)
    with pytest.raises(ValueError, match="cl:en-cs \\(all 1 pairs dropped"):
        build_sources(tok, {}, {"en-cs": ([long], [short])}, seq_len=40, max_segment_tokens=1000)


def test_real_tokens_are_counted_from_the_layout_not_the_pad_id(tok):
    """pad == eos (Llama-3): counting tokens that differ from the pad id would drop every eos."""
    row = Row(
        input_ids=[1, 5, 2, 1, 6, 7, 2, 2, 2],  # two sequences ending in eos (2), then padding with pad id 2
        targets=[5, 2, -100, 6, 7, 2, -100, -100, -100],
        position_ids=[0, 1, 2, 0, 1, 2, 3, 0, 1],
        groups=[0] * 9,
        spans=[],
        pairs=[],
        seq_lens=[3, 4],
    )
    assert row.num_tokens == 7 and row.segments() == [3, 4, 2]


def test_placebo_pairs_keep_every_text_but_pair_none_with_its_translation(tok):
    src = [f"veta {i}" for i in range(9)]
    tgt = [f"sentence {i}" for i in range(9)]
    (real,) = build_sources(tok, {}, {"en-cs": (src, tgt)}, seq_len=40, max_segment_tokens=16)
    (placebo,) = build_sources(
        tok, {}, {"en-cs": (src, tgt)}, seq_len=40, max_segment_tokens=16, placebo_seed=3
    )
    assert [s for s, _ in placebo.records] == [s for s, _ in real.records]  # sources in place
    assert sorted(map(tuple, (t for _, t in placebo.records))) == sorted(
        map(tuple, (t for _, t in real.records))
    )
    assert all(p != r for p, r in zip(placebo.records, real.records, strict=True))  # no pair is its own
    assert placebo.kind == "cl"  # trained as pairs: tags, masking and the map term as for real pairs
    assert placebo_records(real.records, 3, "en-cs") == placebo.records  # seeded
    assert placebo_records(real.records, 4, "en-cs") != placebo.records
    with pytest.raises(ValueError, match="data.placebo_pairs: en-cs has 1 pair"):
        placebo_records(real.records[:1], 0, "en-cs")
    # the training pipeline shuffles when the config says so, seeded by train.seed
    from clmap.config import load_config
    from clmap.data.pipeline import make_stream

    table = GroupTable(LANGS, PAIRS)
    for seed in (3, 4):
        cfg = load_config(None, ["--data.placebo_pairs=true", f"--train.seed={seed}", "--data.seq_len=40"])
        cfg.data.max_segment_tokens = 16
        stream = make_stream(cfg, tok, table, {}, {"en-cs": (src, tgt)}, seed=0)
        assert stream.sources[0].records == placebo_records(real.records, seed, "en-cs")
