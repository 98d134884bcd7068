"""Which input of the answer position carries a clean-vs-corrupted difference: the conv path, the
SSM (scan) path or the gate? A pure function of an activation-patching grid already computed.

Definition (exact decomposition of the mixer output at the answer position i). In every Mamba
layer the mixer output at position i is a function of three inputs only::

    out_i = f( h_{i-1},  u_i,  z_i )
      h_{i-1}: the SSM state after position i-1   -> everything earlier tokens wrote into the scan
      u_i    : the SSM input at i (SiLU(conv)),    -> the conv window x_{i-d_conv+1..i}
               which also determines dt_i, B_i, C_i
      z_i    : the gate pre-activation at i

so the three *paths* into the answer are **ssm** (``hook_ssm_state`` at i-1), **conv**
(``hook_conv_act`` at i) and **gate** (``hook_gate`` at i). With denoising activation patching
(clean into corrupted, normalised so that 1 = the whole clean-vs-corrupted gap) the effect of
path c is ``E_c = sum over layers of max(0, effect[c, layer])`` and its share is
``E_c / (E_conv + E_ssm + E_gate)``. The sum over layers is a summary, not an exact decomposition
for multi-layer models (earlier layers also act on other positions).

What a share means depends on the pair: if the clean and corrupted inputs differ only inside the
conv window of the answer (the matching tasks' query), the conv path can carry the whole
difference without the scan; if they differ far before it (the keys), only the scan can.

Spread: with several models (e.g. seeds) :func:`combine` gives mean ± std over models; with one
model :func:`path_shares` gives a bootstrap std over examples (needs the grid's per-example values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Sequence

import torch

from achilles_interp.errors import UserError

from .metrics import normalised_effect
from .results import GridResult

DEFINITION = (
    "In every Mamba layer the mixer output at the answer position i is a function of exactly three "
    "inputs: the SSM state h_{i-1} (the scan path: everything earlier tokens wrote into the state), "
    "the SSM input u_i = SiLU(conv) (the conv path: the conv window, which also sets dt_i, B_i, C_i) "
    "and the gate pre-activation z_i. Each is patched from the clean run into the corrupted run "
    "(denoising); its effect is normalised so that 1 = the whole clean-vs-corrupted gap; "
    "E_path = sum over layers of max(0, effect) and share = E_path / (E_conv + E_ssm + E_gate)."
)
PATHS = {"conv": "conv_act", "ssm": "ssm_state", "gate": "gate"}
PATH_WORDS = {"conv": "the conv", "ssm": "the SSM scan", "gate": "the gate"}


@dataclass
class PathShares:
    """Shares of the restorable effect per path (``{"conv", "ssm", "gate"}``, summing to 1; NaN
    when no path restores anything), their spread, and the raw summed effects."""

    share: Dict[str, float]
    std: Dict[str, float]
    effect: Dict[str, float]
    spread: str
    n_models: int = 1

    def to_dict(self) -> dict:
        return {"share": self.share, "std": self.std, "effect": self.effect, "spread": self.spread,
                "n_models": self.n_models, "definition": DEFINITION}

    def sentence(self) -> str:
        """One sentence, the largest share first."""
        if any(v != v for v in self.share.values()):
            return "no path restores the difference (the clean and corrupted answers do not differ): no shares"
        order = sorted(self.share, key=lambda k: -self.share[k])

        def pm(k):
            return "" if self.std[k] != self.std[k] else f" ± {100 * self.std[k]:.0f}%"

        parts = [f"{PATH_WORDS[k]} {100 * self.share[k]:.0f}%{pm(k)}" for k in order]
        return ", ".join(parts) + f" ({self.spread})"


def _shares(effects: torch.Tensor) -> torch.Tensor:
    """effects ``[3, layers]`` -> ``[3]`` shares (NaN if nothing restores)."""
    e = effects.clamp(min=0).nan_to_num(0.0).sum(-1)
    total = e.sum()
    return e / total if total > 0 else e * float("nan")


def _path_rows(grid: GridResult, answer_pos: int, values: torch.Tensor) -> torch.Tensor:
    """``[3, layers, ...]``: conv_act at i, ssm_state at i-1, gate at i, from a grid tensor."""
    if answer_pos < 1:
        raise UserError("path shares need answer_pos >= 1 (the SSM path is the state at answer_pos - 1)")
    missing = [c for c in PATHS.values() if c not in grid.components]
    need = [p for p in (answer_pos - 1, answer_pos) if p not in grid.positions]
    if missing or need:
        raise UserError(f"the grid lacks components {missing} or positions {need} needed for path shares")
    at = [answer_pos, answer_pos - 1, answer_pos]
    return torch.stack([values[grid.components.index(c), :, grid.positions.index(p)]
                        for c, p in zip(PATHS.values(), at)])


def path_shares(grid: GridResult, answer_pos: int, n_boot: int = 200, seed: int = 0) -> PathShares:
    """Shares of one model from its denoising activation-patching ``grid`` (which must hold
    ``conv_act``, ``ssm_state`` and ``gate`` at ``answer_pos`` and ``answer_pos - 1``). The
    bootstrap over examples needs ``grid.per_example``; without it the std is NaN."""
    if grid.direction != "denoising" or grid.method != "activation":
        raise UserError("path shares are defined on denoising activation patching")
    eff = _path_rows(grid, answer_pos, grid.effect)
    s = _shares(eff)
    std = torch.full((3,), float("nan"))
    if grid.per_example is not None and grid.clean_per_example is not None:
        per = _path_rows(grid, answer_pos, grid.per_example)  # [3, layers, n]
        clean, corr = grid.clean_per_example, grid.corrupted_per_example
        g = torch.Generator().manual_seed(seed)
        n = per.shape[-1]
        boots = []
        for _ in range(n_boot):
            idx = torch.randint(0, n, (n,), generator=g)
            # the baselines re-estimated on the same resample
            boots.append(_shares(normalised_effect(per[..., idx].mean(-1), float(clean[idx].mean()),
                                                   float(corr[idx].mean()), "denoising")))
        b = torch.stack(boots)
        b = b[torch.isfinite(b).all(1)]
        if b.shape[0] > 1:
            std = b.std(0)
    keys = list(PATHS)
    return PathShares({k: float(s[j]) for j, k in enumerate(keys)}, {k: float(std[j]) for j, k in enumerate(keys)},
                      {k: float(eff[j].clamp(min=0).nan_to_num(0).sum()) for j, k in enumerate(keys)},
                      f"bootstrap std over {grid.per_example.shape[-1]} examples"
                      if grid.per_example is not None else "one model")


def combine(shares: Sequence[PathShares]) -> PathShares:
    """Mean ± std over models (e.g. seeds) of their shares; models with no shares are left out."""
    ok = [s for s in shares if all(v == v for v in s.share.values())]
    if not ok:
        nan = {k: float("nan") for k in PATHS}
        return PathShares(nan, dict(nan), dict(nan), f"no model of {len(shares)} has shares", 0)
    if len(ok) == 1:
        return ok[0]
    t = torch.tensor([[s.share[k] for k in PATHS] for s in ok])
    e = torch.tensor([[s.effect[k] for k in PATHS] for s in ok])
    keys = list(PATHS)
    return PathShares({k: float(t[:, j].mean()) for j, k in enumerate(keys)},
                      {k: float(t[:, j].std()) for j, k in enumerate(keys)},
                      {k: float(e[:, j].mean()) for j, k in enumerate(keys)}, f"std over {len(ok)} models", len(ok))
