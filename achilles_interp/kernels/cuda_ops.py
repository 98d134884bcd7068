"""Thin, lazily imported wrappers over the fused CUDA kernels of ``mamba-ssm`` and ``causal-conv1d``.

``import mamba_ssm`` loads the compiled ``selective_scan_cuda`` extension unconditionally and fails
on a machine without it, so nothing here imports it at module import time. Each wrapper takes the
time-major layouts the hooked mixers use (``[batch, pos, ...]``) and returns the same;
:class:`achilles_interp.ops.CudaOps` puts them behind the interface the reference also implements.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from ..reference_ops import sort_positions


class KernelUnavailable(RuntimeError):
    """The CUDA kernels cannot be used here (not installed, or no GPU)."""


@functools.lru_cache(maxsize=None)
def _modules() -> dict:
    try:
        from causal_conv1d import causal_conv1d_fn, causal_conv1d_update
        from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn, selective_scan_fn
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
        from mamba_ssm.ops.triton.ssd_combined import (
            mamba_chunk_scan_combined,
            mamba_split_conv1d_scan_combined,
        )
    except Exception as e:  # ImportError, or the compiled extension failing to load
        raise KernelUnavailable(
            "the CUDA backend needs the `mamba-ssm` and `causal-conv1d` kernels "
            "(pip install 'achilles-interp[cuda]' on a machine with an NVIDIA GPU); "
            f"importing them failed with: {type(e).__name__}: {e}"
        ) from e
    return dict(
        causal_conv1d_fn=causal_conv1d_fn,
        causal_conv1d_update=causal_conv1d_update,
        selective_state_update=selective_state_update,
        selective_scan_fn=selective_scan_fn,
        mamba_inner_fn=mamba_inner_fn,
        mamba_chunk_scan_combined=mamba_chunk_scan_combined,
        mamba_split_conv1d_scan_combined=mamba_split_conv1d_scan_combined,
    )


def kernels_available() -> bool:
    """True when a GPU is visible and the mamba-ssm / causal-conv1d kernels import."""
    if not torch.cuda.is_available():
        return False
    try:
        _modules()
    except KernelUnavailable:
        return False
    return True


def kernel(name: str):
    """The kernel function ``name`` (e.g. ``"mamba_inner_fn"``), importing lazily."""
    return _modules()[name]


def _conv_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[channels, width]``; causal-conv1d takes weights in fp32 or in the input's dtype."""
    w = weight.reshape(weight.shape[0], -1)
    return w if w.dtype in (torch.float32, dtype) else w.to(dtype)


def _channel_last_ok(xt: torch.Tensor) -> bool:
    """Whether causal-conv1d takes ``xt`` ``[batch, channels, pos]`` as it is, channels along memory (its
    channel-last kernel: channels a multiple of 8, the other strides too, and 16-byte vector loads from
    the first element, which a view into a larger tensor may not allow)."""
    return (xt.stride(1) == 1 and xt.shape[1] % 8 == 0 and xt.stride(0) % 8 == 0 and xt.stride(2) % 8 == 0
            and xt.stride(2) >= 8 and xt.data_ptr() % 16 == 0)  # stride 0 (x broadcast over time) is not


