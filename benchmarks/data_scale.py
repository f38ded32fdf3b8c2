"""Training from token stores at 1x, 10x and 100x the bundled corpus: start-up, peak RSS, data wait.

    python -m benchmarks.data_scale [--scales 1,10,100] [--build-up-to 10] [--steps 6] [--work DIR]

The corpora are synthesised from the bundled one (configs/tiny.toml's languages and pairs): at scale s
up to ``--build-up-to`` every training record is written s times with a new id (``doc#copyR``) and the
stores are built from those files by ``build_config_stores`` (the store build rate and bytes per token
come from these builds); beyond it the 1x store is repeated s times by ``repeat_store`` (the same
records a build of the repeated files writes, shards hard-linked, not tokenised again). Every run is the
tiny model for ``--steps`` steps, one process, started fresh; its peak RSS is measured in a wrapper
process per case (``run_case_subprocess``), and its peak private memory (``RssAnon``, sampled every
20 ms: RSS less the store's memory-mapped pages, which count only as far as the page cache holds them).
Start-up is launch to the first step's start: the time the first metrics record appears less that
step's own time. Data wait is the mean ``data_time_share`` of steps 2..N. A row from the texts (the
demo's path) at 1x is the baseline. Rows go to benchmarks/results/data_scale.csv with device and
commit; the resume rows (``resume_rows``: a resume's first row at row p, by counting vs from a
checkpoint's data cursor) to data_resume.csv.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import append_csv, environment_tags, run_case_subprocess

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "tiny.toml"


def _synthesise(scale: int, out: Path) -> Path:
    """The bundled train split with every record written ``scale`` times, each copy a new ``doc`` id."""
    from clmap import BUNDLED_CORPUS

    for src in sorted(BUNDLED_CORPUS.glob("*/*/train.jsonl.gz")):
        dst = out / src.relative_to(BUNDLED_CORPUS)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(src, "rt", encoding="utf-8") as f:
            records = [json.loads(line) for line in f]
        with gzip.open(dst, "wt", encoding="utf-8", compresslevel=1) as f:
            for copy in range(scale):
                for rec in records:
                    rec = {**rec, "doc": f"{rec.get('doc', '')}#copy{copy}"}
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return out


def _store_stats(root: Path) -> dict:
    """Records, tokens and on-disk bytes of every store under ``root`` (shards and index)."""
    tokens = records = shard_bytes = index_bytes = 0
    for meta_path in root.glob("*/*/store.json"):
        meta = json.loads(meta_path.read_text())
        tokens += meta["num_tokens"]
        records += meta["num_records"]
        shard_bytes += sum(s["bytes"] for s in meta["shards"])
        index_bytes += sum(p.stat().st_size for p in (meta_path.parent / "index").glob("*.npy"))
    return {"records": records, "tokens": tokens, "shard_bytes": shard_bytes, "index_bytes": index_bytes}


def build(scales: list[int], build_up_to: int, work: Path, num_proc: int) -> list[dict]:
    """The stores of every scale (kept between invocations), with the build rate of those built."""
    from clmap.config import load_config
    from clmap.data.pipeline import corpus_columns, train_tokenizer
    from clmap.data.store import build_config_stores, repeat_store

    tok_dir = work / "tokenizer"
    if not tok_dir.is_dir():
        cfg = load_config(CONFIG)
        train_tokenizer(cfg, corpus_columns(cfg), work / "tokenizer.tmp", cfg.train.seed)
        os.replace(work / "tokenizer.tmp", tok_dir)
    rows = []
    for scale in sorted(scales):
        stores = work / f"stores-{scale}x"
        row = {"scale": scale}
        if (stores / "done.json").is_file():
            rows.append(json.loads((stores / "done.json").read_text()))
            continue
        if scale <= build_up_to:
            corpus = _synthesise(scale, work / f"corpus-{scale}x")
            cfg = load_config(CONFIG, [f"--data.corpus={corpus}", f"--tokenizer.path={tok_dir}"])
            start = time.perf_counter()
            build_config_stores(cfg, stores, num_proc=num_proc)
            seconds = time.perf_counter() - start
            stats = _store_stats(stores)
            row.update(
                synthesis=f"records written x{scale} with new ids, built",
                build_s=round(seconds, 1),
                build_tokens_per_s=round(stats["tokens"] / seconds),
                build_procs=num_proc,
            )
            shutil.rmtree(corpus)
        else:
            base = work / "stores-1x"
            stores.mkdir(parents=True, exist_ok=True)
            shutil.copytree(base / "tokenizer", stores / "tokenizer", dirs_exist_ok=True)
            for meta in sorted(base.glob("*/*/store.json")):
                kind, name = meta.parent.parent.name, meta.parent.name
                repeat_store(meta.parent, stores / kind / name, scale)
            row.update(synthesis=f"1x store repeated x{scale} (repeat_store)")
            stats = _store_stats(stores)
        row.update(stats)
        row["bytes_per_token"] = round((stats["shard_bytes"] + stats["index_bytes"]) / stats["tokens"], 3)
        (stores / "done.json").write_text(json.dumps(row) + "\n")
        rows.append(row)
        print(f"stores {scale}x: {row}", flush=True)
    return rows


def run_case(case: dict) -> dict:
    """One training run (fresh process): start-up, step time, data wait; this wrapper's children's peak
    RSS is the trainer's."""
    run_dir = Path(case["run_dir"])
    shutil.rmtree(run_dir, ignore_errors=True)
    args = [
        f"--run_dir={run_dir}",
        f"--train.steps={case['steps']}",
        "--metrics.log_every=1",
        "--metrics.eval_every=0",
        "--metrics.progress=false",
        "--metrics.tensorboard=false",
        "--checkpoint.every=100000",
        "--checkpoint.export_hf=false",
        *case["args"],
    ]
    cmd = [sys.executable, "-m", "clmap.train", "--config", str(CONFIG), *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(case["threads"])}
    metrics = run_dir / "metrics.jsonl"
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first, anon = None, 0
    while proc.poll() is None:
        if first is None and metrics.is_file() and metrics.stat().st_size > 0:
            first = time.perf_counter() - start
        anon = max(anon, _anon_kib(proc.pid))
        time.sleep(0.02)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-2000:]}\n{err[-4000:]}")
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    if first is None:
        first = float("nan")
    later = records[1:] or records
    return {
        "startup_s": round(first - records[0]["step_time_s"], 2),
        "first_step_s": round(records[0]["step_time_s"], 3),
        "step_s": round(sum(r["step_time_s"] for r in later) / len(later), 3),
        "data_wait_share": round(sum(r["data_time_share"] for r in later) / len(later), 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "peak_anon_mb": round(anon / 1024, 1),
    }


def _anon_kib(pid: int) -> int:
    """The process's private memory now (``RssAnon``, KiB): its RSS less the pages of files it maps. A
    store's memory-mapped pages count in RSS as far as the page cache holds them, so ``peak_rss_mb``
    moves with the cache's state (a store just written reads back higher); this does not."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def resume_rows(stores: Path, scale: int, positions: list[int], work: Path) -> list[dict]:
    """Seconds from a fresh stream to a resumed run's first row at row p (tiny config, these stores, the
    rows of rank 0 of 2 read): counting every row before p, as a checkpoint without a data cursor must,
    against starting at the cursor a checkpoint records (``TrainingStream.cursor``)."""
    from clmap.config import load_config
    from clmap.data.examples import GroupTable
    from clmap.data.pipeline import make_stream, open_stores
    from clmap.data.tokenizer import load_tokenizer

    cfg = load_config(str(CONFIG), [f"--data.store={stores}"])
    tok = load_tokenizer(stores / "tokenizer")
    table = GroupTable(cfg.data.languages, cfg.data.pairs)
    mono, parallel = open_stores(cfg, tok)
    batch = cfg.train.global_batch

    def stream():
        return make_stream(cfg, tok, table, mono, parallel, cfg.train.seed, cache_dir=work / "resume-index")

    def keep(p: int) -> bool:
        return p % batch < batch // 2

    rows = []
    for position in positions:
        start = time.perf_counter()
        counted = stream()
        row = next(counted.rows(position, keep=keep))
        counting = time.perf_counter() - start
        cursor = counted.cursor(row, position)
        start = time.perf_counter()
        resumed = next(stream().rows(position, keep=keep, cursor=cursor))
        at_cursor = time.perf_counter() - start
        assert resumed == row, "the cursor's row differs from the counted one"
        rows.append(
            {
                "scale": scale,
                "resume_row": position,
                "counting_s": round(counting, 3),
                "cursor_s": round(at_cursor, 3),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", default="1,10,100", help="corpus sizes, multiples of the bundled one")
    parser.add_argument("--build-up-to", type=int, default=10, help="largest scale built from written files")
    parser.add_argument("--steps", type=int, default=6, help="training steps per run")
    parser.add_argument("--num-proc", type=int, default=2, help="store build processes")
    parser.add_argument("--threads", type=int, default=2, help="OMP threads of the trainer")
    parser.add_argument("--work", type=Path, default=Path("/tmp/clmap_data_scale"), help="stores, runs")
    parser.add_argument(
        "--resume-rows", default="10000,100000", help="rows a resume starts at (data_resume.csv; empty: none)"
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))), flush=True)
        return
    scales = [int(s) for s in args.scales.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    built = {row["scale"]: row for row in build(scales, args.build_up_to, args.work, args.num_proc)}
    tags = environment_tags("cpu")
    cases = [("texts", 1, [f"--tokenizer.path={args.work / 'tokenizer'}"])]
    cases += [("store", s, [f"--data.store={args.work / f'stores-{s}x'}"]) for s in scales]
    rows = []
    for source, scale, extra in cases:
        case = {"run_dir": str(args.work / f"run-{source}-{scale}x"), "steps": args.steps, "args": extra}
        case["threads"] = args.threads
        result = run_case_subprocess("benchmarks.data_scale", case)
        store = built.get(scale, {}) if source == "store" else {}
        row = {"source": source, "scale": scale, "steps": args.steps, **result}
        row.update({k: store.get(k, "") for k in ("records", "tokens", "bytes_per_token", "synthesis")})
        row.update({k: store.get(k, "") for k in ("build_s", "build_tokens_per_s", "build_procs")})
        row.update(tags)
        rows.append(row)
        print(json.dumps(row), flush=True)
    path = append_csv("data_scale", rows)
    print(f"appended {len(rows)} rows to {path}")
    positions = [int(p) for p in args.resume_rows.split(",") if p.strip()]
    if positions:
        resumes = [
            {**row, **tags}
            for s in (min(scales), max(scales))
            for row in resume_rows(args.work / f"stores-{s}x", s, positions, args.work)
        ]
        print(f"appended {len(resumes)} rows to {append_csv('data_resume', resumes)}")


if __name__ == "__main__":
    main()
