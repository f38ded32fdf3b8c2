"""Statistics of the ablation: means with seed intervals, paired deltas vs the baselines, the headline.

Everything here reads the results file's runs (:mod:`clmap.experiments.results`): plain dicts, so the
tables can be rebuilt from ``docs/ablation_results.json`` alone. A metric is identified by
``(task, key, metric, split)``; a *view* says which prompt format the format-dependent tasks (MT and
translation choice) are taken in: ``own`` (the format the run trained on: the mapping format for CL
runs, the text template for the others) or ``template`` (the text template for every run).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# Two-sided 95 % Student t quantiles by degrees of freedom (no SciPy dependency for a lookup).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
VIEWS = ("own", "template")
# (task, metric, label) averaged over directions / pairs / languages for the headline; higher is better
# except bits per byte.
HEADLINE = [
    ("mt", "bleu", "BLEU"),
    ("mt", "chrf++", "chrF++"),
    ("clnlu", "accuracy", "choice acc."),
    ("lac", "lac", "LAC"),
    ("lac", "lac@map-floor", "LAC above floor"),  # mapping layer minus the embedding layer (lexical floor)
    ("lac", "p@1", "retrieval P@1"),
    ("ppl", "bits_per_byte", "bits/byte ↓"),
]

MetricId = tuple[str, str, str, str]  # task, key, metric, split


def mean_interval(values: Sequence[float]) -> tuple[float, float | None, float | None]:
    """Mean and its 95 % Student t interval over seeds (no interval from a single seed)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T95.get(n - 1, 1.96) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def run_metrics(run: dict, view: str) -> dict[MetricId, dict]:
    """One run's metrics in a view: format-free tasks as scored, MT and choice in the view's format."""
    wanted = run["own_format"] if view == "own" else "template"
    return {
        (m["task"], m["key"], m["metric"], m["split"]): m
        for m in run["metrics"]
        if m["format"] is None or m["format"] == wanted
    }


def select(runs: Sequence[dict], steps: int, view: str) -> dict[str, dict[int, dict[MetricId, dict]]]:
    """variant → seed → metrics of the stage-2 (or from-scratch) runs of one budget, in recipe order, and
    of a pretrained base evaluated as it is (variant ``pretrained``)."""
    out: dict = {}
    for run in runs:
        if run["stage"] == "pretrained" or (run["stage"] != "base" and run["steps"] == steps):
            out.setdefault(run["variant"], {})[run["seed"]] = run_metrics(run, view)
    return out


def aggregate(indexed: dict[str, dict[int, dict[MetricId, dict]]], baselines: Sequence[str]) -> dict:
    """Per variant and metric: mean with its seed interval (or the single run's own interval), and
    per-seed paired deltas vs each baseline present (same seed, same test items)."""
    variants = list(indexed)
    ids = list(dict.fromkeys(i for v in variants for metrics in indexed[v].values() for i in metrics))
    table: dict = {"variants": variants, "rows": []}
    for mid in ids:
        task, key, name, split = mid
        row: dict = {"task": task, "key": key, "metric": name, "split": split, "cells": {}, "deltas": {}}
        for v in variants:
            entries = [m[mid] for m in indexed[v].values() if mid in m]
            if not entries:
                continue
            values = [e["value"] for e in entries]
            mean, lo, hi = mean_interval(values)
            source = "seeds" if len(values) > 1 else ("run" if entries[0].get("ci") else None)
            if len(values) == 1 and entries[0].get("ci"):
                lo, hi = entries[0]["ci"]
            row["cells"][v] = {"mean": mean, "lo": lo, "hi": hi, "n": len(values), "interval": source}
        for base in baselines:
            for v in variants:
                if v == base or base not in indexed:
                    continue
                mine, theirs = indexed[v], indexed[base]
                seeds = [s for s in mine if s in theirs and mid in mine[s] and mid in theirs[s]]
                if not seeds:
                    continue
                mean, lo, hi = mean_interval([mine[s][mid]["value"] - theirs[s][mid]["value"] for s in seeds])
                base_ci = theirs[seeds[0]][mid].get("ci")
                outside = None
                if len(seeds) == 1 and base_ci:
                    outside = not base_ci[0] <= mine[seeds[0]][mid]["value"] <= base_ci[1]
                row["deltas"][base, v] = {
                    "mean": mean,
                    "lo": lo,
                    "hi": hi,
                    "n": len(seeds),
                    "outside_ci": outside,
                }
        table["rows"].append(row)
    return table


def headline_values(metrics: dict[MetricId, dict]) -> dict[tuple[str, str], dict[str, float]]:
    """(label, split) → {key: value} of one run's headline metrics (NaN values left out)."""
    return {
        group: {key: m["value"] for key, m in entries.items()}
        for group, entries in headline_entries(metrics).items()
    }


def headline_entries(metrics: dict[MetricId, dict]) -> dict[tuple[str, str], dict[str, dict]]:
    """(label, split) → {key: metric entry} of one run's headline metrics (NaN values left out)."""
    out: dict = {}
    for (task, key, name, split), m in metrics.items():
        for h_task, prefix, label in HEADLINE:
            if (
                task == h_task
                and (name == prefix or name.startswith(prefix + " "))
                and not math.isnan(m["value"])
            ):
                out.setdefault((label, split), {})[f"{key} {name}"] = m
    return out


