"""Cross-lingual understanding: translation choice on the parallel data (which of four targets
translates the source; ``--data choice=PATH`` or the bundled splits) and, given ``--data clnlu=FOLDER``,
Belebele (:mod:`clmap.evaluate.clnlu`). Translation choice is part of this task, not a task of its
own: its items are the ones MT and LAC score."""

from __future__ import annotations

from clmap.evaluate.report import metric, split_suffix
from clmap.evaluate.tasks.base import EvalContext, Task, TaskResult


class CrossLingualUnderstanding(Task):
    name = "clnlu"
    title = "Cross-lingual understanding"
    data_keys = ("choice", "clnlu")
    per = "pair"
    bundled = "pairs"
    prompted = True

    def run(self, context: EvalContext) -> TaskResult:
        result = TaskResult()
        self.translation_choice(context, result)
        if "clnlu" in context.data:
            self.belebele(context, result)
        else:
            result.notes.append("Belebele skipped: pass --data clnlu=FOLDER (per-language JSONL files)")
        result.notes.append(
            "accuracy with a 95 % bootstrap interval over documents (Belebele: passages); the Wilson "
            "interval that treats items as independent is in report.json (wilson_ci); chance = 0.25"
        )
        return result

    @staticmethod
    def translation_choice(context: EvalContext, result: TaskResult) -> None:
        from clmap.evaluate import clnlu
        from clmap.evaluate.bootstrap import summary

        s = context.settings
        sources, several = context.sources("choice", result)
        shot_labels = []
        for src, tgt in context.directions:
            key = f"{src}→{tgt} choice"
            shots, label = context.shots(src, tgt, sources[0].path)
            shot_labels.append(label)
            for source in sources:
                if not context.usable(source, src, tgt, result):
                    continue
                pool = context.segments(src, tgt, source, None)  # distractors: the whole source
                # the items: at equal limits the same sample as MT's and LAC's
                chosen = [seg.index for seg in context.segments(src, tgt, source, "clnlu")]
                questions = clnlu.translation_choice_items(
                    context.lm,
                    pool,
                    src,
                    tgt,
                    context.prompt.name,
                    shots,
                    seed=s.seed,
                    template=s.mt_template,
                    chosen=chosen,
                    source=source.label,
                )
                desc = f"choice {src}->{tgt} {source.split or ''}".strip()
                acc = clnlu.choice_accuracy(questions, clnlu.model_scorer(context.lm, s.batch_size, desc))
                acc.update(split=source.split, data=source.label)
                per_item = acc.pop("scores")
                suffix = split_suffix(source.split, several)
                result.metrics.append(
                    metric(
                        key,
                        "accuracy" + suffix,
                        acc["accuracy"],
                        n=acc["n"],
                        split=source.split,
                        **summary(per_item, s.n_boot, s.seed),
                    )
                )
                result.details[key + suffix] = acc
        result.prompt = {"choice": context.prompt_record(shot_labels)}

    @staticmethod
    def belebele(context: EvalContext, result: TaskResult) -> None:
        from clmap.evaluate import clnlu
        from clmap.evaluate.bootstrap import summary

        s = context.settings
        folder = context.data["clnlu"]
        result.data["belebele"] = str(folder)
        result.prompt["belebele"] = {
            "format": "text",
            "reason": "Belebele's passage / question / answer prompt, for every model",
        }
        for a, b in context.pairs:
            questions = clnlu.belebele_items(
                context.lm, folder, a, b, limit=context.limit("clnlu"), items=s.items, seed=s.seed
            )
            acc = clnlu.choice_accuracy(
                questions, clnlu.model_scorer(context.lm, s.batch_size, f"belebele {a}-{b}")
            )
            per_item = acc.pop("scores")
            key = f"belebele P:{a} Q:{b}"
            result.metrics.append(
                metric(key, "accuracy", acc["accuracy"], n=acc["n"], **summary(per_item, s.n_boot, s.seed))
            )
            result.details[key] = acc


TASK = CrossLingualUnderstanding()
