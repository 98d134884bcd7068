"""Position probes: can each layer's residual stream linearly decode a token's absolute position,
and, in the matching tasks, the key slot (1..5) the token belongs to?

The matching tasks' answer is a slot index, so a model must know *where* the matching key sits.
A model with a positional embedding has it from the first layer; a Mamba without one must build
it in its recurrence (a causal model can, e.g. by counting), and in the paper's format no token
marks a slot boundary (separators are random numbers), unlike the special-token format's
separator id. This probe measures how much position information each layer's residual stream
holds, with the Hewitt & Liang control (a random map from the token id to the classes) for how
much a probe gets from the token's identity alone.

Rows of one example never fall on both sides of the train / test split (whole examples are held
out), so a probe cannot memorise an example's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from .linear import control_labels, train_probe
from achilles_interp.errors import UserError

N_KEYS, KEY_LEN = 5, 3


@dataclass
class PositionProbe:
    """One probe's result: ``stream`` (which residual stream, e.g. ``"after layer 1"``), ``target``
    (``"position"`` or ``"slot"``), ``accuracy`` (held-out), ``control`` (the control task's held-out
    accuracy), ``chance`` (1 / number of classes)."""

    stream: str
    layer_index: int
    target: str
    accuracy: float
    control: float
    chance: float

    @property
    def selectivity(self) -> float:
        return self.accuracy - self.control

    def to_dict(self) -> dict:
        return {**self.__dict__, "selectivity": self.selectivity}


def residual_streams(model) -> List[tuple]:
    """``(label, hook name)`` of every residual stream: the embedding (input of block 0), then the
    output of each block."""
    L = model.cfg.n_layers
    out = [("embedding", "blocks.0.hook_resid_pre")]
    out += [(f"after layer {i}", f"blocks.{i + 1}.hook_resid_pre") for i in range(L - 1)]
    out.append((f"after layer {L - 1}", f"blocks.{L - 1}.hook_resid_post"))
    return out


def key_slots(seq_len: int) -> torch.Tensor:
    """``[seq_len]``: the key slot (0..4) of each position of a matching-task row, -1 elsewhere."""
    slot = torch.full((seq_len,), -1, dtype=torch.long)
    for k in range(N_KEYS):
        slot[4 * k: 4 * k + KEY_LEN] = k
    return slot


@torch.no_grad()
def position_probes(model, tokens: torch.Tensor, slots: Optional[torch.Tensor] = None, test_frac: float = 0.25,
                    seed: int = 0, steps: int = 100) -> List[PositionProbe]:
    """Probe every residual stream of ``model`` on ``tokens [n, L]``.

    Targets: ``position`` (every position, ``L`` classes) and, when ``slots [L]`` is given (-1 for
    positions outside any slot, e.g. :func:`key_slots`), ``slot`` (the slot of each slotted
    position). Examples ``[0, n_train)`` train the probe, the rest test it.
    """
    n, L = tokens.shape
    if n < 4:
        raise UserError(f"position probes need at least 4 examples, got {n}")
    names = [nm for _, nm in residual_streams(model)]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    n_test = max(1, int(round(n * test_frac)))
    n_train = n - n_test
    targets = {"position": torch.arange(L)}
    if slots is not None:
        targets["slot"] = slots
    out = []
    for li, (label, nm) in enumerate(residual_streams(model)):
        act = cache[nm].float().cpu()  # [n, L, d]
        for target, per_pos in targets.items():
            keep = (per_pos >= 0).nonzero().flatten()
            X = act[:, keep].reshape(-1, act.shape[-1])  # example-major rows
            y = per_pos[keep].repeat(n)
            types = tokens[:, keep].reshape(-1).cpu()
            rows = len(keep)
            split = (torch.arange(n_train * rows), torch.arange(n_train * rows, n * rows))
            task = train_probe(X, y, steps=steps, seed=seed, split=split)
            ctrl = train_probe(X, control_labels(types, y, seed=seed + 1), steps=steps, seed=seed, split=split)
            out.append(PositionProbe(label, li, target, task.test_acc, ctrl.test_acc, 1.0 / len(torch.unique(y))))
    return out