def headline(indexed: dict[str, dict[int, dict[MetricId, dict]]], baselines: Sequence[str]) -> dict:
    """Per variant, headline metric and split: the per-seed mean over directions/pairs/languages, then
    the mean over seeds and paired deltas vs the baselines (interval over seeds, else range over keys)."""
    per_key: dict = {}  # (label, split, variant) → seed → {key: value}
    items: dict = {}  # (label, split, variant) → seed → {key: per-item scores or None}
    for v, seeds in indexed.items():
        for seed, metrics in seeds.items():
            for (label, split), entries in headline_entries(metrics).items():
                per_key.setdefault((label, split, v), {})[seed] = {k: m["value"] for k, m in entries.items()}
                items.setdefault((label, split, v), {})[seed] = {
                    k: m.get("items") for k, m in entries.items()
                }
    splits = list(dict.fromkeys(split for _, split, _ in per_key))
    result: dict = {"labels": [h[2] for h in HEADLINE], "splits": splits, "variants": list(indexed)}
    result["cells"], result["deltas"], result["paired"] = {}, {}, {}
    for (label, split, v), seeds in per_key.items():
        means = {s: sum(values.values()) / len(values) for s, values in seeds.items()}
        result["cells"][label, split, v] = (*mean_interval(list(means.values())), len(means))
        for base in baselines:
            if base == v or (label, split, base) not in per_key:
                continue
            theirs = per_key[label, split, base]
            common = [s for s in seeds if s in theirs]
            if not common:
                continue
            diffs = [means[s] - sum(theirs[s].values()) / len(theirs[s]) for s in common]
            mean, lo, hi = mean_interval(diffs)
            kind = "seeds"
            if len(common) == 1:  # one seed: the spread of the delta over directions / pairs / languages
                mine, other = seeds[common[0]], theirs[common[0]]
                key_diffs = [mine[k] - other[k] for k in mine if k in other]
                lo, hi, kind = min(key_diffs), max(key_diffs), "keys"
            result["deltas"][label, split, base, v] = (mean, lo, hi, kind)
            paired = paired_headline(items[label, split, v], items[label, split, base], common)
            if paired is not None:
                result["paired"][label, split, base, v] = paired
    return result


PAIRED_BOOTSTRAP = 1000  # replicates of the paired intervals (seed 0: the same resamples for every table)


def paired_headline(mine: dict, theirs: dict, seeds: Sequence[int]) -> dict | None:
    """The paired bootstrap of a headline delta (mean over keys, then over ``seeds``) over the items the
    two arms share, resampling documents jointly (:func:`clmap.evaluate.bootstrap.paired_mean_interval`);
    None unless every key of both arms has per-item scores at every seed (BLEU, P@1 and bits per byte
    have none)."""
    from clmap.evaluate.bootstrap import ItemScores, paired_mean_interval

    keys = [k for k in mine[seeds[0]] if all(k in mine[s] and k in theirs[s] for s in seeds)]
    groups = []
    for key in keys:
        pairs = [(mine[s][key], theirs[s][key]) for s in seeds]
        if any(a is None or b is None for a, b in pairs):
            return None
        groups.append([(ItemScores.from_dict(a), ItemScores.from_dict(b)) for a, b in pairs])
    return paired_mean_interval(groups, PAIRED_BOOTSTRAP, 0) if groups else None


def scale_curve(runs: Sequence[dict], variants: Sequence[str], view: str) -> dict:
    """(label, split) → variant → budget → (mean, lo, hi, n): the headline metrics per stage-2 budget,
    over the seeds each budget has; the base model (stage 1) is budget 0 of every variant."""
    values: dict = {}
    for run in runs:
        if run["stage"] in ("base", "pretrained"):
            targets, budget = list(variants), 0
        elif run["variant"] in variants:
            targets, budget = [run["variant"]], run["steps"]
        else:
            continue
        for (label, split), by_key in headline_values(run_metrics(run, view)).items():
            for v in targets:
                values.setdefault((label, split), {}).setdefault(v, {}).setdefault(budget, []).append(
                    sum(by_key.values()) / len(by_key)
                )
    return {
        key: {
            v: {b: (*mean_interval(vals), len(vals)) for b, vals in sorted(budgets.items())}
            for v, budgets in by_variant.items()
        }
        for key, by_variant in values.items()
    }


def lac_layers(runs: Sequence[dict], steps: int) -> dict[tuple[str, str], dict[str, dict[int, tuple]]]:
    """(pair, split) → variant → layer → (LAC mean, lo, hi) of one budget's runs: the seed interval, or
    the bootstrap band of a single run."""
    rows: dict = {}
    for run in runs:
        if run["stage"] == "base" or (run["steps"] != steps and run["stage"] != "pretrained"):
            continue
        for r in run["lac_layers"]:
            rows.setdefault((r["pair"], r["split"]), {}).setdefault(run["variant"], {}).setdefault(
                r["layer"], []
            ).append(r)
    out: dict = {}
    for where, by_variant in rows.items():
        for v, layers in by_variant.items():
            for layer, entries in layers.items():
                mean, lo, hi = mean_interval([e["lac"] for e in entries])
                if len(entries) == 1:
                    lo, hi = entries[0]["lac_lo"], entries[0]["lac_hi"]
                out.setdefault(where, {}).setdefault(v, {})[layer] = (mean, lo, hi)
    return out
