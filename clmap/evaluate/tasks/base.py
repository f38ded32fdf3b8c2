"""What every evaluation task is (:class:`Task`), what it returns (:class:`TaskResult`) and what it is
given (:class:`EvalContext`: the loaded model, the settings and the data lookups the tasks share)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from clmap.evaluate.report import split_suffix
from clmap.evaluate.sources import (
    FLORES_SHOT_SPLIT,
    DataSource,
    bundled_pair_splits,
    data_sources,
    flores_split_folder,
    parallel_segments,
)

if TYPE_CHECKING:
    from clmap.evaluate.lm import LoadedModel
    from clmap.evaluate.mt import PromptFormat
    from clmap.evaluate.options import EvalConfig
    from clmap.evaluate.sources import ParallelSegment


@dataclass
class TaskResult:
    """One task's part of report.json: its metric rows (:func:`clmap.evaluate.report.metric`), notes,
    per-key details, the data it read and, where it has them, its prompt formats and BERTScore scorer."""

    metrics: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    data: dict[str, str] = field(default_factory=dict)
    prompt: dict | None = None
    bertscore: dict | None = None

    def note(self, text: str) -> None:
        """Adds a note once."""
        if text not in self.notes:
            self.notes.append(text)

    def to_dict(self) -> dict:
        """The report's form: the optional parts only when the task has them."""
        out = {"metrics": self.metrics, "notes": self.notes, "details": self.details, "data": self.data}
        for name in ("prompt", "bertscore"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    def note_empty_generations(self) -> None:
        """A note for every key whose generations came back empty (they are scored as empty)."""
        for entry in self.metrics:
            if entry["metric"].split(" (")[0] == "empty" and entry["value"]:
                count = f"{int(entry['value'])}/{entry['n']}"
                self.notes.append(
                    f"{entry['key']}: {count} empty generations"
                    f"{split_suffix(entry['split'], True)} (counted, scored as empty)"
                )


@dataclass
class EvalContext:
    """Everything the tasks of one evaluation share: the checkpoint and its loaded model, the settings,
    the parsed pairs and splits, the ``--data`` inputs and the prompt format chosen for the run."""

    checkpoint: Path
    settings: EvalConfig
    lm: LoadedModel
    pairs: list[tuple[str, str]]
    splits: list[str]
    data: Mapping[str, str]
    prompt: PromptFormat

    @property
    def directions(self) -> list[tuple[str, str]]:
        """Both directions of every pair, a→b before b→a."""
        return [d for a, b in self.pairs for d in ((a, b), (b, a))]

    @property
    def languages(self) -> list[str]:
        """The languages of the pairs, in order of first appearance."""
        return list(dict.fromkeys(lang for pair in self.pairs for lang in pair))

    def sources(self, key: str, result: TaskResult) -> tuple[list[DataSource], bool]:
        """The data scored for ``key`` (``--data key=PATH`` or the bundled splits), recorded in the
        report; and whether there are several (then every metric names its split)."""
        sources = data_sources(self.data.get(key), self.splits)
        result.data[key] = ", ".join(s.label for s in sources)
        return sources, len(sources) > 1

    def usable(self, source: DataSource, a: str, b: str, result: TaskResult) -> bool:
        """A bundled split the pair lacks is skipped with a note (the ood split is not built for all)."""
        if source.split is None:
            return True
        stored = bundled_pair_splits(a, b) or []
        if source.split in stored:
            return True
        pair = next((f"{x}-{y}" for x, y in self.pairs if {x, y} == {a, b}), f"{a}-{b}")
        note = f"{pair}: the bundled corpus has no '{source.split}' split (has {', '.join(stored)}); skipped"
        if note not in result.notes:
            result.notes.append(note)
            print(f"[clmap.evaluate] {note}", file=sys.stderr)  # recorded in report.json/md as well
        return False

    def limit(self, task: str) -> int | None:
        """How many items ``task`` scores per pair (language): ``--task-limit``, else ``--limit``."""
        return self.settings.task_limit.get(task, self.settings.limit)

    def segments(self, a: str, b: str, source: DataSource, task: str | None) -> list[ParallelSegment]:
        """The segments ``task`` scores (its :meth:`limit` of them drawn as ``--items`` says, the same
        for both directions of a pair); ``task=None``: every segment of the source."""
        s = self.settings
        return parallel_segments(
            a,
            b,
            split=source.split or "test",
            path=source.path,
            limit=None if task is None else self.limit(task),
            items=s.items,
            seed=s.seed,
        )

    def shots(self, a: str, b: str, path: Path | None) -> tuple[list[ParallelSegment], str]:
        """Few-shot examples for the text template: the dev folder of a FLORES download, else the
        bundled dev split; never from the scored data."""
        few_shot = self.settings.few_shot
        if self.prompt.name != "template" or few_shot <= 0:
            return [], "0-shot"
        dev = flores_split_folder(path, FLORES_SHOT_SPLIT) if path is not None else None
        if dev is not None:
            return parallel_segments(a, b, path=dev, limit=few_shot), f"{few_shot}-shot from {dev}"
        if "dev" in (bundled_pair_splits(a, b) or []):
            return parallel_segments(a, b, split="dev", limit=few_shot), f"{few_shot}-shot from bundled dev"
        return [], f"0-shot (no dev examples for {a}-{b})"

    def prompt_record(self, shot_labels: list[str]) -> dict:
        """How a prompted task's prompts were built, for the report."""
        record = {"format": self.prompt.name, "reason": self.prompt.reason}
        if self.prompt.name == "template":
            record["shots"] = ", ".join(dict.fromkeys(shot_labels))
        return record


class Task:
    """One evaluation task: a module of this package defines a subclass and registers an instance in
    ``clmap/evaluate/tasks/__init__.py``."""

    name: ClassVar[str]  # --tasks name and report.json key
    title: ClassVar[str]  # report.md heading
    data_keys: ClassVar[tuple[str, ...]]  # its --data keys; the first replaces the bundled corpus
    per: ClassVar[Literal["pair", "language"]]  # what one result key is: a pair (or direction), a language
    # what it reads from the bundled corpus without --data for data_keys[0]: checked before the model loads
    bundled: ClassVar[Literal["pairs", "languages"] | None] = None
    prompted: ClassVar[bool] = False  # scored in a prompt format (--prompt-format)

    def check(self, context: EvalContext) -> None:
        """Refuse settings that only the loaded model can judge, before any task runs."""

    def run(self, context: EvalContext) -> TaskResult:
        raise NotImplementedError
