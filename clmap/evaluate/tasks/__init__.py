"""The evaluator's tasks, one module each (:class:`~clmap.evaluate.tasks.base.Task`). ``TASKS`` is the
only place their names are listed: ``--tasks``, ``--data`` keys, ``--help``, the bundled-data check and
the report's headings all read it. Adding a task = adding its module and one entry here."""

from __future__ import annotations

from clmap.evaluate.tasks import clnlu, clqa, clsum, lac, mt, ppl
from clmap.evaluate.tasks.base import EvalContext, Task, TaskResult

# in the order tasks run and report.md lists them
TASKS: dict[str, Task] = {
    task.name: task for task in (mt.TASK, clnlu.TASK, clqa.TASK, clsum.TASK, ppl.TASK, lac.TASK)
}
ALL_TASKS = tuple(TASKS)
# every --data key, each owned by one task
DATA_KEYS = tuple(key for task in TASKS.values() for key in task.data_keys)
TASK_TITLES = {name: task.title for name, task in TASKS.items()}
# the tasks scored in a prompt format (an ablation run is evaluated once per format for these)
PROMPTED_TASKS = tuple(name for name, task in TASKS.items() if task.prompted)

__all__ = [
    "ALL_TASKS",
    "DATA_KEYS",
    "PROMPTED_TASKS",
    "TASKS",
    "TASK_TITLES",
    "EvalContext",
    "Task",
    "TaskResult",
]
