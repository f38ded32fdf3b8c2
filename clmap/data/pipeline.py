"""From a config to training rows: the corpus files of a split, the tokenizer and the row streams.

What the trainer, the benchmarks and the ablation share to see the same text the same way. The train
split comes from one of two sources, into one stream: the corpus files (read and tokenised at start, for
small corpora such as the bundled one) or token stores (``data.store``: built once by
``python -m clmap.data.store build --config``, memory-mapped, read record by record as rows are drawn).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clmap import BUNDLED_CORPUS
from clmap.config import Config
from clmap.data.examples import GroupTable
from clmap.data.readers import read_monolingual, read_parallel
from clmap.data.store import StoreError, TokenStore, check_layout, store_sources
from clmap.data.stream import (
    Row,
    TrainingStream,
    apply_token_budget,
    build_sources,
    mixture_lines,
    source_weights,
)
from clmap.data.tokenizer import (
    META_FILE,
    ClmapTokenizer,
    load_tokenizer,
    train_byte_level_bpe,
    train_sentencepiece,
)
from clmap.parallel import DistInfo, barrier

STORES_FILE = "data_stores.json"  # run folder: the fingerprint of every store a run trains from


def corpus_file(cfg: Config, kind: str, name: str, split: str) -> Path:
    root = BUNDLED_CORPUS if cfg.data.corpus == "bundled" else Path(cfg.data.corpus)
    return root / kind / name / f"{split}.jsonl.gz"


def split_files(cfg: Config, split: str) -> tuple[dict[str, Path], dict[str, Path]]:
    """The file (or folder) of every language and pair of a split; other splits skip missing ones."""
    mono, parallel = {}, {}
    for lang in cfg.data.languages:
        path = cfg.data.mono_paths.get(lang) if split == "train" else None
        path = Path(path or corpus_file(cfg, "mono", lang, split))
        if split != "train" and not path.exists():
            continue
        mono[lang] = path
    for pair in cfg.data.pairs:
        a, b = pair.split("-")
        path = cfg.data.parallel_paths.get(pair) if split == "train" else None
        if path is None:
            path = corpus_file(cfg, "parallel", pair, split)
            if not path.exists() and corpus_file(cfg, "parallel", f"{b}-{a}", split).exists():
                path = corpus_file(cfg, "parallel", f"{b}-{a}", split)
            if split != "train" and not path.exists():
                continue
        parallel[pair] = Path(path)
    return mono, parallel


def load_texts(
    cfg: Config, split: str
) -> tuple[dict[str, list[str]], dict[str, tuple[list[str], list[str]]]]:
    """Monolingual texts per language and parallel sides per pair of one split."""
    mono_files, parallel_files = split_files(cfg, split)
    mono = {
        lang: read_monolingual(path, lang=lang).select_columns(["text"]).to_dict()["text"]
        for lang, path in mono_files.items()
    }
    parallel = {}
    for pair, path in parallel_files.items():
        a, b = pair.split("-")
        # read_parallel orients every record as a→b (it swaps pairs stored the other way round).
        columns = read_parallel(path, src_lang=a, tgt_lang=b).select_columns(["src", "tgt"]).to_dict()
        parallel[pair] = (columns["src"], columns["tgt"])
    if cfg.data.parallel_as_mono:  # each side its own document; a text shared by several pairs once
        for pair, sides in parallel.items():
            for lang, texts in zip(pair.split("-"), sides, strict=True):
                mono[lang] = list(dict.fromkeys([*mono.get(lang, []), *texts]))
        parallel = {}
    return _by_share(cfg, mono, parallel)


def _by_share(cfg: Config, mono: dict, parallel: dict) -> tuple[dict, dict]:
    """A task with share 0 contributes nothing (not even its tokenisation)."""
    if cfg.data.ntp_share == 0.0:
        mono = {}
    if cfg.data.ntp_share == 1.0:
        parallel = {}
    return mono, parallel


def sample_texts(columns: Sequence[Sequence[str]], n: int, seed: int) -> list[str]:
    """``n`` texts drawn without replacement from the columns taken end to end, seeded; a column may be
    a list or a lazy Arrow-backed one, so only the sample is ever read into memory.

    The draw is the first ``n`` of a seeded permutation (up to 2^24 texts; beyond, a seeded choice
    without replacement, so the index never takes more than O(n) memory)."""
    sizes = np.array([len(c) for c in columns], dtype=np.int64)
    total = int(sizes.sum())
    rng = np.random.default_rng(seed)
    if total <= 1 << 24:
        picks = rng.permutation(total)[:n]
    else:
        picks = rng.choice(total, size=min(n, total), replace=False)
    ends = np.cumsum(sizes)
    which = np.searchsorted(ends, picks, side="right")
    out: list[str] = [""] * len(picks)
    for c in np.unique(which).tolist():
        slots = np.flatnonzero(which == c)
        rows = (picks[slots] - (ends[c] - sizes[c])).tolist()
        column = columns[c]
        texts = [column[r] for r in rows] if isinstance(column, list) else _take(column, rows)
        for slot, text in zip(slots.tolist(), texts, strict=True):
            out[slot] = text
    return out


def _take(column, rows: list[int]) -> list[str]:
    """Rows of a lazy column (a ``datasets`` column: ``select`` reads only those rows)."""
    dataset, name = column.source, column.column_name
    return list(dataset.select(rows)[name])


class _LazyColumn(Sequence):
    """One text column of a ``datasets.Dataset``, with a length, read only where sampled."""

    def __init__(self, source, column_name: str):
        self.source, self.column_name = source, column_name

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i):
        return self.source[int(i)][self.column_name]


def corpus_columns(cfg: Config) -> list:
    """The training text of a config as lazy columns, in the tokenizer sample's order: each language's
    documents, then each pair's sources and targets (``sample_texts``)."""
    mono_files, parallel_files = split_files(cfg, "train")
    columns: list = [_LazyColumn(read_monolingual(p, lang=lang), "text") for lang, p in mono_files.items()]
    for pair, path in parallel_files.items():
        a, b = pair.split("-")
        ds = read_parallel(path, src_lang=a, tgt_lang=b)
        columns += [_LazyColumn(ds, "src"), _LazyColumn(ds, "tgt")]
    return columns


