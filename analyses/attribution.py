"""Attribution patching: a first-order (gradient x activation difference) estimate of every
activation-patching cell from two forward passes and one backward pass.

For a cell (component c, layer l, position p) with base activation a and source activation a'
(see :mod:`analyses.patching` for base / source per direction)::

    attribution[c, l, p] = sum_examples sum_features (a'[p] - a[p]) * d metric / d a[p]

where ``metric`` is the mean over examples of a differentiable per-example metric
(``"logit_diff"`` or ``"prob"``), so the attribution estimates ``metric(patched) - metric(base)``.
The gradients come from TransformerLens backward hooks on the same hook points; for
``hook_ssm_state`` the model's backward hook already gives the total derivative dL/dh_t through
the recurrence, so the estimate matches "patch h_t and let it propagate".

:func:`agreement` compares an activation-patching result with an attribution result by the
Spearman rank correlation of their cells.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from achilles_interp.errors import UserError

from .components import DEFAULT_COMPONENTS, check_components, component_hooks, n_layers, present_hooks
from .metrics import PatchingData, check_metric, metric_per_example
from .patching import Baselines, base_and_source, check_axis, check_direction
from .results import GridResult


def attribution_patching(
    model,
    data: PatchingData,
    components: Sequence[str] = tuple(DEFAULT_COMPONENTS),
    layers: Optional[Sequence[int]] = None,
    positions: Optional[Sequence[int]] = None,
    metric: str = "logit_diff",
    direction: str = "denoising",
    token_labels: Optional[List[str]] = None,
    model_name: str = "model",
    baselines: Optional[Baselines] = None,
) -> GridResult:
    """Attribution patching on the same grid as :func:`analyses.patching.activation_patching`.

    Returns a :class:`GridResult` with ``method="attribution"``; ``values`` = base metric +
    attribution (the linear estimate of the patched metric), ``effect`` normalised as for
    activation patching. Raises ValueError for a non-differentiable metric (``"accuracy"``).
    ``baselines``: the unpatched runs when already computed (else two forward passes here); then
    one forward and one backward pass on the base batch.
    """
    components = check_components(components)
    check_metric(metric, differentiable=True)
    check_direction(direction)
    layers = check_axis("layers", layers, n_layers(model))
    positions = check_axis("positions", positions, data.seq_len)
    base, _ = base_and_source(data, direction)
    names = component_hooks(model, components, layers)
    wanted = sorted(present_hooks(names))
    with_states = any(nm.endswith("hook_ssm_state") for nm in wanted)
    if baselines is None or not baselines.covers(wanted):
        baselines = Baselines.run(model, data, wanted)
    src, _, base_out = baselines.source_and_base(direction)
    clean_b, corr_b = baselines.clean.mean(metric), baselines.corrupted.mean(metric)
    base_b = base_out.mean(metric)

    acts, grads = {}, {}

    def save_act(act, hook):
        acts[hook.name] = act.detach()

    def save_grad(grad, hook):
        grads[hook.name] = grad.detach()

    fwd = [(nm, save_act) for nm in wanted]
    bwd = [(nm, save_grad) for nm in wanted]
    kwargs = {"ssm_state_positions": "all"} if with_states else {}
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), model.hooks(fwd_hooks=fwd, bwd_hooks=bwd):
            logits = model(base, **kwargs)
            metric_per_example(logits, data, metric).mean().backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)

    attr = torch.full((len(components), len(layers), len(positions)), float("nan"))
    pos_idx = torch.tensor(positions)
    for ci, c in enumerate(components):
        for li, layer in enumerate(layers):
            nm = names[(c, layer)]
            if nm is None:
                continue
            diff = (src[nm].float() - acts[nm].float()) * grads[nm].float()  # [n, L, ...]
            per_pos = diff.flatten(2).sum(-1).sum(0)  # [L]
            attr[ci, li] = per_pos[pos_idx].cpu()
    return GridResult.from_values(base_b + attr, clean_b, corr_b, components=components, layers=layers,
                                  positions=positions, metric=metric, direction=direction, method="attribution",
                                  token_labels=token_labels, model_name=model_name)


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share their mean rank), float64, 1-D."""
    x = x.double()
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(len(x), dtype=torch.float64)
    # average over ties
    uniq, inverse = torch.unique(x, return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(ranks))
    return (sums / counts)[inverse]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two equally-shaped tensors over their finite common cells."""
    a, b = torch.as_tensor(a).flatten().double(), torch.as_tensor(b).flatten().double()
    if a.shape != b.shape:
        raise UserError(f"spearman needs equally many values, got {a.numel()} and {b.numel()}")
    ok = torch.isfinite(a) & torch.isfinite(b)
    a, b = a[ok], b[ok]
    if a.numel() < 2:
        return float("nan")
    try:
        from scipy.stats import spearmanr  # type: ignore

        return float(spearmanr(a.numpy(), b.numpy()).correlation)
    except ImportError:
        ra, rb = _ranks(a), _ranks(b)
        ra, rb = ra - ra.mean(), rb - rb.mean()
        denom = ra.norm() * rb.norm()
        return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def agreement(
    act_result: GridResult, attr_result: GridResult, per_component: bool = False, drop_inert: bool = True
):
    """Spearman rank correlation between activation- and attribution-patching values.

    Both results must share components, layers and positions. ``drop_inert`` leaves out cells where
    both methods give exactly zero effect (source == base there, e.g. positions before the first
    corrupted token): they are tied by construction and would inflate the correlation. Returns a
    float (all cells) or, with ``per_component=True``, ``{component: rho}`` plus ``"all"``.
    """
    for attr in ("components", "layers", "positions"):
        if getattr(act_result, attr) != getattr(attr_result, attr):
            raise UserError(
                f"results differ in {attr}: {getattr(act_result, attr)} vs {getattr(attr_result, attr)}"
            )
    a, b = act_result.values.clone().double(), attr_result.values.clone().double()
    if drop_inert:
        inert = (act_result.effect == 0) & (attr_result.effect == 0)
        a[inert], b[inert] = float("nan"), float("nan")
    rho = spearman(a, b)
    if not per_component:
        return rho
    out = {c: spearman(a[i], b[i]) for i, c in enumerate(act_result.components)}
    out["all"] = rho
    return out
