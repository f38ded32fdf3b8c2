"""Evaluate a clmap run or any local Hugging Face causal LM on the project's tasks (docs/design.md,
"Evaluation"): MT, CLNLU, CLQA, cross-lingual summarisation, per-language perplexity and LAC.

``evaluate(...)`` runs the chosen tasks and, given ``out_dir``, writes report.json, report.md and the
plots; ``python -m clmap.evaluate`` is its command line.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from clmap.evaluate.sources import EvalDataError

ALL_TASKS = ("mt", "clnlu", "clqa", "clsum", "ppl", "lac")
DEFAULT_PAIRS = ("en-cs", "cs-uk", "zh-ja")
# --data keys: mt / choice (translation choice) / lac take a parallel file or FLORES folder; clnlu a
# Belebele folder; clqa an XQuAD/MLQA folder; clsum a CrossSum file/folder; ppl monolingual text.
DATA_KEYS = ("mt", "choice", "lac", "clnlu", "clqa", "clsum", "ppl")
# How MT and translation choice prompt a model (clmap.evaluate.mt.choose_prompt_format).
PROMPT_FORMATS = ("auto", "mapping", "template")

__all__ = [
    "ALL_TASKS",
    "DATA_KEYS",
    "DEFAULT_PAIRS",
    "PROMPT_FORMATS",
    "EvalDataError",
    "evaluate",
    "parse_pairs",
    "parse_splits",
]


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


def parse_splits(split: str | Sequence[str]) -> list[str]:
    """``"test,ood"`` → ["test", "ood"]: the bundled splits MT, translation choice, LAC and PPL score."""
    items = split.split(",") if isinstance(split, str) else list(split)
    splits = list(dict.fromkeys(s.strip() for s in items if s.strip()))
    bad = [s for s in splits if not re.fullmatch(r"[A-Za-z0-9_]+", s)]
    if not splits or bad:
        raise ValueError(f"--split {split!r}: expected a comma list of split names such as test,ood")
    return splits


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
    split: str | Sequence[str] = "test",
    max_new_tokens: int = 128,
    mt_template: str | None = None,
    few_shot: int = 1,
    prompt_format: str = "auto",
    bertscore_model: str | None = None,
    bertscore_layer: int | None = None,
    lac_layer: int | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    items: str = "sample",
) -> dict:
    """Run ``tasks`` on ``checkpoint`` for ``pairs``; returns the report (and writes it to ``out_dir``).

    ``data`` maps a task to a local input (``mt``, ``choice``, ``lac``: a parallel file or FLORES folder
    holding any pair; ``clnlu``: Belebele folder; ``clqa``: XQuAD/MLQA folder; ``clsum``: CrossSum
    file/folder; ``ppl``: monolingual file/folder). Without one, MT, translation choice, LAC and
    perplexity read the bundled corpus, once per split of ``split`` (``"test,ood"`` scores in- and
    out-of-domain side by side; a split a pair lacks is skipped with a note), while Belebele, CLQA and
    CLSum (no bundled data) are skipped with a note. ``prompt_format`` (``auto``, ``mapping``,
    ``template``) is how MT and translation choice prompt the model; ``auto`` follows what the run
    trained (:func:`clmap.evaluate.mt.choose_prompt_format`). Every task result records the data it
    used and, for MT and translation choice, the prompt format and why.

    ``limit`` items per pair / language are a sample stratified over documents, seeded by ``seed``
    (``items="first"``: the first rows): the same items for every checkpoint, recorded by id. chrF++,
    accuracies and LAC carry a 95 % bootstrap interval over documents (``n_boot`` resamples), or say
    that there are too few documents for one (:mod:`clmap.evaluate.bootstrap`).
    """
    import torch

    from clmap.evaluate import alignment, clnlu, clqa, clsum, mt, perplexity
    from clmap.evaluate.bootstrap import interval_method, summary
    from clmap.evaluate.lm import load_checkpoint
    from clmap.evaluate.report import metric, split_suffix, write_report
    from clmap.evaluate.sources import (
        FLORES_SHOT_SPLIT,
        DataSource,
        bundled_language_splits,
        bundled_pair_splits,
        check_bundled_coverage,
        data_sources,
        flores_split_folder,
        monolingual_rows,
        parallel_segments,
        select_items,
    )
    from clmap.objectives import hidden_state_layer

    select_items([], None, items, seed, "")  # an unknown --items fails before the model loads
    tasks = list(ALL_TASKS if not tasks else tasks)
    unknown = [t for t in tasks if t not in ALL_TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {', '.join(ALL_TASKS)}")
    data = {k: v for k, v in (data or {}).items() if v}
    bad_keys = [k for k in data if k not in DATA_KEYS]
    if bad_keys:
        raise ValueError(f"--data keys {bad_keys} unknown; use {', '.join(DATA_KEYS)} (e.g. mt=PATH)")
    pair_list = parse_pairs(pairs)
    splits = parse_splits(split)
    prompt = mt.choose_prompt_format(checkpoint, prompt_format, mt_template)
    parallel_tasks = {"mt": "mt", "clnlu": "choice", "lac": "lac"}  # task -> its --data key
    pair_tasks = [key for task, key in parallel_tasks.items() if task in tasks and key not in data]
    check_bundled_coverage(
        pair_list if pair_tasks else [],
        _languages(pair_list) if "ppl" in tasks and "ppl" not in data else [],
        pair_tasks,
    )
    scorer_layer = None
    if "clqa" in tasks and "clqa" in data and bertscore_model and clqa.bertscore_available():
        scorer_layer = clqa.resolve_bertscore_layer(bertscore_model, bertscore_layer)
    torch.manual_seed(seed)
    lm = load_checkpoint(checkpoint, device=device)
    if "lac" in tasks:
        hidden_state_layer(-1 if lac_layer is None else lac_layer, lm.num_layers, "--lac-layer")
        map_layer, map_layer_from = alignment.trained_map_layer(checkpoint)
        hidden_state_layer(map_layer, lm.num_layers, f"objective.map_layer ({map_layer_from})")
    report: dict = {
        "checkpoint": str(checkpoint),
        "settings": {
            "tasks": ",".join(tasks),
            "pairs": ",".join(f"{a}-{b}" for a, b in pair_list),
            "split": ",".join(splits),
            "limit": limit,
            "items": items,
            "num_beams": num_beams,
            "device": device,
            "prompt_format": prompt_format,
            "prompt": f"{prompt.name} ({prompt.reason})",
            "few_shot": few_shot if prompt.name == "template" else None,
        },
        "tasks": {},
    }
    directions = [d for a, b in pair_list for d in ((a, b), (b, a))]

    def usable(source: DataSource, a: str, b: str, notes: list[str]) -> bool:
        """A bundled split the pair lacks is skipped with a note (the ood split is not built for all)."""
        if source.split is None:
            return True
        stored = bundled_pair_splits(a, b) or []
        if source.split in stored:
            return True
        pair = next((f"{x}-{y}" for x, y in pair_list if {x, y} == {a, b}), f"{a}-{b}")
        note = f"{pair}: the bundled corpus has no '{source.split}' split (has {', '.join(stored)}); skipped"
        if note not in notes:
            notes.append(note)
            print(f"[clmap.evaluate] {note}", file=sys.stderr)  # recorded in report.json/md as well
        return False

    def sources_for(key: str, result: dict) -> tuple[list[DataSource], bool]:
        """The data scored for ``key`` (``--data key=PATH`` or the bundled splits), recorded in the
        report; and whether there are several (then every metric names its split)."""
        sources = data_sources(data.get(key), splits)
        result["data"][key] = ", ".join(s.label for s in sources)
        return sources, len(sources) > 1

    def segments(a: str, b: str, source: DataSource, n: int | None = limit):
        """The scored segments (``n`` drawn as ``items`` says; the same for both directions of a pair)."""
        return parallel_segments(
            a, b, split=source.split or "test", path=source.path, limit=n, items=items, seed=seed
        )

    def shots_for(a: str, b: str, path: Path | None) -> tuple[list, str]:
        """Few-shot examples for the text template: the dev folder of a FLORES download, else the
        bundled dev split; never from the scored data."""
        if prompt.name != "template" or few_shot <= 0:
            return [], "0-shot"
        dev = flores_split_folder(path, FLORES_SHOT_SPLIT) if path is not None else None
        if dev is not None:
            return parallel_segments(a, b, path=dev, limit=few_shot), f"{few_shot}-shot from {dev}"
        if "dev" in (bundled_pair_splits(a, b) or []):
            return parallel_segments(a, b, split="dev", limit=few_shot), f"{few_shot}-shot from bundled dev"
        return [], f"0-shot (no dev examples for {a}-{b})"

    def prompt_record(shot_labels: list[str]) -> dict:
        record = {"format": prompt.name, "reason": prompt.reason}
        if prompt.name == "template":
            record["shots"] = ", ".join(dict.fromkeys(shot_labels))
        return record

    for task in tasks:
        print(f"[clmap.evaluate] {task} ...", file=sys.stderr)
        result: dict = {"metrics": [], "notes": [], "details": {}, "data": {}}
        if task == "mt":
            sources, several = sources_for("mt", result)
            shot_labels = []
            for src, tgt in directions:
                key = f"{src}→{tgt}"
                shots, label = shots_for(src, tgt, sources[0].path)
                shot_labels.append(label)
                scored = []
                for source in sources:
                    if not usable(source, src, tgt, result["notes"]):
                        continue
                    scores = mt.evaluate_mt(
                        lm,
                        src,
                        tgt,
                        segments(src, tgt, source),
                        prompt_format=prompt.name,
                        shots=shots,
                        template=mt_template,
                        batch_size=batch_size,
                        num_beams=num_beams,
                        max_new_tokens=max_new_tokens,
                    )
                    scores.update(split=source.split, data=source.label)
                    per_item = scores.pop("scores")
                    scores.update(item_ids=per_item.ids, documents=per_item.documents)
                    result["details"][key + split_suffix(source.split, several)] = scores
                    scored.append((source, scores, summary(per_item, n_boot, seed)))
                for name, field in (
                    ("bleu", "bleu"),
                    ("spbleu", "spbleu"),
                    ("chrf++", "chrf++"),
                    ("empty", "empty_generations"),
                ):
                    for source, scores, clustered in scored:
                        if field in scores:
                            label_ = name + split_suffix(source.split, several)
                            extra = clustered if name == "chrf++" else {"documents": scores["documents"]}
                            result["metrics"].append(
                                metric(key, label_, scores[field], n=scores["n"], split=source.split, **extra)
                            )
            result["prompt"] = {"mt": prompt_record(shot_labels)}
            if not mt.flores200_spm_available():
                result["notes"].append(
                    "spBLEU omitted: sacrebleu's flores200 SentencePiece model is not cached"
                )
            result["notes"].append(
                "chrF++ with a 95 % bootstrap interval over documents (corpus chrF++ of each resample)"
            )
            if any(tgt == "ja" for _, tgt in directions) and mt.bleu_tokenizer_for("ja") == "char":
                result["notes"].append("ja BLEU uses character tokens (MeCab not installed)")
        elif task == "clnlu":
            sources, several = sources_for("choice", result)
            shot_labels = []
            for src, tgt in directions:
                key = f"{src}→{tgt} choice"
                shots, label = shots_for(src, tgt, sources[0].path)
                shot_labels.append(label)
                for source in sources:
                    if not usable(source, src, tgt, result["notes"]):
                        continue
                    pool = segments(src, tgt, source, n=None)  # distractors from the whole file/split
                    chosen = [s.index for s in segments(src, tgt, source)]  # the items MT and LAC score
                    questions = clnlu.translation_choice_items(
                        lm,
                        pool,
                        src,
                        tgt,
                        prompt.name,
                        shots,
                        seed=seed,
                        template=mt_template,
                        chosen=chosen,
                        source=source.label,
                    )
                    desc = f"choice {src}->{tgt} {source.split or ''}".strip()
                    acc = clnlu.choice_accuracy(questions, clnlu.model_scorer(lm, batch_size, desc))
                    acc.update(split=source.split, data=source.label)
                    per_item = acc.pop("scores")
                    suffix = split_suffix(source.split, several)
                    result["metrics"].append(
                        metric(
                            key,
                            "accuracy" + suffix,
                            acc["accuracy"],
                            n=acc["n"],
                            split=source.split,
                            **summary(per_item, n_boot, seed),
                        )
                    )
                    result["details"][key + suffix] = acc
            result["prompt"] = {"choice": prompt_record(shot_labels)}
            if "clnlu" in data:
                result["data"]["belebele"] = str(data["clnlu"])
                result["prompt"]["belebele"] = {
                    "format": "text",
                    "reason": "Belebele's passage / question / answer prompt, for every model",
                }
                for a, b in pair_list:
                    questions = clnlu.belebele_items(
                        lm, data["clnlu"], a, b, limit=limit, items=items, seed=seed
                    )
                    acc = clnlu.choice_accuracy(
                        questions, clnlu.model_scorer(lm, batch_size, f"belebele {a}-{b}")
                    )
                    per_item = acc.pop("scores")
                    key = f"belebele P:{a} Q:{b}"
                    result["metrics"].append(
                        metric(
                            key, "accuracy", acc["accuracy"], n=acc["n"], **summary(per_item, n_boot, seed)
                        )
                    )
                    result["details"][key] = acc
            else:
                result["notes"].append(
                    "Belebele skipped: pass --data clnlu=FOLDER (per-language JSONL files)"
                )
            result["notes"].append(
                "accuracy with a 95 % bootstrap interval over documents (Belebele: passages); the Wilson "
                "interval that treats items as independent is in report.json (wilson_ci); chance = 0.25"
            )
        elif task == "clqa":
            if "clqa" not in data:
                result["notes"].append("skipped: pass --data clqa=FOLDER (XQuAD/MLQA JSON per language)")
            else:
                result["data"]["clqa"] = str(data["clqa"])
            if scorer_layer is not None:
                result["bertscore"] = {
                    "model": str(bertscore_model),
                    "layer": scorer_layer[0],
                    "why": scorer_layer[1],
                }
                result["notes"].append(
                    f"BERTScore-P: {bertscore_model}, layer {scorer_layer[0]} ({scorer_layer[1]})"
                )
            for a, b in pair_list if "clqa" in data else []:
                qa_items = clqa.clqa_items(data["clqa"], a, b, limit=limit)
                scores = clqa.evaluate_clqa(
                    lm,
                    qa_items,
                    a,
                    b,
                    batch_size=batch_size,
                    bertscore_model=bertscore_model,
                    bertscore_layer=scorer_layer[0] if scorer_layer else None,
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
            else:
                result["data"]["clsum"] = str(data["clsum"])
            for a, b in pair_list if "clsum" in data else []:
                records = clsum.crosssum_records(data["clsum"], a, b, limit=limit)
                scores = clsum.evaluate_clsum(lm, records, a, b, batch_size=batch_size)
                key = f"{a}→{b}"
                for name in (*clsum.ROUGE_TYPES, "empty_generations"):
                    label = "empty" if name == "empty_generations" else name
                    result["metrics"].append(metric(key, label, scores[name], n=scores["n"]))
                result["details"][key] = scores
        elif task == "ppl":
            sources, several = sources_for("ppl", result)
            for lang in _languages(pair_list):
                scored = []
                for source in sources:
                    if source.split is not None and source.split not in bundled_language_splits(lang):
                        result["notes"].append(
                            f"{lang}: no bundled monolingual '{source.split}' split; skipped"
                        )
                        continue
                    rows = monolingual_rows(
                        lang,
                        split=source.split or "test",
                        path=source.path,
                        limit=limit,
                        items=items,
                        seed=seed,
                    )
                    texts = [r.text for r in rows]
                    scores = perplexity.evaluate_perplexity(lm, texts, batch_size=batch_size, lang=lang)
                    scores.update(split=source.split, data=source.label)
                    scores.update(item_ids=[r.id for r in rows], documents=len({r.doc for r in rows}))
                    result["details"][lang + split_suffix(source.split, several)] = scores
                    scored.append((source, scores))
                for name in ("ppl", "bits_per_byte"):
                    for source, scores in scored:
                        result["metrics"].append(
                            metric(
                                lang,
                                name + split_suffix(source.split, several),
                                scores[name],
                                n=scores["n"],
                                split=source.split,
                                documents=scores["documents"],
                            )
                        )
            result["notes"].append(
                "token PPL depends on the tokenizer; bits per UTF-8 byte compares across them"
            )
        elif task == "lac":
            sources, several = sources_for("lac", result)
            views = []  # after every pair's rows at the reported layer, so those keep their order
            for a, b in pair_list:
                pair = f"{a}-{b}"
                scored = []
                for source in sources:
                    if not usable(source, a, b, result["notes"]):
                        continue
                    aligned = alignment.evaluate_alignment(
                        lm,
                        pair,
                        segments(a, b, source),
                        batch_size=batch_size,
                        n_boot=n_boot,
                        seed=seed,
                        layer=lac_layer,
                        split=source.split,
                        data=source.label,
                        map_layer=map_layer,
                    )
                    detail = asdict(aligned)
                    detail.pop("items")  # in the metrics, for paired comparisons
                    result["details"][pair + split_suffix(source.split, several)] = detail
                    scored.append((source, aligned))
                for name in ("lac", "parallel_cos", f"p@1 {a}→{b}", f"p@1 {b}→{a}"):
                    for source, aligned in scored:
                        row = aligned.layers[aligned.report_layer]
                        value = {
                            "lac": row.lac,
                            "parallel_cos": row.parallel_cosine,
                            f"p@1 {a}→{b}": row.p_at_1_ab,
                            f"p@1 {b}→{a}": row.p_at_1_ba,
                        }[name]
                        ci = (row.lac_lo, row.lac_hi) if name == "lac" and row.lac_lo is not None else None
                        extra = {"documents": aligned.documents}
                        if name == "lac":
                            extra.update(
                                interval=interval_method(aligned.documents, n_boot),
                                items=aligned.items["report"],
                            )
                        result["metrics"].append(
                            metric(
                                f"{pair} ({row.label})",
                                name + split_suffix(source.split, several),
                                value,
                                ci,
                                aligned.n,
                                source.split,
                                **extra,
                            )
                        )
                for source, aligned in scored:  # the floor, the map layer, the best layer, the headline
                    for name, (value, lo, hi) in alignment.lac_views(aligned).items():
                        views.append(
                            metric(
                                pair,
                                name + split_suffix(source.split, several),
                                value,
                                (lo, hi) if lo is not None else None,
                                aligned.n,
                                source.split,
                                documents=aligned.documents,
                                interval=interval_method(aligned.documents, n_boot),
                                table="LAC at the floor (embeddings), the map layer and the best layer",
                                items=aligned.items[name.removeprefix("lac@")],
                            )
                        )
                    layer_names = [aligned.layers[i].label for i in (aligned.map_layer, aligned.best_layer)]
                    result["notes"].append(
                        f"{pair}{split_suffix(source.split, True)}: floor = embeddings, map = "
                        f"{layer_names[0]} (objective.map_layer, {map_layer_from}), best = {layer_names[1]}"
                    )
            result["metrics"] += views
            result["notes"].append(
                "LAC with a 95 % bootstrap interval over documents (all pairs of a drawn document together) "
                "at the reported layer; the per-layer curve is in report.json and lac_per_layer.png "
                "(0 = embeddings, i = output of decoder layer i, the last = after the final norm). Headline: "
                "lac@map-floor: LAC at the layer the map term trains minus LAC at the embeddings "
                "(the lexical floor: shared characters, numbers, placeholders); lac@best is chosen on the "
                "same items (exploratory)"
            )
        for entry in result["metrics"]:
            if entry["metric"].split(" (")[0] == "empty" and entry["value"]:
                count = f"{int(entry['value'])}/{entry['n']}"
                result["notes"].append(
                    f"{entry['key']}: {count} empty generations"
                    f"{split_suffix(entry['split'], True)} (counted, scored as empty)"
                )
        report["tasks"][task] = result
    if out_dir is not None:
        write_report(report, out_dir)
    return report
