"""Per-example metrics at the answer position and the clean/corrupted data they need.

All metrics read ``logits [batch, pos, vocab]`` at ``answer_pos`` and return one number per
example (``[batch]``); analyses average them. Metric names:

* ``"logit_diff"``: logit[clean label] - logit[corrupted label] (nats).
* ``"prob"``: softmax probability of the clean label (over the whole vocabulary).
* ``"accuracy"``: 1.0 if the clean label wins the argmax (over ``label_tokens`` when given, else
  the whole vocabulary), else 0.0. Not differentiable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

from achilles_interp.errors import UserError
from achilles_interp.tasks import answer_logits

METRICS = ("logit_diff", "prob", "accuracy")
DIFFERENTIABLE_METRICS = ("logit_diff", "prob")


def check_metric(metric: str, differentiable: bool = False) -> str:
    allowed = DIFFERENTIABLE_METRICS if differentiable else METRICS
    if metric not in allowed:
        raise UserError(f"metric must be one of {allowed}, got {metric!r}")
    return metric


@dataclass
class PatchingData:
    """A clean/corrupted pair of batches.

    Attributes:
        clean_tokens, corrupted_tokens: ``LongTensor [n, L]``.
        answer_pos: int or ``LongTensor [n]``: the position whose logits predict the label.
        clean_labels, corrupted_labels: ``LongTensor [n]`` token ids.
        label_tokens: optional ``LongTensor [c]`` candidate answers (accuracy is argmax over them).
        change: what differs between clean and corrupted (the task's change name, e.g. ``"query"``);
            ``description``: the same in words (the task's ``info["change"]``).
    """

    clean_tokens: torch.Tensor
    corrupted_tokens: torch.Tensor
    answer_pos: Union[int, torch.Tensor]
    clean_labels: torch.Tensor
    corrupted_labels: torch.Tensor
    label_tokens: Optional[torch.Tensor] = None
    change: str = "custom"
    description: str = ""

    def __post_init__(self) -> None:
        for name in ("clean_tokens", "corrupted_tokens"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or t.dim() != 2:
                raise UserError(f"{name} must be a LongTensor [n, L]")
        if self.clean_tokens.shape != self.corrupted_tokens.shape:
            raise UserError(
                f"clean and corrupted tokens must have the same shape, got "
                f"{tuple(self.clean_tokens.shape)} and {tuple(self.corrupted_tokens.shape)}"
            )
        n, L = self.clean_tokens.shape
        for name in ("clean_labels", "corrupted_labels"):
            t = torch.as_tensor(getattr(self, name)).long()
            if t.dim() == 0:
                t = t.expand(n)
            if t.shape != (n,):
                raise UserError(f"{name} must be a LongTensor [n={n}], got {tuple(t.shape)}")
            setattr(self, name, t)
        ap = self.answer_pos
        if isinstance(ap, torch.Tensor):
            if ap.dim() == 2 and ap.shape[1] == 1:
                ap = ap[:, 0]
            if ap.shape != (n,):
                raise UserError(f"answer_pos must be an int or LongTensor [n={n}], got {tuple(ap.shape)}")
            if int(ap.min()) < 0 or int(ap.max()) >= L:
                raise UserError(f"answer_pos must lie in [0, {L})")
        elif not 0 <= int(ap) < L:
            raise UserError(f"answer_pos must lie in [0, {L}), got {ap}")
        self.answer_pos = ap

    @property
    def n(self) -> int:
        return self.clean_tokens.shape[0]

    @property
    def seq_len(self) -> int:
        return self.clean_tokens.shape[1]

    def answer_positions(self) -> torch.Tensor:
        """``LongTensor [n]``."""
        if isinstance(self.answer_pos, torch.Tensor):
            return self.answer_pos.long()
        return torch.full((self.n,), int(self.answer_pos), dtype=torch.long)

    @property
    def diff_positions(self) -> list:
        """Positions where the clean and corrupted tokens differ in at least one example."""
        return (self.clean_tokens != self.corrupted_tokens).any(0).nonzero().flatten().tolist()

    def single_answer_pos(self) -> int:
        """The answer position when it is the same for every example (else ValueError)."""
        ap = self.answer_positions()
        if not bool((ap == ap[0]).all()):
            raise UserError("this analysis needs one answer position shared by all examples")
        return int(ap[0])

    def subset(self, idx) -> "PatchingData":
        ap = self.answer_pos[idx] if isinstance(self.answer_pos, torch.Tensor) else self.answer_pos
        return PatchingData(
            self.clean_tokens[idx],
            self.corrupted_tokens[idx],
            ap,
            self.clean_labels[idx],
            self.corrupted_labels[idx],
            self.label_tokens,
            self.change,
            self.description,
        )

    @classmethod
    def from_task(cls, task, n: int, seed: int = 0, split: str = "test",
                  change: Optional[str] = None) -> "PatchingData":
        """Build from a task's ``clean_corrupted_pairs(n, seed, split, change)``."""
        clean, corrupted, info = task.clean_corrupted_pairs(n, seed=seed, split=split, change=change)
        if clean.labels.dim() != 1:
            raise UserError(
                f"patching needs a single-answer task; {task!r} has labels {tuple(clean.labels.shape)}"
            )
        return cls(
            clean.tokens,
            corrupted.tokens,
            clean.answer_pos,
            info["clean_labels"],
            info["corrupted_labels"],
            getattr(task, "label_tokens", None),
            info["change_name"],
            info["change"],
        )


def metric_per_example(logits: torch.Tensor, data: PatchingData, metric: str, reps: int = 1) -> torch.Tensor:
    """Per-example metric. ``logits [reps * n, L, V]`` (``reps`` stacked copies of the batch,
    replica-major) -> ``[reps * n]`` (float; differentiable for logit_diff and prob)."""
    ap = data.answer_positions().repeat(reps)
    return answer_metric(answer_logits(logits, ap)[:, 0], data, metric, reps)


def answer_metric(al: torch.Tensor, data: PatchingData, metric: str, reps: int = 1) -> torch.Tensor:
    """The metric from answer-position logits ``al [reps * n, V]`` -> ``[reps * n]``."""
    check_metric(metric)
    al = al.float()
    right = data.clean_labels.repeat(reps).to(al.device)
    wrong = data.corrupted_labels.repeat(reps).to(al.device)
    if metric == "logit_diff":
        return al.gather(1, right[:, None])[:, 0] - al.gather(1, wrong[:, None])[:, 0]
    if metric == "prob":
        return al.softmax(-1).gather(1, right[:, None])[:, 0]
    return (predictions(al, data.label_tokens) == right).float()


def predictions(al: torch.Tensor, label_tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Predicted ids ``[N]`` from answer logits ``al [N, V]``: argmax over ``label_tokens`` when
    given, else over the whole vocabulary."""
    if label_tokens is None:
        return al.argmax(-1)
    cand = label_tokens.to(al.device)
    return cand[al[:, cand].argmax(-1)]


def normalised_effect(value, clean: float, corrupted: float, direction: str):
    """Fraction of the clean-vs-corrupted gap a patch moves: 1 = the whole gap.

    denoising (patch clean into corrupted): ``(value - corrupted) / (clean - corrupted)``
    noising (patch corrupted into clean):   ``(clean - value) / (clean - corrupted)``
    A zero gap gives NaN.
    """
    gap = clean - corrupted
    if abs(gap) < 1e-12:
        return value * float("nan")
    return (value - corrupted) / gap if direction == "denoising" else (clean - value) / gap
