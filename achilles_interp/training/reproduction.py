"""The reproduction report: read a grid's runs into typed results, check the paper's claims, render
markdown. Reading and rendering never train; :mod:`achilles_interp.commands.reproduce` trains.

    from achilles_interp.training.reproduction import collect, render
    results = collect("docs/reproduction_runs", paper_cells(["mamba2"]), seeds=[0, 1, 2])
    text = render(results, paper_claims(["mamba2"]), command="...")

Layout read: ``runs_dir/<task>/<cell label>/seed<k>/metrics.json`` (:meth:`RunSpec.run_dir`).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ..catalog import MATCHING_TASKS
from ..outputs import write_json, write_text
from .claims import LEARNED, NEAR_CHANCE, SOLVES, Claim, Measure, Verdict, check
from .compare import fmt, plot_accuracy, stats
from .paper_grid import Cell, RunSpec, paper_cells

SNAPSHOT_EPOCHS = (40, 100, 200)
TASK_TITLES = {
    "inverse-matching": "Inverse sequence matching (chance 0.2)",
    "forward-matching": "Forward sequence matching (control; chance 0.2)",
    "composite": "Composite function task: held-out pair '43'",
    "composite-symmetric": "Full-symmetry composite task: held-out pair '43'",
}


@dataclass
class RunResult:
    """One run's ``metrics.json``: ``final`` is None while unfinished."""

    seed: int
    complete: bool
    epochs: int
    history: list
    final: Optional[dict]
    provenance: dict

    def value(self, split: str, metric: str = "accuracy") -> Optional[float]:
        if self.final is None:
            return None
        if metric == "accuracy":
            return self.final["accuracy"].get(split)
        return self.final["extra"].get(split, {}).get(metric)

    def at_epoch(self, epoch: int, split: str) -> Optional[float]:
        for h in self.history:
            if h["epoch"] == epoch:
                return h["accuracy"].get(split)
        return None


@dataclass
class CellResult:
    """A cell's runs: ``runs`` the finished ones, ``unfinished`` the stopped ones, ``missing`` the
    seeds with no ``metrics.json``."""

    cell: Cell
    runs: list = field(default_factory=list)
    unfinished: list = field(default_factory=list)
    missing: list = field(default_factory=list)

    def seed_values(self, split: str, metric: str = "accuracy") -> dict:
        return {r.seed: v for r in self.runs if (v := r.value(split, metric)) is not None}

    def stats(self, split: str, metric: str = "accuracy") -> dict:
        return stats(list(self.seed_values(split, metric).values()))

    def mean(self, split: str, metric: str = "accuracy") -> Optional[float]:
        return self.stats(split, metric)["mean"]

    def snapshot(self, epoch: int, split: str = "test") -> dict:
        """Accuracy on ``split`` at ``epoch`` from every run's history (finished or not)."""
        return stats([v for r in self.runs + self.unfinished if (v := r.at_epoch(epoch, split)) is not None])

    @property
    def splits(self) -> list:
        for r in self.runs + self.unfinished:
            if r.history:
                return list(r.history[-1]["accuracy"])
        return []


def collect(runs_dir, cells: Sequence[Cell], seeds: Sequence[int], preset: str = "paper") -> dict:
    """``{cell: CellResult}`` for every cell of the grid (in order)."""
    out = {}
    for cell in cells:
        res = CellResult(cell)
        for seed in seeds:
            doc = RunSpec(cell, seed, preset).metrics(runs_dir)
            if doc is None:
                res.missing.append(seed)
                continue
            run = RunResult(seed, bool(doc.get("complete")), doc["run"]["epochs"], doc.get("history", []),
                            doc.get("final"), doc.get("provenance", {}))
            if run.complete:
                res.runs.append(run)
            else:
                res.unfinished.append(run)
        out[cell] = res
    return out


def collect_ablation(runs_dir, mixers: Sequence[str], seeds: Sequence[int]) -> dict:
    """The earlier special-token grid (``docs/special_tokens/reproduction_runs``): matching cells as
    :func:`paper_cells` names them, composite cells without a depth suffix (that grid trained every
    composite model at the preset's 2 layers); cells with no run are left out."""
    cells = paper_cells(mixers, MATCHING_TASKS)
    cells += [Cell("composite", m, mx) for mx in mixers for m in ("mamba", "mamba-ones", "mamba-pe")]
    found = collect(runs_dir, cells, seeds)
    return {c: r for c, r in found.items() if r.runs or r.unfinished}


