"""How well pooled states at the mapping layer separate translations from other text, raw and centred.

``python -m clmap.experiments.map_separation --model FOLDER [--splits dev,test,ood] [--limit 48]
[--out docs/map_separation.json]``: writes the JSON and a Markdown table beside it (``.md``).

For every bundled pair and split: each side encoded alone as the evaluator does
(:func:`clmap.evaluate.lm.pooled_hidden_states`, mean over the text tokens of ``<bos> text``), at the
mapping layer (``--layer``, :func:`clmap.objectives.hidden_state_layer`'s convention, default the
middle). With S_ij = cos(u_i, v_j), parallel pairs are the diagonal and non-parallel the rest. Reported
raw, after removing the mean of the 2N pooled states (``objective.map_center=all``), and after removing
each side's own mean (``map_center=language``, the default; docs/design.md "The mapping term"): mean and sd of
both, the AUC of one threshold on the cosine (all diagonal against all off-diagonal entries: what an
absolute ``1 − cos`` target can use), retrieval P@1 (both directions) and LAC (rank-based). Then the
mapping term of every form on those pairs (:func:`clmap.objectives.map_terms`, the training code) and
the norm of its gradient w.r.t. the pooled states times their mean norm: the
signal a form gives, independent of the states' scale. Forward passes only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch

from clmap.cli import add_debug_flag, run_main
from clmap.config import ConfigError, check_flag_ranges, existing_path, field_metadata
from clmap.outputs import writable_folder

FORMS = ("cosine", "centered", "infonce", "margin")


def separation(u: torch.Tensor, v: torch.Tensor) -> dict[str, float]:
    """Parallel (diagonal) vs non-parallel (off-diagonal) cosines of pooled ``u`` [N, H] and ``v``."""
    from clmap.evaluate.alignment import (
        language_alignment_coefficient,
        retrieval_precision_at_1,
        similarity_matrix,
    )

    s = similarity_matrix(u, v).double()
    n = s.shape[0]
    diag, off = s.diagonal(), s[~torch.eye(n, dtype=torch.bool)]
    # AUC by Mann-Whitney: the chance that a parallel pair scores above a non-parallel one (ties ½)
    auc = ((diag[:, None] > off[None, :]).double() + 0.5 * (diag[:, None] == off[None, :]).double()).mean()
    p_ab, p_ba = retrieval_precision_at_1(s)
    lac, _, _ = language_alignment_coefficient(s, n_boot=0)
    return {
        "parallel_mean": float(diag.mean()),
        "parallel_sd": float(diag.std()),
        "nonparallel_mean": float(off.mean()),
        "nonparallel_sd": float(off.std()),
        "auc": float(auc),
        "p_at_1": 0.5 * (p_ab + p_ba),
        "lac": lac,
    }


def form_signal(u: torch.Tensor, v: torch.Tensor, temperature: float, margin: float) -> dict[str, dict]:
    """L_map of each form on these pairs (step forms centred per language, the default), and
    |∇_(u,v) L_map| · mean |u| (a scale-free gradient signal)."""
    from clmap.config import ObjectiveConfig
    from clmap.objectives import map_terms

    out = {}
    scale = float(torch.cat([u, v]).norm(dim=1).mean())
    languages = torch.tensor([0] * len(u) + [1] * len(v))  # map_center=language: each side its own mean
    for form in FORMS:
        cfg = ObjectiveConfig(map_loss=form, infonce_temperature=temperature, map_margin=margin)
        a, b = u.double().requires_grad_(), v.double().requires_grad_()
        loss = map_terms(a, b, cfg, languages).mean()
        ga, gb = torch.autograd.grad(loss, (a, b))
        grad = float(torch.sqrt((ga**2).sum() + (gb**2).sum()))
        out[form] = {"loss": float(loss.detach()), "grad_x_norm": grad * scale}
    return out


def truncated_decoder(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    """The model's decoder without its output layer and without the layers after hidden state ``layer``.

    Hidden state ``layer`` is then unchanged (one layer more is kept so that the final norm, which
    transformers applies to the last entry, falls after it), and a forward skips the 262 k-row output
    layer of a model like Gemma 3, which costs more than its decoder."""
    decoder = model.get_decoder()
    if layer < decoder.config.num_hidden_layers:
        decoder.layers = decoder.layers[: layer + 1]
        decoder.config.num_hidden_layers = layer + 1
    return decoder


def markdown_table(result: dict) -> str:
    """The measurement as a short Markdown table (docs/map_separation.md), one line per pair and split."""
    meta = result["meta"]
    lines = [
        f"# Pooled-state separation at hidden state {meta['layer']} of {meta['num_layers']} "
        f"({meta['model_type']})",
        "",
        f"Model: {meta.get('model_name', meta['model'])}. Written by `{meta['command']}` "
        f"({meta['wall_s']} s{'; ' + meta['encode_note'] if 'encode_note' in meta else ''}; {meta['cpu']}).",
        "Cosine of the pooled source",
        "states of parallel (diagonal) and non-parallel (off-diagonal) pairs; AUC of one cosine threshold",
        "between them; retrieval P@1 among the split's pairs (mean of both directions). `centred`: the mean",
        "of both sides removed (`objective.map_center=all`); `per side`: each side's",
        "own mean removed (`objective.map_center=language`, the default). Last columns: the scale-free",
        "gradient norm |∇L_map| · mean |state| of each form on these pairs (step forms centred per side).",
        "",
        "| pair | split | n | raw par | raw non | raw AUC | raw P@1 | centred par | centred non | "
        "centred AUC | centred P@1 | per side AUC | per side P@1 | "
        + " | ".join(f"{f} grad" for f in FORMS)
        + " |",
        "|" + "---|" * (13 + len(FORMS)),
    ]
    for row in result["rows"]:
        r, c, s = row["raw"], row["centered"], row.get("centered_per_side", {})
        cells = [row["pair"], row["split"], str(row["n"])]
        cells += [f"{r['parallel_mean']:.4f}", f"{r['nonparallel_mean']:.4f}", f"{r['auc']:.3f}"]
        cells += [f"{r['p_at_1']:.3f}", f"{c['parallel_mean']:.3f}", f"{c['nonparallel_mean']:.3f}"]
        cells += [f"{c['auc']:.3f}", f"{c['p_at_1']:.3f}"]
        cells += [f"{s['auc']:.3f}", f"{s['p_at_1']:.3f}"] if s else ["", ""]
        cells += [f"{row['forms'][f]['grad_x_norm']:.3g}" for f in FORMS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


PROG = "clmap.experiments.map_separation"
# Counts and scales of the command line, in the options' range notation; the signal table's τ and m
# take the ranges of the training options they stand for.
RANGES = {
    "--layer": "[-1, inf)",
    "--limit": "[1, inf)",
    "--batch-size": "[1, inf)",
    "--temperature": field_metadata()["objective.infonce_temperature"]["range"],
    "--margin": field_metadata()["objective.map_margin"]["range"],
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {PROG}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="", help="a Hugging Face folder or a clmap run folder")
    p.add_argument("--layer", type=int, default=-1, help="hidden state (default -1: the middle layer)")
    p.add_argument("--pairs", default="en-cs,en-zh,en-ja,en-uk,cs-uk,zh-ja")
    p.add_argument("--splits", default="dev,test,ood")
    p.add_argument("--limit", type=int, default=48, help="pairs per pair and split (the first ones)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--temperature", type=float, default=0.05, help="infonce τ of the signal table")
    p.add_argument("--margin", type=float, default=0.2, help="margin m of the signal table")
    p.add_argument("--out", default="docs/map_separation.json", help="the JSON; the .md table goes beside it")
    p.add_argument(
        "--cache", default="", help="pooled states saved here (torch.save); those found there are reused"
    )
    p.add_argument("--table-only", action="store_true", help="rewrite the .md table from --out's JSON")
    add_debug_flag(p)
    return p


def read_result(out: Path) -> dict:
    """The JSON an earlier run wrote to ``--out`` (for ``--table-only``), or one line saying why not."""
    existing_path("--out", out, "file")
    try:
        result = json.loads(out.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--out {out}: not a JSON file this command wrote ({exc})") from None
    if not isinstance(result, dict) or not {"meta", "rows"} <= result.keys():
        raise ConfigError(f"--out {out}: not a JSON file this command wrote (no meta and rows)")
    return result


def check_out(out: Path) -> None:
    """--out is a .json file in a writable folder: the table goes to ``out.with_suffix(".md")``, which
    must be another file."""
    if out.suffix != ".json":
        raise ConfigError(f"--out {out}: expected a .json file (the .md table is written beside it)")
    writable_folder(out.parent, "--out's folder")


def check_arguments(args: argparse.Namespace) -> tuple[int, dict[str, list], dict]:
    """Every argument against its meaning before the model's weights are read: the ranges, --out (a
    .json whose folder is writable), the model folder and its layer count (from its config alone), every
    pair and split's bundled data, and a --cache that exists (read here). Returns the layer, the
    segments by ``pair/split`` and the cache."""
    from transformers import AutoConfig

    from clmap.evaluate.lm import CheckpointError, resolve_checkpoint
    from clmap.evaluate.options import parse_pairs, parse_splits
    from clmap.evaluate.sources import EvalDataError, parallel_segments
    from clmap.objectives import hidden_state_layer

    check_flag_ranges(args, RANGES)
    check_out(Path(args.out))
    if not args.model:
        raise ConfigError("--model is required (a Hugging Face folder or a clmap run folder)")
    try:
        model_dir, _ = resolve_checkpoint(args.model)
        num_layers = int(AutoConfig.from_pretrained(str(model_dir), local_files_only=True).num_hidden_layers)
        layer = hidden_state_layer(args.layer, num_layers, "--layer")
    except (CheckpointError, OSError, ValueError) as exc:  # hidden_state_layer: a ValueError naming --layer
        message = str(exc)
        raise ConfigError(message if message.startswith("--") else f"--model {message}") from None
    segments = {}
    for a, b in parse_pairs(args.pairs, "--pairs"):
        for split in parse_splits(args.splits, "--splits"):
            try:
                segments[f"{a}-{b}/{split}"] = parallel_segments(a, b, split, limit=args.limit)
            except EvalDataError as exc:
                raise ConfigError(f"--pairs {a}-{b} --splits {split}: {exc}") from None
    cache = {}
    if args.cache:
        writable_folder(Path(args.cache).parent, "--cache's folder")
        if Path(args.cache).exists():
            try:
                cache = torch.load(args.cache)
            except Exception as exc:  # noqa: BLE001 - whatever torch.load finds wrong, said in one line
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ConfigError(
                    f"--cache {args.cache}: not a cache this command wrote ({reason})"
                ) from None
    return layer, segments, cache


def measure(args: argparse.Namespace, argv: list[str]) -> dict:
    """The measurement of the checked ``args``: encode, compare, write --out and its table."""
    out = Path(args.out)
    if args.table_only:
        check_out(out)
        result = read_result(out)
        out.with_suffix(".md").write_text(markdown_table(result), encoding="utf-8")
        return result
    layer, segments_of, cache = check_arguments(args)
    from clmap.evaluate.lm import load_checkpoint, pooled_hidden_states

    torch.manual_seed(0)
    start = time.perf_counter()
    lm = load_checkpoint(args.model, dtype=torch.float32)
    model_type, num_layers = lm.model.config.model_type, lm.num_layers
    encoder = truncated_decoder(lm.model, layer)
    lm = dataclasses.replace(lm, model=encoder)
    rows = []
    for key, segments in segments_of.items():
        pair, split = key.split("/")
        if key in cache and len(cache[key][0]) == len(segments):
            u, v = cache[key]
        else:
            u = pooled_hidden_states(lm, [s.src for s in segments], args.batch_size)[layer]
            v = pooled_hidden_states(lm, [s.tgt for s in segments], args.batch_size)[layer]
        mean = torch.cat([u, v]).mean(0)
        row = {"pair": pair, "split": split, "n": len(segments)}
        row["raw"] = separation(u, v)
        row["centered"] = separation(u - mean, v - mean)
        row["centered_per_side"] = separation(u - u.mean(0), v - v.mean(0))
        row["forms"] = form_signal(u, v, args.temperature, args.margin)
        rows.append(row)
        if args.cache:
            cache[key] = (u, v)
            torch.save(cache, args.cache)
        r, c = row["raw"], row["centered"]
        print(
            f"{pair} {split} n={len(segments)}: raw {r['parallel_mean']:.4f} vs "
            f"{r['nonparallel_mean']:.4f} (AUC {r['auc']:.3f}, P@1 {r['p_at_1']:.3f}); "
            f"centred {c['parallel_mean']:.3f} vs "
            f"{c['nonparallel_mean']:.3f} (AUC {c['auc']:.3f}, P@1 {c['p_at_1']:.3f})",
            flush=True,
        )
    result = {
        "meta": {
            "command": f"python -m {PROG} " + " ".join(argv),
            "model": str(args.model),
            "model_type": model_type,
            "num_layers": num_layers,
            "layer": layer,
            "limit": args.limit,
            "temperature": args.temperature,
            "margin": args.margin,
            "dtype": "float32",
            "cpu": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
            "wall_s": round(time.perf_counter() - start, 1),
        },
        "rows": rows,
    }
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown_table(result), encoding="utf-8")
    print(f"wrote {out} and {out.with_suffix('.md')} ({result['meta']['wall_s']} s)")
    return result


def main(argv: list[str] | None = None) -> int:
    """Exit status 2 with one line for a bad argument or input (``--debug``: the traceback)."""

    def run(args: list[str]) -> int:
        measure(build_parser().parse_args(args), args)
        return 0

    return run_main(run, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
