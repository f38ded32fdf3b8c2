"""Machine translation: both directions of every pair, BLEU, spBLEU, chrF++ (with an interval over
documents) and the count of empty generations (:mod:`clmap.evaluate.mt`)."""

from __future__ import annotations

from clmap.evaluate.report import metric, split_suffix
from clmap.evaluate.tasks.base import EvalContext, Task, TaskResult


class MachineTranslation(Task):
    name = "mt"
    title = "Machine translation"
    data_keys = ("mt",)
    per = "pair"
    bundled = "pairs"
    prompted = True

    def run(self, context: EvalContext) -> TaskResult:
        from clmap.evaluate import mt
        from clmap.evaluate.bootstrap import summary

        s = context.settings
        result = TaskResult()
        sources, several = context.sources("mt", result)
        shot_labels = []
        for src, tgt in context.directions:
            key = f"{src}→{tgt}"
            shots, label = context.shots(src, tgt, sources[0].path)
            shot_labels.append(label)
            scored = []
            for source in sources:
                if not context.usable(source, src, tgt, result):
                    continue
                scores = mt.evaluate_mt(
                    context.lm,
                    src,
                    tgt,
                    context.segments(src, tgt, source, self.name),
                    prompt_format=context.prompt.name,
                    shots=shots,
                    template=s.mt_template,
                    batch_size=s.batch_size,
                    num_beams=s.num_beams,
                    max_new_tokens=s.max_new_tokens,
                )
                scores.update(split=source.split, data=source.label)
                per_item = scores.pop("scores")
                scores.update(item_ids=per_item.ids, documents=per_item.documents)
                result.details[key + split_suffix(source.split, several)] = scores
                scored.append((source, scores, summary(per_item, s.n_boot, s.seed)))
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
                        result.metrics.append(
                            metric(key, label_, scores[field], n=scores["n"], split=source.split, **extra)
                        )
        result.prompt = {"mt": context.prompt_record(shot_labels)}
        if not mt.flores200_spm_available():
            result.notes.append("spBLEU omitted: sacrebleu's flores200 SentencePiece model is not cached")
        result.notes.append(
            "chrF++ with a 95 % bootstrap interval over documents (corpus chrF++ of each resample)"
        )
        if any(tgt == "ja" for _, tgt in context.directions) and mt.bleu_tokenizer_for("ja") == "char":
            result.notes.append("ja BLEU uses character tokens (MeCab not installed)")
        return result


TASK = MachineTranslation()
