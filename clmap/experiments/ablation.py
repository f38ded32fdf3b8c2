"""The ablation of issue #7 in one command: does the mapping task help, and by how much?

``python -m clmap.experiments.ablation [--variants ...] [--seeds 0,1,2] [--steps N] [--out runs/ablation]``

1. one SentencePiece tokenizer for every variant (so token perplexities compare), trained once;
2. one training run per variant × seed: ``configs/ablation/base.toml`` plus the variant's own file in
   ``configs/ablation/`` (a few overrides), same seed, steps × global batch × sequence length, so every
   variant sees the same number of input tokens and only what those tokens are differs;
3. the evaluator on every run (same test items, same evaluation seed) and its comparison mode;
4. ``docs/ablation_results.md`` and ``docs/ablation_*.png`` generated from the runs' report.json and
   metrics.jsonl (mean and seed interval per metric and variant, deltas vs NTP-only and vs
   parallel-as-text), and the marked section of ``docs/ablation.md`` regenerated.

``--skip-existing`` keeps finished runs (a run folder with ``hf/``) and matching evaluations, so an
interrupted recipe resumes; an unfinished run resumes from its own checkpoint (the trainer does that).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clmap.evaluate.report import markdown_table
from clmap.launch import train_command

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "configs" / "ablation"
VARIANTS = ("ntp_only", "parallel_text", "cl_both", "cl_map", "cl_forward")
LABELS = {
    "ntp_only": "(a) NTP only",
    "parallel_text": "(b) NTP + parallel as text",
    "cl_both": "(c) NTP + CL both ways",
    "cl_map": "(d) NTP + CL + map",
    "cl_forward": "(e) NTP + CL one way",
}
BASELINES = ("ntp_only", "parallel_text")
DEFAULT_TASKS = "mt,clnlu,ppl,lac"
DEFAULT_PAIRS = "en-cs,cs-uk,zh-ja"
BEGIN, END = "<!-- ablation:generated:begin -->", "<!-- ablation:generated:end -->"
# Two-sided 95 % Student t quantiles by degrees of freedom (no SciPy dependency for a lookup).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
# (task, metric) pairs averaged over directions / pairs / languages for the headline table; higher is
# better except bits per byte.
HEADLINE = [
    ("mt", "bleu", "BLEU"),
    ("mt", "chrf++", "chrF++"),
    ("clnlu", "accuracy", "choice acc."),
    ("lac", "lac", "LAC"),
    ("lac", "p@1", "retrieval P@1"),
    ("ppl", "bits_per_byte", "bits/byte ↓"),
]


# -- configuration ----------------------------------------------------------------------------------
def flatten(tree: dict, prefix: str = "") -> list[str]:
    """A TOML table as ``--section.key=value`` overrides (lists comma-joined, as the trainer parses)."""
    out = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out += flatten(value, f"{name}.")
        elif isinstance(value, list):
            out.append(f"--{name}={','.join(str(v) for v in value)}")
        elif isinstance(value, bool):
            out.append(f"--{name}={str(value).lower()}")
        else:
            out.append(f"--{name}={value}")
    return out


def variant_overrides(variant: str, config_dir: Path = CONFIG_DIR) -> list[str]:
    path = config_dir / f"{variant}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in config_dir.glob("*.toml") if p.stem != "base")
        raise FileNotFoundError(f"{path}: no such variant; known: {', '.join(known)}")
    return flatten(tomllib.loads(path.read_text()))


@dataclass
class Run:
    variant: str
    seed: int
    run_dir: Path
    eval_dir: Path
    overrides: list[str]

    @property
    def name(self) -> str:
        return f"{self.variant}_s{self.seed}"


def plan_runs(args: argparse.Namespace, tokenizer: Path | None) -> list[Run]:
    """Every (variant, seed) with its full override list; checked against the config schema up front."""
    from clmap.config import load_config

    out = Path(args.out)
    runs = []
    for seed in args.seeds:
        for variant in args.variants:
            run_dir = out / f"{variant}_s{seed}"
            overrides = [*variant_overrides(variant, Path(args.config_dir)), *(f"--{s}" for s in args.set)]
            overrides += [f"--run_dir={run_dir}", f"--train.seed={seed}"]
            if args.steps:
                overrides.append(f"--train.steps={args.steps}")
            if tokenizer is not None:
                overrides.append(f"--tokenizer.path={tokenizer}")
            load_config(args.base, overrides)  # fail before hours of training, not after
            runs.append(Run(variant, seed, run_dir, out / "eval" / f"{variant}_s{seed}", overrides))
    return runs


# -- steps of the recipe ------------------------------------------------------------------------------
def shared_tokenizer(args: argparse.Namespace) -> Path | None:
    """The tokenizer every variant uses: ``--tokenizer``, the base model's own, or one trained here once
    on the base config's training split (monolingual and parallel text, as the trainer would)."""
    from clmap.config import load_config

    if args.tokenizer:
        return Path(args.tokenizer).resolve()
    cfg = load_config(args.base, [f"--{s}" for s in args.set])
    if cfg.tokenizer.path or cfg.model.path:
        return None  # a pretrained model brings its tokenizer; every variant loads the same one
    out = Path(args.out) / "tokenizer"
    if (out / "tokenizer.model").is_file():
        return out.resolve()
    import numpy as np

    from clmap.data.pipeline import load_texts
    from clmap.data.tokenizer import train_sentencepiece

    cfg.data.ntp_share = 0.5  # both kinds of text, whatever the variant
    mono, parallel = load_texts(cfg, "train")
    texts = [t for texts in mono.values() for t in texts]
    texts += [t for src, tgt in parallel.values() for t in (*src, *tgt)]
    rng = np.random.default_rng(0)
    sample = [texts[i] for i in rng.permutation(len(texts))[: cfg.tokenizer.train_sentences]]
    print(f"[ablation] training the shared tokenizer on {len(sample)} texts -> {out}", flush=True)
    train_sentencepiece(sample, out, cfg.data.languages, vocab_size=cfg.tokenizer.vocab_size)
    return out.resolve()


