"""Linear probes (multinomial logistic regression with L2) on cached activations.

* :func:`train_probe`: fit ``W [d, classes], b [classes]`` on ``X [n, d]``, ``y [n]`` (torch, LBFGS
  or Adam; features standardised with the training mean / std) and report held-out accuracy.
* :func:`control_labels`: Hewitt & Liang (2019) control task: every *token type* gets a random
  class (a fixed random map from the token id that determines the label to a class), so a probe
  can only succeed by memorising token identities.
* :func:`probe_grid`: one probe per (component, layer, position) on a model's cache; returns a
  tidy DataFrame with ``task_acc``, ``control_acc`` and ``selectivity = task_acc - control_acc``.
* Targets for inverse matching: :func:`mirrored_token_targets` (the token at the mirrored position
  inside a span) and :func:`match_bit_targets` (whether a running prefix matches).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from achilles_interp.errors import UserError

OPTIMIZERS = ("lbfgs", "adam")


@dataclass
class ProbeResult:
    """A trained probe. ``weight [d, classes]``, ``bias [classes]`` act on standardised features
    ``(x - mean) / std``; ``train_acc`` / ``test_acc`` in [0, 1]; ``classes`` the label values."""

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    classes: torch.Tensor
    train_acc: float
    test_acc: float

    def predict(self, X: torch.Tensor) -> torch.Tensor:
        logits = ((X.float() - self.mean) / self.std) @ self.weight + self.bias
        return self.classes[logits.argmax(-1)]


def _split(n: int, test_frac: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    n_test = max(1, int(round(n * test_frac)))
    if n - n_test < 1:
        raise UserError(f"need at least 2 examples to split off a test set, got n={n}")
    return perm[n_test:], perm[:n_test]


def train_probe(
    X: torch.Tensor,
    y: torch.Tensor,
    l2: float = 1e-3,
    optimizer: str = "lbfgs",
    steps: int = 100,
    lr: float = 1e-2,
    test_frac: float = 0.25,
    seed: int = 0,
    split: Optional[tuple] = None,
) -> ProbeResult:
    """Fit a softmax-regression probe.

    Args:
        X: ``[n, d]`` features (any float dtype; flattened activations).
        y: ``[n]`` integer labels (any values; mapped to classes internally).
        l2: weight-decay coefficient on W (mean cross-entropy + l2 * ||W||^2).
        optimizer: ``"lbfgs"`` (``steps`` = max iterations) or ``"adam"`` (``steps`` epochs, ``lr``).
        test_frac: held-out fraction (random split with ``seed``).
        split: explicit ``(train indices, test indices)`` instead (e.g. whole examples held out
            when one example contributes several rows).
    """
    if optimizer not in OPTIMIZERS:
        raise UserError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if X.dim() != 2 or y.dim() != 1 or X.shape[0] != y.shape[0]:
        raise UserError(
            f"need X [n, d] and y [n] with the same n, got {tuple(X.shape)} and {tuple(y.shape)}"
        )
    if l2 < 0:
        raise UserError(f"l2 must be >= 0, got {l2}")
    X = X.detach().float().cpu()
    classes, yi = torch.unique(y.cpu(), return_inverse=True)
    tr, te = _split(X.shape[0], test_frac, seed) if split is None else (torch.as_tensor(split[0]),
                                                                          torch.as_tensor(split[1]))
    mean, std = X[tr].mean(0), X[tr].std(0, unbiased=False).clamp(min=1e-6)
    Z = (X - mean) / std
    d, k = X.shape[1], len(classes)
    W = torch.zeros(d, k, requires_grad=True)
    b = torch.zeros(k, requires_grad=True)

    def loss_fn():
        return F.cross_entropy(Z[tr] @ W + b, yi[tr]) + l2 * W.pow(2).sum()

    with torch.enable_grad():
        if optimizer == "lbfgs":
            opt = torch.optim.LBFGS([W, b], max_iter=steps, line_search_fn="strong_wolfe")

            def closure():
                opt.zero_grad()
                loss = loss_fn()
                loss.backward()
                return loss

            opt.step(closure)
        else:
            opt = torch.optim.Adam([W, b], lr=lr)
            for _ in range(steps):
                opt.zero_grad()
                loss_fn().backward()
                opt.step()
    W, b = W.detach(), b.detach()
    pred = (Z @ W + b).argmax(-1)
    acc = lambda idx: float((pred[idx] == yi[idx]).float().mean())  # noqa: E731
    return ProbeResult(W, b, mean, std, classes, acc(tr), acc(te))


def control_labels(types: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Hewitt & Liang control task: label := f(type) for a random map f from the token types to
    the label set (same number of classes as ``labels``). ``types [n]`` (e.g. the token id the real
    label is read from), ``labels [n]`` -> ``[n]``."""
    classes = torch.unique(labels)
    uniq, inv = torch.unique(types, return_inverse=True)
    g = torch.Generator().manual_seed(seed)
    f = classes[torch.randint(0, len(classes), (len(uniq),), generator=g)]
    return f[inv]


