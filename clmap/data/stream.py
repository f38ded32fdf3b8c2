"""The training stream: language-balanced blending of NTP and mapping samples, packed into rows.

Everything here is a pure function of (sources, config, seed), so a run resumes exactly from a row
position: the blended sample index is prefix-stable (csrc Megatron-style greedy), each source is
shuffled per epoch with a seeded permutation, and samples are packed window by window (best-fit
decreasing over ``pack_window`` samples), so window ``w`` always yields the same rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist

from clmap.data.examples import IGNORE_INDEX, GroupTable, Unit, ntp_sequence, pair_unit, text_pair_unit
from clmap.data.index import blended_index, pack_bins, temperature_weights
from clmap.data.tokenizer import ClmapTokenizer


class Piece(NamedTuple):
    """A monolingual record: a document, or one piece of a document longer than a row."""

    ids: list[int]
    doc_start: bool  # the document's first piece
    doc_end: bool  # the document's last piece: the only one that ends in <eos>


@dataclass
class Source:
    """One stream the blender draws from: monolingual text of a language, or one language pair."""

    name: str  # ntp:cs | cl:en-cs | text:en-cs
    kind: str  # ntp | cl | text
    records: list  # Pieces (ntp) or (src_ids, tgt_ids) tuples (cl/text)
    langs: tuple[str, ...]
    dropped: int = 0  # pairs left out because a side does not fit (cl/text)


@dataclass
class Row:
    """One row of ``seq_len`` tokens: sequences back to back, then padding; spans index into the row."""

    input_ids: list[int]
    targets: list[int]
    position_ids: list[int]
    groups: list[int]
    spans: list[tuple[int, int]]
    pairs: list[tuple[int, int]]  # indices into spans
    seq_lens: list[int]  # length of each packed sequence, in order; the padding tail is not one of them
    window: int = -1  # the packing window it came from, and its place among that window's rows
    slot: int = -1

    @property
    def num_targets(self) -> int:
        return sum(t != IGNORE_INDEX for t in self.targets)

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens, from the layout: a pad id may equal a real one (Llama-3: pad = eos)."""
        return sum(self.seq_lens)

    def segments(self) -> list[int]:
        """What attention must keep apart: each sequence, and the padding tail as a segment of its own."""
        pad = len(self.input_ids) - self.num_tokens
        return self.seq_lens + ([pad] if pad else [])


def placebo_targets(n: int, seed: int, pair: str) -> np.ndarray:
    """The placebo arm's pairing (``data.placebo_pairs``): record i takes the target of record
    ``targets[i]``, a seeded derangement (one random cycle through all n records), so the targets'
    languages, lengths and token counts are those of the real pairs and nothing is parallel."""
    if n < 2:
        raise ValueError(f"data.placebo_pairs: {pair} has {n} pair(s); a shuffle needs 2 or more")
    rng = np.random.default_rng([seed, *pair.encode("utf-8")])
    cycle = rng.permutation(n)
    targets = np.empty(n, dtype=np.int64)
    targets[cycle] = np.roll(cycle, -1)  # cycle[k] takes the target of cycle[k + 1]: no pair keeps its own
    return targets


def placebo_records(records: list, seed: int, pair: str) -> list:
    """Every source with the target of another pair of the same language pair (``placebo_targets``)."""
    targets = placebo_targets(len(records), seed, pair)
    return [(records[i][0], records[int(targets[i])][1]) for i in range(len(records))]


