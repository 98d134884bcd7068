"""Common interface of the synthetic tasks: :class:`TaskBatch`, :class:`Task` and loss helpers.

Conventions shared by every task
--------------------------------
* ``tokens`` is a ``LongTensor [n, L]``; every row of one batch has the same length ``L``.
* **Next-token convention**: the logits *at* position ``answer_pos`` predict the label.  For a
  model ``logits = model(tokens)`` of shape ``[n, L, V]``, the prediction for example ``i`` is
  ``logits[i, answer_pos[i]].argmax()``.  No shifting is needed by the caller.
* Single-answer tasks (inverse/forward matching, composite) have ``labels [n]`` and
  ``answer_pos`` an ``int`` (same position for every row) or ``LongTensor [n]``.
* Multi-answer tasks (COPY, MQAR) have ``labels [n, k]`` and ``answer_pos LongTensor [n, k]``
  (``k`` answers per row); :attr:`TaskBatch.targets` gives the dense ``[n, L]`` form with
  :data:`IGNORE_INDEX` (-100) wherever there is no loss.
* Generators are deterministic per ``(task parameters, seed, split)``: each call builds a fresh
  ``numpy.random.default_rng([seed, crc32(task name), split index, stream])``.  Different splits
  with the same seed use independent streams.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError

IGNORE_INDEX = -100

__all__ = [
    "IGNORE_INDEX",
    "TaskBatch",
    "Task",
    "answer_logits",
    "task_loss",
    "task_accuracy",
    "logit_diff",
]


@dataclass
class TaskBatch:
    """A batch of task sequences.

    Attributes:
        tokens: ``LongTensor [n, L]`` input token ids.
        labels: ``LongTensor [n]`` (single answer) or ``[n, k]`` (k answers per row): the target
            token id(s).
        answer_pos: ``int``, ``LongTensor [n]`` or ``LongTensor [n, k]`` (same shape as ``labels``
            after broadcasting an int): the position(s) whose logits predict ``labels``.
        meta: task-specific per-example tensors (first dimension ``n``), e.g. the key values.
    """

    tokens: torch.Tensor
    labels: torch.Tensor
    answer_pos: int | torch.Tensor
    meta: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.tokens.dim() != 2 or self.tokens.dtype != torch.long:
            raise UserError(
                f"tokens must be a LongTensor [n, L], got {self.tokens.dtype} {tuple(self.tokens.shape)}"
            )
        n, L = self.tokens.shape
        if self.labels.dtype != torch.long or self.labels.dim() not in (1, 2) or self.labels.shape[0] != n:
            raise UserError(
                f"labels must be a LongTensor [n] or [n, k] with n={n}, got {tuple(self.labels.shape)}"
            )
        if isinstance(self.answer_pos, torch.Tensor):
            if self.answer_pos.shape != self.labels.shape:
                raise UserError(
                    f"answer_pos shape {tuple(self.answer_pos.shape)} must equal "
                    f"labels shape {tuple(self.labels.shape)}"
                )
            if self.answer_pos.numel() and (
                int(self.answer_pos.min()) < 0 or int(self.answer_pos.max()) >= L
            ):
                raise UserError(f"answer_pos must lie in [0, {L})")
        else:
            if self.labels.dim() != 1:
                raise UserError("an int answer_pos needs labels of shape [n]")
            if not 0 <= int(self.answer_pos) < L:
                raise UserError(f"answer_pos must lie in [0, {L}), got {self.answer_pos}")

    # ------------------------------------------------------------------ shapes
    @property
    def n(self) -> int:
        """Number of examples."""
        return self.tokens.shape[0]

    @property
    def seq_len(self) -> int:
        """Sequence length ``L``."""
        return self.tokens.shape[1]

    def __len__(self) -> int:
        return self.n

    @property
    def multi_answer(self) -> bool:
        """True when ``labels`` is ``[n, k]``."""
        return self.labels.dim() == 2

    def answer_positions(self) -> torch.Tensor:
        """``LongTensor [n, k]`` of answer positions (``k = 1`` for single-answer tasks)."""
        if isinstance(self.answer_pos, torch.Tensor):
            pos = self.answer_pos
        else:
            pos = torch.full((self.n,), int(self.answer_pos), dtype=torch.long, device=self.tokens.device)
        return pos if pos.dim() == 2 else pos[:, None]

    def labels_2d(self) -> torch.Tensor:
        """``LongTensor [n, k]`` view of ``labels``."""
        return self.labels if self.labels.dim() == 2 else self.labels[:, None]

    @property
    def targets(self) -> torch.Tensor:
        """Dense targets ``LongTensor [n, L]``: the label at each answer position, -100 elsewhere."""
        t = torch.full_like(self.tokens, IGNORE_INDEX)
        t.scatter_(1, self.answer_positions(), self.labels_2d())
        return t

    # --------------------------------------------------------------- utilities
    def to(self, device: torch.device | str) -> "TaskBatch":
        """Copy of the batch on ``device``."""
        ap = self.answer_pos.to(device) if isinstance(self.answer_pos, torch.Tensor) else self.answer_pos
        return TaskBatch(
            self.tokens.to(device),
            self.labels.to(device),
            ap,
            {k: v.to(device) for k, v in self.meta.items()},
        )

    def __getitem__(self, idx: Any) -> "TaskBatch":
        """Row selection (slice, index tensor or boolean mask); always keeps the batch dimension."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1) if idx != -1 else slice(-1, None)
        ap = self.answer_pos[idx] if isinstance(self.answer_pos, torch.Tensor) else self.answer_pos
        return TaskBatch(self.tokens[idx], self.labels[idx], ap, {k: v[idx] for k, v in self.meta.items()})


