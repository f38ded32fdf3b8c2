"""The ablation's generated tables and figures, and the write-up they are inserted into.

``docs/ablation.md`` is hand-written prose with marked blocks (``<!-- ablation:NAME -->`` …
``<!-- /ablation:NAME -->``) that :func:`write_docs` refills from the results file, and inline values
(``<!-- v:SPEC -->`` … ``<!-- /v -->``, :func:`inline_value`) that it refills in the prose, so that no
number of the write-up is typed by hand (tests/test_ablation.py checks that with
:mod:`clmap.experiments.provenance`); every table of every metric goes to ``docs/ablation_results.md``,
the figures to ``docs/ablation_*.png``. Nothing here holds prose: only headings, table captions and
the numbers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from clmap.evaluate.report import fmt, markdown_table, task_title
from clmap.experiments import plots, stats
from clmap.experiments.recipe import BASELINES, LABELS
from clmap.experiments.results import read_results

SPLIT_NAMES = {"test": "in-domain", "ood": "out-of-domain"}
VIEW_TITLES = {
    "own": "each run in the format it trained on (CL runs: mapping format; others: text template)",
    "template": "every run in the text template",
}
BLOCK = re.compile(r"(<!-- ablation:(?P<name>[\w-]+) -->\n).*?(<!-- /ablation:(?P=name) -->)", re.S)
INLINE = re.compile(r"(<!-- v:(?P<spec>[^>\n]+?) -->)[^\n]*?(<!-- /v -->)")
INTERVAL = re.compile(r"\[[-+−]?\d[\d.e+-]*, [-+−]?\d[\d.e+-]*\]")  # a printed [lo, hi]
# One primary endpoint per claim, fixed before reading the tables: (claim, headline label, split,
# baseline, variant). The baseline is the same pairs fed as plain text, so a gain is the mapping task's,
# not the parallel data's; out of domain, because in domain the runs trained on the split's own texts.
PRIMARY = [
    ("MT", "chrF++", "ood", "parallel_text", "cl_map"),
    ("alignment", "LAC above floor", "ood", "parallel_text", "cl_map"),
]
FALLBACK = {"LAC above floor": "LAC"}  # results files from before the floor was scored


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
    """Token budget, prediction targets by kind and final training losses per variant at one budget
    (means over seeds): the ½ NTP share is one of samples, so the targets it gives each kind are
    counted here (``targets_by_kind``, from the trainer's ``mix/`` shares; '–' in a results file from
    before they were recorded), and the targets relative to NTP only (what (c)–(e) give up)."""
    by_variant: dict[str, list[dict]] = {}
    for run in runs:
        if run["training"] is not None and (run["stage"] == "base" or run["steps"] == steps):
            by_variant.setdefault(run["variant"], []).append(run["training"])

    def avg(trainings: list[dict], key: str, kind: str | None = None) -> float | None:
        if kind is not None:
            found = [t.get("targets_by_kind") for t in trainings]
            values = [f[kind] for f in found if f and f.get(kind) is not None]
        else:
            values = [t[key] for t in trainings if t.get(key) is not None]
        return sum(values) / len(values) if values else None

    def count(value: float | None) -> str:
        return "–" if value is None else f"{value:,.0f}"

    reference = avg(by_variant.get("ntp_only", []), "target_tokens")
    rows = []
    for v, trainings in by_variant.items():
        targets = avg(trainings, "target_tokens")
        relative = "–"
        if reference and targets is not None and v not in ("base", "ntp_only"):
            relative = f"{100 * (targets / reference - 1):+.1f} %"
        rows.append(
            [
                label(v),
                str(trainings[0]["steps"]),
                f"{trainings[0]['budget_tokens']:,}",
                count(avg(trainings, "input_tokens")),
                count(targets),
                count(avg(trainings, "", "ntp")),
                count(avg(trainings, "", "pairs")),
                relative,
                fmt(avg(trainings, "final_loss_ntp")),
                fmt(avg(trainings, "final_loss_cl")),
                fmt(avg(trainings, "final_loss_map")),
                f"{avg(trainings, 'train_seconds') / 60:.1f}",
            ]
        )
    header = ["run", "steps", "budget (steps×batch×seq)", "input tokens", "target tokens"]
    header += ["NTP targets", "pair targets (CL or as text)", "targets vs (a)"]
    header += ["final NTP loss", "final CL loss", "final map loss", "train min"]
    lines = markdown_table(header, rows)
    if any(not t.get("targets_by_kind") for ts in by_variant.values() for t in ts):
        lines += [
            "",
            "NTP and pair targets: '–' where this results file predates their recording "
            "(`targets_by_kind` of each run's training summary, from the trainer's logged `mix/` shares).",
        ]
    return lines


def matched_targets_table(runs: Sequence[dict], curve: dict, variants: Sequence[str]) -> list[str]:
    """The scale curve re-read at matched prediction targets: each budget of the second variant
    against the first variant interpolated (linearly in target tokens, between the two budgets of its
    curve around) to the same number of targets. A fixed step budget gives the CL runs fewer targets
    than NTP only; this view asks whether the gain survives giving NTP only that many targets too.
    Seed-0 points of the curve except the main budget (mean over seeds); no interval."""
    if len(variants) != 2:
        return ["(no scale curve of two variants: no matched view)"]
    targets: dict[str, dict[int, list[float]]] = {}
    for run in runs:
        if run["stage"] not in ("base", "pretrained") and run["variant"] in variants and run["training"]:
            targets.setdefault(run["variant"], {}).setdefault(run["steps"], []).append(
                run["training"]["target_tokens"]
            )
    mean_targets = {v: {b: sum(t) / len(t) for b, t in by.items()} for v, by in targets.items()}
    first, second = variants
    if first not in mean_targets:
        return ["(no scale curve in this results file)"]
    body = []
    for (m, s), by_variant in curve.items():
        # the base model is every curve's point of 0 stage-2 targets
        ref = sorted((mean_targets[first].get(b, 0.0), c[0]) for b, c in by_variant.get(first, {}).items())
        for b, c in by_variant.get(second, {}).items():
            if b not in mean_targets.get(second, {}):  # the base (0 steps) is the same run for both
                continue
            t = mean_targets[second][b]
            around = [(x, y) for (x, y), (x2, y2) in zip(ref, ref[1:], strict=False) if x <= t <= x2]
            if not around:
                body.append([m, split_name(s), str(b), f"{t:,.0f}", fmt(c[0]), "– (outside the curve)", "–"])
                continue
            i = ref.index(around[0])
            (x0, y0), (x1, y1) = ref[i], ref[i + 1]
            at = y0 + (y1 - y0) * (t - x0) / (x1 - x0)
            body.append([m, split_name(s), str(b), f"{t:,.0f}", fmt(c[0]), fmt(at), fmt_delta(c[0] - at)])
    header = ["metric", "split", "stage-2 steps", f"targets of {label(second)}", label(second)]
    header += [f"{label(first)} at as many targets (interpolated)", "Δ at matched targets"]
    return markdown_table(header, body) if body else ["(no scale curve in this results file)"]


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


def items_line(meta: dict) -> str:
    """How many items each task scored: "32 items", or "256 items (mt 128)" with per-task limits."""
    own = meta.get("eval_task_limit") or {}
    line = f"{meta['eval_limit'] or 'all'} items"
    return line + (f" ({', '.join(f'{task} {n}' for task, n in own.items())})" if own else "")


def run_line(meta: dict) -> str:
    """What produced the numbers: command, model, budgets, seeds, evaluation, wall time."""
    parts = [
        f"Command: `{meta['command']}`",
        f"protocol: {meta['protocol']}",
        f"model: {meta['model']}",
        f"main budget: {meta['main_budget']} steps",
        f"seeds: {', '.join(map(str, meta['seeds']))}",
        f"evaluation: tasks {meta['tasks']}, pairs {meta['pairs']}, splits {meta['splits']}, "
        f"{items_line(meta)} per task and direction, evaluation seed 0",
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


def endpoint_lines(head: dict, runs: Sequence[dict], intervals: int | None) -> list[str]:
    """The primary endpoints (:data:`PRIMARY`) with their values, which interval is the primary one,
    that everything else is exploratory, and how many intervals the page prints (``intervals``)."""
    lines = [
        "Primary endpoints, one per claim, fixed in the generator (`PRIMARY` in "
        "`clmap/experiments/writeup.py`) for every results file; every other row, split, comparison "
        "and interval of this page is exploratory. They were declared in commit 2a2c3ae (2026-12-04 06:46 "
        "UTC): a results file written before then was not planned around them.",
        "",
    ]
    seeds = sorted({r["seed"] for r in runs if r["stage"] not in ("base", "pretrained")})
    for claim, metric, split, base, variant in PRIMARY:
        used = metric
        if (metric, split, base, variant) not in head["deltas"] and FALLBACK.get(metric):
            used = FALLBACK[metric]
        where = f"{used} {split_name(split)}, {label(variant)} minus {label(base)}"
        d = head["deltas"].get((used, split, base, variant))
        if d is None:
            lines.append(f"- {claim}: {where}: not in this results file.")
            continue
        kind = "t interval over seeds" if d[3] == "seeds" else "[min, max] over keys, not an interval"
        text = f"- {claim}: {where}: {cell(*d[:3], delta=True)} ({kind}, {len(seeds)} seed(s))"
        paired = head.get("paired", {}).get((used, split, base, variant))
        if paired is not None and paired["lo"] is not None:
            text += (
                f"; paired bootstrap over the shared items [{fmt(paired['lo'])}, {fmt(paired['hi'])}]"
                f" ({paired['items']} items / {paired['documents']} documents), the primary interval"
            )
        if used != metric:
            text += f" ({metric} is not in this results file, which predates it; {used} stands in)"
        lines.append(text + ".")
    if intervals is not None:
        lines += [
            "",
            f"This page prints {intervals} intervals (each 95 %, none corrected for multiplicity): at that "
            "count some exclude 0 by chance alone, so only the primary endpoints carry a claim.",
        ]
    return lines


# -- inline values of the prose ----------------------------------------------------------------------
def stats_context(results: dict) -> dict:
    """Everything the tables and the prose's inline values are computed from, for one results file."""
    meta, runs = results["meta"], results["runs"]
    main = meta["main_budget"]
    own, template = stats.select(runs, main, "own"), stats.select(runs, main, "template")
    scale_variants = [v for v in meta.get("scale_variants", []) if any(r["variant"] == v for r in runs)]
    curve = stats.scale_curve(runs, scale_variants, "own") if meta["protocol"] == "continue" else {}
    return {
        "meta": meta,
        "runs": runs,
        "main": main,
        "own": stats.headline(own, BASELINES),
        "template": stats.headline(template, BASELINES),
        "curve": curve,
        "scale_variants": scale_variants,
        "indexed": {"own": own, "template": template},
        "lac": stats.lac_layers(runs, main),
        "table": stats.aggregate(own, BASELINES),
    }


