"""The ops layer: the small interface the hooked mixers compute with, in two implementations.

* :class:`TorchOps`: the PyTorch reference (:mod:`achilles_interp.reference_ops`). Any device,
  differentiable, vectorised; the spec the kernels are tested against.
* :class:`CudaOps`: the fused kernels of ``mamba-ssm`` / ``causal-conv1d`` and the Triton
  state-emitting scans (:mod:`achilles_interp.kernels`). Where no kernel can do what a call asks
  (an additive state edit, a gradient through an inference-only kernel) it runs the reference.

``HookedMamba.forward`` picks one per forward (:func:`get_ops`) and passes it down; the mixers
call it, one line per stage, and never look at the backend themselves (the arrangement of
``mamba_ssm``'s ``mamba_simple.py``: the fast path behind one guard, a reference with the
kernel's own signature). Layouts are time-major, ``[batch, pos, ...]``, as the mixers hold them.

Interface::

    conv(x, weight, bias)                               causal depthwise conv, no activation
    selective_scan(u, dt, A, B, C, D, h0, positions, inject)            Mamba-1 -> (y, states, last)
    ssd_scan(x, dt, A, B, C, D, chunk_size, h0, positions, inject)      Mamba-2 -> (y, states, last)
    can_fuse(mixer, state_positions, L) / fused(mixer, hidden)          the whole mixer as one kernel
    normalize_positions(state_positions, L, device)     the one rule for state positions

One token at a time (generation; the recurrence the scans compute, with the states carried)::

    conv_step(x, conv_state, weight, bias)              -> (out, conv_state')
    selective_step(h, u, dt, A, B, C, D)                Mamba-1 -> (y, h')
    ssd_step(h, x, dt, A, B, C, D)                      Mamba-2 -> (y, h')

A step never changes the state it is given (the CUDA kernels update a copy in place), so a state
held by a hook or an activation cache stays as it was.

``positions`` (states to return, in that order) and ``inject`` (an additive state edit, see
:func:`achilles_interp.reference_ops.chunked_scan`) are optional; ``states`` is None without
positions, and ``last`` (the final state) may be None on the kernel path when no ``h0`` or
positions were given.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import warnings
from typing import Optional

import torch

from .config import BACKENDS
from .errors import UserError
from .kernels import cuda_ops
from .reference_ops import (
    DEFAULT_CHUNK,
    StatePositions,
    causal_conv1d_ref,
    causal_conv1d_step_ref,
    needs_grad,
    normalize_positions,
    selective_scan_ref,
    selective_step_ref,
    ssd_chunked_ref,
    ssd_scan_ref,
    ssd_step_ref,
)

__all__ = ["TorchOps", "CudaOps", "TORCH_OPS", "CUDA_OPS", "get_ops", "check_backend", "resolve_backend",
           "normalize_positions", "StatePositions"]

_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class TorchOps:
    """The PyTorch reference implementation of the ops interface."""

    name = "torch"
    normalize_positions = staticmethod(normalize_positions)

    def conv(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """Causal depthwise conv, no activation: x ``[batch, pos, channels]`` -> same shape."""
        return causal_conv1d_ref(x, weight, bias)

    def selective_scan(self, u, dt, A, B, C, D, h0=None, positions=None, inject=None):
        """Mamba-1 scan, shapes as :func:`~achilles_interp.reference_ops.selective_scan_ref`."""
        return selective_scan_ref(u, dt, A, B, C, D, h0=h0, state_positions=positions, inject=inject)

    def ssd_scan(self, x, dt, A, B, C, D, chunk_size: int, h0=None, positions=None, inject=None):
        """Mamba-2 scan, shapes as :func:`~achilles_interp.reference_ops.ssd_scan_ref`. Without
        states or edits it takes the SSD block form, which never materialises a per-token state.
        ``chunk_size`` tiles the kernels; the reference keeps its own chunk (the math is the same)."""
        if positions is None and inject is None:
            y, last = ssd_chunked_ref(x, dt, A, B, C, D, h0=h0, chunk=DEFAULT_CHUNK)
            return y, None, last
        return ssd_scan_ref(x, dt, A, B, C, D, h0=h0, state_positions=positions, inject=inject)

    def conv_step(self, x, conv_state, weight, bias):
        """One token of :meth:`conv`: x ``[batch, channels]``, conv_state ``[batch, channels, width]``
        (the last ``width`` inputs) -> (out ``[batch, channels]``, the new conv state)."""
        return causal_conv1d_step_ref(x, conv_state, weight, bias)

    def selective_step(self, h, u, dt, A, B, C, D):
        """One token of :meth:`selective_scan` from state h -> (y, h'); shapes as
        :func:`~achilles_interp.reference_ops.selective_step_ref`."""
        return selective_step_ref(h, u, dt, A, B, C, D)

    def ssd_step(self, h, x, dt, A, B, C, D):
        """One token of :meth:`ssd_scan` from state h -> (y, h'); shapes as
        :func:`~achilles_interp.reference_ops.ssd_step_ref`."""
        return ssd_step_ref(h, x, dt, A, B, C, D)

    def can_fuse(self, mixer, state_positions: StatePositions, seq_len: int) -> bool:
        """Whether ``mixer`` may run as one fused kernel on a sequence of ``seq_len`` tokens (never, on
        the reference)."""
        return False

    def fused(self, mixer, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("the PyTorch reference has no fused mixer kernel")


class CudaOps(TorchOps):
    """The CUDA-kernel implementation of the ops interface (GPU only; kernels import lazily).

    ``short_scan_max_len``: Mamba-1 sequences up to this many tokens take the Triton scan of
    :mod:`achilles_interp.kernels.triton_scan_grad` (differentiable) instead of ``mamba_ssm``'s, whose
    one-warp block per (batch row, channel) suits long sequences; such a mixer is not fused. Default
    from ``ACHILLES_INTERP_SHORT_SCAN_MAX_LEN`` (0: never; opt-in because which scan is faster
    depends on the shape: ``benchmarks/short_scan.py``).
    """

    name = "cuda"

    def __init__(self, short_scan_max_len: Optional[int] = None):
        self._short_scan_max_len = short_scan_max_len

    @property
    def short_scan_max_len(self) -> int:
        if self._short_scan_max_len is None:  # read when first needed: a bad value is a one-line CLI error
            self._short_scan_max_len = _short_scan_max_len()
        return self._short_scan_max_len

    @short_scan_max_len.setter
    def short_scan_max_len(self, value: int) -> None:
        self._short_scan_max_len = int(value)

    def conv(self, x, weight, bias):
        return cuda_ops.causal_conv1d_cuda(x, weight, bias)

    def selective_scan(self, u, dt, A, B, C, D, h0=None, positions=None, inject=None):
        """``selective_scan_fn`` for a plain scan; the Triton kernel for states or a start state
        (inference only); the reference for edits and for gradients through states or h0."""
        if inject is None and h0 is None and positions is None:
            short = u.shape[1] <= self.short_scan_max_len and u.dtype in _KERNEL_DTYPES
            y, last = (cuda_ops.selective_scan_short_cuda if short else cuda_ops.selective_scan_cuda)(u, dt, A, B, C, D)
            return y, None, last
        if inject is None and not needs_grad(u, dt, A, B, C, D, h0):
            return cuda_ops.selective_scan_states_cuda(u, dt, A, B, C, D, h0=h0, positions=positions)
        return super().selective_scan(u, dt, A, B, C, D, h0, positions, inject)

    def ssd_scan(self, x, dt, A, B, C, D, chunk_size, h0=None, positions=None, inject=None):
        """``mamba_chunk_scan_combined`` without states. With states (:mod:`achilles_interp.kernels.ssd_states`):
        for a few positions at inference (fewer than 2 L / chunk_size), y from
        ``mamba_chunk_scan_combined`` and the states from ``ssd_states_at`` (boundary states, then each
        position's chunk up to it); otherwise the Triton state-emitting scan (differentiable by
        recomputation). The reference for edits, for float64, or when the kernels do not import (warned)."""
        h0_f = None if h0 is None else h0.float().contiguous()
        if inject is None and positions is None:
            y, last = cuda_ops.ssd_scan_cuda(x, dt, A, B, C, D, h0_f, chunk_size)
            return y, None, last
        kernels = _ssd_states_kernels() if inject is None and x.dtype in _KERNEL_DTYPES else None
        if kernels is None:
            return super().ssd_scan(x, dt, A, B, C, D, chunk_size, h0, positions, inject)
        L = x.shape[1]
        if positions.numel() * chunk_size < 2 * L and not needs_grad(x, dt, A, B, C, D, h0):
            y, _ = cuda_ops.ssd_scan_cuda(x, dt, A, B, C, D, h0_f, chunk_size)
            states, last = kernels.ssd_states_at(x, dt, A, B, chunk_size, positions, dt_softplus=False,
                                                 initial_states=h0)
            return y, states, last
        return kernels.ssd_scan_states(x, dt, A, B, C, chunk_size, D=D, dt_softplus=False, initial_states=h0,
                                       state_positions=positions, backend="triton")

    def conv_step(self, x, conv_state, weight, bias):
        """``causal_conv1d_update`` on a copy of the state (float64 on the reference)."""
        if x.dtype not in _KERNEL_DTYPES:
            return super().conv_step(x, conv_state, weight, bias)
        return cuda_ops.causal_conv1d_step_cuda(x, conv_state, weight, bias)

    def selective_step(self, h, u, dt, A, B, C, D):
        """``selective_state_update`` on a copy of the state; the reference for float64 and gradients."""
        if u.dtype not in _KERNEL_DTYPES or needs_grad(h, u, dt, A, B, C, D):
            return super().selective_step(h, u, dt, A, B, C, D)
        return cuda_ops.selective_step_cuda(h, u, dt, A, B, C, D)

    def ssd_step(self, h, x, dt, A, B, C, D):
        """``selective_state_update`` (heads form) on a copy of the state; the reference for float64
        and gradients."""
        if x.dtype not in _KERNEL_DTYPES or needs_grad(h, x, dt, A, B, C, D):
            return super().ssd_step(h, x, dt, A, B, C, D)
        return cuda_ops.ssd_step_cuda(h, x, dt, A, B, C, D)

    def can_fuse(self, mixer, state_positions, seq_len):
        """The fast path's one guard: no state asked for, the standard conv, nothing observing any
        module inside the mixer (no hook of any kind and no nnsight trace could see inside the kernel),
        and not a Mamba-1 sequence short enough for the short-sequence scan."""
        short = mixer.cfg.mixer == "mamba1" and seq_len <= self.short_scan_max_len
        return (state_positions is None and mixer.cfg.conv_mode == "standard" and not mixer.cfg.bcdt_norm
                and not short and not mixer.any_hooks())

    def fused(self, mixer, hidden):
        """Mamba-1: ``mamba_inner_fn``; Mamba-2: ``mamba_split_conv1d_scan_combined`` (conv, scan,
        gated norm and out_proj in one call)."""
        cfg = mixer.cfg
        if cfg.mixer == "mamba1":
            xz = mixer.in_proj(hidden).transpose(1, 2)                 # [batch, 2*d_inner, pos]
            return cuda_ops.kernel("mamba_inner_fn")(
                xz.contiguous(), mixer.conv1d.weight, mixer.conv1d.bias, mixer.x_proj.weight,
                mixer.dt_proj.weight, mixer.out_proj.weight, mixer.out_proj.bias, mixer.A, None, None,
                mixer.D.float(), delta_bias=mixer.dt_proj.bias.float(), delta_softplus=True,
            )
        kwargs = {} if cfg.dt_limit == (0.0, float("inf")) else {"dt_limit": cfg.dt_limit}
        return cuda_ops.kernel("mamba_split_conv1d_scan_combined")(
            mixer.in_proj(hidden), mixer.conv1d.weight.reshape(cfg.conv_dim, -1), mixer.conv1d.bias,
            mixer.dt_bias, mixer.A, D=mixer.D, chunk_size=cfg.chunk_size, activation="silu",
            rmsnorm_weight=mixer.norm.weight, rmsnorm_eps=cfg.norm_eps, outproj_weight=mixer.out_proj.weight,
            outproj_bias=mixer.out_proj.bias, headdim=cfg.headdim, ngroups=cfg.ngroups,
            norm_before_gate=cfg.norm_before_gate, **kwargs,
        )


@functools.lru_cache(maxsize=None)
def _ssd_states_kernels():
    """The module of the Triton SSD scans with states, or None (warned once) when it does not import."""
    try:
        # by its full name: a package attribute left by an earlier import must not hide a failing import
        ssd_states = importlib.import_module(f"{__package__}.kernels.ssd_states")
    except ImportError as e:
        warnings.warn("Mamba-2 SSM states on the CUDA backend fall back to the PyTorch reference: the "
                      f"Triton kernel achilles_interp.kernels.ssd_states did not import ({e})", stacklevel=3)
        return None
    return ssd_states


def _short_scan_max_len() -> int:
    raw = os.environ.get("ACHILLES_INTERP_SHORT_SCAN_MAX_LEN", "0")
    if not re.fullmatch(r"[0-9]+", raw.strip()):
        raise UserError(f"ACHILLES_INTERP_SHORT_SCAN_MAX_LEN must be a whole number of tokens (0 = off), got {raw!r}")
    return int(raw)


TORCH_OPS = TorchOps()
CUDA_OPS = CudaOps()


def get_ops(backend: str) -> TorchOps:
    """The implementation for a resolved backend, ``"torch"`` or ``"cuda"``."""
    return CUDA_OPS if backend == "cuda" else TORCH_OPS


def check_backend(value: str) -> str:
    """``value`` if it names a backend that can run here; else an error saying why not."""
    if value not in BACKENDS:
        raise UserError(f"backend must be one of {BACKENDS}, got {value!r}")
    if value == "cuda" and not cuda_ops.kernels_available():
        try:
            cuda_ops._modules()
        except cuda_ops.KernelUnavailable as e:
            raise cuda_ops.KernelUnavailable(f"backend='cuda' unavailable: {e}") from None
        raise cuda_ops.KernelUnavailable("backend='cuda' needs a visible NVIDIA GPU")
    return value


def resolve_backend(backend: str, device: torch.device) -> str:
    """``"cuda"`` or ``"torch"`` for a model whose parameters are on ``device``: ``"auto"`` takes the
    kernels when they import and the model is on a GPU."""
    if backend == "torch":
        return "torch"
    if backend == "cuda":
        if device.type != "cuda":
            raise cuda_ops.KernelUnavailable("backend='cuda' but the model is on the CPU: call model.to('cuda') first")
        return "cuda"
    return "cuda" if device.type == "cuda" and cuda_ops.kernels_available() else "torch"
