"""`GridResult`: a labelled ``[component, layer, pos]`` tensor of patching / attribution numbers,
with a tidy pandas view and CSV / JSON export (through ``achilles_interp.outputs``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch

from achilles_interp.outputs import atomic_write, write_json


@dataclass
class GridResult:
    """Result of patching over (component x layer x position).

    Attributes:
        values: ``[component, layer, pos]`` metric after patching that cell (for attribution:
            the linear estimate ``base metric + attribution``). NaN where a component is absent.
        effect: same shape, normalised effect (1 = the whole clean-vs-corrupted gap; see
            :func:`analyses.metrics.normalised_effect`).
        components, layers, positions: axis labels. ``token_labels``: one string per position.
        metric: ``"logit_diff"``, ``"prob"`` or ``"accuracy"``; direction: ``"denoising"`` (clean
            into corrupted) or ``"noising"`` (corrupted into clean); method: ``"activation"`` or
            ``"attribution"``.
        clean_baseline, corrupted_baseline: metric on the unpatched clean / corrupted batch.
        per_example: optional ``[component, layer, pos, n]`` per-example metric (for bootstrap),
            with ``clean_per_example`` / ``corrupted_per_example`` ``[n]``, the unpatched runs'.
    """

    values: torch.Tensor
    effect: torch.Tensor
    components: List[str]
    layers: List[int]
    positions: List[int]
    metric: str
    direction: str
    method: str
    clean_baseline: float
    corrupted_baseline: float
    token_labels: Optional[List[str]] = None
    model_name: str = "model"
    per_example: Optional[torch.Tensor] = field(default=None, repr=False)
    clean_per_example: Optional[torch.Tensor] = field(default=None, repr=False)
    corrupted_per_example: Optional[torch.Tensor] = field(default=None, repr=False)

    @classmethod
    def from_values(cls, values: torch.Tensor, clean_baseline: float, corrupted_baseline: float, **fields):
        """A result whose ``effect`` is ``values`` normalised by the baselines (in ``fields``'s
        ``direction``); ``fields``: the other attributes by name."""
        from .metrics import normalised_effect

        effect = normalised_effect(values, clean_baseline, corrupted_baseline, fields["direction"])
        return cls(values=values, effect=effect, clean_baseline=clean_baseline,
                   corrupted_baseline=corrupted_baseline, **fields)

    def cell(self, component: str, layer: int, pos: int, normalised: bool = True) -> float:
        t = self.effect if normalised else self.values
        return float(t[self.components.index(component), self.layers.index(layer), self.positions.index(pos)])

    def to_dataframe(self):
        """Tidy DataFrame: one row per cell with model, method, metric, direction, component, layer,
        position, token, value, effect, clean_baseline, corrupted_baseline."""
        import pandas as pd

        rows = []
        for ci, c in enumerate(self.components):
            for li, layer in enumerate(self.layers):
                for pi, p in enumerate(self.positions):
                    rows.append(
                        {
                            "model": self.model_name,
                            "method": self.method,
                            "metric": self.metric,
                            "direction": self.direction,
                            "component": c,
                            "layer": layer,
                            "position": p,
                            "token": self.token_labels[pi] if self.token_labels else str(p),
                            "value": float(self.values[ci, li, pi]),
                            "effect": float(self.effect[ci, li, pi]),
                            "clean_baseline": self.clean_baseline,
                            "corrupted_baseline": self.corrupted_baseline,
                        }
                    )
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        return {
            "model": self.model_name,
            "method": self.method,
            "metric": self.metric,
            "direction": self.direction,
            "components": self.components,
            "layers": self.layers,
            "positions": self.positions,
            "token_labels": self.token_labels,
            "clean_baseline": self.clean_baseline,
            "corrupted_baseline": self.corrupted_baseline,
            "values": self.values.tolist(),
            "effect": self.effect.tolist(),
        }

    def to_csv(self, path) -> None:
        df = self.to_dataframe()
        atomic_write(path, lambda f: df.to_csv(f, index=False))

    def to_json(self, path) -> None:
        write_json(path, self.to_dict())