def inline_value(spec: str, ctx: dict) -> str:
    """The text of one inline value ``KIND|ARG|...`` of the prose, from a results file's statistics:

    - ``cell|VIEW|LABEL|SPLIT|VARIANT`` mean [lo, hi] of a headline cell (VIEW own or template);
      ``mean|…`` the mean alone
    - ``delta|VIEW|LABEL|SPLIT|BASE|VARIANT`` a headline delta with its interval; ``dmean|…`` alone
    - ``paired|LABEL|SPLIT|BASE|VARIANT`` the paired bootstrap interval of a headline delta
    - ``scale|LABEL|SPLIT|VARIANT|STEPS`` a scale-curve mean; ``sdelta|LABEL|SPLIT|STEPS`` its Δ
    - ``metric|TASK|KEY|METRIC|SPLIT|VARIANT`` one key's mean (own format)
    - ``training|VARIANT|KEY`` a training summary's value at the main budget, mean over seeds (a
      dotted KEY reads a nested one: ``targets_by_kind.ntp``);
      ``ratio|VARIANT|BASE|KEY`` VARIANT's over BASE's as a signed percentage
    - ``layer|PAIR|SPLIT|VARIANT|LAYER`` LAC at one layer
    """
    kind, *args = spec.split("|")
    if kind in ("cell", "mean"):
        view, m, s, v = args
        c = ctx[view]["cells"][m, s, v]
        return cell(*c[:3]) if kind == "cell" else fmt(c[0])
    if kind in ("delta", "dmean"):
        view, m, s, base, v = args
        if (m, s, base, v) not in ctx[view]["deltas"]:  # a comparison the tables do not print, e.g. (d) − (c)
            ctx[view]["deltas"].update(stats.headline(ctx["indexed"][view], (base,))["deltas"])
        d = ctx[view]["deltas"][m, s, base, v]
        return cell(*d[:3], delta=True) if kind == "delta" else fmt_delta(d[0])
    if kind == "paired":
        p = ctx["own"]["paired"][tuple(args)]
        return f"[{fmt(p['lo'])}, {fmt(p['hi'])}]"
    if kind == "scale":
        m, s, v, steps = args
        return fmt(ctx["curve"][m, s][v][int(steps)][0])
    if kind == "sdelta":
        m, s, steps = args
        first, second = ctx["scale_variants"]
        by = ctx["curve"][m, s]
        return fmt_delta(by[second][int(steps)][0] - by[first][int(steps)][0])
    if kind == "metric":
        task, key, name, s, v = args
        for row in ctx["table"]["rows"]:
            if (row["task"], row["key"], row["metric"], row["split"]) == (task, key, name, s):
                return fmt(row["cells"][v]["mean"])
        raise KeyError(spec)
    if kind in ("training", "ratio"):
        *variants, key = args

        def value(training: dict) -> float:
            for part in key.split("."):  # targets_by_kind.ntp: a nested value
                training = training[part]
            return training

        def mean(v: str) -> float:
            values = [
                value(r["training"])
                for r in ctx["runs"]
                if r["variant"] == v and r["training"] and (r["stage"] == "base" or r["steps"] == ctx["main"])
            ]
            return sum(values) / len(values)

        if kind == "training":
            return fmt(mean(variants[0]))
        return f"{100 * (mean(variants[0]) / mean(variants[1]) - 1):+.1f} %"
    if kind == "layer":
        pair, s, v, layer = args
        return fmt(ctx["lac"][pair, s][v][int(layer)][0])
    raise KeyError(f"<!-- v:{spec} -->: unknown kind {kind!r}")


