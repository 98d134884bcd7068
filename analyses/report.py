"""Run the whole attribution study on a set of models and write every number and figure.

:func:`run_report` is what ``achilles-interp patch`` calls: activation patching (denoising) and
attribution patching on the (component x layer x position) grid, their agreement, the fusion
asymmetry, the conv/SSM/gate verdict for each Mamba model, heatmaps, CSV/JSON of every number and a
markdown page (``docs/attribution.md`` when ``out`` is ``docs/attribution_assets``) that embeds the
figures and quotes the numbers from this run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

from achilles_interp.outputs import atomic_write, write_json, write_text

from .attribution import agreement, attribution_patching
from .components import DEFAULT_COMPONENTS, is_mamba
from .fusion import fusion_report
from .metrics import PatchingData
from .patching import activation_patching
from .plots import attention_figure, fusion_figure, patching_heatmaps
from .verdict import verdict


def token_labels(tokens: torch.Tensor) -> list:
    """``"pos:id"`` for each position of one example ``[L]``."""
    return [f"{p}:{int(t)}" for p, t in enumerate(tokens.tolist())]


def attention_map(model, tokens: torch.Tensor):
    """``[L, L]`` layer-0 map of one example: the Mamba effective attention (mean |M| over channels
    or heads) or the Transformer's attention pattern (mean over heads); None if neither applies."""
    from .effective_attention import effective_attention, transformer_attention

    try:
        if is_mamba(model):
            return effective_attention(model, tokens, 0).abs().mean(1)[0].float().cpu()
        return transformer_attention(model, tokens, 0).mean(1)[0].float().cpu()
    except ValueError:
        return None


def mamba_extras(model, task, data: PatchingData, n: int, seed: int) -> dict:
    """Path ablations and the paper's interventions for one Mamba model (JSON-ready)."""
    from .ablations import ablation_table
    from .interventions import all_ones_accuracy, blocking, conv_tap_cosine, substitution

    batch = task.generate(n, seed=seed, split="test")
    label_tokens = getattr(task, "label_tokens", None)
    diff = (data.clean_tokens != data.corrupted_tokens).any(0).nonzero().flatten().tolist()
    first_diff = min(diff) if diff else data.seq_len
    sources = list(range(first_diff))  # everything before the query: keys, separators, fillers
    extras = {
        "ablations": ablation_table(model, data).to_dict("records"),
        "blocking_all_context_before_query": blocking(
            model, batch.tokens, batch.answer_pos, sources, labels=batch.labels, label_tokens=label_tokens
        )
        if sources
        else None,
    }
    if diff:
        # the paper's substitution: the query tokens' post-conv states taken from the corrupted input
        extras["substitution_query_from_corrupted"] = substitution(
            model, data.clean_tokens, data.corrupted_tokens, data.answer_pos, diff, label_tokens=label_tokens
        )
    if all(b.mixer.conv1d is not None for b in model.blocks):
        extras["all_ones_conv"] = all_ones_accuracy(
            model, batch.tokens, batch.answer_pos, batch.labels, label_tokens=label_tokens
        )
        extras["conv_tap_cosine"] = conv_tap_cosine(model)[0].tolist()
    return extras


def markdown_path(out: Path) -> Path:
    """``docs/attribution_assets`` -> ``docs/attribution.md``; any other ``DIR`` -> ``DIR/report.md``."""
    out = Path(out)
    if out.name.endswith("_assets"):
        return out.parent / (out.name[: -len("_assets")] + ".md")
    return out / "report.md"