def _env(threads: int, training: bool) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if training:
        env.pop("TRITON_INTERPRET", None)  # training on the CPU takes the chunked PyTorch path
    return env


def _check_same_config(run: Run, base: str) -> None:
    """A finished run is reused only if it was trained with exactly the config this recipe asks for."""
    from clmap.config import load_config

    saved = json.loads((run.run_dir / "config.json").read_text())
    wanted = json.loads(json.dumps(load_config(base, run.overrides).to_dict()))
    if saved != wanted:
        diff = sorted(
            f"{section}.{key}"
            for section, values in wanted.items()
            if isinstance(values, dict)
            for key in values
            if saved.get(section, {}).get(key) != values[key]
        )
        raise RuntimeError(
            f"{run.run_dir} was trained with another config ({', '.join(diff) or 'run_dir'}); "
            "pass --overwrite to retrain it"
        )


def train(run: Run, args: argparse.Namespace) -> float:
    """Train one run (or resume / skip it); returns the wall seconds spent."""
    finished = (run.run_dir / "hf" / "config.json").is_file()
    if run.run_dir.exists():
        if args.overwrite:
            shutil.rmtree(run.run_dir)
        elif not args.skip_existing:
            raise RuntimeError(
                f"{run.run_dir} exists: pass --skip-existing to reuse/resume it or --overwrite"
            )
        elif finished:
            _check_same_config(run, args.base)
            print(f"[ablation] {run.name}: finished run reused", flush=True)
            return 0.0
    cmd = train_command(args.nproc, ["--config", str(args.base), *run.overrides])
    print(f"[ablation] {run.name}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(
        cmd,
        cwd=REPO,
        env=_env(args.threads, training=True),
        check=True,
        stdout=None if args.verbose else subprocess.DEVNULL,
    )
    return time.perf_counter() - t0


def evaluate(run: Run, args: argparse.Namespace) -> float:
    """Evaluate one finished run into ``out/eval/<run>`` with the same test items for every run."""
    report = run.eval_dir / "report.json"
    if report.is_file() and not args.overwrite:
        settings = json.loads(report.read_text())["settings"]
        if (settings.get("tasks"), settings.get("pairs"), settings.get("limit")) == (
            args.tasks,
            args.pairs,
            args.eval_limit,
        ) and report.stat().st_mtime >= (run.run_dir / "hf" / "config.json").stat().st_mtime:
            print(f"[ablation] {run.name}: evaluation reused", flush=True)
            return 0.0
    cmd = [
        sys.executable,
        "-m",
        "clmap.evaluate",
        "--checkpoint",
        str(run.run_dir),
        "--out",
        str(run.eval_dir),
        "--tasks",
        args.tasks,
        "--pairs",
        args.pairs,
        "--device",
        args.device,
        "--seed",
        "0",
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--batch-size",
        str(args.eval_batch_size),
    ]
    if args.eval_limit:
        cmd += ["--limit", str(args.eval_limit)]
    for entry in args.data:
        cmd += ["--data", entry]
    print(f"[ablation] {run.name}: evaluating", flush=True)
    t0 = time.perf_counter()
    subprocess.run(
        cmd,
        cwd=REPO,
        env=_env(args.threads, training=False),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=None if args.verbose else subprocess.DEVNULL,
    )
    return time.perf_counter() - t0


