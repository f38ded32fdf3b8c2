"""From a config to training rows: the corpus files of a split, the tokenizer and the row streams.

What the trainer, the benchmarks and the ablation share to see the same text the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clmap import BUNDLED_CORPUS
from clmap.config import Config
from clmap.data.examples import GroupTable
from clmap.data.readers import read_monolingual, read_parallel
from clmap.data.stream import Row, TrainingStream, build_sources, source_weights
from clmap.data.tokenizer import (
    META_FILE,
    ClmapTokenizer,
    load_tokenizer,
    train_byte_level_bpe,
    train_sentencepiece,
)
from clmap.parallel import DistInfo, barrier


def corpus_file(cfg: Config, kind: str, name: str, split: str) -> Path:
    root = BUNDLED_CORPUS if cfg.data.corpus == "bundled" else Path(cfg.data.corpus)
    return root / kind / name / f"{split}.jsonl.gz"


def load_texts(
    cfg: Config, split: str
) -> tuple[dict[str, list[str]], dict[str, tuple[list[str], list[str]]]]:
    """Monolingual texts per language and parallel sides per pair of one split."""
    mono, parallel = {}, {}
    for lang in cfg.data.languages:
        path = cfg.data.mono_paths.get(lang) if split == "train" else None
        path = path or corpus_file(cfg, "mono", lang, split)
        if split != "train" and not Path(path).exists():
            continue
        mono[lang] = read_monolingual(path, lang=lang).select_columns(["text"]).to_dict()["text"]
    for pair in cfg.data.pairs:
        a, b = pair.split("-")
        path = cfg.data.parallel_paths.get(pair) if split == "train" else None
        if path is None:
            path = corpus_file(cfg, "parallel", pair, split)
            if not path.exists() and corpus_file(cfg, "parallel", f"{b}-{a}", split).exists():
                path = corpus_file(cfg, "parallel", f"{b}-{a}", split)
            if split != "train" and not path.exists():
                continue
        # read_parallel orients every record as a→b (it swaps pairs stored the other way round).
        columns = read_parallel(path, src_lang=a, tgt_lang=b).select_columns(["src", "tgt"]).to_dict()
        parallel[pair] = (columns["src"], columns["tgt"])
    if cfg.data.parallel_as_mono:  # each side its own document; a text shared by several pairs once
        for pair, sides in parallel.items():
            for lang, texts in zip(pair.split("-"), sides, strict=True):
                mono[lang] = list(dict.fromkeys([*mono.get(lang, []), *texts]))
        parallel = {}
    if cfg.data.ntp_share == 0.0:
        mono = {}
    if cfg.data.ntp_share == 1.0:
        parallel = {}
    return mono, parallel


def prepare_tokenizer(cfg: Config, run_dir: Path, dist_info: DistInfo, mono, parallel) -> ClmapTokenizer:
    """The configured tokenizer, the model's own, or a SentencePiece model trained on the corpus (rank 0).

    With ``model.init_from`` it is that run's tokenizer, copied into this run's folder on the first start
    so a resume reads its own copy."""
    if cfg.model.init_from:
        from clmap.checkpoint import init_source

        own = run_dir / "tokenizer"
        if dist_info.is_main and not (own / META_FILE).is_file():
            tag_format = cfg.tokenizer.tag_format or None
            load_tokenizer(init_source(cfg.model.init_from)[1], tag_format=tag_format).save(own)
        barrier()
        return load_tokenizer(own)
    path = cfg.tokenizer.path or cfg.model.path
    if path:
        return load_tokenizer(path, tag_format=cfg.tokenizer.tag_format or None)
    out = run_dir / "tokenizer"
    if dist_info.is_main and not (out / META_FILE).is_file():
        texts = [t for texts in mono.values() for t in texts]
        texts += [t for src, tgt in parallel.values() for t in (*src, *tgt)]
        rng = np.random.default_rng(cfg.train.seed)
        sample = [texts[i] for i in rng.permutation(len(texts))[: cfg.tokenizer.train_sentences]]
        if cfg.tokenizer.kind == "bpe":
            train_byte_level_bpe(sample, out, cfg.data.languages, vocab_size=cfg.tokenizer.vocab_size)
        else:
            train_sentencepiece(sample, out, cfg.data.languages, vocab_size=cfg.tokenizer.vocab_size)
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


def make_stream(cfg: Config, tok, table, mono, parallel, seed: int) -> TrainingStream:
    """The row stream of these texts: one source per language and pair, temperature-weighted, packed."""
    sources = build_sources(
        tok,
        mono,
        parallel,
        seq_len=cfg.data.seq_len,
        max_segment_tokens=cfg.data.max_segment_tokens,
        parallel_as_text=cfg.data.parallel_as_text,
    )
    weights = source_weights(sources, cfg.data.ntp_share, cfg.data.temperature)
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
    rows = make_stream(cfg, tok, table, mono, parallel, seed=1234).every_record_rows()
    return rows[: max(world_size, len(rows) // world_size * world_size)]