def train_tokenizer(cfg: Config, columns: Sequence[Sequence[str]], out: Path, seed: int) -> None:
    """Train the configured kind of tokenizer on ``tokenizer.train_sentences`` texts sampled from
    ``columns`` (``sample_texts``) into ``out``."""
    sample = sample_texts(columns, cfg.tokenizer.train_sentences, seed)
    if cfg.tokenizer.kind == "bpe":
        train_byte_level_bpe(sample, out, cfg.data.languages, vocab_size=cfg.tokenizer.vocab_size)
    else:
        train_sentencepiece(sample, out, cfg.data.languages, vocab_size=cfg.tokenizer.vocab_size)


def prepare_tokenizer(cfg: Config, run_dir: Path, dist_info: DistInfo, mono, parallel) -> ClmapTokenizer:
    """The configured tokenizer, the model's own, or a SentencePiece model trained on the corpus (rank 0).

    With ``model.init_from`` it is that run's tokenizer, and with ``data.store`` (and no tokenizer named)
    the stores' own: either is copied into this run's folder on the first start so a resume (and the
    evaluator) reads its own copy."""
    from_store = bool(cfg.data.store) and not (cfg.tokenizer.path or cfg.model.path)
    if cfg.model.init_from or from_store:
        own = run_dir / "tokenizer"
        if dist_info.is_main and not (own / META_FILE).is_file():  # the source is looked at once only
            if cfg.model.init_from:
                from clmap.checkpoint import init_source

                copy_from = init_source(cfg.model.init_from)[1]
            else:
                copy_from = Path(cfg.data.store) / "tokenizer"
                if not (copy_from / META_FILE).is_file():
                    raise StoreError(
                        f"{copy_from}: no tokenizer; build the stores with "
                        "python -m clmap.data.store build --config"
                    )
            load_tokenizer(copy_from, tag_format=cfg.tokenizer.tag_format or None).save(own)
        barrier()
        return load_tokenizer(own)
    path = cfg.tokenizer.path or cfg.model.path
    if path:
        return load_tokenizer(path, tag_format=cfg.tokenizer.tag_format or None)
    out = run_dir / "tokenizer"
    if dist_info.is_main and not (out / META_FILE).is_file():
        columns = [*mono.values(), *(side for sides in parallel.values() for side in sides)]
        tmp = run_dir / "tokenizer.tmp"  # renamed when complete: a failed training leaves no tokenizer
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            train_tokenizer(cfg, columns, tmp, cfg.train.seed)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    barrier()
    return load_tokenizer(out)


def init_vocabulary(cfg: Config, run_dir: Path) -> int:
    """The vocabulary size of the tokenizer ``model.init_from`` brings (this run's copy once it has one):
    the trainer adopts it as ``tokenizer.vocab_size``, printed and recorded in config.json, instead of
    keeping a configured size that is not the one trained."""
    from clmap.checkpoint import init_source

    own = run_dir / "tokenizer"
    folder = own if (own / META_FILE).is_file() else init_source(cfg.model.init_from)[1]
    return load_tokenizer(folder).vocab_size


def store_folder(root: str | Path, kind: str, name: str) -> Path:
    """Where ``build --config`` puts the store of a language (``mono``) or pair (``parallel``)."""
    return Path(root) / kind / name


def open_stores(cfg: Config, tok: ClmapTokenizer) -> tuple[dict[str, TokenStore], dict[str, TokenStore]]:
    """The stores of ``data.store`` for the configured languages and pairs, each checked against the
    run's tokenizer (fingerprint) and its own record (shard sizes)."""
    root = Path(cfg.data.store)
    check_layout(root, cfg)
    mono, parallel = {}, {}
    pairs = [] if cfg.data.parallel_as_mono else cfg.data.pairs  # their sides are in the mono stores
    for kind, names, into in (("mono", cfg.data.languages, mono), ("parallel", pairs, parallel)):
        for name in names:
            folder = store_folder(root, kind, name)
            if not folder.is_dir():
                raise StoreError(
                    f"{folder}: no store for {name} (data.store={root}); build it with "
                    "python -m clmap.data.store build --config ..."
                )
            into[name] = TokenStore(folder, tokenizer=tok)
    return _by_share(cfg, mono, parallel)