def run_report(
    models: Dict[str, torch.nn.Module],
    task,
    out,
    n: int = 32,
    seed: int = 0,
    components: Sequence[str] = tuple(DEFAULT_COMPONENTS),
    metric: str = "logit_diff",
    fusion_examples: int = 2,
    fusion_probes: int = 4,
    progress: bool = True,
    sources: Optional[Dict[str, str]] = None,
) -> dict:
    """Run every analysis on ``models`` (name -> model) and write the outputs under ``out``.

    Returns the summary dict (also written to ``out/summary.json``).
    """
    if not models:
        raise ValueError("run_report needs at least one model")
    out = Path(out)
    t0 = time.time()
    data = PatchingData.from_task(task, n, seed=seed, split="test")
    labels = token_labels(data.clean_tokens[0])
    act, attr, fusion, verdicts, summary_models, attention_maps = {}, {}, {}, {}, {}, {}
    for name, model in models.items():
        model.eval()
        t = time.time()
        a = activation_patching(
            model, data, components, metric=metric, progress=progress, token_labels=labels, model_name=name
        )
        b = attribution_patching(model, data, components, metric=metric, token_labels=labels, model_name=name)
        act[name], attr[name] = a, b
        a.to_csv(out / f"activation_patching_{name}.csv")
        a.to_json(out / f"activation_patching_{name}.json")
        b.to_csv(out / f"attribution_patching_{name}.csv")
        b.to_json(out / f"attribution_patching_{name}.json")
        fcomps = ("conv_out", "ssm_out", "resid_post") if is_mamba(model) else ("attn_out", "resid_post")
        fusion[name] = (
            fusion_report(
                model,
                data.clean_tokens[:fusion_examples],
                components=fcomps,
                method="jacobian",
                n_probes=fusion_probes,
            )
            if fusion_examples
            else None
        )
        entry = {
            "source": (sources or {}).get(name, "in-memory model"),
            "clean_baseline": a.clean_baseline,
            "corrupted_baseline": a.corrupted_baseline,
            "agreement_spearman": agreement(a, b, per_component=True),
            "fusion_asymmetry": {f"{c}@L{layer}": v for (c, layer), v in fusion[name]["asymmetry"].items()}
            if fusion[name]
            else {},
            # ablation influence ||act_i(emb_j := 0) - act_i|| on the whole batch: cheap, exact
            "fusion_asymmetry_ablation": {
                f"{c}@L{layer}": v
                for (c, layer), v in fusion_report(
                    model, data.clean_tokens, components=fcomps, method="ablation"
                )["asymmetry"].items()
            },
            "seconds": None,
        }
        if is_mamba(model):
            v = verdict([model], data=data, metric=metric, names=[name])
            verdicts[name] = v
            entry["verdict"] = v.to_dict()
            entry.update(mamba_extras(model, task, data, n, seed))
        attention_maps[name] = attention_map(model, data.clean_tokens[:1])
        entry["seconds"] = round(time.time() - t, 2)
        summary_models[name] = entry

    paths = []
    paths += patching_heatmaps(act, out / "activation_patching")
    paths += patching_heatmaps(attr, out / "attribution_patching")
    maps = {}
    for k, v in attention_maps.items():
        if v is None:
            continue
        if is_mamba(models[k]):
            from .effective_attention import layer_ssm_attention_score

            maps[f"{k}: mean |M| (effective attention), L0"] = v
            S = layer_ssm_attention_score(models[k], data.clean_tokens[:1], 0)
            maps[f"{k}: |S| = |Mask∘(C Bᵀ)|, L0"] = (S.abs().mean(1) if S.dim() == 4 else S.abs())[0].float()
        else:
            maps[f"{k}: attention pattern, L0"] = v
    if maps:
        paths += attention_figure(maps, out / "attention", token_labels=labels)
    if any(f for f in fusion.values()):
        paths += fusion_figure({k: v for k, v in fusion.items() if v}, out / "fusion", token_labels=labels)
        write_json(
            out / "fusion.json",
            {
                name: {
                    "method": f["method"],
                    "spans": f["spans"],
                    "asymmetry": {f"{c}@L{layer}": v for (c, layer), v in f["asymmetry"].items()},
                    "matrices": {f"{c}@L{layer}": m.tolist() for (c, layer), m in f["matrices"].items()},
                }
                for name, f in fusion.items()
                if f
            },
        )
    import pandas as pd

    df = pd.concat([r.to_dataframe() for r in list(act.values()) + list(attr.values())], ignore_index=True)
    atomic_write(out / "all_cells.csv", lambda f: df.to_csv(f, index=False))
    diff_positions = (data.clean_tokens != data.corrupted_tokens).any(0).nonzero().flatten().tolist()
    summary = {
        "task": repr(task),
        "n": n,
        "seed": seed,
        "metric": metric,
        "direction": "denoising",
        "components": list(components),
        "diff_positions": diff_positions,
        "models": summary_models,
        "seconds_total": round(time.time() - t0, 2),
    }
    write_json(out / "summary.json", summary)
    write_text(markdown_path(out), render_markdown(summary, out, markdown_path(out)))
    summary["files"] = [str(p) for p in paths]
    return summary


def _rel(target: Path, md: Path) -> str:
    import os

    return os.path.relpath(target, md.parent).replace(os.sep, "/")


