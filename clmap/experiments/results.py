"""From the recipe's run folders to one results file: every run's scores and training summary, raw.

The results file (``docs/ablation_results.json``) holds per run: variant, seed, stage-2 budget, the
prompt format it trained for, every metric of every evaluation (tagged with split and prompt format),
its LAC-per-layer rows and a summary of its training log. The statistics, tables and plots are
computed from this file alone, so ``--report-only --results FILE`` regenerates the write-up anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

from clmap.evaluate.tasks import PROMPTED_TASKS  # their prompt depends on the format; others: plain text

CURVE_POINTS = 200  # training-loss points kept per run (the plot needs no more)


def report_entries(report: dict, prompt_format: str) -> tuple[list[dict], list[dict]]:
    """(metrics, LAC-per-layer rows) of one report.json, each tagged with its split and, for MT and
    translation choice, the prompt format it was scored in.

    A report scored on several splits marks each metric with ``split`` and a `` (split)`` suffix on its
    name; one scored on a single split names it in ``settings.split``.
    """
    default_split = str(report.get("settings", {}).get("split") or "test").split(",")[0]
    metrics, layers = [], []
    for task, result in report.get("tasks", {}).items():
        for m in result.get("metrics", []):
            split = m.get("split") or default_split
            metrics.append(
                {
                    "task": task,
                    "key": m["key"],
                    "metric": m["metric"].removesuffix(f" ({split})"),
                    "split": split,
                    "format": prompt_format if task in PROMPTED_TASKS else None,
                    "value": m["value"],
                    "ci": m.get("ci"),
                    "n": m.get("n"),
                    "items": m.get("items"),  # per-item scores: the paired intervals between runs
                }
            )
        if task == "lac":
            for name, detail in result.get("details", {}).items():
                split = detail.get("split") or default_split
                pair = name.removesuffix(f" ({split})")
                layers += [
                    {
                        "pair": pair,
                        "split": split,
                        **{k: row[k] for k in ("layer", "lac", "lac_lo", "lac_hi")},
                    }
                    for row in detail["layers"]
                ]
    return metrics, layers


def training_summary(run_dir: Path, upto: int | None = None) -> dict:
    """Token budget, end-of-training losses and the NTP loss curve of one run's metrics.jsonl, up to
    step ``upto`` (a checkpoint of a longer run is that run's log cut at the checkpoint)."""
    from clmap.metrics import read_metrics

    cfg = json.loads((run_dir / "config.json").read_text())
    steps = upto or int(cfg["train"]["steps"])
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["step"] <= steps]
    scale = steps / max(1, len(records))  # exact with log_every = 1; an estimate otherwise
    tail = records[-max(1, len(records) // 10) :]

    def tail_mean(key: str) -> float | None:
        values = [r[key] for r in tail if key in r]
        return sum(values) / len(values) if values else None

    stride = max(1, len(records) // CURVE_POINTS)
    return {
        "targets_by_kind": targets_by_kind(records, cfg["data"]["pairs"], scale),
        "steps": steps,
        "logged_steps": len(records),
        "budget_tokens": steps * cfg["train"]["global_batch"] * cfg["data"]["seq_len"],
        "input_tokens": scale * sum(round(r["tokens_per_s"] * r["step_time_s"]) for r in records),
        "target_tokens": scale * sum(r.get("tokens/targets", 0.0) for r in records),
        "train_seconds": sum(r["step_time_s"] for r in records),
        "final_loss_ntp": tail_mean("loss/ntp"),
        "final_loss_cl": tail_mean("loss/cl"),
        "final_loss_map": tail_mean("loss/map"),
        "curve": [[r["step"], r.get("loss/ntp")] for r in records[stride - 1 :: stride]],
    }


def targets_by_kind(records: list[dict], pairs: list[str], scale: float = 1.0) -> dict | None:
    """Prediction targets of monolingual text (``ntp``) and of pairs (``pairs``: CL targets, or pairs
    as plain text), from each logged step's ``mix/`` shares (the trainer's target tokens per language
    or pair) times its ``tokens/targets``: the ½ NTP share is one of samples, and this is what it gives
    each kind in tokens. None where the log has no ``mix/`` shares."""
    if not any(k.startswith("mix/") for r in records for k in r):
        return None
    totals = {"ntp": 0.0, "pairs": 0.0}
    for r in records:
        for key, share in r.items():
            if key.startswith("mix/"):
                kind = "pairs" if key.removeprefix("mix/") in pairs else "ntp"
                totals[kind] += share * r.get("tokens/targets", 0.0)
    return {kind: scale * total for kind, total in totals.items()}


def run_record(run, reports: dict[str, Path]) -> dict:
    """The results-file entry of one :class:`clmap.experiments.recipe.Run` from its evaluations
    (``reports``: prompt format → report.json; the first is the full one, later ones MT/choice only)."""
    metrics, layers = [], []
    for i, (prompt_format, path) in enumerate(reports.items()):
        found, found_layers = report_entries(json.loads(path.read_text(encoding="utf-8")), prompt_format)
        metrics += found if i == 0 else [m for m in found if m["format"] is not None]
        layers += found_layers if i == 0 else []
    trained = run.parent.run_dir if run.parent is not None else run.run_dir
    return {
        "name": run.name,
        "variant": run.variant,
        "seed": run.seed,
        "steps": run.steps,
        "stage": run.stage,
        "own_format": run.formats[0] if run.formats else "template",
        "formats": list(reports),
        "run_dir": str(run.run_dir),
        "metrics": metrics,
        "lac_layers": layers,
        "training": None  # a pretrained model evaluated as it is was not trained here
        if run.stage == "pretrained"
        else training_summary(trained, upto=run.steps if run.parent is not None else None),
    }


def write_results(path: Path, meta: dict, records: list[dict]) -> Path:
    """The results file: ``meta``, the scored item sets once (``item_sets``: ids and documents, shared
    by every run and metric that scored them) and one line per run, whose per-item scores name their
    set. At 256 items and 20 runs, repeating the ids in every metric made the file ~4x larger."""
    path.parent.mkdir(parents=True, exist_ok=True)
    item_sets: dict[str, dict] = {}
    by_content: dict[str, str] = {}
    runs = []
    for record in records:
        metrics = []
        for m in record["metrics"]:
            items = m.get("items")
            if items and "ids" in items:
                ids = {"ids": items["ids"], "docs": items["docs"]}
                name = by_content.setdefault(json.dumps(ids, ensure_ascii=False), f"s{len(by_content)}")
                item_sets[name] = ids
                rest = {k: v for k, v in items.items() if k not in ids}
                m = {**m, "items": {"set": name, **rest, "values": _ints(rest.get("values"))}}
            metrics.append(m)
        runs.append({**record, "metrics": metrics})

    def compact(value) -> str:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    text = (
        '{"meta": '
        + json.dumps(meta, ensure_ascii=False, indent=1)
        + ',\n"item_sets": '
        + compact(item_sets)
        + ',\n"runs": [\n'
        + ",\n".join(map(compact, runs))
        + "\n]}\n"
    )
    path.write_text(text, encoding="utf-8")
    return path


def _ints(values):
    """Integral floats (chrF++'s character n-gram counts) written as integers: half the digits."""
    if isinstance(values, list):
        return [_ints(v) for v in values]
    return int(values) if isinstance(values, float) and values.is_integer() else values


def read_results(path: Path) -> dict:
    """The results file with every metric's items whole again (ids and documents from ``item_sets``);
    files written before the sets were shared read as they are."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "runs" not in data or "meta" not in data:
        raise ValueError(f"{path}: not an ablation results file (expected 'meta' and 'runs')")
    item_sets = data.pop("item_sets", {})
    for record in data["runs"]:
        for m in record["metrics"]:
            items = m.get("items")
            if items and "set" in items:
                name = items.pop("set")
                if name not in item_sets:
                    raise ValueError(
                        f"{path}: run {record['name']!r} names item set {name!r}, not in item_sets"
                    )
                m["items"] = {**item_sets[name], **items}
    return data
