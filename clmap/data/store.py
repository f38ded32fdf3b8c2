"""Pre-tokenised token store: tokenise a corpus once, then train from memory-mapped shards.

Tokenising CulturaX-scale text on every run would dominate start-up, and holding it as Python lists would
not fit in memory. A store is a folder (format v2, docs/design.md "Token stores")::

    tokens-00000.bin ...   flat token ids (uint16 when the vocabulary fits, else uint32); a shard is closed
                           once it holds ``shard_tokens`` tokens, and a record never straddles two shards
    index/<field>.npy      one entry per record, memory-mapped on open: shard, offset, length (parallel:
                           src_*/tgt_* of both sides) and language ids into store.json's ``languages``
    store.json             written last: tokenizer (path, kind, vocab size, fingerprint), dtype, records,
                           tokens, bytes and sha256 of every shard, counts per language/pair, source files

``store.json`` is written last, so a folder without it is an unfinished build: ``build/progress.json``
records the shards closed so far, and running the same command again continues after the last of them
(the shards come out identical to an uninterrupted build). Opening a store checks every shard's size
against store.json (a truncated or missing shard is named) and, given the run's tokenizer, its fingerprint;
``verify`` re-hashes the shards' content against the sha256 store.json records for each.

    python -m clmap.data.store build --tokenizer DIR --input PATH [--input PATH ...] --kind mono|parallel \\
        --out DIR [--num-proc N] [--shard-tokens N]
    python -m clmap.data.store build --config configs/tiny.toml --out DIR [--num-proc N] [--section.key=v]
    python -m clmap.data.store verify DIR [DIR ...]    # re-hash every shard against store.json

The second form builds what ``--data.store=DIR`` trains from: ``DIR/tokenizer`` (the configured one, or
one trained on a bounded seeded sample of the corpus), ``DIR/mono/<lang>`` and ``DIR/parallel/<a-b>``
from the config's training files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, concatenate_datasets
from tqdm.auto import tqdm

from clmap.cli import UserError, add_debug_flag, run_main
from clmap.data.readers import read_monolingual, read_parallel
from clmap.data.tokenizer import ClmapTokenizer, load_tokenizer
from clmap.outputs import writable_folder

__all__ = ["build_store", "repeat_store", "TokenStore", "StoreError", "tokenizer_fingerprint", "main"]

logger = logging.getLogger(__name__)

STORE_FILE = "store.json"
INDEX_DIR = "index"
BUILD_DIR = "build"
PROGRESS_FILE = "progress.json"
FORMAT = "clmap-token-store"
VERSION = 2
DEFAULT_SHARD_TOKENS = 1 << 28  # 256 Mi tokens: 512 MiB per uint16 shard
KILL_AFTER_SHARDS = "CLMAP_STORE_KILL_AFTER_SHARDS"  # fault injection (tests): SIGKILL mid-build


class StoreError(UserError, ValueError):
    """A store that cannot be built or used as asked (wrong tokenizer, unfinished build, ...)."""


def _shard_name(i: int) -> str:
    return f"tokens-{i:05d}.bin"


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size < 65536 else np.dtype(np.uint32)


def tokenizer_fingerprint(tok: ClmapTokenizer) -> str:
    """What the ids mean: a hash of the vocabulary model (SentencePiece proto or tokenizer.json) and tag
    style, so a copy of a tokenizer matches and a retrained or different one does not."""
    digest = hashlib.sha256(f"{tok.kind}\0{tok.tag_format}\0{','.join(tok.languages)}\0".encode())
    if tok.kind == "sentencepiece":
        digest.update(tok.backend.serialized_model_proto())
    elif getattr(tok.backend, "is_fast", False):
        digest.update(tok.backend.backend_tokenizer.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tok.backend.get_vocab().items())).encode())
    return digest.hexdigest()[:16]


_TOKENIZERS: dict[str, ClmapTokenizer] = {}


def _tokenizer(path: str) -> ClmapTokenizer:
    """One tokenizer per process: pool workers load it themselves instead of unpickling a backend."""
    if path not in _TOKENIZERS:
        _TOKENIZERS[path] = load_tokenizer(path)
    return _TOKENIZERS[path]


def _pool(procs: int):
    """Tokenising processes (spawned: a forked tokenizer backend may deadlock)."""
    return multiprocessing.get_context("spawn").Pool(procs)


def _encode_block(tokenizer_path: str, columns: list[list[str]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(lengths, flat ids) of each column of a block of records (runs in a pool worker)."""
    tok = _tokenizer(tokenizer_path)
    out = []
    for texts in columns:
        ids = tok.encode_batch(texts)
        lengths = np.fromiter((len(x) for x in ids), np.int64, len(ids))
        flat = np.fromiter((t for x in ids for t in x), np.int64, int(lengths.sum()))
        out.append((lengths, flat))
    return out


def _read_inputs(inputs: Sequence[str | Path], kind: str, reader_kwargs: dict[str, Any]) -> Dataset:
    reader = read_monolingual if kind == "mono" else read_parallel
    parts = [reader(path, **reader_kwargs) for path in inputs]
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)  # type: ignore[arg-type]


def _sources(inputs: Sequence[str | Path]) -> list[dict[str, Any]]:
    out = []
    for item in inputs:
        p = Path(item)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            st = f.stat()
            out.append({"path": str(f.resolve()), "size": st.st_size, "mtime": st.st_mtime})
    return out