def mirrored_token_targets(
    tokens: torch.Tensor, span_start: int, span_len: int, position: int
) -> torch.Tensor:
    """The token at the mirrored position of ``position`` inside the span ``[span_start,
    span_start + span_len)``: ``tokens[:, span_start + span_start + span_len - 1 - position]`` ``[n]``."""
    if not span_start <= position < span_start + span_len:
        raise UserError(f"position {position} is outside the span [{span_start}, {span_start + span_len})")
    return tokens[:, 2 * span_start + span_len - 1 - position]


def match_bit_targets(
    tokens: torch.Tensor, key_tokens: torch.Tensor, query_start: int, position: int
) -> torch.Tensor:
    """Running match bit at query ``position``: 1 if the query prefix ``tokens[:, query_start..position]``
    equals the reversed key's prefix. ``key_tokens [n, 3]`` (the key to compare with) -> ``[n]``."""
    m = position - query_start + 1
    if m < 1 or m > key_tokens.shape[1]:
        raise UserError(
            f"position must lie in the query [{query_start}, {query_start + key_tokens.shape[1]})"
        )
    rev = key_tokens.flip(1)[:, :m]
    return (tokens[:, query_start : position + 1] == rev).all(1).long()


def probe_grid(
    model,
    tokens: torch.Tensor,
    targets: Dict[int, torch.Tensor],
    components: Sequence[str],
    layers: Optional[Sequence[int]] = None,
    types: Optional[Dict[int, torch.Tensor]] = None,
    l2: float = 1e-3,
    optimizer: str = "lbfgs",
    steps: int = 100,
    seed: int = 0,
):
    """Train a probe per (component, layer, position).

    Args:
        tokens: ``[n, L]`` model inputs.
        targets: ``{position: labels [n]}``: what to decode from the activation at that position.
        types: ``{position: token types [n]}`` for the control task (default: the input token at
            that position, ``tokens[:, position]``: the control label is a random function of the
            probed token's own identity, as in Hewitt & Liang).
        components: names from :mod:`analyses.components` (``ssm_state`` states are flattened).
    Returns:
        DataFrame: component, layer, position, task_acc, control_acc, selectivity, train_acc.
    """
    import pandas as pd
    from achilles_interp.analyses.components import check_components, component_hooks, present_hooks

    components = check_components(components)
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    names = component_hooks(model, components, layers)
    wanted = present_hooks(names)
    positions = sorted(targets)
    kwargs = {"ssm_state_positions": positions} if any(v.endswith("hook_ssm_state") for v in wanted) else {}
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda nm: nm in wanted, **kwargs)
    rows = []
    for (c, layer), nm in names.items():
        if nm is None:
            continue
        for pi, p in enumerate(positions):
            act = cache[nm][:, pi] if c == "ssm_state" else cache[nm][:, p]
            X = act.reshape(act.shape[0], -1)
            y = targets[p]
            task = train_probe(X, y, l2, optimizer, steps, seed=seed)
            ctrl_y = control_labels(types[p] if types else tokens[:, p], y, seed=seed + 1)
            ctrl = train_probe(X, ctrl_y, l2, optimizer, steps, seed=seed)
            rows.append(
                {
                    "component": c,
                    "layer": layer,
                    "position": p,
                    "task_acc": task.test_acc,
                    "control_acc": ctrl.test_acc,
                    "selectivity": task.test_acc - ctrl.test_acc,
                    "train_acc": task.train_acc,
                }
            )
    return pd.DataFrame(rows)
