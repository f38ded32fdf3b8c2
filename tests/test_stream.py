"""Mapping examples, blending, packing and the resumable stream; packed rows never attend across sequences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import LANGS, PAIRS

from clmap.data.examples import IGNORE_INDEX, GroupTable, mapping_prompt, mapping_sequence, pair_unit
from clmap.data.stream import TrainingStream, build_sources, collate, source_weights
from clmap.data.tokenizer import load_tokenizer


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


def test_rows_are_packed_with_restarting_positions(tok):
    stream, table, *_ = _stream(tok)
    rows = [row for _, row in zip(range(40), stream.rows(), strict=False)]
    for row in rows:
        assert len(row.input_ids) == len(row.targets) == len(row.position_ids) == 96
        starts = [i for i, p in enumerate(row.position_ids) if p == 0]
        assert starts[0] == 0
        for s in starts:  # every sequence starts with bos (pad runs start with pad)
            assert row.input_ids[s] in (tok.bos_id, tok.pad_id)
        for start, end in row.spans:
            assert 0 < start < end <= 96
    assert np.mean([sum(t != IGNORE_INDEX for t in r.targets) / 96 for r in rows]) > 0.4  # packed, not padded


def test_stream_resumes_from_any_row(tok):
    stream, *_ = _stream(tok)
    reference = [row for _, row in zip(range(60), stream.rows(), strict=False)]
    fresh, *_ = _stream(tok)
    resumed = [row for _, row in zip(range(23), fresh.rows(37), strict=False)]
    assert [r.input_ids for r in resumed] == [r.input_ids for r in reference[37:60]]
    other_seed, *_ = _stream(tok, seed=1)
    assert [r.input_ids for r in other_seed.window_rows(0)] != [r.input_ids for r in stream.window_rows(0)]


def test_blend_follows_temperature_weights(tok):
    stream, _, sources, weights = _stream(tok)
    source_ids, _ = stream._blend(6000)
    observed = np.bincount(source_ids[:6000], minlength=len(sources)) / 6000
    np.testing.assert_allclose(observed, weights, atol=2e-3)
    ntp = sum(w for w, s in zip(weights, sources, strict=True) if s.kind == "ntp")
    assert ntp == pytest.approx(0.4)


def test_padded_mode_one_unit_per_row(tok):
    stream, *_ = _stream(tok, packing=False)
    for row in stream.window_rows(0):
        assert sum(1 for p in row.position_ids if p == 0) <= 3  # a pair (2 sequences) + the pad run


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


def test_packed_sequences_do_not_attend_to_each_other(tok):
    """transformers builds per-sequence attention from restarting position_ids (sdpa, no mask, no cache)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=tok.vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            attn_implementation="sdpa",
        )
    ).eval()
    first = torch.randint(4, tok.vocab_size, (1, 9))
    second = torch.randint(4, tok.vocab_size, (1, 7))
    packed = torch.cat([first, second], dim=1)
    positions = torch.cat([torch.arange(9), torch.arange(7)])[None]
    with torch.no_grad():
        together = model(input_ids=packed, position_ids=positions, use_cache=False).logits  # as in training
        alone = model(input_ids=second).logits
    torch.testing.assert_close(together[:, 9:], alone, atol=1e-5, rtol=1e-5)


def test_long_pairs_are_capped_to_fit_both_directions_in_a_row(tok):
    long = "slovo " * 300
    sources = build_sources(tok, {}, {"en-cs": ([long] * 3, [long] * 3)}, seq_len=40, max_segment_tokens=1000)
    table = GroupTable(LANGS, PAIRS)
    stream = TrainingStream(tok, table, sources, np.ones(1), seq_len=40, window=4)
    for row in stream.window_rows(0):
        assert len(row.input_ids) == 40 and len(row.spans) == 2
