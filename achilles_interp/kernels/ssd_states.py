"""Mamba-2 (SSD) chunked scan that also returns the SSM states h_t (all positions or a list), in Triton.

Math (per batch b, head h; A[h] is a negative scalar; Mamba-2 / SSD, arXiv 2405.21060)::

    dt_t        = clamp(softplus(dt_t + dt_bias) if dt_softplus else dt_t + dt_bias, *dt_limit)
    h_t[p, n]   = exp(dt_t A) * h_{t-1}[p, n] + dt_t * x_t[p] * B_t[g(h), n]      (h_{-1} = h0 or 0)
    y_t[p]      = sum_n C_t[g(h), n] * h_t[p, n] + D[h(, p)] * x_t[p]

with g(h) = h // (nheads / ngroups) the group whose B, C head h reads. :func:`ssd_scan_states` takes the
layouts of ``mamba_ssm``'s ``mamba_chunk_scan_combined`` (time-major ``[batch, L, ...]``; no z gate) and
returns y, the states at the requested positions and the final state.

Chunk structure (``chunk_size`` = T tokens per chunk; the last chunk may be shorter):

1. *Chunk states* (parallel over chunks): the state each chunk would reach from a zero state,
   S_c = sum_{s in c} exp(sum_{s<k<=end} dt_k A) dt_s x_s B_s^T, and the chunk's log-decay sum_{k in c} dt_k A.
2. *State passing* (sequential over the L / T chunks, parallel over b, h, p, n): the boundary states
   H_0 = h0, H_{c+1} = exp(sum_{k in c} dt_k A) H_c + S_c; H_{n_chunks} is the final state.
3. *Chunk scan* (parallel over chunks): from H_c, walk the chunk's T tokens with the recurrence above,
   emitting y_t and, where requested, h_t = exp(sum_{k<=t in c} dt_k A) H_c + (intra-chunk terms).

Inside a chunk the states come from the recurrence itself (O(T p n) work, the least that writing T states
of p x n costs), so they equal the per-token recurrence to fp32 rounding; all arithmetic is fp32 whatever
the input dtype. Each program of step 3 holds a ``[BLOCK_P, d_state]`` tile in registers (the whole
d_state, so y needs no cross-program reduction) and writes a requested state as one contiguous run of
``BLOCK_P * d_state`` values of ``states[b, k, h]``.

:func:`ssd_states_at` skips step 3 for a caller that has y already: from the boundary states, one program
per requested position runs that position's chunk up to it (states only, no y).

:func:`ssd_scan_states_torch` is the same function in PyTorch, vectorised over chunks (no loop over
tokens): the reference (CPU, and float64 when the inputs are float64) and the backward of the Triton path.

Gradients: the Triton forward is wrapped in an autograd Function whose backward *recomputes* the forward
with :func:`ssd_scan_states_torch` under autograd and back-propagates through it, so gradients w.r.t.
x, dt, A, B, C, D, dt_bias and initial_states flow through y, the emitted states and the final state.
That backward costs a PyTorch forward + backward (memory ~4x the requested states plus O(L T nheads)),
not a fused kernel. ``import`` of this module never needs Triton or a GPU.

State edits (replacement semantics): h_t at position t is the state *after* token t (y_t = C_t . h_t + D x_t).
To continue a sequence from an edited state h'_t, run the remaining tokens t+1..L-1 with
``initial_states=h'_t``: ``ssd_scan_states(x[:, t+1:], dt[:, t+1:], A, B[:, t+1:], C[:, t+1:], chunk_size,
..., initial_states=h'_t)``; its y, states and final state are those of the full sequence with h_t replaced
(chunk boundaries need not line up: the math is exact for any split). The output at t itself under the
edit is C_t . h'_t + D x_t.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..reference_ops import needs_grad
from .triton_scan import _ALL_FLOATS as _ALL_DTYPES
from .triton_scan import _FLOAT_INPUTS as _KERNEL_DTYPES
from .triton_scan import _MODE_ALL, _MODE_LIST, _MODE_NONE, TritonUnavailable, _check_same_device, _next_pow2
from .triton_scan import _check_float as _check_dtype
from .triton_scan import _require_triton, _resolve_backend, _row_block, _shape, triton, triton_available

if triton is not None:
    import triton.language as tl

    from .triton_scan import _as_fp32, _load_step, _next_step, _softplus

__all__ = ["ssd_scan_states", "ssd_states_at", "ssd_scan_states_torch", "TritonUnavailable"]

StatePositions = Union[None, str, Sequence[int], torch.Tensor]

_INF = float("inf")


# ---------------------------------------------------------------------------------------------
# Input checks (shared by both implementations)
# ---------------------------------------------------------------------------------------------
def _check_float(name: str, t, allowed=_ALL_DTYPES) -> None:
    _check_dtype(name, t, allowed)


def _check_inputs(x, dt, A, B, C, chunk_size, D, dt_bias, initial_states, dt_limit):
    """Validate shapes, dtypes and devices; return (batch, L, nheads, headdim, ngroups, d_state)."""
    _check_float("x", x)
    if x.dim() != 4:
        raise ValueError(f"x must be [batch, L, nheads, headdim], got {_shape(x)}")
    batch, L, nheads, headdim = x.shape
    if min(batch, L, nheads, headdim) == 0:
        raise ValueError(f"x has an empty dimension: {_shape(x)}")
    _check_float("dt", dt)
    if tuple(dt.shape) != (batch, L, nheads):
        raise ValueError(f"dt must be [batch, L, nheads] = [{batch}, {L}, {nheads}], got {_shape(dt)}")
    _check_float("A", A)
    if tuple(A.shape) != (nheads,):
        raise ValueError(f"A must be [nheads] = [{nheads}] (one negative scalar per head), got {_shape(A)}")
    for name, t in (("B", B), ("C", C)):
        _check_float(name, t)
        if t.dim() != 4 or t.shape[0] != batch or t.shape[1] != L:
            raise ValueError(f"{name} must be [batch, L, ngroups, d_state] with batch={batch}, L={L}, "
                             f"got {_shape(t)}")
    if B.shape != C.shape:
        raise ValueError(f"B and C must have the same shape, got B {_shape(B)}, C {_shape(C)}")
    ngroups, d_state = B.shape[2], B.shape[3]
    if ngroups == 0 or d_state == 0 or nheads % ngroups:
        raise ValueError(f"ngroups ({ngroups}) must divide nheads ({nheads}) and d_state ({d_state}) be > 0")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if D is not None:
        _check_float("D", D)
        if tuple(D.shape) not in ((nheads,), (nheads, headdim)):
            raise ValueError(f"D must be [nheads] = [{nheads}] or [nheads, headdim] = [{nheads}, {headdim}], "
                             f"got {_shape(D)}")
    if dt_bias is not None:
        _check_float("dt_bias", dt_bias)
        if tuple(dt_bias.shape) != (nheads,):
            raise ValueError(f"dt_bias must be [nheads] = [{nheads}], got {_shape(dt_bias)}")
    if initial_states is not None:
        _check_float("initial_states", initial_states)
        want = (batch, nheads, headdim, d_state)
        if tuple(initial_states.shape) != want:
            raise ValueError("initial_states must be [batch, nheads, headdim, d_state] = "
                             f"[{', '.join(map(str, want))}], got {_shape(initial_states)}")
    try:
        lo, hi = (float(v) for v in dt_limit)
    except (TypeError, ValueError) as e:
        raise ValueError(f"dt_limit must be a pair (min, max) of floats, got {dt_limit!r}") from e
    if not lo <= hi:
        raise ValueError(f"dt_limit must have min <= max, got {dt_limit!r}")
    _check_same_device("x", x, [("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D), ("dt_bias", dt_bias),
                                ("initial_states", initial_states)])
    return batch, L, nheads, headdim, ngroups, d_state


def _resolve_positions(state_positions: StatePositions, L: int):
    """-> (mode, positions ``[P]`` LongTensor on the CPU in the order given (list mode) or None, P).

    A list / 1-D integer tensor (or one int) may be in any order and repeat positions; negative entries
    count from the end (-1 is L - 1)."""
    if state_positions is None:
        return _MODE_NONE, None, 0
    if isinstance(state_positions, str):
        if state_positions != "all":
            raise ValueError(f"state_positions must be None, 'all' or a list of positions, "
                             f"got the string {state_positions!r}")
        return _MODE_ALL, None, L
    if isinstance(state_positions, int) and not isinstance(state_positions, bool):
        state_positions = [state_positions]
    if isinstance(state_positions, torch.Tensor):
        if state_positions.is_floating_point() or state_positions.is_complex() or \
                state_positions.dtype == torch.bool or state_positions.dim() != 1:
            raise ValueError("state_positions as a tensor must be a 1-D integer tensor, got "
                             f"{state_positions.dtype} of shape {_shape(state_positions)}")
        pos = state_positions.detach().to("cpu", torch.long)
    else:
        try:
            pos = torch.as_tensor(list(state_positions), dtype=torch.long)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError("state_positions must be None, 'all' or a list of ints, "
                             f"got {state_positions!r}") from e
        if pos.dim() != 1:
            raise ValueError(f"state_positions must be a flat list of ints, got shape {_shape(pos)}")
    if pos.numel() == 0:
        raise ValueError("state_positions is empty; pass None to skip the states")
    if int(pos.min()) < -L or int(pos.max()) >= L:
        raise ValueError(f"state_positions must lie in [-{L}, {L}) for a sequence of length L={L}, "
                         f"got min {int(pos.min())}, max {int(pos.max())}")
    pos = torch.where(pos < 0, pos + L, pos)
    return _MODE_LIST, pos, int(pos.numel())


# ---------------------------------------------------------------------------------------------
# PyTorch implementation (reference, CPU path, and the backward of the Triton path)
# ---------------------------------------------------------------------------------------------
def _segsum(a: torch.Tensor) -> torch.Tensor:
    """[..., T] -> [..., T, T]: out[..., l, s] = sum_{s < k <= l} a[..., k] for s <= l, -inf above the
    diagonal (exact segment sums: a masked cumsum, not a difference of cumsums)."""
    T = a.shape[-1]
    below = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), diagonal=-1)
    seg = torch.cumsum(a[..., :, None].expand(*a.shape, T).masked_fill(~below, 0), dim=-2)
    keep = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device))
    return seg.masked_fill(~keep, float("-inf"))


def _process_dt(dt, dt_bias, dt_softplus, dt_limit, dtype):
    """dt + dt_bias, softplus (threshold 20, as mamba_ssm), clamped to dt_limit (as mamba_ssm, always)."""
    d = dt.to(dtype)
    if dt_bias is not None:
        d = d + dt_bias.to(dtype)
    if dt_softplus:
        d = F.softplus(d)
    lo, hi = float(dt_limit[0]), float(dt_limit[1])
    return d.clamp(min=lo, max=None if hi == _INF else hi)


def ssd_scan_states_torch(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: Optional[torch.Tensor] = None,
    dt_bias: Optional[torch.Tensor] = None,
    dt_softplus: bool = True,
    initial_states: Optional[torch.Tensor] = None,
    state_positions: StatePositions = None,
    dt_limit: tuple[float, float] = (0.0, _INF),
) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """:func:`ssd_scan_states` in PyTorch: same arguments and results, any device, differentiable.

    Arithmetic is float64 when any of x, dt, A, B, C is float64 (states and final state then float64),
    else float32. Vectorised over chunks of ``chunk_size`` tokens (the only Python loop is the
    chunk-boundary recurrence, one step per chunk, L / chunk_size of them): within a chunk, y uses the SSD
    quadratic form and the states the matrix form h_l = exp(cum_l) H_c + sum_{s<=l} W[l, s] dt_s x_s B_s^T.
    Extra memory: O(batch * L * chunk_size * nheads) for the decay matrices and, for ``"all"``,
    about three times the states' size; for a list of P positions, O(P * chunk_size * nheads * (headdim + d_state)).
    """
    batch, L, H, P, G, N = _check_inputs(x, dt, A, B, C, chunk_size, D, dt_bias, initial_states, dt_limit)
    mode, pos, _ = _resolve_positions(state_positions, L)
    f = torch.float64 if torch.float64 in (x.dtype, dt.dtype, A.dtype, B.dtype, C.dtype) else torch.float32
    T = min(chunk_size, L)
    nc = -(-L // T)
    pad = nc * T - L
    dtp = _process_dt(dt, dt_bias, dt_softplus, dt_limit, f)                    # [b, L, h]
    xf, Bf, Cf = x.to(f), B.to(f), C.to(f)
    if pad:  # padded tokens: dt = 0 (decay 1, no input), x = B = C = 0
        dtp = F.pad(dtp, (0, 0, 0, pad))
        xf, Bf, Cf = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xf, Bf, Cf))
    group = torch.arange(H, device=x.device) // (H // G)
    dtc = dtp.view(batch, nc, T, H)
    xc = xf.view(batch, nc, T, H, P)
    Bh = Bf.view(batch, nc, T, G, N).index_select(3, group)                   # [b, c, T, h, n]
    Ch = Cf.view(batch, nc, T, G, N).index_select(3, group)
    dA = dtc * A.to(f)                                                          # [b, c, T, h]
    Acs = torch.cumsum(dA, dim=2)
    # W[b, c, h, l, s] = exp(sum_{s<k<=l} dA_k) dt_s for s <= l, else 0 (exact segment sums)
    W = torch.exp(_segsum(dA.permute(0, 1, 3, 2))) * dtc.permute(0, 1, 3, 2)[..., None, :]

    # 1. chunk states from zero, and 2. the boundary states (blocked scan over the chunks)
    to_end = torch.flip(torch.cumsum(torch.flip(dA, [2]), dim=2), [2]) - dA    # sum_{k>s} dA_k, accurately
    w_end = torch.exp(to_end) * dtc                                             # [b, c, T, h]
    S = torch.einsum("bcsh,bcshp,bcshn->bchpn", w_end, xc, Bh)
    h0 = initial_states.to(f) if initial_states is not None else xf.new_zeros(batch, H, P, N)
    decay = torch.exp(Acs[:, :, -1])[..., None, None]                           # [b, c, h, 1, 1]
    entering = [h0]
    for c in range(nc):                                   # one vectorised step per chunk, not per token
        entering.append(decay[:, c] * entering[-1] + S[:, c])
    H_in = torch.stack(entering[:-1], dim=1)                                    # state entering chunk c
    final = entering[-1]

    # 3. y = intra-chunk (quadratic) + contribution of the entering state + D x
    CB = torch.einsum("bclhn,bcshn->bchls", Ch, Bh)
    y = torch.einsum("bchls,bcshp->bclhp", CB * W, xc)
    y = y + torch.einsum("bclhn,bchpn->bclhp", Ch, H_in) * torch.exp(Acs)[..., None]
    y = y.reshape(batch, nc * T, H, P)[:, :L]
    if D is not None:
        Df = D.to(f)
        y = y + x.to(f) * (Df[:, None] if Df.dim() == 1 else Df)

    # 4. states
    states = None
    if mode == _MODE_ALL:
        xB = torch.einsum("bcshp,bcshn->bchspn", xc, Bh).reshape(batch, nc, H, T, P * N)
        intra = torch.matmul(W, xB).view(batch, nc, H, T, P, N).permute(0, 1, 3, 2, 4, 5)
        states = intra + torch.exp(Acs)[..., None, None] * H_in[:, :, None]
        states = states.reshape(batch, nc * T, H, P, N)[:, :L]
    elif mode == _MODE_LIST:
        uniq, inv = torch.unique(pos, return_inverse=True)
        uniq, inv = uniq.to(x.device), inv.to(x.device)
        cp, lp = uniq // T, uniq % T
        Wk = W.permute(1, 3, 0, 2, 4)[cp, lp]                                   # [K, b, h, s]
        left = Wk.permute(1, 0, 3, 2)[..., None] * xc[:, cp]                    # [b, K, s, h, p]
        intra = torch.einsum("bkshp,bkshn->bkhpn", left, Bh[:, cp])
        states = intra + torch.exp(Acs[:, cp, lp])[..., None, None] * H_in[:, cp]
        states = states[:, inv]
    return y.to(x.dtype), states, final


# ---------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------
if triton is not None:

    @triton.jit
    def _dt_processed(dt, bias, dt_min, dt_max, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr):
        if HAS_DT_BIAS:
            dt = dt + bias
        if DT_SOFTPLUS:
            dt = _softplus(dt)
        return tl.minimum(tl.maximum(dt, dt_min), dt_max)

    @triton.jit
    def _chunk_program(c, A_ptr, dt_bias_ptr, L, nheads, headdim, d_state, chunk_size, heads_per_group,
                       HAS_DT_BIAS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
        """What a (chunk or position, batch * head, headdim block) program works on, for chunk c: batch
        row b, head h, its group g, the chunk's first token t0 and length, a2 = A[h] log2(e), h's dt bias
        (0 without one), and the headdim / d_state offsets and masks of its tile."""
        LOG2E: tl.constexpr = 1.4426950408889634
        bh = tl.program_id(1)
        pid_p = tl.program_id(2)
        b = (bh // nheads).to(tl.int64)
        h = bh % nheads
        g = h // heads_per_group
        t0 = c * chunk_size
        chunk_len = tl.minimum(chunk_size, L - t0)
        a2 = tl.load(A_ptr + h).to(tl.float32) * LOG2E
        bias = tl.zeros([], dtype=tl.float32)
        if HAS_DT_BIAS:
            bias = tl.load(dt_bias_ptr + h).to(tl.float32)
        offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        offs_n = tl.arange(0, BLOCK_N)
        return b, h, g, t0, chunk_len, a2, bias, pid_p, offs_p, offs_n, offs_p < headdim, offs_n < d_state

    @triton.jit
    def _state_from_zero(x_base, dt_base, B_base, t0, length, a2, bias, dt_min, dt_max,
                         s_x_l, s_x_p, s_dt_l, s_B_l, s_B_n, offs_p, offs_n, mask_p, mask_n,
                         HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
                         BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
        """The state reached from zero over tokens t0 .. t0+length-1, S[p, n] = sum_s exp(sum_{s<k} dt_k A)
        dt_s x_s[p] B_s[n] ([BLOCK_P, BLOCK_N] fp32), and the tokens' summed decay sum_k dt_k A log2(e)."""
        ar = tl.arange(0, BLOCK_T)
        S = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
        total = tl.zeros([], dtype=tl.float32)
        # Sub-blocks of BLOCK_T tokens: S <- exp(block decay) S + sum_s exp(decay s -> block end) dt_s x_s B_s^T
        for k0 in range(0, length, BLOCK_T):
            offs_t = k0 + ar
            mask_t = offs_t < length
            t = (t0 + offs_t).to(tl.int64)
            dt = tl.load(dt_base + t * s_dt_l, mask=mask_t, other=0.0).to(tl.float32)
            dt = _dt_processed(dt, bias, dt_min, dt_max, HAS_DT_BIAS, DT_SOFTPLUS)
            dt = tl.where(mask_t, dt, 0.0)
            da = dt * a2
            blk = tl.sum(da, axis=0)
            # decay from token s to the block end, sum_{k>s} da_k, summed directly over a [BLOCK_T, BLOCK_T]
            # mask: accurate where the weight is large (a difference of forward cumsums loses ~eps * |cumsum|
            # there), and no reverse scan (tl.associative_scan(reverse=True) has an open wrong-result report,
            # triton-lang/triton#4362)
            to_end = tl.sum(tl.where(ar[None, :] > ar[:, None], da[None, :], 0.0), axis=1)
            w = tl.exp2(to_end) * dt                                          # [BLOCK_T], in [0, dt]
            xt = tl.load(x_base + t[:, None] * s_x_l + offs_p[None, :] * s_x_p,
                         mask=mask_t[:, None] & mask_p[None, :], other=0.0).to(tl.float32)
            Bt = tl.load(B_base + t[:, None] * s_B_l + offs_n[None, :] * s_B_n,
                         mask=mask_t[:, None] & mask_n[None, :], other=0.0).to(tl.float32)
            S = S * tl.exp2(blk) + tl.dot(tl.trans(xt * w[:, None]), Bt, input_precision="ieee")
            total += blk
        return S, total

    @triton.jit
    def _ssd_chunk_state_kernel(
        x_ptr, dt_ptr, A_ptr, B_ptr, dt_bias_ptr, S_ptr, dAsum_ptr,
        L, nheads, headdim, d_state, chunk_size, heads_per_group, n_chunks, dt_min, dt_max,
        s_x_b, s_x_l, s_x_h, s_x_p,
        s_dt_b, s_dt_l, s_dt_h,
        s_B_b, s_B_l, s_B_g, s_B_n,
        HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
        BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        # S: [batch, n_chunks, nheads, headdim, d_state] fp32 contiguous: the chunk's state from zero.
        # dAsum: [batch, nheads, n_chunks] fp32: sum over the chunk of dt * A * log2(e).
        c = tl.program_id(0)
        b, h, g, t0, chunk_len, a2, bias, pid_p, offs_p, offs_n, mask_p, mask_n = _chunk_program(
            c, A_ptr, dt_bias_ptr, L, nheads, headdim, d_state, chunk_size, heads_per_group,
            HAS_DT_BIAS, BLOCK_P, BLOCK_N)
        S, total = _state_from_zero(
            x_ptr + b * s_x_b + h * s_x_h, dt_ptr + b * s_dt_b + h * s_dt_h, B_ptr + b * s_B_b + g * s_B_g,
            t0, chunk_len, a2, bias, dt_min, dt_max, s_x_l, s_x_p, s_dt_l, s_B_l, s_B_n,
            offs_p, offs_n, mask_p, mask_n, HAS_DT_BIAS, DT_SOFTPLUS, BLOCK_T, BLOCK_P, BLOCK_N)
        S_ptrs = (S_ptr + ((b * n_chunks + c) * nheads + h) * headdim * d_state
                  + offs_p[:, None] * d_state + offs_n[None, :])
        tl.store(S_ptrs, S, mask=mask_p[:, None] & mask_n[None, :])
        if pid_p == 0:
            tl.store(dAsum_ptr + (b * nheads + h) * n_chunks + c, total)

    @triton.jit
    def _ssd_state_passing_kernel(
        S_ptr, dAsum_ptr, h0_ptr, final_ptr,
        nheads, n_chunks, PN,
        HAS_H0: tl.constexpr, BLOCK: tl.constexpr,
    ):
        # S [batch, n_chunks, nheads, PN] in: chunk states; out (in place): the state entering chunk c.
        bh = tl.program_id(0)
        b = (bh // nheads).to(tl.int64)
        h = bh % nheads
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < PN
        if HAS_H0:
            state = tl.load(h0_ptr + (b * nheads + h) * PN + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            state = tl.zeros([BLOCK], dtype=tl.float32)
        for c in range(n_chunks):
            ptrs = S_ptr + ((b * n_chunks + c) * nheads + h) * PN + offs
            s_c = tl.load(ptrs, mask=mask, other=0.0)
            tl.store(ptrs, state, mask=mask)
            state = tl.exp2(tl.load(dAsum_ptr + (b * nheads + h) * n_chunks + c)) * state + s_c
        tl.store(final_ptr + (b * nheads + h) * PN + offs, state, mask=mask)

    @triton.jit
    def _ssd_position_state_kernel(
        x_ptr, dt_ptr, A_ptr, B_ptr, dt_bias_ptr, Hin_ptr, pos_ptr, st_ptr,
        L, nheads, headdim, d_state, chunk_size, heads_per_group, n_chunks, dt_min, dt_max,
        s_x_b, s_x_l, s_x_h, s_x_p,
        s_dt_b, s_dt_l, s_dt_h,
        s_B_b, s_B_l, s_B_g, s_B_n,
        s_st_b, s_st_k, s_st_h,
        HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
        BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        # Program (k, batch * head, headdim block): h_t at t = pos[k], from the state entering t's chunk c
        # (Hin, as the chunk scan reads it) and the chunk's tokens t0..t:
        # h_t = exp(sum_{t0<=k<=t} dt_k A) Hin[c] + (tokens t0..t from zero).
        k = tl.program_id(0).to(tl.int64)
        t = tl.load(pos_ptr + k)
        c = t // chunk_size
        b, h, g, t0, chunk_len, a2, bias, pid_p, offs_p, offs_n, mask_p, mask_n = _chunk_program(
            c, A_ptr, dt_bias_ptr, L, nheads, headdim, d_state, chunk_size, heads_per_group,
            HAS_DT_BIAS, BLOCK_P, BLOCK_N)
        S, total = _state_from_zero(
            x_ptr + b * s_x_b + h * s_x_h, dt_ptr + b * s_dt_b + h * s_dt_h, B_ptr + b * s_B_b + g * s_B_g,
            t0, t - t0 + 1, a2, bias, dt_min, dt_max, s_x_l, s_x_p, s_dt_l, s_B_l, s_B_n,
            offs_p, offs_n, mask_p, mask_n, HAS_DT_BIAS, DT_SOFTPLUS, BLOCK_T, BLOCK_P, BLOCK_N)
        tile = offs_p[:, None] * d_state + offs_n[None, :]
        mask_pn = mask_p[:, None] & mask_n[None, :]
        h_in = tl.load(Hin_ptr + ((b * n_chunks + c) * nheads + h) * headdim * d_state + tile, mask=mask_pn,
                       other=0.0)
        tl.store(st_ptr + b * s_st_b + k * s_st_k + h * s_st_h + tile, S + tl.exp2(total) * h_in, mask=mask_pn)

    @triton.jit
    def _ssd_chunk_scan_states_kernel(
        x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, dt_bias_ptr, Hin_ptr, pos_ptr, cstart_ptr, slot_ptr,
        y_ptr, st_ptr,
        L, nheads, headdim, d_state, chunk_size, heads_per_group, n_chunks, dt_min, dt_max,
        s_x_b, s_x_l, s_x_h, s_x_p,
        s_dt_b, s_dt_l, s_dt_h,
        s_B_b, s_B_l, s_B_g, s_B_n,
        s_C_b, s_C_l, s_C_g, s_C_n,
        s_D_h, s_D_p,
        s_y_b, s_y_l, s_y_h, s_y_p,
        s_st_b, s_st_k, s_st_h,
        HAS_D: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
        STATE_MODE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        # Hin: [batch, n_chunks, nheads, headdim, d_state] fp32, the state entering each chunk.
        # states: [batch, P, nheads, headdim, d_state], (p, n) contiguous.
        # List mode: pos = requested positions sorted and unique then a -1 sentinel, slot = their output
        # index k, cstart[c] = index in pos of the first position >= c * chunk_size.
        c = tl.program_id(0)
        b, h, g, t0, chunk_len, a2, bias, pid_p, offs_p, offs_n, mask_p, mask_n = _chunk_program(
            c, A_ptr, dt_bias_ptr, L, nheads, headdim, d_state, chunk_size, heads_per_group,
            HAS_DT_BIAS, BLOCK_P, BLOCK_N)
        mask_pn = mask_p[:, None] & mask_n[None, :]
        tile = offs_p[:, None] * d_state + offs_n[None, :]
        if HAS_D:
            Dv = tl.load(D_ptr + h * s_D_h + offs_p * s_D_p, mask=mask_p, other=0.0).to(tl.float32)
        state = tl.load(Hin_ptr + ((b * n_chunks + c) * nheads + h) * headdim * d_state + tile,
                        mask=mask_pn, other=0.0)

        # Scalar row pointers advance by one time stride per token; the per-element offsets (x_off, ...)
        # are loop-invariant, so the loop carries no tensor of 64-bit pointers (fewer registers).
        t_first = t0.to(tl.int64)
        x_row = x_ptr + b * s_x_b + t_first * s_x_l + h * s_x_h
        dt_row = dt_ptr + b * s_dt_b + t_first * s_dt_l + h * s_dt_h
        B_row = B_ptr + b * s_B_b + t_first * s_B_l + g * s_B_g
        C_row = C_ptr + b * s_C_b + t_first * s_C_l + g * s_C_g
        y_row = y_ptr + b * s_y_b + t_first * s_y_l + h * s_y_h
        st_head = st_ptr + b * s_st_b + h * s_st_h
        x_off = offs_p * s_x_p
        y_off = offs_p * s_y_p
        B_off = offs_n * s_B_n
        C_off = offs_n * s_C_n
        if STATE_MODE == 1:
            st_row = st_head + t_first * s_st_k
        if STATE_MODE == 2:
            cur = tl.load(cstart_ptr + c)
            next_pos = tl.load(pos_ptr + cur)

        # Prefetch token 0 of the chunk (chunk_len >= 1 always).
        x_nx, dt_nx, B_nx, C_nx = _load_step(x_row, dt_row, B_row, C_row, x_off, B_off, C_off, mask_p, True, mask_n,
                                             True)
        for k in range(chunk_len):
            x_t, dt_t, B_t, C_t = _as_fp32(x_nx, dt_nx, B_nx, C_nx)
            # Issue the loads of token k+1 now; they complete while token k computes.
            x_row, dt_row, B_row, C_row, x_nx, dt_nx, B_nx, C_nx = _next_step(
                x_row, dt_row, B_row, C_row, s_x_l, s_dt_l, s_B_l, s_C_l, x_off, B_off, C_off, mask_p, True, mask_n,
                k, chunk_len)

            dt_t = _dt_processed(dt_t, bias, dt_min, dt_max, HAS_DT_BIAS, DT_SOFTPLUS)
            # h_t = exp(dt A) h_{t-1} + (dt x_t) B_t^T ;  y_t = h_t C_t + D x_t
            state = tl.exp2(dt_t * a2) * state + (dt_t * x_t)[:, None] * B_t[None, :]
            y_t = tl.sum(state * C_t[None, :], axis=1)
            if HAS_D:
                y_t += Dv * x_t
            tl.store(y_row + y_off, y_t, mask=mask_p)
            y_row += s_y_l
            if STATE_MODE == 1:
                tl.store(st_row + tile, state, mask=mask_pn)
                st_row += s_st_k
            if STATE_MODE == 2:
                if t0 + k == next_pos:
                    slot = tl.load(slot_ptr + cur).to(tl.int64)
                    tl.store(st_head + slot * s_st_k + tile, state, mask=mask_pn)
                    cur += 1
                    next_pos = tl.load(pos_ptr + cur)


def _default_config(headdim: int, d_state: int) -> tuple[int, int]:
    """(BLOCK_P, num_warps) of the chunk-scan kernel: a [BLOCK_P, d_state] fp32 tile of ~2048 values
    (16 per thread on 4 warps), so that a requested state is an 8 KB contiguous store per token.
    Compiled for sm_90 by Triton 3.6 + ptxas (headdim 64, d_state 128: BLOCK_P 16, 4 warps) it uses
    64 registers without spills; not yet tuned on a GPU (benchmarks/states.py --mixer mamba2 --sweep)."""
    block_p, block_n = _row_block(headdim, d_state, 2048)
    num_warps = 4 if block_p * block_n >= 1024 else (2 if block_p * block_n >= 256 else 1)
    return block_p, num_warps


def _prepare(x, dt, A, B, C, chunk_size, D, dt_bias, initial_states, dt_limit, caller="ssd_scan_states"):
    """Validate, and bring the inputs to the layouts and dtypes the kernels read. Returns the dims
    ``(batch, L, H, P, G, N)``, the tensors ``(x, dt, A, B, C, D, dt_bias, h0)`` and ``(dt_min, dt_max)``."""
    dims = _check_inputs(x, dt, A, B, C, chunk_size, D, dt_bias, initial_states, dt_limit)
    for name, t in (("x", x), ("dt", dt), ("B", B), ("C", C)):
        _check_float(name, t, _KERNEL_DTYPES)
    _require_triton(x.device, caller)
    A = A.float().contiguous()
    dt_bias = None if dt_bias is None else dt_bias.float().contiguous()
    if D is not None:
        D = D.float().contiguous()
    h0 = None if initial_states is None else initial_states.float().contiguous()
    # Per-token loads in the chunk scan read the last dimension of x, B, C: keep it contiguous.
    x = x if x.stride(-1) == 1 else x.contiguous()
    B = B if B.stride(-1) == 1 else B.contiguous()
    C = C if C.stride(-1) == 1 else C.contiguous()
    return dims, (x, dt, A, B, C, D, dt_bias, h0), (float(dt_limit[0]), float(dt_limit[1]))


def _state_block(P: int, N: int, T: int) -> tuple[int, int, int]:
    """(BLOCK_T, BLOCK_P, BLOCK_N) of the from-zero state kernels (tl.dot needs every dimension >= 16);
    accumulator [BLOCK_P, BLOCK_N] <= 4096 fp32."""
    block_n = max(16, _next_pow2(N))
    block_p = max(16, min(64, _next_pow2(P), 4096 // block_n))
    return max(16, min(64 if block_n <= 64 else 32, _next_pow2(T))), block_p, block_n


def _boundary_states(dims, tensors, T: int, dt_softplus: bool, dt_limits):
    """Steps 1-2: the state entering each chunk ``[batch, n_chunks, H, P, N]`` fp32 and the final state
    ``[batch, H, P, N]`` fp32."""
    batch, L, H, P, G, N = dims
    x, dt, A, B, _, _, dt_bias, h0 = tensors
    n_chunks = -(-L // T)
    S = torch.empty(batch, n_chunks, H, P, N, device=x.device, dtype=torch.float32)
    dAsum = torch.empty(batch, H, n_chunks, device=x.device, dtype=torch.float32)
    final = torch.empty(batch, H, P, N, device=x.device, dtype=torch.float32)
    bt, bp, bn = _state_block(P, N, T)
    _ssd_chunk_state_kernel[(n_chunks, batch * H, triton.cdiv(P, bp))](
        x, dt, A, B, dt_bias if dt_bias is not None else A, S, dAsum,
        L, H, P, N, T, H // G, n_chunks, *dt_limits,
        *x.stride(), *dt.stride(), *B.stride(),
        HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=bool(dt_softplus),
        BLOCK_T=bt, BLOCK_P=bp, BLOCK_N=bn, num_warps=4,
    )
    # S becomes the state entering each chunk
    PN = P * N
    block = min(1024, _next_pow2(PN))
    _ssd_state_passing_kernel[(batch * H, triton.cdiv(PN, block))](
        S, dAsum, h0 if h0 is not None else final, final, H, n_chunks, PN,
        HAS_H0=h0 is not None, BLOCK=block, num_warps=4,
    )
    return S, final


def _ssd_triton_impl(x, dt, A, B, C, chunk_size, D, dt_bias, dt_softplus, initial_states, state_positions,
                     dt_limit, block_p: Optional[int] = None, num_warps: Optional[int] = None):
    """Validate, allocate and launch the three kernels. Returns (y, states or None, final state).
    ``block_p``, ``num_warps``: tuning knobs of the chunk scan, for benchmarks/states.py --sweep."""
    dims, tensors, dt_limits = _prepare(x, dt, A, B, C, chunk_size, D, dt_bias, initial_states, dt_limit)
    batch, L, H, P, G, N = dims
    x, dt, A, B, C, D, dt_bias, _ = tensors
    device = x.device
    mode, pos, n_pos = _resolve_positions(state_positions, L)
    T = int(chunk_size)
    S, final = _boundary_states(dims, tensors, T, dt_softplus, dt_limits)
    n_chunks = S.shape[1]
    y = torch.empty(batch, L, H, P, device=device, dtype=x.dtype)
    # 3. chunk scan with states
    states = None
    pos_arr = cstart = slot = final  # dummies, never read unless list mode
    if mode == _MODE_ALL:
        states = torch.empty(batch, L, H, P, N, device=device, dtype=torch.float32)
    elif mode == _MODE_LIST:
        uniq, inv = torch.unique(pos, return_inverse=True)              # sorted; inv maps back to the order given
        duplicates = uniq.numel() < n_pos
        if duplicates:
            slots = torch.arange(uniq.numel())
        else:
            slots = torch.empty_like(uniq)
            slots[inv] = torch.arange(n_pos)
        starts = torch.searchsorted(uniq, torch.arange(n_chunks) * T)
        pos_arr = torch.cat([uniq, uniq.new_full((1,), -1)]).to(device=device, dtype=torch.int32)
        slot = torch.cat([slots, slots.new_zeros(1)]).to(device=device, dtype=torch.int32)
        cstart = starts.to(device=device, dtype=torch.int32)
        states = torch.empty(batch, uniq.numel(), H, P, N, device=device, dtype=torch.float32)
    st = states if states is not None else final
    cfg_p, cfg_w = _default_config(P, N)
    block_p = block_p or cfg_p
    num_warps = num_warps or cfg_w
    D_strides = (0, 0) if D is None else ((D.stride(0), 0) if D.dim() == 1 else tuple(D.stride()))
    st_strides = (st.stride(0), st.stride(1), st.stride(2)) if states is not None else (0, 0, 0)
    _ssd_chunk_scan_states_kernel[(n_chunks, batch * H, triton.cdiv(P, block_p))](
        x, dt, A, B, C, D if D is not None else A, dt_bias if dt_bias is not None else A, S,
        pos_arr, cstart, slot, y, st,
        L, H, P, N, T, H // G, n_chunks, *dt_limits,
        *x.stride(), *dt.stride(), *B.stride(), *C.stride(), *D_strides, *y.stride(), *st_strides,
        HAS_D=D is not None, HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=bool(dt_softplus),
        STATE_MODE=mode, BLOCK_P=block_p, BLOCK_N=_next_pow2(N), num_warps=num_warps,
    )
    if mode == _MODE_LIST and duplicates:
        states = states.index_select(1, inv.to(device))
    return y, states, final


def ssd_states_at(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    chunk_size: int,
    state_positions: StatePositions,
    dt_bias: Optional[torch.Tensor] = None,
    dt_softplus: bool = True,
    initial_states: Optional[torch.Tensor] = None,
    dt_limit: tuple[float, float] = (0.0, _INF),
) -> tuple[torch.Tensor, torch.Tensor]:
    """The SSM states at a few positions and the final state, without y (Triton; inference only).

    For a caller that has y already (``mamba_chunk_scan_combined``'s, as the CUDA backend does): the
    chunk-boundary states (steps 1-2 of the module docstring), then one program per requested position
    that runs its chunk from the boundary state up to the position, O(chunk_size) tokens each, so the
    cost is one pass over x, dt, B plus ~chunk_size / 2 tokens per position; no token loop over the whole
    sequence. Exact in fp32 like :func:`ssd_scan_states` (states do not depend on C or D).

    Args: as :func:`ssd_scan_states` (``state_positions``: a list / 1-D integer tensor / int, any order,
        repeats allowed, negatives from the end; ``"all"`` also works but :func:`ssd_scan_states` is the
        faster way to every state).
    Returns:
        ``(states [batch, P, nheads, headdim, d_state], final_state [batch, nheads, headdim, d_state])``,
        both float32.
    Raises:
        ValueError: as :func:`ssd_scan_states`; TritonUnavailable: not a CUDA tensor (or no interpreter).
    """
    dims, tensors, dt_limits = _prepare(x, dt, A, B, B, chunk_size, None, dt_bias, initial_states, dt_limit,
                                         "ssd_states_at")
    batch, L, H, P, G, N = dims
    x, dt, A, B, _, _, dt_bias, _ = tensors
    mode, pos, _ = _resolve_positions(state_positions, L)
    if mode == _MODE_NONE:
        raise ValueError("ssd_states_at needs positions (a list, a 1-D integer tensor, an int or 'all'), got None")
    if mode == _MODE_ALL:
        pos = torch.arange(L)
    T = int(chunk_size)
    S, final = _boundary_states(dims, tensors, T, dt_softplus, dt_limits)
    states = torch.empty(batch, pos.numel(), H, P, N, device=x.device, dtype=torch.float32)
    bt, bp, bn = _state_block(P, N, T)
    _ssd_position_state_kernel[(pos.numel(), batch * H, triton.cdiv(P, bp))](
        x, dt, A, B, dt_bias if dt_bias is not None else A, S, pos.to(device=x.device, dtype=torch.int32), states,
        L, H, P, N, T, H // G, S.shape[1], *dt_limits,
        *x.stride(), *dt.stride(), *B.stride(), *states.stride()[:3],
        HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=bool(dt_softplus),
        BLOCK_T=bt, BLOCK_P=bp, BLOCK_N=bn, num_warps=4,
    )
    return states, final


class _SSDScanStates(torch.autograd.Function):
    """Triton forward; backward recomputes with :func:`ssd_scan_states_torch` and back-propagates through it."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, dt_bias, initial_states, chunk_size, dt_softplus, state_positions,
                dt_limit):
        y, states, final = _ssd_triton_impl(x, dt, A, B, C, chunk_size, D, dt_bias, dt_softplus,
                                            initial_states, state_positions, dt_limit)
        ctx.save_for_backward(x, dt, A, B, C, D, dt_bias, initial_states)
        ctx.args = (chunk_size, dt_softplus, state_positions, dt_limit)
        ctx.set_materialize_grads(False)
        return y, states, final

    @staticmethod
    def backward(ctx, dy, dstates, dfinal):
        inputs = ctx.saved_tensors
        chunk_size, dt_softplus, state_positions, dt_limit = ctx.args
        needs = ctx.needs_input_grad[:8]
        with torch.enable_grad():
            leaves = [None if t is None else t.detach().requires_grad_(bool(n)) for t, n in zip(inputs, needs)]
            x, dt, A, B, C, D, dt_bias, h0 = leaves
            outs = ssd_scan_states_torch(x, dt, A, B, C, chunk_size, D, dt_bias, dt_softplus, h0,
                                         state_positions if dstates is not None else None, dt_limit)
            pairs = [(o, g) for o, g in zip(outs, (dy, dstates, dfinal)) if g is not None and o is not None]
            wrt = [t for t, n in zip(leaves, needs) if n and t is not None]
            grads = torch.autograd.grad([o for o, _ in pairs], wrt, [g.to(o.dtype) for o, g in pairs],
                                        allow_unused=True) if pairs and wrt else []
        it = iter(grads)
        out = [next(it) if n and t is not None else None for t, n in zip(leaves, needs)]
        return (*out, None, None, None, None)


def ssd_scan_states(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: Optional[torch.Tensor] = None,
    dt_bias: Optional[torch.Tensor] = None,
    dt_softplus: bool = True,
    initial_states: Optional[torch.Tensor] = None,
    state_positions: StatePositions = None,
    dt_limit: tuple[float, float] = (0.0, _INF),
    backend: str = "auto",
) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """Mamba-2 (SSD) chunked scan that also returns the SSM states h_t.

    Same layouts and y as ``mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined(x, dt, A, B, C,
    chunk_size, D, z=None, dt_bias, initial_states, dt_softplus=..., dt_limit=...)`` (no z gate), plus states.
    Note the default ``dt_softplus=True`` (mamba_ssm's default is False): pass ``dt_softplus=False`` when dt
    is already the step size.

    Args:
        x: ``[batch, L, nheads, headdim]``; fp32, bf16 or fp16 (float64 only with the torch backend).
        dt: ``[batch, L, nheads]`` step size before ``dt_bias`` / softplus / ``dt_limit``.
        A: ``[nheads]`` negative (``-exp(A_log)``).
        B, C: ``[batch, L, ngroups, d_state]``; ngroups divides nheads (heads share their group's B, C).
        chunk_size: tokens per chunk (any positive int; L need not be a multiple).
        D: ``[nheads]`` or ``[nheads, headdim]`` skip, or None.
        dt_bias: ``[nheads]`` or None. dt_softplus: softplus(dt + dt_bias) (threshold 20, as mamba_ssm).
        initial_states: ``[batch, nheads, headdim, d_state]`` state before token 0 (h_{-1}), or None (zeros).
        state_positions: None (no states), ``"all"``, or a list / 1-D integer tensor (or one int) of
            positions in any order, repeats allowed, negatives counting from the end; ``states[:, k]`` is h
            at the k-th one.
        dt_limit: ``(min, max)`` clamp applied to the processed dt (always, as mamba_ssm: the default
            ``(0, inf)`` maps a negative dt to 0).
        backend: ``"auto"`` (Triton for CUDA tensors of fp32/bf16/fp16 when Triton is available, or
            anywhere under ``TRITON_INTERPRET=1``; else PyTorch), ``"triton"`` or ``"torch"``.
    Returns:
        ``(y, states, final_state)``: y ``[batch, L, nheads, headdim]`` in x's dtype; states
        ``[batch, P, nheads, headdim, d_state]`` float32 (P = L for ``"all"``) or None; final_state
        ``[batch, nheads, headdim, d_state]`` float32, h_{L-1}. (float64 for float64 inputs on the torch path.)
    Gradients flow through all three outputs to every tensor input; on the Triton path the backward
    recomputes the forward in PyTorch (:func:`ssd_scan_states_torch`) and differentiates that.

    Raises:
        ValueError: wrong shapes, dtypes, devices, chunk size or positions (the message says what is allowed).
        TritonUnavailable: ``backend="triton"`` without Triton, or on non-CUDA tensors without the interpreter.
    """
    backend = _resolve_backend(backend, lambda: isinstance(x, torch.Tensor) and triton_available(x.device)
                               and x.dtype in _KERNEL_DTYPES)
    if backend == "torch":
        return ssd_scan_states_torch(x, dt, A, B, C, chunk_size, D, dt_bias, dt_softplus, initial_states,
                                     state_positions, dt_limit)
    if needs_grad(x, dt, A, B, C, D, dt_bias, initial_states):
        return _SSDScanStates.apply(x, dt, A, B, C, D, dt_bias, initial_states, chunk_size, dt_softplus,
                                    state_positions, dt_limit)
    return _ssd_triton_impl(x, dt, A, B, C, chunk_size, D, dt_bias, dt_softplus, initial_states,
                            state_positions, dt_limit)
