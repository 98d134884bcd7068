"""Mamba-1 effective ("hidden") attention: the L x L matrix that the selective scan applies per channel.

Unrolling h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t (h_{-1} = 0) gives y_i = sum_j M[c, i, j] u_j[c] + D u_i,

    M[b, c, i, j] = sum_n C_i[n] * exp(sum_{k=j+1..i} dt_k[c] * A[c, n]) * B_j[n] * dt_j[c]   for j <= i,
    M[b, c, i, j] = 0                                                                           for j > i

(Ali, Zimerman & Wolf, "The Hidden Attention of Mamba Models", arXiv 2403.01590). With the cumulative
step Delta[c, t] = sum_{k<=t} dt_k[c], the exponent is A[c, n] * (Delta_i - Delta_j) <= 0 (A < 0, dt >= 0),
so every exp here is of a non-positive number and cannot overflow.

Two implementations, same API (:func:`effective_attention` dispatches on the device):

* PyTorch (CPU or GPU, float32 or float64): channels in chunks, state dimensions one at a time, so the
  largest temporary is ``[batch, channel_chunk, L, L]``; the ``[.., d_state, L, L]`` tensor never exists.
* Triton (CUDA): one program per (i-tile, j-tile) below the diagonal (and per channel, unless reduced).
  For an off-diagonal tile (all j < all i) the exponent splits at r = the last j of the tile:
  exp(A (Delta_i - Delta_j)) = exp(A (Delta_i - Delta_r)) * exp(A (Delta_r - Delta_j)), both factors <= 1,
  so the tile is a [BT, d_state] x [d_state, BT] matrix product (fp32, no TF32). Diagonal tiles use the
  direct per-element exp. Delta differences come from tile-local fp32 cumulative sums plus an fp64 prefix
  over tiles, so precision does not degrade with L. ``reduce="sum"`` accumulates channels in registers
  and never holds ``[batch, channels, L, L]``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .triton_scan import _require_triton, triton, triton_available

if triton is not None:
    import triton.language as tl

__all__ = ["effective_attention", "effective_attention_torch", "effective_attention_triton"]

Channels = Union[None, Sequence[int], torch.Tensor]
_REDUCE = (None, "sum", "abs_sum")
_FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


# ---------------------------------------------------------------------------------------------
# Shared input handling
# ---------------------------------------------------------------------------------------------
def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def _prepare(delta, A, B, C, delta_bias, delta_softplus, channels, reduce, out_dtype, compute_dtype):
    """Validate; return dt ``[batch, c, L]``, A ``[c, n]`` (selected channels, compute dtype), B, C
    ``[batch, n, L]`` (compute dtype) and the channel index ``[c]``."""
    for name, t in (("delta", delta), ("A", A), ("B", B), ("C", C)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _FLOATS:
            raise ValueError(f"{name} has dtype {t.dtype}; allowed: float32, float64, bfloat16, float16 "
                             "(real A only)")
    if delta.dim() != 3:
        raise ValueError(f"delta must be [batch, d_inner, L], got {_shape(delta)}")
    batch, d_inner, L = delta.shape
    if L == 0 or batch == 0 or d_inner == 0:
        raise ValueError(f"delta has an empty dimension: {_shape(delta)}")
    if A.dim() != 2 or A.shape[0] != d_inner:
        raise ValueError(f"A must be [d_inner, d_state] with d_inner={d_inner}, got {_shape(A)}")
    d_state = A.shape[1]
    bc = []
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 4:
            if t.shape[1] != 1:
                raise ValueError(f"{name} of shape {_shape(t)} has {t.shape[1]} groups; "
                                 "only one group is supported")
            t = t[:, 0]
        if t.dim() != 3 or tuple(t.shape) != (batch, d_state, L):
            raise ValueError(f"{name} must be [batch, d_state, L] = [{batch}, {d_state}, {L}] "
                             f"(or [batch, 1, d_state, L]), got {_shape(t)}")
        bc.append(t)
    B, C = bc
    if delta_bias is not None and tuple(delta_bias.shape) != (d_inner,):
        raise ValueError(f"delta_bias must be [d_inner] = [{d_inner}], got {_shape(delta_bias)}")
    if reduce not in _REDUCE:
        raise ValueError(f"reduce must be one of None, 'sum', 'abs_sum', got {reduce!r}")
    if out_dtype not in _FLOATS:
        raise ValueError(f"out_dtype must be a floating dtype, got {out_dtype}")
    device = delta.device
    for name, t in (("A", A), ("B", B), ("C", C), ("delta_bias", delta_bias)):
        if t is not None and t.device != device:
            raise ValueError(f"all tensors must be on one device: delta is on {device}, {name} on {t.device}")

    if channels is None:
        idx = torch.arange(d_inner, device=device)
    else:
        idx = torch.as_tensor(channels, device=device)
        if idx.dtype in (torch.bool,) or idx.is_floating_point() or idx.dim() != 1 or idx.numel() == 0:
            raise ValueError("channels must be a non-empty 1-D list / LongTensor of channel indices, got "
                             f"{idx.dtype} of shape {_shape(idx)}")
        idx = idx.long()
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= d_inner:
            raise ValueError(f"channels must lie in [0, {d_inner}), got min {lo}, max {hi}")

    dt = delta.index_select(1, idx).to(compute_dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.index_select(0, idx).to(compute_dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)  # threshold 20, as mamba_ssm
    A_sel = A.index_select(0, idx).to(compute_dtype)
    return dt, A_sel, B.to(compute_dtype), C.to(compute_dtype), idx


# ---------------------------------------------------------------------------------------------
# PyTorch implementation (reference; CPU fallback)
# ---------------------------------------------------------------------------------------------
def effective_attention_torch(
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    channels: Channels = None,
    reduce: Optional[str] = None,
    out_dtype: torch.dtype = torch.float32,
    max_chunk_elems: int = 1 << 24,
) -> torch.Tensor:
    """Effective attention in PyTorch; float64 when any of delta, A, B, C is float64, else float32.

    Same arguments and result as :func:`effective_attention`. Channels are processed
    ``max_chunk_elems // (batch * L * L)`` at a time (at least one), state dimensions one at a time:
    peak extra memory is a few ``[batch, chunk, L, L]`` tensors.
    """
    compute = torch.float64 if torch.float64 in (delta.dtype, A.dtype, B.dtype, C.dtype) else torch.float32
    dt, A_sel, B, C, _ = _prepare(delta, A, B, C, delta_bias, delta_softplus, channels, reduce,
                                  out_dtype, compute)
    batch, n_chan, L = dt.shape
    d_state = A_sel.shape[1]
    # Cumulative step in float64 so Delta_i - Delta_j keeps its precision for long sequences.
    cum = torch.cumsum(dt.double(), dim=-1)                           # [batch, c, L]
    causal = torch.ones(L, L, dtype=torch.bool, device=dt.device).tril()   # [i, j]: j <= i
    chunk = max(1, min(n_chan, max_chunk_elems // max(1, batch * L * L)))
    out = None
    if reduce is None:
        out = torch.empty(batch, n_chan, L, L, dtype=out_dtype, device=dt.device)
    for c0 in range(0, n_chan, chunk):
        c1 = min(c0 + chunk, n_chan)
        # gap[b, c, i, j] = Delta_i - Delta_j (>= 0 on and below the diagonal; clamped above it)
        gap = (cum[:, c0:c1, :, None] - cum[:, c0:c1, None, :]).clamp_min_(0).to(compute)
        bdt = B[:, None, :, :] * dt[:, c0:c1, None, :]                  # [batch, c, n, L]: B_j dt_j
        m = torch.zeros(batch, c1 - c0, L, L, dtype=compute, device=dt.device)
        for n in range(d_state):
            decay = torch.exp(A_sel[c0:c1, n, None, None] * gap)        # [batch, c, i, j], <= 1
            m += C[:, None, n, :, None] * decay * bdt[:, :, n, None, :]
        m.masked_fill_(~causal, 0.0)
        if reduce is None:
            out[:, c0:c1] = m.to(out_dtype)
        else:
            part = (m if reduce == "sum" else m.abs()).sum(1)
            out = part if out is None else out + part
    return out.to(out_dtype)


# ---------------------------------------------------------------------------------------------
# Triton implementation
# ---------------------------------------------------------------------------------------------
if triton is not None:

    @triton.jit
    def _eff_attn_kernel(
        dt_ptr, pre_ptr, A_ptr, B_ptr, C_ptr, ti_ptr, tj_ptr, out_ptr,
        L, n_chan, d_state, chan_per_prog,
        s_dt_b, s_dt_c,
        s_pre_b, s_pre_c,
        s_A_c,
        s_B_b, s_B_n, s_B_l,
        s_C_b, s_C_n, s_C_l,
        s_o_g, s_o_b, s_o_c, s_o_i, s_o_j,
        REDUCE: tl.constexpr,  # 0: one channel per program, 1: sum, 2: abs_sum
        BT: tl.constexpr, BN: tl.constexpr,
    ):
        # dt [batch, c, L] fp32 (time contiguous); pre [batch, c, n_tiles + 1] fp64 exclusive prefix
        # of per-tile sums of dt; A [c, n] fp32 (n contiguous); out [groups, batch, c, L, L].
        LOG2E: tl.constexpr = 1.4426950408889634
        pair = tl.program_id(0)
        grp = tl.program_id(1)
        b = tl.program_id(2).to(tl.int64)
        ki = tl.load(ti_ptr + pair)
        kj = tl.load(tj_ptr + pair)
        ar = tl.arange(0, BT)
        offs_i = ki * BT + ar
        offs_j = kj * BT + ar
        mask_i = offs_i < L
        mask_j = offs_j < L
        offs_n = tl.arange(0, BN)
        mask_n = offs_n < d_state
        # C_i [BT, BN] and B_j [BT, BN] are shared by all channels.
        C_i = tl.load(C_ptr + b * s_C_b + offs_i[:, None] * s_C_l + offs_n[None, :] * s_C_n,
                      mask=mask_i[:, None] & mask_n[None, :], other=0.0)
        B_j = tl.load(B_ptr + b * s_B_b + offs_j[:, None] * s_B_l + offs_n[None, :] * s_B_n,
                      mask=mask_j[:, None] & mask_n[None, :], other=0.0)
        causal = offs_j[None, :] <= offs_i[:, None]
        acc = tl.zeros([BT, BT], dtype=tl.float32)
        c_lo = grp * chan_per_prog
        c_hi = tl.minimum(c_lo + chan_per_prog, n_chan)
        for c in range(c_lo, c_hi):
            c64 = tl.cast(c, tl.int64)
            dt_base = dt_ptr + b * s_dt_b + c64 * s_dt_c
            dt_i = tl.load(dt_base + offs_i, mask=mask_i, other=0.0)
            dt_j = tl.load(dt_base + offs_j, mask=mask_j, other=0.0)
            a2 = tl.load(A_ptr + c64 * s_A_c + offs_n, mask=mask_n, other=0.0) * LOG2E   # [BN], <= 0
            cum_i = tl.cumsum(dt_i, axis=0)           # Delta_i - Delta_{start of tile ki - 1}
            cum_j = tl.cumsum(dt_j, axis=0)
            if ki == kj:
                # Diagonal tile: exp(A (cum_i - cum_j)) element by element, one state dim at a time.
                gap = tl.maximum(cum_i[:, None] - cum_j[None, :], 0.0)                     # [BT, BT]
                m = tl.zeros([BT, BT], dtype=tl.float32)
                for n in range(d_state):
                    a2_n = tl.load(A_ptr + c64 * s_A_c + n) * LOG2E
                    c_n = tl.load(C_ptr + b * s_C_b + offs_i * s_C_l + n * s_C_n, mask=mask_i, other=0.0)
                    b_n = tl.load(B_ptr + b * s_B_b + offs_j * s_B_l + n * s_B_n, mask=mask_j, other=0.0)
                    m += c_n[:, None] * tl.exp2(a2_n * gap) * (b_n * dt_j)[None, :]
                m = tl.where(causal, m, 0.0)
            else:
                # Off-diagonal (kj < ki): split the decay at r = last position of tile kj.
                pre_base = pre_ptr + b * s_pre_b + c64 * s_pre_c
                between = (tl.load(pre_base + ki) - tl.load(pre_base + kj + 1)).to(tl.float32)  # >= 0
                to_r = tl.maximum(tl.sum(dt_j, axis=0) - cum_j, 0.0)     # Delta_r - Delta_j >= 0
                # left = C_i e^{A (Delta_i - Delta_r)}, right = B_j e^{A (Delta_r - Delta_j)} dt_j
                left = C_i * tl.exp2(a2[None, :] * (between + cum_i)[:, None])
                right = B_j * (tl.exp2(a2[None, :] * to_r[:, None]) * dt_j[:, None])
                m = tl.dot(left, tl.trans(right), input_precision="ieee")
            if REDUCE == 0:
                tl.store(out_ptr + b * s_o_b + c64 * s_o_c + offs_i[:, None] * s_o_i
                         + offs_j[None, :] * s_o_j, m, mask=mask_i[:, None] & mask_j[None, :])
            elif REDUCE == 1:
                acc += m
            else:
                acc += tl.abs(m)
        if REDUCE != 0:
            tl.store(out_ptr + grp.to(tl.int64) * s_o_g + b * s_o_b + offs_i[:, None] * s_o_i
                     + offs_j[None, :] * s_o_j, acc, mask=mask_i[:, None] & mask_j[None, :])


def effective_attention_triton(
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    channels: Channels = None,
    reduce: Optional[str] = None,
    out_dtype: torch.dtype = torch.float32,
    block: int = 64,
) -> torch.Tensor:
    """Effective attention with the tiled Triton kernel (CUDA tensors); fp32 arithmetic.

    Same arguments and result as :func:`effective_attention`; ``block`` is the tile size (a power
    of two >= 16). Extra memory besides the output: dt ``[batch, c, L]`` and per-tile prefixes, plus,
    for a reduced map at short L, ``[groups, batch, L, L]`` partial sums over channel groups.
    """
    if block < 16 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 16, got {block}")
    dt, A_sel, B, C, _ = _prepare(delta, A, B, C, delta_bias, delta_softplus, channels, reduce,
                                  out_dtype, torch.float32)
    _require_triton(dt.device, "effective_attention_triton")
    batch, n_chan, L = dt.shape
    d_state = A_sel.shape[1]
    device = dt.device
    dt = dt.contiguous()
    A_sel = A_sel.contiguous()
    n_tiles = triton.cdiv(L, block)
    # pre[b, c, k] = sum of dt over tiles < k, in fp64 (exclusive prefix over tiles).
    padded = F.pad(dt.double(), (0, n_tiles * block - L))
    tile_sums = padded.view(batch, n_chan, n_tiles, block).sum(-1)
    pre = F.pad(torch.cumsum(tile_sums, dim=-1), (1, 0)).contiguous()        # [batch, c, n_tiles + 1]
    ti, tj = torch.tril_indices(n_tiles, n_tiles, device=device).to(torch.int32)
    n_pairs = ti.numel()

    if reduce is None:
        out = torch.zeros(batch, n_chan, L, L, dtype=out_dtype, device=device)
        groups, chan_per_prog, code = n_chan, 1, 0
        s_o = (0, *out.stride())
        target = out
    else:
        # Enough programs to fill the GPU: split channels into groups when there are few tiles.
        sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
        want = 4 * sms
        groups = max(1, min(n_chan, -(-want // (n_pairs * batch))))
        chan_per_prog = -(-n_chan // groups)
        groups = -(-n_chan // chan_per_prog)
        code = 1 if reduce == "sum" else 2
        target = torch.zeros(groups, batch, L, L, device=device,
                             dtype=torch.float32 if groups > 1 else out_dtype)
        s_o = (target.stride(0), target.stride(1), 0, target.stride(2), target.stride(3))
    grid = (n_pairs, groups, batch)
    _eff_attn_kernel[grid](
        dt, pre, A_sel, B, C, ti, tj, target,
        L, n_chan, d_state, chan_per_prog,
        dt.stride(0), dt.stride(1), pre.stride(0), pre.stride(1), A_sel.stride(0),
        *B.stride(), *C.stride(), *s_o,
        REDUCE=code, BT=block, BN=max(16, 1 << max(0, (d_state - 1).bit_length())),
        num_warps=4,
    )
    if reduce is None:
        return out
    return target[0] if groups == 1 else target.sum(0).to(out_dtype)


def effective_attention(
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    channels: Channels = None,
    reduce: Optional[str] = None,
    out_dtype: torch.dtype = torch.float32,
    backend: str = "auto",
) -> torch.Tensor:
    """Mamba-1 effective attention M[b, c, i, j] (module docstring has the formula).

    Args:
        delta: ``[batch, d_inner, L]`` step size before ``delta_bias`` / softplus (selective_scan_fn layout).
        A: ``[d_inner, d_state]`` real, negative.
        B, C: ``[batch, d_state, L]`` or ``[batch, 1, d_state, L]``.
        delta_bias: ``[d_inner]`` or None; delta_softplus: apply softplus to ``delta + delta_bias``.
        channels: None (all channels) or a 1-D LongTensor / list of channel indices to compute.
        reduce: None -> ``[batch, c, L, L]`` per channel; ``"sum"`` -> ``[batch, L, L]`` = sum over
            channels; ``"abs_sum"`` -> ``[batch, L, L]`` = sum over channels of |M|. A reduced map never
            holds the per-channel tensor.
        out_dtype: dtype of the result.
        backend: ``"auto"`` (Triton for CUDA tensors when available, else PyTorch), ``"triton"``
            or ``"torch"``.
    Returns:
        M (dimensionless weights: y_i = sum_j M[c, i, j] u_j + D u_i), zero above the diagonal.
    """
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    if backend == "auto":
        use_triton = isinstance(delta, torch.Tensor) and delta.is_cuda and triton_available(delta.device)
        backend = "triton" if use_triton else "torch"
    fn = effective_attention_triton if backend == "triton" else effective_attention_torch
    return fn(delta, A, B, C, delta_bias=delta_bias, delta_softplus=delta_softplus, channels=channels,
              reduce=reduce, out_dtype=out_dtype)
