"""report.json (everything), report.md (one table per task), PNG plots, and the comparison of runs.

Every task result carries a flat list of metrics ``{key, metric, value, ci, n, split}`` (key =
direction, pair or language; split = the bundled split scored, None for local data). When a task is
scored on several splits, each metric name carries its split (``bleu (test)``, ``bleu (ood)``), so
(task, key, metric) stays unique and the markdown table shows the splits in adjacent columns. The
markdown tables, the comparison and its bar charts all read that one list, so a new metric shows up
everywhere without touching this module (a metric's ``table`` puts it in a second table of its task).
A task result may also say which ``data`` it used and which ``prompt`` format it was scored with.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

from clmap.outputs import atomic_write_text


def task_title(task: str) -> str:
    """A task's heading (its ``title`` in :mod:`clmap.evaluate.tasks`), or its name if unknown there."""
    from clmap.evaluate.tasks import TASK_TITLES  # the tasks import this module

    return TASK_TITLES.get(task, task)


def metric(
    key: str,
    name: str,
    value: float,
    ci: Sequence[float] | None = None,
    n: int | None = None,
    split: str | None = None,
    **extra,
) -> dict:
    """One row of a task's metrics; ``extra`` adds what a score with items carries
    (:func:`clmap.evaluate.bootstrap.summary`: ``documents``, ``interval``, ``items``)."""
    return {
        "key": key,
        "metric": name,
        "value": float(value),
        "ci": list(ci) if ci is not None else None,
        "n": n,
        "split": split,
        **extra,
    }


def split_suffix(split: str | None, several: bool) -> str:
    """What a metric name or detail key gains when its task is scored on several splits."""
    return f" ({split})" if several and split else ""


def file_stem(text: str) -> str:
    """A detail key as a file name part: ``en-cs (ood)`` -> ``en-cs_ood``."""
    return re.sub(r"[^\w.-]+", "_", text).strip("_")


