"""Named components of a block -> TransformerLens hook names, for HookedMamba and the Transformer.

A *component* is a short name (``"conv_act"``) that maps to one hook per layer
(``"blocks.{layer}.mixer.hook_conv_act"``). Analyses take component names; models that lack a
component (a Transformer has no conv) simply get NaN for it.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from achilles_interp.errors import UserError

# Mamba (Mamba-1 and Mamba-2) components: name -> hook template
MAMBA_COMPONENTS: Dict[str, str] = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "mixer_in": "blocks.{layer}.mixer.hook_in",
    "x": "blocks.{layer}.mixer.hook_x",
    "xBC": "blocks.{layer}.mixer.hook_xBC",  # Mamba-2 only: the conv input (x, B, C together)
    "conv_out": "blocks.{layer}.mixer.hook_conv_out",
    "conv_act": "blocks.{layer}.mixer.hook_conv_act",
    "dt": "blocks.{layer}.mixer.hook_dt",
    "B": "blocks.{layer}.mixer.hook_B",
    "C": "blocks.{layer}.mixer.hook_C",
    "ssm_state": "blocks.{layer}.mixer.hook_ssm_state",
    "ssm_out": "blocks.{layer}.mixer.hook_ssm_out",
    "gate": "blocks.{layer}.mixer.hook_gate",
    "gated": "blocks.{layer}.mixer.hook_gated",
    "mixer_out": "blocks.{layer}.mixer.hook_out",
    "resid_post": "blocks.{layer}.hook_resid_post",
}

# Transformer baseline components (HookedTransformerBaseline / TransformerLens names)
TRANSFORMER_COMPONENTS: Dict[str, str] = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mixer_out": "blocks.{layer}.hook_attn_out",  # the token mixer of a Transformer is attention
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "resid_post": "blocks.{layer}.hook_resid_post",
}

DEFAULT_COMPONENTS: List[str] = [
    "resid_pre",
    "conv_out",
    "conv_act",
    "ssm_state",
    "ssm_out",
    "gate",
    "mixer_out",
]
# the three inputs of the mixer output at position i (see analyses.verdict)
PATH_COMPONENTS: List[str] = ["conv_act", "ssm_state", "gate"]


def n_layers(model) -> int:
    return int(model.cfg.n_layers)


def is_mamba(model) -> bool:
    return "blocks.0.mixer.hook_conv_out" in model.hook_dict


def component_map(model) -> Dict[str, str]:
    return MAMBA_COMPONENTS if is_mamba(model) else TRANSFORMER_COMPONENTS


def all_component_names() -> List[str]:
    return sorted(set(MAMBA_COMPONENTS) | set(TRANSFORMER_COMPONENTS))


def check_components(components: Sequence[str]) -> List[str]:
    """Validate component names; raise ValueError naming the allowed ones."""
    if isinstance(components, str):
        components = [components]
    allowed = all_component_names()
    bad = [c for c in components if c not in allowed]
    if bad or not components:
        raise UserError(f"unknown component(s) {bad or components!r}; allowed: {', '.join(allowed)}")
    return list(components)


def check_layers(model, layers=None) -> List[int]:
    """``layers`` (default: all) as a list of valid layer indices of ``model``; ValueError otherwise."""
    L = n_layers(model)
    layers = list(range(L)) if layers is None else [int(x) for x in layers]
    if not layers or any(not 0 <= x < L for x in layers):
        raise UserError(f"layers must be a non-empty list of ints in [0, {L}), got {layers!r}")
    return layers


def conv_input(model) -> str:
    """The component that enters the conv: ``x`` (Mamba-1) or ``xBC`` (Mamba-2)."""
    return "x" if model.cfg.mixer == "mamba1" else "xBC"


def component_hooks(model, components: Sequence[str], layers: Sequence[int]) -> Dict[tuple, Optional[str]]:
    """``{(component, layer): hook name}`` for every pair, None where the model lacks the component."""
    return {(c, layer): hook_name(model, c, layer) for c in components for layer in layers}


def present_hooks(names: Dict[tuple, Optional[str]]) -> List[str]:
    """The hook names of :func:`component_hooks` that exist, each once, in order."""
    return list(dict.fromkeys(nm for nm in names.values() if nm is not None))


def hook_name(model, component: str, layer: int) -> str | None:
    """Hook name of ``component`` at ``layer`` in ``model``, or None if the model lacks it."""
    template = component_map(model).get(component)
    if template is None:
        return None
    name = template.format(layer=layer)
    return name if name in model.hook_dict else None
