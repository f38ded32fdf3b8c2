"""The ablation's generated tables and figures, and the write-up they are inserted into.

``docs/ablation.md`` is hand-written prose with marked blocks (``<!-- ablation:NAME -->`` …
``<!-- /ablation:NAME -->``) that :func:`write_docs` refills from the results file; every table of
every metric goes to ``docs/ablation_results.md``, the figures to ``docs/ablation_*.png``. Nothing
here holds prose: only headings, table captions and the numbers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from clmap.evaluate.report import fmt, markdown_table, task_title
from clmap.experiments import plots, stats
from clmap.experiments.recipe import BASELINES, LABELS

SPLIT_NAMES = {"test": "in-domain", "ood": "out-of-domain"}
VIEW_TITLES = {
    "own": "each run in the format it trained on (CL runs: mapping format; others: text template)",
    "template": "every run in the text template",
}
BLOCK = re.compile(r"(<!-- ablation:(?P<name>[\w-]+) -->\n).*?(<!-- /ablation:(?P=name) -->)", re.S)


def fmt_delta(value: float) -> str:
    return f"{value:+.4g}" if abs(value) < 10 else f"{value:+.2f}"


def cell(mean: float, lo: float | None, hi: float | None, delta: bool = False) -> str:
    """``mean [lo, hi]`` in the tables' number format (the test reads the tables back with it)."""
    text = fmt_delta(mean) if delta else fmt(mean)
    return text + (f" [{fmt(lo)}, {fmt(hi)}]" if lo is not None else "")


def split_name(split: str) -> str:
    return f"{SPLIT_NAMES[split]} ({split})" if split in SPLIT_NAMES else split


def label(variant: str) -> str:
    return LABELS.get(variant, variant)


# -- tables ------------------------------------------------------------------------------------------
def headline_tables(head: dict, labels: Sequence[str] | None = None) -> list[str]:
    """The headline metrics (rows: metric and split, in-domain beside out-of-domain) per variant, then
    the deltas vs each baseline."""
    variants, wanted = head["variants"], labels or head["labels"]
    rows = [(m, s) for m in head["labels"] if m in wanted for s in head["splits"]]
    body = [
        [
            m,
            split_name(s),
            *(cell(*head["cells"][m, s, v][:3]) if (m, s, v) in head["cells"] else "–" for v in variants),
        ]
        for m, s in rows
        if any((m, s, v) in head["cells"] for v in variants)
    ]
    lines = markdown_table(["metric (mean over keys)", "split", *map(label, variants)], body)
    for base in BASELINES:
        others = [v for v in variants if v != base]
        body = [
            [
                m,
                split_name(s),
                *(
                    cell(*head["deltas"][m, s, base, v][:3], delta=True)
                    if (m, s, base, v) in head["deltas"]
                    else "–"
                    for v in others
                ),
            ]
            for m, s in rows
            if any((m, s, base, v) in head["deltas"] for v in others)
        ]
        if body:
            lines += [
                "",
                f"Δ vs {label(base)}:",
                "",
                *markdown_table(["metric", "split", *map(label, others)], body),
            ]
    return lines


def delta_lines(head: dict) -> list[str]:
    """One line per variant, baseline and split: the headline deltas the write-up discusses, each with
    its interval over seeds (or range over keys from one seed) and, where the items were stored, the
    paired bootstrap over the shared items (``paired [lo, hi]``)."""
    lines = []
    for base in BASELINES:
        for v in head["variants"]:
            for s in head["splits"]:
                parts = [
                    f"{m} {fmt_delta(d[0])} [{fmt(d[1])}, {fmt(d[2])}]"
                    + paired_note(head.get("paired", {}).get((m, s, base, v)))
                    for m in head["labels"]
                    if (d := head["deltas"].get((m, s, base, v)))
                ]
                if parts:
                    lines.append(f"- {label(v)} vs {label(base)}, {split_name(s)}: " + "; ".join(parts))
    return lines


def paired_note(paired: dict | None) -> str:
    """`` (paired [lo, hi]*, N items / D docs)``: ``*`` when the interval excludes 0; '' without one."""
    if paired is None:
        return ""
    if paired["lo"] is None:
        return f" (paired: {paired['documents']} documents, too few for an interval)"
    mark = "*" if paired["lo"] > 0 or paired["hi"] < 0 else ""
    where = f"{paired['items']} items / {paired['documents']} docs"
    return f" (paired [{fmt(paired['lo'])}, {fmt(paired['hi'])}]{mark}, {where})"


