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
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch

from achilles_interp.errors import UserError

from .components import DEFAULT_COMPONENTS, check_components, component_hooks, hook_name, n_layers, present_hooks
from .evaluation import Outcome, evaluate
from .interventions import Patch, Site, set_at
from .metrics import PatchingData, check_metric
from .results import GridResult

DIRECTIONS = ("denoising", "noising")
STATE_BYTES = 1 << 30  # memory for the SSM states one patching pass emits (all its replicas, fp32)


def check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise UserError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    return direction


def check_axis(name: str, values, limit: int) -> List[int]:
    values = list(range(limit)) if values is None else [int(v) for v in values]
    bad = [v for v in values if not 0 <= v < limit]
    if bad or not values:
        raise UserError(f"{name} must be a non-empty list of ints in [0, {limit}), got {values!r}")
    return values


def base_and_source(data: PatchingData, direction: str):
    check_direction(direction)
    if direction == "denoising":
        return data.corrupted_tokens, data.clean_tokens
    return data.clean_tokens, data.corrupted_tokens


@dataclass
class Baselines:
    """The unpatched clean and corrupted runs of one model on one :class:`PatchingData`: their
    :class:`~analyses.evaluation.Outcome` and the activations ``{hook name: [n, L, ...]}`` of the
    hooks asked for (states at every position when ``ssm_state`` hooks are among them). Computed
    once (two forward passes) and shared by activation and attribution patching."""

    clean: Outcome
    corrupted: Outcome
    clean_acts: Dict[str, torch.Tensor]
    corrupted_acts: Dict[str, torch.Tensor]

    @classmethod
    @torch.no_grad()
    def run(cls, model, data: PatchingData, names: Sequence[str]) -> "Baselines":
        names = sorted(set(names))
        kwargs = {"ssm_state_positions": "all"} if any(nm.endswith("hook_ssm_state") for nm in names) else {}
        outs, acts = [], []
        for tokens in (data.clean_tokens, data.corrupted_tokens):
            logits, cache = model.run_with_cache(tokens, names_filter=lambda nm: nm in names, **kwargs)
            outs.append(Outcome.of(logits, data))
            acts.append({nm: cache[nm] for nm in names})
        return cls(outs[0], outs[1], acts[0], acts[1])

    def covers(self, names: Sequence[str]) -> bool:
        return set(names) <= set(self.clean_acts)

    def source_and_base(self, direction: str):
        """(source activations, base activations, base outcome) for a patching direction."""
        check_direction(direction)
        if direction == "denoising":
            return self.clean_acts, self.corrupted_acts, self.corrupted
        return self.corrupted_acts, self.clean_acts, self.clean


def _cell_patch_hook(src: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor, src_rows: torch.Tensor,
                     src_pos: torch.Tensor) -> Callable:
    """Hook setting ``act[rows, pos] = src[src_rows, src_pos]``."""
    return lambda act, hook: set_at(act, pos, src[src_rows, src_pos], rows=rows)


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
    baselines: Optional[Baselines] = None,
    state_positions: Optional[Sequence[int]] = None,
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
        baselines: the unpatched runs (:class:`Baselines`) when already computed; else run here.
        state_positions: patch the ``ssm_state`` component only at these positions (the others
            stay NaN); None: at every position of ``positions``.
    Returns:
        :class:`GridResult` with ``values``/``effect`` ``[component, layer, pos]``.
    """
    components = check_components(components)
    check_metric(metric)
    check_direction(direction)
    if not isinstance(cells_per_pass, int) or cells_per_pass < 1:
        raise UserError(f"cells_per_pass must be a positive int, got {cells_per_pass!r}")
    layers = check_axis("layers", layers, n_layers(model))
    positions = check_axis("positions", positions, data.seq_len)
    n = data.n
    base, _ = base_and_source(data, direction)
    names = component_hooks(model, components, layers)
    wanted = present_hooks(names)
    if baselines is None or not baselines.covers(wanted):
        baselines = Baselines.run(model, data, wanted)
    src, base_acts, base_out = baselines.source_and_base(direction)
    clean_b, corr_b = baselines.clean.mean(metric), baselines.corrupted.mean(metric)
    base_m = base_out.metric(metric)

    per_ex = torch.full((len(components), len(layers), len(positions), n), float("nan"))
    # passes: list of (component, [(layer, pos), ...], extra kwargs)
    passes = []
    for ci, c in enumerate(components):
        cells = [(layer, p) for layer in layers for p in positions if names[(c, layer)] is not None
                 and (c != "ssm_state" or state_positions is None or p in state_positions)]
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
        if c != "ssm_state":
            for s in range(0, len(cells), cells_per_pass):
                passes.append((ci, c, cells[s : s + cells_per_pass], {}))
            continue
        # state cells: the model emits the states at the group's positions for every replica, so a
        # group's memory grows as cells x positions; cells sorted by position keep groups narrow
        state_bytes = src[names[(c, layers[0])]][0, 0].numel() * 4 * n
        group: list = []
        for cell in sorted(cells, key=lambda lp: (lp[1], lp[0])):
            wide = len({p for _, p in group} | {cell[1]})
            if group and (len(group) == cells_per_pass or (len(group) + 1) * wide * state_bytes > STATE_BYTES):
                passes.append((ci, c, group, {"ssm_state_positions": sorted({p for _, p in group})}))
                group = []
            group.append(cell)
        passes.append((ci, c, group, {"ssm_state_positions": sorted({p for _, p in group})}))

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
        m = evaluate(model, tokens, data, hooks=hooks, reps=K, **kwargs).metric(metric).view(K, n)
        for k, (layer, p) in enumerate(group):
            per_ex[ci, layers.index(layer), positions.index(p)] = m[k]

    keep = {} if not keep_per_example else dict(per_example=per_ex, clean_per_example=baselines.clean.metric(metric),
                                                corrupted_per_example=baselines.corrupted.metric(metric))
    return GridResult.from_values(per_ex.mean(-1), clean_b, corr_b, components=components, layers=layers,
                                  positions=positions, metric=metric, direction=direction, method="activation",
                                  token_labels=token_labels, model_name=model_name, **keep)


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
    if component != "ssm_state":
        return evaluate(model, base, data, [Patch((Site(component, layer, (int(pos),)),), source)]).mean(metric)
    with torch.no_grad():
        _, cache = model.run_with_cache(source, names_filter=[nm], ssm_state_positions=[pos])
    hook = (nm, lambda act, hook: set_at(act, [0], cache[nm][:, :1]))
    return evaluate(model, base, data, hooks=[hook], ssm_state_positions=[pos]).mean(metric)


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
    sites = []
    for c, layer, pos in cells:
        check_components([c])
        if c == "ssm_state":
            raise UserError(
                "patch_cells does not patch ssm_state (states re-run the scan); use activation_patching"
            )
        if hook_name(model, c, layer) is None:
            raise UserError(f"model has no component {c!r} at layer {layer}")
        sites.append(Site(c, layer, None if pos == "all" else (int(pos),)))
    return evaluate(model, base, data, [Patch(tuple(sites), source)]).mean(metric)
