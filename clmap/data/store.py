"""Pre-tokenised token store: tokenise a corpus once, then read token ids from memory-mapped shards.

Tokenising CulturaX-scale text on every run would dominate start-up, and holding it as Python lists would not
fit in memory. A store is a folder::

    tokens-00000.bin ...   flat token ids (uint16 when the vocabulary fits, else uint32), shards of ~N tokens
    index.npz              per record: shard, offset, length (parallel: src_* and tgt_* of both sides) and
                           language ids into store.json's ``languages``
    store.json             tokenizer path and vocab size, dtype, counts, source files with sizes/mtimes

A record never straddles two shards (a parallel record keeps both sides in one shard). ``store.json`` is
written last, so a folder without it is an unfinished build. Build from the command line::

    python -m clmap.data.store build --tokenizer DIR --input PATH [--input PATH ...] --kind mono|parallel \\
        --out DIR [--num-proc N] [--shard-tokens N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import time
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

__all__ = ["build_store", "TokenStore", "StoreError", "main"]

logger = logging.getLogger(__name__)

STORE_FILE = "store.json"
INDEX_FILE = "index.npz"
FORMAT = "clmap-token-store"
VERSION = 1
DEFAULT_SHARD_TOKENS = 1 << 28  # 256 Mi tokens: 512 MiB per uint16 shard


class StoreError(UserError, ValueError):
    """A store that cannot be built or used as asked (wrong tokenizer, unfinished build, ...)."""


def _shard_name(i: int) -> str:
    return f"tokens-{i:05d}.bin"


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size < 65536 else np.dtype(np.uint32)


def _tokenizer_fingerprint(path: Path) -> str:
    """Content hash of the tokenizer files, so datasets' map cache never reuses ids of another tokenizer."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


_TOKENIZERS: dict[str, ClmapTokenizer] = {}


def _tokenizer(path: str) -> ClmapTokenizer:
    """One tokenizer per process: map workers load it themselves instead of unpickling a backend."""
    if path not in _TOKENIZERS:
        _TOKENIZERS[path] = load_tokenizer(path)
    return _TOKENIZERS[path]


def _tokenize_batch(
    batch: dict[str, list], columns: Sequence[str], tokenizer_path: str, fingerprint: str
) -> dict[str, list]:
    del fingerprint  # only part of the map's cache key
    tok = _tokenizer(tokenizer_path)
    return {f"{col}_ids" if col != "text" else "ids": tok.encode_batch(batch[col]) for col in columns}


def _flush(pending: list[np.ndarray], dtype: np.dtype, fh) -> None:
    if pending:
        np.concatenate(pending).astype(dtype, copy=False).tofile(fh)
        pending.clear()


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
    **reader_kwargs: Any,
) -> Path:
    """Tokenise ``inputs`` (read with the mono/parallel reader, ``reader_kwargs`` passed on) into a store."""
    if kind not in ("mono", "parallel"):
        raise StoreError(f"kind={kind!r}; expected 'mono' or 'parallel'")
    if shard_tokens < 1:
        raise StoreError(f"shard_tokens={shard_tokens}; expected a positive number of tokens")
    out = Path(out)
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise StoreError(f"{out}: folder exists and is not empty; pass --overwrite to replace it")
        shutil.rmtree(out)
    writable_folder(out, "--out")  # before the tokenising, not after it

    tok_path = str(Path(tokenizer).resolve())
    tok = _tokenizer(tok_path)
    dtype = _token_dtype(tok.vocab_size)
    ds = _read_inputs(inputs, kind, reader_kwargs)
    columns = ["text"] if kind == "mono" else ["src", "tgt"]
    id_cols = ["ids"] if kind == "mono" else ["src_ids", "tgt_ids"]
    lang_cols = ["lang"] if kind == "mono" else ["src_lang", "tgt_lang"]
    ds = ds.map(
        _tokenize_batch,
        batched=True,
        batch_size=batch_size,
        num_proc=num_proc,
        remove_columns=[c for c in ds.column_names if c not in lang_cols],
        desc="Tokenising",
        fn_kwargs={
            "columns": columns,
            "tokenizer_path": tok_path,
            "fingerprint": _tokenizer_fingerprint(Path(tok_path)),
        },
    )

    languages: list[str] = []
    lang_id: dict[str, int] = {}
    n = len(ds)
    shard = np.zeros(n, np.uint32)
    offsets = {c: np.zeros(n, np.int64) for c in id_cols}
    lengths = {c: np.zeros(n, np.int64) for c in id_cols}
    langs = {c: np.zeros(n, np.uint16) for c in lang_cols}
    shards: list[int] = []  # tokens per shard
    fh = None
    filled = 0  # tokens in the open shard
    row = 0
    with tqdm(total=n, desc=f"Writing {out.name}", unit="rec") as bar:
        for batch in ds.with_format("arrow").iter(batch_size=batch_size):
            flat = {c: batch.column(c).combine_chunks() for c in id_cols}
            lens = {
                c: flat[c].value_lengths().to_numpy(zero_copy_only=False).astype(np.int64) for c in id_cols
            }
            vals = {c: flat[c].flatten().to_numpy(zero_copy_only=False) for c in id_cols}
            starts = {c: np.concatenate([[0], np.cumsum(lens[c])]) for c in id_cols}
            for c in lang_cols:
                for j, code in enumerate(batch.column(c).to_pylist()):
                    if code not in lang_id:
                        lang_id[code] = len(languages)
                        languages.append(code)
                    langs[c][row + j] = lang_id[code]
            for c in id_cols:
                if len(vals[c]) and int(vals[c].max()) >= tok.vocab_size:
                    raise StoreError(f"token id {int(vals[c].max())} >= vocab size {tok.vocab_size}")
            pending: list[np.ndarray] = []  # pieces for the open shard, written once per batch
            for j in range(batch.num_rows):
                if fh is None or filled >= shard_tokens:
                    if fh is not None:
                        _flush(pending, dtype, fh)
                        fh.close()
                    shards.append(0)
                    fh = open(out / _shard_name(len(shards) - 1), "wb")
                    filled = 0
                shard[row] = len(shards) - 1
                for c in id_cols:
                    piece = vals[c][starts[c][j] : starts[c][j + 1]]
                    offsets[c][row], lengths[c][row] = filled, len(piece)
                    pending.append(piece)
                    filled += len(piece)
                shards[-1] = filled
                row += 1
            if fh is not None:
                _flush(pending, dtype, fh)
            bar.update(batch.num_rows)
    if fh is not None:
        fh.close()

    arrays: dict[str, np.ndarray] = {"shard": shard}
    for c in id_cols:
        prefix = "" if kind == "mono" else c[: -len("_ids")] + "_"
        arrays[f"{prefix}offset"], arrays[f"{prefix}length"] = offsets[c], lengths[c]
    for c in lang_cols:
        arrays[c] = langs[c]
    np.savez(out / INDEX_FILE, **arrays)

    counts: dict[str, dict[str, int]] = {}
    keys = (
        (
            np.asarray(languages)[langs["lang"]]
            if kind == "mono"
            else np.char.add(
                np.char.add(np.asarray(languages)[langs["src_lang"]], "-"),
                np.asarray(languages)[langs["tgt_lang"]],
            )
        )
        if n
        else np.zeros(0, str)
    )
    total = sum(lengths[c] for c in id_cols) if n else np.zeros(0, np.int64)
    for key in sorted(set(keys.tolist())):
        mask = keys == key
        counts[key] = {"records": int(mask.sum()), "tokens": int(total[mask].sum())}
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "tokenizer": {"path": tok_path, "kind": tok.kind, "vocab_size": tok.vocab_size},
        "dtype": dtype.name,
        "num_records": n,
        "num_tokens": int(sum(shards)),
        "shard_tokens": shard_tokens,
        "shards": [{"file": _shard_name(i), "tokens": t} for i, t in enumerate(shards)],
        "languages": languages,
        "counts": counts,
        "sources": _sources(inputs),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / STORE_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    logger.info("%s: %d records, %d tokens in %d shard(s)", out, n, meta["num_tokens"], len(shards))
    return out