def _write_json(path: Path, data: dict) -> None:
    """Atomically (a killed build never leaves half a record)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


class _ShardWriter:
    """Appends records to shards, closes a shard at ``shard_tokens`` and journals every closed one."""

    def __init__(self, out: Path, fields: list[str], dtype: np.dtype, shard_tokens: int, progress: dict):
        self.out, self.fields, self.dtype, self.shard_tokens = out, fields, dtype, shard_tokens
        self.progress = progress  # {"key", "records", "languages", "shards": [{file, records, tokens}]}
        self.languages: list[str] = progress["languages"]
        self.lang_id = {code: i for i, code in enumerate(self.languages)}
        self.kill_after = int(os.environ.get(KILL_AFTER_SHARDS, "0") or 0)
        self._open()

    def _open(self) -> None:
        i = len(self.progress["shards"])
        self.fh = open(self.out / _shard_name(i), "wb")  # a partial shard of a killed build is rewritten
        self.hash = hashlib.sha256()  # of the shard's bytes as written: store.json keeps it (``verify``)
        self.filled, self.records = 0, 0
        self.cols: dict[str, list[np.ndarray]] = {f: [] for f in self.fields}

    def _close(self) -> None:
        self.fh.close()
        i = len(self.progress["shards"])
        arrays = {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in self.cols.items()}
        np.savez(self.out / BUILD_DIR / f"shard-{i:05d}.npz", **arrays)
        self.progress["shards"].append(
            {
                "file": _shard_name(i),
                "records": self.records,
                "tokens": self.filled,
                "sha256": self.hash.hexdigest(),
            }
        )
        self.progress["records"] += self.records
        _write_json(self.out / BUILD_DIR / PROGRESS_FILE, self.progress)
        if self.kill_after and len(self.progress["shards"]) >= self.kill_after:
            self.fh = open(self.out / _shard_name(i + 1), "wb")
            self.fh.write(b"\0\0\0")  # a torn shard, as a kill mid-write leaves it
            self.fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    def add(self, encoded: list[tuple[np.ndarray, np.ndarray]], langs: list[list[str]], vocab: int) -> None:
        """One block: per id column (lengths, flat ids); per language column the codes."""
        n = len(encoded[0][0])
        ids_fields = [f for f in self.fields if f.endswith("length")]
        lang_fields = [f for f in self.fields if f.endswith("lang")]
        for _, flat in encoded:
            if len(flat) and int(flat.max()) >= vocab:
                raise StoreError(f"token id {int(flat.max())} >= vocab size {vocab}")
        lang_ids = []
        for codes in langs:
            for code in codes:
                if code not in self.lang_id:
                    self.lang_id[code] = len(self.languages)
                    self.languages.append(code)
            lang_ids.append(np.fromiter((self.lang_id[c] for c in codes), np.int64, n))
        starts = [np.concatenate([[0], np.cumsum(lengths)]) for lengths, _ in encoded]
        j = 0
        while j < n:
            if self.filled >= self.shard_tokens:
                self._close()
                self._open()
            # records j..k go into this shard: up to and including the one that reaches shard_tokens
            sizes = sum(lengths[j:] for lengths, _ in encoded)
            reach = np.cumsum(sizes) + self.filled
            k = j + int(np.searchsorted(reach, self.shard_tokens, side="left")) + 1
            k = min(k, n)
            # a record's columns lie next to each other (src then tgt): offsets and a scatter, no loop
            lens = [lengths[j:k] for lengths, _ in encoded]
            per_record = sum(lens)
            record_start = np.concatenate([[0], np.cumsum(per_record)[:-1]]).astype(np.int64)
            chunk = np.empty(int(per_record.sum()), self.dtype)
            before = np.zeros(k - j, np.int64)
            for c, (_, flat) in enumerate(encoded):
                offset = record_start + before
                self.cols[ids_fields[c]].append(lens[c])
                self.cols[ids_fields[c].replace("length", "offset")].append(offset + self.filled)
                lo, hi = int(starts[c][j]), int(starts[c][k])
                pos = np.repeat(offset - starts[c][j:k], lens[c]) + np.arange(lo, hi)
                chunk[pos] = flat[lo:hi]
                before = before + lens[c]
            for f, values in zip(lang_fields, lang_ids, strict=True):
                self.cols[f].append(values[j:k])
            chunk.tofile(self.fh)
            self.hash.update(chunk)
            pos = self.filled + len(chunk)
            self.filled, self.records = pos, self.records + (k - j)
            j = k

    def finish(self) -> None:
        if self.records or not self.progress["shards"]:
            self._close()
        else:  # the open shard is empty (the last record filled the previous one)
            self.fh.close()
            (self.out / _shard_name(len(self.progress["shards"]))).unlink()


def build_store(
    tokenizer: str | Path,
    inputs: Sequence[str | Path],
    kind: str,
    out: str | Path,
    *,
    num_proc: int | None = None,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    overwrite: bool = False,
    batch_size: int = 1000,
    pool: Any = None,
    **reader_kwargs: Any,
) -> Path:
    """Tokenise ``inputs`` (read with the mono/parallel reader, ``reader_kwargs`` passed on) into a store.

    Blocks of ``batch_size`` records are tokenised by ``num_proc`` processes (in order) and written by
    this one (``pool``: a pool of ``num_proc`` processes to use instead of starting one, so a series of
    builds pays the processes' start-up once); an unfinished build of the same inputs and tokenizer in
    ``out`` is continued."""
    if kind not in ("mono", "parallel"):
        raise StoreError(f"kind={kind!r}; expected 'mono' or 'parallel'")
    if shard_tokens < 1:
        raise StoreError(f"shard_tokens={shard_tokens}; expected a positive number of tokens")
    if num_proc is not None and num_proc < 1:
        raise StoreError(f"num_proc={num_proc}; expected at least 1 process")
    out = Path(out)
    tok_path = str(Path(tokenizer).resolve())
    tok = _tokenizer(tok_path)
    fingerprint = tokenizer_fingerprint(tok)
    ds = _read_inputs(inputs, kind, reader_kwargs)
    sources = _sources(inputs)
    key = {
        "kind": kind,
        "tokenizer": fingerprint,
        "shard_tokens": shard_tokens,
        "batch_size": batch_size,
        "sources": sources,
        "reader": {k: v for k, v in sorted(reader_kwargs.items())},
    }
    progress_file = out / BUILD_DIR / PROGRESS_FILE
    progress = json.loads(progress_file.read_text()) if progress_file.is_file() else None
    if overwrite and out.exists():
        shutil.rmtree(out)
        progress = None
    elif progress is not None and progress["key"] != key:
        raise StoreError(
            f"{out}: holds an unfinished build of other inputs or another tokenizer "
            f"(tokenizer {progress['key']['tokenizer']} vs {fingerprint}); pass --overwrite to start again"
        )
    elif progress is None and out.exists() and any(out.iterdir()):
        raise StoreError(f"{out}: folder exists and is not empty; pass --overwrite to replace it")
    writable_folder(out, "--out")  # before the tokenising, not after it
    (out / BUILD_DIR).mkdir(parents=True, exist_ok=True)
    if progress is None:
        progress = {"key": key, "records": 0, "languages": [], "shards": []}
        _write_json(progress_file, progress)
    elif progress["records"]:
        logger.info("%s: continuing an unfinished build after %d records", out, progress["records"])

    dtype = _token_dtype(tok.vocab_size)
    columns = ["text"] if kind == "mono" else ["src", "tgt"]
    lang_cols = ["lang"] if kind == "mono" else ["src_lang", "tgt_lang"]
    fields = (
        ["length", "offset", "lang"]
        if kind == "mono"
        else ["src_length", "src_offset", "tgt_length", "tgt_offset", "src_lang", "tgt_lang"]
    )
    writer = _ShardWriter(out, fields, dtype, shard_tokens, progress)
    n, start = len(ds), progress["records"]
    blocks = range(start, n, batch_size)
    procs = num_proc or 1
    own_pool = pool is None and procs > 1
    if own_pool:
        pool = _pool(procs)
    pending: deque = deque()

    def submit(b: int):
        part = ds[b : b + batch_size]
        texts, langs = [part[c] for c in columns], [part[c] for c in lang_cols]
        if pool is None:
            return _encode_block(tok_path, texts), langs, len(texts[0])
        return pool.apply_async(_encode_block, (tok_path, texts)), langs, len(texts[0])

    try:
        with tqdm(total=n, initial=start, desc=f"Tokenising {out.name}", unit="rec") as bar:
            queue = iter(blocks)
            for b in queue:
                pending.append(submit(b))
                if len(pending) >= 2 * procs:
                    break
            while pending:
                result, langs, count = pending.popleft()
                writer.add(result if pool is None else result.get(), langs, tok.vocab_size)
                bar.update(count)
                b = next(queue, None)
                if b is not None:
                    pending.append(submit(b))
    finally:
        if own_pool:
            pool.terminate()
    writer.finish()
    _finish_store(out, kind, tok_path, tok, fingerprint, dtype, progress, sources, shard_tokens)
    return out


def _finish_store(out, kind, tok_path, tok, fingerprint, dtype, progress, sources, shard_tokens) -> None:
    """Assemble the per-shard records into index/*.npy, then write store.json (last)."""
    parts = [np.load(out / BUILD_DIR / f"shard-{i:05d}.npz") for i in range(len(progress["shards"]))]
    index: dict[str, np.ndarray] = {}
    fields = parts[0].files if parts else []
    dtypes = {"length": np.int32, "offset": np.int64, "lang": np.uint16}
    for field in fields:
        kind_of = field.rsplit("_", 1)[-1]
        index[field] = np.concatenate([p[field] for p in parts]).astype(dtypes[kind_of])
    counts_in_shard = [s["records"] for s in progress["shards"]]
    index["shard"] = np.repeat(np.arange(len(counts_in_shard), dtype=np.uint32), counts_in_shard)
    tokenizer = {"path": tok_path, "kind": tok.kind, "vocab_size": tok.vocab_size, "fingerprint": fingerprint}
    shards = [{**s, "bytes": int(s["tokens"]) * dtype.itemsize} for s in progress["shards"]]
    head = {"kind": kind, "tokenizer": tokenizer, "dtype": dtype.name, "shard_tokens": shard_tokens}
    _write_store(out, head, index, shards, progress["languages"], sources)
    shutil.rmtree(out / BUILD_DIR)


def _write_store(out: Path, head: dict, index: dict, shards: list, languages: list, sources: list) -> None:
    """index/*.npy, then store.json (last): counts per language/pair and the store's fingerprint (the
    tokenizer's, every record's place and length, and every shard's content hash where recorded)."""
    (out / INDEX_DIR).mkdir(exist_ok=True)
    for field, values in index.items():
        np.save(out / INDEX_DIR / f"{field}.npy", values)
    kind = head["kind"]
    n = len(index["shard"])
    total = (
        index["length"].astype(np.int64)
        if kind == "mono"
        else (index["src_length"].astype(np.int64) + index["tgt_length"])
    )
    names = np.asarray(languages, dtype=object)
    if not n:
        keys = np.zeros(0, object)
    elif kind == "mono":
        keys = names[index["lang"]]
    else:
        keys = names[index["src_lang"]] + "-" + names[index["tgt_lang"]]
    counts = {}
    for key in sorted(set(keys.tolist())):
        mask = keys == key
        counts[key] = {"records": int(mask.sum()), "tokens": int(total[mask].sum())}
    digest = hashlib.sha256(head["tokenizer"]["fingerprint"].encode())
    for field in sorted(index):
        digest.update(field.encode())
        digest.update(np.ascontiguousarray(index[field]).tobytes())
    for shard in shards:  # stores built before shard hashes were recorded keep their fingerprint
        digest.update(shard.get("sha256", "").encode())
    meta = {
        "format": FORMAT,
        "version": VERSION,
        **head,
        "fingerprint": digest.hexdigest()[:16],
        "num_records": n,
        "num_tokens": int(sum(s["tokens"] for s in shards)),
        "shards": shards,
        "languages": languages,
        "counts": counts,
        "sources": sources,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_json(out / STORE_FILE, meta)
    logger.info("%s: %d records, %d tokens in %d shard(s)", out, n, meta["num_tokens"], len(shards))


def repeat_store(source: str | Path, out: str | Path, times: int) -> Path:
    """A store of ``source``'s records repeated ``times`` times, in order (scale benchmarks): what a build
    of the corpus written out ``times`` times would hold, made by hard-linking the shards (copying where
    links are not possible) instead of tokenising again."""
    if times < 1:
        raise StoreError(f"times={times}; expected at least 1")
    src = TokenStore(source)
    out = Path(out)
    if out.exists():
        raise StoreError(f"{out}: exists; repeat_store writes a new folder")
    out.mkdir(parents=True)
    shards = []
    for r in range(times):
        for i, shard in enumerate(src.meta["shards"]):
            j = r * len(src.meta["shards"]) + i
            target = out / _shard_name(j)
            try:
                os.link(src.directory / shard["file"], target)
            except OSError:
                shutil.copyfile(src.directory / shard["file"], target)
            shards.append({**shard, "file": _shard_name(j)})
    index = {}
    for field, values in src.index.items():
        tiled = np.tile(np.asarray(values), times)
        if field == "shard":
            step = np.repeat(np.arange(times, dtype=np.uint32) * len(src.meta["shards"]), len(values))
            tiled = (tiled + step).astype(np.uint32)
        index[field] = tiled
    head = {k: src.meta[k] for k in ("kind", "tokenizer", "dtype", "shard_tokens")}
    sources = [{**s, "repeated": times} for s in src.meta.get("sources", [])]
    _write_store(out, head, index, shards, src.languages, sources)
    return out


class TokenStore:
    """Read-only store view: ``store[i]`` is a token-id array (mono) or ``(src, tgt, src_lang, tgt_lang)``.

    The index arrays and the shards are memory-mapped (``np.load(mmap_mode="r")``, ``np.memmap``), so
    opening costs the same for any corpus size and pages load on demand; pickling (DataLoader workers)
    sends only the folder. Opening checks every shard's size and every index array's length against
    store.json (a truncated shard is named) and, when given, the tokenizer's fingerprint.
    """

    def __init__(
        self, directory: str | Path, vocab_size: int | None = None, tokenizer: ClmapTokenizer | None = None
    ):
        self.directory = Path(directory)
        meta_path = self.directory / STORE_FILE
        if not meta_path.is_file():
            building = (self.directory / BUILD_DIR / PROGRESS_FILE).is_file()
            raise StoreError(
                f"{self.directory}: no {STORE_FILE}; "
                + (
                    "an unfinished build: run the same build command again to finish it"
                    if building
                    else "not a token store or an unfinished build"
                )
            )
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StoreError(f"{meta_path}: not valid JSON ({exc})") from None
        if self.meta.get("format") != FORMAT or self.meta.get("version") != VERSION:
            raise StoreError(
                f"{meta_path}: format {self.meta.get('format')!r} v{self.meta.get('version')}; "
                f"expected {FORMAT!r} v{VERSION} (rebuild the store with python -m clmap.data.store build)"
            )
        recorded = self.meta["tokenizer"]
        stored = recorded["vocab_size"]
        if tokenizer is not None:
            vocab_size = tokenizer.vocab_size
        if vocab_size is not None and vocab_size != stored:
            raise StoreError(
                f"{self.directory}: store was tokenised with vocab size {stored} "
                f"({recorded['path']}), but the tokenizer given has vocab size {vocab_size}; "
                "rebuild the store with this tokenizer"
            )
        if tokenizer is not None and tokenizer_fingerprint(tokenizer) != recorded["fingerprint"]:
            raise StoreError(
                f"{self.directory}: store was tokenised with tokenizer {recorded['path']} (fingerprint "
                f"{recorded['fingerprint']}), but the run's tokenizer has fingerprint "
                f"{tokenizer_fingerprint(tokenizer)}; rebuild the store with the run's tokenizer or "
                "train with the store's (tokenizer.path)"
            )
        self.kind: str = self.meta["kind"]
        self.languages: list[str] = self.meta["languages"]
        self.dtype = np.dtype(self.meta["dtype"])
        self.fingerprint: str = self.meta["fingerprint"]
        self._check_files()
        fields = (
            ("length", "offset", "lang")
            if self.kind == "mono"
            else ("src_length", "src_offset", "tgt_length", "tgt_offset", "src_lang", "tgt_lang")
        )
        self.index = {
            f: np.load(self.directory / INDEX_DIR / f"{f}.npy", mmap_mode="r") for f in (*fields, "shard")
        }
        self._maps: dict[int, np.memmap] = {}
        for src in self.meta.get("sources", []):
            p = Path(src["path"])
            if p.is_file() and (p.stat().st_size != src["size"] or p.stat().st_mtime != src["mtime"]):
                logger.warning("%s: source %s changed since the store was built", self.directory, p)

    def _check_files(self) -> None:
        """Every shard and index file present, of the size store.json records (issue 23: a truncated
        shard would otherwise read back silently short)."""
        for shard in self.meta["shards"]:
            path = self.directory / shard["file"]
            if not path.is_file():
                raise StoreError(f"{path}: shard missing (store.json records {shard['tokens']} tokens)")
            size = path.stat().st_size
            if size != shard["bytes"]:
                raise StoreError(
                    f"{path}: shard is {size} bytes, store.json records {shard['bytes']} "
                    f"({shard['tokens']} {self.dtype.name} tokens); the store is damaged, rebuild it"
                )
        n = int(self.meta["num_records"])
        for path in sorted((self.directory / INDEX_DIR).glob("*.npy")) or [self.directory / INDEX_DIR]:
            if not path.is_file():
                raise StoreError(f"{path}: index missing; the store is damaged, rebuild it")
            try:
                length = len(np.load(path, mmap_mode="r"))
            except ValueError as exc:
                raise StoreError(
                    f"{path}: unreadable index ({exc}); the store is damaged, rebuild it"
                ) from None
            if length != n:
                raise StoreError(f"{path}: {length} entries, store.json records {n}; rebuild the store")

    def verify(self, progress: bool = True) -> int:
        """Re-hash every shard against store.json (what opening does not do: it checks sizes only, so
        a shard overwritten in place or damaged on disk is found here); the bytes checked. Raises
        ``StoreError`` naming the first shard that differs, or a store built before hashes were kept."""
        unhashed = [s["file"] for s in self.meta["shards"] if "sha256" not in s]
        if unhashed:
            raise StoreError(
                f"{self.directory}: no content hash recorded for {', '.join(unhashed[:3])}"
                f"{' ...' if len(unhashed) > 3 else ''} (built before shard hashes); rebuild the store"
            )
        total = sum(int(s["bytes"]) for s in self.meta["shards"])
        with tqdm(
            total=total, unit="B", unit_scale=True, desc=f"verify {self.directory.name}", disable=not progress
        ) as bar:
            for shard in self.meta["shards"]:
                digest = hashlib.sha256()
                with open(self.directory / shard["file"], "rb") as fh:
                    while block := fh.read(1 << 26):
                        digest.update(block)
                        bar.update(len(block))
                if digest.hexdigest() != shard["sha256"]:
                    raise StoreError(
                        f"{self.directory / shard['file']}: content differs from store.json's sha256 "
                        f"{shard['sha256'][:16]}...; the store is damaged, rebuild it"
                    )
        return total

    def __len__(self) -> int:
        return int(self.meta["num_records"])

    def __getstate__(self) -> dict[str, Any]:
        return {"directory": self.directory, "vocab_size": self.meta["tokenizer"]["vocab_size"]}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["directory"], state["vocab_size"])  # type: ignore[misc]

    def _shard(self, i: int) -> np.memmap:
        if i not in self._maps:
            self._maps[i] = np.memmap(self.directory / _shard_name(i), dtype=self.dtype, mode="r")
        return self._maps[i]

    def _span(self, shard: int, offset: int, length: int) -> np.ndarray:
        if length == 0:
            return np.zeros(0, self.dtype)
        return self._shard(shard)[offset : offset + length]

    def __getitem__(self, i: int):
        n = len(self)
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"record {i} out of range for a store of {n}")
        i %= n
        idx = self.index
        shard = int(idx["shard"][i])
        if self.kind == "mono":
            return self._span(shard, int(idx["offset"][i]), int(idx["length"][i]))
        return (
            self._span(shard, int(idx["src_offset"][i]), int(idx["src_length"][i])),
            self._span(shard, int(idx["tgt_offset"][i]), int(idx["tgt_length"][i])),
            self.languages[int(idx["src_lang"][i])],
            self.languages[int(idx["tgt_lang"][i])],
        )

    def lengths(self) -> np.ndarray:
        """Tokens per record (both sides for parallel), for packing plans and sampling weights."""
        if self.kind == "mono":
            return np.asarray(self.index["length"], dtype=np.int64)
        return self.index["src_length"].astype(np.int64) + self.index["tgt_length"]

    def record_langs(self) -> list[str] | list[tuple[str, str]]:
        """Language (mono) or (src, tgt) pair of every record."""
        names = self.languages
        if self.kind == "mono":
            return [names[j] for j in self.index["lang"]]
        return [
            (names[a], names[b]) for a, b in zip(self.index["src_lang"], self.index["tgt_lang"], strict=True)
        ]


# -- training from stores: the stream's records, read lazily ------------------------------------------
CHUNK = 1 << 21  # index entries read at a time by the start-up passes over a whole store


def _chunks(store: TokenStore, *fields: str, ids: np.ndarray | None = None):
    """(first position, arrays) of index ``fields`` in chunks of ``CHUNK`` entries (at ``ids`` when given),
    through maps opened for this pass and dropped after it: a start-up pass over a large store leaves no
    pages resident in the process (RSS stays flat in corpus size)."""
    maps = [np.load(store.directory / INDEX_DIR / f"{f}.npy", mmap_mode="r") for f in fields]
    n = len(maps[0]) if ids is None else len(ids)
    try:
        for start in range(0, n, CHUNK):
            if ids is None:
                yield start, [np.array(m[start : start + CHUNK]) for m in maps]
            else:
                take = np.asarray(ids[start : start + CHUNK])
                yield start, [np.asarray(m[take]) for m in maps]
    finally:
        del maps  # unmapped with the last reference (every chunk above is a copy)


def _derived(cache_dir: Path | None, store: TokenStore, name: str, compute) -> np.ndarray:
    """An index derived from a store's lengths (``compute()``): built once by rank 0 into ``cache_dir``
    (named by the store's fingerprint) and memory-mapped by every rank; in memory without a cache."""
    if cache_dir is None:
        return compute()
    import torch.distributed as dist

    from clmap.parallel import barrier

    path = Path(cache_dir) / f"{store.directory.name}-{store.fingerprint}-{name}.npy"
    if (not dist.is_initialized() or dist.get_rank() == 0) and not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npy")
        np.save(tmp, compute())
        os.replace(tmp, path)
    barrier()
    return np.load(path, mmap_mode="r")


class StorePieces:
    """A mono store's documents cut into pieces of ``body`` tokens, exactly as ``build_sources`` cuts
    texts (a document of n tokens gives ceil(n / body) pieces), read on access."""

    def __init__(self, store: TokenStore, body: int, cache_dir: Path | None = None):
        self.store, self.body = store, body

        def ends() -> np.ndarray:  # pieces of documents 0..d
            per_doc = [(n.astype(np.int64) + body - 1) // body for _, (n,) in _chunks(store, "length")]
            return np.cumsum(np.concatenate(per_doc)) if per_doc else np.zeros(0, np.int64)

        self.ends = _derived(cache_dir, store, f"pieces{body}", ends)

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def _locate(self, k: int) -> tuple[int, int]:
        if not 0 <= k < len(self):
            raise IndexError(f"piece {k} out of range for {len(self)}")
        doc = int(np.searchsorted(self.ends, k, side="right"))
        return doc, (k - (int(self.ends[doc - 1]) if doc else 0)) * self.body

    def __getitem__(self, k: int):
        from clmap.data.stream import Piece

        doc, start = self._locate(int(k))
        ids = self.store[doc]
        return Piece(ids[start : start + self.body].tolist(), start == 0, start + self.body >= len(ids))

    def shape(self, k: int):
        """The piece with zeros for ids: its length and flags from the index, no shard read."""
        from clmap.data.stream import Piece

        doc, start = self._locate(int(k))
        n = int(self.store.index["length"][doc])
        return Piece([0] * min(self.body, n - start), start == 0, start + self.body >= n)

    def token_counts(self) -> np.ndarray:
        """Tokens of every piece, in order (for a token budget)."""
        lengths = self.store.index["length"].astype(np.int64)
        pieces = np.diff(np.concatenate([[0], self.ends]))
        doc = np.repeat(np.arange(len(lengths)), pieces)
        first = np.repeat(np.concatenate([[0], self.ends[:-1]]), pieces)
        return np.minimum(self.body, lengths[doc] - (np.arange(len(doc)) - first) * self.body)

    def total_tokens(self) -> int:
        """Tokens of all pieces: of each document its first pieces' tokens, summed chunk by chunk."""
        total = 0
        for start, (lengths,) in _chunks(self.store, "length"):
            ends = np.asarray(self.ends[start : start + CHUNK], dtype=np.int64)
            before = int(self.ends[start - 1]) if start else 0
            pieces = np.diff(np.concatenate([[before], ends]))
            total += int(np.minimum(lengths.astype(np.int64), pieces * self.body).sum())
        return total

    def head(self, k: int) -> StorePieces:
        """The first ``k`` pieces (a token budget)."""
        view = object.__new__(StorePieces)
        view.store, view.body = self.store, self.body
        view.ends = np.minimum(self.ends, k)
        return view


class StorePairs:
    """A parallel store's records that fit a row (``keep``: their record ids), read on access as
    ``(src_ids, tgt_ids)`` like ``build_sources``' pairs. ``targets``: the record whose target side each
    pair takes (the placebo arm's derangement; default its own)."""

    def __init__(
        self,
        store: TokenStore,
        keep: np.ndarray,
        tokens: int | None = None,
        targets: np.ndarray | None = None,
    ):
        self.store, self.keep, self.tokens = store, keep, tokens  # tokens: of all kept pairs, when known
        self.targets = keep if targets is None else targets

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, k: int):
        src, tgt, _, _ = self.store[int(self.keep[k])]
        if self.targets is not self.keep:
            tgt = self.store[int(self.targets[k])][1]
        return src.tolist(), tgt.tolist()

    def shape(self, k: int):
        idx = self.store.index
        return [0] * int(idx["src_length"][int(self.keep[k])]), [0] * int(
            idx["tgt_length"][int(self.targets[k])]
        )

    def token_counts(self) -> np.ndarray:
        idx = self.store.index
        return idx["src_length"][self.keep].astype(np.int64) + idx["tgt_length"][self.targets]

    def total_tokens(self) -> int:
        """Tokens of both sides of every kept pair: known from the derivation (a derangement of the
        targets keeps their sum), else summed chunk by chunk (a budgeted view)."""
        if self.tokens is not None:
            return self.tokens
        return sum(
            int(lengths.astype(np.int64).sum())
            for field, ids in (("src_length", self.keep), ("tgt_length", self.targets))
            for _, (lengths,) in _chunks(self.store, field, ids=ids)
        )

    def head(self, k: int) -> StorePairs:
        return StorePairs(self.store, self.keep[:k], targets=self.targets[:k])


def store_sources(
    tok: ClmapTokenizer,
    mono: dict[str, TokenStore],
    parallel: dict[str, TokenStore],
    *,
    seq_len: int,
    max_segment_tokens: int,
    parallel_as_text: bool = False,
    placebo_seed: int | None = None,
    cache_dir: Path | None = None,
):
    """The stream's sources from stores, record for record those ``build_sources`` makes of the same
    texts (same cut, same pairs dropped, the same placebo pairing), reading no token until a record is
    drawn."""
    from clmap.data.stream import Source, check_sources, pair_side_cap, placebo_targets

    sources = [
        Source(f"ntp:{lang}", "ntp", StorePieces(s, seq_len - 2, cache_dir), (lang,))
        for lang, s in mono.items()
    ]
    side_cap = pair_side_cap(tok, list(parallel), seq_len, max_segment_tokens)
    for pair, store in parallel.items():
        a, b = pair.split("-")

        def kept(store=store) -> np.ndarray:
            both, tokens, fits = 0, 0, []
            for start, (src, tgt) in _chunks(store, "src_length", "tgt_length"):
                has = (src > 0) & (tgt > 0)
                both += int(has.sum())
                fit = np.flatnonzero(has & (src <= side_cap) & (tgt <= side_cap))
                tokens += int(src[fit].astype(np.int64).sum() + tgt[fit].sum())
                fits.append(fit + start)
            return np.concatenate([[both, tokens], *fits]).astype(np.int64)

        # [pairs with both sides, tokens of the kept ones, kept ids...]
        found = _derived(cache_dir, store, f"pairs{side_cap}", kept)
        kind = "text" if parallel_as_text else "cl"
        keep, targets = found[2:], None
        if placebo_seed is not None:
            n = len(keep)
            order = _derived(
                cache_dir,
                store,
                f"placebo{side_cap}-{placebo_seed}",
                lambda n=n, pair=pair: placebo_targets(n, placebo_seed, pair),
            )
            targets = keep[np.asarray(order)]
        records = StorePairs(store, keep, tokens=int(found[1]), targets=targets)
        sources.append(Source(f"{kind}:{pair}", kind, records, (a, b), dropped=int(found[0]) - len(records)))
    return check_sources(sources, side_cap, max_segment_tokens, seq_len)


# -- building the stores of a config ------------------------------------------------------------------
def build_config_stores(
    cfg, out: str | Path, *, num_proc: int | None = None, shard_tokens: int = DEFAULT_SHARD_TOKENS
) -> Path:
    """Everything ``--data.store=OUT`` trains from, for ``cfg``'s languages and pairs: ``OUT/tokenizer``
    (``tokenizer.path``/``model.path`` copied, or trained on a bounded seeded sample of the corpus as the
    trainer would), ``OUT/mono/<lang>`` and ``OUT/parallel/<a-b>`` from the config's training files
    (with ``data.parallel_as_mono``: ``OUT/mono/<lang>`` of ``merged_documents`` only). A finished store
    is kept and an unfinished one continued, so the command resumes after a kill."""
    from clmap.data.pipeline import corpus_columns, split_files, store_folder, train_tokenizer
    from clmap.data.tokenizer import META_FILE

    out = Path(out)
    tok_dir = out / "tokenizer"
    if not (tok_dir / META_FILE).is_file():
        source = cfg.tokenizer.path or cfg.model.path
        tmp = out / "tokenizer.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        if source:
            load_tokenizer(source, tag_format=cfg.tokenizer.tag_format or None).save(tmp)
        else:
            print(f"training the tokenizer on {cfg.tokenizer.train_sentences} sampled texts", flush=True)
            train_tokenizer(cfg, corpus_columns(cfg), tmp, cfg.train.seed)
        os.replace(tmp, tok_dir)
    mono, parallel = split_files(cfg, "train")
    check_layout(out, cfg, building=True)
    if cfg.data.parallel_as_mono:  # one store per language: its documents and its pairs' sides, merged
        mono, parallel = {lang: merged_documents(cfg, lang, out) for lang in mono}, {}
    jobs = [("mono", lang, path, {"lang": lang}) for lang, path in mono.items()]
    jobs += [
        ("parallel", pair, path, {"src_lang": pair.split("-")[0], "tgt_lang": pair.split("-")[1]})
        for pair, path in parallel.items()
    ]
    pool = _pool(num_proc) if num_proc and num_proc > 1 else None  # one for every store
    try:
        for kind, name, path, kwargs in jobs:
            folder = store_folder(out, kind, name)
            if (folder / STORE_FILE).is_file():
                TokenStore(folder, tokenizer=_tokenizer(str(tok_dir.resolve())))  # complete and consistent
                print(f"{folder}: done", flush=True)
                continue
            build_store(
                tok_dir,
                [path],
                kind,
                folder,
                num_proc=num_proc,
                shard_tokens=shard_tokens,
                pool=pool,
                **kwargs,
            )
            meta = json.loads((folder / STORE_FILE).read_text())
            print(f"{folder}: {meta['num_records']} records, {meta['num_tokens']} tokens", flush=True)
    finally:
        if pool is not None:
            pool.terminate()
    return out


LAYOUT_FILE = "layout.json"  # a build --config folder: whether its mono stores hold the pairs' sides too
MERGED_DIR = "merged"


def check_layout(root: Path, cfg, building: bool = False) -> None:
    """A folder of stores is built for ``data.parallel_as_mono`` or not (its mono stores differ), and
    read only as it was built; a build records it (``layout.json``) before its first store."""
    want = {"parallel_as_mono": bool(cfg.data.parallel_as_mono)}
    if want["parallel_as_mono"]:
        want["pairs"] = list(cfg.data.pairs)
    path = root / LAYOUT_FILE
    have = json.loads(path.read_text()) if path.is_file() else None
    if have is None and not building:
        have = {"parallel_as_mono": False}  # folders built before the layout was recorded
    if have is None:
        root.mkdir(parents=True, exist_ok=True)
        _write_json(path, want)
    elif have != want:
        how = "with" if want["parallel_as_mono"] else "without"
        raise StoreError(
            f"{root}: its stores were built for {have} and the config asks for {want}; build a folder of "
            f"stores {how} data.parallel_as_mono (python -m clmap.data.store build --config ... "
            f"--data.parallel_as_mono={str(want['parallel_as_mono']).lower()} --out OTHER)"
        )


def merged_documents(cfg, lang: str, out: Path) -> Path:
    """``data.parallel_as_mono``'s documents of ``lang`` as one JSONL file under ``out/merged``: the
    language's own documents, then the side of each pair that is in it, in ``data.pairs`` order, a text
    seen before left out (what ``load_texts`` does in memory, streamed, with a set of 16-byte digests)."""
    from clmap.data.pipeline import split_files

    path = out / MERGED_DIR / f"{lang}.jsonl"
    if path.is_file():
        return path
    mono, parallel = split_files(cfg, "train")
    columns = [(read_monolingual(mono[lang], lang=lang), "text")]
    for pair, file in parallel.items():
        a, b = pair.split("-")
        if lang in (a, b):
            columns.append((read_parallel(file, src_lang=a, tgt_lang=b), "src" if lang == a else "tgt"))
    dedup = len(columns) > 1  # load_texts merges (and so deduplicates) only a language some pair has
    seen: set[bytes] = set()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for dataset, column in columns:
            for text in dataset.select_columns([column]).iter(batch_size=10_000):
                for t in text[column]:
                    key = hashlib.blake2b(t.encode(), digest_size=16).digest()
                    if dedup and key in seen:
                        continue
                    seen.add(key)
                    fh.write(json.dumps({"text": t, "lang": lang}, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 2 with one line for bad input (``--debug``: the traceback)."""
    return run_main(_main, argv, "clmap.data.store", user_errors=(FileNotFoundError,))


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m clmap.data.store", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser(
        "build",
        help="tokenise a corpus into a store (again after a kill: continues)",
        epilog="With --config, other --section.key=value arguments override the config's fields.",
    )
    b.add_argument("--config", help="build every store of this config's corpus (what --data.store reads)")
    b.add_argument("--tokenizer", help="tokenizer folder (SentencePiece or Hugging Face)")
    b.add_argument("--input", action="append", help="corpus file or folder (repeatable)")
    b.add_argument("--kind", choices=["mono", "parallel"])
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--num-proc", type=int, default=None, help="tokenising processes")
    b.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per shard file")
    b.add_argument("--lang", help="mono: language of records without a 'lang' field")
    b.add_argument("--text-field", default="text", help="mono: field holding the text")
    b.add_argument("--src-lang", help="parallel: source language")
    b.add_argument("--tgt-lang", help="parallel: target language")
    b.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    add_debug_flag(b)
    v = sub.add_parser("verify", help="re-hash every shard of stores against their store.json")
    v.add_argument("stores", nargs="+", help="store folders (or a build --config folder: all its stores)")
    add_debug_flag(v)
    args, overrides = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "verify":
        if overrides:
            parser.error(f"unrecognized arguments: {' '.join(overrides)}")
        return _verify(args.stores)
    _check_out(Path(args.out))
    if args.config:
        from clmap.config import load_config

        build_config_stores(
            load_config(args.config, overrides),
            args.out,
            num_proc=args.num_proc,
            shard_tokens=args.shard_tokens,
        )
        return 0
    if overrides:
        parser.error(f"unrecognized arguments: {' '.join(overrides)}")
    missing = [f"--{k}" for k in ("tokenizer", "input", "kind") if not getattr(args, k)]
    if missing:
        parser.error(f"without --config, {', '.join(missing)} required")
    if args.kind == "mono":
        reader_kwargs = {"lang": args.lang, "text_field": args.text_field}
    else:
        reader_kwargs = {"src_lang": args.src_lang, "tgt_lang": args.tgt_lang}
    out = build_store(
        args.tokenizer,
        args.input,
        args.kind,
        args.out,
        num_proc=args.num_proc,
        shard_tokens=args.shard_tokens,
        overwrite=args.overwrite,
        **reader_kwargs,
    )
    meta = json.loads((out / STORE_FILE).read_text())
    print(
        f"{out}: {meta['num_records']} records, {meta['num_tokens']} tokens, {len(meta['shards'])} shard(s)"
    )
    return 0


def _verify(folders: list[str]) -> int:
    """``verify``: every store named, or every store found under a folder (a ``build --config`` one)."""
    stores = []
    for folder in map(Path, folders):
        found = sorted(p.parent for p in folder.rglob(STORE_FILE)) if folder.is_dir() else []
        if not found:
            raise StoreError(f"{folder}: no {STORE_FILE} in it or under it; not a token store")
        stores += found
    for folder in stores:
        store = TokenStore(folder)
        checked = store.verify()
        print(f"{folder}: {checked} bytes in {len(store.meta['shards'])} shard(s) match store.json")
    return 0


def _check_out(out: Path) -> None:
    """The output folder can be written, checked before any reading or tokenising."""
    parent = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not parent.is_dir():
        raise StoreError(f"--out {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"--out {out}: {parent} is not writable")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
