"""The selective scan as (hidden) attention.

Mamba-1 (A per channel c and state n). Unrolling h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t,
y_i = C_i . h_i + D u_i gives ``y_i[c] = sum_{j<=i} M[c, i, j] u_j[c] + D[c] u_i[c]`` with::

    M[c, i, j] = sum_n C_i[n] exp( sum_{k=j+1..i} dt_k[c] A[c, n] ) B_j[n] dt_j[c]     (j <= i; 0 otherwise)

Mamba-2 (one scalar A_h per head h, B/C per group g(h))::

    M[h, i, j] = (C_i[g] . B_j[g]) exp( A_h sum_{k=j+1..i} dt_k[h] ) dt_j[h]
    y_i[h, p] = sum_j M[h, i, j] x_j[h, p] + D_h x_i[h, p]

Computed from cached dt / B / C by looping over states (Mamba-1) so that no
``[channel, state, L, L]`` tensor is materialised: peak memory is one ``[batch, L, L, channels]``
buffer (bounded further by ``channel_chunk``). Shapes: dt ``[b, L, d_inner]`` (Mamba-1) or
``[b, L, nheads]``; B, C ``[b, L, d_state]`` or ``[b, L, ngroups, d_state]``; the result is
``[b, channels_or_heads, L, L]`` (query i, key j), dimensionless weights on u_j.

The paper's SSM "attention score" is ``S = Mask ∘ (C Bᵀ)`` (:func:`ssm_attention_score`).
"""

from __future__ import annotations

from typing import Optional

import torch

from achilles_interp.errors import UserError


def _segment_sums(dt: torch.Tensor):
    """dt ``[b, L, c]`` -> (``[b, L_i, L_j, c]`` = sum_{k=j+1..i} dt_k (0 where j > i),
    ``upper [1, L, L, 1]`` True where j > i)."""
    cum = dt.cumsum(1)
    seg = cum[:, :, None, :] - cum[:, None, :, :]
    L = dt.shape[1]
    upper = torch.ones(L, L, dtype=torch.bool, device=dt.device).triu(1)[None, :, :, None]
    return seg.masked_fill(upper, 0.0), upper


def effective_attention_mamba1(
    dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, channel_chunk: Optional[int] = None
) -> torch.Tensor:
    """M ``[b, d_inner, L, L]`` from dt ``[b, L, d_inner]``, A ``[d_inner, d_state]`` (negative),
    B, C ``[b, L, d_state]``. Works in the dtype of ``dt`` (use float64 for exact checks)."""
    if dt.dim() != 3 or B.dim() != 3 or C.dim() != 3 or A.dim() != 2:
        raise UserError(
            "Mamba-1 effective attention needs dt [b, L, d_inner], A [d_inner, d_state], "
            f"B, C [b, L, d_state]; got {tuple(dt.shape)}, {tuple(A.shape)}, "
            f"{tuple(B.shape)}, {tuple(C.shape)}"
        )
    b, L, d = dt.shape
    f = dt.dtype
    A, B, C = A.to(f), B.to(f), C.to(f)
    chunk = channel_chunk or d
    out = torch.empty(b, d, L, L, dtype=f, device=dt.device)
    for c0 in range(0, d, chunk):
        sl = slice(c0, min(d, c0 + chunk))
        seg, upper = _segment_sums(dt[:, :, sl])  # [b, i, j, c]
        acc = torch.zeros_like(seg)
        for n in range(A.shape[1]):
            decay = torch.exp(seg * A[sl, n]).masked_fill(upper, 0.0)  # [b, i, j, c]; 0 where j > i
            acc += C[:, :, None, None, n] * decay * B[:, None, :, None, n]
        acc *= dt[:, None, :, sl]
        out[:, sl] = acc.permute(0, 3, 1, 2)
    return out


def effective_attention_mamba2(
    dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor
) -> torch.Tensor:
    """M ``[b, nheads, L, L]`` from dt ``[b, L, nheads]``, A ``[nheads]``,
    B, C ``[b, L, ngroups, d_state]``."""
    if dt.dim() != 3 or A.dim() != 1 or B.dim() != 4 or C.dim() != 4:
        raise UserError("Mamba-2 effective attention needs dt [b, L, H], A [H], B, C [b, L, G, N]")
    f = dt.dtype
    H, G = dt.shape[-1], B.shape[2]
    cb = torch.einsum("bign,bjgn->bgij", C.to(f), B.to(f))  # [b, G, i, j]
    cb = cb.repeat_interleave(H // G, dim=1)  # [b, H, i, j]
    seg, upper = _segment_sums(dt)  # [b, i, j, H]
    decay = torch.exp(seg * A.to(f)).masked_fill(upper, 0.0).permute(0, 3, 1, 2)  # [b, H, i, j]
    return cb * decay * dt.permute(0, 2, 1)[:, :, None, :]


def ssm_attention_score(B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """The paper's S = Mask ∘ (C Bᵀ): ``[b, L, L]`` (Mamba-1, B/C ``[b, L, N]``) or ``[b, G, L, L]``."""
    if B.dim() == 3:
        s = torch.einsum("bin,bjn->bij", C, B)
    else:
        s = torch.einsum("bign,bjgn->bgij", C, B)
    return torch.tril(s)


def effective_attention(
    model,
    tokens: torch.Tensor,
    layer: int,
    dtype: Optional[torch.dtype] = None,
    channel_chunk: Optional[int] = None,
) -> torch.Tensor:
    """Effective attention of ``model`` (HookedMamba) at ``layer`` on ``tokens [b, L]``:
    ``[b, d_inner, L, L]`` (Mamba-1) or ``[b, nheads, L, L]`` (Mamba-2)."""
    if not 0 <= layer < model.cfg.n_layers:
        raise UserError(f"layer must be in [0, {model.cfg.n_layers}), got {layer}")
    pre = f"blocks.{layer}.mixer."
    with torch.no_grad():
        _, cache = model.run_with_cache(
            tokens, names_filter=[pre + "hook_dt", pre + "hook_B", pre + "hook_C"]
        )
    mixer = model.blocks[layer].mixer
    f = dtype or cache[pre + "hook_dt"].dtype
    dt, B, C, A = (
        cache[pre + "hook_dt"].to(f),
        cache[pre + "hook_B"].to(f),
        cache[pre + "hook_C"].to(f),
        mixer.A.detach().to(f),
    )
    if dt.is_cuda and model.cfg.mixer == "mamba1":
        try:  # the project's GPU kernel (layout [batch, channels, L]); same numbers, less memory
            from achilles_interp.kernels.effective_attention import effective_attention as _kernel

            return _kernel(dt.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), out_dtype=f)
        except ImportError:
            pass
    if model.cfg.mixer == "mamba1":
        return effective_attention_mamba1(dt, A, B, C, channel_chunk)
    return effective_attention_mamba2(dt, A, B, C)


def layer_ssm_attention_score(model, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    pre = f"blocks.{layer}.mixer."
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[pre + "hook_B", pre + "hook_C"])
    return ssm_attention_score(cache[pre + "hook_B"], cache[pre + "hook_C"])


def transformer_attention(model, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    """The Transformer baseline's attention pattern ``[b, heads, L, L]`` at ``layer``."""
    name = f"blocks.{layer}.attn.hook_pattern"
    if name not in model.hook_dict:
        raise UserError(f"model has no hook {name!r} (is it the Transformer baseline?)")
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[name])
    return cache[name]
