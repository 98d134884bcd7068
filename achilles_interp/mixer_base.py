"""What the Mamba-1 and Mamba-2 hooked mixers share: the hook points (and what counts as a hook),
the conv stage with the paper's variants, and the SSM-state hook whose edits propagate through
the recurrence. The arithmetic comes from the ops layer (:mod:`achilles_interp.ops`) that the
model passes in."""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformer_lens.hook_points import HookPoint as _TLHookPoint

from .config import MambaConfig
from .errors import UserError
from .nnsight_support import waiting_on
from .ops import TORCH_OPS, TorchOps
from .reference_ops import StatePositions, accum_dtype, conv_state_from, normalize_positions

# (t0, t1, h0=None, positions=None, inject=None) -> (y [batch, t1-t0, ...], states or None, last)
ScanFn = Callable[..., tuple]
# (h [batch, *state], t) -> y_t [batch, ...]
EmitFn = Callable[[torch.Tensor, int], torch.Tensor]
# h [batch, *state] -> (y_t [batch, ...], h' [batch, *state])
StepFn = Callable[[torch.Tensor], tuple]


def module_hooked(module: nn.Module) -> bool:
    """Whether anything observes ``module`` running: a TransformerLens hook, a plain PyTorch forward,
    forward-pre or backward hook, or an nnsight trace that wants it. (Global module hooks, as
    profilers install, do not count.)"""
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks) or waiting_on(module)


class HookPoint(_TLHookPoint):
    """TransformerLens ``HookPoint`` whose hook functions must keep the activation's shape: a hook
    that returns a tensor of another shape raises a :class:`UserError` naming the hook."""

    def add_hook(self, hook, dir="fwd", *args, **kwargs):
        return super().add_hook(_ShapeChecked(hook), dir, *args, **kwargs)