def _split_index(splits: tuple[str, ...], split: str) -> int:
    if split not in splits:
        raise UserError(f"unknown split {split!r}; allowed splits: {', '.join(splits)}")
    return splits.index(split)


class Task(ABC):
    """Base class of every synthetic task.

    Subclasses set ``name``, ``splits``, ``vocab_size``, ``seq_len`` and ``label_tokens`` and
    implement :meth:`_generate` and :meth:`_clean_corrupted`.

    Attributes:
        name: registry name, e.g. ``"inverse-matching"``.
        splits: allowed split names; the first one is the training split.
        vocab_size: every token id and label id is in ``[0, vocab_size)``.
        seq_len: sequence length ``L`` of every generated batch.
        label_tokens: ``LongTensor [c]`` of candidate answer ids (for logit differences and
            restricted-vocabulary accuracy).
        special_tokens: name -> id (or ``(lo, hi)`` inclusive id range) of every token family.
        changes: names of the clean/corrupted changes the task offers; the first is the default.
    """

    name: ClassVar[str] = "task"
    splits: tuple[str, ...] = ("train", "test")
    vocab_size: int
    seq_len: int
    label_tokens: torch.Tensor
    special_tokens: dict[str, Any]
    changes: tuple[str, ...] = ("default",)

    # ------------------------------------------------------------- public API
    def generate(self, n: int, seed: int = 0, split: str = "train") -> TaskBatch:
        """Generate ``n`` examples of ``split`` deterministically from ``seed``.

        Returns:
            :class:`TaskBatch` with ``tokens [n, seq_len]``.
        Raises:
            ValueError: ``n <= 0``, a negative/non-int seed or an unknown split.
        """
        rng = self._rng(n, seed, split, stream=0)
        return self._generate(n, rng, split)

    def clean_corrupted_pairs(
        self, n: int, seed: int = 0, split: str = "test", change: str | None = None
    ) -> tuple[TaskBatch, TaskBatch, dict]:
        """``n`` (clean, corrupted) pairs that differ by one controlled change (see the task docstring).

        Args:
            change: which change (one of :attr:`changes`; None = the first, the task's default).

        Returns:
            ``(clean, corrupted, info)``; ``clean`` and ``corrupted`` have the same shape.  ``info``
            always holds ``"change"`` (str: what was changed), ``"diff_mask"`` (``BoolTensor
            [n, L]``, True exactly where the tokens differ), ``"positions"`` (``LongTensor`` of
            the changed positions, ``[n, d]``), ``"clean_labels"`` and ``"corrupted_labels"``
            (same shape as ``labels``).  ``corrupted.labels == info["corrupted_labels"]``.
        """
        if change is None:
            change = self.changes[0]
        if change not in self.changes:
            raise UserError(f"unknown change {change!r} for {self.name}; allowed: {', '.join(self.changes)}")
        # each change draws from its own stream, so the default change keeps its pairs when others are added
        rng = self._rng(n, seed, split, stream=1 + self.changes.index(change))
        clean, corrupted, info = self._clean_corrupted(n, rng, split, change)
        info.setdefault("change_name", change)
        info.setdefault("diff_mask", clean.tokens != corrupted.tokens)
        info.setdefault("clean_labels", clean.labels)
        info.setdefault("corrupted_labels", corrupted.labels)
        return clean, corrupted, info

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, seq_len={self.seq_len})"
        )

    # ----------------------------------------------------------- for subclasses
    @abstractmethod
    def _generate(self, n: int, rng: np.random.Generator, split: str) -> TaskBatch: ...

    @abstractmethod
    def _clean_corrupted(
        self, n: int, rng: np.random.Generator, split: str, change: str
    ) -> tuple[TaskBatch, TaskBatch, dict]: ...

    def _rng(self, n: int, seed: int, split: str, stream: int) -> np.random.Generator:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
            raise UserError(f"n must be a positive int, got {n!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise UserError(f"seed must be a non-negative int, got {seed!r}")
        s = _split_index(self.splits, split)
        return np.random.default_rng([int(seed), zlib.crc32(self.name.encode()), s, stream])


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UserError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _long(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64))


