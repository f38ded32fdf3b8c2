"""Shared fixtures: a small corpus cut from the bundled one, a tokenizer trained on it, a train launcher."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")  # the Triton kernels run on the CPU in tests

from clmap import BUNDLED_CORPUS  # noqa: E402
from clmap.launch import train_command  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
LANGS = ["en", "cs", "uk"]
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
PAIRS = ["en-cs", "cs-uk"]


def _copy_head(src: Path, dst: Path, n: int) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(src, "rt", encoding="utf-8") as f:
        lines = [line for _, line in zip(range(n), f, strict=False)]
    with gzip.open(dst, "wt", encoding="utf-8") as f:
        f.writelines(lines)


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """The first records of the bundled corpus for three languages and two pairs (same layout)."""
    root = tmp_path_factory.mktemp("corpus")
    sizes = {"train": 300, "dev": 24, "test": 24}
    for split, n in sizes.items():
        for lang in LANGS:
            _copy_head(
                BUNDLED_CORPUS / "mono" / lang / f"{split}.jsonl.gz",
                root / "mono" / lang / f"{split}.jsonl.gz",
                n,
            )
        for pair in PAIRS:
            _copy_head(
                BUNDLED_CORPUS / "parallel" / pair / f"{split}.jsonl.gz",
                root / "parallel" / pair / f"{split}.jsonl.gz",
                n,
            )
    return root


def corpus_texts(corpus: Path) -> list[str]:
    """Every training text of a corpus folder: monolingual texts and both sides of each pair."""
    texts = []
    for path in sorted(corpus.rglob("train.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                texts += [record[k] for k in ("text", "src", "tgt") if k in record]
    return texts


@pytest.fixture(scope="session")
def small_tokenizer(small_corpus, tmp_path_factory) -> Path:
    from clmap.data.tokenizer import train_sentencepiece

    out = tmp_path_factory.mktemp("tokenizer")
    train_sentencepiece(corpus_texts(small_corpus), out, LANGS, vocab_size=800)
    return out


def tiny_overrides(corpus: Path, tokenizer: Path, run_dir: Path, **extra) -> list[str]:
    """A 2-layer model on the small corpus: each step takes a fraction of a second on the CPU."""
    values = {
        "run_dir": run_dir,
        "data.corpus": corpus,
        "tokenizer.path": tokenizer,
        "data.languages": ",".join(LANGS),
        "data.pairs": ",".join(PAIRS),
        "model.hidden_size": 32,
        "model.intermediate_size": 64,
        "model.num_layers": 2,
        "model.num_heads": 2,
        "model.num_kv_heads": 1,
        "data.seq_len": 128,
        "data.max_segment_tokens": 24,
        "data.pack_window": 64,
        "train.global_batch": 8,
        "train.micro_batch": 2,
        "train.steps": 6,
        "optim.warmup_steps": 2,
        "optim.lr": 3e-3,
        "checkpoint.every": 3,
        "metrics.eval_every": 3,
        "metrics.progress": "false",
        "metrics.tensorboard": "false",
    }
    values.update(extra)
    return [f"--{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="module")
def training_setup(small_corpus, small_tokenizer, tmp_path_factory):
    """In-process training pieces: (config, one-rank DistInfo, tokenizer, group table, 3 steps of rows)."""
    from clmap.config import load_config
    from clmap.data.examples import GroupTable
    from clmap.data.pipeline import load_texts, make_stream
    from clmap.data.tokenizer import load_tokenizer
    from clmap.parallel import cleanup, init_distributed

    os.environ.pop("CLMAP_KERNEL_BACKEND", None)
    cfg = load_config(None, tiny_overrides(small_corpus, small_tokenizer, tmp_path_factory.mktemp("run")))
    saved_env = {key: os.environ.get(key) for key in DIST_ENV}
    dist_info = init_distributed("cpu", "gloo")
    tok = load_tokenizer(small_tokenizer)
    table = GroupTable(LANGS, PAIRS)
    mono, parallel = load_texts(cfg, "train")
    stream = make_stream(cfg, tok, table, mono, parallel, seed=0)
    rows = [row for _, row in zip(range(cfg.train.global_batch * 3), stream.rows(), strict=False)]
    yield cfg, dist_info, tok, table, rows
    cleanup()
    for key, value in saved_env.items():  # init_distributed set them for this process only
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def child_env() -> dict[str, str]:
    """Environment for a training subprocess: one thread per process, the CPU kernel path, no stale
    process-group variables from a group made in the test process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)  # training uses the chunked CPU path, as a CPU user would
    env.pop("CLMAP_KERNEL_BACKEND", None)
    for key in DIST_ENV:
        env.pop(key, None)
    return env


def run_train(
    overrides: list[str], nproc: int = 1, check: bool = True, **popen
) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=nproc -m clmap.train`` (plain ``python -m`` for one process)."""
    cmd = train_command(nproc, overrides)
    env = child_env()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, **popen)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc
