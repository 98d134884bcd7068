"""Write a finished study to disk: CSV / JSON of every number, figures (PNG + SVG) and the markdown
page. Nothing here computes an analysis: everything is read from the
:class:`~analyses.study.StudyResult` and the :class:`~analyses.explanation.Explanation`.

``write_study(study, explanation, out)`` writes into ``out/`` and the page beside it
(``docs/attribution_assets`` -> ``docs/attribution.md``; any other folder -> ``out/report.md``).
Figures average the seeds of one (task, variant): models are grouped by :func:`group_key`.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Dict, List, Optional

import torch

from achilles_interp.outputs import atomic_write, write_json, write_text

from .explanation import EXPLANATIONS, Explanation
from .plots import attention_figure, fusion_figure, patching_heatmaps
from .results import GridResult
from .study import ModelStudy, StudyResult
from .verdict import PATHS, combine


def markdown_path(out: Path) -> Path:
    """``docs/attribution_assets`` -> ``docs/attribution.md``; any other ``DIR`` -> ``DIR/report.md``."""
    out = Path(out)
    if out.name.endswith("_assets"):
        return out.parent / (out.name[: -len("_assets")] + ".md")
    return out / "report.md"


FIGURE_VARIANTS = ("mamba", "mamba-pe", "mamba-bypass-pe", "transformer")  # shown in the figures; all in the tables


def group_key(m: ModelStudy) -> str:
    """``task: variant`` (the seeds of one cell of the grid share it), with the token format when it
    is not the paper's."""
    fmt = f" ({m.task_format})" if m.task_format not in (None, "paper") else ""
    return f"{m.task}{fmt}: {m.variant}"


def groups(study: StudyResult) -> Dict[str, List[ModelStudy]]:
    out: Dict[str, List[ModelStudy]] = {}
    for m in study.models.values():
        out.setdefault(group_key(m), []).append(m)
    return out


def mean_grid(grids: List[GridResult], name: str) -> GridResult:
    """The effects of several models' grids averaged cell by cell (for the figures)."""
    g = grids[0]
    eff = torch.stack([x.effect for x in grids]).mean(0)
    val = torch.stack([x.values for x in grids]).mean(0)
    cb = statistics.fmean(x.clean_baseline for x in grids)
    kb = statistics.fmean(x.corrupted_baseline for x in grids)
    return GridResult(val, eff, g.components, g.layers, g.positions, g.metric, g.direction, g.method, cb, kb,
                      g.token_labels, name)


