"""What a slide run predicts, one module per task (:mod:`abmil.tasks.base` is the interface).

    get_task("survival")                          the task's class: columns, losses, monitors, metrics ...
    get_task("survival").fit("nll", outcomes, 4)  fitted on a training part (time bins): a run's head
    get_task("multilabel", ("A", "B"))            a task of named targets (manifest columns A and B)
    get_task("multitarget", "label,os:survival")  several heads (a class and a survival outcome)
    head_from_info(checkpoint_info)               a trained run's head (a run from before heads: classification)

A new task is a module with a :class:`~abmil.tasks.base.Task` subclass and a line in :data:`TASKS`
(``docs/extending/add-a-task.md``).
"""
from __future__ import annotations

from collections.abc import Sequence

from .base import Task
from .classification import ClassificationTask
from .multilabel import MultilabelTask
from .multitarget import MultitargetTask
from .regression import RegressionTask
from .survival import DEFAULT_BINS, SurvivalTask

__all__ = ["DEFAULT_BINS", "DEFAULT_TASK", "TASKS", "Task", "combine_heads", "get_task", "head_from_info",
           "task_for_columns"]

#: The tasks by name, in the order ``--help`` lists them; the first is the default.
TASKS: dict[str, type[Task]] = {t.name: t for t in (ClassificationTask, SurvivalTask, RegressionTask,
                                                    MultilabelTask, MultitargetTask)}
DEFAULT_TASK = next(iter(TASKS))


def get_task(name: str | type[Task], targets: Sequence[str] | str | None = None) -> type[Task]:
    """The task called ``name`` (a task's class: itself); ValueError naming the choices otherwise. ``targets`` (a
    sequence or ``"A,B"``): the manifest columns of a task that is told them (:attr:`Task.needs_targets`,
    multilabel's ``--targets``); refused for the others."""
    if isinstance(name, type) and issubclass(name, Task):
        kind = name
    elif name not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {name!r}")
    else:
        kind = TASKS[name]
    if targets is None:
        return kind
    if not kind.needs_targets:
        raise ValueError(f"--targets names the columns of a multilabel task or the heads of a multitarget task; "
                         f"the {kind.name} task's are {', '.join(kind.columns)}")
    return kind.with_targets(targets.split(",") if isinstance(targets, str) else targets)


def head_from_info(info: dict) -> Task:
    """The head stored in a run's checkpoint info (``info["head"]``; a run from before heads: classification)."""
    d = info.get("head") or {}
    return get_task(d.get("task", Task.default_name)).from_dict(d)


def combine_heads(heads: Sequence[Task]) -> Task:
    """The head of an ensemble (a study's fold models): what their averaged predictions mean."""
    first = heads[0]
    for h in heads[1:]:
        if h.name != first.name:
            raise ValueError(f"an ensemble's models must share their head: {first.name}/{first.loss} and "
                             f"{h.name}/{h.loss}")
    return type(first).combine(heads)


def task_for_columns(columns: Sequence[str]) -> type[Task]:
    """The task whose predictions CSV has ``columns`` (:meth:`~abmil.tasks.base.Task.claims`; classification, the
    most general reader, is asked last)."""
    for task in [*list(TASKS.values())[1:], TASKS[DEFAULT_TASK]]:
        if task.claims(columns):
            return task
    return TASKS[DEFAULT_TASK]
