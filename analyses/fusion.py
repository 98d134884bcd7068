"""Token-fusion asymmetry: how much does the representation at position i depend on token j?

Influence matrices ``I[i, j]`` (``[L, L]``, query position i, source position j, averaged over
examples) at a hook (conv output, SSM output, block output):

* **Jacobian influence** (:func:`jacobian_influence`): ``I[i, j] = || d act_i / d emb_j ||_F``,
  the Frobenius norm of the Jacobian block of the activation at position i (``[d_act]``) with
  respect to the token embedding at position j (``[d_model]``), computed exactly (one backward
  pass per position i, with one batch replica per activation dimension).
* **Ablation influence** (:func:`ablation_influence`): ``I[i, j] = || act_i(emb_j := 0) - act_i ||_2``,
  the change of act_i when token j's embedding is zeroed (one replica per j, one forward pass).

**Asymmetry index** (:func:`asymmetry_index`). For a span of tokens ``s .. s+m-1`` that must be
matched against its own reversal (a key or the query of inverse matching, m = 3), take its last
position ``i = s+m-1``, its *left neighbour* ``i-1`` and its *mirrored partner* ``s`` (the token that
sits at position i once the span is reversed). Then::

    asym = (I[i, i-1] - I[i, s]) / (I[i, i-1] + I[i, s])      in [-1, 1]

+1: position i fuses only its left neighbour and ignores the partner it needs for inverse matching
(strongly directional, local fusion); 0: both count equally (symmetric fusion, as an all-ones conv
kernel gives at the conv output); -1: only the partner counts. The reported index is the mean over
spans.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from achilles_interp.errors import UserError

from .components import hook_name

FUSION_COMPONENTS = ("conv_out", "ssm_out", "resid_post")


def _target(model, component: str, layer: int) -> str:
    nm = hook_name(model, component, layer)
    if nm is None:
        raise UserError(f"model has no component {component!r} at layer {layer}")
    return nm


def _embed_leaf_hook(leaf: torch.Tensor):
    def hook(act, hook):
        return leaf

    return hook


def _forward_to(model, tokens, layer: int) -> None:
    """Run only as far as ``layer`` (inclusive) when the model supports ``stop_at_layer``."""
    try:
        model(tokens, stop_at_layer=layer + 1)
    except TypeError:
        model(tokens, return_type=None)


def jacobian_influence(
    model,
    tokens: torch.Tensor,
    component: str,
    layer: int,
    n_probes: Optional[int] = 8,
    seed: int = 0,
    max_rows: int = 2048,
) -> torch.Tensor:
    """``[L, L]`` mean over examples of ||d act_i / d emb_j||_F (0 above the diagonal for causal models).

    ``n_probes=None`` computes the Jacobian exactly (one probe per activation dimension); an int R
    uses R Gaussian probes v (Hutchinson: ||J||_F^2 = E ||vᵀJ||^2), which is unbiased for the
    squared norm and much cheaper. All (position i, probe) pairs run as batch replicas, so one
    forward and one backward pass per ``max_rows`` rows.
    """
    n, L = tokens.shape
    nm = _target(model, component, layer)
    if nm.endswith("hook_ssm_state"):
        raise UserError("jacobian_influence does not support ssm_state; use ssm_out")
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=["hook_embed", nm])
    emb, act0 = cache["hook_embed"], cache[nm]
    D = act0[0, 0].numel()
    if n_probes is None:
        V = torch.eye(D, dtype=act0.dtype)
    else:
        if not isinstance(n_probes, int) or n_probes < 1:
            raise UserError(f"n_probes must be None (exact) or a positive int, got {n_probes!r}")
        V = torch.randn(n_probes, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float32).to(
            act0.dtype
        )
    R = V.shape[0]
    # replica list: (i, r) pairs, each holding the n examples
    pairs = [(i, r) for i in range(L) for r in range(R)]
    per_chunk = max(1, max_rows // n)
    sq = torch.zeros(L, n, L)  # [i, example, j] sum over probes of squared norms
    store = {}

    def grab(act, hook):
        store["act"] = act
        return act

    for c0 in range(0, len(pairs), per_chunk):
        chunk = pairs[c0 : c0 + per_chunk]
        K = len(chunk)
        leaf = emb.repeat(K, 1, 1).detach().requires_grad_(True)  # [K*n, L, d_model]
        with torch.enable_grad(), model.hooks(fwd_hooks=[("hook_embed", _embed_leaf_hook(leaf)), (nm, grab)]):
            _forward_to(model, tokens.repeat(K, 1), layer)
            act = store.pop("act").reshape(K * n, L, D)
            g = torch.zeros_like(act)
            for k, (i, r) in enumerate(chunk):
                g[k * n : (k + 1) * n, i] = V[r].to(act.device)
            (grad,) = torch.autograd.grad(act, leaf, g)
        norms = grad.detach().pow(2).sum(-1).reshape(K, n, L).cpu()  # [K, n, j]
        for k, (i, r) in enumerate(chunk):
            sq[i] += norms[k]
    scale = 1.0 if n_probes is None else 1.0 / R
    return (sq * scale).sqrt().mean(1)


@torch.no_grad()
def ablation_influence(model, tokens: torch.Tensor, component: str, layer: int) -> torch.Tensor:
    """``[L, L]`` mean over examples of ||act_i(emb_j := 0) - act_i||_2."""
    n, L = tokens.shape
    nm = _target(model, component, layer)
    _, cache = model.run_with_cache(tokens, names_filter=[nm])
    base = cache[nm].reshape(n, L, -1)

    def zero_j(act, hook):
        act = act.clone().view(L, n, L, -1)
        act[torch.arange(L), :, torch.arange(L)] = 0  # replica j zeroes position j
        return act.view(L * n, L, -1)

    store = {}

    def grab(act, hook):
        store["act"] = act

    model.run_with_hooks(
        tokens.repeat(L, 1), return_type=None, fwd_hooks=[("hook_embed", zero_j), (nm, grab)]
    )
    ablated = store["act"].reshape(L, n, L, -1)  # [j, n, i, d]
    diff = (ablated - base[None]).norm(dim=-1).mean(1)  # [j, i]
    return diff.T.cpu().float()


def default_spans(seq_len: int, span_len: int = 3) -> List[Tuple[int, int]]:
    """Inverse matching layout: five keys at 0, 4, ..., 16 (length 3) and the query at L-3."""
    spans = [(4 * k, span_len) for k in range(5) if 4 * k + span_len <= seq_len - span_len]
    return spans + [(seq_len - span_len, span_len)]


def asymmetry_index(influence: torch.Tensor, spans: Sequence[Tuple[int, int]]) -> Dict[str, object]:
    """Asymmetry index (see module docstring) of an ``[L, L]`` influence matrix.

    Returns ``{"index": mean over spans, "per_span": [...], "left": [...], "partner": [...]}``.
    """
    L = influence.shape[0]
    per, left, partner = [], [], []
    for s, m in spans:
        if m < 3 or s < 0 or s + m > L:
            raise UserError(f"span (start={s}, length={m}) must have length >= 3 and fit in [0, {L})")
        i = s + m - 1
        a, b = float(influence[i, i - 1]), float(influence[i, s])
        per.append((a - b) / (a + b) if a + b > 0 else float("nan"))
        left.append(a)
        partner.append(b)
    vals = torch.tensor(per)
    return {
        "index": float(vals.nanmean()) if len(per) else float("nan"),
        "per_span": per,
        "left": left,
        "partner": partner,
    }


def fusion_report(
    model,
    tokens: torch.Tensor,
    layers: Optional[Sequence[int]] = None,
    components: Sequence[str] = FUSION_COMPONENTS,
    spans=None,
    method: str = "jacobian",
    n_probes: Optional[int] = 8,
) -> dict:
    """Influence matrices and asymmetry indices for every (component, layer).

    ``n_probes``: Gaussian probes per position for the Jacobian (None = exact).
    Returns ``{"matrices": {(component, layer): [L, L]}, "asymmetry": {(component, layer): float},
    "spans": spans, "method": method}``; components the model lacks are skipped.
    """
    if method not in ("jacobian", "ablation"):
        raise UserError(f"method must be 'jacobian' or 'ablation', got {method!r}")
    if method == "jacobian":

        def fn(m, t, c, layer):
            return jacobian_influence(m, t, c, layer, n_probes=n_probes)
    else:
        fn = ablation_influence
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    spans = default_spans(tokens.shape[1]) if spans is None else spans
    mats, asym = {}, {}
    for c in components:
        for layer in layers:
            if hook_name(model, c, layer) is None:
                continue
            mats[(c, layer)] = fn(model, tokens, c, layer)
            asym[(c, layer)] = asymmetry_index(mats[(c, layer)], spans)["index"]
    return {"matrices": mats, "asymmetry": asym, "spans": list(spans), "method": method}