# ---------------------------------------------------------------------- metrics
def answer_logits(logits: torch.Tensor, batch) -> torch.Tensor:
    """Logits at the answer positions: the one place the answer position is read from logits.

    Args:
        logits: ``[n, L, V]``.
        batch: a :class:`TaskBatch` (or any object with ``answer_positions()``), or the answer
            positions themselves, ``LongTensor [n]`` or ``[n, k]``.
    Returns:
        ``[n, k, V]`` (``k = 1`` for single-answer tasks or positions ``[n]``).
    """
    if isinstance(batch, torch.Tensor):
        pos = batch if batch.dim() == 2 else batch[:, None]
    else:
        if isinstance(batch, TaskBatch) and (logits.dim() != 3 or logits.shape[:2] != batch.tokens.shape):
            raise UserError(
                f"logits must be [n, L, V] with [n, L] = {tuple(batch.tokens.shape)}, got {tuple(logits.shape)}"
            )
        pos = batch.answer_positions()
        pos = pos if pos.dim() == 2 else pos[:, None]
    if logits.dim() != 3 or logits.shape[0] != pos.shape[0]:
        raise UserError(f"logits must be [n, L, V] with n = {pos.shape[0]}, got {tuple(logits.shape)}")
    pos = pos.to(logits.device)
    return logits.gather(1, pos[..., None].expand(-1, -1, logits.shape[-1]))


def task_loss(logits: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
    """Mean cross-entropy over all answer positions (scalar); no loss anywhere else."""
    al = answer_logits(logits, batch)
    return F.cross_entropy(
        al.reshape(-1, al.shape[-1]).float(), batch.labels_2d().reshape(-1).to(logits.device)
    )


def task_accuracy(
    logits: torch.Tensor,
    batch: TaskBatch,
    per_sequence: bool = False,
    restrict_to_labels: torch.Tensor | None = None,
) -> float:
    """Fraction of answer positions whose argmax equals the label.

    Args:
        logits: ``[n, L, V]``.
        batch: the batch.
        per_sequence: if True, a row counts as correct only when all its answers are correct
            (exact match for COPY / MQAR).
        restrict_to_labels: optional ``LongTensor [c]`` of candidate ids (e.g. ``task.label_tokens``);
            the argmax is then taken over those ids only.
    """
    al = answer_logits(logits, batch)
    if restrict_to_labels is not None:
        cand = restrict_to_labels.to(al.device)
        pred = cand[al[..., cand].argmax(-1)]
    else:
        pred = al.argmax(-1)
    correct = pred == batch.labels_2d().to(al.device)
    if per_sequence:
        correct = correct.all(dim=1)
    return correct.float().mean().item()


def logit_diff(logits: torch.Tensor, batch: TaskBatch, wrong_labels: torch.Tensor | int) -> torch.Tensor:
    """``logit[correct label] - logit[wrong label]`` at the answer positions.

    Args:
        logits: ``[n, L, V]``.
        batch: the batch.
        wrong_labels: an int, or a ``LongTensor`` broadcastable to ``batch.labels`` (``[n]`` or ``[n, k]``).
    Returns:
        Tensor with the shape of ``batch.labels`` (``[n]`` or ``[n, k]``); average it yourself.
    """
    al = answer_logits(logits, batch)  # [n, k, V]
    right = batch.labels_2d().to(al.device)
    wrong = torch.as_tensor(wrong_labels, dtype=torch.long, device=al.device)
    if wrong.dim() == 1 and wrong.shape[0] == batch.n:
        wrong = wrong[:, None]  # one wrong label per row
    wrong = wrong.expand_as(right)
    diff = al.gather(-1, right[..., None])[..., 0] - al.gather(-1, wrong[..., None])[..., 0]
    return diff if batch.multi_answer else diff[:, 0]
