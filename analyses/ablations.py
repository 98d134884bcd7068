"""Path-level ablations that separate the conv path from the SSM path (as forward hooks).

Every ``*_hooks`` function returns a list of ``(hook_name, fn)`` for ``model.run_with_hooks`` /
``model.hooks``; :func:`ablation_table` runs the standard set and tabulates the damage.

* :func:`conv_mean_hooks`: conv output := its mean over batch and positions (per channel), on a
  reference batch -> the conv carries no token-specific information.
* :func:`conv_identity_hooks`: conv output := its input x (a bypass: no mixing across positions).
* :func:`freeze_ssm_input_hooks`: SSM input u (``hook_conv_act``) := its value on a clean batch.
* :func:`state_write_knockout_hooks`: dt := 0 at chosen positions, so h_t = h_{t-1} there
  (exp(0·A) = 1 and the write dt·B·u vanishes): those tokens never enter the state.
* :func:`gate_ablation_hooks`: gate pre-activation z := mean / zero / clean value.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from .components import is_mamba
from .metrics import PatchingData, metric_per_example

GATE_MODES = ("mean", "zero", "clean")


def _layers(model, layers) -> List[int]:
    if not is_mamba(model):
        raise ValueError("ablations need a HookedMamba (hooks blocks.{i}.mixer.hook_conv_out ...)")
    L = model.cfg.n_layers
    layers = list(range(L)) if layers is None else [int(x) for x in layers]
    if not layers or any(not 0 <= x < L for x in layers):
        raise ValueError(f"layers must be a non-empty list of ints in [0, {L}), got {layers!r}")
    return layers


def _cache(model, tokens, names):
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=list(names))
    return cache


def conv_mean_hooks(model, tokens: torch.Tensor, layers: Optional[Sequence[int]] = None):
    """conv_out := mean over (batch, positions) of conv_out on ``tokens [n, L]``."""
    layers = _layers(model, layers)
    names = [f"blocks.{i}.mixer.hook_conv_out" for i in layers]
    cache = _cache(model, tokens, names)
    hooks = []
    for nm in names:
        mean = cache[nm].mean(dim=(0, 1))
        hooks.append((nm, lambda act, hook, mean=mean: mean.to(act.dtype).expand_as(act).clone()))
    return hooks


def conv_identity_hooks(model, layers: Optional[Sequence[int]] = None):
    """conv_out := the conv's input (``hook_x`` for Mamba-1, ``hook_xBC`` for Mamba-2)."""
    layers = _layers(model, layers)
    pre_name = "hook_x" if model.cfg.mixer == "mamba1" else "hook_xBC"
    hooks = []
    for i in layers:
        store = {}

        def save(act, hook, store=store):
            store["x"] = act

        def replace(act, hook, store=store):
            return store["x"].to(act.dtype)

        hooks += [(f"blocks.{i}.mixer.{pre_name}", save), (f"blocks.{i}.mixer.hook_conv_out", replace)]
    return hooks


def freeze_ssm_input_hooks(model, clean_tokens: torch.Tensor, layers: Optional[Sequence[int]] = None):
    """SSM input u := its value on ``clean_tokens`` (same shape as the batch being run)."""
    layers = _layers(model, layers)
    names = [f"blocks.{i}.mixer.hook_conv_act" for i in layers]
    cache = _cache(model, clean_tokens, names)
    return [(nm, lambda act, hook, v=cache[nm]: v.to(act.dtype).clone()) for nm in names]


def state_write_knockout_hooks(model, positions: Sequence[int], layers: Optional[Sequence[int]] = None):
    """dt := 0 at ``positions`` (h_t = h_{t-1}: no decay, no write)."""
    layers = _layers(model, layers)
    pos = [int(p) for p in positions]

    def hook(act, hook):
        if any(not -act.shape[1] <= p < act.shape[1] for p in pos):
            raise ValueError(f"positions {pos} out of range for sequence length {act.shape[1]}")
        act = act.clone()
        act[:, pos] = 0
        return act

    return [(f"blocks.{i}.mixer.hook_dt", hook) for i in layers]


def gate_ablation_hooks(
    model, mode: str = "mean", tokens: Optional[torch.Tensor] = None, layers: Optional[Sequence[int]] = None
):
    """Gate pre-activation z := mean over (batch, positions) of z on ``tokens`` (``"mean"``), 0
    (``"zero"``, so SiLU(z) = 0 and the mixer outputs 0) or its value on ``tokens`` (``"clean"``)."""
    if mode not in GATE_MODES:
        raise ValueError(f"gate ablation mode must be one of {GATE_MODES}, got {mode!r}")
    layers = _layers(model, layers)
    names = [f"blocks.{i}.mixer.hook_gate" for i in layers]
    if mode == "zero":
        return [(nm, lambda act, hook: torch.zeros_like(act)) for nm in names]
    if tokens is None:
        raise ValueError(f"gate ablation mode {mode!r} needs tokens")
    cache = _cache(model, tokens, names)
    if mode == "mean":
        return [
            (nm, lambda act, hook, m=cache[nm].mean((0, 1)): m.to(act.dtype).expand_as(act).clone())
            for nm in names
        ]
    return [(nm, lambda act, hook, v=cache[nm]: v.to(act.dtype).clone()) for nm in names]


@torch.no_grad()
def evaluate(model, tokens: torch.Tensor, data: PatchingData, hooks=()) -> dict:
    """Mean logit_diff, prob and accuracy of ``model`` on ``tokens`` (labels from ``data``)."""
    logits = model.run_with_hooks(tokens, fwd_hooks=list(hooks))
    return {m: float(metric_per_example(logits, data, m).mean()) for m in ("logit_diff", "prob", "accuracy")}


def ablation_table(
    model,
    data: PatchingData,
    layers: Optional[Sequence[int]] = None,
    knockout_positions: Optional[Sequence[int]] = None,
):
    """Run the standard ablations on the clean batch and tabulate them (pandas DataFrame with
    columns ablation, logit_diff, prob, accuracy). ``knockout_positions`` defaults to the positions
    where clean and corrupted differ (the tokens the answer depends on)."""
    import pandas as pd

    clean, corr = data.clean_tokens, data.corrupted_tokens
    if knockout_positions is None:
        knockout_positions = (clean != corr).any(0).nonzero().flatten().tolist()
    answer = data.single_answer_pos()
    key_positions = [p for p in knockout_positions if p != answer] or list(knockout_positions)
    runs = {
        "none": [],
        "conv := mean": conv_mean_hooks(model, clean, layers),
        "conv := identity": conv_identity_hooks(model, layers),
        "u := corrupted (frozen SSM input)": freeze_ssm_input_hooks(model, corr, layers),
        f"state writes knocked out at {key_positions}": state_write_knockout_hooks(
            model, key_positions, layers
        ),
        "gate := mean": gate_ablation_hooks(model, "mean", clean, layers),
    }
    rows = [{"ablation": k, **evaluate(model, clean, data, h)} for k, h in runs.items()]
    return pd.DataFrame(rows)
