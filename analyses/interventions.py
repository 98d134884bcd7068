"""Interventions as objects over one primitive, :func:`set_at`.

An intervention says *where* (a :class:`Site`: component, layer, positions) and *what value*:

* :class:`Patch`: the value the site takes on other tokens (activation patching's cell; the
  paper's **substitution** is a patch of ``conv_act``, the post-conv hidden states);
* :class:`Zero`: 0 (the paper's **blocking** is ``B_j := 0``: token j writes nothing into the
  state, its decay is kept; :func:`block_writes`; a **state-write knockout** is ``dt_j := 0``:
  no decay and no write, :func:`knock_out_writes`);
* :class:`Mean`: the site's mean over a reference batch and all positions;
* :class:`ConvIdentity`: the conv output := its input (no mixing across positions);
* :class:`AllOnesConv`: the conv output := the conv of its input with an all-ones kernel and
  zero bias (the paper's symmetric fusion, applied to a trained model without copying it).

``intervention.hooks(model, tokens)`` returns TransformerLens ``(hook name, fn)`` pairs for a run
on ``tokens``; :func:`analyses.evaluation.evaluate` runs them. Hook names always come from
:func:`analyses.components.hook_name`.

Tables of interventions are lists: :func:`ablation_set` (path ablations) and
:func:`paper_interventions` (blocking, substitution, all-ones conv) on clean/corrupted data;
:func:`run_interventions` evaluates a list and tabulates the outcome.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from achilles_interp.errors import UserError
from achilles_interp.reference_ops import causal_conv1d_ref

from .components import check_layers, conv_input, hook_name, is_mamba
from .evaluation import evaluate
from .metrics import PatchingData

Positions = Union[None, Sequence[int], torch.Tensor]


def set_at(act: torch.Tensor, positions: Positions, values: torch.Tensor,
           rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A copy of ``act [batch, pos, ...]`` with ``act[:, positions] = values`` (``positions`` a
    list, or None = every position), or, given ``rows``, ``act[rows, positions] = values`` (two
    index tensors of one length): the one place an activation is overwritten."""
    out = act.clone()
    if rows is not None:
        out[rows, positions] = values.to(out.dtype)
    elif positions is None:
        out[:] = values.to(out.dtype)
    else:
        out[:, list(positions)] = values.to(out.dtype)
    return out


@dataclass(frozen=True)
class Site:
    """A component at one layer, at ``positions`` (None: every position)."""

    component: str
    layer: int
    positions: Optional[tuple] = None

    def name(self, model) -> str:
        nm = hook_name(model, self.component, self.layer)
        if nm is None:
            raise UserError(f"the model has no component {self.component!r} at layer {self.layer}")
        if nm.endswith("hook_ssm_state"):
            raise UserError("ssm_state sites re-run the scan: patch them with analyses.patching.activation_patching")
        return nm


def _sites(component: str, model, layers, positions=None) -> tuple:
    pos = None if positions is None else tuple(int(p) for p in positions)
    return tuple(Site(component, layer, pos) for layer in check_layers(model, layers))


def _cache(model, tokens: torch.Tensor, names: Sequence[str]) -> dict:
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=list(set(names)))
    return cache


def _hooks_from_run(model, sites, run_tokens: torch.Tensor, value) -> list:
    """Hooks setting each site to ``value(its activation on run_tokens, site)``: one cached run
    for every site."""
    names = [s.name(model) for s in sites]
    cache = _cache(model, run_tokens, names)
    return [(nm, lambda act, hook, v=value(cache[nm], s), p=s.positions: set_at(act, p, v))
            for s, nm in zip(sites, names)]


class Intervention:
    """Base class: ``label`` and ``hooks(model, tokens) -> [(hook name, fn)]``."""

    label: str = "intervention"

    def hooks(self, model, tokens: torch.Tensor) -> list:
        raise NotImplementedError