def build_sources(
    tok: ClmapTokenizer,
    mono: dict[str, list[str]],
    parallel: dict[str, tuple[list[str], list[str]]],
    *,
    seq_len: int,
    max_segment_tokens: int,
    parallel_as_text: bool = False,
    placebo_seed: int | None = None,
) -> list[Source]:
    """Tokenise the corpus once: mono texts are cut into pieces that fit a row (only a document's last
    piece ends in <eos>); a pair with a side too long for a row is dropped, never cut, since a truncated
    pair is no longer parallel (``Source.dropped`` counts them; rank 0 prints the count once)."""
    body = seq_len - 2  # room for bos and eos
    sources = []
    for lang, texts in mono.items():
        pieces = [
            Piece(ids[i : i + body], i == 0, i + body >= len(ids))
            for ids in tok.encode_batch(texts)
            for i in range(0, len(ids), body)
        ]
        sources.append(Source(f"ntp:{lang}", "ntp", pieces, (lang,)))
    side_cap = pair_side_cap(tok, list(parallel), seq_len, max_segment_tokens)
    for pair, (src_texts, tgt_texts) in parallel.items():
        a, b = pair.split("-")
        src_ids, tgt_ids = tok.encode_batch(src_texts), tok.encode_batch(tgt_texts)
        both = [(s, t) for s, t in zip(src_ids, tgt_ids, strict=True) if s and t]
        records = [(s, t) for s, t in both if len(s) <= side_cap and len(t) <= side_cap]
        if placebo_seed is not None:
            records = placebo_records(records, placebo_seed, pair)
        kind = "text" if parallel_as_text else "cl"
        sources.append(Source(f"{kind}:{pair}", kind, records, (a, b), dropped=len(both) - len(records)))
    return check_sources(sources, side_cap, max_segment_tokens, seq_len)


