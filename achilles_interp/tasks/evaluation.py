"""Accuracy as a function of a task size parameter (COPY length, MQAR number of pairs, ...)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from .base import Task, _positive_int, answer_logits

__all__ = ["evaluate_by_length"]


def evaluate_by_length(
    predict_fn: Callable[[torch.Tensor], torch.Tensor],
    task_factory: Callable[[Any], Task],
    values: Iterable[Any],
    n: int = 256,
    seed: int = 0,
    split: str = "test",
    per_sequence: bool = False,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
) -> dict[Any, float]:
    """Accuracy for each task size.

    Args:
        predict_fn: maps ``tokens LongTensor [b, L]`` to ``logits [b, L, V]`` (e.g. a model).
        task_factory: ``value -> Task``, e.g. ``lambda m: CopyTask(length=m)`` or
            ``lambda k: MQARTask(num_pairs=k)``.
        values: the sizes to evaluate.
        n: examples per value (> 0).
        seed: generation seed (the same for every value).
        split: split passed to ``task.generate``.
        per_sequence: False -> fraction of answer tokens correct; True -> fraction of
            sequences with every answer correct (exact match).
        batch_size: optional chunk size for ``predict_fn`` (default: all ``n`` at once).
        device: optional device the tokens are moved to before ``predict_fn``.

    Returns:
        ``{value: accuracy in [0, 1]}`` in the order of ``values``.
    """
    n = _positive_int("n", n)
    bs = n if batch_size is None else _positive_int("batch_size", batch_size)
    out: dict[Any, float] = {}
    for value in values:
        task = task_factory(value)
        batch = task.generate(n, seed=seed, split=split)
        correct, total = 0.0, 0
        with torch.no_grad():
            for start in range(0, n, bs):
                chunk = batch[start : start + bs]
                tokens = chunk.tokens if device is None else chunk.tokens.to(device)
                logits = predict_fn(tokens)
                ok = answer_logits(logits, chunk).argmax(-1).cpu() == chunk.labels_2d()
                if per_sequence:
                    ok = ok.all(dim=1)
                correct += ok.float().sum().item()
                total += ok.numel()
        out[value] = correct / total
    return out
