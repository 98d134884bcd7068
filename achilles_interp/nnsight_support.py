"""Tracing a HookedMamba with nnsight (>= 0.4; tested with 0.8).

Every intermediate of a HookedMamba is a TransformerLens ``HookPoint``: an ``nn.Module`` that
really runs in the forward pass (an identity whose output *is* the activation). nnsight therefore
sees the conv, the scan and the gate as modules whose ``.output`` can be saved and set::

    from achilles_interp.nnsight_support import trace, conv, scan, gate

    nn_model = trace(model)                        # nnsight.NNsight(model)
    with nn_model.trace(tokens):
        u = conv(nn_model, 0).output.save()        # SSM input u = SiLU(conv)   [b, L, d_inner]
        z = gate(nn_model, 1).output.save()        # gate pre-activation z
        scan(nn_model, 1).output[:, -1] = 0        # zero the scan output y at the last position
        logits = nn_model.output.save()

nnsight 0.8 runs the trace body alongside the model, so touch modules **in the order they run**
(layer by layer; inside a Mamba-1 mixer: hook_x, hook_gate, hook_conv_out, hook_conv_act, hook_dt,
hook_B, hook_C, hook_ssm_state, hook_ssm_out, hook_gated, hook_out), else nnsight raises
``OutOfOrderError``.

Module paths (usable directly on the envoy): ``backbone.layers[i].mixer.hook_conv_out`` (conv
output, pre-activation), ``.hook_conv_act`` (u), ``.hook_ssm_out`` (scan output y incl. D u),
``.hook_ssm_state`` (states: at every position when the trace reads or sets it, or at the
``ssm_state_positions`` given to the trace), ``.hook_gate`` (z), ``.hook_gated``, ``.hook_out``.
"""

from __future__ import annotations

from .errors import UserError

# stage name -> HookPoint attribute of the mixer
STAGES = {
    "conv": "hook_conv_act",
    "conv_out": "hook_conv_out",
    "scan": "hook_ssm_out",
    "state": "hook_ssm_state",
    "gate": "hook_gate",
    "gated": "hook_gated",
    "mixer_out": "hook_out",
}


def waiting_on(module) -> bool:
    """Whether an nnsight trace running now wants ``module``'s input or output.

    nnsight (0.8) registers no PyTorch hook: it installs a controller as the module's ``forward``
    and runs the trace body alongside the model, the body parked on the next location it reads or
    writes. So a module is wanted when a worker is parked on one of its locations, or a
    ``tracer.cache()`` observes it. An nnsight whose internals differ from this is taken to want
    every module it instruments while a trace runs (safe: hooks fire, the fused path is skipped).
    """
    active = getattr(getattr(module.__dict__.get("forward"), "state", None), "active", None)
    if not callable(active):
        return False
    interleaver, _, locations = active()
    if interleaver is None:
        return False
    parked, observers = getattr(interleaver, "parked", None), getattr(interleaver, "observers", None)
    if not isinstance(parked, (set, frozenset, dict)) or not isinstance(observers, dict):
        return True
    return any(loc in parked or loc in observers for loc in locations)


def trace(model):
    """Wrap ``model`` (a HookedMamba or any nn.Module) in ``nnsight.NNsight``."""
    try:
        from nnsight import NNsight
    except ImportError as e:  # pragma: no cover - nnsight is a dependency
        raise ImportError("nnsight is not installed: pip install nnsight") from e
    return NNsight(model)


def stage(nn_model, layer: int, name: str):
    """The envoy of a mixer stage (``name`` in :data:`STAGES`) at ``layer``."""
    if name not in STAGES:
        raise UserError(f"stage must be one of {sorted(STAGES)}, got {name!r}")
    n_layers = len(nn_model.backbone.layers)
    if not 0 <= layer < n_layers:
        raise UserError(f"layer must be in [0, {n_layers}), got {layer}")
    return getattr(nn_model.backbone.layers[layer].mixer, STAGES[name])


def conv(nn_model, layer: int):
    """SSM input u = SiLU(conv(x)) (``hook_conv_act``)."""
    return stage(nn_model, layer, "conv")


def scan(nn_model, layer: int):
    """Selective-scan output y = C h + D u, before gating (``hook_ssm_out``)."""
    return stage(nn_model, layer, "scan")


def gate(nn_model, layer: int):
    """Gate pre-activation z (``hook_gate``)."""
    return stage(nn_model, layer, "gate")