def _ms(values: List[float], digits: int = 2) -> str:
    values = [v for v in values if v is not None and v == v]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.pstdev(values):.{digits}f}"


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell (a literal ``|`` would end the cell)."""
    return str(text).replace("|", "\\|")


def _rel(target: Path, md: Path) -> str:
    return os.path.relpath(target, md.parent).replace(os.sep, "/")


def summary_dict(study: StudyResult, explanation: Optional[Explanation]) -> dict:
    """Every number of the study, JSON-ready (what ``summary.json`` holds)."""
    models = {}
    for name, m in study.models.items():
        models[name] = {
            "source": m.source, "task": m.task, "variant": m.variant, "accuracy": m.accuracy, "role": m.role,
            "seconds": m.seconds,
            "pairs": {c: {"change": p.description, "diff_positions": p.diff_positions,
                          "clean_baseline": p.activation.clean_baseline,
                          "corrupted_baseline": p.activation.corrupted_baseline,
                          "agreement_spearman": p.agreement,
                          "path_shares": p.shares.to_dict() if p.shares else None} for c, p in m.pairs.items()},
            "fusion_asymmetry": ({f"{c}@L{layer}": v for (c, layer), v in m.fusion["asymmetry"].items()}
                                 if m.fusion else {}),
            "fusion_asymmetry_ablation": m.fusion_ablation,
            "interventions": [r.to_dict() for r in m.interventions],
            "conv_tap_cosine": m.conv_tap_cosine,
            "probes": [p.to_dict() for p in m.probes],
        }
    return {"config": study.config.__dict__ | {"components": list(study.config.components)},
            "tasks": study.tasks, "models": models, "seconds_total": study.seconds,
            "explanation": explanation.to_dict() if explanation else None}


def write_study(study: StudyResult, explanation: Optional[Explanation], out, command: str = "") -> dict:
    """Write every file of the study into ``out`` and the markdown page; returns the summary."""
    out = Path(out)
    md = markdown_path(out)
    import pandas as pd

    frames = []
    for name, m in study.models.items():
        for change, p in m.pairs.items():
            for grid in (p.activation, p.attribution):
                df = grid.to_dataframe()
                df.insert(1, "pairs", change)
                frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    # every patching cell of every model, one row each (gzip: the cells of a grid of models run to MBs)
    atomic_write(out / "all_cells.csv.gz", lambda f: df.to_csv(f, index=False, compression="gzip"))
    grouped = groups(study)
    changes = list(dict.fromkeys(c for m in study.models.values() for c in m.pairs))
    figures = {}
    for change in changes:
        for method in ("activation", "attribution"):
            shown = {k: ms for k, ms in grouped.items() if ms[0].variant in FIGURE_VARIANTS} or grouped
            grids = {k: mean_grid([getattr(m.pairs[change], method) for m in ms], k)
                     for k, ms in shown.items() if all(change in m.pairs for m in ms)}
            if grids:
                stem = out / f"{method}_patching_{change}"
                patching_heatmaps(grids, stem, title=f"{method} patching, {change} pairs: normalised effect "
                                  "(mean over seeds)")
                figures[(method, change)] = stem.with_suffix(".png")
    firsts = {k: ms[0] for k, ms in grouped.items() if ms[0].variant in FIGURE_VARIANTS} or \
        {k: ms[0] for k, ms in grouped.items()}
    fus = {k: m.fusion for k, m in firsts.items() if m.fusion}
    if fus:
        labels = next(iter(study.token_labels.values()))
        fusion_figure(fus, out / "fusion", token_labels=labels,
                      ablation={k: firsts[k].fusion_ablation for k in fus})
        figures["fusion"] = out / "fusion.png"
        write_json(out / "fusion.json", {
            k: {"method": f["method"], "spans": f["spans"],
                "asymmetry": {f"{c}@L{layer}": v for (c, layer), v in f["asymmetry"].items()},
                "matrices": {f"{c}@L{layer}": mat.tolist() for (c, layer), mat in f["matrices"].items()}}
            for k, f in fus.items()})
    maps = {}
    for k, m in firsts.items():
        if m.attention is not None:
            maps[f"{k}\n{'mean |M| (effective attention)' if m.is_mamba else 'attention pattern'}, L0"] = m.attention
        if m.ssm_score is not None:
            maps[f"{k}\n|S| = |Mask∘(C Bᵀ)|, L0"] = m.ssm_score
    if maps:
        attention_figure(maps, out / "attention", token_labels=next(iter(study.token_labels.values())))
        figures["attention"] = out / "attention.png"
    summary = summary_dict(study, explanation)
    write_json(out / "summary.json", summary)
    write_text(md, render_markdown(study, explanation, out, md, figures, command))
    return summary


def render_markdown(study: StudyResult, explanation: Optional[Explanation], out: Path, md: Path,
                    figures: dict, command: str) -> str:
    """The page; every number is read from the study."""
    cfg = study.config
    grouped = groups(study)
    lines = ["# Attribution: what makes Mamba fail inverse sequence matching?", "",
             f"_Generated by `{command or 'achilles-interp patch'}`; do not edit by hand: rerun the command._", "",
             f"{cfg.n} clean/corrupted pairs of each kind per model (seed {cfg.seed}, split `test`), metric "
             f"`{cfg.metric}` (logit of the clean answer minus the corrupted one), denoising patching (the clean "
             "activation put into the corrupted run; effect 1 = the whole clean-vs-corrupted gap restored). "
             "Where a (task, variant) has several seeds, numbers are mean ± std over them.", ""]
    if explanation is not None:
        lines += ["## Verdict", "", explanation.sentence, "",
                  "| evidence | from | measured | holds | counts (for + / against -) |", "|---|---|---|---|---|"]
        for e in explanation.evidence:
            counts = ", ".join(f"{EXPLANATIONS[k]} {v:+d}" for k, v in (e.counts if e.holds is not False
                                                                      else e.if_false).items()) or "not counted"
            held = {True: "yes", False: "no", None: "not measured"}[e.holds]
            lines.append("| " + " | ".join(_cell(x) for x in (e.text, e.source, e.measured, held, counts)) + " |")
        lines += ["", "Thresholds and the rule are in `analyses/explanation.py`: a model *fails* at test "
                  "accuracy <= 0.35 and *solves* at >= 0.9 (chance 0.2); the verdict is the explanation with "
                  "the largest positive net count.", ""]
    lines += ["## Models", "", "| task: variant | seeds | test accuracy | role | best slot probe | "
              "best position probe | seconds |", "|---|---|---|---|---|---|---|"]
    for k, ms in grouped.items():
        roles = ", ".join(sorted({m.role for m in ms}))
        lines.append(f"| {k} | {len(ms)} | {_ms([m.accuracy for m in ms], 3)} | {roles} | "
                     f"{_ms([m.best_probe('slot') for m in ms])} | {_ms([m.best_probe('position') for m in ms])} | "
                     f"{_ms([m.seconds for m in ms], 0)} |")
    lines += ["", "Models: " + "; ".join(f"`{n}` ({m.source})" for n, m in study.models.items()), ""]
    changes = list(dict.fromkeys(c for m in study.models.values() for c in m.pairs))
    lines += ["## Which path carries the change", "",
              "Share of the restorable effect through the conv path (u_i), the scan (h_{i-1}) and the gate (z_i) "
              "of the answer position i, and the clean-minus-corrupted gap of the metric (how much the answer "
              "depends on the change at all). The query sits inside the conv window of the answer, so the "
              "conv can carry a query change without the scan; a key swap happens far before it, so only the "
              "scan can carry it.", "",
              "| task: variant | pairs | gap (clean - corrupted) | conv | scan | gate |", "|---|---|---|---|---|---|"]
    for k, ms in grouped.items():
        for change in changes:
            if not all(change in m.pairs for m in ms):
                continue
            gaps = [m.pairs[change].gap for m in ms]
            sh = [m.pairs[change].shares for m in ms if m.pairs[change].shares is not None]
            c = combine(sh) if sh else None
            cells = [f"{100 * c.share[p]:.0f}%" + ("" if c.std[p] != c.std[p] else f" ± {100 * c.std[p]:.0f}")
                     if c and c.share[p] == c.share[p] else "-" for p in PATHS] if c else ["-"] * 3
            lines.append(f"| {k} | {change} | {_ms(gaps)} | " + " | ".join(cells) + " |")
    lines += ["", "Definition: " + (next((m.pairs[c].shares.to_dict()["definition"] for m in study.models.values()
                                          for c in m.pairs if m.pairs[c].shares), "")), ""]
    for change in changes:
        desc = next(m.pairs[change].description for m in study.models.values() if change in m.pairs)
        lines += [f"### Patching, {change} pairs ({desc})", ""]
        for method in ("activation", "attribution"):
            if (method, change) in figures:
                lines += [f"![{method} patching, {change} pairs]({_rel(figures[(method, change)], md)})", ""]
        rho = [m.pairs[change].agreement["all"] for m in study.models.values() if change in m.pairs]
        lines += [f"Spearman rank agreement of activation and attribution patching over all cells: {_ms(rho)}.", ""]
    probe_models = [m for m in study.models.values() if m.probes]
    if probe_models:
        streams = list(dict.fromkeys(p.stream for m in probe_models for p in m.probes))
        lines += ["## Position information in the residual stream", "",
                  "Held-out accuracy of a linear probe decoding, from each residual stream, a token's key slot "
                  "(1..5, at the 15 key tokens; chance 0.2) and its absolute position (every position; chance "
                  "1/L); in brackets the control task's accuracy (a random map from the token id to the "
                  "classes: what token identity alone gives). Whole examples are held out.", "",
                  "| task: variant | target | " + " | ".join(streams) + " |", "|---|---|" + "---|" * len(streams)]
        for k, ms in grouped.items():
            ms = [m for m in ms if m.probes]
            for target in ("slot", "position"):
                if not ms:
                    continue
                row = []
                for s in streams:
                    acc = [p.accuracy for m in ms for p in m.probes if p.stream == s and p.target == target]
                    ctl = [p.control for m in ms for p in m.probes if p.stream == s and p.target == target]
                    row.append(f"{_ms(acc)} ({_ms(ctl)})" if acc else "-")
                lines.append(f"| {k} | {target} | " + " | ".join(row) + " |")
        lines.append("")
    iv = [(k, ms) for k, ms in grouped.items() if any(m.interventions for m in ms)]
    if iv:
        lines += ["## Ablations and the paper's interventions (clean batch of the first kind of pairs)", "",
                  "Accuracy and logit difference with each intervention, the fraction of predictions it leaves "
                  "unchanged (agreement) and, for the substitution, the fraction that follows the other input.",
                  "", "| task: variant | intervention | accuracy | logit_diff | agreement | follows other |",
                  "|---|---|---|---|---|---|"]
        for k, ms in iv:
            labels = list(dict.fromkeys(r.label for m in ms for r in m.interventions))
            for label in labels:
                rows = [r for m in ms for r in m.interventions if r.label == label]
                fol = [r.follows_other for r in rows if r.follows_other is not None]
                lines.append(f"| {k} | {label} | {_ms([r.accuracy for r in rows], 3)} | "
                             f"{_ms([r.logit_diff for r in rows])} | {_ms([r.agreement for r in rows])} | "
                             f"{_ms(fol) if fol else '-'} |")
        taps = [(k, ms) for k, ms in grouped.items() if any(m.conv_tap_cosine for m in ms)]
        if taps:
            lines += ["", "Largest |cosine| between two different taps of the conv kernel (over channels; the "
                      "paper reports <= 0.35, 'nearly orthogonal'): " + "; ".join(
                          f"{k} {_ms([_max_offdiag(m.conv_tap_cosine) for m in ms if m.conv_tap_cosine])}"
                          for k, ms in taps)]
        lines.append("")
    if "fusion" in figures:
        lines += ["## Token-fusion asymmetry", "",
                  "Asymmetry index = (I[i, i-1] - I[i, s]) / (I[i, i-1] + I[i, s]) for each key/query span s..i "
                  "(+1: the last token fuses only its left neighbour, 0: it weighs its mirrored partner equally), "
                  "by Jacobian norms and by ablating token embeddings (`analyses/fusion.py`); first seed of each "
                  "group.", "", f"![fusion]({_rel(figures['fusion'], md)})", ""]
    if "attention" in figures:
        lines += ["## Effective attention", "", "Layer 0 of one example: mean |M[c, i, j]| over channels of the "
                  "scan unrolled as attention, the paper's |S| = |Mask∘(C Bᵀ)|, and the Transformer's pattern; "
                  "first seed of each group.", "", f"![attention]({_rel(figures['attention'], md)})", ""]
    lines += ["## Files", "", f"Every number above is in `{_rel(out / 'summary.json', md)}`; every patching cell "
              f"of every model (model, pairs, method, component, layer, position, value, effect) in "
              f"`{_rel(out / 'all_cells.csv.gz', md)}`; the fusion matrices of the figure's models in "
              f"`{_rel(out / 'fusion.json', md)}`. The figures show {', '.join(FIGURE_VARIANTS)} "
              "(mean over seeds for the heatmaps, the first seed for fusion and attention); the tables show "
              "every variant.", ""]
    return "\n".join(lines)


def _max_offdiag(cos: list) -> float:
    """Largest |cosine| between two different taps over the layers of one model."""
    t = torch.tensor(cos)  # [layers, K, K]
    K = t.shape[-1]
    off = ~torch.eye(K, dtype=torch.bool)
    return float(t[:, off].abs().max())