class _ShapeChecked:
    """A hook function wrapped to check the shape of what it returns."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, tensor, hook):
        out = self.fn(tensor, hook=hook)
        if isinstance(out, torch.Tensor) and isinstance(tensor, torch.Tensor) and out.shape != tensor.shape:
            raise UserError(f"the hook function {_name(self.fn)} on {hook.name} returned a tensor of shape "
                            f"{list(out.shape)}; it must return None or a tensor of the activation's shape "
                            f"{list(tensor.shape)}")
        return out

    def __repr__(self) -> str:  # TransformerLens names the PyTorch hook after it (list_hooks)
        return _name(self.fn)


def _name(fn) -> str:
    inner = getattr(fn, "func", None)     # a functools.partial: its repr may print large tensors
    return f"partial({inner!r},...)" if inner is not None else repr(fn)


class HookedMixerBase(nn.Module):
    """Common machinery. Subclasses define the projections and
    ``forward(hidden, state_positions=None, ops=TORCH_OPS)``."""

    HOOK_NAMES: tuple = ()

    def __init__(self, cfg: MambaConfig, layer_idx: int):
        super().__init__()
        self.cfg = cfg
        self.layer_idx = layer_idx
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

    def conv_stage(self, pre: torch.Tensor, ops: TorchOps = TORCH_OPS, cache=None) -> torch.Tensor:
        """pre ``[batch, pos, channels]`` -> SSM input ``[batch, pos, channels]``.

        Fires ``hook_conv_out`` (conv output before the activation; the identity when
        ``conv_mode="none"``) and ``hook_conv_act`` (SiLU(conv), plus ``pre`` when
        ``conv_mode="bypass"``). With ``cache`` (a :class:`~achilles_interp.generation.LayerState`)
        a first call (a prompt) also keeps the conv state, and later calls (one token each) run
        the conv one step from it.
        """
        if self.conv1d is None:
            conv_out = pre
        elif stepping(cache):
            out, cache.conv = ops.conv_step(pre[:, 0], cache.conv, self.conv1d.weight, self.conv1d.bias)
            conv_out = out[:, None]
        else:
            conv_out = ops.conv(pre, self.conv1d.weight, self.conv1d.bias)
            if cache is not None:
                cache.conv = conv_state_from(pre, self.cfg.d_conv)
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

    # ---- hooks ----------------------------------------------------------------------------
    def any_hooks(self) -> bool:
        """True if anything observes a module inside this mixer (:func:`module_hooked`): its hook
        points, and the projections a fused kernel would not call either."""
        return any(module_hooked(m) for m in self.modules() if m is not self)

    def state_positions(self, state_positions: StatePositions, L: int, device) -> Optional[torch.Tensor]:
        """The positions whose states this forward computes: those asked for, else all of them when
        anything observes ``hook_ssm_state`` (decided at the scan, after the earlier hooks ran)."""
        if state_positions is None:
            return torch.arange(L, device=device) if module_hooked(self.hook_ssm_state) else None
        return normalize_positions(state_positions, L, device)

    def scan_with_state_hook(self, scan: ScanFn, emit: EmitFn, L: int, state_positions: StatePositions,
                             device: torch.device) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Run the scan, fire ``hook_ssm_state`` and propagate any edits through the recurrence.

        Args:
            scan: ``(t0, t1, h0=None, positions=None, inject=None) -> (y, states, last)`` over tokens
                t0..t1-1 started from state h0 (an ops-layer scan on the mixer's inputs); ``inject``
                is None or ``(positions, delta)``, an additive state edit.
            emit: ``(h, t) -> y_t``: the output at token t for a given state (C_t . h + D u_t).
            L: sequence length; state_positions: None, "all" or positions (see :meth:`state_positions`).
        Returns:
            y ``[batch, pos, ...]`` and the state after the last token, edits included (None where a
            kernel does not return it), from which generation carries on.

        Edit semantics, per batch row: positions whose state the hook changed (compared
        element-wise with what it received) take the hook's value as h_t; y_t and every later
        state are recomputed from it; positions the hook left alone are recomputed through the
        recurrence (so one row may be patched at t1 and another at t2 in the same forward). Because the
        recurrence is rerun from each edited position, an edit at t reaches t+1, t+2, ...
        With a backward hook attached, the hooked states also enter the output through a
        zero-valued additive edit (``h - h.detach()``), so the gradient that hook sees is the total
        derivative dL/dh_t through the whole recurrence, as attribution patching needs.
        """
        positions = self.state_positions(state_positions, L, device)
        if positions is None:
            y, _, last = scan(0, L)
            return y, last
        y, states, last = scan(0, L, positions=positions)
        hp = self.hook_ssm_state
        backward = bool(hp._backward_hooks or hp._backward_pre_hooks)
        if backward:
            # The output is recomputed below through a zero-valued edit; hand the hooks a
            # detached copy so parameters do not receive a second gradient via the states.
            states = states.detach().requires_grad_(True)
        version = states._version
        edited = hp(states)
        if backward:
            # same value as y; its graph runs through the hooked states (and, once, the inputs)
            y, _, last = scan(0, L, inject=(positions, edited - edited.detach()))
        if edited is states and states._version == version:
            return y, last  # the hooks only read the states (caching): nothing to propagate
        # Something was edited. Compare with the states as computed (recomputed if the hook
        # wrote into the tensor it was given) to find the edited positions.
        original = states if states._version == version else scan(0, L, positions=positions)[1]
        changed = (edited.detach() != original.detach()).flatten(2).any(-1)          # [batch, P]
        pos = positions.tolist()
        cols = sorted(changed.any(0).nonzero().flatten().tolist(), key=pos.__getitem__)  # in time order
        if not cols:
            return y, last
        parts = [y[:, : pos[cols[0]]]]
        h_prop = original[:, cols[0]]        # the state the recurrence brings to the first edit
        for k, i in enumerate(cols):
            t = pos[i]
            row_edited = changed[:, i].reshape(-1, *([1] * (h_prop.dim() - 1)))
            h_t = torch.where(row_edited, edited[:, i].to(h_prop.dtype), h_prop)   # edits are per row
            parts.append(emit(h_t, t).unsqueeze(1))
            if k + 1 < len(cols):
                nxt = pos[cols[k + 1]]
                y_seg, _, h_prop = scan(t + 1, nxt + 1, h_t)   # run through nxt for its state
                if nxt > t + 1:
                    parts.append(y_seg[:, :-1])
            elif t + 1 < L:
                y_seg, _, last = scan(t + 1, L, h_t)
                parts.append(y_seg)
            else:
                last = h_t
        return torch.cat(parts, dim=1), last

    def step_with_state_hook(self, step: StepFn, emit: EmitFn, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One token of the recurrence from state ``h``, firing ``hook_ssm_state`` (``[batch, 1, *state]``)
        when anything observes it; an edit becomes the state carried on, and y is recomputed from it
        (so an edit during generation propagates exactly as in :meth:`scan_with_state_hook`).

        Args:
            step: ``h -> (y_t [batch, ...], h')`` (an ops-layer step on the mixer's inputs).
            emit: ``(h, 0) -> y_t`` as in :meth:`scan_with_state_hook`, on the one-token inputs.
        Returns:
            (y_t ``[batch, ...]``, the new state).
        """
        y, h_new = step(h)
        if not module_hooked(self.hook_ssm_state):
            return y, h_new
        states = h_new[:, None]
        version = states._version
        edited = self.hook_ssm_state(states)
        if edited is states and states._version == version:
            return y, h_new
        h_new = edited[:, 0].to(h_new.dtype)
        return emit(h_new, 0), h_new

    def ssm_with_state_hook(self, scan: ScanFn, step: StepFn, emit: EmitFn, L: int, state_positions: StatePositions,
                            device: torch.device, cache) -> torch.Tensor:
        """The SSM part of a mixer: one recurrent step from the carried state when ``cache`` holds
        one (:func:`stepping`; y ``[batch, 1, ...]``), else the scan over all ``L`` tokens (filling
        ``cache.ssm`` with the last state when a cache is given); both through the state hook."""
        if stepping(cache):
            y, cache.ssm = self.step_with_state_hook(step, emit, cache.ssm)
            return y[:, None]
        y, last = self.scan_with_state_hook(scan, emit, L, state_positions, device)
        if cache is not None:
            cache.ssm = last
        return y


def stepping(cache) -> bool:
    """Whether a mixer given ``cache`` (a :class:`~achilles_interp.generation.LayerState` or None)
    runs one token from carried states (True) or a whole sequence (False; a prompt fills the cache)."""
    return cache is not None and cache.ssm is not None


def rms_norm(x: torch.Tensor, weight: Optional[torch.Tensor], eps: float,
             group_size: Optional[int] = None) -> torch.Tensor:
    """RMSNorm over the last dim (or over groups of ``group_size`` channels), fp32 math.

    x ``[..., d]``, weight ``[d]`` (or None: no weight, as Falcon-Mamba's dt/B/C norms) -> ``[..., d]``
    in x's dtype.
    """
    xf = x.to(accum_dtype(x))
    d = x.shape[-1]
    w = None if weight is None else weight.to(xf.dtype)
    if group_size is not None and group_size != d:
        normed = F.rms_norm(xf.reshape(*x.shape[:-1], d // group_size, group_size), (group_size,), eps=eps)
        normed = normed.reshape(x.shape)
        return (normed if w is None else normed * w).to(x.dtype)
    return F.rms_norm(xf, (d,), w, eps).to(x.dtype)
