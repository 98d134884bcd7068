"""Triton selective scan for Mamba-1 that also returns the SSM state h_t (all positions or a list).

Math (per batch b, channel d, state n; A is negative real; Mamba paper, arXiv 2312.00752)::

    dt_t      = softplus(delta_t + delta_bias)  if delta_softplus else  delta_t + delta_bias
    h_t[d, n] = exp(dt_t[d] * A[d, n]) * h_{t-1}[d, n] + dt_t[d] * B_t[n] * u_t[d]   (h_{-1} = h0 or 0)
    y_t[d]    = sum_n C_t[n] * h_t[d, n] + D[d] * u_t[d]

:func:`selective_scan_states` takes the layouts of ``mamba_ssm``'s ``selective_scan_fn`` (channel-major
``[batch, d_inner, L]``, no ``z`` gate: the model applies the gate itself) and returns, besides y, the
states at the requested positions and the last state, so it serves ``hook_ssm_state`` caching and
patching (start a segment from an edited state through ``initial_state``).

Kernel design: one program per (block of ``BLOCK_D`` channels, batch row) walks the sequence in
order, keeping h ``[BLOCK_D, d_state]`` in fp32 registers. The per-step inputs (u, dt for the block,
B_t, C_t) are prefetched one step ahead, so their load latency overlaps the previous step's math;
with time contiguous in memory (``[batch, d_inner, L]``, stride 1 along L) one cache line serves 32
(fp32) steps from L1. Inputs whose L stride is not 1 (e.g. the model's time-major
``[batch, pos, d_inner]`` viewed with ``.transpose(1, 2)``) are first copied to that layout: reading
them in place costs an L2 round trip per step (measured 1.6x slower on an H200). A requested state
is written as one contiguous ``BLOCK_D * d_state`` fp32 run of ``states[b, k]``; a list of positions
is walked with a "next position" cursor, so unrequested steps cost one integer compare.

Inference only: the forward runs under autograd, but calling ``.backward()`` through its outputs
raises ``NotImplementedError`` (use :func:`achilles_interp.reference_ops.selective_scan_ref` for
gradients). ``import`` of this module never needs Triton or a GPU; calling the function does.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from ..reference_ops import StatePositions, needs_grad, position_list

try:  # Triton is optional: this module must import on machines without it.
    import triton
    import triton.language as tl

    _TRITON_IMPORT_ERROR: Optional[BaseException] = None
except Exception as _e:  # ImportError, or a broken install
    triton = None
    tl = None
    _TRITON_IMPORT_ERROR = _e

__all__ = ["selective_scan_states", "triton_available", "TritonUnavailable"]

_FLOAT_INPUTS = (torch.float32, torch.bfloat16, torch.float16)
_ALL_FLOATS = (*_FLOAT_INPUTS, torch.float64)   # parameters (A, D, biases, h0) may be float64
_MODE_NONE, _MODE_ALL, _MODE_LIST = 0, 1, 2


class TritonUnavailable(RuntimeError):
    """The Triton kernels cannot run here (Triton missing, or tensors not on a CUDA device)."""


def _interpreting() -> bool:
    """True when Triton's CPU interpreter is on (``TRITON_INTERPRET=1`` before the import)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available(device: Optional[torch.device] = None) -> bool:
    """True when the Triton kernels can run on ``device`` (default: the current CUDA device)."""
    if triton is None:
        return False
    if _interpreting():
        return True
    if device is not None and torch.device(device).type != "cuda":
        return False
    return torch.cuda.is_available()


def _require_triton(device: torch.device, what: str) -> None:
    if triton is None:
        raise TritonUnavailable(
            f"{what} needs Triton (pip install triton; it ships with CUDA builds of PyTorch); "
            f"importing it failed with: {type(_TRITON_IMPORT_ERROR).__name__}: {_TRITON_IMPORT_ERROR}")
    if device.type != "cuda" and not _interpreting():
        raise TritonUnavailable(
            f"{what} runs on CUDA tensors, got tensors on {device}. On CPU use the PyTorch reference "
            "(achilles_interp.reference_ops), or set TRITON_INTERPRET=1 before importing Triton to run "
            "the kernel in Triton's (slow) interpreter.")


