"""Cross-lingual QA on a local XQuAD/MLQA folder (``--data clqa=FOLDER``): context in one language,
question in the other; token F1, exact match and, with ``--bertscore-model``, BERTScore precision
(:mod:`clmap.evaluate.clqa`). Without the folder the task is skipped with a note."""

from __future__ import annotations

from clmap.evaluate.report import metric
from clmap.evaluate.tasks.base import EvalContext, Task, TaskResult


class CrossLingualQA(Task):
    name = "clqa"
    title = "Cross-lingual QA"
    data_keys = ("clqa",)
    per = "pair"

    @staticmethod
    def scorer_layer(context: EvalContext) -> tuple[int, str] | None:
        """(BERTScore encoder layer, why) when BERTScore will be computed, else None."""
        from clmap.evaluate import clqa

        s = context.settings
        if "clqa" in context.data and s.bertscore_model and clqa.bertscore_available():
            return clqa.resolve_bertscore_layer(s.bertscore_model, s.bertscore_layer)
        return None

    def check(self, context: EvalContext) -> None:
        self.scorer_layer(context)  # an encoder without a known or given layer fails before any task

    def run(self, context: EvalContext) -> TaskResult:
        from clmap.evaluate import clqa

        s = context.settings
        result = TaskResult()
        if "clqa" not in context.data:
            result.notes.append("skipped: pass --data clqa=FOLDER (XQuAD/MLQA JSON per language)")
            return result
        result.data["clqa"] = str(context.data["clqa"])
        layer = self.scorer_layer(context)
        if layer is not None:
            result.bertscore = {"model": str(s.bertscore_model), "layer": layer[0], "why": layer[1]}
            result.notes.append(f"BERTScore-P: {s.bertscore_model}, layer {layer[0]} ({layer[1]})")
        for a, b in context.pairs:
            qa_items = clqa.clqa_items(context.data["clqa"], a, b, limit=context.limit(self.name))
            scores = clqa.evaluate_clqa(
                context.lm,
                qa_items,
                a,
                b,
                batch_size=s.batch_size,
                bertscore_model=s.bertscore_model,
                bertscore_layer=layer[0] if layer else None,
            )
            key = f"C:{a} Q:{b}"
            for name in ("f1", "em", "bertscore_p"):
                if name in scores:
                    result.metrics.append(metric(key, name, scores[name], n=scores["n"]))
            result.metrics.append(metric(key, "empty", scores["empty_generations"], n=scores["n"]))
            if scores.get("note"):
                result.note(scores["note"])
            result.details[key] = scores
        return result


TASK = CrossLingualQA()
