"""Hooked Mamba-1 mixer (selective SSM, S6), parameter-compatible with ``mamba_ssm.Mamba``.

    x, z   = in_proj(h).chunk(2)                 [batch, pos, d_inner] each
    u      = SiLU(conv1d(x))                     causal depthwise conv, width d_conv
    dt, B, C = split(x_proj(u))                   dt_rank, d_state, d_state
    dt     = softplus(dt_proj(dt))                [batch, pos, d_inner]
    h_t    = exp(dt_t A) h_{t-1} + dt_t B_t u_t   A = -exp(A_log)  [d_inner, d_state]
    y_t    = C_t . h_t + D u_t
    out    = out_proj(y * SiLU(z))
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import MambaConfig
from .kernels import cuda_ops
from .mixer_base import HookedMixerBase
from .reference_ops import StatePositions, accum_dtype, selective_scan_ref


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
    """

    HOOK_NAMES = ("hook_in", "hook_x", "hook_gate", "hook_conv_out", "hook_conv_act", "hook_dt",
                  "hook_B", "hook_C", "hook_ssm_state", "hook_ssm_out", "hook_gated", "hook_out")

    def __init__(self, cfg: MambaConfig, layer_idx: int):
        super().__init__(cfg, layer_idx)
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


    def forward(self, hidden: torch.Tensor, state_positions: StatePositions = None) -> torch.Tensor:
        """hidden ``[batch, pos, d_model]`` (normed residual) -> ``[batch, pos, d_model]``."""
        state_positions = self.resolve_state_positions(state_positions)
        if self.can_fuse(state_positions):
            return self._forward_fused(hidden)
        batch, L, _ = hidden.shape
        n, r = self.cfg.d_state, self.cfg.resolved_dt_rank
        h = self.hook_in(hidden)
        x, z = self.in_proj(h).chunk(2, dim=-1)
        x = self.hook_x(x)
        z = self.hook_gate(z)
        u = self.conv_stage(x)
        dt_low, B, C = torch.split(self.x_proj(u), [r, n, n], dim=-1)
        dt = self.hook_dt(F.softplus(self.dt_proj(dt_low)))
        B = self.hook_B(B)
        C = self.hook_C(C)
        A = self.A
        D = self.D.to(accum_dtype(u))

        # On the GPU: mamba_ssm's kernel when no state is needed; the Triton state-emitting kernel
        # for states and edited-state segments when no gradient is needed; else the reference.
        on_gpu = self.backend == "cuda"
        kernel_ok = on_gpu and not cuda_ops.needs_grad(u, dt, A, B, C, D)

        def scan_all(positions, inject):
            if on_gpu and positions is None and inject is None:
                return cuda_ops.selective_scan_cuda(u, dt, A, B, C, D), None
            if kernel_ok and inject is None:
                y, states, _ = cuda_ops.selective_scan_states_cuda(u, dt, A, B, C, D, positions=positions)
                return y, states
            y, states, _ = selective_scan_ref(u, dt, A, B, C, D, state_positions=positions, inject=inject)
            return y, states

        def segment(t0: int, t1: int, h0: Optional[torch.Tensor]):
            args = (u[:, t0:t1], dt[:, t0:t1], A, B[:, t0:t1], C[:, t0:t1], D)
            if kernel_ok and not cuda_ops.needs_grad(h0):
                y, _, last = cuda_ops.selective_scan_states_cuda(*args, h0=h0)
                return y, last
            y, _, last = selective_scan_ref(*args, h0=h0)
            return y, last

        def emit(h_t: torch.Tensor, t: int) -> torch.Tensor:
            f = accum_dtype(u)
            y_t = torch.einsum("bdn,bn->bd", h_t.to(f), C[:, t].to(f)) + D.to(f) * u[:, t].to(f)
            return y_t.to(u.dtype)

        y = self.scan_with_state_hook(scan_all, segment, emit, L, state_positions, hidden.device)
        y = self.hook_ssm_out(y)
        gated = self.hook_gated(y * F.silu(z))
        return self.hook_out(self.out_proj(gated))

    def _forward_fused(self, hidden: torch.Tensor) -> torch.Tensor:
        """The whole mixer in one ``mamba_inner_fn`` call (no hooks can fire inside it)."""
        xz = self.in_proj(hidden).transpose(1, 2)                      # [batch, 2*d_inner, pos]
        out = cuda_ops.kernel("mamba_inner_fn")(
            xz.contiguous(), self.conv1d.weight, self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight,
            self.out_proj.weight, self.out_proj.bias, self.A, None, None, self.D.float(),
            delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
        )
        return out