class TokenStore:
    """Read-only store view: ``store[i]`` is a token-id array (mono) or ``(src, tgt, src_lang, tgt_lang)``.

    Shards are opened lazily with ``np.memmap``, so opening is instant and pages load on demand; pickling
    (DataLoader workers) sends only the folder. ``vocab_size`` guards against pairing a store with a
    different tokenizer, which would silently train on the wrong ids.
    """

    def __init__(self, directory: str | Path, vocab_size: int | None = None):
        self.directory = Path(directory)
        meta_path = self.directory / STORE_FILE
        if not meta_path.is_file():
            raise StoreError(f"{self.directory}: no {STORE_FILE}; not a token store or an unfinished build")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT or self.meta.get("version") != VERSION:
            raise StoreError(
                f"{meta_path}: format {self.meta.get('format')!r} v{self.meta.get('version')}; "
                f"expected {FORMAT!r} v{VERSION}"
            )
        stored = self.meta["tokenizer"]["vocab_size"]
        if vocab_size is not None and vocab_size != stored:
            raise StoreError(
                f"{self.directory}: store was tokenised with vocab size {stored} "
                f"({self.meta['tokenizer']['path']}), but the tokenizer given has vocab size {vocab_size}; "
                "rebuild the store with this tokenizer"
            )
        self.kind: str = self.meta["kind"]
        self.languages: list[str] = self.meta["languages"]
        self.dtype = np.dtype(self.meta["dtype"])
        with np.load(self.directory / INDEX_FILE) as index:
            self.index = {k: index[k] for k in index.files}
        self._maps: dict[int, np.memmap] = {}
        for src in self.meta.get("sources", []):
            p = Path(src["path"])
            if p.is_file() and (p.stat().st_size != src["size"] or p.stat().st_mtime != src["mtime"]):
                logger.warning("%s: source %s changed since the store was built", self.directory, p)

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
            return self.index["length"]
        return self.index["src_length"] + self.index["tgt_length"]

    def record_langs(self) -> list[str] | list[tuple[str, str]]:
        """Language (mono) or (src, tgt) pair of every record."""
        names = self.languages
        if self.kind == "mono":
            return [names[j] for j in self.index["lang"]]
        return [
            (names[a], names[b]) for a, b in zip(self.index["src_lang"], self.index["tgt_lang"], strict=True)
        ]


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 2 with one line for bad input (``--debug``: the traceback)."""
    return run_main(_main, argv, "clmap.data.store", user_errors=(FileNotFoundError,))


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m clmap.data.store", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="tokenise a corpus into a store")
    b.add_argument("--tokenizer", required=True, help="tokenizer folder (SentencePiece or Hugging Face)")
    b.add_argument("--input", required=True, action="append", help="corpus file or folder (repeatable)")
    b.add_argument("--kind", required=True, choices=["mono", "parallel"])
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--num-proc", type=int, default=None, help="tokenising processes")
    b.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per shard file")
    b.add_argument("--lang", help="mono: language of records without a 'lang' field")
    b.add_argument("--text-field", default="text", help="mono: field holding the text")
    b.add_argument("--src-lang", help="parallel: source language")
    b.add_argument("--tgt-lang", help="parallel: target language")
    b.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    add_debug_flag(b)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
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


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
