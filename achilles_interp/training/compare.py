"""Train a grid of variants x mixers x seeds on one task and summarise it (mean ± std per split).

    from achilles_interp.training.compare import compare
    summary = compare("inverse-matching", ["transformer", "mamba"], ["mamba2"], [0, 1, 2],
                      "quick", "runs/cmp")

Writes ``results.json`` (every run's final metrics + the summary), ``results.md`` (markdown table)
and ``accuracy.png`` (bar plot with ±1 std error bars) into ``out_dir``; each run lives in
``out_dir/<variant>[-<mixer>]/seed<k>/`` and a finished run is reused when found there
(``metrics.json`` with ``"complete": true``), so an interrupted grid can be restarted.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Optional, Sequence, Union

from ..errors import UserError
from ..outputs import save_figure, write_json, write_text
from ..tasks import Task
from .presets import Preset
from .layout import METRICS_FILE, STATE_FILE, variant_label
from .trainer import resolve_task, train


def grid(models: Sequence[str], mixers: Sequence[str]) -> list[tuple[str, Optional[str]]]:
    """(model, mixer) pairs: Transformer variants once (mixer None), Mamba variants per mixer."""
    out: list[tuple[str, Optional[str]]] = []
    for m in models:
        if m.startswith("transformer"):
            out.append((m, None))
        else:
            out.extend((m, x) for x in mixers)
    return out


def run_path(out_dir: Path, model: str, mixer: Optional[str], seed: int) -> Path:
    """The directory of one run of a grid: ``out_dir/<variant label>/seed<seed>``."""
    return Path(out_dir) / variant_label(model, mixer) / f"seed{seed}"


def run_metrics(out_dir: Path, model: str, mixer: Optional[str], seed: int) -> Optional[dict]:
    """The metrics.json of a run, finished or not, or None where the run has none."""
    mfile = run_path(out_dir, model, mixer, seed) / METRICS_FILE
    return json.loads(mfile.read_text()) if mfile.is_file() else None


def finished_run(out_dir: Path, model: str, mixer: Optional[str], seed: int) -> Optional[dict]:
    """The metrics.json of a completed run, or None."""
    doc = run_metrics(out_dir, model, mixer, seed)
    return doc if doc is not None and doc.get("complete") else None


def run_one(task, model: str, mixer: Optional[str], seed: int, out_dir: Path, preset, **kw) -> dict:
    """Train (or reuse / resume) one run; returns its metrics.json content."""
    run_dir = run_path(out_dir, model, mixer, seed)
    done = finished_run(out_dir, model, mixer, seed)
    if done is not None:
        return done
    resume = (run_dir / STATE_FILE).is_file()
    return train(task, model, run_dir, preset=preset, seed=seed, mixer=mixer or "mamba2", resume=resume, **kw)


def stats(values: list[float]) -> dict:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0, "values": []}
    return {
        "mean": statistics.fmean(vals),
        "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0,
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
        "values": vals,
    }


def summarize(runs: list[dict]) -> dict:
    """``{label: {"accuracy": {split: stats}, "extra": {split: {metric: stats}}}}`` where stats is
    ``{mean, std (population), min, max, n, values}`` over seeds."""
    by_label: dict[str, list[dict]] = {}
    for r in runs:
        by_label.setdefault(variant_label(r["run"]["model"], r["run"]["mixer"]), []).append(r)
    out = {}
    for label, rs in by_label.items():
        splits = rs[0]["final"]["accuracy"].keys()
        acc = {s: stats([r["final"]["accuracy"].get(s) for r in rs]) for s in splits}
        extra = {}
        for s in splits:
            keys = sorted({k for r in rs for k in r["final"]["extra"].get(s, {})})
            extra[s] = {k: stats([r["final"]["extra"].get(s, {}).get(k) for r in rs]) for k in keys}
        out[label] = {
            "model": rs[0]["run"]["model"],
            "mixer": rs[0]["run"]["mixer"],
            "seeds": [r["run"]["seed"] for r in rs],
            "accuracy": acc,
            "extra": extra,
            "elapsed_s": stats([r["provenance"]["elapsed_s"] for r in rs]),
        }
    return out


def fmt(st: dict, digits: int = 3) -> str:
    """``mean ± std (min–max)`` or ``-``."""
    if not st or st.get("mean") is None:
        return "-"
    s = f"{st['mean']:.{digits}f} ± {st['std']:.{digits}f}"
    if st["n"] > 1:
        s += f" ({st['min']:.{digits}f}–{st['max']:.{digits}f})"
    return s


def markdown_table(summary: dict, splits: Sequence[str]) -> str:
    """Markdown table: one row per variant, one column per split (accuracy mean ± std over seeds)."""
    head = "| variant | seeds | " + " | ".join(f"{s} accuracy" for s in splits) + " |"
    sep = "|---|---|" + "---|" * len(splits)
    rows = [head, sep]
    for label, v in summary.items():
        cells = [fmt(v["accuracy"].get(s, {})) for s in splits]
        rows.append(f"| {label} | {len(v['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot_accuracy(summary: dict, splits: Sequence[str], target, title: str, chance: Optional[float] = None):
    """Grouped bar plot (variants x splits) with ±1 std error bars, written atomically to ``target``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(summary)
    width = 0.8 / max(len(splits), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(labels) + 2), 4.2))
    for j, s in enumerate(splits):
        means = [summary[lab]["accuracy"].get(s, {}).get("mean") or 0.0 for lab in labels]
        stds = [summary[lab]["accuracy"].get(s, {}).get("std") or 0.0 for lab in labels]
        xs = [i + (j - (len(splits) - 1) / 2) * width for i in range(len(labels))]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=s)
    if chance is not None:
        ax.axhline(chance, color="gray", linestyle="--", linewidth=1, label=f"chance ({chance:.2f})")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("model variant")
    ax.set_ylabel("accuracy (mean ± std over seeds)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))   # beside the bars, never over them
    fig.tight_layout()
    save_figure(fig, target, dpi=120)
    plt.close(fig)


def chance_level(task) -> Optional[float]:
    """1 / number of candidate answers when that is small (<= 16), else None."""
    n = len(getattr(task, "label_tokens", []))
    return 1.0 / n if 0 < n <= 16 else None


def compare(
    task: Union[str, Task],
    models: Sequence[str],
    mixers: Sequence[str],
    seeds: Sequence[int],
    preset: Union[str, Preset, None],
    out_dir,
    device: Optional[str] = None,
    epochs: Optional[int] = None,
    n_train: Optional[int] = None,
    batch_size: Optional[int] = None,
    model_overrides: Optional[dict] = None,
    progress: bool = True,
    command: Optional[str] = None,
    n_eval: Optional[int] = None,
    threads: Optional[int] = None,
    finished_only: bool = False,
    cuda_graph: Optional[bool] = None,
    task_format: Optional[str] = None,
) -> dict:
    """Train every (variant, mixer) x seed on ``task``; write results.json / results.md / accuracy.png.

    ``finished_only=True`` trains nothing: it tabulates the runs already complete under
    ``out_dir`` (cells without one are left out of the tables).

    Returns the ``results.json`` content: ``task``, ``preset``, ``command``, ``runs`` (per run:
    label, seed, final metrics, run dir) and ``summary`` (see :func:`summarize`).
    """
    from tqdm.auto import tqdm

    if not models or not seeds:
        raise UserError("compare needs at least one model and one seed")
    out_dir = Path(out_dir)
    pairs = grid(models, mixers)
    runs = []
    jobs = [(m, x, s) for m, x in pairs for s in seeds]
    if finished_only:
        runs = [r for r in (finished_run(out_dir, m, x, sd) for m, x, sd in jobs) if r is not None]
        if not runs:
            raise UserError(f"no finished runs under {out_dir} for {task}")
        jobs = []
    for model, mixer, seed in tqdm(jobs, desc="compare", disable=not progress, unit="run"):
        runs.append(
            run_one(
                task,
                model,
                mixer,
                seed,
                out_dir,
                preset,
                device=device,
                epochs=epochs,
                n_train=n_train,
                n_eval=n_eval,
                batch_size=batch_size,
                model_overrides=model_overrides,
                progress=progress,
                command=command,
                threads=threads,
                cuda_graph=cuda_graph,
                task_format=task_format,
            )
        )
    summary = summarize(runs)
    splits = runs[0]["run"]["splits"]
    task_obj = resolve_task(
        task, (model_overrides or {}).get("n_layers", runs[0]["run"]["model_config"]["n_layers"]), task_format
    )
    doc = {
        "task": task_obj.name,
        "task_repr": repr(task_obj),
        "preset": runs[0]["run"]["preset"],
        "command": command,
        "runs": [
            {
                "label": variant_label(r["run"]["model"], r["run"]["mixer"]),
                "seed": r["run"]["seed"],
                "epochs": r["run"]["epochs"],
                "final": r["final"],
                "elapsed_s": r["provenance"]["elapsed_s"],
                "device": r["provenance"]["device"],
                "git_commit": r["provenance"]["git_commit"],
                "git_modified": r["provenance"].get("git_modified"),  # absent in runs before it was kept
                "dir": str(run_path(out_dir, r["run"]["model"], r["run"]["mixer"], r["run"]["seed"])),
            }
            for r in runs
        ],
        "summary": summary,
    }
    write_json(out_dir / "results.json", doc)
    md = [
        f"# {task_obj.name}: accuracy by variant",
        "",
        f"Preset `{doc['preset']}`, seeds {list(seeds)}; mean ± population std over seeds (min–max).",
        "",
    ]
    if command:
        md += [f"Command: `{command}`", ""]
    md += [markdown_table(summary, splits), ""]
    write_text(out_dir / "results.md", "\n".join(md))
    plot_accuracy(
        summary,
        splits,
        out_dir / "accuracy.png",
        f"{task_obj.name} (preset {doc['preset']}, {len(seeds)} seed{'s' if len(seeds) > 1 else ''})",
        chance_level(task_obj),
    )
    return doc