def causal_conv1d_cuda(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``causal_conv1d_fn`` without activation. x ``[batch, pos, channels]`` -> same shape.

    The mixers' time-major x goes to causal-conv1d's channel-last kernel as it is (tiles of
    (positions, channels)); its channel-first kernel, one block per (batch row, channel), would need a
    transposed copy and wastes most of each block on short sequences."""
    w = _conv_weight(weight, x.dtype)
    xt = x.transpose(1, 2)
    if not _channel_last_ok(xt):  # the channel-first kernel, on a fresh copy with standard strides
        xt = xt.clone(memory_format=torch.contiguous_format)
    out = kernel("causal_conv1d_fn")(xt, w, bias, activation=None)
    return out.transpose(1, 2)


def causal_conv1d_step_cuda(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                            bias: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``causal_conv1d_update`` without activation, on a copy of the state.

    x ``[batch, channels]``; conv_state ``[batch, channels, width]`` (the last ``width`` inputs).
    Returns (out ``[batch, channels]``, the new conv state)."""
    state = conv_state.to(x.dtype).clone()   # the kernel updates it in place
    w = _conv_weight(weight, x.dtype)
    out = kernel("causal_conv1d_update")(x.contiguous(), state, w, None if bias is None else bias.to(w.dtype),
                                         activation=None)
    return out, state


def selective_step_cuda(h, u, dt, A, B, C, D):
    """``selective_state_update`` with dt already positive (no softplus, no gate), on a copy of the state.

    h ``[batch, d_inner, d_state]``; u, dt ``[batch, d_inner]``; A ``[d_inner, d_state]``; B, C
    ``[batch, d_state]``; D ``[d_inner]``. Returns (y ``[batch, d_inner]``, h' fp32)."""
    state = h.float().clone()
    zero_bias = torch.zeros(u.shape[-1], device=u.device, dtype=torch.float32)
    y = kernel("selective_state_update")(
        state, u.contiguous(), dt.contiguous(), A.float().contiguous(), B.contiguous(), C.contiguous(),
        D=None if D is None else D.float(), z=None, dt_bias=zero_bias, dt_softplus=False)
    return y, state


def ssd_step_cuda(h, x, dt, A, B, C, D):
    """``selective_state_update`` in its heads form (``mamba_ssm``'s ``Mamba2.step``), dt already
    softplus-ed and clamped, on a copy of the state.

    h ``[batch, nheads, headdim, d_state]``; x ``[batch, nheads, headdim]``; dt ``[batch, nheads]``;
    A, D ``[nheads]``; B, C ``[batch, ngroups, d_state]``. Returns (y ``[batch, nheads, headdim]``, h' fp32)."""
    H, P, N = h.shape[1:]
    state = h.float().clone()
    A_ = A.float()[:, None, None].expand(H, P, N)             # stride 0 over headdim: the kernel's tied path
    dt_ = dt[:, :, None].expand(-1, H, P)
    zero_bias = torch.zeros(H, device=x.device, dtype=torch.float32)[:, None].expand(H, P)
    D_ = None if D is None else D.float()[:, None].expand(H, P)
    y = kernel("selective_state_update")(state, x.contiguous(), dt_, A_, B.contiguous(), C.contiguous(), D=D_,
                                         z=None, dt_bias=zero_bias, dt_softplus=False)
    return y, state


def selective_scan_cuda(u, dt, A, B, C, D):
    """``selective_scan_fn`` with dt already positive (no softplus, no gate).

    u, dt ``[batch, pos, d_inner]``; A ``[d_inner, d_state]``; B, C ``[batch, pos, d_state]``;
    D ``[d_inner]``. Returns (y ``[batch, pos, d_inner]``, the last state ``[batch, d_inner, d_state]`` fp32).
    """
    y, last = kernel("selective_scan_fn")(
        u.transpose(1, 2).contiguous(), dt.transpose(1, 2).contiguous(), A.float().contiguous(),
        B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(),
        None if D is None else D.float(), z=None, delta_bias=None, delta_softplus=False, return_last_state=True,
    )
    return y.transpose(1, 2), last


def selective_scan_short_cuda(u, dt, A, B, C, D):
    """The Triton scan for short sequences (differentiable): same arguments and results as
    :func:`selective_scan_cuda`."""
    from .triton_scan_grad import selective_scan_trainable

    y, last = selective_scan_trainable(u.transpose(1, 2), dt.transpose(1, 2), A.float(), B.transpose(1, 2),
                                       C.transpose(1, 2), None if D is None else D.float())
    return y.transpose(1, 2), last


def ssd_scan_cuda(x, dt, A, B, C, D, h0, chunk_size: int):
    """``mamba_chunk_scan_combined`` with dt already softplus-ed and clamped.

    x ``[batch, pos, nheads, headdim]``; dt ``[batch, pos, nheads]``; A, D ``[nheads]``;
    B, C ``[batch, pos, ngroups, d_state]``; h0 ``[batch, nheads, headdim, d_state]`` or None.
    Returns (y ``[batch, pos, nheads, headdim]``, last state).
    """
    y, last = kernel("mamba_chunk_scan_combined")(
        x.contiguous(), dt.contiguous(), A.float(), B.contiguous(), C.contiguous(), chunk_size,
        D=None if D is None else D.float(), z=None, dt_bias=None, initial_states=h0,
        dt_softplus=False, return_final_states=True,
    )
    return y, last


def selective_scan_states_cuda(u, dt, A, B, C, D, h0=None, positions=None):
    """Mamba-1 scan that also emits states, on the Triton kernel (inference only).

    Time-major layouts as :func:`selective_scan_cuda`; h0 ``[batch, d_inner, d_state]`` or None;
    positions a LongTensor of distinct positions in any order (the kernel walks them sorted; the
    states come back in the order given), or None. Returns (y ``[batch, pos, d_inner]``,
    states ``[batch, P, d_inner, d_state]`` fp32 or None, last state ``[batch, d_inner, d_state]``).
    """
    from .triton_scan import selective_scan_states

    restore = None
    if positions is not None:
        positions, restore = sort_positions(positions)
    y, states, last = selective_scan_states(
        u.transpose(1, 2), dt.transpose(1, 2), A.float(), B.transpose(1, 2), C.transpose(1, 2),
        None if D is None else D.float(), initial_state=None if h0 is None else h0.float(),
        state_positions=positions,
    )
    if restore is not None:
        states = states.index_select(1, restore.to(states.device))
    return y.transpose(1, 2), states, last
