"""Hooked Mamba-1 mixer (selective SSM, S6), parameter-compatible with ``mamba_ssm.Mamba``.

    x, z   = in_proj(h).chunk(2)                 [batch, pos, d_inner] each
    u      = SiLU(conv1d(x))                     causal depthwise conv, width d_conv
    dt, B, C = split(x_proj(u))                   dt_rank, d_state, d_state
    dt     = softplus(dt_proj(dt))                [batch, pos, d_inner]
    h_t    = exp(dt_t A) h_{t-1} + dt_t B_t u_t   A = -exp(A_log)  [d_inner, d_state]
    y_t    = C_t . h_t + D u_t
    out    = out_proj(y * SiLU(z))

Falcon-Mamba (``cfg.bcdt_norm``) normalises the low-rank dt, B and C (weightless RMSNorm) between
``x_proj`` and their use.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import MambaConfig
from .mixer_base import HookedMixerBase, HookPoint, rms_norm
from .ops import TORCH_OPS, TorchOps
from .reference_ops import StatePositions, accum_dtype


def init_dt_bias(n: int, cfg: MambaConfig) -> torch.Tensor:
    """Inverse-softplus of dt ~ LogUniform[dt_min, dt_max] (floored), as in mamba_ssm."""
    dt = torch.exp(torch.rand(n) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min))
    dt = dt.clamp(min=cfg.dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))


class HookedMamba1Mixer(HookedMixerBase):
    """Mamba-1 mixer. Every intermediate is a HookPoint; see the module docstring for the math.

    Hooks (all ``[batch, pos, ...]``): ``hook_in`` [d_model], ``hook_x`` / ``hook_gate``
    [d_inner] (pre-conv x, pre-SiLU z), ``hook_conv_out`` / ``hook_conv_act`` [d_inner],
    ``hook_dt`` [d_inner], ``hook_B`` / ``hook_C`` [d_state], ``hook_ssm_state``
    [d_inner, d_state] (opt-in), ``hook_ssm_out`` [d_inner] (y incl. D u, before gating),
    ``hook_gated`` [d_inner], ``hook_out`` [d_model].

    Falcon-Mamba (``cfg.bcdt_norm``) adds ``hook_dt_pre_norm`` / ``hook_dt_norm`` [dt_rank] (the
    low-rank dt before / after its RMSNorm, the input of ``dt_proj``) and ``hook_B_pre_norm`` /
    ``hook_C_pre_norm`` [d_state] (x_proj's B and C before their RMSNorms); ``hook_B`` / ``hook_C``
    stay what the scan uses (the normed B and C), as in every other family.
    """

    HOOK_NAMES = ("hook_in", "hook_x", "hook_gate", "hook_conv_out", "hook_conv_act", "hook_dt",
                  "hook_B", "hook_C", "hook_ssm_state", "hook_ssm_out", "hook_gated", "hook_out")
    NORM_HOOK_NAMES = ("hook_dt_pre_norm", "hook_dt_norm", "hook_B_pre_norm", "hook_C_pre_norm")

    def __init__(self, cfg: MambaConfig, layer_idx: int):
        super().__init__(cfg, layer_idx)
        if cfg.bcdt_norm:
            for name in self.NORM_HOOK_NAMES:
                setattr(self, name, HookPoint())
        d_inner, n, r = cfg.d_inner, cfg.d_state, cfg.resolved_dt_rank
        self.in_proj = nn.Linear(cfg.d_model, 2 * d_inner, bias=cfg.bias)
        self._make_conv(d_inner)
        self.x_proj = nn.Linear(d_inner, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, d_inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, cfg.d_model, bias=cfg.bias)
        with torch.no_grad():
            std = r ** -0.5
            self.dt_proj.weight.uniform_(-std, std)
            self.dt_proj.bias.copy_(init_dt_bias(d_inner, cfg))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

    def forward(self, hidden: torch.Tensor, state_positions: StatePositions = None,
                ops: TorchOps = TORCH_OPS, cache=None) -> torch.Tensor:
        """hidden ``[batch, pos, d_model]`` (normed residual) -> ``[batch, pos, d_model]``; ``ops``
        (:mod:`achilles_interp.ops`) computes the conv and the scan, or the whole mixer fused.

        ``cache`` (a :class:`~achilles_interp.generation.LayerState`, for generation): empty, the
        sequence is a prompt and the conv and SSM states after it are kept; filled, ``hidden`` is one
        token ``[batch, 1, d_model]`` and the recurrence takes one step from the kept states."""
        if cache is None and ops.can_fuse(self, state_positions, hidden.shape[1]):
            return ops.fused(self, hidden)
        cfg = self.cfg
        batch, L, _ = hidden.shape
        n, r = cfg.d_state, cfg.resolved_dt_rank
        h = self.hook_in(hidden)
        x, z = self.in_proj(h).chunk(2, dim=-1)
        x = self.hook_x(x)
        z = self.hook_gate(z)
        u = self.conv_stage(x, ops, cache)
        dt_low, B, C = torch.split(self.x_proj(u), [r, n, n], dim=-1)
        if cfg.bcdt_norm:
            eps = cfg.bcdt_norm_eps
            dt_low = self.hook_dt_norm(rms_norm(self.hook_dt_pre_norm(dt_low), None, eps))
            B = rms_norm(self.hook_B_pre_norm(B), None, eps)
            C = rms_norm(self.hook_C_pre_norm(C), None, eps)
        dt = self.hook_dt(F.softplus(self.dt_proj(dt_low)))
        B = self.hook_B(B)
        C = self.hook_C(C)
        A = self.A
        D = self.D.to(accum_dtype(u))

        def scan(t0: int, t1: int, h0: Optional[torch.Tensor] = None, positions=None, inject=None):
            s = slice(t0, t1)
            return ops.selective_scan(u[:, s], dt[:, s], A, B[:, s], C[:, s], D, h0, positions, inject)

        def emit(h_t: torch.Tensor, t: int) -> torch.Tensor:
            f = accum_dtype(u)
            y_t = torch.einsum("bdn,bn->bd", h_t.to(f), C[:, t].to(f)) + D.to(f) * u[:, t].to(f)
            return y_t.to(u.dtype)

        y = self.ssm_with_state_hook(
            scan, lambda h0: ops.selective_step(h0, u[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D), emit, L,
            state_positions, hidden.device, cache)
        y = self.hook_ssm_out(y)
        gated = self.hook_gated(y * F.silu(z))
        return self.hook_out(self.out_proj(gated))
