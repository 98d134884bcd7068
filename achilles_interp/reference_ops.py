"""Pure-PyTorch reference operators: the spec that the CUDA kernels are tested against.

Everything here runs on any device, is differentiable, and is vectorised: the causal conv is one
grouped ``conv1d``; the scans are chunked, blocked scans (~2 sqrt(chunk) vectorised steps per
chunk of ``chunk`` tokens, chunks chained by their last state), never a Python loop over tokens.

Notation (Mamba paper, arXiv 2312.00752; Mamba-2 / SSD, arXiv 2405.21060):

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * x_t          (zero-order-hold A, Euler B)
    y_t = C_t . h_t + D * x_t

Mamba-1: A is [d_inner, d_state]; dt, x are per channel; B, C are shared by all channels.
Mamba-2: A is one scalar per head; x is [nheads, headdim]; B, C are shared within a group.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

StatePositions = Union[None, str, Sequence[int], torch.Tensor]

DEFAULT_CHUNK = 64


def accum_dtype(t: torch.Tensor) -> torch.dtype:
    """Accumulation dtype of the reference: float64 for float64 inputs, else float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------------------------
# Causal depthwise convolution
# ---------------------------------------------------------------------------------------------
def causal_conv1d_ref(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Causal depthwise convolution along time.

    Args:
        x: ``[batch, pos, channels]``.
        weight: ``[channels, 1, width]`` (``nn.Conv1d`` layout) or ``[channels, width]``; tap
            ``width-1`` multiplies the current token, tap ``width-1-k`` the token k steps back.
        bias: ``[channels]`` or None.
    Returns:
        ``[batch, pos, channels]``: out_t = bias + sum_k weight[:, width-1-k] * x_{t-k}.
    """
    channels = x.shape[-1]
    w = weight.reshape(channels, 1, -1)
    width = w.shape[-1]
    out = F.conv1d(x.transpose(1, 2), w.to(x.dtype), None if bias is None else bias.to(x.dtype),
                   padding=width - 1, groups=channels)
    return out[..., : x.shape[1]].transpose(1, 2)


# ---------------------------------------------------------------------------------------------
# Linear recurrence h_t = exp(log_a_t) * h_{t-1} + b_t, chunked
# ---------------------------------------------------------------------------------------------
def scan_chunk(log_a: torch.Tensor, b: torch.Tensor, h0: Optional[torch.Tensor]) -> torch.Tensor:
    """All states of one chunk of h_t = exp(log_a_t) * h_{t-1} + b_t (h_{-1} = h0).

    Two-level (blocked) scan: the T tokens are cut into C blocks of S ~ sqrt(T) tokens.
    1. Inside every block at once, walk the S offsets: local states from zero and the
       running product of decays (S vectorised steps, each over all C blocks).
    2. Walk the C blocks: the state entering block c is its predecessor's entry state carried
       through that block's decay, plus that block's local final state.
    3. Every state = local state + (decay since its block began) * state entering its block.
    That is S + C ~ 2 sqrt(T) vectorised steps and O(T) work; decays only multiply (no division,
    no log-space differences), so it is as exact as the token-by-token loop.

    Args:
        log_a: ``[batch, T, ...]`` log decay, broadcastable to ``b`` (<= 0 for a stable SSM).
        b: ``[batch, T, *state]`` input added at each step.
        h0: ``[batch, *state]`` state before the chunk, or None for zeros.
    Returns:
        ``[batch, T, *state]`` states h_0..h_{T-1} of the chunk.
    """
    batch, T = b.shape[:2]
    S = max(1, math.isqrt(T - 1) + 1) if T > 1 else 1
    C = -(-T // S)
    pad = C * S - T
    a = torch.exp(log_a)
    if pad:  # padded tokens decay by 1 and add 0: they change nothing before them
        a = torch.cat([a, a.new_ones(a.shape[0], pad, *a.shape[2:])], dim=1)
        b = torch.cat([b, b.new_zeros(b.shape[0], pad, *b.shape[2:])], dim=1)
    a = a.reshape(a.shape[0], C, S, *a.shape[2:])
    b = b.reshape(batch, C, S, *b.shape[2:])
    a_s, b_s = a.unbind(2), b.unbind(2)    # unbind, not slicing: one gradient stack, not S scatters
    h, P = b_s[0], a_s[0]
    local, decay = [h], [P]
    for s in range(1, S):
        h = a_s[s] * h + b_s[s]
        P = P * a_s[s]
        local.append(h)
        decay.append(P)
    local_h = torch.stack(local, dim=2)                        # [batch, C, S, *state]
    decay_p = torch.stack(decay, dim=2)                        # [batch|1, C, S, ...]
    entry = torch.zeros_like(local_h[:, 0, 0]) if h0 is None else h0.to(b.dtype)
    entries = []
    last_decay, last_local = decay_p[:, :, -1].unbind(1), local_h[:, :, -1].unbind(1)
    for c in range(C):
        entries.append(entry)
        entry = last_decay[c] * entry + last_local[c]
    carried = decay_p * torch.stack(entries, dim=1).unsqueeze(2)
    states = local_h + carried
    return states.reshape(batch, C * S, *states.shape[3:])[:, :T]


def _normalize_positions(state_positions: StatePositions, L: int, device) -> Optional[torch.Tensor]:
    """None -> None; "all" -> arange(L); list/tensor -> sorted unique LongTensor, bounds-checked."""
    if state_positions is None:
        return None
    if isinstance(state_positions, str):
        if state_positions != "all":
            raise ValueError(f"state positions must be None, 'all' or a list of ints, got {state_positions!r}")
        return torch.arange(L, device=device)
    pos = torch.as_tensor(state_positions, dtype=torch.long, device=device).flatten()
    if pos.numel() == 0:
        raise ValueError("state positions list is empty; pass None to skip states")
    pos = torch.where(pos < 0, pos + L, pos)
    if bool((pos < 0).any()) or bool((pos >= L).any()):
        raise ValueError(f"state positions must lie in [-{L}, {L}) for a sequence of length {L}, "
                         f"got {torch.as_tensor(state_positions).tolist()}")
    return torch.unique(pos)


def chunked_scan(
    make_inputs: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]],
    readout: Callable[[torch.Tensor, int, int], torch.Tensor],
    L: int,
    h0: torch.Tensor,
    positions: Optional[torch.Tensor] = None,
    chunk: int = DEFAULT_CHUNK,
    inject: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """Run h_t = exp(log_a_t) h_{t-1} + b_t over L steps, chunk by chunk.

    Only one chunk of states (``[batch, chunk, *state]``) is alive at a time unless states are
    requested, so memory is O(batch * chunk * state) plus the requested states.

    Args:
        make_inputs: ``(t0, t1) -> (log_a, b)`` for tokens t0..t1-1, each ``[batch, t1-t0, ...]``.
        readout: ``(h [batch, t1-t0, *state], t0, t1) -> y [batch, t1-t0, ...]``.
        L: sequence length.
        h0: ``[batch, *state]`` initial state (zeros for a fresh sequence).
        positions: sorted LongTensor of positions whose states to return, or None.
        inject: optional ``(positions [P], delta [batch, P, *state])`` added to h at those
            positions before the recurrence carries on (an additive state edit; with a
            zero-valued delta that carries gradient it yields dL/dh_t through the recurrence).
    Returns:
        y ``[batch, L, ...]``, states ``[batch, P, *state]`` (or None), last state ``[batch, *state]``.
    """
    ys, kept = [], []
    h = h0
    for t0 in range(0, L, chunk):
        t1 = min(t0 + chunk, L)
        log_a, b = make_inputs(t0, t1)
        if inject is not None:
            in_chunk = (inject[0] >= t0) & (inject[0] < t1)
            if bool(in_chunk.any()):
                b = b.index_add(1, inject[0][in_chunk] - t0, inject[1][:, in_chunk].to(b.dtype))
        hs = scan_chunk(log_a, b, h)
        ys.append(readout(hs, t0, t1))
        if positions is not None:
            sel = positions[(positions >= t0) & (positions < t1)] - t0
            if sel.numel():
                kept.append(hs.index_select(1, sel))
        h = hs[:, -1]
    states = None
    if positions is not None:
        states = torch.cat(kept, dim=1)
    return torch.cat(ys, dim=1), states, h


# ---------------------------------------------------------------------------------------------
# Mamba-1 selective scan
# ---------------------------------------------------------------------------------------------
def selective_scan_ref(
    u: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    h0: Optional[torch.Tensor] = None,
    state_positions: StatePositions = None,
    chunk: int = DEFAULT_CHUNK,
    inject: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """Mamba-1 selective scan (S6), time-major layout.

    Args:
        u: ``[batch, pos, d_inner]`` SSM input (post-conv, post-SiLU).
        dt: ``[batch, pos, d_inner]`` step sizes (already softplus-ed), > 0.
        A: ``[d_inner, d_state]`` continuous-time state matrix (negative).
        B, C: ``[batch, pos, d_state]`` input / output projections.
        D: ``[d_inner]`` skip, or None.
        h0: ``[batch, d_inner, d_state]`` initial state, or None for zeros.
        state_positions: None, "all", or positions whose states to return.
        inject: optional additive state edit ``(positions, delta [batch, P, d_inner, d_state])``,
            see :func:`chunked_scan`.
    Returns:
        y ``[batch, pos, d_inner]`` (fp32 math, u's dtype), states ``[batch, P, d_inner, d_state]``
        (fp32) or None, last state ``[batch, d_inner, d_state]`` (fp32).
    """
    batch, L, d_inner = u.shape
    d_state = A.shape[-1]
    f32 = accum_dtype(u)
    u_, dt_, A_, B_, C_ = (t.to(f32) for t in (u, dt, A, B, C))
    positions = _normalize_positions(state_positions, L, u.device)
    if h0 is None:
        h0 = torch.zeros(batch, d_inner, d_state, dtype=f32, device=u.device)

    def make_inputs(t0: int, t1: int):
        dt_c = dt_[:, t0:t1, :, None]                                    # [b, T, d, 1]
        return dt_c * A_, dt_c * B_[:, t0:t1, None, :] * u_[:, t0:t1, :, None]   # [b, T, d, n]

    def readout(h: torch.Tensor, t0: int, t1: int) -> torch.Tensor:
        return torch.einsum("btdn,btn->btd", h, C_[:, t0:t1])

    y, states, last = chunked_scan(make_inputs, readout, L, h0.to(f32), positions, chunk, inject)
    if D is not None:
        y = y + u_ * D.to(f32)
    return y.to(u.dtype), states, last


# ---------------------------------------------------------------------------------------------
# Mamba-2 (SSD) scan
# ---------------------------------------------------------------------------------------------
def _expand_groups(t: torch.Tensor, nheads: int) -> torch.Tensor:
    """[batch, pos, ngroups, d_state] -> [batch, pos, nheads, d_state] (heads share their group's B/C)."""
    return t.repeat_interleave(nheads // t.shape[2], dim=2)


def ssd_scan_ref(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    h0: Optional[torch.Tensor] = None,
    state_positions: StatePositions = None,
    chunk: int = DEFAULT_CHUNK,
    inject: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """Mamba-2 SSD scan as a recurrence (the spec; gives states at any position).

    Args:
        x: ``[batch, pos, nheads, headdim]``.
        dt: ``[batch, pos, nheads]`` step sizes (softplus-ed and clamped), > 0.
        A: ``[nheads]`` (negative scalars).
        B, C: ``[batch, pos, ngroups, d_state]``.
        D: ``[nheads]`` or None.
        h0: ``[batch, nheads, headdim, d_state]`` or None.
        inject: optional additive state edit, see :func:`chunked_scan`.
    Returns:
        y ``[batch, pos, nheads, headdim]``, states ``[batch, P, nheads, headdim, d_state]`` or
        None, last state ``[batch, nheads, headdim, d_state]``.
    """
    batch, L, nheads, headdim = x.shape
    d_state = B.shape[-1]
    f32 = accum_dtype(x)
    x_, dt_, A_ = x.to(f32), dt.to(f32), A.to(f32)
    Bh, Ch = _expand_groups(B.to(f32), nheads), _expand_groups(C.to(f32), nheads)
    positions = _normalize_positions(state_positions, L, x.device)
    if h0 is None:
        h0 = torch.zeros(batch, nheads, headdim, d_state, dtype=f32, device=x.device)

    def make_inputs(t0: int, t1: int):
        dt_c = dt_[:, t0:t1]                                             # [b, T, h]
        log_a = (dt_c * A_)[..., None, None]                             # [b, T, h, 1, 1]
        b = (dt_c[..., None] * x_[:, t0:t1])[..., None] * Bh[:, t0:t1, :, None, :]  # [b, T, h, p, n]
        return log_a, b

    def readout(h: torch.Tensor, t0: int, t1: int) -> torch.Tensor:
        return torch.einsum("bthpn,bthn->bthp", h, Ch[:, t0:t1])

    y, states, last = chunked_scan(make_inputs, readout, L, h0.to(f32), positions, chunk, inject)
    if D is not None:
        y = y + x_ * D.to(f32)[:, None]
    return y.to(x.dtype), states, last


def _segsum(a: torch.Tensor) -> torch.Tensor:
    """[..., T] -> [..., T, T]: out[..., i, j] = sum_{j < k <= i} a[..., k] for j <= i, -inf above."""
    T = a.shape[-1]
    a = a[..., None].expand(*a.shape, T)
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), diagonal=-1)
    a = a.masked_fill(~mask, 0)
    out = torch.cumsum(a, dim=-2)
    keep = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), diagonal=0)
    return out.masked_fill(~keep, float("-inf"))


def ssd_chunked_ref(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    h0: Optional[torch.Tensor] = None,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2 output through the SSD block decomposition (quadratic inside chunks, recurrent
    across them), as in ``mamba_ssm``'s ``ssd_minimal_discrete``: no per-token state is ever
    materialised, so it is the cheap path when no ``hook_ssm_state`` is requested.

    Shapes as :func:`ssd_scan_ref`. Returns y ``[batch, pos, nheads, headdim]`` and the last
    state ``[batch, nheads, headdim, d_state]``.
    """
    batch, L, nheads, headdim = x.shape
    f32 = accum_dtype(x)
    T = min(chunk, L)
    pad = (-L) % T
    x_, dt_ = x.to(f32), dt.to(f32)
    Bh, Ch = _expand_groups(B.to(f32), nheads), _expand_groups(C.to(f32), nheads)
    if pad:
        x_, dt_, Bh, Ch = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x_, dt_, Bh, Ch))
    nc = x_.shape[1] // T
    X = (x_ * dt_[..., None]).reshape(batch, nc, T, nheads, headdim)              # [b, c, l, h, p]
    Adt = (dt_ * A.to(f32)).reshape(batch, nc, T, nheads).permute(0, 3, 1, 2)    # [b, h, c, l]
    Bc = Bh.reshape(batch, nc, T, nheads, -1)
    Cc = Ch.reshape(batch, nc, T, nheads, -1)
    A_cum = torch.cumsum(Adt, dim=-1)
    # 1. within-chunk (diagonal blocks): y_t = sum_{s<=t} C_t.B_s exp(sum_{s<k<=t} dt_k A) dt_s x_s
    Lmat = torch.exp(_segsum(Adt))                                                 # [b, h, c, l, s]
    y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", Cc, Bc, Lmat, X)
    # 2. each chunk's final state, from its own inputs
    decay_states = torch.exp(A_cum[..., -1:] - A_cum)                              # [b, h, c, l]
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bc, decay_states, X)
    # 3. chain the chunk states (inter-chunk recurrence)
    init = torch.zeros_like(states[:, :1]) if h0 is None else h0.to(f32)[:, None]
    states = torch.cat([init, states], dim=1)                                      # [b, c+1, h, p, n]
    decay_chunk = torch.exp(_segsum(F.pad(A_cum[..., -1], (1, 0))))                # [b, h, c+1, c+1]
    states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    prev_states, last = states[:, :-1], states[:, -1]
    # 4. contribution of the state entering each chunk
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, prev_states, torch.exp(A_cum))
    y = (y_diag + y_off).reshape(batch, nc * T, nheads, headdim)[:, :L]
    if D is not None:
        y = y + x.to(f32) * D.to(f32)[:, None]
    return y.to(x.dtype), last