def scale_table(curve: dict, variants: Sequence[str]) -> list[str]:
    """Rows: metric, split and stage-2 budget (0 = the base model); columns: the variants and Δ."""
    body = []
    for (m, s), by_variant in curve.items():
        budgets = sorted({b for v in variants for b in by_variant.get(v, {})})
        for b in budgets:
            cells = [by_variant.get(v, {}).get(b) for v in variants]
            row = [m, split_name(s), str(b) if b else "0 (base)"]
            row += [cell(*c[:3]) + (f" (n={c[3]})" if c[3] > 1 else "") if c else "–" for c in cells]
            if len(variants) == 2:
                row.append(fmt_delta(cells[1][0] - cells[0][0]) if cells[0] and cells[1] else "–")
            body.append(row)
    header = ["metric", "split", "stage-2 steps", *map(label, variants)]
    header += [f"Δ {variants[1]} − {variants[0]}"] if len(variants) == 2 else []
    return markdown_table(header, body)


def budget_table(runs: Sequence[dict], steps: int) -> list[str]:
    """Token budget and final training losses per variant at one budget (means over seeds)."""
    by_variant: dict[str, list[dict]] = {}
    for run in runs:
        if run["stage"] == "base" or run["steps"] == steps:
            by_variant.setdefault(run["variant"], []).append(run["training"])
    rows = []
    for v, trainings in by_variant.items():

        def avg(key: str, trainings=trainings) -> float | None:
            values = [t[key] for t in trainings if t[key] is not None]
            return sum(values) / len(values) if values else None

        rows.append(
            [
                label(v),
                str(trainings[0]["steps"]),
                f"{trainings[0]['budget_tokens']:,}",
                f"{avg('input_tokens'):,.0f}",
                f"{avg('target_tokens'):,.0f}",
                fmt(avg("final_loss_ntp")),
                fmt(avg("final_loss_cl")),
                fmt(avg("final_loss_map")),
                f"{avg('train_seconds') / 60:.1f}",
            ]
        )
    header = ["run", "steps", "budget (steps×batch×seq)", "input tokens", "target tokens"]
    header += ["final NTP loss", "final CL loss", "final map loss", "train min"]
    return markdown_table(header, rows)


def metric_tables(table: dict) -> list[str]:
    """Every metric per task (rows: key, metric, split), then its deltas vs each baseline."""
    variants, lines = table["variants"], []
    by_task: dict[str, list[dict]] = {}
    for row in table["rows"]:
        by_task.setdefault(row["task"], []).append(row)
    for task, rows in by_task.items():
        lines += [f"### {task_title(task)}", ""]
        body = [
            [
                r["key"],
                r["metric"],
                r["split"],
                *(cell(c["mean"], c["lo"], c["hi"]) if (c := r["cells"].get(v)) else "–" for v in variants),
            ]
            for r in rows
        ]
        lines += markdown_table(["key", "metric", "split", *map(label, variants)], body) + [""]
        for base in BASELINES:
            others = [v for v in variants if v != base]
            body = []
            for r in rows:
                deltas = [r["deltas"].get((base, v)) for v in others]
                cells = [
                    "–"
                    if d is None
                    else cell(d["mean"], d["lo"], d["hi"], delta=True) + ("*" if d["outside_ci"] else "")
                    for d in deltas
                ]
                if any(c != "–" for c in cells):
                    body.append([r["key"], r["metric"], r["split"], *cells])
            if body:
                header = ["key", "metric", "split", *map(label, others)]
                lines += [f"Δ vs {label(base)}:", "", *markdown_table(header, body), ""]
    return lines


def lac_table(lac: dict, variants: Sequence[str]) -> list[str]:
    body = [
        [
            pair,
            split,
            str(layer),
            *(fmt(by_variant[v][layer][0]) if layer in by_variant.get(v, {}) else "–" for v in variants),
        ]
        for (pair, split), by_variant in lac.items()
        for layer in sorted({x for layers in by_variant.values() for x in layers})
    ]
    return markdown_table(["pair", "split", "layer", *map(label, variants)], body)


def run_line(meta: dict) -> str:
    """What produced the numbers: command, model, budgets, seeds, evaluation, wall time."""
    parts = [
        f"Command: `{meta['command']}`",
        f"protocol: {meta['protocol']}",
        f"model: {meta['model']}",
        f"main budget: {meta['main_budget']} steps",
        f"seeds: {', '.join(map(str, meta['seeds']))}",
        f"evaluation: tasks {meta['tasks']}, pairs {meta['pairs']}, splits {meta['splits']}, "
        f"{meta['eval_limit'] or 'all'} items per task and direction, evaluation seed 0",
        f"wall time {meta['wall_min']:.1f} min (summed over parallel jobs: training "
        f"{meta['train_min']:.1f} min, evaluation {meta['eval_min']:.1f} min)",
    ]
    if meta.get("train_reused") or meta.get("eval_reused"):
        parts[-1] = (
            f"wall time of the last invocation {meta['wall_min']:.1f} min (summed over its parallel jobs: "
            f"training {meta['train_min']:.1f} min, evaluation {meta['eval_min']:.1f} min), which reused "
            f"{meta['train_reused']} of {meta['train_jobs']} training jobs and {meta['eval_reused']} of "
            f"{meta['eval_jobs']} evaluations from earlier invocations"
        )
    if meta["protocol"] == "continue":
        parts.insert(3, f"stage 1: {meta['base_steps']} steps; scale budgets {meta['budgets']}")
    return "; ".join(parts) + "."


