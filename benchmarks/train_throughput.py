"""Training throughput: clmap's trainer against a plain Hugging Face loop on the same data, in one run.

    python -m benchmarks.train_throughput [--config tiny|100m|all] [--device cpu|cuda] [--steps N]
        [--warmup W] [--nproc N] [--section.key=value ...]

clmap: ``python -m clmap.train`` (``torchrun`` when ``--nproc`` > 1): packed rows, FSDP2, bf16 on GPU,
the fused mapping loss and the pooled-similarity term. Plain: ``LlamaForCausalLM`` built from the same
model config, the same optimizer (clmap's AdamW + schedule) and the same rows of the same stream, but
unpacked (one sequence per row, right-padded to the longest of its micro-batch, with an attention
mask) and ``F.cross_entropy`` on the full logits (autocast bf16 on GPU). Both see exactly the same
non-pad tokens per optimizer step, in as many micro-batches. The first ``--warmup`` steps are skipped;
tokens/s is total non-pad tokens over total step time of the rest. Rows go to
results/train_throughput.csv; ``tokens_per_s_ratio`` is clmap per device over plain (one device).
Extra ``--section.key=value`` arguments override both runs' config (how the tests shrink the model).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import append_csv, environment_tags, run_case_subprocess
from clmap.launch import train_command

REPO = Path(__file__).resolve().parent.parent
TINY_TOML = REPO / "configs" / "tiny.toml"

# Both presets start from configs/tiny.toml (data, objective, optimizer); the 100M one changes the model
# and sequence length: 12 x (4·768² attention + 3·768·2048 MLP) + 8000·768 tied embeddings ≈ 91M parameters.
PRESETS: dict[str, list[str]] = {
    "tiny": [],
    "100m": [
        "--model.hidden_size=768",
        "--model.intermediate_size=2048",
        "--model.num_layers=12",
        "--model.num_heads=12",
        "--model.num_kv_heads=12",
        "--model.max_position=1024",
        "--data.seq_len=1024",
        "--data.max_segment_tokens=120",
    ],
}
# What a benchmark run does not need: evaluation, TensorBoard, the progress bar, exports, resuming.
BENCH_OVERRIDES = [
    "--metrics.eval_every=0",
    "--metrics.tensorboard=false",
    "--metrics.progress=false",
    "--metrics.log_every=1",
    "--checkpoint.export_hf=false",
    "--checkpoint.resume=false",
    "--checkpoint.every=1000000",
]


def summarize(records: list[dict]) -> dict[str, float | str]:
    """Aggregate measured steps: tokens over time (not a mean of rates), time-weighted shares, max memory."""
    if not records:
        raise ValueError("no measured steps: raise --steps above --warmup")
    total_time = sum(r["step_time_s"] for r in records)
    tokens = sum(r["tokens_per_s"] * r["step_time_s"] for r in records)
    out: dict[str, float | str] = {
        "tokens_per_s": tokens / total_time,
        "step_time_s": float(np.median([r["step_time_s"] for r in records])),
        "data_time_share": sum(r["data_time_share"] * r["step_time_s"] for r in records) / total_time,
        "peak_memory_gib": max(r["peak_memory_gib"] for r in records),
        "mfu": "",
    }
    if all(isinstance(r.get("mfu"), (int, float)) for r in records):
        out["mfu"] = sum(r["mfu"] * r["step_time_s"] for r in records) / total_time
    return out


# -- the plain loop (runs in its own process) ----------------------------------------------------
def unpack_row(input_ids: list[int], targets: list[int], position_ids: list[int], pad_id: int):
    """Split a packed row back into its sequences (positions restart at 0); the padding tail is dropped."""
    starts = [i for i, p in enumerate(position_ids) if p == 0] + [len(position_ids)]
    return [
        (input_ids[s:e], targets[s:e])
        for s, e in zip(starts, starts[1:], strict=False)
        if input_ids[s] != pad_id
    ]


def pad_batch(seqs: list[tuple[list[int], list[int]]], pad_id: int, device: torch.device):
    """Right-pad to the longest sequence of the micro-batch, as a plain HF collator does."""
    from clmap.data.examples import IGNORE_INDEX

    width = max(len(ids) for ids, _ in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    tgt = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s_ids, s_tgt) in enumerate(seqs):
        ids[i, : len(s_ids)] = torch.tensor(s_ids)
        tgt[i, : len(s_tgt)] = torch.tensor(s_tgt)
        mask[i, : len(s_ids)] = 1
    return ids.to(device), tgt.to(device), mask.to(device)


def plain_loop(case: dict) -> dict:
    """Train the plain baseline for ``steps`` optimizer steps and return the summary of the measured ones."""
    from clmap.config import load_config
    from clmap.data.examples import IGNORE_INDEX, GroupTable
    from clmap.data.pipeline import load_texts, make_stream
    from clmap.data.tokenizer import load_tokenizer
    from clmap.metrics import flops_per_token, peak_flops, peak_memory_gib
    from clmap.model import build_model, count_parameters, decoder_layers
    from clmap.train import build_optimizer

    cfg = load_config(case["config"], case["overrides"])
    use_cuda = cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    torch.manual_seed(cfg.train.seed)
    mono, parallel = load_texts(cfg, "train")
    tok = load_tokenizer(cfg.tokenizer.path)
    table = GroupTable(cfg.data.languages, cfg.data.pairs)
    stream = make_stream(cfg, tok, table, mono, parallel, cfg.train.seed)
    model = build_model(cfg.model, tok, device).to(device)
    model.train()
    optimizer, scheduler = build_optimizer(model, cfg)
    num_params = count_parameters(model)
    flops_tok = flops_per_token(
        num_params, len(decoder_layers(model)), model.config.hidden_size, cfg.data.seq_len
    )
    peak = peak_flops(device)
    bf16 = cfg.train.mixed_precision == "bf16" or (cfg.train.mixed_precision == "auto" and use_cuda)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    n_micro = cfg.train.global_batch // cfg.train.micro_batch
    rows_iter = stream.rows(0)
    records, padded, real = [], 0, 0
    if use_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(cfg.train.steps):
        t0 = time.perf_counter()
        rows = [next(rows_iter) for _ in range(cfg.train.global_batch)]
        seqs = [s for r in rows for s in unpack_row(r.input_ids, r.targets, r.position_ids, tok.pad_id)]
        t_data = time.perf_counter() - t0
        num_targets = sum(sum(t != IGNORE_INDEX for t in tgt) for _, tgt in seqs)
        for chunk in np.array_split(np.arange(len(seqs)), n_micro):
            if len(chunk) == 0:
                continue
            ids, tgt, mask = pad_batch([seqs[i] for i in chunk], tok.pad_id, device)
            padded, real = padded + ids.numel(), real + int(mask.sum())
            with autocast:
                logits = model(input_ids=ids, attention_mask=mask).logits
                loss = F.cross_entropy(
                    logits.flatten(0, 1), tgt.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
                )
            (loss / max(1, num_targets)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if use_cuda:
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - t0
        tokens = sum(len(ids) for ids, _ in seqs)
        record = {
            "tokens_per_s": tokens / elapsed,
            "step_time_s": elapsed,
            "data_time_share": t_data / elapsed,
            "peak_memory_gib": peak_memory_gib(device),
        }
        if peak:
            record["mfu"] = tokens * flops_tok / elapsed / peak
        records.append(record)
    summary = summarize(records[case["warmup"] :])
    summary["pad_share"] = 1 - real / max(1, padded)
    summary["params_m"] = num_params / 1e6
    return summary


# -- the driver ----------------------------------------------------------------------------------
def prepare_tokenizer_dir(overrides: list[str], work: Path) -> Path:
    """Train the SentencePiece tokenizer once, outside the timed processes, and share it by path."""
    from clmap.config import load_config
    from clmap.data.pipeline import load_texts, prepare_tokenizer
    from clmap.parallel import DistInfo

    cfg = load_config(TINY_TOML, overrides)
    if cfg.tokenizer.path or cfg.model.path:
        return Path(cfg.tokenizer.path or cfg.model.path)
    out = work / f"tokenizer_v{cfg.tokenizer.vocab_size}"
    if not (out / "tokenizer" / "tokenizer.model").is_file():
        mono, parallel = load_texts(cfg, "train")
        prepare_tokenizer(cfg, out, DistInfo(0, 1, 0, torch.device("cpu")), mono, parallel)
    return out / "tokenizer"


def run_clmap(overrides: list[str], run_dir: Path, nproc: int, warmup: int, timeout: float) -> dict:
    """The real trainer in a fresh process (torchrun for several); its metrics.jsonl is the measurement."""
    from clmap.metrics import read_metrics

    cmd = train_command(nproc, ["--config", str(TINY_TOML), *overrides, f"--run_dir={run_dir}"])
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    records = read_metrics(run_dir / "metrics.jsonl")
    return summarize(records[warmup:])


def _fmt(value, digits: int = 4):
    return round(value, digits) if isinstance(value, float) else value


def bench_config(name: str, args: argparse.Namespace, extra: list[str], work: Path) -> dict:
    """One preset: clmap then plain, both in fresh processes; the CSV row with both sides and ratios."""
    from clmap.config import load_config

    overrides = [
        *PRESETS[name],
        *BENCH_OVERRIDES,
        f"--train.steps={args.steps}",
        f"--train.device={args.device}",
        *extra,
    ]
    tok_dir = prepare_tokenizer_dir(overrides, work)
    overrides.append(f"--tokenizer.path={tok_dir}")
    cfg = load_config(TINY_TOML, overrides)
    row: dict = {
        "config": name,
        "nproc": args.nproc,
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "seq_len": cfg.data.seq_len,
        "global_batch": cfg.train.global_batch,
        "micro_batch": cfg.train.micro_batch,
        "hidden": cfg.model.hidden_size,
        "layers": cfg.model.num_layers,
    }
    results: dict[str, dict] = {}
    for impl in ("clmap", "plain"):
        start = time.perf_counter()
        try:
            if impl == "clmap":
                run_dir = work / f"run_{name}_{int(time.time() * 1e3)}"
                results[impl] = run_clmap(overrides, run_dir, args.nproc, args.warmup, args.timeout)
            else:
                results[impl] = run_case_subprocess(
                    "benchmarks.train_throughput",
                    {"config": str(TINY_TOML), "overrides": overrides, "warmup": args.warmup},
                    timeout=args.timeout,
                )
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            print(f"{name} {impl}: failed: {str(err)[-2000:]}", flush=True)
            results[impl] = {}
        print(
            f"{name} {impl}: {json.dumps({k: _fmt(v) for k, v in results[impl].items()})} "
            f"({time.perf_counter() - start:.0f} s wall)",
            flush=True,
        )
    clmap, plain = results["clmap"], results["plain"]
    row["params_m"] = _fmt(plain.get("params_m", ""), 2)
    for key in ("tokens_per_s", "mfu", "peak_memory_gib", "data_time_share", "step_time_s"):
        row[f"clmap_{key}"] = _fmt(clmap.get(key, ""))
        row[f"plain_{key}"] = _fmt(plain.get(key, ""))
    row["plain_pad_share"] = _fmt(plain.get("pad_share", ""))
    if clmap.get("tokens_per_s") and plain.get("tokens_per_s"):
        row["tokens_per_s_ratio"] = round(clmap["tokens_per_s"] / args.nproc / plain["tokens_per_s"], 3)
    else:
        row["tokens_per_s_ratio"] = ""
    if clmap.get("peak_memory_gib") and plain.get("peak_memory_gib"):
        row["peak_memory_ratio"] = round(clmap["peak_memory_gib"] / plain["peak_memory_gib"], 3)
    else:
        row["peak_memory_ratio"] = ""
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Other --section.key=value arguments override the config of both runs.",
    )
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument(
        "--config", choices=(*PRESETS, "all"), default=None, help="preset (default: tiny on CPU, all on CUDA)"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default=default_device)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per run, warm-up included")
    parser.add_argument("--warmup", type=int, default=None, help="steps not measured (default: steps // 3)")
    parser.add_argument("--nproc", type=int, default=1, help="clmap processes (torchrun); plain uses 1")
    parser.add_argument("--work", default=None, help="tokenizer + run folders (default: temp)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per training process")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args, extra = parser.parse_known_args(argv)
    if args.case:
        print(json.dumps(plain_loop(json.loads(args.case))))
        return
    bad = [a for a in extra if not a.startswith("--") or "." not in a.split("=", 1)[0]]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    args.warmup = args.steps // 3 if args.warmup is None else args.warmup
    if args.warmup >= args.steps:
        parser.error("--warmup must be smaller than --steps")
    names = (
        [args.config]
        if args.config not in (None, "all")
        else (list(PRESETS) if args.config == "all" or args.device == "cuda" else ["tiny"])
    )
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="clmap_throughput_"))
    work.mkdir(parents=True, exist_ok=True)
    tags = environment_tags(args.device)
    rows = []
    for name in names:
        row = bench_config(name, args, extra, work)
        print(
            f"{name}: clmap {row['clmap_tokens_per_s']} tok/s, plain {row['plain_tokens_per_s']} tok/s, "
            f"ratio {row['tokens_per_s_ratio']}; peak memory clmap {row['clmap_peak_memory_gib']} GiB, "
            f"plain {row['plain_peak_memory_gib']} GiB",
            flush=True,
        )
        rows.append({**tags, **row})
        # Row by row: a timeout in a later preset keeps what was already measured.
        path = append_csv("train_throughput", [rows[-1]])
    print(f"wrote {len(rows)} rows to {path}")


if __name__ == "__main__":
    sys.exit(main())
