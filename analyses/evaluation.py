"""The one evaluator of the analyses: run a model on some tokens, with interventions, and read
the answer position.

    out = evaluate(model, data.corrupted_tokens, data, [Patch([Site("conv_act", 0, (27,))], data.clean_tokens)])
    out.mean("logit_diff"), out.accuracy(), out.predictions()

Every analysis (patching, attribution baselines, ablations, the paper's interventions) measures
through :func:`evaluate`, so a metric means the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from achilles_interp.tasks import answer_logits

from .metrics import PatchingData, answer_metric, predictions


@dataclass
class Outcome:
    """Answer-position logits of one run, ``logits [reps * n, V]`` (float32, CPU), and the data
    they are scored on (``reps`` stacked copies of its ``n`` examples, replica-major)."""

    logits: torch.Tensor
    data: PatchingData
    reps: int = 1

    @classmethod
    def of(cls, logits: torch.Tensor, data: PatchingData, reps: int = 1) -> "Outcome":
        """The outcome of a run's full logits ``[reps * n, L, V]``: their answer positions' rows."""
        ap = data.answer_positions().repeat(reps)
        return cls(answer_logits(logits, ap)[:, 0].float().cpu(), data, reps)

    def metric(self, name: str) -> torch.Tensor:
        """Per-example ``logit_diff`` / ``prob`` / ``accuracy`` ``[reps * n]``
        (:mod:`analyses.metrics`)."""
        return answer_metric(self.logits, self.data, name, self.reps)

    def mean(self, name: str) -> float:
        return float(self.metric(name).mean())

    def predictions(self) -> torch.Tensor:
        """Predicted ids ``[reps * n]`` (argmax over the data's ``label_tokens`` when set)."""
        return predictions(self.logits, self.data.label_tokens)

    def accuracy(self) -> float:
        """Fraction of predictions equal to the clean labels."""
        return self.mean("accuracy")

    def summary(self) -> dict:
        return {"logit_diff": self.mean("logit_diff"), "prob": self.mean("prob"), "accuracy": self.accuracy()}


@torch.no_grad()
def evaluate(model, tokens: torch.Tensor, data: PatchingData, interventions: Sequence = (), reps: int = 1,
             hooks: Sequence = (), **model_kwargs) -> Outcome:
    """Run ``model`` on ``tokens [reps * n, L]`` with ``interventions`` (objects of
    :mod:`analyses.interventions`, prepared for these tokens) and raw ``hooks`` (``(name, fn)``)
    and return the answer logits as an :class:`Outcome` scored on ``data``."""
    fwd = [h for iv in interventions for h in iv.hooks(model, tokens)] + list(hooks)
    return Outcome.of(model.run_with_hooks(tokens, fwd_hooks=fwd, **model_kwargs), data, reps)