def fmt(value: float | None) -> str:
    """The one number format of the generated tables (evaluator reports, comparisons, the ablation)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4g}" if abs(value) < 10 else f"{value:.2f}"


def _cell(entry: dict) -> str:
    from clmap.evaluate.bootstrap import TOO_FEW

    text = fmt(entry["value"])
    if entry.get("ci"):
        text += f" [{fmt(entry['ci'][0])}, {fmt(entry['ci'][1])}]"
    elif str(entry.get("interval", "")).startswith(TOO_FEW):
        text += f" ({TOO_FEW})"  # how many documents: the task's notes
    return text


def documents_note(metrics: Sequence[dict]) -> list[str]:
    """One line per key and split saying how many documents its items came from (the intervals' clusters)."""
    seen: dict[tuple, str] = {}
    for m in metrics:
        if m.get("documents") is not None:
            where = f" ({m['split']})" if m.get("split") else ""
            line = f"{m['key']}{where}: {m['n']} items from {m['documents']} documents"
            seen.setdefault((m["key"], m.get("split")), line)
    if not seen:
        return []
    return ["items and the documents they come from: " + "; ".join(seen.values())]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a GitHub markdown table (shared by the evaluator, the ablation and the benchmarks)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render_markdown(report: dict) -> str:
    """One table per task: rows = keys (direction / pair / language), columns = metrics."""
    lines = [f"# clmap evaluation: `{report.get('checkpoint', '?')}`", ""]
    settings = report.get("settings", {})
    if settings:
        lines += ["Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items() if v is not None), ""]
    for task, result in report.get("tasks", {}).items():
        lines += [f"## {task_title(task)}", ""]
        if result.get("data"):
            lines.append("Data: " + "; ".join(f"{k} = {v}" for k, v in result["data"].items()) + "  ")
        for name, prompt in result.get("prompt", {}).items():
            shots = f"; {prompt['shots']}" if prompt.get("shots") else ""
            lines.append(f"Prompt ({name}): {prompt['format']} ({prompt['reason']}){shots}  ")
        if result.get("data") or result.get("prompt"):
            lines.append("")
        metrics = result.get("metrics", [])
        tables = list(dict.fromkeys(m.get("table") for m in metrics))  # None: the task's main table
        for table in tables:
            chosen = [m for m in metrics if m.get("table") == table]
            names = list(dict.fromkeys(m["metric"] for m in chosen))
            keys = list(dict.fromkeys(m["key"] for m in chosen))
            by = {(m["key"], m["metric"]): m for m in chosen}
            rows = [
                [key] + [_cell(by[key, name]) if (key, name) in by else "" for name in names] for key in keys
            ]
            lines += ([f"{table}:", ""] if table else []) + markdown_table(["", *names], rows)
            lines.append("")
        notes = [*result.get("notes", []), *documents_note(metrics)]
        for note in notes:
            lines.append(f"- {note}")
        if notes:
            lines.append("")
    if report.get("plots"):
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in report["plots"]] + [""]
    return "\n".join(lines)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_lac_per_layer(alignment: dict, path: Path) -> Path:
    """LAC (with its bootstrap band, absent with too few documents) per layer, one line per language
    pair (and split); the last point is the last decoder layer after the final norm, labelled so."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ticks: dict[int, str] = {}
    for pair, detail in alignment.items():
        layers = [row["layer"] for row in detail["layers"]]
        ticks.update({row["layer"]: _tick(row) for row in detail["layers"]})
        ax.plot(layers, [row["lac"] for row in detail["layers"]], marker="o", label=pair)
        if all(row["lac_lo"] is not None for row in detail["layers"]):  # None: too few documents
            ax.fill_between(
                layers,
                [row["lac_lo"] for row in detail["layers"]],
                [row["lac_hi"] for row in detail["layers"]],
                alpha=0.2,
            )
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xticks(sorted(ticks), [ticks[t] for t in sorted(ticks)])
    ax.set(
        xlabel="hidden state (0 = embeddings, i = decoder layer i, last + final norm)",
        ylabel="LAC",
        ylim=(-1.05, 1.05),
        title="Language alignment per layer",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _tick(row: dict) -> str:
    label = row.get("label", str(row["layer"]))
    return {"embeddings": "emb"}.get(label, label.removeprefix("layer ").replace(" + final norm", "+norm"))


def plot_heatmap(matrix: list[list[float]], pair: str, layer: int, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    image = ax.imshow(matrix, cmap="viridis", aspect="auto")
    src, _, tgt = pair.partition("-")
    ax.set(
        xlabel=f"{tgt} sentence j", ylabel=f"{src} sentence i", title=f"cos(u_i, v_j), {pair}, layer {layer}"
    )
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_bars(groups: dict[str, dict[str, float]], title: str, ylabel: str, path: Path) -> Path:
    """Grouped bars: ``groups[x_label][series] = value``."""
    plt = pyplot()
    labels = list(groups)
    series = list(dict.fromkeys(s for values in groups.values() for s in values))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(labels) * max(1, len(series)) + 2), 4))
    for index, name in enumerate(series):
        xs = [i + index * width for i in range(len(labels))]
        ax.bar(xs, [groups[label].get(name, 0.0) for label in labels], width=width, label=name)
    ax.set_xticks(
        [i + width * (len(series) - 1) / 2 for i in range(len(labels))], labels, rotation=30, ha="right"
    )
    ax.set(title=title, ylabel=ylabel)
    if len(series) > 1:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(report: dict, out_dir: str | Path) -> dict:
    """Draw the plots, then write report.json and report.md into ``out_dir``; returns the report."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots: list[str] = []
    tasks = report.get("tasks", {})
    alignment = tasks.get("lac", {}).get("details", {})
    if alignment:
        plots.append(str(plot_lac_per_layer(alignment, out_dir / "lac_per_layer.png")))
        for key, detail in alignment.items():
            if detail.get("heatmap"):
                path = out_dir / f"similarity_{file_stem(key)}.png"
                plots.append(str(plot_heatmap(detail["heatmap"], key, detail["report_layer"], path)))
    ppl = [m for m in tasks.get("ppl", {}).get("metrics", []) if m["metric"] == "bits_per_byte"]
    if ppl:
        groups = {m["key"]: {"bits/byte": m["value"]} for m in ppl}
        plots.append(
            str(plot_bars(groups, "Bits per byte per language", "bits/byte", out_dir / "perplexity.png"))
        )
    report["plots"] = plots
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out_dir / "report.md", render_markdown(report))
    return report


# -- comparison ------------------------------------------------------------------------------------


