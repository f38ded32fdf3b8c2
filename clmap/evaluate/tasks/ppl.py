"""Perplexity and bits per UTF-8 byte per language on monolingual text (``--data ppl=PATH`` or the
bundled splits; :mod:`clmap.evaluate.perplexity`)."""

from __future__ import annotations

from clmap.evaluate.report import metric, split_suffix
from clmap.evaluate.sources import bundled_language_splits, monolingual_rows
from clmap.evaluate.tasks.base import EvalContext, Task, TaskResult


class Perplexity(Task):
    name = "ppl"
    title = "Perplexity per language"
    data_keys = ("ppl",)
    per = "language"
    bundled = "languages"

    def run(self, context: EvalContext) -> TaskResult:
        from clmap.evaluate import perplexity

        s = context.settings
        result = TaskResult()
        sources, several = context.sources("ppl", result)
        for lang in context.languages:
            scored = []
            for source in sources:
                if source.split is not None and source.split not in bundled_language_splits(lang):
                    result.notes.append(f"{lang}: no bundled monolingual '{source.split}' split; skipped")
                    continue
                rows = monolingual_rows(
                    lang,
                    split=source.split or "test",
                    path=source.path,
                    limit=context.limit(self.name),
                    items=s.items,
                    seed=s.seed,
                )
                texts = [r.text for r in rows]
                scores = perplexity.evaluate_perplexity(context.lm, texts, batch_size=s.batch_size, lang=lang)
                scores.update(split=source.split, data=source.label)
                scores.update(item_ids=[r.id for r in rows], documents=len({r.doc for r in rows}))
                result.details[lang + split_suffix(source.split, several)] = scores
                scored.append((source, scores))
            for name in ("ppl", "bits_per_byte"):
                for source, scores in scored:
                    result.metrics.append(
                        metric(
                            lang,
                            name + split_suffix(source.split, several),
                            scores[name],
                            n=scores["n"],
                            split=source.split,
                            documents=scores["documents"],
                        )
                    )
        result.notes.append("token PPL depends on the tokenizer; bits per UTF-8 byte compares across them")
        return result


TASK = Perplexity()
