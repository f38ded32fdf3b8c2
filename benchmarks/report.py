"""Regenerate the results section of benchmarks/README.md and the plots from the CSVs in results/.

    python -m benchmarks.report [--results DIR] [--readme PATH] [--merge SUITE_OUT_DIR]

Every number in the README's results section comes from a CSV (never typed by hand): one table per
benchmark and device, the rows of the latest commit measured on that device, key columns only, plus
ratios against each peer where both were measured. Plots (matplotlib, Agg) go next to the CSVs.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

from clmap.cli import add_debug_flag, run_main
from clmap.config import existing_path
from clmap.evaluate.report import markdown_table
from clmap.outputs import writable_folder

HERE = Path(__file__).resolve().parent
START, END = "<!-- results:start -->", "<!-- results:end -->"

# Key columns per benchmark (those missing from a CSV are left out); other CSVs show all their columns.
KEY_COLUMNS: dict[str, list[str]] = {
    "mapping_loss": [
        "impl",
        "N",
        "H",
        "V",
        "dtype",
        "pass",
        "median_ms",
        "p20_ms",
        "p80_ms",
        "peak_extra_mb",
    ],
    "pooled_similarity": [
        "impl",
        "pass",
        "tokens",
        "hidden",
        "spans",
        "dtype",
        "median_ms",
        "gbps",
        "frac_of_roofline",
        "peak_mem_mb",
    ],
    "data_index": ["op", "num_samples", "cpp_ms", "reference_samples", "reference_ms", "speedup"],
    "train_throughput": [
        "config",
        "nproc",
        "params_m",
        "seq_len",
        "global_batch",
        "clmap_tokens_per_s",
        "ntp_tokens_per_s",
        "titan_tokens_per_s",
        "plain_tokens_per_s",
        "ntp_ratio",
        "titan_ratio",
        "tokens_per_s_ratio",
        "clmap_mfu",
        "ntp_mfu",
        "titan_mfu",
        "plain_mfu",
        "clmap_gpu_busy_share",
        "ntp_gpu_busy_share",
        "titan_gpu_busy_share",
        "clmap_peak_memory_gib",
        "ntp_peak_memory_gib",
        "titan_peak_memory_gib",
        "plain_peak_memory_gib",
        "peak_memory_ratio",
        "clmap_data_time_share",
        "ntp_data_time_share",
        "titan_data_time_share",
        "plain_data_time_share",
        "plain_pad_share",
        "titan_loss",
    ],
    "train_throughput_ab": [
        "config",
        "impl",
        "a",
        "b",
        "a_tokens_per_s",
        "b_tokens_per_s",
        "b_over_a",
        "a_mfu",
        "b_mfu",
        "a_gpu_busy_share",
        "b_gpu_busy_share",
        "a_peak_memory_gib",
        "b_peak_memory_gib",
        "a_data_time_share",
        "b_data_time_share",
    ],
    "gpu_check": ["kernel", "shape", "dtype", "max_rel_err", "torch_rel_err", "tolerance", "ok"],
}
# Benchmarks that compare implementations: (shape columns, implementation column, our implementation).
PEERS: dict[str, tuple[list[str], str, str]] = {
    "mapping_loss": (["N", "H", "V", "dtype", "pass"], "impl", "clmap"),
    "pooled_similarity": (["tokens", "hidden", "spans", "dtype", "pass"], "impl", "triton"),
}
ENV_COLUMNS = ["device", "torch", "triton", "python", "commit", "date"]
# What identifies one case: a case measured twice at the same commit shows its latest row only.
CASE_COLUMNS: dict[str, list[str]] = {
    "mapping_loss": ["impl", "N", "H", "V", "dtype", "pass"],
    "pooled_similarity": ["impl", "pass", "tokens", "hidden", "spans", "dtype"],
    "data_index": ["op", "num_samples", "capacity", "k_sources"],
    "train_throughput": ["config", "nproc", "steps", "seq_len", "global_batch", "hidden", "layers"],
    "train_throughput_ab": ["config", "impl", "a", "b", "steps"],
    "gpu_check": ["kernel", "shape", "dtype"],
}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def latest_by_device(rows: list[dict[str, str]], name: str = "") -> dict[str, list[dict[str, str]]]:
    """Per device, the rows of the commit measured last there (by date); each case's latest row wins."""
    by_device: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        by_device[row.get("device", "unknown")].append(row)
    out = {}
    for device, dev_rows in by_device.items():
        last = max(dev_rows, key=lambda r: r.get("date", ""))
        chosen = [r for r in dev_rows if r.get("commit", "") == last.get("commit", "")]
        case_cols = CASE_COLUMNS.get(name)
        if case_cols:
            latest: dict[tuple, dict[str, str]] = {}
            for row in sorted(chosen, key=lambda r: r.get("date", "")):
                latest[tuple(row.get(c, "") for c in case_cols)] = row
            chosen = list(latest.values())
        out[device] = chosen
    return out