def compare(runs: Sequence[Run], out: Path) -> Path:
    """The evaluator's own comparison over all runs (deltas vs the first, NTP-only, run), in-process:
    the same functions ``python -m clmap.evaluate --compare`` uses, without another interpreter start."""
    from clmap.evaluate.report import compare_reports, write_comparison

    named = [
        (f"{i}:{r.name}", json.loads((r.eval_dir / "report.json").read_text())) for i, r in enumerate(runs)
    ]
    if len(named) >= 2:
        write_comparison(compare_reports(named), out / "compare")
    return out / "compare" / "comparison.md"


# -- statistics ----------------------------------------------------------------------------------------
def mean_interval(values: Sequence[float]) -> tuple[float, float | None, float | None]:
    """Mean and its 95 % Student t interval over seeds (no interval from a single seed)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T95.get(n - 1, 1.96) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def fmt(value: float | None) -> str:
    """The one number format of the generated tables (the test reads the tables back with it)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4g}" if abs(value) < 10 else f"{value:.2f}"


def fmt_delta(value: float) -> str:
    return f"{value:+.4g}" if abs(value) < 10 else f"{value:+.2f}"


def _cell(mean: float, lo: float | None, hi: float | None, delta: bool = False) -> str:
    text = fmt_delta(mean) if delta else fmt(mean)
    return text + (f" [{fmt(lo)}, {fmt(hi)}]" if lo is not None else "")


def report_metrics(report: dict) -> dict[tuple[str, str, str], dict]:
    return {
        (task, m["key"], m["metric"]): m
        for task, result in report.get("tasks", {}).items()
        for m in result.get("metrics", [])
    }


