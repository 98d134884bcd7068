"""Hooked Mamba-2 mixer (SSD), parameter-compatible with ``mamba_ssm.Mamba2``.

    z, xBC, dt = split(in_proj(h))               [d_inner], [d_inner + 2 G N], [nheads]
    xBC    = SiLU(conv1d(xBC))                   one causal depthwise conv over x, B and C together
    x, B, C = split(xBC)                         x: [nheads, headdim]; B, C: [ngroups, d_state]
    dt     = clamp(softplus(dt + dt_bias))        [nheads]
    h_t    = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T  A = -exp(A_log), one scalar per head
    y_t    = h_t C_t + D x_t
    out    = out_proj(RMSNorm(y * SiLU(z)))       gated RMSNorm (norm_before_gate=False)
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import MambaConfig
from .mamba1 import init_dt_bias
from .mixer_base import HookedMixerBase, rms_norm
from .ops import TORCH_OPS, TorchOps
from .reference_ops import StatePositions, _expand_groups, accum_dtype


class GatedRMSNorm(nn.Module):
    """Holds ``norm.weight`` ``[d_inner]``; the math lives in :func:`rms_norm`."""

    def __init__(self, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))


class HookedMamba2Mixer(HookedMixerBase):
    """Mamba-2 mixer. Hooks (all ``[batch, pos, ...]``): ``hook_in`` [d_model],
    ``hook_gate`` [d_inner] (z, pre-SiLU), ``hook_xBC`` [conv_dim] (pre-conv),
    ``hook_conv_out`` / ``hook_conv_act`` [conv_dim], ``hook_x`` [d_inner] and ``hook_B`` /
    ``hook_C`` [ngroups, d_state] (post-conv splits), ``hook_dt`` [nheads],
    ``hook_ssm_state`` [nheads, headdim, d_state] (opt-in), ``hook_ssm_out`` [d_inner]
    (y incl. D x), ``hook_gated`` [d_inner], ``hook_norm_out`` [d_inner], ``hook_out`` [d_model].
    """

    HOOK_NAMES = ("hook_in", "hook_gate", "hook_xBC", "hook_conv_out", "hook_conv_act", "hook_x",
                  "hook_B", "hook_C", "hook_dt", "hook_ssm_state", "hook_ssm_out", "hook_gated",
                  "hook_norm_out", "hook_out")

    def __init__(self, cfg: MambaConfig, layer_idx: int):
        super().__init__(cfg, layer_idx)
        d_inner, H = cfg.d_inner, cfg.nheads
        self.in_proj = nn.Linear(cfg.d_model, 2 * d_inner + 2 * cfg.ngroups * cfg.d_state + H, bias=cfg.bias)
        self._make_conv(cfg.conv_dim)
        self.dt_bias = nn.Parameter(init_dt_bias(H, cfg))
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(H))
        self.norm = GatedRMSNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, cfg.d_model, bias=cfg.bias)
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True

    def _gated_norm(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        group = cfg.d_inner // cfg.ngroups
        if cfg.norm_before_gate:
            normed = self.hook_norm_out(rms_norm(y, self.norm.weight, cfg.norm_eps, group))
            return self.hook_gated(normed * F.silu(z))
        gated = self.hook_gated(y * F.silu(z))
        return self.hook_norm_out(rms_norm(gated, self.norm.weight, cfg.norm_eps, group))

    def forward(self, hidden: torch.Tensor, state_positions: StatePositions = None,
                ops: TorchOps = TORCH_OPS, cache=None) -> torch.Tensor:
        """hidden ``[batch, pos, d_model]`` (normed residual) -> ``[batch, pos, d_model]``; ``ops``
        (:mod:`achilles_interp.ops`) computes the conv and the scan, or the whole mixer fused.
        ``cache``: as :meth:`HookedMamba1Mixer.forward` (generation)."""
        cfg = self.cfg
        if cache is None and ops.can_fuse(self, state_positions, hidden.shape[1]):
            return ops.fused(self, hidden)
        batch, L, _ = hidden.shape
        H, P, G, N = cfg.nheads, cfg.headdim, cfg.ngroups, cfg.d_state
        h = self.hook_in(hidden)
        z, xBC, dt_raw = torch.split(self.in_proj(h), [cfg.d_inner, cfg.conv_dim, H], dim=-1)
        z = self.hook_gate(z)
        xBC = self.hook_xBC(xBC)
        act = self.conv_stage(xBC, ops, cache)
        x, B, C = torch.split(act, [cfg.d_inner, G * N, G * N], dim=-1)
        x = self.hook_x(x)
        B = self.hook_B(B.reshape(batch, L, G, N))
        C = self.hook_C(C.reshape(batch, L, G, N))
        dt = F.softplus(dt_raw + self.dt_bias)
        if cfg.dt_limit != (0.0, float("inf")):
            dt = dt.clamp(min=cfg.dt_limit[0], max=cfg.dt_limit[1])
        dt = self.hook_dt(dt)
        A, D = self.A, self.D.to(accum_dtype(x))
        xh = x.reshape(batch, L, H, P)

        def scan(t0: int, t1: int, h0: Optional[torch.Tensor] = None, positions=None, inject=None):
            s = slice(t0, t1)
            return ops.ssd_scan(xh[:, s], dt[:, s], A, B[:, s], C[:, s], D, cfg.chunk_size, h0, positions, inject)

        def emit(h_t: torch.Tensor, t: int) -> torch.Tensor:
            f = accum_dtype(x)
            Ct = _expand_groups(C[:, t : t + 1].to(f), H)[:, 0]                   # [b, h, n]
            y_t = torch.einsum("bhpn,bhn->bhp", h_t.to(f), Ct) + D.to(f)[:, None] * xh[:, t].to(f)
            return y_t.to(x.dtype)

        y = self.ssm_with_state_hook(
            scan, lambda h0: ops.ssd_step(h0, xh[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D), emit, L,
            state_positions, hidden.device, cache)
        y = self.hook_ssm_out(y.reshape(batch, L, cfg.d_inner))
        return self.hook_out(self.out_proj(self._gated_norm(y, z)))
