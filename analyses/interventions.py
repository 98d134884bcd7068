"""The paper's interventions (arXiv 2509.17514), as hooks on a HookedMamba.

* **Blocking** (:func:`blocking`): zero the contribution of chosen *source* tokens j to every later
  token, i.e. the column j of S = Mask∘(C Bᵀ) / of the effective attention M[:, :, j]. Implemented by
  knocking out the tokens' writes into the state: ``B_j := 0`` (``hook_B``) so the write
  dt_j B_j u_j vanishes while the decay exp(dt_j A) is kept. Reports output agreement with the
  unblocked model.
* **Substitution** (:func:`substitution`): replace the post-conv hidden states (``hook_conv_act``)
  of chosen downstream positions with those from another input; reports how often the output
  follows the other input.
* **All-ones conv** (:func:`all_ones_conv`): a copy of the model whose conv kernels are all ones
  (zero bias): symmetric fusion of the window. :func:`all_ones_accuracy` reports accuracy.
* :func:`conv_tap_cosine`: cosine similarity between the conv kernel's taps (over channels).
"""

from __future__ import annotations

import copy
from typing import Optional, Sequence

import torch

from .ablations import _layers
from .metrics import answer_logits


def predict(model, tokens: torch.Tensor, answer_pos, label_tokens: Optional[torch.Tensor] = None, hooks=()):
    """Predicted token id at the answer position ``[n]`` (argmax over ``label_tokens`` if given)."""
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=list(hooks))
    ap = (
        answer_pos
        if isinstance(answer_pos, torch.Tensor)
        else torch.full((tokens.shape[0],), int(answer_pos))
    )
    al = answer_logits(logits, ap)
    if label_tokens is None:
        return al.argmax(-1).cpu()
    cand = label_tokens.to(al.device)
    return cand[al[:, cand].argmax(-1)].cpu()


def blocking_hooks(model, source_positions: Sequence[int], layers: Optional[Sequence[int]] = None):
    """Hooks setting B_j := 0 at ``source_positions`` in ``layers`` (default all)."""
    layers = _layers(model, layers)
    pos = [int(p) for p in source_positions]
    if not pos:
        raise ValueError("source_positions must name at least one position")

    def hook(act, hook):
        act = act.clone()
        act[:, pos] = 0
        return act

    return [(f"blocks.{i}.mixer.hook_B", hook) for i in layers]


def blocking(
    model,
    tokens: torch.Tensor,
    answer_pos,
    source_positions: Sequence[int],
    labels=None,
    label_tokens=None,
    layers: Optional[Sequence[int]] = None,
) -> dict:
    """Block the source tokens' writes; return ``{"agreement": fraction of predictions unchanged,
    "accuracy_before", "accuracy_after"}`` (accuracies only when ``labels`` are given)."""
    before = predict(model, tokens, answer_pos, label_tokens)
    after = predict(model, tokens, answer_pos, label_tokens, blocking_hooks(model, source_positions, layers))
    out = {"agreement": float((before == after).float().mean()), "source_positions": list(source_positions)}
    if labels is not None:
        out["accuracy_before"] = float((before == labels).float().mean())
        out["accuracy_after"] = float((after == labels).float().mean())
    return out


def substitution(
    model,
    tokens: torch.Tensor,
    other_tokens: torch.Tensor,
    answer_pos,
    positions: Sequence[int],
    label_tokens=None,
    layers: Optional[Sequence[int]] = None,
) -> dict:
    """Put ``other_tokens``' post-conv states (``hook_conv_act``) at ``positions`` into the run on
    ``tokens``; return ``{"follows_other": P(pred == pred on other), "keeps_original": P(pred ==
    pred on tokens)}``."""
    if tokens.shape != other_tokens.shape:
        raise ValueError(
            f"tokens and other_tokens must have the same shape, got {tuple(tokens.shape)} "
            f"and {tuple(other_tokens.shape)}"
        )
    layers = _layers(model, layers)
    pos = [int(p) for p in positions]
    names = [f"blocks.{i}.mixer.hook_conv_act" for i in layers]
    with torch.no_grad():
        _, cache = model.run_with_cache(other_tokens, names_filter=names)

    def make(v):
        def hook(act, hook):
            act = act.clone()
            act[:, pos] = v[:, pos].to(act.dtype)
            return act

        return hook

    hooks = [(nm, make(cache[nm])) for nm in names]
    orig = predict(model, tokens, answer_pos, label_tokens)
    other = predict(model, other_tokens, answer_pos, label_tokens)
    patched = predict(model, tokens, answer_pos, label_tokens, hooks)
    return {
        "follows_other": float((patched == other).float().mean()),
        "keeps_original": float((patched == orig).float().mean()),
        "positions": pos,
    }


def all_ones_conv(model):
    """A deep copy of ``model`` with every conv1d weight set to 1 and conv bias to 0."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for block in m.blocks:
            conv = block.mixer.conv1d
            if conv is None:
                continue
            conv.weight.fill_(1.0)
            if conv.bias is not None:
                conv.bias.zero_()
    return m


def all_ones_accuracy(model, tokens, answer_pos, labels, label_tokens=None) -> dict:
    """Accuracy of the model and of its all-ones-kernel copy."""
    acc = float((predict(model, tokens, answer_pos, label_tokens) == labels).float().mean())
    ones = float((predict(all_ones_conv(model), tokens, answer_pos, label_tokens) == labels).float().mean())
    return {"accuracy": acc, "accuracy_all_ones_conv": ones}


def conv_tap_cosine(models) -> torch.Tensor:
    """Cosine similarity between conv taps: ``[n_models, n_layers, d_conv, d_conv]``; entry
    (k, k') compares tap k and tap k' as vectors over channels (tap d_conv-1 multiplies the
    current token). ``models``: one model or a list of models / checkpoint directories (e.g.
    checkpoints over training)."""
    if isinstance(models, torch.nn.Module):
        models = [models]
    out = []
    for m in models:
        if not isinstance(m, torch.nn.Module):  # a checkpoint directory
            from achilles_interp.zoo import load_model

            m = load_model(m, backend="torch")
        per_layer = []
        for block in m.blocks:
            if block.mixer.conv1d is None:
                raise ValueError("model has no conv (conv_mode='none')")
            taps = block.mixer.conv1d.weight.detach()[:, 0, :].T.float()  # [K, C]
            taps = taps / taps.norm(dim=1, keepdim=True).clamp(min=1e-12)
            per_layer.append(taps @ taps.T)
        out.append(torch.stack(per_layer))
    return torch.stack(out)