def check_claims(results: dict, claims: Sequence[Claim]) -> list[Verdict]:
    """Every claim whose cells are all in the grid, checked on ``results``."""
    def cell_of(m: Measure) -> Optional[CellResult]:
        return results.get(m.cell)

    verdicts = []
    for claim in claims:
        if any(cell_of(m) is None for m in claim.measures.values()):
            continue  # a cell this grid never asked for
        verdicts.append(check(claim, lambda m: cell_of(m).mean(m.split, m.metric),
                              lambda m: cell_of(m).seed_values(m.split, m.metric)))
    return verdicts


def hardware() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = "none"
    if torch.cuda.is_available():
        gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return (f"CPU: {cpu} ({os.cpu_count()} logical cores); GPU: {gpu}; torch {torch.__version__}, "
            f"Python {platform.python_version()}")


# ---- rendering ---------------------------------------------------------------------------------
def _per_seed(res: CellResult, splits: Sequence[str], metric: str = "accuracy") -> str:
    cells = []
    for r in sorted(res.runs, key=lambda r: r.seed):
        vals = " / ".join("-" if (v := r.value(s, metric)) is None else f"{v:.3f}" for s in splits)
        cells.append(f"{r.seed}: {vals}")
    return ", ".join(cells) or "-"


def matching_table(results: dict, task: str) -> list[str]:
    rows = [r for c, r in results.items() if c.task == task]
    splits = next((r.splits for r in rows if r.splits), ["train", "test", "ood"])
    lines = ["| variant | seeds | " + " | ".join(f"{s} accuracy" for s in splits)
             + " | per seed (train / test) | test at epoch " + " / ".join(map(str, SNAPSHOT_EPOCHS)) + " |",
             "|---|---|" + "---|" * len(splits) + "---|---|"]
    for r in rows:
        snaps = " / ".join("-" if (m := r.snapshot(e)["mean"]) is None else f"{m:.2f}" for e in SNAPSHOT_EPOCHS)
        lines.append(f"| {r.cell.label} | {len(r.runs)} | " + " | ".join(fmt(r.stats(s)) for s in splits)
                     + f" | {_per_seed(r, ['train', 'test'])} | {snaps} |")
    return lines


def cell_columns(r: CellResult) -> dict:
    """A cell's numbers, name -> stats, as its task's plot draws them: each split's accuracy; for the
    composite tasks the columns of their table (the held-out pair answered compositionally and
    symmetrically, '34', the trained pairs at the test positions, train), since their test accuracy
    alone hides the symmetric answer."""
    if not r.cell.task.startswith("composite"):
        return {s: r.stats(s) for s in r.splits}
    return {"'43' compositional": r.stats("test", "match_compositional_answer"),
            "'43' symmetric": r.stats("test", "match_symmetric_answer"),
            "'34'": r.stats("test_34"), "trained pairs": r.stats("test_seen"), "train": r.stats("train")}


def composite_table(results: dict, task: str) -> list[str]:
    rows = [r for c, r in results.items() if c.task == task]
    lines = ["| cell | seeds | '43': compositional | '43': symmetric | '34' at test positions | "
             "trained pairs at test positions | train | per seed (compositional / symmetric) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        per = ", ".join(
            f"{run.seed}: {run.value('test', 'match_compositional_answer'):.2f} / "
            f"{run.value('test', 'match_symmetric_answer'):.2f}" for run in sorted(r.runs, key=lambda x: x.seed))
        lines.append(f"| {r.cell.label} | {len(r.runs)} | " + " | ".join(fmt(st) for st in cell_columns(r).values())
                     + f" | {per or '-'} |")
    return lines


