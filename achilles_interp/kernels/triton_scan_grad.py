"""Differentiable Triton selective scan for Mamba-1 on short sequences (training the paper's models).

``mamba_ssm``'s ``selective_scan_fn`` launches one 32-thread block per (batch row, channel), built
for long sequences: at the paper's shapes (batch 1024-2048, 256 channels, L 8-29) that is 260k-520k
blocks, each doing a whole block-wide scan per state for a handful of steps. Here, as in
:mod:`achilles_interp.kernels.triton_scan`, one program walks the sequence for a block of channels
of one batch row, the state ``[BLOCK_D, d_state]`` in registers.

Forward: the state-emitting kernel with every state kept (``states [batch, L, d_inner, d_state]``,
fp32: 16x the bytes of u at d_state 16, the price of an exact backward without recomputation;
:class:`~achilles_interp.ops.CudaOps` takes this path only for short sequences).

Backward, per program, walking t = L-1 .. 0 with G_t = dLoss/dh_t (h_t's own and, through
a_{t+1} = exp(dt_{t+1} A), every later step's)::

    G_t      = dy_t[d] C_t[n] + a_{t+1} * G_{t+1}
    du_t[d]  = D[d] dy_t[d] + dt_t[d] sum_n G_t B_t[n]
    ddt_t[d] = sum_n G_t (A a_t h_{t-1} + B_t[n] u_t[d])
    dB_t[n]  = sum_d G_t dt_t[d] u_t[d]          dC_t[n] = sum_d dy_t[d] h_t[d, n]
    dA[d, n] = sum_{b, t} G_t a_t h_{t-1} dt_t[d]          dD[d] = sum_{b, t} dy_t[d] u_t[d]

Sums over channels (dB, dC) and over batch rows (dA, dD) are written per program and added by
PyTorch afterwards, so the result does not depend on the order programs finish (no atomics).
"""

from __future__ import annotations

from typing import Optional

import torch

from ..reference_ops import needs_grad
from .triton_scan import _bc_3d, _next_pow2, _require_triton, _scan_impl, tl, triton

__all__ = ["selective_scan_trainable"]

if triton is not None:
    from .triton_scan import _program_tile

    @triton.jit
    def _selective_scan_bwd_kernel(
        u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, st_ptr, dy_ptr,
        du_ptr, ddt_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr,
        L, d_inner, d_state,
        s_u_b, s_u_d, s_u_l,
        s_dt_b, s_dt_d, s_dt_l,
        s_A_d, s_A_n,
        s_B_b, s_B_n, s_B_l,
        s_C_b, s_C_n, s_C_l,
        s_st_b, s_st_p,
        s_dy_b, s_dy_d, s_dy_l,
        s_du_b, s_du_d, s_du_l,
        s_ddt_b, s_ddt_d, s_ddt_l,
        s_bc_k, s_bc_b, s_bc_n,
        HAS_D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        # du, ddt: [batch, d_inner, L] laid out as u and dt; dB, dC: [d_blocks, batch, d_state, L] (this block's share);
        # dA: [batch, d_inner, d_state] and dD: [batch, d_inner] contiguous (this row's share)
        LOG2E: tl.constexpr = 1.4426950408889634
        pid_d = tl.program_id(0).to(tl.int64)
        b, offs_d, offs_n, mask_d, mask_n, mask_dn = _program_tile(d_inner, d_state, BLOCK_D, BLOCK_N)

        A = tl.load(A_ptr + offs_d[:, None] * s_A_d + offs_n[None, :] * s_A_n, mask=mask_dn, other=0.0).to(tl.float32)
        if HAS_D:
            Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        st_base = st_ptr + b * s_st_b + offs_d[:, None] * d_state + offs_n[None, :]
        g = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)       # a_{t+1} * G_{t+1}
        dA = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
        dD = tl.zeros([BLOCK_D], dtype=tl.float32)
        # h_t's pointers, moved back one step per iteration (64-bit pointer arithmetic, as in the forward:
        # a row's states may pass 2**31 values); b * 0 makes the first offset an int64
        st_t = st_base + (b * 0 + L - 1) * s_st_p
        h_t = tl.load(st_t, mask=mask_dn, other=0.0)
        bc_base = pid_d * s_bc_k + b * s_bc_b + offs_n * s_bc_n
        for i in range(L):
            t = L - 1 - i
            u_t = tl.load(u_ptr + b * s_u_b + offs_d * s_u_d + t * s_u_l, mask=mask_d, other=0.0).to(tl.float32)
            dt_t = tl.load(dt_ptr + b * s_dt_b + offs_d * s_dt_d + t * s_dt_l, mask=mask_d, other=0.0).to(tl.float32)
            B_t = tl.load(B_ptr + b * s_B_b + offs_n * s_B_n + t * s_B_l, mask=mask_n, other=0.0).to(tl.float32)
            C_t = tl.load(C_ptr + b * s_C_b + offs_n * s_C_n + t * s_C_l, mask=mask_n, other=0.0).to(tl.float32)
            dy_t = tl.load(dy_ptr + b * s_dy_b + offs_d * s_dy_d + t * s_dy_l, mask=mask_d, other=0.0).to(tl.float32)
            st_t -= s_st_p  # h_{t-1} (before the row at t = 0: masked, never read)
            h_prev = tl.load(st_t, mask=mask_dn & (t > 0), other=0.0)

            G = g + dy_t[:, None] * C_t[None, :]
            a_t = tl.exp2(dt_t[:, None] * A * LOG2E)
            Gah = G * a_t * h_prev
            GB = tl.sum(G * B_t[None, :], axis=1)
            du_t = dt_t * GB
            if HAS_D:
                du_t += Dv * dy_t
                dD += dy_t * u_t
            ddt_t = tl.sum(Gah * A, axis=1) + u_t * GB
            tl.store(du_ptr + b * s_du_b + offs_d * s_du_d + t * s_du_l, du_t, mask=mask_d)
            tl.store(ddt_ptr + b * s_ddt_b + offs_d * s_ddt_d + t * s_ddt_l, ddt_t, mask=mask_d)
            tl.store(dB_ptr + bc_base + t, tl.sum(G * (dt_t * u_t)[:, None], axis=0), mask=mask_n)
            tl.store(dC_ptr + bc_base + t, tl.sum(h_t * dy_t[:, None], axis=0), mask=mask_n)
            dA += Gah * dt_t[:, None]
            g = G * a_t
            h_t = h_prev

        tl.store(dA_ptr + b * d_inner * d_state + offs_d[:, None] * d_state + offs_n[None, :], dA, mask=mask_dn)
        if HAS_D:
            tl.store(dD_ptr + b * d_inner + offs_d, dD, mask=mask_d)