def pair_side_cap(tok: ClmapTokenizer, pairs: list[str], seq_len: int, max_segment_tokens: int) -> int:
    """Longest side a pair may have: both directions share a row, 2 × (bos + src + tag + tgt + eos) ≤
    seq_len (and no side over ``data.max_segment_tokens``)."""
    tag_len = max((len(tok.lang_tag(lang)) for pair in pairs for lang in pair.split("-")), default=0)
    side_cap = min(max_segment_tokens, (seq_len - 4 - 2 * tag_len) // 4)
    if side_cap < 1:
        raise ValueError(f"data.seq_len={seq_len} leaves no room for a pair in both directions")
    return side_cap


def check_sources(
    sources: list[Source], side_cap: int, max_segment_tokens: int, seq_len: int
) -> list[Source]:
    """Print the dropped pairs once (rank 0) and refuse a source left without records."""
    dropped = {s.name: s for s in sources if s.dropped}
    if dropped and (not dist.is_initialized() or dist.get_rank() == 0):
        counts = ", ".join(f"{name} {s.dropped}/{s.dropped + len(s.records)}" for name, s in dropped.items())
        print(
            f"data: dropped pairs with a side over {side_cap} tokens (data.max_segment_tokens="
            f"{max_segment_tokens}, data.seq_len={seq_len}): {counts}",
            flush=True,
        )
    empty = [
        s.name + (f" (all {s.dropped} pairs dropped)" if s.dropped else "") for s in sources if not s.records
    ]
    if empty:
        raise ValueError(f"no training records after tokenisation for: {', '.join(empty)}")
    return sources


def source_key(source: Source) -> str:
    """How ``data.weights`` and ``data.token_budget`` name a source: its language or its pair."""
    return "-".join(source.langs)


def token_counts(records) -> np.ndarray:
    """Tokens of every record of a source, in order (lists of texts or a store view)."""
    if hasattr(records, "token_counts"):
        return np.asarray(records.token_counts(), dtype=np.int64)
    return np.array(
        [len(r.ids) if isinstance(r, Piece) else len(r[0]) + len(r[1]) for r in records], np.int64
    )


def apply_token_budget(sources: list[Source], budget: dict[str, int]) -> list[Source]:
    """Keep of each budgeted source its first records (corpus order) whose tokens fit its budget."""
    for source in sources:
        limit = budget.get(source_key(source))
        if limit is None:
            continue
        k = int(np.searchsorted(np.cumsum(token_counts(source.records)), limit, side="right"))
        if k == 0:
            raise ValueError(
                f"data.token_budget[{source_key(source)!r}]={limit} is less than its first record"
            )
        records = source.records
        source.records = records.head(k) if hasattr(records, "head") else records[:k]
    return sources


def source_weights(
    sources: list[Source], ntp_share: float, temperature: float, weights: dict[str, float] | None = None
) -> np.ndarray:
    """Task shares first (NTP vs pairs), then within each task p_i ∝ w_i · n_i^(1/T): temperature-smoothed
    sizes times the source's ``data.weights`` entry (its language or pair; 1 when not named)."""
    weights = weights or {}
    out = np.zeros(len(sources))
    by_task = {"ntp": [i for i, s in enumerate(sources) if s.kind == "ntp"]}
    by_task["pairs"] = [i for i, s in enumerate(sources) if s.kind != "ntp"]
    shares = {"ntp": ntp_share, "pairs": 1.0 - ntp_share}
    if not by_task["ntp"] or not by_task["pairs"]:  # only one task present: it takes everything
        shares = {task: 1.0 for task in by_task}
    for task, members in by_task.items():
        if members:
            within = np.asarray(temperature_weights([len(sources[i].records) for i in members], temperature))
            if weights:
                within = within * [float(weights.get(source_key(sources[i]), 1.0)) for i in members]
                if not within.sum() > 0:
                    names = ", ".join(source_key(sources[i]) for i in members)
                    raise ValueError(f"data.weights gives every {task} source ({names}) weight 0")
                within = within / within.sum()
            out[members] = shares[task] * within
    return out / out.sum()


def mixture_lines(sources: list[Source], weights: np.ndarray) -> list[str]:
    """The mixture a run trains on, one line per source: records, tokens, sample share and the share of
    tokens it gets (sample share × mean record length, normalised)."""
    totals = [
        s.records.total_tokens() if hasattr(s.records, "total_tokens") else int(token_counts(s.records).sum())
        for s in sources
    ]
    means = np.array([total / len(s.records) for total, s in zip(totals, sources, strict=True)])
    token_share = weights * means / float((weights * means).sum())
    return [
        f"  {s.name:<14} {len(s.records):>10} records {int(means[i] * len(s.records)):>13} tokens  "
        f"samples {weights[i]:6.1%}  tokens {token_share[i]:6.1%}"
        for i, s in enumerate(sources)
    ]


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
        self._sizes = np.array([len(s.records) for s in sources], dtype=np.int64)
        # the blended index in chunks of BLEND_CHUNK samples: the two newest kept, and for every chunk
        # reached the samples each source took before it (how the next one continues)
        self._chunks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._taken_before: list[np.ndarray] = [np.zeros(len(sources), dtype=np.int64)]
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    # -- sample order ---------------------------------------------------------------------------
    BLEND_CHUNK = 1 << 20  # samples per chunk of the blended index: 12 MiB, whatever the run's length

    def _blend_chunk(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """Chunk ``c`` of the blended index (positions from c·BLEND_CHUNK): it continues from the counts
        of the chunks before it, so reaching it the first time computes those too (a resume far into a
        run replays them in C++, ~40 ms a chunk) and keeps only their counts."""
        while c not in self._chunks:
            k = min(c, len(self._taken_before) - 1)  # the first chunk not yet computed on the way to c
            chunk = blended_index(
                self.weights,
                self._sizes,
                self.BLEND_CHUNK,
                start=k * self.BLEND_CHUNK,
                taken=self._taken_before[k],
            )
            if k == len(self._taken_before) - 1:
                counts = np.bincount(chunk[0], minlength=len(self.sources))
                self._taken_before.append(self._taken_before[k] + counts)
            if k >= c - 1:  # the chunk asked for, or the one before it (a window may straddle the two)
                self._chunks[k] = chunk
                for old in [j for j in self._chunks if j < k - 1]:
                    del self._chunks[old]
        return self._chunks[c]

    def _blend(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(source ids, samples) of blended positions [first, first + count)."""
        size = self.BLEND_CHUNK
        parts = []
        for c in range(first // size, (first + count - 1) // size + 1):
            lo, hi = max(first, c * size) - c * size, min(first + count, (c + 1) * size) - c * size
            source_ids, samples = self._blend_chunk(c)
            parts.append((source_ids[lo:hi], samples[lo:hi]))
        if len(parts) == 1:
            return parts[0]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _record(self, source_id: int, sample: int, shape: bool = False):
        """The ``sample``-th draw from a source: a seeded permutation per epoch of that source (cached,
        the two newest epochs of each source). ``shape``: only its layout (a store view's zeros)."""
        records = self.sources[source_id].records
        epoch, offset = divmod(int(sample), len(records))
        key = (source_id, epoch)
        perm = self._perms.get(key)
        if perm is None:
            perm = np.random.default_rng([self.seed, source_id, epoch]).permutation(len(records))
            if len(records) < 1 << 31:  # the same order in half the memory (a large store's sources)
                perm = perm.astype(np.int32)
            self._perms[key] = perm
            for old in [k for k in self._perms if k[0] == source_id and k[1] < epoch - 1]:
                del self._perms[old]
        if shape and hasattr(records, "shape"):
            return records.shape(int(perm[offset]))
        return records[perm[offset]]

    def _unit(self, source_id: int, record) -> Unit:
        source = self.sources[source_id]
        if source.kind == "ntp":
            group = self.groups[f"ntp:{source.langs[0]}"]
            return Unit(
                [
                    ntp_sequence(
                        self.tok, record.ids, group, doc_start=record.doc_start, doc_end=record.doc_end
                    )
                ]
            )
        a, b = source.langs
        if source.kind == "text":
            return text_pair_unit(self.tok, self.groups[f"text:{a}-{b}"], *record)
        return pair_unit(self.tok, self.groups, record[0], record[1], a, b, self.directions)

    # -- rows -----------------------------------------------------------------------------------
    def window_rows(self, w: int, keep=None) -> list[Row]:
        """All rows of packing window ``w`` (a pure function of ``w``).

        ``keep(i)`` (i: the row's index in the window) says which rows need their tokens: the others
        get the layout only (zeros for ids, read from a store's index without touching its shards), so
        a rank reads only the rows it trains while every rank knows every row's loss counts."""
        source_ids, samples = self._blend(w * self.window, self.window)
        draws = list(zip(source_ids.tolist(), samples.tolist(), strict=True))
        lazy = keep is not None and any(hasattr(s.records, "shape") for s in self.sources)
        units = [self._unit(sid, self._record(sid, n, shape=lazy)) for sid, n in draws]
        bins, order = self._plan(units, w)
        if lazy:
            for i, b in enumerate(order):
                if keep(i):
                    for j in bins[b]:
                        units[j] = self._unit(draws[j][0], self._record(*draws[j]))
        rows = [self._make_row([units[j] for j in bins[b]]) for b in order]
        for slot, row in enumerate(rows):
            row.window, row.slot = w, slot
        return rows

    def every_record_rows(self) -> list[Row]:
        """Each record of each source exactly once, packed: a fixed evaluation set (no blending)."""
        units = [self._unit(i, record) for i, source in enumerate(self.sources) for record in source.records]
        return self._pack(units, 0)

    def _plan(self, units: list[Unit], w: int) -> tuple[list[list[int]], list[int]]:
        """Which units go into which row (bins), and the order the rows come out in."""
        if self.packing:
            bins = pack_bins(np.array([len(u) for u in units], dtype=np.int64), self.seq_len)
        else:
            bins = [[i] for i in range(len(units))]
        # Best-fit decreasing orders bins by size (long NTP texts first): shuffle so every step mixes tasks.
        order = np.random.default_rng([self.seed, w, 7]).permutation(len(bins))
        return bins, order.tolist()

    def _pack(self, units: list[Unit], w: int) -> list[Row]:
        bins, order = self._plan(units, w)
        return [self._make_row([units[i] for i in bins[b]]) for b in order]

    def _make_row(self, units: list[Unit]) -> Row:
        input_ids, targets, positions, groups, spans, pairs, seq_lens = [], [], [], [], [], [], []
        for unit in units:
            first_span = len(spans)
            for seq in unit.sequences:
                offset = len(input_ids)
                input_ids += seq.input_ids
                targets += seq.targets
                positions += range(len(seq.input_ids))  # restart: no attention across sequences
                groups += [seq.group] * len(seq.input_ids)
                seq_lens.append(len(seq.input_ids))
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
        return Row(input_ids, targets, positions, groups, spans, pairs, seq_lens)

    def signature(self) -> str:
        """What fixes the row order besides the records: a cursor from another stream is not used."""
        digest = hashlib.sha256(self.weights.tobytes() + self._sizes.tobytes())
        settings = (self.seq_len, self.packing, self.window, self.directions, self.seed)
        digest.update(repr((settings, [s.name for s in self.sources])).encode())
        return digest.hexdigest()[:16]

    def cursor(self, row: Row, position: int) -> dict:
        """Where the row at global ``position`` lies (its window, the rows before that window): saved with
        a checkpoint so that a resume starts at that window instead of re-planning every one before it."""
        return {"window": row.window, "rows_before": position - row.slot, "signature": self.signature()}

    def rows(self, start: int = 0, keep=None, cursor: dict | None = None) -> Iterator[Row]:
        """Rows from global row position ``start`` onwards, forever (sources wrap into new epochs).

        Without a ``cursor`` (``cursor()`` of a row at or before ``start``) the windows before ``start``
        are re-planned to count their rows (~50 µs a row). ``keep(p)`` (p: global row position) names
        the rows whose tokens are read (``window_rows``).
        """
        w, before = 0, 0
        if cursor is not None:
            if cursor["signature"] != self.signature() or not 0 <= cursor["rows_before"] <= start:
                raise ValueError(f"data cursor {cursor} is not one of this stream's at or before row {start}")
            w, before = cursor["window"], cursor["rows_before"]
        while True:
            if keep is None:
                rows = self.window_rows(w)
            else:
                rows = self.window_rows(w, keep=lambda i, b=before: keep(b + i) and b + i >= start)
            if before + len(rows) > start:
                yield from rows[max(0, start - before) :]
            before += len(rows)
            w += 1


def collate(
    rows: list[Row], device: torch.device | str = "cpu", pin_memory: bool = False
) -> dict[str, torch.Tensor | int]:
    """Stack rows into tensors; span offsets become flat indices into the [B*T] token axis.

    ``cu_seq_lens`` (int32) are the offsets of every segment of every row (its sequences and its padding
    tail) over that flat axis and ``max_seq_len`` the longest segment: computed here, on the host, so the
    attention never has to find the boundaries from position_ids (``clmap.model.PACKED_ATTENTION``).
    On a CUDA ``device`` the tensors are built in pinned host memory and copied without blocking (a
    pageable copy would wait for every kernel queued before it); ``pin_memory`` alone keeps them on the
    host, pinned, for a later ``to_device`` (the trainer's prefetch thread does this).
    """
    seq_len = len(rows[0].input_ids)
    starts, ends, pair_a, pair_b = [], [], [], []
    segments = []
    for r, row in enumerate(rows):
        base = len(starts)
        starts += [r * seq_len + s for s, _ in row.spans]
        ends += [r * seq_len + e for _, e in row.spans]
        pair_a += [base + i for i, _ in row.pairs]
        pair_b += [base + j for _, j in row.pairs]
        segments += row.segments()

    def tensor(values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long)

    cu_seq_lens = torch.tensor(np.concatenate([[0], np.cumsum(segments)]), dtype=torch.int32)
    batch = {
        "input_ids": tensor([r.input_ids for r in rows]),
        "position_ids": tensor([r.position_ids for r in rows]),
        "cu_seq_lens": cu_seq_lens,
        "max_seq_len": max(segments),
        "targets": tensor([r.targets for r in rows]),
        "groups": tensor([r.groups for r in rows]),
        "span_starts": tensor(starts),
        "span_ends": tensor(ends),
        "pair_a": tensor(pair_a),
        "pair_b": tensor(pair_b),
    }
    device = torch.device(device)
    if pin_memory or device.type == "cuda":
        batch = {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in batch.items()}
    return to_device(batch, device)


def to_device(batch: dict, device: torch.device | str) -> dict:
    """A collated batch on ``device``: tensors are copied with ``non_blocking`` (asynchronous from pinned
    memory, a no-op on the same device); other values pass through."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