def _resolve_backend(backend: str, auto_triton) -> str:
    """Check ``backend`` ("auto", "triton" or "torch"); "auto" becomes "triton" when ``auto_triton()`` is true."""
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    if backend == "auto":
        return "triton" if auto_triton() else "torch"
    return backend


# ---------------------------------------------------------------------------------------------
# Kernel
# ---------------------------------------------------------------------------------------------
if triton is not None:

    @triton.jit
    def _softplus(x):
        """softplus(x) = log(1 + exp(x)) with mamba_ssm's threshold (x > 20 -> x), log1p kept exact."""
        e = tl.exp(tl.minimum(x, 20.0))
        log1p_e = tl.where(e < 1e-3, e * (1.0 - e * (0.5 - e * (1.0 / 3.0))), tl.log(1.0 + e))
        return tl.where(x > 20.0, x, log1p_e)

    @triton.jit
    def _load_step(x_row, dt_row, B_row, C_row, x_off, B_off, C_off, mask_x, mask_dt, mask_n, has_next):
        """One time step's x (u), dt, B and C at ``row + off`` (rows: scalar pointers or pointer tensors;
        offsets may be 0); lanes outside ``mask & has_next`` read 0."""
        x = tl.load(x_row + x_off, mask=mask_x & has_next, other=0.0)
        dt = tl.load(dt_row, mask=mask_dt & has_next, other=0.0)
        B = tl.load(B_row + B_off, mask=mask_n & has_next, other=0.0)
        C = tl.load(C_row + C_off, mask=mask_n & has_next, other=0.0)
        return x, dt, B, C

    @triton.jit
    def _as_fp32(x, dt, B, C):
        return x.to(tl.float32), dt.to(tl.float32), B.to(tl.float32), C.to(tl.float32)

    @triton.jit
    def _next_step(x_row, dt_row, B_row, C_row, s_x, s_dt, s_B, s_C, x_off, B_off, C_off, mask_x, mask_dt,
                   mask_n, t, n_steps):
        """The prefetch of the scan loops at step t of n_steps: move the four rows on by one time step
        (strides ``s_*``) and load that step t + 1 (:func:`_load_step`; zeros past the last step). Returns the
        rows and the loaded x, dt, B, C."""
        has_next = t + 1 < n_steps
        x_row += s_x
        dt_row += s_dt
        B_row += s_B
        C_row += s_C
        x, dt, B, C = _load_step(x_row, dt_row, B_row, C_row, x_off, B_off, C_off, mask_x, mask_dt, mask_n,
                                 has_next)
        return x_row, dt_row, B_row, C_row, x, dt, B, C

    @triton.jit
    def _program_tile(d_inner, d_state, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
        """This program's batch row (program axis 1, int64) and its ``[BLOCK_D, BLOCK_N]`` tile of
        (channel, state) (channel block: program axis 0): (b, offs_d, offs_n, mask_d, mask_n, mask_dn)."""
        b = tl.program_id(1).to(tl.int64)
        offs_d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
        offs_n = tl.arange(0, BLOCK_N)
        mask_d = offs_d < d_inner
        mask_n = offs_n < d_state
        return b, offs_d, offs_n, mask_d, mask_n, mask_d[:, None] & mask_n[None, :]

    @triton.jit
    def _selective_scan_states_kernel(
        u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, dt_bias_ptr, h0_ptr, pos_ptr,
        y_ptr, states_ptr, last_ptr,
        L, d_inner, d_state,
        s_u_b, s_u_d, s_u_l,
        s_dt_b, s_dt_d, s_dt_l,
        s_A_d, s_A_n,
        s_B_b, s_B_n, s_B_l,
        s_C_b, s_C_n, s_C_l,
        s_h0_b, s_h0_d, s_h0_n,
        s_y_b, s_y_d, s_y_l,
        s_st_b, s_st_p,
        HAS_D: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
        HAS_H0: tl.constexpr, STATE_MODE: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        # states: [batch, P, d_inner, d_state] with (d, n) contiguous; last: [batch, d_inner, d_state]
        LOG2E: tl.constexpr = 1.4426950408889634
        b, offs_d, offs_n, mask_d, mask_n, mask_dn = _program_tile(d_inner, d_state, BLOCK_D, BLOCK_N)

        # exp(dt * A) = exp2(dt * A * log2(e)); padded lanes get A = 0, B = 0, h = 0 and stay 0.
        A2 = tl.load(A_ptr + offs_d[:, None] * s_A_d + offs_n[None, :] * s_A_n,
                     mask=mask_dn, other=0.0).to(tl.float32) * LOG2E
        if HAS_D:
            Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        if HAS_DT_BIAS:
            dt_bias = tl.load(dt_bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        if HAS_H0:
            h = tl.load(h0_ptr + b * s_h0_b + offs_d[:, None] * s_h0_d + offs_n[None, :] * s_h0_n,
                        mask=mask_dn, other=0.0).to(tl.float32)
        else:
            h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)

        # Pointers for step t; they advance by one time stride per step (64-bit pointer math).
        u_ptrs = u_ptr + b * s_u_b + offs_d * s_u_d
        dt_ptrs = dt_ptr + b * s_dt_b + offs_d * s_dt_d
        B_ptrs = B_ptr + b * s_B_b + offs_n * s_B_n
        C_ptrs = C_ptr + b * s_C_b + offs_n * s_C_n
        y_ptrs = y_ptr + b * s_y_b + offs_d * s_y_d
        st_base = states_ptr + b * s_st_b + offs_d[:, None] * d_state + offs_n[None, :]
        st_ptrs = st_base

        # Prefetch step 0.
        u_nx, dt_nx, B_nx, C_nx = _load_step(u_ptrs, dt_ptrs, B_ptrs, C_ptrs, 0, 0, 0, mask_d, mask_d, mask_n, True)
        if STATE_MODE == 2:
            # pos: requested positions, increasing, then a -1 sentinel; next_pos is the next one due.
            pos_ptrs = pos_ptr
            next_pos = tl.load(pos_ptrs)

        for t in range(L):
            u_t, dt_t, B_t, C_t = _as_fp32(u_nx, dt_nx, B_nx, C_nx)
            # Issue the loads of step t+1 now; they complete while step t computes.
            u_ptrs, dt_ptrs, B_ptrs, C_ptrs, u_nx, dt_nx, B_nx, C_nx = _next_step(
                u_ptrs, dt_ptrs, B_ptrs, C_ptrs, s_u_l, s_dt_l, s_B_l, s_C_l, 0, 0, 0, mask_d, mask_d, mask_n, t, L)

            if HAS_DT_BIAS:
                dt_t = dt_t + dt_bias
            if DT_SOFTPLUS:
                dt_t = _softplus(dt_t)
            dt_t = tl.where(mask_d, dt_t, 0.0)

            # h_t = exp(dt A) * h_{t-1} + (dt u) B_t ;  y_t = C_t . h_t + D u_t
            decay = tl.exp2(dt_t[:, None] * A2)
            h = decay * h + (dt_t * u_t)[:, None] * B_t[None, :]
            y_t = tl.sum(h * C_t[None, :], axis=1)
            if HAS_D:
                y_t += Dv * u_t
            tl.store(y_ptrs, y_t, mask=mask_d)
            y_ptrs += s_y_l

            if STATE_MODE == 1:
                tl.store(st_ptrs, h, mask=mask_dn)
                st_ptrs += s_st_p
            if STATE_MODE == 2:
                if t == next_pos:
                    tl.store(st_ptrs, h, mask=mask_dn)
                    st_ptrs += s_st_p
                    pos_ptrs += 1
                    next_pos = tl.load(pos_ptrs)

        tl.store(last_ptr + b * d_inner * d_state + offs_d[:, None] * d_state + offs_n[None, :], h,
                 mask=mask_dn)


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------
def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def _check_float(name: str, t: torch.Tensor, allowed=_FLOAT_INPUTS) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise ValueError(f"{name} has dtype {str(t.dtype).replace('torch.', '')}; allowed: {names}")


def _check_same_device(first: str, t0: torch.Tensor, named) -> torch.device:
    """The device of ``t0`` (called ``first``); raises unless every tensor of ``named`` ((name, tensor or
    None) pairs) is on it."""
    device = t0.device
    for name, t in named:
        if t is not None and t.device != device:
            raise ValueError(f"all tensors must be on one device: {first} is on {device}, {name} on {t.device}")
    return device


def _check_shape(name: str, t: torch.Tensor, expected: tuple, layout: str) -> None:
    if tuple(t.shape) != tuple(expected):
        want = ", ".join(map(str, expected))
        raise ValueError(f"{name} must have shape {layout} = [{want}], got {_shape(t)}")


def _bc_3d(name: str, t: torch.Tensor, batch: int, L: int) -> torch.Tensor:
    """B or C as ``[batch, d_state, L]`` (a ``[batch, 1, d_state, L]`` group dim is squeezed)."""
    _check_float(name, t)
    if t.dim() == 4:
        if t.shape[1] != 1:
            raise ValueError(f"{name} of shape {_shape(t)} has {t.shape[1]} groups; only one group "
                             "([batch, 1, d_state, L]) is supported, as in Mamba-1")
        t = t[:, 0]
    if t.dim() != 3:
        raise ValueError(f"{name} must be input-dependent, [batch, d_state, L] or [batch, 1, d_state, L], "
                         f"got {_shape(t)} (time-invariant [d_inner, d_state] {name} is not supported)")
    if t.shape[0] != batch or t.shape[2] != L:
        raise ValueError(f"{name} must have shape [batch, d_state, L] with batch={batch}, L={L}, "
                         f"got {_shape(t)}")
    return t


def _positions(state_positions: StatePositions, L: int, device: torch.device):
    """(mode, positions ``[P + 1]`` int32 ending in a -1 sentinel (list mode) or None, P)."""
    if state_positions is None:
        return _MODE_NONE, None, 0
    if isinstance(state_positions, str) and state_positions == "all":
        return _MODE_ALL, None, L
    pos = position_list(state_positions)       # integers, 1-D, not empty (the shared parser)
    if int(pos.min()) < 0 or int(pos.max()) >= L:
        raise ValueError(f"state_positions must lie in [0, {L}) for a sequence of length L={L}, "
                         f"got min {int(pos.min())}, max {int(pos.max())}")
    if pos.numel() > 1 and not bool((pos[1:] > pos[:-1]).all()):
        raise ValueError("state_positions must be sorted and unique (strictly increasing), got "
                         f"{pos.tolist()[:20]}{' ...' if pos.numel() > 20 else ''}")
    with_sentinel = torch.cat([pos, pos.new_full((1,), -1)]).to(torch.int32)
    return _MODE_LIST, with_sentinel.to(device), int(pos.numel())


# ---------------------------------------------------------------------------------------------
# Launch
# ---------------------------------------------------------------------------------------------
def _next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def _row_block(n_rows: int, d_state: int, budget: int) -> tuple[int, int]:
    """(rows, BLOCK_N) of a ``[rows, d_state]`` register tile of about ``budget`` values: rows a power of two
    in [1, next_pow2(n_rows)], BLOCK_N = next_pow2(d_state)."""
    block_n = _next_pow2(d_state)
    return max(1, min(_next_pow2(n_rows), max(1, budget // block_n))), block_n


def _default_config(d_inner: int, d_state: int) -> tuple[int, int]:
    """(BLOCK_D, num_warps): small channel blocks, so that many programs run the serial time loop
    side by side (b * d_inner / BLOCK_D of them). BLOCK_D * d_state = 128 on one warp was the fastest
    choice for d_state 16 on an H200 (benchmarks/states.py --sweep: 0.60 ms for all states at batch 4,
    d_inner 1536, L 2048, against 0.64-1.3 ms for BLOCK_D 2-32 with 1-4 warps)."""
    block_d, block_n = _row_block(d_inner, d_state, 128)
    num_warps = 1 if block_d * block_n <= 128 else 2
    return block_d, num_warps


def _scan_impl(u, delta, A, B, C, D, delta_bias, delta_softplus, initial_state, state_positions,
               block_d: Optional[int] = None, num_warps: Optional[int] = None):
    """Validate, allocate and launch. Returns (y, states or None, last_state)."""
    for name, t in (("u", u), ("delta", delta)):
        _check_float(name, t)
        if t.dim() != 3:
            raise ValueError(f"{name} must be [batch, d_inner, L], got {_shape(t)}")
    batch, d_inner, L = u.shape
    _check_shape("delta", delta, (batch, d_inner, L), "[batch, d_inner, L] (same as u)")
    if L == 0:
        raise ValueError("sequence length L is 0; nothing to scan")
    if batch == 0 or d_inner == 0:
        raise ValueError(f"u has an empty dimension: {_shape(u)}")
    _check_float("A", A, _ALL_FLOATS)
    if A.dim() != 2 or A.shape[0] != d_inner:
        raise ValueError(f"A must be real [d_inner, d_state] with d_inner={d_inner}, got {_shape(A)}"
                         f"{' complex' if A.is_complex() else ''}")
    d_state = A.shape[1]
    if d_state == 0:
        raise ValueError("A has d_state = 0")
    B = _bc_3d("B", B, batch, L)
    C = _bc_3d("C", C, batch, L)
    if B.shape[1] != d_state or C.shape[1] != d_state:
        raise ValueError(f"B and C must have d_state={d_state} (from A {_shape(A)}) on dim 1, "
                         f"got B {_shape(B)}, C {_shape(C)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None:
            _check_float(name, t, _ALL_FLOATS)
            _check_shape(name, t, (d_inner,), "[d_inner]")
    if initial_state is not None:
        _check_float("initial_state", initial_state, _ALL_FLOATS)
        _check_shape("initial_state", initial_state, (batch, d_inner, d_state), "[batch, d_inner, d_state]")
    device = _check_same_device("u", u, [("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D),
                                         ("delta_bias", delta_bias), ("initial_state", initial_state)])
    _require_triton(device, "selective_scan_states")

    mode, pos, P = _positions(state_positions, L, device)
    # A float64 model's parameters are accepted but read as fp32 (the kernel accumulates in fp32).
    A = A.float() if A.dtype == torch.float64 else A
    D = D.float() if D is not None and D.dtype == torch.float64 else D
    if delta_bias is not None and delta_bias.dtype == torch.float64:
        delta_bias = delta_bias.float()
    if initial_state is not None and initial_state.dtype == torch.float64:
        initial_state = initial_state.float()
    if D is not None and D.stride(0) != 1:
        D = D.contiguous()
    if delta_bias is not None and delta_bias.stride(0) != 1:
        delta_bias = delta_bias.contiguous()

    # Time along the fastest dimension: one L1 line then serves many steps (see module docstring).
    u, delta, B, C = (t if t.stride(-1) == 1 else t.contiguous() for t in (u, delta, B, C))
    y = torch.empty((batch, d_inner, L), device=device, dtype=u.dtype)
    states = torch.empty((batch, P, d_inner, d_state), device=device, dtype=torch.float32) if P else None
    last = torch.empty((batch, d_inner, d_state), device=device, dtype=torch.float32)

    cfg_block_d, cfg_warps = _default_config(d_inner, d_state)
    block_d = block_d or cfg_block_d
    num_warps = num_warps or cfg_warps
    dummy = last  # stands in for absent optional pointers; never read (constexpr flags)
    h0 = initial_state if initial_state is not None else last
    h0_strides = initial_state.stride() if initial_state is not None else (0, 0, 0)
    grid = (triton.cdiv(d_inner, block_d), batch)
    st = states if states is not None else dummy
    st_strides = (states.stride(0), states.stride(1)) if states is not None else (0, 0)
    _selective_scan_states_kernel[grid](
        u, delta, A, B, C,
        D if D is not None else dummy, delta_bias if delta_bias is not None else dummy, h0,
        pos if pos is not None else dummy,
        y, st, last,
        L, d_inner, d_state,
        *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *h0_strides, *y.stride(),
        *st_strides,
        HAS_D=D is not None, HAS_DT_BIAS=delta_bias is not None, DT_SOFTPLUS=bool(delta_softplus),
        HAS_H0=initial_state is not None, STATE_MODE=mode,
        BLOCK_D=block_d, BLOCK_N=_next_pow2(d_state), num_warps=num_warps,
    )
    return y, states, last


class _SelectiveScanStates(torch.autograd.Function):
    """Runs the forward kernel; backward is not implemented (inference-only kernel)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, initial_state, delta_softplus, state_positions):
        return _scan_impl(u, delta, A, B, C, D, delta_bias, delta_softplus, initial_state, state_positions)

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError(
            "selective_scan_states is an inference-only Triton kernel and has no backward. Compute "
            "gradients through achilles_interp.reference_ops.selective_scan_ref (or mamba_ssm's "
            "selective_scan_fn when no states are needed), or run this under torch.no_grad().")


def selective_scan_states(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    initial_state: Optional[torch.Tensor] = None,
    state_positions: StatePositions = None,
) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """Mamba-1 selective scan on the GPU that also returns the SSM states h_t.

    Drop-in for ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn(u, delta, A, B, C, D,
    z=None, delta_bias, delta_softplus)`` (same layouts; no z gate) plus states and an initial state.

    Args:
        u: ``[batch, d_inner, L]`` input x_t per channel; fp32, bf16 or fp16. Any strides; inputs
            whose L stride is not 1 (time-major views) are copied to the fast layout first.
        delta: ``[batch, d_inner, L]`` step size before ``delta_bias`` / softplus; fp32/bf16/fp16.
        A: ``[d_inner, d_state]`` real, negative (continuous-time state matrix, ``-exp(A_log)``).
        B, C: ``[batch, d_state, L]`` or ``[batch, 1, d_state, L]`` (one group) input / output maps.
        D: ``[d_inner]`` skip connection or None.
        delta_bias: ``[d_inner]`` added to delta before the softplus, or None.
        delta_softplus: apply softplus (threshold 20, as mamba_ssm) to ``delta + delta_bias``.
        initial_state: ``[batch, d_inner, d_state]`` state h_{-1} before position 0, or None (zeros).
        state_positions: None (no states), ``"all"``, or a 1-D LongTensor / list of sorted unique
            positions in ``[0, L)``.
    Returns:
        ``(y, states, last_state)``:
        y ``[batch, d_inner, L]`` in u's dtype, contiguous;
        states ``[batch, P, d_inner, d_state]`` float32 (P = L for ``"all"``, else the number of
        positions; ``states[:, k]`` is h at the k-th requested position), or None;
        last_state ``[batch, d_inner, d_state]`` float32, h_{L-1}.
    All arithmetic is fp32. Inference only: backward through the outputs raises NotImplementedError.

    Raises:
        ValueError: wrong shapes, dtypes, devices or positions (the message says what is allowed).
        TritonUnavailable: Triton is not installed, or the tensors are not on a CUDA device.
    """
    if needs_grad(u, delta, A, B, C, D, delta_bias, initial_state):
        return _SelectiveScanStates.apply(u, delta, A, B, C, D, delta_bias, initial_state,
                                          delta_softplus, state_positions)
    return _scan_impl(u, delta, A, B, C, D, delta_bias, delta_softplus, initial_state, state_positions)
