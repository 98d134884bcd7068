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
import operator
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .inputs import InputError

# None (no states), "all", or positions: a list / 1-D integer tensor (negatives count from the end).
StatePositions = Union[None, str, int, Sequence[int], torch.Tensor]

DEFAULT_CHUNK = 64


def accum_dtype(t: torch.Tensor) -> torch.dtype:
    """Accumulation dtype of the reference: float64 for float64 inputs, else float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def needs_grad(*tensors) -> bool:
    """True when autograd records this call: then it must run on something differentiable (the
    reference, or a kernel wrapped with a backward), not on an inference-only kernel."""
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


# ---------------------------------------------------------------------------------------------
# State positions: the one parser / normaliser
# ---------------------------------------------------------------------------------------------
def position_list(state_positions) -> torch.Tensor:
    """A list (or a 1-D integer tensor, or one int) of positions as a CPU LongTensor, as given.

    Checks the form only (integers, flat, not empty); range and order rules are the caller's.
    Raises :class:`InputError` naming the offending value.
    """
    if isinstance(state_positions, str):
        raise InputError(f"state positions must be None, 'all' or a list of integer positions, "
                         f"got the string {state_positions!r}")
    if isinstance(state_positions, torch.Tensor):
        t = state_positions
        if t.dtype == torch.bool or t.is_floating_point() or t.is_complex() or t.dim() > 1:
            raise InputError(f"state positions as a tensor must be a 1-D integer tensor, got {t.dtype} "
                             f"of shape {list(t.shape)}")
        pos = t.detach().to("cpu", torch.long).reshape(-1)
    else:
        items = [state_positions] if isinstance(state_positions, int) else state_positions
        try:
            items = list(items)
        except TypeError:
            raise InputError(f"state positions must be None, 'all' or a list of integer positions, "
                             f"got {type(state_positions).__name__}") from None
        ints = []
        for p in items:
            try:
                if isinstance(p, bool):
                    raise TypeError
                ints.append(operator.index(p))
            except TypeError:
                raise InputError(f"state positions must be integers, got {p!r} ({type(p).__name__}) "
                                 f"in {state_positions!r}") from None
        pos = torch.tensor(ints, dtype=torch.long)
    if pos.numel() == 0:
        raise InputError("state positions list is empty; pass None to skip the states")
    return pos


def normalize_positions(state_positions: StatePositions, L: int, device=None) -> Optional[torch.Tensor]:
    """The rule for ``ssm_state_positions`` everywhere: None -> None; ``"all"`` -> ``arange(L)``;
    a list / 1-D integer tensor -> LongTensor ``[P]`` on ``device`` **in the order given** (states come
    back in that order), negatives counting from the end. Raises :class:`InputError` for
    non-integers, positions outside ``[-L, L)`` and repeated positions."""
    if state_positions is None:
        return None
    if isinstance(state_positions, str) and state_positions == "all":
        return torch.arange(L, device=device)
    pos = position_list(state_positions)
    outside = pos[(pos < -L) | (pos >= L)]
    if outside.numel():
        raise InputError(f"state positions must lie in [-{L}, {L}) for a sequence of length {L} "
                         f"(negatives count from the end), got {outside.tolist()[:8]}")
    pos = torch.where(pos < 0, pos + L, pos)
    uniq, counts = torch.unique(pos, return_counts=True)
    if bool((counts > 1).any()):
        raise InputError(f"state positions must be distinct (each state comes back once, in the order "
                         f"asked); repeated: {uniq[counts > 1].tolist()[:8]} (after counting negatives from the end)")
    return pos.to(device)


def sort_positions(positions: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(positions sorted ascending, the index that puts states computed in that order back in the
    order given, or None when they were sorted already)."""
    if positions.numel() < 2 or bool((positions[1:] > positions[:-1]).all()):
        return positions, None
    ascending, order = torch.sort(positions)
    return ascending, torch.argsort(order)