def fill_inline(text: str, contexts: dict[str, dict], missing: list[str] | None = None) -> str:
    """``text`` with every inline value refilled; ``@STEM|…`` reads the results file of another stem
    (``contexts``: stem → statistics; '' is the page's own). A value the results do not hold is an
    error, or, given a ``missing`` list, printed as "–" and its spec appended (a run of fewer arms
    refilling a page written for all of them)."""

    def replace(match: re.Match) -> str:
        spec, stem = match["spec"], ""
        if spec.startswith("@"):
            stem, _, spec = spec[1:].partition("|")
        if stem not in contexts:
            raise KeyError(f"<!-- v:{match['spec']} -->: no results file {stem!r}")
        try:
            value = inline_value(spec, contexts[stem])
        except (KeyError, ValueError, ZeroDivisionError) as exc:
            if missing is None:
                raise KeyError(f"<!-- v:{match['spec']} -->: not in the results file ({exc})") from None
            missing.append(match["spec"])
            value = "–"
        return match.group(1) + value + match.group(3)

    return INLINE.sub(replace, text)


# -- the documents -----------------------------------------------------------------------------------
def render(
    results: dict, docs: Path, stem: str = "ablation", ctx: dict | None = None
) -> tuple[dict[str, list[str]], list[Path]]:
    """The write-up's blocks and the figures (written to ``docs``) of one results file (``ctx``: its
    :func:`stats_context`, if computed already)."""
    ctx = ctx or stats_context(results)
    meta, runs, main = ctx["meta"], ctx["runs"], ctx["main"]
    head, head_template, curve = ctx["own"], ctx["template"], ctx["curve"]
    scale_variants, lac, table = ctx["scale_variants"], ctx["lac"], ctx["table"]
    format_labels = [h[2] for h in stats.HEADLINE if h[0] in ("mt", "clnlu")]
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
        "endpoints": endpoint_lines(head, runs, None),
        "matched": matched_targets_table(runs, curve, scale_variants),
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
        ("Primary endpoints", "endpoints"),
        ("Token budget and final training losses", "budget"),
        (f"Headline: {VIEW_TITLES['own']}", "headline"),
        (f"MT and translation choice: {VIEW_TITLES['template']}", "template-view"),
        ("Headline deltas", "deltas"),
        ("Scale curve", "scale"),
        ("Scale curve at matched prediction targets", "matched"),
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