def unfinished_table(results: dict) -> list[str]:
    lines = []
    for r in results.values():
        for run in r.unfinished:
            last = run.history[-1] if run.history else None
            where = f"{last['epoch']} of {run.epochs}" if last else "before its first evaluation"
            acc = ", ".join(f"{k} {v:.3f}" for k, v in last["accuracy"].items()) if last else "-"
            lines.append(f"| {r.cell.task} | {r.cell.label} | {run.seed} | {where} | {acc} |")
        for seed in r.missing:
            lines.append(f"| {r.cell.task} | {r.cell.label} | {seed} | not started | - |")
    if not lines:
        return []
    return ["| task | cell | seed | stopped after epoch | accuracy there |", "|---|---|---|---|---|", *lines]


def _fmt_values(values: dict) -> str:
    return ", ".join(f"{k} = {'-' if v is None else f'{v:.3f}'}" for k, v in values.items())


def claims_table(verdicts: Sequence[Verdict]) -> list[str]:
    lines = ["| claim | source | check (means over seeds) | measured | seeds where it holds | verdict |",
             "|---|---|---|---|---|---|"]
    for v in verdicts:
        k, n = v.per_seed
        lines.append(f"| {v.claim.text} | {v.claim.source} | {v.claim.check_text()} | {_fmt_values(v.values)} | "
                     f"{k} of {n} | {v.verdict} |")
    return lines


def presets(results: dict) -> list:
    """The presets the runs were trained with (their provenance)."""
    return sorted({str(run.provenance["preset"]) for r in results.values() for run in r.runs + r.unfinished
                   if run.provenance.get("preset")})


def trained_on(results: dict) -> str:
    runs = [run for r in results.values() for run in r.runs + r.unfinished]
    devices = sorted({str(run.provenance.get("device")) for run in runs if run.provenance.get("device")})
    times = [run.provenance["elapsed_s"] for r in results.values() for run in r.runs
             if run.provenance.get("elapsed_s")]
    epochs = sorted({run.epochs for run in runs})
    span = f"; {len(times)} finished runs, {min(times):.0f}-{max(times):.0f} s each" if times else ""
    return (", ".join(devices) or "unknown") + span + (f"; epochs: {', '.join(map(str, epochs))}" if epochs else "")


def render(results: dict, claims: Sequence[Claim], command: str, title: str = "", intro: Sequence[str] = (),
           ablation: Optional[tuple[str, dict]] = None) -> str:
    """The report (markdown). ``ablation``: (heading, results of another grid) shown as tables only."""
    verdicts = check_claims(results, claims)
    lines = [title or '# Reproduction of arXiv 2509.17514 ("Achilles\' heel of Mamba")', "",
             "Generated by `achilles-interp reproduce` from the runs' own `metrics.json` files; every number "
             "is computed, nothing is typed in by hand. The settings (paper / ours / silent) are in "
             "[paper_settings.md](paper_settings.md).", "",
             f"* Command: `{command}`",
             f"* Preset: {', '.join(presets(results)) or 'unknown'}",
             f"* Runs trained on: {trained_on(results)}",
             f"* Report rendered on: {hardware()}", "",
             "Accuracy = fraction of held-out examples whose argmax over the whole vocabulary is the label; "
             "cells are mean ± population std over the finished seeds (min–max); 'test at epoch' is the mean "
             "test accuracy at that epoch from the runs' evaluation history (unfinished runs included).", "",
             *intro]
    tasks = list(dict.fromkeys(c.task for c in results))
    for task in tasks:
        lines += [f"## {TASK_TITLES.get(task, task)}", ""]
        if task.startswith("composite"):
            lines += ["Fraction of the held-out '43' examples answered with the compositional and with the "
                      "symmetric solution" + (" (in the full-symmetry task they coincide: key - 10, the answer "
                                              "of the seen '34')" if task == "composite-symmetric" else "")
                      + "; accuracy on '34' and on the trained pairs with the key at the test positions.", ""]
            lines += composite_table(results, task)
        else:
            lines += matching_table(results, task)
            if task == "inverse-matching":
                rates = [f"{c.label}: {fmt(r.stats('test', 'distractor_rate'))}" for c, r in results.items()
                         if c.task == task]
                lines += ["", "Rate at which the prediction is the *forward*-matching key (the distractor) on the "
                          "test split, where one exists: " + "; ".join(rates)]
        lines += [""]
    unfinished = unfinished_table(results)
    if unfinished:
        lines += ["## Runs not in the tables", "",
                  "Runs of the grid that have not finished: stopped by a time limit (their last evaluation "
                  "is shown; the next invocation resumes them from their checkpoint where it is kept, or "
                  "retrains them), or not started.", "", *unfinished, ""]
    lines += ["## Claim checks", "",
              f"Thresholds: 'solves' = test accuracy >= {SOLVES}; 'fails' = <= {NEAR_CHANCE} (chance 0.2); a "
              f"precondition on learning is >= {LEARNED}. Source 'paper' = the paper states it; 'our reading' = "
              "what its explanation implies, or a control it did not run. The verdict is on the means; 'seeds "
              "where it holds' applies the same conditions to each seed alone.", "", *claims_table(verdicts), ""]
    bad = [v for v in verdicts if v.verdict == "disagrees"]
    unclear = [v for v in verdicts if v.verdict.startswith("inconclusive")]
    missing = [v for v in verdicts if v.verdict == "not run"]
    lines += ["## Where it disagrees with the paper", ""]
    lines += [f"* {v.claim.text} Measured: {_fmt_values(v.values)}; holds in {v.per_seed[0]} of "
              f"{v.per_seed[1]} seeds." for v in bad] or ["No check disagrees at these thresholds."]
    if unclear:
        lines += ["", "Inconclusive (a precondition does not hold):"]
        lines += [f"* {v.claim.text} Measured: {_fmt_values(v.values)} ({v.verdict})." for v in unclear]
    if missing:
        lines += ["", "Not run yet (a cell has no finished run):"] + [f"* {v.claim.text}" for v in missing]
    lines += [""]
    if ablation is not None:
        heading, other = ablation
        lines += [f"## {heading}", ""]
        for task in dict.fromkeys(c.task for c in other):
            lines += [f"### {TASK_TITLES.get(task, task)}", ""]
            lines += composite_table(other, task) if task.startswith("composite") else matching_table(other, task)
            lines += [""]
    return "\n".join(lines)