# -- the documents -----------------------------------------------------------------------------------
def render(results: dict, docs: Path, stem: str = "ablation") -> tuple[dict[str, list[str]], list[Path]]:
    """The write-up's blocks and the figures (written to ``docs``) of one results file."""
    meta, runs = results["meta"], results["runs"]
    main = meta["main_budget"]
    own, template = stats.select(runs, main, "own"), stats.select(runs, main, "template")
    head, head_template = stats.headline(own, BASELINES), stats.headline(template, BASELINES)
    format_labels = [h[2] for h in stats.HEADLINE if h[0] in ("mt", "clnlu")]
    scale_variants = [v for v in meta.get("scale_variants", []) if any(r["variant"] == v for r in runs)]
    curve = stats.scale_curve(runs, scale_variants, "own") if meta["protocol"] == "continue" else {}
    lac = stats.lac_layers(runs, main)
    table = stats.aggregate(own, BASELINES)
    figures = [
        *(plots.plot_headline(head, s, docs / f"{stem}_headline_{s}.png") for s in head["splits"]),
        plots.plot_scale(curve, docs / f"{stem}_scale.png"),
        plots.plot_metric(table, "mt", "chrf++", "chrF++ per direction", docs / f"{stem}_mt_chrf.png"),
        plots.plot_metric(
            table, "clnlu", "accuracy", "Translation choice (chance 0.25)", docs / f"{stem}_choice.png"
        ),
        plots.plot_metric(
            table, "ppl", "bits_per_byte", "Bits per byte (lower is better)", docs / f"{stem}_ppl.png"
        ),
        plots.plot_lac(lac, docs / f"{stem}_lac_per_layer.png"),
        plots.plot_training(runs, main, docs / f"{stem}_training.png"),
    ]
    figures = [f for f in figures if f is not None]
    blocks = {
        "run": [run_line(meta)],
        "headline": headline_tables(head),
        "template-view": headline_tables(head_template, format_labels),
        "deltas": delta_lines(head),
        "scale": scale_table(curve, scale_variants) if curve else ["(no scale curve in this protocol)"],
        "budget": budget_table(runs, main),
        "figures": [f"![{f.stem}]({f.name})" for f in figures],
        "lac": lac_table(lac, table["variants"]),
        "metrics": metric_tables(table),
    }
    return blocks, figures


def results_markdown(blocks: dict[str, list[str]], stem: str) -> str:
    """Every generated table in one file, under headings (the prose is in the write-up)."""
    sections = [
        ("Run", "run"),
        ("Token budget and final training losses", "budget"),
        (f"Headline: {VIEW_TITLES['own']}", "headline"),
        (f"MT and translation choice: {VIEW_TITLES['template']}", "template-view"),
        ("Headline deltas", "deltas"),
        ("Scale curve", "scale"),
        ("Every metric (own format)", "metrics"),
        ("LAC per layer (0 = embeddings; mean over seeds)", "lac"),
        ("Figures", "figures"),
    ]
    lines = [f"# Ablation results (generated: do not edit; the write-up is [{stem}.md]({stem}.md))", ""]
    for title, name in sections:
        lines += [f"## {title}", "", *blocks[name], ""]
    return "\n".join(lines)


def fill_template(text: str, blocks: dict[str, list[str]]) -> str:
    """``text`` with every marked block replaced by its generated lines; an unknown block is an error."""

    def replace(match: re.Match) -> str:
        name = match["name"]
        if name not in blocks:
            raise KeyError(f"<!-- ablation:{name} -->: no such generated block; known: {', '.join(blocks)}")
        return match.group(1) + "\n".join(blocks[name]) + "\n" + match.group(3)

    return BLOCK.sub(replace, text)


def write_docs(results: dict, docs: Path, stem: str = "ablation") -> list[Path]:
    """``{stem}_results.md``, the figures and the refilled blocks of ``{stem}.md`` (if it exists)."""
    docs.mkdir(parents=True, exist_ok=True)
    blocks, figures = render(results, docs, stem)
    tables = docs / f"{stem}_results.md"
    tables.write_text(results_markdown(blocks, stem), encoding="utf-8")
    written = [tables, *figures]
    writeup = docs / f"{stem}.md"
    if writeup.is_file():
        writeup.write_text(fill_template(writeup.read_text(encoding="utf-8"), blocks), encoding="utf-8")
        written.append(writeup)
    return written
