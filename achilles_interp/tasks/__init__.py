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
from .text_matching import TextMatchingTask

_REGISTRY: dict[str, Callable[..., Task]] = {
    "inverse-matching": lambda **kw: InverseMatchingTask(reverse=True, **kw),
    "forward-matching": lambda **kw: InverseMatchingTask(reverse=False, **kw),
    "composite": lambda **kw: CompositeTask(symmetric=False, **kw),
    "composite-symmetric": lambda **kw: CompositeTask(symmetric=True, **kw),
    "copy": lambda **kw: CopyTask(**kw),
    "mqar": lambda **kw: MQARTask(**kw),
}
# Tasks over a pretrained model's tokenizer (``tokenizer=`` required): built by get_task, but kept out
# of list_tasks(), the tasks a model can be trained on from scratch.
_TEXT_REGISTRY: dict[str, Callable[..., Task]] = {
    "text-inverse-matching": lambda **kw: TextMatchingTask(reverse=True, **kw),
    "text-forward-matching": lambda **kw: TextMatchingTask(reverse=False, **kw),
}


def list_tasks() -> list[str]:
    """Registered task names (the synthetic tasks; see :func:`list_text_tasks` for the text ones)."""
    return list(_REGISTRY)


def list_text_tasks() -> list[str]:
    """Names of the text tasks for pretrained models (they need ``tokenizer=``)."""
    return list(_TEXT_REGISTRY)


def get_task(name: str, **kwargs: Any) -> Task:
    """Build a task by registry name; ``kwargs`` go to the task's constructor.

    Names: ``inverse-matching`` / ``forward-matching`` (kwargs: ``n_layers``), ``composite`` /
    ``composite-symmetric`` (no kwargs), ``copy`` (``length``, ``alphabet_size``, ``vocab_size``),
    ``mqar`` (``num_pairs``, ``num_queries``, ``num_keys``, ``num_values``, ``vocab_size``),
    ``text-inverse-matching`` / ``text-forward-matching`` (``tokenizer`` required; ``n_shots``,
    ``n_fillers``, ``prepend_bos``): the matching tasks as text, for pretrained models.

    Raises:
        ValueError: unknown name (the message lists the allowed ones) or bad arguments.
    """
    if name in _TEXT_REGISTRY:
        return _TEXT_REGISTRY[name](**kwargs)
    if name not in _REGISTRY:
        raise UserError(f"unknown task {name!r}; allowed tasks: {', '.join([*_REGISTRY, *_TEXT_REGISTRY])}")
    return _REGISTRY[name](**kwargs)


__all__ = [
    "IGNORE_INDEX",
    "Task",
    "TaskBatch",
    "CompositeTask",
    "CopyTask",
    "InverseMatchingTask",
    "MQARTask",
    "TextMatchingTask",
    "answer_logits",
    "evaluate_by_length",
    "get_task",
    "list_tasks",
    "list_text_tasks",
    "logit_diff",
    "task_accuracy",
    "task_loss",
]
