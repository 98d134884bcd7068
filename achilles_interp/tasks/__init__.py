"""Seeded synthetic tasks: inverse/forward sequence matching, composite function, COPY, MQAR.

    from achilles_interp.tasks import get_task, task_loss, task_accuracy
    task = get_task("inverse-matching", n_layers=2)
    batch = task.generate(1024, seed=0, split="train")   # batch.tokens [1024, 29]
    loss = task_loss(model(batch.tokens), batch)

See :mod:`achilles_interp.tasks.base` for the shared conventions (next-token answer positions,
``TaskBatch`` fields) and each task module's docstring for its exact definition and token ids.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import UserError
from .base import IGNORE_INDEX, Task, TaskBatch, answer_logits, logit_diff, task_accuracy, task_loss
from .composite import CompositeTask
from .copy_task import CopyTask
from .evaluation import evaluate_by_length
from .inverse_matching import InverseMatchingTask
from .mqar import MQARTask

_REGISTRY: dict[str, Callable[..., Task]] = {
    "inverse-matching": lambda **kw: InverseMatchingTask(reverse=True, **kw),
    "forward-matching": lambda **kw: InverseMatchingTask(reverse=False, **kw),
    "composite": lambda **kw: CompositeTask(symmetric=False, **kw),
    "composite-symmetric": lambda **kw: CompositeTask(symmetric=True, **kw),
    "copy": lambda **kw: CopyTask(**kw),
    "mqar": lambda **kw: MQARTask(**kw),
}


def list_tasks() -> list[str]:
    """Registered task names."""
    return list(_REGISTRY)


def get_task(name: str, **kwargs: Any) -> Task:
    """Build a task by registry name; ``kwargs`` go to the task's constructor.

    Names: ``inverse-matching`` / ``forward-matching`` (kwargs: ``n_layers``), ``composite`` /
    ``composite-symmetric`` (no kwargs), ``copy`` (``length``, ``alphabet_size``, ``vocab_size``),
    ``mqar`` (``num_pairs``, ``num_queries``, ``num_keys``, ``num_values``, ``vocab_size``).

    Raises:
        ValueError: unknown name (the message lists the allowed ones) or bad arguments.
    """
    if name not in _REGISTRY:
        raise UserError(f"unknown task {name!r}; allowed tasks: {', '.join(_REGISTRY)}")
    return _REGISTRY[name](**kwargs)


__all__ = [
    "IGNORE_INDEX",
    "Task",
    "TaskBatch",
    "CompositeTask",
    "CopyTask",
    "InverseMatchingTask",
    "MQARTask",
    "answer_logits",
    "evaluate_by_length",
    "get_task",
    "list_tasks",
    "logit_diff",
    "task_accuracy",
    "task_loss",
]
