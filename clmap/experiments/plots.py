"""The ablation's figures, drawn from the statistics of :mod:`clmap.experiments.stats`.

Colours follow the variant's place in ``VARIANTS`` so a variant keeps its colour in every figure.
"""

from __future__ import annotations

import math
from pathlib import Path

from clmap.evaluate.report import pyplot
from clmap.experiments.recipe import LABELS, VARIANTS


def _color(variant: str, fallback: int = 0) -> str:
    return f"C{VARIANTS.index(variant) if variant in VARIANTS else fallback}"


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
    return path


def plot_headline(head: dict, split: str, path: Path) -> Path | None:
    """One panel per headline metric of one split: a bar per variant with its interval."""
    cells = {(label, v): c for (label, s, v), c in head["cells"].items() if s == split}
    labels = [label for label in head["labels"] if any((label, v) in cells for v in head["variants"])]
    if not labels:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(labels), figsize=(3.2 * len(labels), 3.6), squeeze=False)
    for ax, label in zip(axes[0], labels, strict=True):
        variants = [v for v in head["variants"] if (label, v) in cells]
        means = [cells[label, v][0] for v in variants]
        lows = [
            m - (cells[label, v][1] if cells[label, v][1] is not None else m)
            for m, v in zip(means, variants, strict=True)
        ]
        highs = [
            (cells[label, v][2] if cells[label, v][2] is not None else m) - m
            for m, v in zip(means, variants, strict=True)
        ]
        colors = [_color(v, i) for i, v in enumerate(variants)]
        ax.bar(range(len(variants)), means, yerr=[lows, highs], color=colors, capsize=3)
        ax.set_xticks(range(len(variants)), [v.replace("_", "\n") for v in variants], fontsize=7)
        ax.set_title(label, fontsize=9)
    fig.suptitle(f"Headline, split '{split}' (error bars: 95 % interval over seeds where ≥ 2)", fontsize=9)
    return _save(fig, path)


def plot_metric(table: dict, task: str, metric: str, title: str, path: Path) -> Path | None:
    """Grouped bars: one group per key and split, one bar per variant with its interval."""
    rows = [r for r in table["rows"] if r["task"] == task and r["metric"] == metric]
    if not rows:
        return None
    plt = pyplot()
    variants = table["variants"]
    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows) + 2), 4))
    for i, v in enumerate(variants):
        cells = [r["cells"].get(v) for r in rows]
        means = [c["mean"] if c else math.nan for c in cells]
        lo = [c["mean"] - c["lo"] if c and c["lo"] is not None else 0.0 for c in cells]
        hi = [c["hi"] - c["mean"] if c and c["hi"] is not None else 0.0 for c in cells]
        xs = [k + i * width for k in range(len(rows))]
        ax.bar(xs, means, width, yerr=[lo, hi], capsize=2, label=LABELS.get(v, v), color=_color(v, i))
    ticks = [k + width * (len(variants) - 1) / 2 for k in range(len(rows))]
    ax.set_xticks(ticks, [f"{r['key']} ({r['split']})" for r in rows], rotation=20, ha="right")
    ax.set(title=title, ylabel=metric)
    ax.legend(fontsize="x-small")
    return _save(fig, path)


def plot_lac(lac: dict, path: Path) -> Path | None:
    """LAC per layer, one panel per pair and split, a line (and band) per variant."""
    if not lac:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(lac), figsize=(4.2 * len(lac), 3.8), squeeze=False, sharey=True)
    for ax, ((pair, split), by_variant) in zip(axes[0], lac.items(), strict=True):
        for v, layers in by_variant.items():
            xs = sorted(layers)
            ax.plot(xs, [layers[x][0] for x in xs], marker="o", label=LABELS.get(v, v), color=_color(v))
            if all(layers[x][1] is not None for x in xs):
                lows, highs = [layers[x][1] for x in xs], [layers[x][2] for x in xs]
                ax.fill_between(xs, lows, highs, alpha=0.12, color=_color(v))
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set(title=f"LAC per layer, {pair} ({split})", xlabel="layer (0 = embeddings)")
    axes[0][0].set_ylabel("LAC")
    axes[0][0].legend(fontsize="x-small")
    return _save(fig, path)


def plot_training(runs: list[dict], steps: int, path: Path) -> Path | None:
    """The NTP training loss per step (mean over seeds, moving average) of every variant at one budget."""
    curves: dict[str, list[dict[int, float]]] = {}
    for run in runs:
        if run["stage"] != "base" and run["steps"] == steps:
            points = {s: x for s, x in run["training"]["curve"] if x is not None}
            curves.setdefault(run["variant"], []).append(points)
    if not curves:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for v, per_seed in curves.items():
        common = sorted(set.intersection(*(set(c) for c in per_seed)))
        ys = [sum(c[s] for c in per_seed) / len(per_seed) for s in common]
        k = max(1, len(ys) // 30)
        smooth = [
            sum(ys[max(0, i - k + 1) : i + 1]) / len(ys[max(0, i - k + 1) : i + 1]) for i in range(len(ys))
        ]
        ax.plot(common, smooth, label=LABELS.get(v, v), color=_color(v))
    ax.set(xlabel="step", ylabel="training NTP loss (nats/token)", title="NTP loss during training")
    ax.legend(fontsize="x-small")
    return _save(fig, path)


def plot_scale(curve: dict, path: Path) -> Path | None:
    """Headline metrics against the stage-2 budget (0 = the base model), one panel per metric and split."""
    if not curve:
        return None
    plt = pyplot()
    cols = min(4, len(curve))
    rows = -(-len(curve) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(curve) :]:
        ax.axis("off")
    for ax, ((label, split), by_variant) in zip(axes.flat, curve.items(), strict=False):
        for v, budgets in by_variant.items():
            xs = sorted(budgets)
            ys = [budgets[b][0] for b in xs]
            ax.plot([max(b, 1) for b in xs], ys, marker="o", label=LABELS.get(v, v), color=_color(v))
            for b in xs:
                if budgets[b][1] is not None:
                    ax.vlines(max(b, 1), budgets[b][1], budgets[b][2], color=_color(v), alpha=0.5)
        ax.set_xscale("log")
        ax.set(title=f"{label} ({split})", xlabel="stage-2 steps (1 = base)")
    axes[0][0].legend(fontsize="x-small")
    return _save(fig, path)
