"""Language alignment: LAC, parallel cosine and retrieval P@1 of every pair at the reported layer,
and LAC at the floor (embeddings), the layer the map term trains and the best layer, with the headline
``lac@map-floor`` (:mod:`clmap.evaluate.alignment`)."""

from __future__ import annotations

from dataclasses import asdict

from clmap.evaluate.report import metric, split_suffix
from clmap.evaluate.tasks.base import EvalContext, Task, TaskResult


class LanguageAlignment(Task):
    name = "lac"
    title = "Language alignment"
    data_keys = ("lac",)
    per = "pair"
    bundled = "pairs"

    @staticmethod
    def map_layer(context: EvalContext) -> tuple[int, str]:
        """(the layer the run's map term trains, where that was read), checked against the model."""
        from clmap.evaluate import alignment
        from clmap.objectives import hidden_state_layer

        layer, read_from = alignment.trained_map_layer(context.checkpoint)
        hidden_state_layer(layer, context.lm.num_layers, f"objective.map_layer ({read_from})")
        return layer, read_from

    def check(self, context: EvalContext) -> None:
        from clmap.objectives import hidden_state_layer

        lac_layer = context.settings.lac_layer
        hidden_state_layer(-1 if lac_layer is None else lac_layer, context.lm.num_layers, "--lac-layer")
        self.map_layer(context)

    def run(self, context: EvalContext) -> TaskResult:
        from clmap.evaluate import alignment
        from clmap.evaluate.bootstrap import interval_method

        s = context.settings
        map_layer, map_layer_from = self.map_layer(context)
        result = TaskResult()
        sources, several = context.sources("lac", result)
        views = []  # after every pair's rows at the reported layer, so those keep their order
        for a, b in context.pairs:
            pair = f"{a}-{b}"
            scored = []
            for source in sources:
                if not context.usable(source, a, b, result):
                    continue
                aligned = alignment.evaluate_alignment(
                    context.lm,
                    pair,
                    context.segments(a, b, source, self.name),
                    batch_size=s.batch_size,
                    n_boot=s.n_boot,
                    seed=s.seed,
                    layer=s.lac_layer,
                    split=source.split,
                    data=source.label,
                    map_layer=map_layer,
                )
                detail = asdict(aligned)
                detail.pop("items")  # in the metrics, for paired comparisons
                result.details[pair + split_suffix(source.split, several)] = detail
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
                            interval=interval_method(aligned.documents, s.n_boot),
                            items=aligned.items["report"],
                        )
                    result.metrics.append(
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
                            interval=interval_method(aligned.documents, s.n_boot),
                            table="LAC at the floor (embeddings), the map layer and the best layer",
                            items=aligned.items[name.removeprefix("lac@")],
                        )
                    )
                layer_names = [aligned.layers[i].label for i in (aligned.map_layer, aligned.best_layer)]
                result.notes.append(
                    f"{pair}{split_suffix(source.split, True)}: floor = embeddings, map = "
                    f"{layer_names[0]} (objective.map_layer, {map_layer_from}), best = {layer_names[1]}"
                )
        result.metrics += views
        result.notes.append(
            "LAC with a 95 % bootstrap interval over documents (all pairs of a drawn document together) "
            "at the reported layer; the per-layer curve is in report.json and lac_per_layer.png "
            "(0 = embeddings, i = output of decoder layer i, the last = after the final norm). Headline: "
            "lac@map-floor: LAC at the layer the map term trains minus LAC at the embeddings "
            "(the lexical floor: shared characters, numbers, placeholders); lac@best is chosen on the "
            "same items (exploratory)"
        )
        return result


TASK = LanguageAlignment()
