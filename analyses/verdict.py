"""Which part of a Mamba block carries the behaviour: the conv path, the SSM (scan) path or the gate?

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

Confidence: with several models (e.g. seeds) the shares are mean ± std over models; with one model
they are the point estimate ± the std of a bootstrap over examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch

from .components import is_mamba
from .metrics import PatchingData, check_metric
from .patching import activation_patching, run_metric

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
class Verdict:
    """Shares of the restorable patching effect per path (fractions in [0, 1] summing to 1).

    Attributes:
        share: ``{"conv", "ssm", "gate"} -> mean share``; std: same keys, the spread (see ``spread``).
        per_model: one ``{path: share}`` dict per model; raw_effect: per model ``{path: E_path}``.
        spread: ``"std over N models"`` or ``"bootstrap std over n examples"``.
        metric: the patching metric; sentence: a human-readable summary.
    """

    share: Dict[str, float]
    std: Dict[str, float]
    per_model: List[Dict[str, float]]
    raw_effect: List[Dict[str, float]]
    spread: str
    metric: str
    sentence: str = ""
    model_names: List[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "share": self.share,
            "std": self.std,
            "per_model": self.per_model,
            "raw_effect": self.raw_effect,
            "spread": self.spread,
            "metric": self.metric,
            "sentence": self.sentence,
            "model_names": self.model_names,
            "definition": DEFINITION,
        }


def _load(m):
    if isinstance(m, torch.nn.Module):
        return m
    try:
        from achilles_interp.zoo import load_model
    except ImportError:  # zoo not shipped yet
        from achilles_interp.model import HookedMamba

        return HookedMamba.from_pretrained(m).eval()
    return load_model(m)


def _shares(effects: torch.Tensor) -> torch.Tensor:
    """effects ``[3, layers]`` normalised effects -> ``[3]`` shares (NaN if nothing restores)."""
    e = effects.clamp(min=0).nan_to_num(0.0).sum(-1)
    total = e.sum()
    return e / total if total > 0 else e * float("nan")


def path_effects(model, data: PatchingData, metric: str = "logit_diff", keep_per_example: bool = False):
    """Denoising patching of the three paths at the answer position.

    Returns ``(effect [3, layers], per_example [3, layers, n] or None, clean [n], corrupted [n])``
    (rows in the order conv, ssm, gate).
    """
    i = data.single_answer_pos()
    if i < 1:
        raise ValueError("the verdict needs answer_pos >= 1 (the SSM path is the state at answer_pos - 1)")
    res = activation_patching(
        model,
        data,
        components=list(PATHS.values()),
        positions=[i - 1, i],
        metric=metric,
        direction="denoising",
        keep_per_example=keep_per_example,
    )
    take = [1, 0, 1]  # conv_act at i, ssm_state at i-1, gate at i
    eff = torch.stack([res.effect[k, :, take[k]] for k in range(3)])
    per = torch.stack([res.per_example[k, :, take[k]] for k in range(3)]) if keep_per_example else None
    clean = run_metric(model, data.clean_tokens, data, metric).cpu()
    corr = run_metric(model, data.corrupted_tokens, data, metric).cpu()
    return eff, per, clean, corr


def _bootstrap(
    per: torch.Tensor, clean: torch.Tensor, corr: torch.Tensor, n_boot: int, seed: int
) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = clean.shape[0]
    out = []
    for _ in range(n_boot):
        idx = torch.randint(0, n, (n,), generator=g)
        c, k = clean[idx].mean(), corr[idx].mean()
        gap = c - k
        if abs(float(gap)) < 1e-12:
            continue
        eff = (per[..., idx].mean(-1) - k) / gap
        out.append(_shares(eff))
    return torch.stack(out) if out else torch.full((1, 3), float("nan"))


def verdict(
    models_or_paths: Sequence,
    task=None,
    data: Optional[PatchingData] = None,
    n: int = 64,
    seed: int = 0,
    metric: str = "logit_diff",
    n_boot: int = 200,
    names: Optional[Sequence[str]] = None,
) -> Verdict:
    """Fraction of the patching effect carried by the conv path vs the SSM path vs the gate.

    Args:
        models_or_paths: HookedMamba models and/or checkpoint directories (e.g. one per seed).
            Non-Mamba models are rejected.
        task: a task (``clean_corrupted_pairs``) used when ``data`` is None (``n`` pairs, ``seed``,
            split "test").
        data: explicit clean/corrupted data (overrides ``task``).
        metric: ``"logit_diff"`` (default), ``"prob"`` or ``"accuracy"``.
        n_boot: bootstrap resamples when there is a single model.
    """
    check_metric(metric)
    if isinstance(models_or_paths, (str, torch.nn.Module)) or not len(models_or_paths):
        models_or_paths = [models_or_paths] if models_or_paths else []
    if not models_or_paths:
        raise ValueError("verdict needs at least one model or checkpoint path")
    if data is None:
        if task is None:
            raise ValueError("give a task or explicit PatchingData")
        data = PatchingData.from_task(task, n, seed=seed)
    models = [_load(m) for m in models_or_paths]
    for m in models:
        if not is_mamba(m):
            raise ValueError(
                f"verdict needs Mamba models; got a {type(m).__name__} (no conv / scan / gate hooks)"
            )
    names = list(names) if names else [getattr(m, "name", f"model{k}") for k, m in enumerate(models)]
    single = len(models) == 1
    per_model, raw, all_shares = [], [], []
    for m in models:
        eff, per, clean, corr = path_effects(m, data, metric, keep_per_example=single)
        s = _shares(eff)
        all_shares.append(s)
        keys = list(PATHS)
        per_model.append({k: float(s[j]) for j, k in enumerate(keys)})
        raw.append({k: float(eff[j].clamp(min=0).nan_to_num(0).sum()) for j, k in enumerate(keys)})
    stacked = torch.stack(all_shares)
    if single:
        boots = _bootstrap(per, clean, corr, n_boot, seed)
        boots = boots[torch.isfinite(boots).all(1)]  # resamples where nothing restores have no shares
        mean = stacked[0]
        std = boots.std(0) if boots.shape[0] > 1 else torch.full((3,), float("nan"))
        spread = f"bootstrap std over {data.n} examples"
    else:
        mean, std = stacked.mean(0), stacked.std(0)
        spread = f"std over {len(models)} models"
    keys = list(PATHS)
    v = Verdict(
        {k: float(mean[j]) for j, k in enumerate(keys)},
        {k: float(std[j]) for j, k in enumerate(keys)},
        per_model,
        raw,
        spread,
        metric,
        model_names=names,
    )
    v.sentence = describe(v)
    return v


def describe(v: Verdict) -> str:
    """One sentence, the largest share first."""
    if any(x != x for x in v.share.values()):
        return (
            "No path restores the behaviour (the clean and corrupted runs do not differ, or no patch "
            "moves the metric): no verdict."
        )
    order = sorted(v.share, key=lambda k: -v.share[k])
    def pm(k):
        return "" if v.std[k] != v.std[k] else f" ± {100 * v.std[k]:.0f}%"

    parts = [f"{PATH_WORDS[k]} carries {100 * v.share[k]:.0f}%{pm(k)}" for k in order]
    return (
        f"{parts[0][0].upper()}{parts[0][1:]}, {parts[1]} and {parts[2]} of the restorable effect "
        f"(denoising activation patching of the answer position's three inputs, metric {v.metric}, "
        f"summed over layers; ± = {v.spread})."
    )