def _add_skip(y: torch.Tensor, x: torch.Tensor, D: Optional[torch.Tensor]) -> torch.Tensor:
    """y + D x in y's (accumulation) dtype, returned in x's dtype; D broadcasts against x."""
    if D is not None:
        y = y + x.to(y.dtype) * D.to(y.dtype)
    return y.to(x.dtype)


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


def chunked_scan(
    make_inputs: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]],
    readout: Callable[[torch.Tensor, int, int], torch.Tensor],
    x: torch.Tensor,
    D: Optional[torch.Tensor],
    h0: Optional[torch.Tensor],
    state_positions: StatePositions = None,
    chunk: int = DEFAULT_CHUNK,
    inject: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """Run h_t = exp(log_a_t) h_{t-1} + b_t over the L = ``x.shape[1]`` steps, chunk by chunk, and
    read out y_t = readout(h_t) + D x_t.

    Only one chunk of states (``[batch, chunk, *state]``) is alive at a time unless states are
    requested, so memory is O(batch * chunk * state) plus the requested states.

    Args:
        make_inputs: ``(t0, t1) -> (log_a, b)`` for tokens t0..t1-1, each ``[batch, t1-t0, ...]``.
        readout: ``(h [batch, t1-t0, *state], t0, t1) -> [batch, t1-t0, ...]``, the C h part of y.
        x: ``[batch, L, ...]`` the scan input (for the skip D x, and y's dtype and device).
        D: the skip, broadcastable against x, or None.
        h0: ``[batch, *state]`` initial state, or None for zeros.
        state_positions: positions whose states to return (see :func:`normalize_positions`).
        inject: optional ``(positions [P], delta [batch, P, *state])`` added to h at those
            positions before the recurrence carries on (an additive state edit; with a
            zero-valued delta that carries gradient it yields dL/dh_t through the recurrence).
    Returns:
        y ``[batch, L, ...]`` in x's dtype, states ``[batch, P, *state]`` in the order asked (or
        None), last state ``[batch, *state]``; states in the accumulation dtype.
    """
    L = x.shape[1]
    positions = normalize_positions(state_positions, L, x.device)
    restore = None
    if positions is not None:
        positions, restore = sort_positions(positions)
    ys, kept = [], []
    h = None if h0 is None else h0.to(accum_dtype(x))
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
        if restore is not None:
            states = states.index_select(1, restore)
    return _add_skip(torch.cat(ys, dim=1), x, D), states, h


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
        state_positions: None, "all", or positions whose states to return (in that order).
        inject: optional additive state edit ``(positions, delta [batch, P, d_inner, d_state])``,
            see :func:`chunked_scan`.
    Returns:
        y ``[batch, pos, d_inner]`` (fp32 math, u's dtype), states ``[batch, P, d_inner, d_state]``
        (fp32) or None, last state ``[batch, d_inner, d_state]`` (fp32).
    """
    f = accum_dtype(u)
    u_, dt_, A_, B_, C_ = (t.to(f) for t in (u, dt, A, B, C))

    def make_inputs(t0: int, t1: int):
        dt_c = dt_[:, t0:t1, :, None]                                    # [b, T, d, 1]
        return dt_c * A_, dt_c * B_[:, t0:t1, None, :] * u_[:, t0:t1, :, None]   # [b, T, d, n]

    def readout(h: torch.Tensor, t0: int, t1: int) -> torch.Tensor:
        return torch.einsum("btdn,btn->btd", h, C_[:, t0:t1])

    return chunked_scan(make_inputs, readout, u, D, h0, state_positions, chunk, inject)


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
        state_positions, inject: as :func:`selective_scan_ref`.
    Returns:
        y ``[batch, pos, nheads, headdim]``, states ``[batch, P, nheads, headdim, d_state]`` or
        None, last state ``[batch, nheads, headdim, d_state]``.
    """
    nheads = x.shape[2]
    f = accum_dtype(x)
    x_, dt_, A_ = x.to(f), dt.to(f), A.to(f)
    Bh, Ch = _expand_groups(B.to(f), nheads), _expand_groups(C.to(f), nheads)

    def make_inputs(t0: int, t1: int):
        dt_c = dt_[:, t0:t1]                                             # [b, T, h]
        log_a = (dt_c * A_)[..., None, None]                             # [b, T, h, 1, 1]
        b = (dt_c[..., None] * x_[:, t0:t1])[..., None] * Bh[:, t0:t1, :, None, :]  # [b, T, h, p, n]
        return log_a, b

    def readout(h: torch.Tensor, t0: int, t1: int) -> torch.Tensor:
        return torch.einsum("bthpn,bthn->bthp", h, Ch[:, t0:t1])

    skip = None if D is None else D[:, None]
    return chunked_scan(make_inputs, readout, x, skip, h0, state_positions, chunk, inject)


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
    return _add_skip(y, x, None if D is None else D[:, None]), last


# ---------------------------------------------------------------------------------------------
# One token at a time: the recurrent form, for generation (conv state + SSM state carried)
# ---------------------------------------------------------------------------------------------
def conv_state_from(x: torch.Tensor, width: int) -> torch.Tensor:
    """The conv state after the tokens of ``x [batch, pos, channels]``: ``[batch, channels, width]``,
    the last ``width`` inputs, oldest first, zero-padded on the left when ``pos < width`` (the layout
    of ``mamba_ssm``'s inference cache and ``causal_conv1d_update``)."""
    tail = x[:, -width:].transpose(1, 2)
    return F.pad(tail, (width - tail.shape[-1], 0)).contiguous()


def causal_conv1d_step_ref(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                           bias: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of :func:`causal_conv1d_ref`.

    Args:
        x: ``[batch, channels]`` the new token's input.
        conv_state: ``[batch, channels, width]`` the previous ``width`` inputs (see :func:`conv_state_from`).
        weight, bias: as :func:`causal_conv1d_ref`.
    Returns:
        (out ``[batch, channels]``, the new conv state ``[batch, channels, width]``; the input is not changed).
    """
    channels = x.shape[-1]
    w = weight.reshape(channels, -1)
    state = torch.cat([conv_state[:, :, 1:], x[:, :, None].to(conv_state.dtype)], dim=-1)
    out = (state.to(x.dtype) * w.to(x.dtype)).sum(-1)
    if bias is not None:
        out = out + bias.to(x.dtype)
    return out, state


def selective_step_ref(h: torch.Tensor, u: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                       C: torch.Tensor, D: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of :func:`selective_scan_ref`: h' = exp(dt A) h + dt B u, y = C . h' + D u.

    h ``[batch, d_inner, d_state]``; u, dt ``[batch, d_inner]``; A ``[d_inner, d_state]``;
    B, C ``[batch, d_state]``; D ``[d_inner]``. Returns (y ``[batch, d_inner]`` in u's dtype,
    h' in the accumulation dtype).
    """
    f = accum_dtype(u)
    u_, dt_ = u.to(f), dt.to(f)[..., None]
    h = torch.exp(dt_ * A.to(f)) * h.to(f) + dt_ * B.to(f)[:, None, :] * u_[..., None]
    y = torch.einsum("bdn,bn->bd", h, C.to(f))
    return _add_skip(y, u, D), h


def ssd_step_ref(h: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                 C: torch.Tensor, D: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of :func:`ssd_scan_ref`.

    h ``[batch, nheads, headdim, d_state]``; x ``[batch, nheads, headdim]``; dt ``[batch, nheads]``;
    A, D ``[nheads]``; B, C ``[batch, ngroups, d_state]``. Returns (y ``[batch, nheads, headdim]``
    in x's dtype, h' in the accumulation dtype).
    """
    nheads = x.shape[1]
    f = accum_dtype(x)
    x_, dt_ = x.to(f), dt.to(f)
    Bh = B.to(f).repeat_interleave(nheads // B.shape[1], dim=1)          # [b, h, n]
    Ch = C.to(f).repeat_interleave(nheads // C.shape[1], dim=1)
    decay = torch.exp(dt_ * A.to(f))[..., None, None]                    # [b, h, 1, 1]
    h = decay * h.to(f) + (dt_[..., None] * x_)[..., None] * Bh[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", h, Ch)
    return _add_skip(y, x, None if D is None else D[:, None]), h