def summary_json(results: dict, verdicts: Sequence[Verdict]) -> dict:
    """Every cell's statistics and every claim's verdict, for ``results.json``."""
    cells = []
    for c, r in results.items():
        splits = r.splits
        extra_keys = sorted({k for run in r.runs for k in run.final["extra"].get("test", {})})
        cells.append({"task": c.task, "label": c.label, "model": c.model, "mixer": c.mixer, "n_layers": c.n_layers,
                      "init_gamma": c.init_gamma, "task_format": c.task_format,
                      "seeds": [run.seed for run in r.runs],
                      "accuracy": {s: r.stats(s) for s in splits},
                      "test_extra": {k: r.stats("test", k) for k in extra_keys},
                      "unfinished": [{"seed": run.seed, "epoch": run.history[-1]["epoch"] if run.history else 0}
                                     for run in r.unfinished],
                      "missing": r.missing})
    return {"cells": cells,
            "claims": [{"claim": v.claim.text, "source": v.claim.source, "check": v.claim.check_text(),
                        "values": v.values, "verdict": v.verdict, "seeds_agreeing": v.per_seed[0],
                        "seeds": v.per_seed[1]} for v in verdicts]}


def write_report(out: Path, results: dict, claims: Sequence[Claim], command: str, assets_dir: Optional[Path] = None,
                 **render_kw) -> str:
    """Render ``results`` to ``out`` (markdown); with ``assets_dir``, also ``results.json`` and one
    accuracy plot per task there. Returns the markdown."""
    text = render(results, claims, command, **render_kw)
    if assets_dir is not None:
        assets_dir = Path(assets_dir)
        write_json(assets_dir / "results.json", summary_json(results, check_claims(results, claims)))
        for task in dict.fromkeys(c.task for c in results):
            rows = {c.label: {"accuracy": cell_columns(r)} for c, r in results.items() if c.task == task and r.runs}
            if rows:
                bars = list(next(iter(rows.values()))["accuracy"])
                plot_accuracy(rows, bars, assets_dir / f"{task}.png", f"{task} (finished seeds)",
                              0.2 if task.endswith("matching") else None)
    write_text(out, text)
    return text
