"""What the Mamba-1 and Mamba-2 hooked mixers share: the conv stage (with the paper's variants),
backend dispatch, and the SSM-state hook whose edits propagate through the recurrence."""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformer_lens.hook_points import HookPoint

from .config import MambaConfig
from .kernels import cuda_ops
from .reference_ops import StatePositions, _normalize_positions, accum_dtype, causal_conv1d_ref

# (t0, t1, h0) -> (y [batch, t1-t0, ...], last state [batch, *state])
SegmentFn = Callable[[int, int, Optional[torch.Tensor]], tuple]
# (h [batch, *state], t) -> y_t [batch, ...]
EmitFn = Callable[[torch.Tensor, int], torch.Tensor]


class HookedMixerBase(nn.Module):
    """Common machinery. Subclasses define the projections and ``forward``.

    Attributes set by the owning model before each forward:
        backend: ``"torch"`` or ``"cuda"`` (already resolved from ``"auto"``).
    """

    HOOK_NAMES: tuple = ()

    def __init__(self, cfg: MambaConfig, layer_idx: int):
        super().__init__()
        self.cfg = cfg
        self.layer_idx = layer_idx
        self.backend = "torch"
        for name in self.HOOK_NAMES:
            setattr(self, name, HookPoint())

    # ---- conv stage ------------------------------------------------------------------------
    def _make_conv(self, channels: int) -> None:
        cfg = self.cfg
        if cfg.conv_mode == "none":
            self.conv1d = None
            return
        self.conv1d = nn.Conv1d(channels, channels, kernel_size=cfg.d_conv, groups=channels,
                                padding=cfg.d_conv - 1, bias=cfg.conv_bias)
        if cfg.conv_kernel == "ones":
            with torch.no_grad():
                self.conv1d.weight.fill_(1.0)
                if self.conv1d.bias is not None:
                    self.conv1d.bias.zero_()
            self.conv1d.weight.requires_grad_(False)
            if self.conv1d.bias is not None:
                self.conv1d.bias.requires_grad_(False)

    def conv_stage(self, pre: torch.Tensor) -> torch.Tensor:
        """pre ``[batch, pos, channels]`` -> SSM input ``[batch, pos, channels]``.

        Fires ``hook_conv_out`` (conv output before the activation; the identity when
        ``conv_mode="none"``) and ``hook_conv_act`` (SiLU(conv), plus ``pre`` when
        ``conv_mode="bypass"``).
        """
        if self.conv1d is None:
            conv_out = pre
        elif self.backend == "cuda":
            conv_out = cuda_ops.causal_conv1d_cuda(pre, self.conv1d.weight, self.conv1d.bias)
        else:
            conv_out = causal_conv1d_ref(pre, self.conv1d.weight, self.conv1d.bias)
        conv_out = self.hook_conv_out(conv_out)
        act = F.silu(conv_out)
        if self.cfg.conv_mode == "bypass":
            act = act + pre
        return self.hook_conv_act(act)

    @property
    def A(self) -> torch.Tensor:
        """A = -exp(A_log): ``[d_inner, d_state]`` (Mamba-1) or one scalar per head ``[nheads]``
        (Mamba-2); negative, fp32 (fp64 for fp64 models)."""
        return -torch.exp(self.A_log.to(accum_dtype(self.A_log)))

    def can_fuse(self, state_positions: StatePositions) -> bool:
        """The whole mixer may run as one fused kernel: GPU, no state asked for, the standard
        conv, and no hook anywhere in the mixer (nothing could fire inside the kernel)."""
        return (self.backend == "cuda" and state_positions is None and self.cfg.conv_mode == "standard"
                and not self.any_hooks())

    # ---- hooks ----------------------------------------------------------------------------
    def any_hooks(self) -> bool:
        """True if a forward or backward hook is attached to any hook point of this mixer."""
        return any(getattr(self, n).fwd_hooks or getattr(self, n).bwd_hooks for n in self.HOOK_NAMES)

    def resolve_state_positions(self, state_positions: StatePositions) -> StatePositions:
        """States are computed when asked for, or when someone hooks ``hook_ssm_state`` directly."""
        if state_positions is None and self.hook_ssm_state.fwd_hooks:
            return "all"
        return state_positions

    def scan_with_state_hook(
        self,
        scan_all: Callable[[Optional[torch.Tensor]], tuple],
        segment: SegmentFn,
        emit: EmitFn,
        L: int,
        state_positions: StatePositions,
        device: torch.device,
    ) -> torch.Tensor:
        """Run the scan, fire ``hook_ssm_state`` and propagate any edits through the recurrence.

        Args:
            scan_all: ``(positions, inject) -> (y, states or None)`` over the whole sequence;
                ``inject`` is None or ``(positions, delta)``, an additive state edit.
            segment: ``(t0, t1, h0) -> (y, last)`` for tokens t0..t1-1 started from state h0.
            emit: ``(h, t) -> y_t``: the output at token t for a given state (C_t . h + D u_t).
            L: sequence length; state_positions: None, "all" or a list of positions.
        Returns:
            y ``[batch, pos, ...]``.

        Edit semantics, per batch row: positions whose state the hook changed (compared
        element-wise with what it received) take the hook's value as h_t; y_t and every later
        state are recomputed from it; positions the hook left alone are recomputed through the
        recurrence (so one row may be patched at t1 and another at t2 in the same forward). Because the
        recurrence is rerun from each edited position, an edit at t reaches t+1, t+2, ...
        With a backward hook attached, the hooked states also enter the output through a
        zero-valued additive edit (``h - h.detach()``), so the gradient that hook sees is the total
        derivative dL/dh_t through the whole recurrence, as attribution patching needs.
        """
        positions = _normalize_positions(state_positions, L, device)
        if positions is None:
            return scan_all(None, None)[0]
        y, states = scan_all(positions, None)
        hp = self.hook_ssm_state
        if not (hp.fwd_hooks or hp.bwd_hooks):
            return y
        if hp.bwd_hooks:
            # The output is recomputed below through a zero-valued edit; hand the hooks a
            # detached copy so parameters do not receive a second gradient via the states.
            states = states.detach().requires_grad_(True)
        version = states._version
        edited = hp(states)
        if hp.bwd_hooks:
            # same value as y; its graph runs through the hooked states (and, once, the inputs)
            y = scan_all(None, (positions, edited - edited.detach()))[0]
        if edited is states and states._version == version:
            return y  # the hooks only read the states (caching): nothing to propagate
        # Something was edited. Compare with the states as computed (recomputed if the hook
        # wrote into the tensor it was given) to find the edited positions.
        original = states if states._version == version else scan_all(positions, None)[1]
        changed = (edited.detach() != original.detach()).flatten(2).any(-1)          # [batch, P]
        cols = changed.any(0).nonzero().flatten().tolist()
        if not cols:
            return y
        pos = positions.tolist()
        parts = [y[:, : pos[cols[0]]]]
        h_prop = original[:, cols[0]]        # the state the recurrence brings to the first edit
        for k, i in enumerate(cols):
            t = pos[i]
            row_edited = changed[:, i].reshape(-1, *([1] * (h_prop.dim() - 1)))
            h_t = torch.where(row_edited, edited[:, i].to(h_prop.dtype), h_prop)   # edits are per row
            parts.append(emit(h_t, t).unsqueeze(1))
            if k + 1 < len(cols):
                nxt = pos[cols[k + 1]]
                if nxt > t + 1:
                    y_seg, h_prop = segment(t + 1, nxt + 1, h_t)   # run through nxt for its state
                    parts.append(y_seg[:, :-1])
                else:
                    h_prop = segment(t + 1, nxt + 1, h_t)[1]
            elif t + 1 < L:
                parts.append(segment(t + 1, L, h_t)[0])
        return torch.cat(parts, dim=1)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             group_size: Optional[int] = None) -> torch.Tensor:
    """RMSNorm over the last dim (or over groups of ``group_size`` channels), fp32 math.

    x ``[..., d]``, weight ``[d]`` -> ``[..., d]`` in x's dtype.
    """
    xf = x.to(accum_dtype(x))
    d = x.shape[-1]
    if group_size is not None and group_size != d:
        normed = F.rms_norm(xf.reshape(*x.shape[:-1], d // group_size, group_size), (group_size,), eps=eps)
        return (normed.reshape(x.shape) * weight.to(xf.dtype)).to(x.dtype)
    return F.rms_norm(xf, (d,), weight.to(xf.dtype), eps).to(x.dtype)
