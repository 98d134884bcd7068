"""Batched activation patching over (component x layer x position).

For every cell (component c, layer l, position p) the activation of c at (l, p) in the *base* run
is replaced by its value in the *source* run and the metric is re-measured:

* ``direction="denoising"``: base = corrupted, source = clean (does restoring this cell restore
  the behaviour?);
* ``direction="noising"``: base = clean, source = corrupted (does corrupting it break it?).

Batching: the base batch ``[n, L]`` is replicated K times along the batch dimension
(``[K*n, L]``, replica-major) and replica k is patched at its own (layer, pos) by one hook per
layer, so one forward pass evaluates K cells. ``hook_ssm_state`` (``component="ssm_state"``)
cells are batched the same way: the model emits the states at the group's positions, each
replica replaces h_p at its own position, and the model re-runs the recurrence from there per
batch row, so the edit propagates to every later state of that replica only.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .components import DEFAULT_COMPONENTS, check_components, hook_name, n_layers
from .metrics import PatchingData, check_metric, metric_per_example, normalised_effect
from .results import GridResult

DIRECTIONS = ("denoising", "noising")


def check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    return direction


def _check_axis(name: str, values, limit: int) -> List[int]:
    values = list(range(limit)) if values is None else [int(v) for v in values]
    bad = [v for v in values if not 0 <= v < limit]
    if bad or not values:
        raise ValueError(f"{name} must be a non-empty list of ints in [0, {limit}), got {values!r}")
    return values


def base_and_source(data: PatchingData, direction: str):
    check_direction(direction)
    if direction == "denoising":
        return data.corrupted_tokens, data.clean_tokens
    return data.clean_tokens, data.corrupted_tokens


@torch.no_grad()
def run_metric(
    model, tokens: torch.Tensor, data: PatchingData, metric: str, fwd_hooks=(), reps: int = 1, **kwargs
) -> torch.Tensor:
    """Per-example metric ``[reps * n]`` of ``model`` on ``tokens`` with the given hooks."""
    logits = model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks), **kwargs)
    return metric_per_example(logits, data, metric, reps=reps)


@torch.no_grad()
def cache_source(
    model, tokens: torch.Tensor, names: Sequence[str], with_states: bool
) -> Dict[str, torch.Tensor]:
    """Activations ``{hook name: [n, L, ...]}`` of one run (states at every position if asked)."""
    names = set(names)
    kwargs = {"ssm_state_positions": "all"} if with_states else {}
    _, cache = model.run_with_cache(tokens, names_filter=lambda nm: nm in names, **kwargs)
    return {nm: cache[nm] for nm in names}


def _cell_patch_hook(
    src: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor, src_rows: torch.Tensor, src_pos: torch.Tensor
) -> Callable:
    """Hook setting ``act[rows, pos] = src[src_rows, src_pos]`` (advanced indexing on dims 0, 1)."""

    def hook(act, hook):
        act = act.clone()
        act[rows, pos] = src[src_rows, src_pos].to(act.dtype)
        return act

    return hook


def _replica_index(n: int, replicas: Sequence[int], positions: Sequence[int], device):
    """Row / position indices for patching replica k (of n rows) at positions[k]."""
    ar = torch.arange(n, device=device)
    rows = torch.cat([k * n + ar for k in replicas])
    pos = torch.cat([torch.full((n,), int(p), device=device) for p in positions])
    src_rows = ar.repeat(len(replicas))
    return rows, pos, src_rows, pos


def activation_patching(
    model,
    data: PatchingData,
    components: Sequence[str] = tuple(DEFAULT_COMPONENTS),
    layers: Optional[Sequence[int]] = None,
    positions: Optional[Sequence[int]] = None,
    metric: str = "logit_diff",
    direction: str = "denoising",
    cells_per_pass: int = 64,
    progress: bool = False,
    token_labels: Optional[List[str]] = None,
    model_name: str = "model",
    keep_per_example: bool = False,
    skip_noops: bool = True,
) -> GridResult:
    """Patch every (component, layer, position) cell from the source run into the base run.

    Args:
        model: a ``HookedMamba`` or ``HookedTransformerBaseline`` (any HookedRootModule whose hook
            names follow :mod:`analyses.components`).
        data: clean / corrupted batches (:class:`PatchingData`).
        components: names from :mod:`analyses.components` (absent ones give NaN rows).
        layers, positions: subsets (default: all layers, all positions 0..L-1).
        metric: ``"logit_diff"``, ``"prob"`` or ``"accuracy"`` (see :mod:`analyses.metrics`).
        direction: ``"denoising"`` or ``"noising"``.
        cells_per_pass: K, the number of cells evaluated per forward pass (1 = one forward per cell).
        progress: show a tqdm bar over forward passes.
        keep_per_example: also return per-example metrics ``[C, Lyr, P, n]`` (for bootstraps).
        skip_noops: cells whose source activation equals the base activation for every example
            (e.g. positions before the first token where clean and corrupted differ, in a causal
            model) cannot change anything: they get the base metric without a forward pass. Exact.
    Returns:
        :class:`GridResult` with ``values``/``effect`` ``[component, layer, pos]``.
    """
    components = check_components(components)
    check_metric(metric)
    check_direction(direction)
    if not isinstance(cells_per_pass, int) or cells_per_pass < 1:
        raise ValueError(f"cells_per_pass must be a positive int, got {cells_per_pass!r}")
    layers = _check_axis("layers", layers, n_layers(model))
    positions = _check_axis("positions", positions, data.seq_len)
    n = data.n
    base, source = base_and_source(data, direction)
    clean_m = run_metric(model, data.clean_tokens, data, metric)
    corr_m = run_metric(model, data.corrupted_tokens, data, metric)
    clean_b, corr_b = float(clean_m.mean()), float(corr_m.mean())

    # which hooks exist; cache the source activations of all of them
    names = {(c, layer): hook_name(model, c, layer) for c in components for layer in layers}
    wanted = [nm for nm in names.values() if nm is not None]
    with_states = any(nm.endswith("hook_ssm_state") for nm in wanted)
    src = cache_source(model, source, wanted, with_states=with_states)
    base_acts = cache_source(model, base, wanted, with_states=with_states) if skip_noops else None
    base_m = corr_m if direction == "denoising" else clean_m

    per_ex = torch.full((len(components), len(layers), len(positions), n), float("nan"))
    # passes: list of (component, [(layer, pos), ...], extra kwargs)
    passes = []
    for ci, c in enumerate(components):
        cells = [(layer, p) for layer in layers for p in positions if names[(c, layer)] is not None]
        if skip_noops:
            live = []
            for layer, p in cells:
                nm = names[(c, layer)]
                if torch.equal(src[nm][:, p], base_acts[nm][:, p]):
                    per_ex[ci, layers.index(layer), positions.index(p)] = base_m.cpu()
                else:
                    live.append((layer, p))
            cells = live
        if not cells:
            continue
        for s in range(0, len(cells), cells_per_pass):
            group = cells[s : s + cells_per_pass]
            # state cells: the model emits the states at the group's positions only
            kwargs = {"ssm_state_positions": sorted({p for _, p in group})} if c == "ssm_state" else {}
            passes.append((ci, c, group, kwargs))

    iterator = passes
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(passes, desc=f"patching ({direction}, {metric})", unit="pass")
    device = base.device
    for ci, c, group, kwargs in iterator:
        K = len(group)
        by_layer = defaultdict(list)
        for k, (layer, p) in enumerate(group):
            by_layer[layer].append((k, p))
        hooks = []
        for layer, items in by_layer.items():
            nm = names[(c, layer)]
            s = src[nm]
            if c == "ssm_state":  # the hook sees [K*n, P, ...]: states at the group's P positions
                kept = kwargs["ssm_state_positions"]
                rows, _, src_rows, src_pos = _replica_index(n, [k for k, _ in items], [p for _, p in items], device)
                pos = torch.cat([torch.full((n,), kept.index(p), device=device) for _, p in items])
            else:
                rows, pos, src_rows, src_pos = _replica_index(
                    n, [k for k, _ in items], [p for _, p in items], device
                )
            hooks.append((nm, _cell_patch_hook(s, rows, pos, src_rows, src_pos)))
        tokens = base.repeat(K, 1)
        m = run_metric(model, tokens, data, metric, fwd_hooks=hooks, reps=K, **kwargs).view(K, n).cpu()
        for k, (layer, p) in enumerate(group):
            per_ex[ci, layers.index(layer), positions.index(p)] = m[k]

    values = per_ex.mean(-1)
    effect = normalised_effect(values, clean_b, corr_b, direction)
    return GridResult(
        values,
        effect,
        components,
        layers,
        positions,
        metric,
        direction,
        "activation",
        clean_b,
        corr_b,
        token_labels,
        model_name,
        per_ex if keep_per_example else None,
    )


def patch_one_cell(
    model,
    data: PatchingData,
    component: str,
    layer: int,
    pos: int,
    metric: str = "logit_diff",
    direction: str = "denoising",
) -> float:
    """Reference implementation: one forward pass for one cell (mean metric after patching)."""
    base, source = base_and_source(data, direction)
    nm = hook_name(model, component, layer)
    if nm is None:
        return float("nan")
    is_state = component == "ssm_state"
    s = cache_source(model, source, [nm], with_states=is_state)[nm]

    def hook(act, hook):
        act = act.clone()
        act[:, 0 if is_state else pos] = s[:, pos].to(act.dtype)
        return act

    kwargs = {"ssm_state_positions": [pos]} if is_state else {}
    return float(run_metric(model, base, data, metric, fwd_hooks=[(nm, hook)], **kwargs).mean())


def patch_cells(
    model,
    data: PatchingData,
    cells: Sequence[tuple],
    metric: str = "logit_diff",
    direction: str = "denoising",
) -> float:
    """Patch a *set* of cells ``[(component, layer, pos), ...]`` simultaneously (one forward pass)
    and return the mean metric. ``pos`` may be ``"all"``. Patching every cell that the answer
    depends on (e.g. ``resid_pre`` of layer 0 at all positions) restores the source metric exactly.
    ``ssm_state`` cells are not allowed here (use :func:`activation_patching`)."""
    check_metric(metric)
    base, source = base_and_source(data, direction)
    by_name = defaultdict(list)
    for c, layer, pos in cells:
        check_components([c])
        if c == "ssm_state":
            raise ValueError(
                "patch_cells does not patch ssm_state (states re-run the scan); use activation_patching"
            )
        nm = hook_name(model, c, layer)
        if nm is None:
            raise ValueError(f"model has no component {c!r} at layer {layer}")
        by_name[nm].append(slice(None) if pos == "all" else int(pos))
    src = cache_source(model, source, list(by_name), with_states=False)

    def make(nm, idx):
        def hook(act, hook):
            act = act.clone()
            for p in idx:
                act[:, p] = src[nm][:, p].to(act.dtype)
            return act

        return hook

    hooks = [(nm, make(nm, idx)) for nm, idx in by_name.items()]
    return float(run_metric(model, base, data, metric, fwd_hooks=hooks).mean())