def check_stores(run_dir: Path, stores: dict[str, TokenStore], resuming: bool, main: bool) -> None:
    """A resumed run must train from the stores it started from: a store rebuilt or changed since is
    refused by name (its fingerprint covers the tokenizer and every record's place and length)."""
    path = run_dir / STORES_FILE
    now = {name: {"path": str(s.directory), "fingerprint": s.fingerprint} for name, s in stores.items()}
    if resuming and path.is_file():
        before = json.loads(path.read_text())
        changed = [
            f"{name} ({now[name]['path']}: fingerprint {old['fingerprint']} -> {now[name]['fingerprint']})"
            for name, old in before.items()
            if name in now and old["fingerprint"] != now[name]["fingerprint"]
        ]
        if changed:
            raise StoreError(
                f"{run_dir}: the run started from other stores; changed since: {', '.join(changed)}. "
                "Resume with the stores it started from, or start a new run_dir"
            )
    if main and not (resuming and path.is_file()):  # the first start's record; every rank may read it
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(now, indent=2) + "\n")
        os.replace(tmp, path)


def train_data(cfg: Config, run_dir: Path, dist_info: DistInfo, resuming: bool = False):
    """(tokenizer, mono, parallel) of the train split: texts, or with ``data.store`` the stores."""
    if not cfg.data.store:
        mono, parallel = load_texts(cfg, "train")
        return prepare_tokenizer(cfg, run_dir, dist_info, mono, parallel), mono, parallel
    tok = prepare_tokenizer(cfg, run_dir, dist_info, {}, {})
    mono, parallel = open_stores(cfg, tok)
    check_stores(run_dir, {**mono, **parallel}, resuming, dist_info.is_main)
    return tok, mono, parallel


def make_stream(
    cfg: Config, tok, table, mono, parallel, seed: int, cache_dir: Path | None = None, budget: bool = True
) -> TrainingStream:
    """The row stream of these texts or stores: one source per language and pair, weighted by
    temperature and ``data.weights``, within ``data.token_budget``, packed. ``cache_dir``: where rank 0
    writes the indexes derived from stores (every rank memory-maps them)."""
    kwargs = {
        "seq_len": cfg.data.seq_len,
        "max_segment_tokens": cfg.data.max_segment_tokens,
        "parallel_as_text": cfg.data.parallel_as_text,
    }
    kwargs["placebo_seed"] = cfg.train.seed if cfg.data.placebo_pairs else None
    stores = [*mono.values(), *parallel.values()]
    if stores and all(isinstance(s, TokenStore) for s in stores):
        sources = store_sources(tok, mono, parallel, cache_dir=cache_dir, **kwargs)
    else:
        sources = build_sources(tok, mono, parallel, **kwargs)
    sources = apply_token_budget(sources, cfg.data.token_budget if budget else {})
    weights = source_weights(sources, cfg.data.ntp_share, cfg.data.temperature, cfg.data.weights)
    return TrainingStream(
        tok,
        table,
        sources,
        weights,
        seq_len=cfg.data.seq_len,
        packing=cfg.data.packing,
        window=cfg.data.pack_window,
        directions=cfg.data.cl_directions,
        seed=seed,
    )


def describe_mixture(stream: TrainingStream) -> str:
    """The mixture printed at start: per source its records, tokens and target shares."""
    return "data mixture (sample share, expected token share):\n" + "\n".join(
        mixture_lines(stream.sources, stream.weights)
    )


def mixture_keys(table: GroupTable, pairs: list[str]) -> dict[str, list[int]]:
    """Loss groups by the language or pair whose source they come from (the logged ``mix/`` shares)."""
    keys: dict[str, list[int]] = {}
    for i, name in enumerate(table.names):
        kind, _, rest = name.partition(":")
        if kind == "ntp":
            key = rest
        elif kind == "text":
            key = rest
        else:
            a, b = rest.split(">")
            key = f"{a}-{b}" if f"{a}-{b}" in pairs else f"{b}-{a}"
        keys.setdefault(key, []).append(i)
    return keys


def dev_rows(cfg: Config, tok: ClmapTokenizer, table: GroupTable, world_size: int) -> list[Row]:
    """Fixed dev rows for the periodic dev loss and LAC: the first ``data.dev_pairs`` records of each dev
    file, every record once, trimmed to a multiple of the world size; empty when eval is off or no dev
    split exists."""
    mono, parallel = load_texts(cfg, "dev")
    if not cfg.metrics.eval_every or not (mono or parallel):
        return []
    n = cfg.data.dev_pairs
    mono = {k: v[:n] for k, v in mono.items()}
    parallel = {k: (s[:n], t[:n]) for k, (s, t) in parallel.items()}
    # a token budget limits the training data, not the dev set
    rows = make_stream(cfg, tok, table, mono, parallel, seed=1234, budget=False).every_record_rows()
    return rows[: max(world_size, len(rows) // world_size * world_size)]