def write_docs(results: dict, docs: Path, stem: str = "ablation", strict: bool = True) -> list[Path]:
    """``{stem}_results.md``, the figures and the refilled blocks and inline values of ``{stem}.md``
    (if it exists); the endpoints block then counts the intervals the filled page prints. ``strict``:
    an inline value the results do not hold is an error; otherwise it is printed as "–" and named
    on stdout (the recipe after a run of fewer arms than the page is written for)."""
    docs.mkdir(parents=True, exist_ok=True)
    ctx = stats_context(results)
    blocks, figures = render(results, docs, stem, ctx)
    tables = docs / f"{stem}_results.md"
    tables.write_text(results_markdown(blocks, stem), encoding="utf-8")
    written = [tables, *figures]
    writeup = docs / f"{stem}.md"
    if writeup.is_file():
        text = writeup.read_text(encoding="utf-8")
        contexts = {"": ctx}
        for other in sorted(set(re.findall(r"<!-- v:@([^|>]+)\|", text))):
            contexts[other] = stats_context(read_results(docs / f"{other}_results.json"))
        missing: list[str] | None = None if strict else []
        filled = fill_inline(fill_template(text, blocks), contexts, missing)
        blocks["endpoints"] = endpoint_lines(ctx["own"], ctx["runs"], len(INTERVAL.findall(filled)))
        writeup.write_text(
            fill_inline(fill_template(text, blocks), contexts, None if strict else []), encoding="utf-8"
        )
        if missing:
            print(
                f"[ablation] {writeup}: {len(missing)} inline value(s) not in these results, printed as –: "
                + ", ".join(missing[:8])
                + (" …" if len(missing) > 8 else "")
            )
        written.append(writeup)
    return written
