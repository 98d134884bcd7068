"""Matplotlib figures: patching heatmaps (layer x position per component, models side by side) and
the token-fusion figure. Every figure is written as PNG and SVG through ``outputs.save_figure``."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from achilles_interp.errors import UserError
from achilles_interp.outputs import save_figure  # noqa: E402

FORMATS = ("png", "svg")


def save(fig, stem, formats: Sequence[str] = FORMATS) -> List[Path]:
    """Save ``fig`` as ``stem.png`` and ``stem.svg`` (atomically); close it; return the paths."""
    paths = [save_figure(fig, f"{stem}.{fmt}", bbox_inches="tight", dpi=120) for fmt in formats]
    plt.close(fig)
    return paths


def relevant_positions(results: Dict[str, "GridResult"], threshold: float = 0.01) -> List[int]:  # noqa: F821
    """Positions where some model's |normalised effect| reaches ``threshold`` in some cell (the
    rest are empty columns), in order; all positions if none does."""
    first = next(iter(results.values()))
    keep = set()
    for r in results.values():
        e = r.effect.nan_to_num(0.0).abs()  # [C, layers, P]
        keep |= {r.positions[i] for i in (e.amax(dim=(0, 1)) >= threshold).nonzero().flatten().tolist()}
    return [p for p in first.positions if p in keep] or list(first.positions)


def patching_heatmaps(
    results: Dict[str, "GridResult"],  # noqa: F821
    stem,
    components: Optional[Sequence[str]] = None,
    title: str = "",
    per_row: int = 3,
) -> List[Path]:
    """One panel per model (``per_row`` panels a row), each a stack of heatmaps, one per component:
    the normalised effect (1 = the whole clean-vs-corrupted gap) over layer (y) x position (x).
    Every heatmap shares one colour scale, -1..1 (clipped), so a row whose effects are 100x smaller
    looks 100x fainter; only the positions where some effect reaches 0.01 are shown, labelled
    ``position:token`` of example 0."""
    if not results:
        raise ValueError("patching_heatmaps needs at least one result")
    names = list(results)
    comps = list(components) if components else list(dict.fromkeys(c for r in results.values() for c in r.components))
    first = results[names[0]]
    keep = relevant_positions(results)
    cols = [first.positions.index(p) for p in keep]
    ncols = min(per_row, len(names))
    nrows = (len(names) + ncols - 1) // ncols
    n_layers = max(len(r.layers) for r in results.values())
    panel_w, panel_h = max(3.5, 0.24 * len(cols) + 1.6), 0.5 + (0.22 * n_layers + 0.25) * len(comps)
    fig = plt.figure(figsize=(panel_w * ncols + 1.0, panel_h * nrows + 0.6))
    grid_fig, bar_fig = fig.subfigures(1, 2, width_ratios=[panel_w * ncols, 0.9])
    subfigs = grid_fig.subfigures(nrows, ncols, squeeze=False)
    im = None
    for k, name in enumerate(names):
        sub = subfigs[k // ncols, k % ncols]
        r = results[name]
        axes = sub.subplots(len(comps), 1, squeeze=False)[:, 0]
        sub.suptitle(name, fontsize=9)
        labels = r.token_labels or [str(p) for p in r.positions]
        for row, (c, ax) in enumerate(zip(comps, axes)):
            if c in r.components:
                data = r.effect[r.components.index(c)][:, cols].clamp(-1, 1).numpy()
            else:
                data = torch.full((len(r.layers), len(cols)), float("nan")).numpy()
                ax.text(0.5, 0.5, f"no {c} in this model", transform=ax.transAxes, ha="center", va="center",
                        fontsize=7, color="0.4")
            im = ax.imshow(data, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
            ax.set_yticks(range(len(r.layers)))
            ax.set_yticklabels([f"L{x}" for x in r.layers], fontsize=7)
            ax.set_ylabel(c, fontsize=8, rotation=0, ha="right", va="center")
            ax.set_xticks(range(len(cols)))
            last = row == len(comps) - 1
            ax.set_xticklabels([labels[i] for i in cols] if last else [], rotation=90, fontsize=7)
    for k in range(len(names), nrows * ncols):
        subfigs[k // ncols, k % ncols].set_visible(False)
    cax = bar_fig.add_axes([0.15, 0.25, 0.25, 0.5])
    bar_fig.colorbar(im, cax=cax).set_label("normalised effect (1 = whole gap)", fontsize=8)
    fig.suptitle(title or f"{first.method} patching ({first.direction}, {first.metric})", fontsize=10, y=1.03)
    return save(fig, stem)


def fusion_figure(
    reports: Dict[str, dict], stem, token_labels: Optional[Sequence[str]] = None, last: int = 8,
    ablation: Optional[Dict[str, Dict[str, float]]] = None,
) -> List[Path]:
    """Influence matrices (the last ``last`` positions, where the query sits): one row per model,
    one column per (component, layer), titled with the asymmetry index; a last column with a bar
    chart of that model's indices by both measures (Jacobian and, from ``ablation`` =
    ``{model: {"component@Llayer": index}}``, ablation), with a legend."""
    if not reports:
        raise UserError("fusion_figure needs at least one report")
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
        y = torch.arange(len(keys)).float()
        jac = [rep["asymmetry"][k] for k in keys]
        ax.barh(y - 0.2, jac, height=0.4, color="tab:red", label="Jacobian")
        if ablation and m in ablation:
            abl = [ablation[m].get(f"{k[0]}@L{k[1]}", float("nan")) for k in keys]
            ax.barh(y + 0.2, abl, height=0.4, color="tab:blue", label="ablation")
        ax.set_yticks(range(len(keys)))
        ax.set_yticklabels([f"{k[0]} L{k[1]}" for k in keys], fontsize=7)
        ax.axvline(0, color="k", lw=0.5)
        ax.set_xlim(-1, 1)
        ax.set_xlabel("asymmetry index (+1: left neighbour only, -1: mirrored partner only)", fontsize=6)
        ax.legend(fontsize=6, loc="lower right")
        ax.set_title(f"{m}: asymmetry", fontsize=7)
    method = next(iter(reports.values()))["method"]
    fig.suptitle(
        f"token fusion: {method} influence ||d act_i / d emb_j|| (last {last} positions)", fontsize=9
    )
    fig.tight_layout()
    return save(fig, stem)


def attention_figure(
    maps: Dict[str, torch.Tensor], stem, token_labels: Optional[Sequence[str]] = None
) -> List[Path]:
    """``[L, L]`` maps (e.g. Mamba effective attention, S = C Bᵀ, Transformer pattern), at most three
    per row."""
    ncols = min(3, len(maps))
    nrows = (len(maps) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 4.4 * nrows), squeeze=False)
    for ax in axes.flat[len(maps):]:
        ax.axis("off")
    for ax, (name, M) in zip(axes.flat, maps.items()):
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
