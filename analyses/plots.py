"""Matplotlib figures: patching heatmaps (layer x position per component, models side by side) and
the token-fusion figure. Every figure is written as PNG and SVG through ``outputs.save_figure``."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from achilles_interp.outputs import save_figure  # noqa: E402

FORMATS = ("png", "svg")


def save(fig, stem, formats: Sequence[str] = FORMATS) -> List[Path]:
    """Save ``fig`` as ``stem.png`` and ``stem.svg`` (atomically); close it; return the paths."""
    paths = [save_figure(fig, f"{stem}.{fmt}", bbox_inches="tight", dpi=120) for fmt in formats]
    plt.close(fig)
    return paths


def patching_heatmaps(
    results: Dict[str, "GridResult"],  # noqa: F821
    stem,
    normalised: bool = True,
    components: Optional[Sequence[str]] = None,
) -> List[Path]:
    """One row per component, one column per model: heatmap of the (normalised) effect over
    layer (y) x position (x), tokens of the first example as x tick labels. Components a model
    lacks are shown empty. Diverging colour map centred on 0, shared scale per row."""
    if not results:
        raise ValueError("patching_heatmaps needs at least one result")
    names = list(results)
    comps = (
        list(components)
        if components
        else list(dict.fromkeys(c for r in results.values() for c in r.components))
    )
    fig, axes = plt.subplots(
        len(comps), len(names), figsize=(4.2 * len(names) + 1, 1.4 + 1.1 * len(comps)), squeeze=False
    )
    first = results[names[0]]
    for row, c in enumerate(comps):
        vals = [r.effect if normalised else r.values for r in results.values()]
        finite = [v[r.components.index(c)] for v, r in zip(vals, results.values()) if c in r.components]
        finite = [f[torch.isfinite(f)] for f in finite]
        vmax = max([float(f.abs().max()) for f in finite if f.numel()] + [1e-6])
        for col, name in enumerate(names):
            ax = axes[row, col]
            r = results[name]
            if c in r.components:
                data = (r.effect if normalised else r.values)[r.components.index(c)].numpy()
            else:
                data = torch.full((len(r.layers), len(r.positions)), float("nan")).numpy()
            if not torch.isfinite(torch.as_tensor(data)).any():
                ax.text(
                    0.5,
                    0.5,
                    f"no {c} in this model",
                    transform=ax.transAxes,
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="0.4",
                )
            im = ax.imshow(data, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
            ax.set_yticks(range(len(r.layers)))
            ax.set_yticklabels([str(x) for x in r.layers], fontsize=7)
            ax.set_ylabel(f"{c}\nlayer" if col == 0 else "layer", fontsize=8)
            labels = r.token_labels or [str(p) for p in r.positions]
            ax.set_xticks(range(len(r.positions)))
            ax.set_xticklabels(labels, rotation=90, fontsize=6)
            if row == 0:
                ax.set_title(name, fontsize=9)
            if row == len(comps) - 1:
                ax.set_xlabel("position (token of example 0)", fontsize=8)
            fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01).ax.tick_params(labelsize=6)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    what = "normalised effect (1 = whole gap)" if normalised else f"{first.metric} after patching"
    fig.suptitle(f"{first.method} patching ({first.direction}, {first.metric}): {what}", fontsize=10)
    return save(fig, stem)


def fusion_figure(
    reports: Dict[str, dict], stem, token_labels: Optional[Sequence[str]] = None, last: int = 8
) -> List[Path]:
    """Influence matrices (the last ``last`` positions, where the query sits): one row per model,
    one column per (component, layer), titled with the asymmetry index; a last column with a bar
    chart of that model's indices."""
    if not reports:
        raise ValueError("fusion_figure needs at least one report")
    models = list(reports)
    ncols = max(len(r["matrices"]) for r in reports.values()) + 1
    fig, axes = plt.subplots(len(models), ncols, figsize=(2.5 * ncols, 2.7 * len(models)), squeeze=False)
    for row, m in enumerate(models):
        rep = reports[m]
        keys = list(rep["matrices"])
        for col in range(ncols - 1):
            ax = axes[row, col]
            if col >= len(keys):
                ax.axis("off")
                continue
            key = keys[col]
            M = rep["matrices"][key]
            L = M.shape[0]
            s = max(0, L - last)
            im = ax.imshow(M[s:, s:].numpy(), cmap="viridis", interpolation="nearest")
            ticks = list(range(L - s))
            lab = list(token_labels[s:]) if token_labels else [str(p) for p in range(s, L)]
            ax.set_xticks(ticks)
            ax.set_xticklabels(lab, rotation=90, fontsize=5)
            ax.set_yticks(ticks)
            ax.set_yticklabels(lab, fontsize=5)
            ax.set_xlabel("source token j", fontsize=6)
            ax.set_ylabel(f"{m}\nposition i" if col == 0 else "position i", fontsize=6)
            ax.set_title(f"{key[0]} L{key[1]}  asym={rep['asymmetry'][key]:+.2f}", fontsize=7)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=5)
        ax = axes[row, -1]
        vals = [rep["asymmetry"][k] for k in keys]
        ax.barh(range(len(vals)), vals, color=["tab:red" if v > 0 else "tab:blue" for v in vals])
        ax.set_yticks(range(len(vals)))
        ax.set_yticklabels([f"{k[0]} L{k[1]}" for k in keys], fontsize=6)
        ax.axvline(0, color="k", lw=0.5)
        ax.set_xlim(-1, 1)
        ax.set_xlabel("asymmetry index", fontsize=6)
        ax.set_title(f"{m}: left neighbour (+) vs mirrored partner (-)", fontsize=6)
    method = next(iter(reports.values()))["method"]
    fig.suptitle(
        f"token fusion: {method} influence ||d act_i / d emb_j|| (last {last} positions)", fontsize=9
    )
    fig.tight_layout()
    return save(fig, stem)


def attention_figure(
    maps: Dict[str, torch.Tensor], stem, token_labels: Optional[Sequence[str]] = None
) -> List[Path]:
    """Side-by-side ``[L, L]`` maps (e.g. Mamba effective attention, S = C Bᵀ, Transformer pattern)."""
    fig, axes = plt.subplots(1, len(maps), figsize=(3.4 * len(maps), 3.4), squeeze=False)
    for ax, (name, M) in zip(axes[0], maps.items()):
        im = ax.imshow(M.float().numpy(), cmap="magma", interpolation="nearest")
        if token_labels:
            ax.set_xticks(range(len(token_labels)))
            ax.set_xticklabels(token_labels, rotation=90, fontsize=5)
            ax.set_yticks(range(len(token_labels)))
            ax.set_yticklabels(token_labels, fontsize=5)
        ax.set_xlabel("key position j", fontsize=7)
        ax.set_ylabel("query position i", fontsize=7)
        ax.set_title(name, fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    fig.tight_layout()
    return save(fig, stem)
