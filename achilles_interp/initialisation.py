"""The paper's weight initialisation, N(0, d1^(-2 gamma)), shared by the Mamba and Transformer models.

``d1`` is the fan-in of the weight by default (the paper's choice). ``fan="out"`` uses the fan-out
instead: not the paper's, it is there to test a public reproduction attempt that initialised that
way (see ``docs/special_tokens/paper_followups/README.md``).

Fans (inputs and outputs of the map each weight applies):

* ``nn.Linear`` weight ``[out_features, in_features]``: fan-in ``in_features``, fan-out
  ``out_features``;
* ``nn.Embedding`` weight ``[vocab, d_model]`` (a one-hot token times W): fan-in ``vocab``,
  fan-out ``d_model``.
"""

from __future__ import annotations

from torch import nn

from .config import FANS
from .errors import UserError


def fan_of(module: nn.Module, fan: str = "in") -> int:
    """The fan-in or fan-out (``fan``) of a Linear or Embedding weight, as defined above."""
    if fan not in FANS:
        raise UserError(f"fan must be one of {FANS}, got {fan!r}")
    if isinstance(module, nn.Linear):
        return module.in_features if fan == "in" else module.out_features
    if isinstance(module, nn.Embedding):
        return module.num_embeddings if fan == "in" else module.embedding_dim
    raise TypeError(f"fan_of expects nn.Linear or nn.Embedding, got {type(module).__name__}")


def paper_std(module: nn.Module, gamma: float, fan: str = "in") -> float:
    """Standard deviation ``d1 ** -gamma`` of the paper's initialisation for ``module``'s weight."""
    return float(fan_of(module, fan)) ** -gamma
