"""The training stream: language-balanced blending of NTP and mapping samples, packed into rows.

Everything here is a pure function of (sources, config, seed), so a run resumes exactly from a row
position: the blended sample index is prefix-stable (csrc Megatron-style greedy), each source is
shuffled per epoch with a seeded permutation, and samples are packed window by window (best-fit
decreasing over ``pack_window`` samples), so window ``w`` always yields the same rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from clmap.data.examples import IGNORE_INDEX, GroupTable, Unit, ntp_sequence, pair_unit, text_pair_unit
from clmap.data.index import blended_index, pack_bins, temperature_weights
from clmap.data.tokenizer import ClmapTokenizer

logger = logging.getLogger(__name__)


@dataclass
class Source:
    """One stream the blender draws from: monolingual text of a language, or one language pair."""

    name: str  # ntp:cs | cl:en-cs | text:en-cs
    kind: str  # ntp | cl | text
    records: list  # token-id lists (ntp) or (src_ids, tgt_ids) tuples (cl/text)
    langs: tuple[str, ...]


@dataclass
class Row:
    """One packed row of ``seq_len`` tokens; spans index into the row."""

    input_ids: list[int]
    targets: list[int]
    position_ids: list[int]
    groups: list[int]
    spans: list[tuple[int, int]]
    pairs: list[tuple[int, int]]  # indices into spans

    @property
    def num_targets(self) -> int:
        return sum(t != IGNORE_INDEX for t in self.targets)


def build_sources(
    tok: ClmapTokenizer,
    mono: dict[str, list[str]],
    parallel: dict[str, tuple[list[str], list[str]]],
    *,
    seq_len: int,
    max_segment_tokens: int,
    parallel_as_text: bool = False,
) -> list[Source]:
    """Tokenise the corpus once: mono texts are cut into pieces that fit a row, pair sides are capped."""
    body = seq_len - 2  # room for bos and eos
    sources = []
    for lang, texts in mono.items():
        pieces = [ids[i : i + body] for ids in tok.encode_batch(texts) for i in range(0, len(ids), body)]
        sources.append(Source(f"ntp:{lang}", "ntp", [p for p in pieces if p], (lang,)))
    # Both directions of a pair share a row: 2 × (bos + src + tag + tgt + eos) ≤ seq_len.
    tag_len = max((len(tok.lang_tag(lang)) for pair in parallel for lang in pair.split("-")), default=0)
    side_cap = min(max_segment_tokens, (seq_len - 4 - 2 * tag_len) // 4)
    if side_cap < 1:
        raise ValueError(f"data.seq_len={seq_len} leaves no room for a pair in both directions")
    for pair, (src_texts, tgt_texts) in parallel.items():
        a, b = pair.split("-")
        src_ids, tgt_ids = tok.encode_batch(src_texts), tok.encode_batch(tgt_texts)
        records = [(s[:side_cap], t[:side_cap]) for s, t in zip(src_ids, tgt_ids, strict=True) if s and t]
        cut = (
            sum(len(x) > side_cap for ids in (src_ids, tgt_ids) for x in ids)
            if side_cap < max_segment_tokens
            else 0
        )
        if cut > 0.01 * 2 * len(src_ids):  # say when seq_len, not max_segment_tokens, shortens the pairs
            logger.warning(
                "%s: data.seq_len=%d leaves %d tokens per side of a pair (both directions share a row), so "
                "%d of %d sides are cut shorter than data.max_segment_tokens=%d",
                pair,
                seq_len,
                side_cap,
                cut,
                2 * len(src_ids),
                max_segment_tokens,
            )
        kind = "text" if parallel_as_text else "cl"
        sources.append(Source(f"{kind}:{pair}", kind, records, (a, b)))
    empty = [s.name for s in sources if not s.records]
    if empty:
        raise ValueError(f"no training records after tokenisation for: {', '.join(empty)}")
    return sources


def source_weights(sources: list[Source], ntp_share: float, temperature: float) -> np.ndarray:
    """Task shares first (NTP vs pairs), then temperature-smoothed sizes within each task."""
    weights = np.zeros(len(sources))
    by_task = {"ntp": [i for i, s in enumerate(sources) if s.kind == "ntp"]}
    by_task["pairs"] = [i for i, s in enumerate(sources) if s.kind != "ntp"]
    shares = {"ntp": ntp_share, "pairs": 1.0 - ntp_share}
    if not by_task["ntp"] or not by_task["pairs"]:  # only one task present: it takes everything
        shares = {task: 1.0 for task in by_task}
    for task, members in by_task.items():
        if members:
            within = temperature_weights([len(sources[i].records) for i in members], temperature)
            weights[members] = shares[task] * np.asarray(within)
    return weights / weights.sum()


class TrainingStream:
    """Rows in a fixed order; ``rows(start)`` yields from any row position (how resume works)."""

    def __init__(
        self,
        tok: ClmapTokenizer,
        groups: GroupTable,
        sources: list[Source],
        weights: np.ndarray,
        *,
        seq_len: int,
        packing: bool = True,
        window: int = 256,
        directions: str = "both",
        seed: int = 0,
    ):
        self.tok, self.groups, self.sources = tok, groups, sources
        self.weights = np.asarray(weights, dtype=np.float64)
        self.seq_len, self.packing, self.window = seq_len, packing, window
        self.directions, self.seed = directions, seed
        self._index: tuple[np.ndarray, np.ndarray] | None = None

    # -- sample order ---------------------------------------------------------------------------
    def _blend(self, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
        if self._index is None or len(self._index[0]) < num_samples:
            size = max(num_samples, 2 * len(self._index[0]) if self._index is not None else 0)
            sizes = np.array([len(s.records) for s in self.sources], dtype=np.int64)
            self._index = blended_index(self.weights, sizes, size)
        return self._index

    def _record(self, source_id: int, sample: int):
        """The ``sample``-th draw from a source: a seeded permutation per epoch of that source."""
        records = self.sources[source_id].records
        epoch, offset = divmod(int(sample), len(records))
        perm = np.random.default_rng([self.seed, source_id, epoch]).permutation(len(records))
        return records[perm[offset]]

    def _unit(self, source_id: int, record) -> Unit:
        source = self.sources[source_id]
        if source.kind == "ntp":
            return Unit([ntp_sequence(self.tok, record, self.groups[f"ntp:{source.langs[0]}"])])
        a, b = source.langs
        if source.kind == "text":
            return text_pair_unit(self.tok, self.groups[f"text:{a}-{b}"], *record)
        return pair_unit(self.tok, self.groups, record[0], record[1], a, b, self.directions)

    # -- rows -----------------------------------------------------------------------------------
    def window_rows(self, w: int) -> list[Row]:
        """All rows of packing window ``w`` (a pure function of ``w``)."""
        first = w * self.window
        source_ids, samples = self._blend(first + self.window)
        units = [
            self._unit(int(source_ids[i]), self._record(int(source_ids[i]), int(samples[i])))
            for i in range(first, first + self.window)
        ]
        return self._pack(units, w)

    def every_record_rows(self) -> list[Row]:
        """Each record of each source exactly once, packed: a fixed evaluation set (no blending)."""
        units = [self._unit(i, record) for i, source in enumerate(self.sources) for record in source.records]
        return self._pack(units, 0)

    def _pack(self, units: list[Unit], w: int) -> list[Row]:
        if self.packing:
            bins = pack_bins(np.array([len(u) for u in units], dtype=np.int64), self.seq_len)
        else:
            bins = [[i] for i in range(len(units))]
        rows = [self._make_row([units[i] for i in members]) for members in bins]
        # Best-fit decreasing orders bins by size (long NTP texts first): shuffle so every step mixes tasks.
        order = np.random.default_rng([self.seed, w, 7]).permutation(len(rows))
        return [rows[i] for i in order]

    def _make_row(self, units: list[Unit]) -> Row:
        input_ids, targets, positions, groups, spans, pairs = [], [], [], [], [], []
        for unit in units:
            first_span = len(spans)
            for seq in unit.sequences:
                offset = len(input_ids)
                input_ids += seq.input_ids
                targets += seq.targets
                positions += range(len(seq.input_ids))  # restart: no attention across sequences
                groups += [seq.group] * len(seq.input_ids)
                if seq.source_span is not None:
                    spans.append((offset + seq.source_span[0], offset + seq.source_span[1]))
            pairs += [(first_span + i, first_span + j) for i, j in unit.pairs]
        if len(input_ids) > self.seq_len:
            raise ValueError(f"packed row of {len(input_ids)} tokens exceeds seq_len={self.seq_len}")
        pad = self.seq_len - len(input_ids)
        input_ids += [self.tok.pad_id] * pad
        targets += [IGNORE_INDEX] * pad
        positions += range(pad)
        groups += [0] * pad
        return Row(input_ids, targets, positions, groups, spans, pairs)

    def rows(self, start: int = 0) -> Iterator[Row]:
        """Rows from global row position ``start`` onwards, forever (sources wrap into new epochs).

        Windows before ``start`` are re-planned to count their rows: cheap next to a training step.
        """
        w, before = 0, 0
        while True:
            rows = self.window_rows(w)
            if before + len(rows) > start:
                yield from rows[max(0, start - before) :]
            before += len(rows)
            w += 1


def collate(rows: list[Row], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Stack rows into tensors; span offsets become flat indices into the [B*T] token axis."""
    seq_len = len(rows[0].input_ids)
    starts, ends, pair_a, pair_b = [], [], [], []
    for r, row in enumerate(rows):
        base = len(starts)
        starts += [r * seq_len + s for s, _ in row.spans]
        ends += [r * seq_len + e for _, e in row.spans]
        pair_a += [base + i for i, _ in row.pairs]
        pair_b += [base + j for _, j in row.pairs]

    def tensor(values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    return {
        "input_ids": tensor([r.input_ids for r in rows]),
        "position_ids": tensor([r.position_ids for r in rows]),
        "targets": tensor([r.targets for r in rows]),
        "groups": tensor([r.groups for r in rows]),
        "span_starts": tensor(starts),
        "span_ends": tensor(ends),
        "pair_a": tensor(pair_a),
        "pair_b": tensor(pair_b),
    }