def compare_reports(named_reports: Sequence[tuple[str, dict]], n_boot: int = 1000, seed: int = 0) -> dict:
    """One row per (task, key, metric): each run's value, its delta vs the first run, whether that delta
    falls outside the first run's 95 % interval (None where the metric has no interval), and, where
    both runs stored per-item scores, the paired bootstrap of the delta over the items they share,
    resampling their documents (``paired``: delta, lo, hi, items, documents;
    :func:`clmap.evaluate.bootstrap.paired_interval`)."""
    from clmap.evaluate.bootstrap import ItemScores, paired_interval

    if len(named_reports) < 2:
        raise ValueError("a comparison needs at least two reports")
    names = [name for name, _ in named_reports]
    indexed = []
    for _, report in named_reports:
        indexed.append(
            {
                (task, m["key"], m["metric"]): m
                for task, result in report.get("tasks", {}).items()
                for m in result.get("metrics", [])
            }
        )
    rows = []
    for task, key, name in indexed[0]:
        base = indexed[0][task, key, name]
        row = {
            "task": task,
            "key": key,
            "metric": name,
            "values": {},
            "deltas": {},
            "outside_ci": {},
            "paired": {},
        }
        for run_name, metrics in zip(names, indexed, strict=False):
            entry = metrics.get((task, key, name))
            row["values"][run_name] = entry["value"] if entry else None
            if run_name == names[0] or entry is None:
                continue
            row["deltas"][run_name] = entry["value"] - base["value"]
            ci = base.get("ci")
            row["outside_ci"][run_name] = (not ci[0] <= entry["value"] <= ci[1]) if ci else None
            if base.get("items") and entry.get("items"):
                pair = (ItemScores.from_dict(entry["items"]), ItemScores.from_dict(base["items"]))
                row["paired"][run_name] = paired_interval([pair], n_boot, seed)
        rows.append(row)
    return {"runs": names, "baseline": names[0], "rows": rows}


def _delta_cell(row: dict, name: str) -> str:
    """Δ with its paired interval over shared items ([lo, hi], ``*`` when it excludes 0), or with the
    note that the shared items came from too few documents; else Δ with ``†`` when it is outside the
    baseline's own interval (the only test possible without per-item scores)."""
    from clmap.evaluate.bootstrap import TOO_FEW

    delta = row["deltas"].get(name)
    if delta is None:
        return "–"
    paired = row.get("paired", {}).get(name)
    if paired is None:
        return f"{delta:+.4g}" + ("†" if row["outside_ci"].get(name) else "")
    if paired["lo"] is None:
        return f"{paired['delta']:+.4g} ({TOO_FEW}: {paired['documents']})"
    mark = "*" if paired["lo"] > 0 or paired["hi"] < 0 else ""
    return f"{paired['delta']:+.4g} [{fmt(paired['lo'])}, {fmt(paired['hi'])}]{mark}"


def render_comparison(comparison: dict) -> str:
    names, base = comparison["runs"], comparison["baseline"]
    lines = [
        f"# clmap comparison (baseline: {base})",
        "",
        "Δ is each run minus the baseline. Interval used: where both runs stored per-item scores (chrF++, "
        "accuracies, LAC), [lo, hi] is a 95 % paired bootstrap over the items they share, resampling "
        "their documents, and `*` marks one that excludes 0 (Δ is then over the shared items); "
        "elsewhere `†` marks a Δ outside the baseline's own 95 % interval. Runs of an ablation with "
        "several seeds also have the seed-paired t interval (docs/ablation.md).",
        "",
    ]
    by_task: dict[str, list[dict]] = {}
    for row in comparison["rows"]:
        by_task.setdefault(row["task"], []).append(row)
    for task, rows in by_task.items():
        header = ["key", "metric", *names, *(f"Δ {n}" for n in names[1:])]
        body = []
        for row in rows:
            deltas = [_delta_cell(row, name) for name in names[1:]]
            body.append([row["key"], row["metric"], *(fmt(row["values"][n]) for n in names), *deltas])
        lines += [f"## {task_title(task)}", "", *markdown_table(header, body), ""]
    return "\n".join(lines)


def write_comparison(comparison: dict, out_dir: str | Path) -> list[Path]:
    """comparison.json, comparison.md and one grouped bar chart per task."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out_dir / "comparison.json", json.dumps(comparison, indent=2, ensure_ascii=False) + "\n"
    )
    atomic_write_text(out_dir / "comparison.md", render_comparison(comparison))
    written = [out_dir / "comparison.json", out_dir / "comparison.md"]
    by_task: dict[str, dict[str, dict[str, float]]] = {}
    for row in comparison["rows"]:
        values = {run: v for run, v in row["values"].items() if v is not None and not math.isnan(v)}
        by_task.setdefault(row["task"], {})[f"{row['key']} {row['metric']}"] = values
    for task, groups in by_task.items():
        path = out_dir / f"compare_{task}.png"
        written.append(plot_bars(groups, f"{task_title(task)}: runs compared", "value", path))
    return written