def _tile_config(d_inner: int, d_state: int) -> tuple[int, int]:
    """(BLOCK_D, num_warps) of both passes: a ``[BLOCK_D, d_state]`` tile of about 512 values. A short
    sequence leaves each program a few dozen dependent steps, so the time is (steps x load latency) per
    wave of programs: bigger tiles over more warps mean fewer waves (the inference kernel's 128-value
    one-warp tile suits few long rows). It also keeps the backward's per-block dB / dC sums few."""
    block_n = _next_pow2(d_state)
    block_d = max(1, min(_next_pow2(d_inner), max(1, 512 // block_n)))
    return block_d, 4 if block_d * block_n >= 512 else 2


def _backward(u, dt, A, B, C, D, states, dy):
    """Gradients of :func:`selective_scan_trainable`'s y w.r.t. (u, dt, A, B, C, D), in their dtypes."""
    batch, d_inner, L = u.shape
    d_state = A.shape[1]
    f32 = torch.float32
    D = D if D is None or D.stride(0) == 1 else D.contiguous()  # the kernel reads D[d] at stride 1
    block_d, num_warps = _tile_config(d_inner, d_state)
    n_blocks = triton.cdiv(d_inner, block_d)
    dev = u.device
    # laid out as u and dt (the mixers' time-major views: a step's channels side by side in memory)
    du, ddt = torch.empty_like(u, dtype=f32), torch.empty_like(dt, dtype=f32)
    dB = torch.empty((n_blocks, batch, d_state, L), device=dev, dtype=f32)
    dC = torch.empty_like(dB)
    dA = torch.empty((batch, d_inner, d_state), device=dev, dtype=f32)
    dD = torch.empty((batch, d_inner), device=dev, dtype=f32) if D is not None else du
    _selective_scan_bwd_kernel[(n_blocks, batch)](
        u, dt, A, B, C, D if D is not None else du, states, dy,
        du, ddt, dB, dC, dA, dD,
        L, d_inner, d_state,
        *u.stride(), *dt.stride(), *A.stride(), *B.stride(), *C.stride(), states.stride(0), states.stride(1),
        *dy.stride(), *du.stride(), *ddt.stride(), dB.stride(0), dB.stride(1), dB.stride(2),
        HAS_D=D is not None, BLOCK_D=block_d, BLOCK_N=_next_pow2(d_state), num_warps=num_warps,
    )
    return (du.to(u.dtype), ddt.to(dt.dtype), dA.sum(0).to(A.dtype), dB.sum(0).to(B.dtype),
            dC.sum(0).to(C.dtype), None if D is None else dD.sum(0).to(D.dtype))


def _forward(u, dt, A, B, C, D, positions):
    """The state-emitting forward kernel at this module's tile: (y, states at ``positions``, last state)."""
    return _scan_impl(u, dt, A, B, C, D, None, False, None, positions, *_tile_config(u.shape[1], A.shape[1]))


class _TrainableScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, dt, A, B, C, D):
        y, states, last = _forward(u, dt, A, B, C, D, "all")
        ctx.save_for_backward(u, dt, A, B, C, D, states)
        ctx.mark_non_differentiable(last)
        return y, last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, _dlast):
        u, dt, A, B, C, D, states = ctx.saved_tensors
        grads = _backward(u, dt, A, B, C, D, states, dy)
        return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad))


def selective_scan_trainable(
    u: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 selective scan with a Triton backward, for short sequences.

    Args:
        u, dt: ``[batch, d_inner, L]``, dt already positive (no bias, no softplus: the hooked mixer
            applies both before its ``hook_dt``); fp32, bf16 or fp16.
        A: ``[d_inner, d_state]`` real, negative. B, C: ``[batch, d_state, L]`` (or ``[batch, 1, d_state, L]``).
        D: ``[d_inner]`` or None.
    Returns:
        (y ``[batch, d_inner, L]`` in u's dtype, the last state ``[batch, d_inner, d_state]`` fp32, not
        differentiable). Gradients reach u, dt, A, B, C and D. Memory: every state of the sequence is
        kept for the backward (``batch * L * d_inner * d_state`` fp32).
    """
    _require_triton(u.device, "selective_scan_trainable")
    batch, _, L = u.shape
    B, C = _bc_3d("B", B, batch, L), _bc_3d("C", C, batch, L)  # a [batch, 1, d_state, L] group dim squeezed
    if not needs_grad(u, dt, A, B, C, D):  # nothing to differentiate: no states kept
        y, _, last = _forward(u, dt, A, B, C, D, None)
        return y, last
    return _TrainableScan.apply(u, dt, A, B, C, D)