def render_markdown(summary: dict, out: Path, md: Path) -> str:
    """The report page; every number is read from ``summary`` (this run), never typed in."""
    lines = [
        "# Attribution: is the conv, the scan or the gate to blame?",
        "",
        "_Generated by `achilles-interp patch --out "
        + str(out)
        + "`; do not edit by hand: rerun the command._",
        "",
        f"Task: `{summary['task']}`, {summary['n']} clean/corrupted pairs (seed {summary['seed']}, split "
        f"`test`), metric `{summary['metric']}` (logit of the clean label minus the corrupted label at the "
        "answer position), denoising patching (clean activation into the corrupted run; effect 1 = the "
        "whole clean-vs-corrupted gap is restored).",
        "",
        "## Verdict",
        "",
        f"The clean and corrupted inputs differ only at positions {summary.get('diff_positions')}: "
        "the verdict "
        "says which path carries *that* difference into the answer position (tokens identical in both runs, "
        "e.g. the keys, are not what is being measured).",
        "",
    ]
    any_verdict = False
    for name, m in summary["models"].items():
        if "verdict" in m:
            any_verdict = True
            lines.append(f"- **{name}**: {m['verdict']['sentence']}")
    if not any_verdict:
        lines.append("- no Mamba model in this run.")
    lines += [
        "",
        "Definition: "
        + " ".join(next(iter(summary["models"].values())).get("verdict", {}).get("definition", "").split()),
        "",
    ]
    lines += [
        "## Baselines and agreement",
        "",
        "| model | clean | corrupted | Spearman(activation, attribution) | seconds |",
        "|---|---|---|---|---|",
    ]
    for name, m in summary["models"].items():
        lines.append(
            f"| {name} | {m['clean_baseline']:.3f} | {m['corrupted_baseline']:.3f} | "
            f"{m['agreement_spearman']['all']:.3f} | {m['seconds']} |"
        )
    lines += [
        "",
        "## Activation patching",
        "",
        f"![activation patching]({_rel(out / 'activation_patching.png', md)})",
        "",
        "## Attribution patching (gradient x activation difference)",
        "",
        f"![attribution patching]({_rel(out / 'attribution_patching.png', md)})",
        "",
    ]
    if (out / "fusion.png").exists() or any(m["fusion_asymmetry"] for m in summary["models"].values()):
        lines += [
            "## Token-fusion asymmetry",
            "",
            "Asymmetry index = (I[i, i-1] - I[i, s]) / (I[i, i-1] + I[i, s]) for each key/query span "
            "s..i: +1 = the last token fuses only its left neighbour, 0 = it weighs its mirrored partner "
            "equally (see `analyses/fusion.py`).",
            "",
            f"![fusion]({_rel(out / 'fusion.png', md)})",
            "",
            "| model | cell | asymmetry (Jacobian) | asymmetry (ablation) |",
            "|---|---|---|---|",
        ]
        for name, m in summary["models"].items():
            for cell, v in m["fusion_asymmetry"].items():
                abl = m.get("fusion_asymmetry_ablation", {}).get(cell, float("nan"))
                lines.append(f"| {name} | {cell} | {v:+.3f} | {abl:+.3f} |")
        lines.append("")
    lines += [
        "## Effective attention",
        "",
        "Layer 0 of the first example: mean |M[c, i, j]| over channels (heads) of the Mamba models' "
        "effective attention (the scan unrolled, `analyses/effective_attention.py`), the paper's SSM "
        "attention score |S| = |Mask∘(C Bᵀ)|, and the Transformer's attention pattern.",
        "",
        f"![attention]({_rel(out / 'attention.png', md)})",
        "",
    ]
    ab = [(name, m) for name, m in summary["models"].items() if "ablations" in m]
    if ab:
        lines += [
            "## Path ablations and the paper's interventions (clean batch)",
            "",
            "| model | ablation | logit_diff | accuracy |",
            "|---|---|---|---|",
        ]
        for name, m in ab:
            for row in m["ablations"]:
                lines.append(
                    f"| {name} | {row['ablation']} | {row['logit_diff']:.3f} | {row['accuracy']:.3f} |"
                )
        lines += [
            "",
            "| model | blocking context: agreement with unblocked | substituting the query's post-conv "
            "states: follows the other input | accuracy (all-ones conv) | accuracy |",
            "|---|---|---|---|---|",
        ]
        for name, m in ab:
            blk = m.get("blocking_all_context_before_query") or {}
            ones = m.get("all_ones_conv") or {}
            fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
            sub = m.get("substitution_query_from_corrupted") or {}
            lines.append(
                f"| {name} | {fmt(blk.get('agreement'))} | {fmt(sub.get('follows_other'))} "
                f"| {fmt(ones.get('accuracy_all_ones_conv'))} | {fmt(ones.get('accuracy'))} |"
            )
        lines.append("")
    lines += [
        "## Files",
        "",
        "Every number above is in `summary.json`; every cell in `all_cells.csv` and the "
        "per-model `activation_patching_*.csv/json`, `attribution_patching_*.csv/json`.",
        "",
    ]
    return "\n".join(lines)
