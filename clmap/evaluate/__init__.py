"""Evaluate a clmap run or any local Hugging Face causal LM on the project's tasks (DESIGN.md,
"Evaluation"): MT, CLNLU, CLQA, cross-lingual summarisation, per-language perplexity and LAC.

``evaluate(...)`` runs the chosen tasks and, given ``out_dir``, writes report.json, report.md and the
plots; ``python -m clmap.evaluate`` is its command line.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from clmap.evaluate.sources import EvalDataError

ALL_TASKS = ("mt", "clnlu", "clqa", "clsum", "ppl", "lac")
DEFAULT_PAIRS = ("en-cs", "cs-uk", "zh-ja")
DATA_KEYS = ("mt", "clnlu", "clqa", "clsum", "ppl")

__all__ = ["ALL_TASKS", "DEFAULT_PAIRS", "EvalDataError", "evaluate", "parse_pairs"]


def parse_pairs(pairs: str | Sequence[str]) -> list[tuple[str, str]]:
    """``"en-cs,zh-ja"`` → [("en", "cs"), ("zh", "ja")]; rejects malformed codes early."""
    items = pairs.split(",") if isinstance(pairs, str) else list(pairs)
    parsed = []
    for item in (p.strip() for p in items if p.strip()):
        a, sep, b = item.partition("-")
        if not sep or not a or not b or a == b:
            raise ValueError(f"language pair {item!r} is not of the form 'src-tgt' with two different codes")
        parsed.append((a, b))
    return parsed


def _languages(pairs: Sequence[tuple[str, str]]) -> list[str]:
    return list(dict.fromkeys(lang for pair in pairs for lang in pair))


def evaluate(
    checkpoint: str | Path,
    tasks: Sequence[str] | None = None,
    pairs: str | Sequence[str] = DEFAULT_PAIRS,
    data: Mapping[str, str | Path] | None = None,
    out_dir: str | Path | None = None,
    limit: int | None = None,
    device: str = "cpu",
    batch_size: int = 8,
    num_beams: int = 1,
    split: str = "test",
    max_new_tokens: int = 128,
    mt_template: str | None = None,
    few_shot: int = 1,
    bertscore_model: str | None = None,
    lac_layer: int | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Run ``tasks`` on ``checkpoint`` for ``pairs``; returns the report (and writes it to ``out_dir``).

    ``data`` maps a task to a local input (``mt``: FLORES folder / parallel JSONL; ``clnlu``: Belebele
    folder; ``clqa``: XQuAD/MLQA folder; ``clsum``: CrossSum file/folder; ``ppl``: monolingual
    file/folder); without one, MT, translation choice, perplexity and LAC use the bundled ``split``,
    while Belebele, CLQA and CLSum (no bundled data) are skipped with a note.
    """
    import torch

    from clmap.evaluate import alignment, clnlu, clqa, clsum, mt, perplexity
    from clmap.evaluate.lm import load_checkpoint
    from clmap.evaluate.report import metric, write_report
    from clmap.evaluate.sources import check_bundled_coverage, monolingual_texts, parallel_segments

    tasks = list(ALL_TASKS if not tasks else tasks)
    unknown = [t for t in tasks if t not in ALL_TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {', '.join(ALL_TASKS)}")
    data = {k: v for k, v in (data or {}).items() if v}
    bad_keys = [k for k in data if k not in DATA_KEYS]
    if bad_keys:
        raise ValueError(f"--data keys {bad_keys} unknown; use {', '.join(DATA_KEYS)} (e.g. mt=PATH)")
    pair_list = parse_pairs(pairs)
    needs_bundled_pairs = "clnlu" in tasks or "lac" in tasks or ("mt" in tasks and "mt" not in data)
    check_bundled_coverage(
        pair_list if needs_bundled_pairs else [],
        _languages(pair_list) if "ppl" in tasks and "ppl" not in data else [],
    )
    torch.manual_seed(seed)
    lm = load_checkpoint(checkpoint, device=device)
    report: dict = {
        "checkpoint": str(checkpoint),
        "settings": {
            "tasks": ",".join(tasks),
            "pairs": ",".join(f"{a}-{b}" for a, b in pair_list),
            "split": split,
            "limit": limit,
            "num_beams": num_beams,
            "device": device,
            "prompt": "clmap mapping format"
            if lm.trained_by_clmap and not mt_template
            else f"text template, {few_shot}-shot",
        },
        "tasks": {},
    }
    directions = [d for a, b in pair_list for d in ((a, b), (b, a))]

    def segments(src: str, tgt: str, path=None, which: str = split, n: int | None = limit):
        return parallel_segments(src, tgt, split=which, path=path, limit=n)

    for task in tasks:
        print(f"[clmap.evaluate] {task} ...", file=sys.stderr)
        result: dict = {"metrics": [], "notes": [], "details": {}}
        if task == "mt":
            for src, tgt in directions:
                shots = []
                if few_shot and (mt_template or not lm.trained_by_clmap):
                    shots = segments(src, tgt, which="dev", n=few_shot) if "mt" not in data else []
                scores = mt.evaluate_mt(
                    lm,
                    src,
                    tgt,
                    segments(src, tgt, data.get("mt")),
                    shots=shots,
                    template=mt_template,
                    batch_size=batch_size,
                    num_beams=num_beams,
                    max_new_tokens=max_new_tokens,
                )
                key = f"{src}→{tgt}"
                for name in ("bleu", "spbleu", "chrf++"):
                    if name in scores:
                        result["metrics"].append(metric(key, name, scores[name], n=scores["n"]))
                result["metrics"].append(metric(key, "empty", scores["empty_generations"], n=scores["n"]))
                result["details"][key] = scores
            if not mt.flores200_spm_available():
                result["notes"].append(
                    "spBLEU omitted: sacrebleu's flores200 SentencePiece model is not cached"
                )
            if any(tgt == "ja" for _, tgt in directions) and mt.bleu_tokenizer_for("ja") == "char":
                result["notes"].append("ja BLEU uses character tokens (MeCab not installed)")
        elif task == "clnlu":
            for src, tgt in directions:
                pool = segments(src, tgt, n=None)  # distractors from the whole split, items up to --limit
                items = clnlu.translation_choice_items(lm, pool, src, tgt, seed=seed, n_items=limit)
                acc = clnlu.choice_accuracy(items, clnlu.model_scorer(lm, batch_size, f"choice {src}->{tgt}"))
                result["metrics"].append(
                    metric(f"{src}→{tgt} choice", "accuracy", acc["accuracy"], acc["ci"], acc["n"])
                )
                result["details"][f"choice {src}→{tgt}"] = acc
            if "clnlu" in data:
                for a, b in pair_list:
                    items = clnlu.belebele_items(lm, data["clnlu"], a, b, limit=limit)
                    acc = clnlu.choice_accuracy(
                        items, clnlu.model_scorer(lm, batch_size, f"belebele {a}-{b}")
                    )
                    key = f"belebele P:{a} Q:{b}"
                    result["metrics"].append(metric(key, "accuracy", acc["accuracy"], acc["ci"], acc["n"]))
                    result["details"][key] = acc
            else:
                result["notes"].append(
                    "Belebele skipped: pass --data clnlu=FOLDER (per-language JSONL files)"
                )
            result["notes"].append("accuracy with a 95 % Wilson interval; chance = 0.25")
        elif task == "clqa":
            if "clqa" not in data:
                result["notes"].append("skipped: pass --data clqa=FOLDER (XQuAD/MLQA JSON per language)")
            for a, b in pair_list if "clqa" in data else []:
                items = clqa.clqa_items(data["clqa"], a, b, limit=limit)
                scores = clqa.evaluate_clqa(
                    lm, items, a, b, batch_size=batch_size, bertscore_model=bertscore_model
                )
                key = f"C:{a} Q:{b}"
                for name in ("f1", "em", "bertscore_p"):
                    if name in scores:
                        result["metrics"].append(metric(key, name, scores[name], n=scores["n"]))
                result["metrics"].append(metric(key, "empty", scores["empty_generations"], n=scores["n"]))
                if scores.get("note") and scores["note"] not in result["notes"]:
                    result["notes"].append(scores["note"])
                result["details"][key] = scores
        elif task == "clsum":
            if "clsum" not in data:
                result["notes"].append("skipped: pass --data clsum=PATH (CrossSum JSONL)")
            for a, b in pair_list if "clsum" in data else []:
                records = clsum.crosssum_records(data["clsum"], a, b, limit=limit)
                scores = clsum.evaluate_clsum(lm, records, a, b, batch_size=batch_size)
                key = f"{a}→{b}"
                for name in (*clsum.ROUGE_TYPES, "empty_generations"):
                    label = "empty" if name == "empty_generations" else name
                    result["metrics"].append(metric(key, label, scores[name], n=scores["n"]))
                result["details"][key] = scores
        elif task == "ppl":
            for lang in _languages(pair_list):
                texts = monolingual_texts(lang, split=split, path=data.get("ppl"), limit=limit)
                scores = perplexity.evaluate_perplexity(lm, texts, batch_size=batch_size, lang=lang)
                result["metrics"].append(metric(lang, "ppl", scores["ppl"], n=scores["n"]))
                result["metrics"].append(
                    metric(lang, "bits_per_byte", scores["bits_per_byte"], n=scores["n"])
                )
                result["details"][lang] = scores
            result["notes"].append(
                "token PPL depends on the tokenizer; bits per UTF-8 byte compares across them"
            )
        elif task == "lac":
            for a, b in pair_list:
                pair = f"{a}-{b}"
                aligned = alignment.evaluate_alignment(
                    lm, pair, segments(a, b), batch_size=batch_size, n_boot=n_boot, seed=seed, layer=lac_layer
                )
                row = aligned.layers[aligned.report_layer]
                key = f"{pair} (layer {row.layer})"
                result["metrics"] += [
                    metric(key, "lac", row.lac, (row.lac_lo, row.lac_hi), aligned.n),
                    metric(key, "parallel_cos", row.parallel_cosine, n=aligned.n),
                    metric(key, f"p@1 {a}→{b}", row.p_at_1_ab, n=aligned.n),
                    metric(key, f"p@1 {b}→{a}", row.p_at_1_ba, n=aligned.n),
                ]
                result["details"][pair] = asdict(aligned)
            result["notes"].append(
                "LAC with a 95 % bootstrap interval over pairs; the per-layer curve is in "
                "report.json and lac_per_layer.png"
            )
        for entry in result["metrics"]:
            if entry["metric"] == "empty" and entry["value"]:
                count = f"{int(entry['value'])}/{entry['n']}"
                result["notes"].append(
                    f"{entry['key']}: {count} empty generations (counted, scored as empty)"
                )
        report["tasks"][task] = result
    if out_dir is not None:
        write_report(report, out_dir)
    return report