@dataclass
class Patch(Intervention):
    """Every site := its value on ``source`` tokens (same shape as the run's tokens, or a batch
    that the run's tokens are stacked copies of)."""

    sites: tuple
    source: torch.Tensor
    label: str = "patch"

    def hooks(self, model, tokens):
        reps = tokens.shape[0] // self.source.shape[0]

        def value(cached, site):
            v = cached.repeat(reps, *([1] * (cached.dim() - 1)))
            return v if site.positions is None else v[:, list(site.positions)]

        return _hooks_from_run(model, self.sites, self.source, value)


@dataclass
class Zero(Intervention):
    sites: tuple
    label: str = "zero"

    def hooks(self, model, tokens):
        return [(s.name(model), lambda act, hook, p=s.positions: set_at(act, p, torch.zeros(())))
                for s in self.sites]


@dataclass
class Mean(Intervention):
    """Every site := its mean over (batch, positions) on ``reference`` tokens."""

    sites: tuple
    reference: torch.Tensor
    label: str = "mean"

    def hooks(self, model, tokens):
        return _hooks_from_run(model, self.sites, self.reference, lambda cached, site: cached.mean((0, 1)))


@dataclass
class _ConvReplacement(Intervention):
    """conv_out := f(conv input) in the same run (the input saved at its own hook first)."""

    layers: Optional[Sequence[int]] = None
    label: str = "conv replacement"

    def replace(self, model, layer: int, pre: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def hooks(self, model, tokens):
        if not is_mamba(model):
            raise UserError(f"{self.label} needs a Mamba model")
        out = []
        for layer in check_layers(model, self.layers):
            store = {}
            pre = hook_name(model, conv_input(model), layer)

            def save(act, hook, store=store):
                store["pre"] = act

            def replace(act, hook, store=store, layer=layer):
                return set_at(act, None, self.replace(model, layer, store["pre"]))

            out += [(pre, save), (Site("conv_out", layer).name(model), replace)]
        return out


@dataclass
class ConvIdentity(_ConvReplacement):
    """conv_out := the conv's input: a bypass with no mixing across positions."""

    label: str = "conv := identity"

    def replace(self, model, layer, pre):
        return pre


@dataclass
class AllOnesConv(_ConvReplacement):
    """conv_out := causal conv of the conv input with an all-ones kernel and zero bias: the same
    function as the model copy :func:`all_ones_conv` makes, without copying it."""

    label: str = "conv kernel := all ones"

    def replace(self, model, layer, pre):
        conv = model.blocks[layer].mixer.conv1d
        ones = torch.ones_like(conv.weight)
        return causal_conv1d_ref(pre, ones, None)


def block_writes(model, positions: Sequence[int], layers=None) -> Zero:
    """The paper's blocking: ``B_j := 0`` at ``positions`` (their writes into the state vanish, the
    decay exp(dt_j A) is kept): column j of S = Mask∘(C Bᵀ) is removed."""
    if not list(positions):
        raise UserError("blocking needs at least one source position")
    return Zero(_sites("B", model, layers, positions), label=f"block writes of positions {list(positions)}")


def knock_out_writes(model, positions: Sequence[int], layers=None) -> Zero:
    """``dt_j := 0`` at ``positions``: h_j = h_{j-1} (no decay, no write): those tokens never enter
    the state."""
    return Zero(_sites("dt", model, layers, positions), label=f"state writes knocked out at {list(positions)}")


def substitute_conv(model, other_tokens: torch.Tensor, positions: Sequence[int], layers=None) -> Patch:
    """The paper's substitution: the post-conv hidden states (``conv_act``) at ``positions`` taken
    from the run on ``other_tokens``."""
    return Patch(_sites("conv_act", model, layers, positions), other_tokens,
                 label=f"post-conv states at {list(positions)} from the other input")


def ablation_set(model, data: PatchingData, layers=None) -> List[Intervention]:
    """The path ablations, on the clean batch: conv mean / identity, frozen SSM input (u from the
    corrupted run), state writes knocked out where clean and corrupted differ, gate mean."""
    clean, corr = data.clean_tokens, data.corrupted_tokens
    answer = data.single_answer_pos()
    knock = [p for p in data.diff_positions if p != answer] or data.diff_positions
    out = [
        Mean(_sites("conv_out", model, layers), clean, label="conv := mean"),
        ConvIdentity(layers),
        Patch(_sites("conv_act", model, layers), corr, label="u := corrupted (frozen SSM input)"),
        Mean(_sites("gate", model, layers), clean, label="gate := mean"),
    ]
    if knock:
        out.insert(3, knock_out_writes(model, knock, layers))
    return out


@dataclass
class InterventionResult:
    """One intervention's outcome on the clean batch: ``accuracy``, ``logit_diff`` (clean minus
    corrupted label), ``agreement`` (fraction of predictions unchanged by it) and, for a
    substitution, ``follows_other`` (fraction equal to the prediction on the other input)."""

    label: str
    accuracy: float
    logit_diff: float
    agreement: float
    follows_other: Optional[float] = None

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def run_interventions(model, data: PatchingData, interventions: Sequence[Intervention],
                      other: Optional[torch.Tensor] = None) -> List[InterventionResult]:
    """Evaluate each intervention on the clean batch against the unpatched run (first row:
    ``none``). ``other``: the tokens substitutions draw from, for ``follows_other``."""
    base = evaluate(model, data.clean_tokens, data)
    pred0 = base.predictions()
    other_pred = evaluate(model, other, data).predictions() if other is not None else None
    rows = [InterventionResult("none", base.accuracy(), base.mean("logit_diff"), 1.0)]
    for iv in interventions:
        out = evaluate(model, data.clean_tokens, data, [iv])
        pred = out.predictions()
        follows = None
        if other_pred is not None and isinstance(iv, Patch) and iv.source is other:
            follows = float((pred == other_pred).float().mean())
        rows.append(InterventionResult(iv.label, out.accuracy(), out.mean("logit_diff"),
                                       float((pred == pred0).float().mean()), follows))
    return rows


def paper_interventions(model, data: PatchingData) -> List[Intervention]:
    """The paper's three interventions on ``data``: blocking every position before the first one
    where clean and corrupted differ (the context the answer must be retrieved from),
    substituting the post-conv states of the changed positions from the corrupted input, and the
    all-ones conv kernel (the last two need a conv)."""
    first = min(data.diff_positions) if data.diff_positions else data.seq_len
    out: List[Intervention] = []
    if first > 0:
        out.append(block_writes(model, list(range(first))))
    if all(b.mixer.conv1d is not None for b in model.blocks):
        if data.diff_positions:
            out.append(substitute_conv(model, data.corrupted_tokens, data.diff_positions))
        out.append(AllOnesConv())
    return out


def all_ones_conv(model):
    """A deep copy of ``model`` with every conv1d weight set to 1 and conv bias to 0."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for block in m.blocks:
            conv = block.mixer.conv1d
            if conv is None:
                continue
            conv.weight.fill_(1.0)
            if conv.bias is not None:
                conv.bias.zero_()
    return m


def conv_tap_cosine(models) -> torch.Tensor:
    """Cosine similarity between conv taps: ``[n_models, n_layers, d_conv, d_conv]``; entry
    (k, k') compares tap k and tap k' as vectors over channels (tap d_conv-1 multiplies the
    current token). ``models``: one model or a list of models / checkpoint directories (e.g.
    checkpoints over training)."""
    if isinstance(models, torch.nn.Module):
        models = [models]
    out = []
    for m in models:
        if not isinstance(m, torch.nn.Module):  # a checkpoint directory
            from achilles_interp.zoo import load_model

            m = load_model(m, backend="torch")
        per_layer = []
        for block in m.blocks:
            if block.mixer.conv1d is None:
                raise UserError("model has no conv (conv_mode='none')")
            taps = F.normalize(block.mixer.conv1d.weight.detach()[:, 0, :].T.float(), dim=1, eps=1e-12)  # [K, C]
            per_layer.append(taps @ taps.T)
        out.append(torch.stack(per_layer))
    return torch.stack(out)


__all__ = ["set_at", "Site", "Intervention", "Patch", "Zero", "Mean", "ConvIdentity", "AllOnesConv",
           "block_writes", "knock_out_writes", "substitute_conv", "ablation_set", "paper_interventions",
           "InterventionResult", "run_interventions", "all_ones_conv", "conv_tap_cosine"]
