"""Cross-lingual summarisation on a local CrossSum file/folder (``--data clsum=PATH``): ROUGE of a
summary in the other language (:mod:`clmap.evaluate.clsum`). Without it the task is skipped with a note."""

from __future__ import annotations

from clmap.evaluate.report import metric
from clmap.evaluate.tasks.base import EvalContext, Task, TaskResult


class CrossLingualSummarisation(Task):
    name = "clsum"
    title = "Cross-lingual summarisation"
    data_keys = ("clsum",)
    per = "pair"

    def run(self, context: EvalContext) -> TaskResult:
        from clmap.evaluate import clsum

        s = context.settings
        result = TaskResult()
        if "clsum" not in context.data:
            result.notes.append("skipped: pass --data clsum=PATH (CrossSum JSONL)")
            return result
        result.data["clsum"] = str(context.data["clsum"])
        for a, b in context.pairs:
            records = clsum.crosssum_records(context.data["clsum"], a, b, limit=context.limit(self.name))
            scores = clsum.evaluate_clsum(context.lm, records, a, b, batch_size=s.batch_size)
            key = f"{a}→{b}"
            for name in (*clsum.ROUGE_TYPES, "empty_generations"):
                label = "empty" if name == "empty_generations" else name
                result.metrics.append(metric(key, label, scores[name], n=scores["n"]))
            result.details[key] = scores
        return result


TASK = CrossLingualSummarisation()