def training_summary(run_dir: Path) -> dict:
    """Token budget and end-of-training losses of one run from its metrics.jsonl."""
    from clmap.metrics import read_metrics

    cfg = json.loads((run_dir / "config.json").read_text())
    records = read_metrics(run_dir / "metrics.jsonl")
    steps = int(cfg["train"]["steps"])
    scale = steps / max(1, len(records))  # exact with log_every = 1; an estimate otherwise
    tail = records[-max(1, len(records) // 10) :]

    def tail_mean(key: str) -> float | None:
        values = [r[key] for r in tail if key in r]
        return sum(values) / len(values) if values else None

    return {
        "steps": steps,
        "logged_steps": len(records),
        "budget_tokens": steps * cfg["train"]["global_batch"] * cfg["data"]["seq_len"],
        "input_tokens": scale * sum(round(r["tokens_per_s"] * r["step_time_s"]) for r in records),
        "target_tokens": scale * sum(r.get("tokens/targets", 0.0) for r in records),
        "train_seconds": sum(r["step_time_s"] for r in records),
        "final_loss_ntp": tail_mean("loss/ntp"),
        "final_loss_cl": tail_mean("loss/cl"),
        "final_loss_map": tail_mean("loss/map"),
        "curve": [(r["step"], r.get("loss/ntp")) for r in records],
    }


def collect(runs: Sequence[Run]) -> dict:
    """Every run's report metrics and training summary, grouped by variant in recipe order."""
    data: dict = {}
    for run in runs:
        report = json.loads((run.eval_dir / "report.json").read_text())
        entry = data.setdefault(run.variant, {"seeds": [], "reports": [], "training": []})
        entry["seeds"].append(run.seed)
        entry["reports"].append(report)
        entry["training"].append(training_summary(run.run_dir))
    return data


def aggregate(data: dict) -> dict:
    """Per variant and metric: mean with its seed interval (or the single run's own interval), and
    per-seed paired deltas vs each baseline present (same seed, same test items)."""
    variants = list(data)
    keys = list(dict.fromkeys(k for v in variants for r in data[v]["reports"] for k in report_metrics(r)))
    table: dict = {"variants": variants, "rows": []}
    indexed = {v: [report_metrics(r) for r in data[v]["reports"]] for v in variants}
    by_seed = {v: dict(zip(data[v]["seeds"], indexed[v], strict=True)) for v in variants}
    for task, key, name in keys:
        row: dict = {"task": task, "key": key, "metric": name, "cells": {}, "deltas": {}}
        for v in variants:
            entries = [m[task, key, name] for m in indexed[v] if (task, key, name) in m]
            if not entries:
                continue
            values = [e["value"] for e in entries]
            mean, lo, hi = mean_interval(values)
            source = "seeds" if len(values) > 1 else ("run" if entries[0].get("ci") else None)
            if len(values) == 1 and entries[0].get("ci"):
                lo, hi = entries[0]["ci"]
            row["cells"][v] = {
                "mean": mean,
                "lo": lo,
                "hi": hi,
                "n": len(values),
                "interval": source,
                "values": values,
            }
        for base in BASELINES:
            if base not in by_seed:
                continue
            for v in variants:
                if v == base:
                    continue
                seeds = [
                    s
                    for s in by_seed[v]
                    if s in by_seed[base]
                    and (task, key, name) in by_seed[v][s]
                    and (task, key, name) in by_seed[base][s]
                ]
                if not seeds:
                    continue
                diffs = [
                    by_seed[v][s][task, key, name]["value"] - by_seed[base][s][task, key, name]["value"]
                    for s in seeds
                ]
                mean, lo, hi = mean_interval(diffs)
                base_ci = by_seed[base][seeds[0]][task, key, name].get("ci")
                outside = None
                if len(seeds) == 1 and base_ci:
                    outside = not base_ci[0] <= by_seed[v][seeds[0]][task, key, name]["value"] <= base_ci[1]
                row["deltas"][base, v] = {
                    "mean": mean,
                    "lo": lo,
                    "hi": hi,
                    "n": len(seeds),
                    "outside_ci": outside,
                }
        table["rows"].append(row)
    return table


def headline(data: dict) -> dict:
    """Per variant and headline metric, the per-seed average over directions/pairs/languages; then the
    mean over seeds and paired deltas vs the baselines (interval over seeds, else range over keys)."""
    per_seed: dict = {}
    per_key: dict = {}
    for v, entry in data.items():
        for seed, report in zip(entry["seeds"], entry["reports"], strict=True):
            metrics = report_metrics(report)
            for task, prefix, label in HEADLINE:
                values = {
                    f"{k} {name}": m["value"]
                    for (t, k, name), m in metrics.items()
                    if t == task
                    and (name == prefix or name.startswith(prefix + " "))
                    and not math.isnan(m["value"])
                }
                if values:
                    per_seed.setdefault((label, v), {})[seed] = sum(values.values()) / len(values)
                    per_key.setdefault((label, v), {})[seed] = values
    result: dict = {"labels": [h[2] for h in HEADLINE], "variants": list(data), "cells": {}, "deltas": {}}
    for (label, v), seeds in per_seed.items():
        result["cells"][label, v] = mean_interval(list(seeds.values())) + (len(seeds),)
        for base in BASELINES:
            if base == v or (label, base) not in per_seed:
                continue
            common = [s for s in seeds if s in per_seed[label, base]]
            if not common:
                continue
            diffs = [seeds[s] - per_seed[label, base][s] for s in common]
            mean, lo, hi = mean_interval(diffs)
            kind = "seeds"
            if len(common) == 1:  # one seed: the spread of the delta over directions / pairs / languages
                s = common[0]
                mine, theirs = per_key[label, v][s], per_key[label, base][s]
                key_diffs = [mine[k] - theirs[k] for k in mine if k in theirs]
                lo, hi, kind = min(key_diffs), max(key_diffs), "keys"
            result["deltas"][label, base, v] = (mean, lo, hi, kind)
    return result


# -- rendering -------------------------------------------------------------------------------------------
def render_headline(head: dict) -> list[str]:
    variants = head["variants"]
    lines = markdown_table(
        ["metric (mean over keys)", *(LABELS.get(v, v) for v in variants)],
        [
            [
                label,
                *(
                    _cell(*head["cells"][label, v][:3]) if (label, v) in head["cells"] else "–"
                    for v in variants
                ),
            ]
            for label in head["labels"]
            if any((label, v) in head["cells"] for v in variants)
        ],
    )
    for base in BASELINES:
        others = [v for v in variants if v != base]
        rows = [
            [
                label,
                *(
                    _cell(*head["deltas"][label, base, v][:3], delta=True)
                    if (label, base, v) in head["deltas"]
                    else "–"
                    for v in others
                ),
            ]
            for label in head["labels"]
            if any((label, base, v) in head["deltas"] for v in others)
        ]
        if rows:
            lines += [
                "",
                f"Δ vs {LABELS.get(base, base)}:",
                "",
                *markdown_table(["metric", *(LABELS.get(v, v) for v in others)], rows),
            ]
    return lines


def delta_sentences(head: dict) -> list[str]:
    """One line per variant and headline metric vs NTP-only: the numbers the write-up discusses."""
    lines = []
    for base in BASELINES:
        for v in head["variants"]:
            parts = []
            for label in head["labels"]:
                if (label, base, v) in head["deltas"]:
                    mean, lo, hi, kind = head["deltas"][label, base, v]
                    parts.append(f"{label} {fmt_delta(mean)} [{fmt(lo)}, {fmt(hi)}]")
            if parts:
                lines.append(f"- {LABELS.get(v, v)} vs {LABELS.get(base, base)}: " + "; ".join(parts))
    return lines


def render_results(data: dict, table: dict, head: dict, meta: dict, plots: Sequence[Path]) -> str:
    variants = table["variants"]
    seeds = sorted({s for v in variants for s in data[v]["seeds"]})
    one_seed = all(len(data[v]["seeds"]) == 1 for v in variants)
    lines = [
        "# Ablation results (generated)",
        "",
        "Generated by `python -m clmap.experiments.ablation` from the runs' `report.json` and "
        "`metrics.jsonl`; do not edit by hand. The write-up is [ablation.md](ablation.md).",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Base config: `{meta['base']}`; variants: {', '.join(variants)}; "
        f"seeds: {', '.join(map(str, seeds))}; "
        f"evaluation: tasks {meta['tasks']}, pairs {meta['pairs']}, bundled test split, "
        f"{meta['eval_limit'] or 'all'} items per task and direction, evaluation seed 0 (same items for "
        f"every run). Model: {meta['model']}. Wall time of this invocation: {meta['wall_min']:.1f} min "
        f"(training {meta['train_min']:.1f}, evaluation {meta['eval_min']:.1f}; reused runs count 0).",
        "",
        "Intervals: "
        + (
            "with one seed, a cell's interval is the run's own 95 % interval where the "
            "evaluator gives one (LAC: bootstrap over pairs; choice accuracy: Wilson); "
            "deltas have no seed interval, `*` marks a delta outside the baseline run's "
            "interval, and headline deltas show [min, max] over directions/pairs/languages."
            if one_seed
            else "95 % Student t intervals over seeds for means and for paired (same-seed) deltas."
        ),
        "",
        "## Token budget",
        "",
        "Same steps × global batch × sequence length for every variant (packed rows); input tokens "
        "are non-padding tokens, target tokens those with a loss (CL source sides and tags are inputs "
        "but not targets), both summed from metrics.jsonl.",
        "",
    ]
    rows = []
    for v in variants:
        tr = data[v]["training"]

        def avg(key: str, tr=tr) -> float | None:
            values = [t[key] for t in tr if t[key] is not None]
            return sum(values) / len(values) if values else None

        rows.append(
            [
                LABELS.get(v, v),
                str(tr[0]["steps"]),
                f"{tr[0]['budget_tokens']:,}",
                f"{avg('input_tokens'):,.0f}",
                f"{avg('target_tokens'):,.0f}",
                fmt(avg("final_loss_ntp")),
                fmt(avg("final_loss_cl")),
                fmt(avg("final_loss_map")),
                f"{avg('train_seconds') / 60:.1f}",
            ]
        )
    lines += markdown_table(
        [
            "variant",
            "steps",
            "budget (steps×batch×seq)",
            "input tokens",
            "target tokens",
            "final NTP loss",
            "final CL loss",
            "final map loss",
            "train min",
        ],
        rows,
    )
    lines += [
        "",
        "Final losses: mean over the last 10 % of steps (training batches; NTP loss of (b) "
        "includes the parallel-as-text tokens).",
        "",
        "## Headline (mean over directions / pairs / languages)",
        "",
        *render_headline(head),
        "",
        "## Every metric",
        "",
    ]
    by_task: dict[str, list[dict]] = {}
    for row in table["rows"]:
        by_task.setdefault(row["task"], []).append(row)
    from clmap.evaluate.report import TASK_TITLES

    for task, task_rows in by_task.items():
        lines += [f"### {TASK_TITLES.get(task, task)}", ""]
        body = [
            [
                row["key"],
                row["metric"],
                *(
                    _cell(c["mean"], c["lo"], c["hi"]) if (c := row["cells"].get(v)) else "–"
                    for v in variants
                ),
            ]
            for row in task_rows
        ]
        lines += markdown_table(["key", "metric", *(LABELS.get(v, v) for v in variants)], body) + [""]
        for base in BASELINES:
            others = [v for v in variants if v != base]
            body = []
            for row in task_rows:
                cells = []
                for v in others:
                    d = row["deltas"].get((base, v))
                    cells.append(
                        "–"
                        if d is None
                        else _cell(d["mean"], d["lo"], d["hi"], delta=True) + ("*" if d["outside_ci"] else "")
                    )
                if any(c != "–" for c in cells):
                    body.append([row["key"], row["metric"], *cells])
            if body:
                lines += [
                    f"Δ vs {LABELS.get(base, base)}:",
                    "",
                    *markdown_table(["key", "metric", *(LABELS.get(v, v) for v in others)], body),
                    "",
                ]
    lac = lac_layers(data)
    if lac:
        lines += ["## LAC per layer (0 = embeddings; mean over seeds)", ""]
        body = [
            [
                pair,
                str(layer),
                *(fmt(lac[pair][v].get(layer, (math.nan,))[0]) if v in lac[pair] else "–" for v in variants),
            ]
            for pair in lac
            for layer in sorted({x for v in lac[pair].values() for x in v})
        ]
        lines += markdown_table(["pair", "layer", *(LABELS.get(v, v) for v in variants)], body) + [""]
    if plots:
        lines += ["## Plots", "", *(f"![{p.stem}]({p.name})" for p in plots), ""]
    return "\n".join(lines)


def lac_layers(data: dict) -> dict[str, dict[str, dict[int, tuple[float, float, float]]]]:
    """pair → variant → layer → (LAC mean, lo, hi): seed interval, or the bootstrap band of one run."""
    out: dict = {}
    for v, entry in data.items():
        curves: dict = {}
        for report in entry["reports"]:
            for pair, detail in report.get("tasks", {}).get("lac", {}).get("details", {}).items():
                for row in detail["layers"]:
                    curves.setdefault(pair, {}).setdefault(row["layer"], []).append(row)
        for pair, layers in curves.items():
            for layer, rows in layers.items():
                mean, lo, hi = mean_interval([r["lac"] for r in rows])
                if len(rows) == 1:
                    lo, hi = rows[0]["lac_lo"], rows[0]["lac_hi"]
                out.setdefault(pair, {}).setdefault(v, {})[layer] = (mean, lo, hi)
    return out


# -- plots -----------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_headline(head: dict, path: Path) -> Path:
    """One panel per headline metric: a bar per variant with its interval."""
    plt = _pyplot()
    labels = [label for label in head["labels"] if any((label, v) in head["cells"] for v in head["variants"])]
    fig, axes = plt.subplots(1, len(labels), figsize=(3.2 * len(labels), 3.6), squeeze=False)
    for ax, label in zip(axes[0], labels, strict=True):
        variants = [v for v in head["variants"] if (label, v) in head["cells"]]
        means = [head["cells"][label, v][0] for v in variants]
        errs = [
            [
                m - (head["cells"][label, v][1] if head["cells"][label, v][1] is not None else m)
                for m, v in zip(means, variants, strict=True)
            ],
            [
                (head["cells"][label, v][2] if head["cells"][label, v][2] is not None else m) - m
                for m, v in zip(means, variants, strict=True)
            ],
        ]
        ax.bar(
            range(len(variants)),
            means,
            yerr=errs,
            color=[f"C{VARIANTS.index(v) if v in VARIANTS else i}" for i, v in enumerate(variants)],
            capsize=3,
        )
        ax.set_xticks(range(len(variants)), [v.replace("_", "\n") for v in variants], fontsize=7)
        ax.set_title(label, fontsize=9)
    fig.suptitle("Ablation headline (error bars: 95 % interval over seeds where ≥ 2 seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_metric(table: dict, task: str, metric: str, title: str, path: Path) -> Path | None:
    """Grouped bars: one group per key (direction / language), one bar per variant with its interval."""
    rows = [r for r in table["rows"] if r["task"] == task and r["metric"] == metric]
    if not rows:
        return None
    plt = _pyplot()
    variants = table["variants"]
    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows) + 2), 4))
    for i, v in enumerate(variants):
        cells = [r["cells"].get(v) for r in rows]
        means = [c["mean"] if c else math.nan for c in cells]
        lo = [c["mean"] - c["lo"] if c and c["lo"] is not None else 0.0 for c in cells]
        hi = [c["hi"] - c["mean"] if c and c["hi"] is not None else 0.0 for c in cells]
        ax.bar(
            [k + i * width for k in range(len(rows))],
            means,
            width,
            yerr=[lo, hi],
            capsize=2,
            label=LABELS.get(v, v),
            color=f"C{VARIANTS.index(v) if v in VARIANTS else i}",
        )
    ax.set_xticks(
        [k + width * (len(variants) - 1) / 2 for k in range(len(rows))],
        [r["key"] for r in rows],
        rotation=20,
        ha="right",
    )
    ax.set(title=title, ylabel=metric)
    ax.legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_lac(data: dict, path: Path) -> Path | None:
    lac = lac_layers(data)
    if not lac:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(lac), figsize=(4.2 * len(lac), 3.8), squeeze=False, sharey=True)
    for ax, (pair, by_variant) in zip(axes[0], lac.items(), strict=True):
        for v, layers in by_variant.items():
            xs = sorted(layers)
            color = f"C{VARIANTS.index(v) if v in VARIANTS else 0}"
            ax.plot(xs, [layers[x][0] for x in xs], marker="o", label=LABELS.get(v, v), color=color)
            if all(layers[x][1] is not None for x in xs):
                ax.fill_between(
                    xs, [layers[x][1] for x in xs], [layers[x][2] for x in xs], alpha=0.12, color=color
                )
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set(title=f"LAC per layer, {pair}", xlabel="layer (0 = embeddings)")
    axes[0][0].set_ylabel("LAC")
    axes[0][0].legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_training(data: dict, path: Path) -> Path:
    """The NTP training loss per step (mean over seeds, moving average) of every variant."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for v, entry in data.items():
        curves = [dict((s, x) for s, x in t["curve"] if x is not None) for t in entry["training"]]
        steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        if not steps:
            continue
        ys = [sum(c[s] for c in curves) / len(curves) for s in steps]
        k = max(1, len(ys) // 30)
        smooth = [
            sum(ys[max(0, i - k + 1) : i + 1]) / len(ys[max(0, i - k + 1) : i + 1]) for i in range(len(ys))
        ]
        ax.plot(steps, smooth, label=LABELS.get(v, v), color=f"C{VARIANTS.index(v) if v in VARIANTS else 0}")
    ax.set(xlabel="step", ylabel="training NTP loss (nats/token)", title="NTP loss during training")
    ax.legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_docs(runs: Sequence[Run], docs: Path, meta: dict) -> Path:
    """docs/ablation_results.{md,json}, docs/ablation_*.png and the marked section of docs/ablation.md."""
    docs.mkdir(parents=True, exist_ok=True)
    data = collect(runs)
    table, head = aggregate(data), headline(data)
    plots = [
        plot_headline(head, docs / "ablation_headline.png"),
        plot_metric(table, "mt", "chrf++", "chrF++ per direction", docs / "ablation_mt_chrf.png"),
        plot_metric(
            table,
            "clnlu",
            "accuracy",
            "Translation-choice accuracy (chance 0.25)",
            docs / "ablation_choice.png",
        ),
        plot_metric(
            table,
            "ppl",
            "bits_per_byte",
            "Bits per byte per language (lower is better)",
            docs / "ablation_ppl.png",
        ),
        plot_lac(data, docs / "ablation_lac_per_layer.png"),
        plot_training(data, docs / "ablation_training.png"),
    ]
    plots = [p for p in plots if p is not None]
    out = docs / "ablation_results.md"
    out.write_text(render_results(data, table, head, meta, plots) + "\n", encoding="utf-8")
    (docs / "ablation_results.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "runs": {
                    r.name: {"run_dir": str(r.run_dir), "report": str(r.eval_dir / "report.json")}
                    for r in runs
                },
                "training": {
                    v: [{k: x for k, x in t.items() if k != "curve"} for t in d["training"]]
                    for v, d in data.items()
                },
                "rows": [
                    {**row, "deltas": {f"{v} - {b}": d for (b, v), d in row["deltas"].items()}}
                    for row in table["rows"]
                ],
            },
            indent=1,
            ensure_ascii=False,
        )
        + "\n",
        encoding="utf-8",
    )
    writeup = docs / "ablation.md"
    if writeup.is_file():
        text = writeup.read_text(encoding="utf-8")
        if BEGIN in text and END in text:
            section = [
                BEGIN,
                "",
                f"*Regenerated by `{meta['command']}`; full tables in "
                "[ablation_results.md](ablation_results.md).*",
                "",
                *render_headline(head),
                "",
                "Deltas (headline metrics, mean over keys, interval as stated in the results file):",
                "",
                *delta_sentences(head),
                "",
                END,
            ]
            before, rest = text.split(BEGIN, 1)
            writeup.write_text(before + "\n".join(section) + rest.split(END, 1)[1], encoding="utf-8")
    return out


# -- command line ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m clmap.experiments.ablation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma list (first = the comparison's baseline)"
    )
    p.add_argument("--seeds", default="0", help="comma list of training seeds, e.g. 0,1,2")
    p.add_argument("--steps", type=int, default=None, help="override train.steps for every variant")
    p.add_argument("--out", default="runs/ablation", help="folder for the runs, evaluations and comparison")
    p.add_argument("--docs", default=str(REPO / "docs"), help="where the generated table and plots go")
    p.add_argument(
        "--base",
        default=str(CONFIG_DIR / "base.toml"),
        help="shared config (e.g. configs/llama3_8b.toml for the real model)",
    )
    p.add_argument("--config-dir", default=str(CONFIG_DIR), help="folder of the variants' override files")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="extra config override for every variant (repeatable)",
    )
    p.add_argument("--tokenizer", default=None, help="an existing tokenizer folder for every variant")
    p.add_argument("--nproc", type=int, default=1, help="processes per training run (torchrun when > 1)")
    p.add_argument("--threads", type=int, default=None, help="OMP threads per process (default: 2 // nproc)")
    p.add_argument("--eval-limit", type=int, default=32, help="items per task and direction (0 = all)")
    p.add_argument("--tasks", default=DEFAULT_TASKS, help="evaluator tasks")
    p.add_argument("--pairs", default=DEFAULT_PAIRS, help="evaluation language pairs")
    p.add_argument("--device", default="cpu", help="evaluation device")
    p.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="TASK=PATH",
        help="evaluator input per task (Belebele, XQuAD/MLQA, CrossSum, ...), repeatable",
    )
    p.add_argument("--max-new-tokens", type=int, default=32, help="MT generation length")
    p.add_argument("--eval-batch-size", type=int, default=16)
    p.add_argument(
        "--skip-existing", action="store_true", help="reuse finished runs/evaluations, resume the rest"
    )
    p.add_argument("--overwrite", action="store_true", help="delete and redo existing runs and evaluations")
    p.add_argument(
        "--report-only", action="store_true", help="only regenerate docs from existing evaluations"
    )
    p.add_argument("--verbose", action="store_true", help="show the trainer's and evaluator's output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = "python -m clmap.experiments.ablation " + " ".join(argv if argv is not None else sys.argv[1:])
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.threads = args.threads or max(1, 2 // args.nproc)
    args.eval_limit = args.eval_limit or None
    args.base = str(Path(args.base).resolve())
    args.out = str(Path(args.out).resolve())
    if args.skip_existing and args.overwrite:
        raise SystemExit("--skip-existing and --overwrite exclude each other")
    t_start = time.perf_counter()
    tokenizer = None if args.report_only else shared_tokenizer(args)
    if args.report_only:
        tokenizer = (
            Path(args.tokenizer).resolve()
            if args.tokenizer
            else (Path(args.out) / "tokenizer" if (Path(args.out) / "tokenizer").is_dir() else None)
        )
    runs = plan_runs(args, tokenizer)
    train_s = eval_s = 0.0
    if not args.report_only:
        for run in runs:
            train_s += train(run, args)
            eval_s += evaluate(run, args)
        compare(runs, Path(args.out))
    from clmap.config import load_config

    cfg = load_config(args.base, runs[0].overrides)
    model = (
        cfg.model.path
        or f"Llama {cfg.model.num_layers} layers × {cfg.model.hidden_size} hidden, "
        f"vocab {cfg.tokenizer.vocab_size}, seq_len {cfg.data.seq_len}, "
        f"global batch {cfg.train.global_batch}, "
        f"{cfg.train.steps} steps"
    )
    meta = {
        "command": command.strip(),
        "base": os.path.relpath(args.base, REPO),
        "tasks": args.tasks,
        "pairs": args.pairs,
        "eval_limit": args.eval_limit,
        "model": model,
        "wall_min": (time.perf_counter() - t_start) / 60,
        "train_min": train_s / 60,
        "eval_min": eval_s / 60,
    }
    written = write_docs(runs, Path(args.docs), meta)
    print(
        f"[ablation] wrote {written} and the plots beside it "
        f"({meta['wall_min']:.1f} min: training {meta['train_min']:.1f}, evaluation {meta['eval_min']:.1f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