def _num(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _cell(value: str | None) -> str:
    """The CSV's own text (the writers round already), so the README says exactly what the CSV says."""
    return "" if value is None else str(value).replace("|", "/")


def csv_table(rows: list[dict[str, str]], columns: list[str]) -> str:
    return "\n".join(markdown_table(columns, [[_cell(r.get(c)) for c in columns] for r in rows]))


def peer_ratios(name: str, rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Ours / peer for time and memory, per shape, for every peer measured on the same shape."""
    if name not in PEERS:
        return []
    shape_cols, impl_col, ours = PEERS[name]
    mem_col = "peak_extra_mb" if name == "mapping_loss" else "peak_mem_mb"
    groups: dict[tuple, dict[str, dict[str, str]]] = defaultdict(dict)
    for row in rows:
        groups[tuple(row.get(c, "") for c in shape_cols)][row[impl_col]] = row
    out = []
    for shape, impls in groups.items():
        if ours not in impls:
            continue
        mine = impls[ours]
        for peer, other in impls.items():
            if peer == ours:
                continue
            ratio = dict(zip(shape_cols, shape, strict=True))
            ratio["vs"] = peer
            t_mine, t_peer = _num(mine.get("median_ms")), _num(other.get("median_ms"))
            ratio["time_ratio"] = f"{t_mine / t_peer:.3f}" if t_mine and t_peer else ""
            m_mine, m_peer = _num(mine.get(mem_col)), _num(other.get(mem_col))
            ratio["memory_ratio"] = f"{m_mine / m_peer:.3f}" if m_mine is not None and m_peer else ""
            out.append(ratio)
    return out


def sort_rows(rows: list[dict[str, str]], columns: list[str]) -> list[dict[str, str]]:
    def key(row):
        return tuple(
            (0, _num(row.get(c)), "") if _num(row.get(c)) is not None else (1, 0.0, row.get(c, ""))
            for c in columns
        )

    return sorted(rows, key=key)


def render_section(results: Path) -> str:
    """The markdown between the markers: per benchmark, per device, the latest commit's table."""
    parts = [
        "_Generated by `python -m benchmarks.report` from `benchmarks/results/*.csv`; do not edit by hand._",
    ]
    for path in sorted(results.glob("*.csv")):
        name = path.stem
        rows = read_csv(path)
        if not rows:
            continue
        parts.append(f"\n### {name}\n")
        for device, dev_rows in sorted(latest_by_device(rows, name).items()):
            first = dev_rows[0]
            # Columns no row of this device fills (an implementation not run there) are left out.
            columns = [c for c in KEY_COLUMNS.get(name, []) if any(r.get(c) for r in dev_rows)]
            if not columns:
                columns = [c for c in first if c not in ENV_COLUMNS]
            env = ", ".join(f"{c} {first.get(c, '')}" for c in ENV_COLUMNS[1:])
            parts.append(f"**{device}** ({env}, {len(dev_rows)} rows)\n")
            order = PEERS[name][0] + [PEERS[name][1]] if name in PEERS else columns
            parts.append(csv_table(sort_rows(dev_rows, [c for c in order if c in first]), columns))
            ratios = peer_ratios(name, dev_rows)
            if ratios:
                ours = PEERS[name][2]
                parts.append(f"\nRatios {ours} / peer (below 1: {ours} is faster or smaller):\n")
                parts.append(csv_table(ratios, list(ratios[0])))
            parts.append("")
    plots = sorted(p.name for p in results.glob("*.png"))
    if plots:
        parts.append("\n### plots\n")
        parts += [f"![{p}](results/{p})" for p in plots]
    return "\n".join(parts).rstrip() + "\n"


def update_readme(readme: Path, section: str) -> None:
    """Replace what lies between the markers (appended with a heading if the markers are missing)."""
    text = readme.read_text() if readme.exists() else "# Benchmarks\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
    else:
        head, tail = text.rstrip() + "\n\n## Results\n\n", "\n"
    readme.write_text(f"{head}{START}\n{section}{END}{tail}")


def _plot_lines(ax, rows: list[dict[str, str]], x: str, y: str, label_cols: list[str]) -> int:
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        xv, yv = _num(row.get(x)), _num(row.get(y))
        if xv is not None and yv is not None:
            series[" ".join(row.get(c, "") for c in label_cols)].append((xv, yv))
    drawn = 0
    for label, points in sorted(series.items()):
        if len(points) < 2:
            continue
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        drawn += 1
    return drawn


def make_plots(results: Path) -> list[Path]:
    """Time and peak memory vs N and vs V for the mapping loss; time vs N for pooled similarity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    specs = {
        "mapping_loss": [("N", ["H", "V"], "vs_N"), ("V", ["N", "H"], "vs_V")],
        "pooled_similarity": [("tokens", ["hidden", "spans"], "vs_N")],
    }
    metrics = {
        "mapping_loss": [("median_ms", "time"), ("peak_extra_mb", "memory")],
        "pooled_similarity": [("median_ms", "time")],
    }
    for name, plans in specs.items():
        path = results / f"{name}.csv"
        if not path.exists():
            continue
        for device, rows in latest_by_device(read_csv(path), name).items():
            dev_tag = "".join(ch if ch.isalnum() else "_" for ch in device).strip("_")[:40]
            for x, fixed, suffix in plans:
                for y, what in metrics[name]:
                    # One panel per (fixed shape, pass, dtype), one line per implementation.
                    panels: dict[tuple, list[dict[str, str]]] = defaultdict(list)
                    for row in rows:
                        panels[tuple(row.get(c, "") for c in [*fixed, "pass", "dtype"])].append(row)
                    panels = {k: v for k, v in panels.items() if len({r.get(x) for r in v}) > 1}
                    if not panels:
                        continue
                    ncols = min(4, len(panels))
                    nrows = -(-len(panels) // ncols)
                    fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.6 * nrows), squeeze=False)
                    for ax in axes.flat[len(panels) :]:
                        ax.set_visible(False)
                    for ax, (key, panel_rows) in zip(axes.flat, sorted(panels.items()), strict=False):
                        _plot_lines(ax, panel_rows, x, y, ["impl"])
                        ax.set_xscale("log")
                        ax.set_yscale("log")
                        ax.set_xlabel(x)
                        ax.set_ylabel(y)
                        ax.set_title(
                            " ".join(f"{c}={v}" for c, v in zip([*fixed, "pass", "dtype"], key, strict=True)),
                            fontsize=8,
                        )
                        ax.legend(fontsize=7)
                    fig.suptitle(f"{name}: {what} {suffix.replace('_', ' ')} ({device})", fontsize=9)
                    fig.tight_layout()
                    out = results / f"{name}_{what}_{suffix}_{dev_tag}.png"
                    fig.savefig(out, dpi=90)
                    plt.close(fig)
                    written.append(out)
    return written


def merge(src: Path, results: Path) -> None:
    """Append the rows of every CSV in ``src`` (e.g. what the GPU suite brought back) to ``results``."""
    from benchmarks.common import append_csv

    for path in sorted(src.glob("*.csv")):
        rows = read_csv(path)
        if rows and "device" in rows[0]:  # benchmark rows only (not gpu_util.csv)
            append_csv(path.stem, rows, out_dir=results)
            print(f"merged {len(rows)} rows of {path} into {results / path.name}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--readme", type=Path, default=HERE / "README.md")
    parser.add_argument("--merge", type=Path, help="first append the CSV rows found in this folder")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.merge:  # rows merged into --results, which may be new then
        existing_path("--merge", args.merge, "folder")
    else:  # the rows to report are read from it
        existing_path("--results", args.results, "folder")
    if args.readme.exists():  # a new one is written with the section alone
        existing_path("--readme", args.readme, "file")
    writable_folder(args.results, "--results")  # the plots are written there, the rows merged into it
    writable_folder(args.readme.parent, "--readme's folder")
    if args.merge:
        merge(args.merge, args.results)
    plots = make_plots(args.results)
    section = render_section(args.results)
    update_readme(args.readme, section)
    print(f"wrote {len(plots)} plots under {args.results} and the results section of {args.readme}")


if __name__ == "__main__":
    sys.exit(run_main(main, None, "benchmarks.report"))
