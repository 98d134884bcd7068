"""Effective ("hidden") attention: the L x L matrix that the scan applies, per channel (Mamba-1) or per
head (Mamba-2 / SSD: :func:`ssd_effective_attention`, at the end of this module).

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

from .triton_scan import (_check_float, _check_same_device, _require_triton, _resolve_backend, _shape, triton,
                          triton_available)

if triton is not None:
    import triton.language as tl

__all__ = ["effective_attention", "effective_attention_torch", "effective_attention_triton",
           "ssd_effective_attention", "ssd_effective_attention_torch", "ssd_effective_attention_triton"]

Channels = Union[None, Sequence[int], torch.Tensor]
_REDUCE = (None, "sum", "abs_sum")
_FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


# ---------------------------------------------------------------------------------------------
# Shared input handling
# ---------------------------------------------------------------------------------------------
def _check_dtypes(named, note: str = "") -> None:
    """Each (name, tensor) a tensor of a dtype in _FLOATS (:func:`_check_float`'s message, plus ``note``)."""
    for name, t in named:
        try:
            _check_float(name, t, _FLOATS)
        except ValueError as e:
            raise ValueError(f"{e}{note}") from None


def _check_reduce(reduce, out_dtype) -> None:
    if reduce not in _REDUCE:
        raise ValueError(f"reduce must be one of None, 'sum', 'abs_sum', got {reduce!r}")
    if out_dtype not in _FLOATS:
        raise ValueError(f"out_dtype must be a floating dtype, got {out_dtype}")


def _rows(sel, n: int, what: str, unit: str, device: torch.device) -> torch.Tensor:
    """The selected rows (channels or heads) ``[rows]``: all ``n`` for None, else checked indices."""
    if sel is None:
        return torch.arange(n, device=device)
    idx = torch.as_tensor(sel, device=device)
    if idx.dtype == torch.bool or idx.is_floating_point() or idx.dim() != 1 or idx.numel() == 0:
        raise ValueError(f"{what} must be a non-empty 1-D list / LongTensor of {unit} indices, got "
                         f"{idx.dtype} of shape {_shape(idx)}")
    idx = idx.long()
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= n:
        raise ValueError(f"{what} must lie in [0, {n}), got min {lo}, max {hi}")
    return idx


def _step(dt, dim: int, idx, bias, softplus: bool, compute_dtype) -> torch.Tensor:
    """The rows ``idx`` of dt along ``dim``, plus their bias, softplus-ed (threshold 20, as mamba_ssm)."""
    d = dt.index_select(dim, idx).to(compute_dtype)
    if bias is not None:
        d = d + bias.index_select(0, idx).to(compute_dtype).view(-1, *[1] * (dt.dim() - 1 - dim))
    if softplus:
        d = F.softplus(d)
    return d


def _prepare(delta, A, B, C, delta_bias, delta_softplus, channels, reduce, out_dtype, compute_dtype):
    """Validate; return dt ``[batch, c, L]``, A ``[c, n]`` (selected channels, compute dtype), B, C
    ``[batch, n, L]`` (compute dtype) and the channel index ``[c]``."""
    _check_dtypes((("delta", delta), ("A", A), ("B", B), ("C", C)), " (real A only)")
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
    _check_reduce(reduce, out_dtype)
    device = _check_same_device("delta", delta, (("A", A), ("B", B), ("C", C), ("delta_bias", delta_bias)))
    idx = _rows(channels, d_inner, "channels", "channel", device)
    dt = _step(delta, 1, idx, delta_bias, delta_softplus, compute_dtype)
    A_sel = A.index_select(0, idx).to(compute_dtype)
    return dt, A_sel, B.to(compute_dtype), C.to(compute_dtype), idx


# ---------------------------------------------------------------------------------------------
# Shared by both PyTorch implementations
# ---------------------------------------------------------------------------------------------
def _compute_dtype(*tensors) -> torch.dtype:
    """float64 when any input is, else float32 (runs before validation: a non-tensor is left to it)."""
    return torch.float64 if torch.float64 in tuple(getattr(t, "dtype", None) for t in tensors) else torch.float32


def _torch_setup(dt, reduce, out_dtype, max_chunk_elems):
    """For dt ``[batch, rows, L]``: the fp64 cumulative step ``[batch, rows, L]`` (so Delta_i - Delta_j keeps
    its precision for long sequences), the causal mask ``[L, L]`` (j <= i), rows per chunk and the
    output (``[batch, rows, L, L]`` for per-row maps, None for a reduced map: the first chunk's sum)."""
    batch, n_rows, L = dt.shape
    cum = torch.cumsum(dt.double(), dim=-1)
    causal = torch.ones(L, L, dtype=torch.bool, device=dt.device).tril()
    chunk = max(1, min(n_rows, max_chunk_elems // max(1, batch * L * L)))
    out = torch.empty(batch, n_rows, L, L, dtype=out_dtype, device=dt.device) if reduce is None else None
    return cum, causal, chunk, out


def _gap(cum, rows, compute_dtype) -> torch.Tensor:
    """gap[b, r, i, j] = Delta_i - Delta_j for the given rows (>= 0 on and below the diagonal; clamped above)."""
    return (cum[:, rows, :, None] - cum[:, rows, None, :]).clamp_min_(0).to(compute_dtype)


def _add_chunk(out, rows, m, causal, reduce, out_dtype):
    """Zero m ``[batch, k, L, L]`` above the diagonal and put it in ``out[:, rows]`` (reduce None) or add its
    sum over the k rows (of |m| for "abs_sum") to out; returns out."""
    m.masked_fill_(~causal, 0.0)
    if reduce is None:
        out[:, rows] = m.to(out_dtype)
        return out
    part = (m if reduce == "sum" else m.abs()).sum(1)
    return part if out is None else out + part


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
    compute = _compute_dtype(delta, A, B, C)
    dt, A_sel, B, C, _ = _prepare(delta, A, B, C, delta_bias, delta_softplus, channels, reduce,
                                  out_dtype, compute)
    batch, n_chan, L = dt.shape
    d_state = A_sel.shape[1]
    cum, causal, chunk, out = _torch_setup(dt, reduce, out_dtype, max_chunk_elems)
    for c0 in range(0, n_chan, chunk):
        c1 = min(c0 + chunk, n_chan)
        gap = _gap(cum, slice(c0, c1), compute)                          # [batch, c, i, j]
        bdt = B[:, None, :, :] * dt[:, c0:c1, None, :]                  # [batch, c, n, L]: B_j dt_j
        m = torch.zeros(batch, c1 - c0, L, L, dtype=compute, device=dt.device)
        for n in range(d_state):
            decay = torch.exp(A_sel[c0:c1, n, None, None] * gap)        # [batch, c, i, j], <= 1
            m += C[:, None, n, :, None] * decay * bdt[:, :, n, None, :]
        out = _add_chunk(out, slice(c0, c1), m, causal, reduce, out_dtype)
    return out.to(out_dtype)


# ---------------------------------------------------------------------------------------------
# Triton implementation
# ---------------------------------------------------------------------------------------------
if triton is not None:

    # Pieces of both tiled kernels (Mamba-1 and Mamba-2); Triton inlines them. A program of either kernel
    # handles one pair of tiles (i-tile ki, j-tile kj <= ki; grid axis 0), one batch row (axis 2) and one
    # row (channel or head) or a run of rows (axis 1), reading dt ``[batch, rows, L]`` fp32 (time contiguous)
    # and pre ``[batch, rows, n_tiles + 1]``, the fp64 exclusive prefix over tiles of dt's per-tile sums.
    @triton.jit
    def _tile_pair(ti_ptr, tj_ptr, pair, L, BT: tl.constexpr):
        """The tiles of tile pair ``pair``: ki, kj, the positions of both tiles and their masks (< L)."""
        ki = tl.load(ti_ptr + pair)
        kj = tl.load(tj_ptr + pair)
        ar = tl.arange(0, BT)
        offs_i = ki * BT + ar
        offs_j = kj * BT + ar
        return ki, kj, offs_i, offs_j, offs_i < L, offs_j < L

    @triton.jit
    def _tile_steps(dt_base, offs_i, offs_j, mask_i, mask_j, A_ptr, row, s_A, a_offs, mask_a):
        """This row's dt_j, a2 = A[row] log2(e) (at ``A_ptr + row * s_A + a_offs``; <= 0) and the tile-local
        cumulative steps cum_i, cum_j (Delta minus Delta before the tile's start)."""
        LOG2E: tl.constexpr = 1.4426950408889634
        dt_i = tl.load(dt_base + offs_i, mask=mask_i, other=0.0)
        dt_j = tl.load(dt_base + offs_j, mask=mask_j, other=0.0)
        a2 = tl.load(A_ptr + row * s_A + a_offs, mask=mask_a, other=0.0) * LOG2E
        return dt_j, a2, tl.cumsum(dt_i, axis=0), tl.cumsum(dt_j, axis=0)

    @triton.jit
    def _split_gaps(pre_base, ki, kj, dt_j, cum_j):
        """Off-diagonal tile (kj < ki): exp(A (Delta_i - Delta_j)) = exp(A (Delta_i - Delta_r)) exp(A (Delta_r -
        Delta_j)) with r = the last position of tile kj, both factors <= 1. Returns ``between`` (scalar >= 0)
        and ``to_r`` ([BT], >= 0) with Delta_i - Delta_r = between + cum_i and Delta_r - Delta_j = to_r."""
        between = (tl.load(pre_base + ki) - tl.load(pre_base + kj + 1)).to(tl.float32)
        to_r = tl.maximum(tl.sum(dt_j, axis=0) - cum_j, 0.0)
        return between, to_r

    @triton.jit
    def _store_tile(base, offs_i, offs_j, s_i, s_j, val, mask_i, mask_j):
        """Store a [BT, BT] tile at base + i * s_i + j * s_j, inside the map only."""
        tl.store(base + offs_i[:, None] * s_i + offs_j[None, :] * s_j, val, mask=mask_i[:, None] & mask_j[None, :])

    @triton.jit
    def _emit(acc, m, row_out, offs_i, offs_j, s_o_i, s_o_j, mask_i, mask_j, REDUCE: tl.constexpr):
        """One row's tile m: REDUCE 0 stores it at ``row_out`` (its map); 1 ("sum") returns acc + m, 2
        ("abs_sum") acc + |m|."""
        if REDUCE == 0:
            _store_tile(row_out, offs_i, offs_j, s_o_i, s_o_j, m, mask_i, mask_j)
        elif REDUCE == 1:
            acc += m
        else:
            acc += tl.abs(m)
        return acc

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
        ki, kj, offs_i, offs_j, mask_i, mask_j = _tile_pair(ti_ptr, tj_ptr, pair, L, BT)
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
            dt_j, a2, cum_i, cum_j = _tile_steps(dt_ptr + b * s_dt_b + c64 * s_dt_c, offs_i, offs_j, mask_i, mask_j,
                                                 A_ptr, c64, s_A_c, offs_n, mask_n)         # a2: [BN]
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
                between, to_r = _split_gaps(pre_ptr + b * s_pre_b + c64 * s_pre_c, ki, kj, dt_j, cum_j)
                # left = C_i e^{A (Delta_i - Delta_r)}, right = B_j e^{A (Delta_r - Delta_j)} dt_j
                left = C_i * tl.exp2(a2[None, :] * (between + cum_i)[:, None])
                right = B_j * (tl.exp2(a2[None, :] * to_r[:, None]) * dt_j[:, None])
                m = tl.dot(left, tl.trans(right), input_precision="ieee")
            acc = _emit(acc, m, out_ptr + b * s_o_b + c64 * s_o_c, offs_i, offs_j, s_o_i, s_o_j, mask_i, mask_j, REDUCE)
        if REDUCE != 0:
            _store_tile(out_ptr + grp.to(tl.int64) * s_o_g + b * s_o_b, offs_i, offs_j, s_o_i, s_o_j, acc,
                        mask_i, mask_j)


# Shared by both Triton wrappers
def _check_block(block: int) -> None:
    if block < 16 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 16, got {block}")


def _kernel_inputs(dt: torch.Tensor, A_sel: torch.Tensor, block: int, what: str):
    """Check that Triton runs on dt's device; for dt ``[batch, rows, L]`` and A: both contiguous, pre
    ``[batch, rows, n_tiles + 1]`` (pre[b, r, k] = sum of dt over tiles < k, fp64: an exclusive prefix over
    tiles) and the tile pairs ti, tj (int32, kj <= ki) with their count."""
    _require_triton(dt.device, what)
    dt = dt.contiguous()
    A_sel = A_sel.contiguous()
    batch, n_rows, L = dt.shape
    n_tiles = triton.cdiv(L, block)
    padded = F.pad(dt.double(), (0, n_tiles * block - L))
    tile_sums = padded.view(batch, n_rows, n_tiles, block).sum(-1)
    pre = F.pad(torch.cumsum(tile_sums, dim=-1), (1, 0)).contiguous()
    ti, tj = torch.tril_indices(n_tiles, n_tiles, device=dt.device).to(torch.int32)
    return dt, A_sel, pre, ti, tj, ti.numel()


def _reduce_jobs(n_rows: int, n_pairs: int, batch: int, device: torch.device) -> int:
    """Programs per tile pair for a reduced map: enough to fill the GPU (4 per multiprocessor) when there
    are few tiles; each writes a partial ``[batch, L, L]`` sum."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    return max(1, min(n_rows, -(-4 * sms // (n_pairs * batch))))


def _output(batch: int, n_rows: int, L: int, reduce, out_dtype, device, jobs):
    """The kernel's output and launch: (target, its strides (g, b, row, i, j), REDUCE code, programs per
    tile pair, rows per program). Per-row maps: ``[batch, rows, L, L]``, one row per program. Reduced
    maps: ``jobs()`` programs of equal runs of rows, each summing into ``target[job]`` of ``[jobs, batch,
    L, L]`` (fp32 partial sums when there are several)."""
    if reduce is None:
        out = torch.zeros(batch, n_rows, L, L, dtype=out_dtype, device=device)
        return out, (0, *out.stride()), 0, n_rows, 1
    per = -(-n_rows // jobs())
    n_jobs = -(-n_rows // per)
    target = torch.zeros(n_jobs, batch, L, L, device=device, dtype=torch.float32 if n_jobs > 1 else out_dtype)
    s_o = (target.stride(0), target.stride(1), 0, target.stride(2), target.stride(3))
    return target, s_o, 1 if reduce == "sum" else 2, n_jobs, per


def _result(target: torch.Tensor, reduce, out_dtype) -> torch.Tensor:
    if reduce is None:
        return target
    return target[0] if target.shape[0] == 1 else target.sum(0).to(out_dtype)


def _on_gpu(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_cuda and triton_available(t.device)


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
    _check_block(block)
    dt, A_sel, B, C, _ = _prepare(delta, A, B, C, delta_bias, delta_softplus, channels, reduce,
                                  out_dtype, torch.float32)
    dt, A_sel, pre, ti, tj, n_pairs = _kernel_inputs(dt, A_sel, block, "effective_attention_triton")
    batch, n_chan, L = dt.shape
    d_state = A_sel.shape[1]
    device = dt.device
    # reduced maps: enough programs to fill the GPU, channels split into groups when there are few tiles
    target, s_o, code, groups, chan_per_prog = _output(batch, n_chan, L, reduce, out_dtype, device,
                                                       lambda: _reduce_jobs(n_chan, n_pairs, batch, device))
    _eff_attn_kernel[(n_pairs, groups, batch)](
        dt, pre, A_sel, B, C, ti, tj, target,
        L, n_chan, d_state, chan_per_prog,
        dt.stride(0), dt.stride(1), pre.stride(0), pre.stride(1), A_sel.stride(0),
        *B.stride(), *C.stride(), *s_o,
        REDUCE=code, BT=block, BN=max(16, 1 << max(0, (d_state - 1).bit_length())),
        num_warps=4,
    )
    return _result(target, reduce, out_dtype)


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
    use_triton = _resolve_backend(backend, lambda: _on_gpu(delta)) == "triton"
    fn = effective_attention_triton if use_triton else effective_attention_torch
    return fn(delta, A, B, C, delta_bias=delta_bias, delta_softplus=delta_softplus, channels=channels,
              reduce=reduce, out_dtype=out_dtype)


# =============================================================================================
# Mamba-2 (SSD): one scalar decay per head
# =============================================================================================
#
#   M[b, h, i, j] = (C_i[g] . B_j[g]) * exp(A[h] * (Delta_i[h] - Delta_j[h])) * dt_j[h]    for j <= i, else 0
#
# with g = h // (nheads / ngroups), Delta[h, t] = sum_{k<=t} dt_k[h]; then y_i[h, p] = sum_j M[b, h, i, j] x_j[h, p]
# + D[h] x_i[h, p] for every channel p of the head (Mamba-2 / SSD, arXiv 2405.21060, section 3: the SSD
# "attention" form). All headdim channels of a head share its map.
HeadSel = Union[None, Sequence[int], torch.Tensor]


def _prepare_ssd(dt, A, B, C, dt_bias, dt_softplus, dt_limit, heads, reduce, out_dtype, compute_dtype):
    """Validate; return dt ``[batch, hs, L]`` (processed, compute dtype), A ``[hs]``, B, C ``[batch, L, g, n]``
    (compute dtype), the head index ``[hs]`` and each selected head's group ``[hs]``."""
    _check_dtypes((("dt", dt), ("A", A), ("B", B), ("C", C)))
    if dt.dim() != 3:
        raise ValueError(f"dt must be [batch, L, nheads] (mamba_chunk_scan_combined layout), got {_shape(dt)}")
    batch, L, nheads = dt.shape
    if L == 0 or batch == 0 or nheads == 0:
        raise ValueError(f"dt has an empty dimension: {_shape(dt)}")
    if tuple(A.shape) != (nheads,):
        raise ValueError(f"A must be [nheads] = [{nheads}] (one scalar per head), got {_shape(A)}")
    for name, t in (("B", B), ("C", C)):
        if t.dim() != 4 or t.shape[0] != batch or t.shape[1] != L:
            raise ValueError(f"{name} must be [batch, L, ngroups, d_state] with batch={batch}, L={L}, "
                             f"got {_shape(t)}")
    if B.shape != C.shape:
        raise ValueError(f"B and C must have the same shape, got B {_shape(B)}, C {_shape(C)}")
    ngroups = B.shape[2]
    if ngroups == 0 or B.shape[3] == 0 or nheads % ngroups:
        raise ValueError(f"ngroups ({ngroups}) must divide nheads ({nheads}) and d_state be > 0")
    if dt_bias is not None and tuple(dt_bias.shape) != (nheads,):
        raise ValueError(f"dt_bias must be [nheads] = [{nheads}], got {_shape(dt_bias)}")
    _check_reduce(reduce, out_dtype)
    lo, hi = (float(v) for v in dt_limit)
    device = _check_same_device("dt", dt, (("A", A), ("B", B), ("C", C), ("dt_bias", dt_bias)))
    idx = _rows(heads, nheads, "heads", "head", device)
    d = _step(dt, 2, idx, dt_bias, dt_softplus, compute_dtype)
    d = d.clamp(min=lo, max=None if hi == float("inf") else hi)   # always, as mamba_ssm
    groups = idx // (nheads // ngroups)
    return (d.transpose(1, 2), A.index_select(0, idx).to(compute_dtype), B.to(compute_dtype),
            C.to(compute_dtype), idx, groups)


def ssd_effective_attention_torch(
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    dt_bias: Optional[torch.Tensor] = None,
    dt_softplus: bool = True,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    heads: HeadSel = None,
    reduce: Optional[str] = None,
    out_dtype: torch.dtype = torch.float32,
    max_chunk_elems: int = 1 << 24,
) -> torch.Tensor:
    """Mamba-2 effective attention in PyTorch; float64 when any of dt, A, B, C is float64, else float32.

    Same arguments and result as :func:`ssd_effective_attention`. Heads are processed
    ``max_chunk_elems // (batch * L * L)`` at a time (at least one) and one group's C B^T ``[batch, L, L]``
    at a time: peak extra memory is a few ``[batch, chunk, L, L]`` tensors.
    """
    compute = _compute_dtype(dt, A, B, C)
    d, A_sel, B, C, _, groups = _prepare_ssd(dt, A, B, C, dt_bias, dt_softplus, dt_limit, heads, reduce,
                                             out_dtype, compute)
    cum, causal, chunk, out = _torch_setup(d, reduce, out_dtype, max_chunk_elems)
    for g in torch.unique(groups).tolist():
        sel = (groups == g).nonzero().flatten()
        CB = torch.einsum("bin,bjn->bij", C[:, :, g], B[:, :, g])                 # [batch, L, L]
        for k0 in range(0, sel.numel(), chunk):
            hs = sel[k0:k0 + chunk]
            m = CB[:, None] * torch.exp(A_sel[hs, None, None] * _gap(cum, hs, compute)) * d[:, hs, None, :]
            out = _add_chunk(out, hs, m, causal, reduce, out_dtype)
    return out.to(out_dtype)


if triton is not None:

    @triton.jit
    def _ssd_eff_attn_kernel(
        dt_ptr, pre_ptr, A_ptr, B_ptr, C_ptr, ti_ptr, tj_ptr, head_ptr, grp_ptr, slot_ptr, job_ptr, out_ptr,
        L, d_state,
        s_dt_b, s_dt_h,
        s_pre_b, s_pre_h,
        s_B_b, s_B_l, s_B_g, s_B_n,
        s_C_b, s_C_l, s_C_g, s_C_n,
        s_o_g, s_o_b, s_o_h, s_o_i, s_o_j,
        REDUCE: tl.constexpr,  # 0: one head per program, 1: sum, 2: abs_sum
        BT: tl.constexpr, BN: tl.constexpr,
    ):
        # dt [batch, hs, L] fp32 (time contiguous); pre [batch, hs, n_tiles + 1] fp64 exclusive prefix of
        # per-tile sums of dt; A [hs] fp32. head/grp/slot [hs]: the selected rows sorted by group, their
        # group and their output index; job [n_jobs + 1]: program `job` handles sorted rows job[j]..job[j+1]-1.
        pair = tl.program_id(0)
        job = tl.program_id(1)
        b = tl.program_id(2).to(tl.int64)
        ki, kj, offs_i, offs_j, mask_i, mask_j = _tile_pair(ti_ptr, tj_ptr, pair, L, BT)
        offs_n = tl.arange(0, BN)
        causal = offs_j[None, :] <= offs_i[:, None]
        acc = tl.zeros([BT, BT], dtype=tl.float32)
        G = tl.zeros([BT, BT], dtype=tl.float32)
        g_prev = tl.full([], -1, tl.int32)
        k_lo = tl.load(job_ptr + job)
        k_hi = tl.load(job_ptr + job + 1)
        for k in range(k_lo, k_hi):
            hh = tl.load(head_ptr + k).to(tl.int64)
            g = tl.load(grp_ptr + k)
            if g != g_prev:
                # C_i B_j^T of this group, [BT, BT], over d_state in blocks of BN; shared by all heads of
                # the group (rows are sorted by group)
                g64 = g.to(tl.int64)
                C_base = C_ptr + b * s_C_b + offs_i[:, None] * s_C_l + g64 * s_C_g
                B_base = B_ptr + b * s_B_b + offs_j[:, None] * s_B_l + g64 * s_B_g
                G = tl.zeros([BT, BT], dtype=tl.float32)
                for n0 in range(0, d_state, BN):
                    nn = n0 + offs_n
                    C_i = tl.load(C_base + nn[None, :] * s_C_n, mask=mask_i[:, None] & (nn < d_state)[None, :],
                                  other=0.0)
                    B_j = tl.load(B_base + nn[None, :] * s_B_n, mask=mask_j[:, None] & (nn < d_state)[None, :],
                                  other=0.0)
                    G += tl.dot(C_i, tl.trans(B_j), input_precision="ieee")
                g_prev = g
            dt_j, a2, cum_i, cum_j = _tile_steps(dt_ptr + b * s_dt_b + hh * s_dt_h, offs_i, offs_j, mask_i, mask_j,
                                                 A_ptr, hh, 1, 0, True)                     # a2: scalar
            if ki == kj:
                decay = tl.exp2(a2 * tl.maximum(cum_i[:, None] - cum_j[None, :], 0.0))
            else:
                between, to_r = _split_gaps(pre_ptr + b * s_pre_b + hh * s_pre_h, ki, kj, dt_j, cum_j)
                decay = tl.exp2(a2 * (between + cum_i))[:, None] * tl.exp2(a2 * to_r)[None, :]
            m = tl.where(causal, G * decay * dt_j[None, :], 0.0)
            slot = tl.load(slot_ptr + k).to(tl.int64)       # output index (read only by per-head maps)
            acc = _emit(acc, m, out_ptr + b * s_o_b + slot * s_o_h, offs_i, offs_j, s_o_i, s_o_j, mask_i, mask_j,
                        REDUCE)
        if REDUCE != 0:
            _store_tile(out_ptr + job.to(tl.int64) * s_o_g + b * s_o_b, offs_i, offs_j, s_o_i, s_o_j, acc,
                        mask_i, mask_j)


_ssd_reduce_jobs = _reduce_jobs   # the Mamba-2 wrapper's (its own name, so that a test can stand in for a GPU)


def ssd_effective_attention_triton(
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    dt_bias: Optional[torch.Tensor] = None,
    dt_softplus: bool = True,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    heads: HeadSel = None,
    reduce: Optional[str] = None,
    out_dtype: torch.dtype = torch.float32,
    block: int = 64,
) -> torch.Tensor:
    """Mamba-2 effective attention with the tiled Triton kernel (CUDA tensors); fp32 arithmetic.

    Same arguments and result as :func:`ssd_effective_attention`; ``block`` is the tile size (a power of
    two >= 16). One program per (i-tile, j-tile) below the diagonal, per batch row and per job (one head
    for per-head maps; a run of heads, sorted by group, for reduced maps): C_i B_j^T is one
    ``[block, d_state] x [d_state, block]`` product per group, the decay one exp per element on diagonal
    tiles and an outer product of two exp vectors off the diagonal. Extra memory besides the output: dt
    ``[batch, heads, L]`` and per-tile prefixes, plus, for a reduced map at short L, ``[jobs, batch, L, L]``
    partial sums.
    """
    _check_block(block)
    d, A_sel, B, C, _, groups = _prepare_ssd(dt, A, B, C, dt_bias, dt_softplus, dt_limit, heads, reduce,
                                             out_dtype, torch.float32)
    d, A_sel, pre, ti, tj, n_pairs = _kernel_inputs(d, A_sel, block, "ssd_effective_attention_triton")
    batch, n_heads, L = d.shape
    d_state = B.shape[3]
    device = d.device
    order = torch.argsort(groups, stable=True)                # rows sorted by group: C B^T once per group
    head_rows = order.to(torch.int32)
    grp_rows = groups[order].to(torch.int32)
    slot_rows = order.to(torch.int32)                         # output index of each sorted row

    target, s_o, code, n_jobs, per = _output(batch, n_heads, L, reduce, out_dtype, device,
                                             lambda: _ssd_reduce_jobs(n_heads, n_pairs, batch, device))
    # program `job` handles the sorted rows jobs[job] .. jobs[job + 1] - 1
    jobs = (torch.arange(n_jobs + 1, device=device, dtype=torch.int32) * per).clamp_(max=n_heads)
    _ssd_eff_attn_kernel[(n_pairs, n_jobs, batch)](
        d, pre, A_sel, B, C, ti, tj, head_rows, grp_rows, slot_rows, jobs, target,
        L, d_state,
        d.stride(0), d.stride(1), pre.stride(0), pre.stride(1),
        *B.stride(), *C.stride(), *s_o,
        REDUCE=code, BT=block, BN=16, num_warps=8 if block >= 64 else 4,   # ptxas sm_90: no/few spills
    )
    return _result(target, reduce, out_dtype)


def ssd_effective_attention(
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    dt_bias: Optional[torch.Tensor] = None,
    dt_softplus: bool = True,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    heads: HeadSel = None,
    reduce: Optional[str] = None,
    out_dtype: torch.dtype = torch.float32,
    backend: str = "auto",
) -> torch.Tensor:
    """Mamba-2 (SSD) effective attention M[b, h, i, j] (the formula is in the comment that opens the
    Mamba-2 section of this module).

    Args (``mamba_chunk_scan_combined`` layouts):
        dt: ``[batch, L, nheads]`` step size before ``dt_bias`` / softplus / ``dt_limit`` (processed as
            :func:`achilles_interp.kernels.ssd_states.ssd_scan_states` does; pass ``dt_softplus=False``
            for an already-processed dt).
        A: ``[nheads]`` negative scalars.
        B, C: ``[batch, L, ngroups, d_state]``.
        dt_bias: ``[nheads]`` or None; dt_limit: ``(min, max)`` clamp of the processed dt.
        heads: None (all heads) or a 1-D LongTensor / list of head indices to compute.
        reduce: None -> per-head maps ``[batch, len(heads), L, L]``; ``"sum"`` -> ``[batch, L, L]`` = sum over
            the selected heads; ``"abs_sum"`` -> sum over heads of |M|. Every one of a head's headdim
            channels applies the same map, so the sum over the d_inner channels (Mamba-1's ``reduce="sum"``)
            is ``headdim`` times the head sum. A reduced map never holds the per-head tensor.
        out_dtype: dtype of the result.
        backend: ``"auto"`` (Triton for CUDA tensors when available, else PyTorch), ``"triton"`` or ``"torch"``.
    Returns:
        M (y_i[h, p] = sum_j M[b, h, i, j] x_j[h, p] + D[h] x_i[h, p]), zero above the diagonal.
    """
    use_triton = _resolve_backend(backend, lambda: _on_gpu(dt)) == "triton"
    fn = ssd_effective_attention_triton if use_triton else ssd_effective_attention_torch
    return fn(dt, A, B, C, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit, heads=heads,
              reduce=reduce, out_dtype=out_dtype)
