"""Reproduce the paper's main results and write ``docs/reproduction.md`` from the numbers.

    python -m achilles_interp.training.reproduce --out docs/reproduction.md            # GPU: paper preset
    python -m achilles_interp.training.reproduce --out /tmp/r.md --preset quick --seeds 0 --mixers mamba2

Grid (each cell trained for every seed, runs kept under ``--runs-dir``, finished runs reused):

* inverse matching and its forward-matching control: Transformer, standard Mamba, Mamba without
  conv, Mamba with conv bypass + positional encoding (the paper's fix), for each ``--mixers``;
* composite function task: standard Mamba, all-ones conv kernel, standard + positional
  encoding; on the held-out pair "43" we report how often the model gives the compositional
  answer (key - 10) and the symmetric one (key - 6).

The markdown holds tables (mean ± population std over seeds, min–max), the command, the hardware,
and a "where it disagrees with the paper" section *computed* from the numbers: each of the paper's
qualitative claims is turned into a check with an explicit threshold (listed in the document).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..config import FANS
from ..outputs import write_text
from ..tasks.inverse_matching import FILLERS, InverseMatchingTask
from .compare import compare, finished_run, fmt, grid, markdown_table, run_metrics, variant_label
from .presets import PRESETS, get_preset
from .validation import check_seeds, positive_settings

MATCHING_MODELS = ["transformer", "mamba", "mamba-bypass-pe", "mamba-noconv"]
COMPOSITE_MODELS = ["mamba", "mamba-ones", "mamba-pe"]
CHANCE = 0.2  # inverse/forward matching: 5 candidate keys

# thresholds of the claim checks (absolute accuracies / rates on the held-out split)
NEAR_CHANCE = 0.35  # "fails": mean test accuracy at most chance + 0.15
SOLVES = 0.9  # "solves": mean test accuracy at least 0.9
FIX_MARGIN = 0.3  # "fixes": at least 0.3 above standard Mamba
LEARNED = 0.5  # a check counts only if the model learned the easy part at least this well


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"CPU: {cpu} ({os.cpu_count()} logical cores)"]
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        parts.append("GPU: " + ", ".join(names))
    else:
        parts.append("GPU: none")
    parts.append(f"torch {torch.__version__}, Python {platform.python_version()}, {platform.platform()}")
    return "; ".join(parts)


def _mean(summary: dict, label: str, split: str, extra: Optional[str] = None) -> Optional[float]:
    v = summary.get(label)
    if v is None:
        return None
    st = v["extra"].get(split, {}).get(extra) if extra else v["accuracy"].get(split)
    return None if not st else st.get("mean")


def claim_checks(results: dict, mixers: Sequence[str],
                 requested: Optional[set[tuple[str, str]]] = None) -> list[dict]:
    """Each paper claim as ``{claim, check, values, verdict}`` with verdict "agrees", "disagrees",
    "inconclusive: <reason>" (the run did not learn enough for the check to mean anything, e.g. a
    'fails' verdict on a model that also fails the easy control) or "not run" (a cell of the grid
    has no finished run). ``requested``: the grid's ``(task, variant label)`` cells
    (:func:`grid_cells`); a claim that needs a cell outside them is left out rather than reported
    "not run", since that grid never asked for it (e.g. ``--models mamba`` trains no Transformer)."""
    INV, FWD, COMP = "inverse-matching", "forward-matching", "composite"
    checks = []

    def neither(compositional, symmetric):
        if compositional + symmetric < LEARNED:
            return f"the model gives either answer on only {compositional + symmetric:.2f} of the examples"
        return None

    def add(claim: str, check: str, cells: dict, ok, inconclusive=None):
        """``cells``: each measured value's name -> ``(task, variant label, split[, extra metric])``;
        the claim is skipped when a cell is outside ``requested``."""
        if requested is not None and not {cell[:2] for cell in cells.values()} <= requested:
            return
        values = {name: _mean(results.get(task, {}).get("summary", {}), label, *metric)
                  for name, (task, label, *metric) in cells.items()}
        if any(v is None for v in values.values()):
            verdict = "not run"
        elif inconclusive is not None and (reason := inconclusive(**values)):
            verdict = f"inconclusive: {reason}"
        else:
            verdict = "agrees" if ok(**values) else "disagrees"
        shown = ", ".join(f"{k} = {'-' if v is None else f'{v:.3f}'}" for k, v in values.items())
        checks.append({"claim": claim, "check": check, "values": shown, "verdict": verdict})

    add(
        "The Transformer solves inverse sequence matching.",
        f"transformer test accuracy >= {SOLVES}",
        {"transformer test": (INV, "transformer", "test")},
        lambda **v: v["transformer test"] >= SOLVES,
    )
    for mx in mixers:
        std, fix, noconv = f"mamba-{mx}", f"mamba-bypass-pe-{mx}", f"mamba-noconv-{mx}"
        add(
            f"Standard Mamba ({mx}) fails inverse sequence matching (near chance, 0.2).",
            f"{std} inverse test accuracy <= {NEAR_CHANCE}, counted only if its forward-control test "
            f"accuracy >= {LEARNED} (else an untrained model would 'fail' too)",
            {"inverse": (INV, std, "test"), "forward": (FWD, std, "test")},
            lambda **v: v["inverse"] <= NEAR_CHANCE,
            lambda **v: None if v["forward"] >= LEARNED else "the forward control is not learned either",
        )
        add(
            f"The failure is specific to reversal: standard Mamba ({mx}) learns the forward-matching "
            "control.",
            f"{std} forward test >= {SOLVES} and inverse test <= {NEAR_CHANCE}",
            {"forward": (FWD, std, "test"), "inverse": (INV, std, "test")},
            lambda **v: v["forward"] >= SOLVES and v["inverse"] <= NEAR_CHANCE,
        )
        add(
            f"Conv bypass + positional encoding fixes Mamba ({mx}) on inverse matching.",
            f"{fix} test >= {SOLVES} and >= {std} test + {FIX_MARGIN}, counted only if {std} fails "
            f"(test <= {NEAR_CHANCE})",
            {"fix": (INV, fix, "test"), "standard": (INV, std, "test")},
            lambda **v: v["fix"] >= SOLVES and v["fix"] >= v["standard"] + FIX_MARGIN,
            lambda **v: None if v["standard"] <= NEAR_CHANCE else (
                f"standard Mamba does not fail here ({v['standard']:.3f}), so there is no failure to fix; "
                f"the modified model reaches {v['fix']:.3f}"),
        )
        add(
            f"The conv, not the SSM, causes the failure (our reading): removing the conv ({mx}) does better "
            "than standard Mamba on inverse matching.",
            f"{noconv} test > {std} test + 0.1, counted only if {noconv} learns the "
            f"forward control (test >= {LEARNED})",
            {"noconv": (INV, noconv, "test"), "standard": (INV, std, "test"),
             "noconv forward": (FWD, noconv, "test")},
            lambda **v: v["noconv"] > v["standard"] + 0.1,
            lambda **v: None if v["noconv forward"] >= LEARNED else (
                "without the conv (and without positional encoding) the model learns the forward control "
                "no better, so it says nothing about reversal"),
        )
        c, s = "match_compositional_answer", "match_symmetric_answer"
        add(
            f"Standard Mamba ({mx}) favours the compositional solution on the held-out composite pair.",
            f"{std}: rate(compositional) > rate(symmetric) on split test",
            {"compositional": (COMP, std, "test", c), "symmetric": (COMP, std, "test", s)},
            lambda **v: v["compositional"] > v["symmetric"],
            neither,
        )
        for variant, change in (("mamba-ones", "An all-ones (symmetric) conv kernel"),
                                ("mamba-pe", "Adding positional encoding")):
            add(
                f"{change} ({mx}) makes Mamba favour the symmetric solution.",
                f"{variant}-{mx}: rate(symmetric) > rate(compositional) on split test",
                {"compositional": (COMP, f"{variant}-{mx}", "test", c),
                 "symmetric": (COMP, f"{variant}-{mx}", "test", s)},
                lambda **v: v["symmetric"] > v["compositional"],
                neither,
            )
    return checks


def unfinished_runs(runs_dir: Path, tasks: Sequence[str], mixers: Sequence[str], seeds: Sequence[int],
                    models: Optional[Sequence[str]] = None) -> list[dict]:
    """The grid's runs missing from the tables: started but stopped before their last epoch (a
    ``metrics.json`` with ``"complete": false``, e.g. cut by ``--time-limit``), or never started
    (no ``metrics.json``). Each is returned as ``{task, variant, seed, started, epoch, epochs,
    accuracy}``: the accuracies of the last evaluation it reached (``epoch`` of ``epochs``), or
    ``epoch`` None and no accuracies for a run not started or stopped before its first evaluation,
    and the ``device`` it ran on (None where unknown)."""
    out = []
    for task, model, mixer, seed in grid_runs(tasks, mixers, seeds, models):
        doc = run_metrics(Path(runs_dir) / task, model, mixer, seed)
        if doc is not None and doc.get("complete"):
            continue
        row = {"task": task, "variant": variant_label(model, mixer), "seed": seed, "started": doc is not None,
               "epoch": None, "epochs": None, "accuracy": {},
               "device": (doc or {}).get("provenance", {}).get("device")}
        if doc is not None and doc.get("history"):
            last = doc["history"][-1]
            row.update(epoch=last["epoch"], epochs=doc["run"]["epochs"], accuracy=last["accuracy"])
        out.append(row)
    return out


def unfinished_table(rows: Sequence[dict]) -> str:
    lines = ["| task | variant | seed | stopped after epoch | accuracy at that epoch |", "|---|---|---|---|---|"]
    for r in rows:
        if r["epoch"] is None:
            status = "before its first evaluation" if r["started"] else "not started"
            lines.append(f"| {r['task']} | {r['variant']} | {r['seed']} | {status} | - |")
            continue
        acc = ", ".join(f"{k} {v:.3f}" for k, v in r["accuracy"].items())
        lines.append(f"| {r['task']} | {r['variant']} | {r['seed']} | {r['epoch']} of {r['epochs']} | {acc} |")
    return "\n".join(lines)


def per_seed_line(runs: Sequence[dict]) -> str:
    """One line giving each variant's train / test accuracy seed by seed (``runs``: the
    ``results.json`` run records): where the outcome is seed-dependent (one seed memorising, the
    others generalising) the mean ± std hides which seed did what."""
    by_label: dict[str, list[str]] = {}
    for r in sorted(runs, key=lambda r: r["seed"]):
        acc = r["final"]["accuracy"]
        cell = " / ".join("-" if acc.get(s) is None else f"{acc[s]:.3f}" for s in ("train", "test"))
        by_label.setdefault(r["label"], []).append(f"{r['seed']}: {cell}")
    return "Train / test accuracy per seed (seed: train / test): " + "; ".join(
        f"{label} ({', '.join(cells)})" for label, cells in by_label.items())


def composite_table(summary: dict) -> str:
    rows = [
        "| variant | seeds | held-out '43': compositional (key-10) | held-out '43': symmetric (key-6) "
        "| test_seen accuracy | train accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for label, v in summary.items():
        ex = v["extra"].get("test", {})
        rows.append(
            f"| {label} | {len(v['seeds'])} | {fmt(ex.get('match_compositional_answer', {}))} | "
            f"{fmt(ex.get('match_symmetric_answer', {}))} | {fmt(v['accuracy'].get('test_seen', {}))} | "
            f"{fmt(v['accuracy'].get('train', {}))} |"
        )
    return "\n".join(rows)


def _trained_on(results: dict, unfinished: Sequence[dict] = ()) -> str:
    """The devices and run times recorded in the runs' own metrics (they may predate this
    invocation); the devices of unfinished runs count too, their times (cut short) do not."""
    devices = sorted({str(r.get("device")) for res in results.values() for r in res.get("runs", [])}
                     | {r["device"] for r in unfinished if r.get("device")})
    times = [r.get("elapsed_s") for res in results.values() for r in res.get("runs", []) if r.get("elapsed_s")]
    span = f"; {len(times)} runs, {min(times):.0f}-{max(times):.0f} s each" if times else ""
    epochs = sorted({r["epochs"] for res in results.values() for r in res.get("runs", []) if r.get("epochs")})
    trained = f"; epochs: {', '.join(map(str, epochs))}" if epochs else ""
    return (", ".join(devices) or "unknown") + span + trained


def render(
    results: dict, mixers: Sequence[str], seeds: Sequence[int], preset: str, command: str, elapsed_s: float,
    settings: Sequence[str] = (), unfinished: Sequence[dict] = (),
    requested: Optional[set[tuple[str, str]]] = None,
) -> str:
    """The reproduction report (markdown) from the grid's results; ``settings`` lists the
    overrides of the preset the runs were trained with, ``unfinished`` the runs stopped before
    their last epoch or not started (:func:`unfinished_runs`), listed apart from the tables,
    ``requested`` the grid's cells (:func:`grid_cells`; claims outside them are not checked)."""
    checks = claim_checks(results, mixers, requested)
    lines = [
        '# Reproduction of arXiv 2509.17514 ("Achilles\' heel of Mamba")',
        "",
        "Generated by `achilles_interp.training.reproduce` from the runs it trained; every number "
        "below is computed, nothing is typed in by hand.",
        "",
        f"* Command: `{command}`",
        f"* Preset: `{preset}`; seeds: {list(seeds)}; mixers: {list(mixers)}"
        + (f"; overrides: {', '.join(settings)}" if settings else ""),
        f"* Runs trained on: {_trained_on(results, unfinished)}",
        f"* Report rendered on: {hardware()}",
        f"* Wall time of this invocation: {elapsed_s / 60:.1f} min (runs reused from an earlier "
        "invocation are not re-timed; each run's own time is in its metrics.json)",
        "",
        "Accuracy = fraction of held-out examples whose argmax over the whole vocabulary is the label; "
        "cells are mean ± population std over seeds (min–max).",
        "",
    ]
    for task, title in (
        ("inverse-matching", "Inverse sequence matching (chance 0.2)"),
        ("forward-matching", "Forward sequence matching (control; chance 0.2)"),
    ):
        if task in results:
            s = results[task]["summary"]
            splits = results[task]["runs"][0]["final"]["accuracy"].keys()
            lines += [f"## {title}", "", markdown_table(s, list(splits)), "", per_seed_line(results[task]["runs"]), ""]
            if task == "inverse-matching":
                rates = [
                    f"{lab}: {fmt(v['extra'].get('test', {}).get('distractor_rate', {}))}"
                    for lab, v in s.items()
                ]
                lines += [
                    "Rate at which the prediction is the *forward*-matching key (the distractor) on "
                    "the test split, where one exists: " + "; ".join(rates),
                    "",
                ]
    if "composite" in results:
        lines += [
            "## Composite function task: held-out pair '43'",
            "",
            "Fraction of test examples (all pair '43') answered with the compositional solution "
            "and with the symmetric solution (the two sum to at most 1).",
            "",
            composite_table(results["composite"]["summary"]),
            "",
        ]
    if unfinished:
        lines += [
            "## Unfinished runs (not in the tables)",
            "",
            "Runs of the grid that did not finish: stopped by a time limit before their last epoch "
            "(shown with their last evaluation), or not started. "
            + ("The cells above average over the seeds that finished (their 'seeds' column). "
               if results else "No run of this grid finished, so there are no tables of final accuracies. ")
            + "An invocation that trains resumes each "
            "stopped run from the checkpoint in its run directory, or retrains it where only its "
            "metrics.json was kept.",
            "",
            unfinished_table(unfinished),
            "",
        ]
    lines += [
        "## Claim checks",
        "",
        f"Thresholds: 'solves' = mean test accuracy >= {SOLVES}; 'fails' = <= {NEAR_CHANCE} "
        f"(chance {CHANCE}); 'fixes' = solves and >= standard + {FIX_MARGIN}. A verdict is "
        f"'inconclusive' when the model did not learn the easy part (its forward-control accuracy, "
        f"or its compositional + symmetric answer rate) to at least {LEARNED}.",
        "",
        "| claim (paper) | check | measured | verdict |",
        "|---|---|---|---|",
    ]
    lines += [f"| {c['claim']} | {c['check']} | {c['values']} | {c['verdict']} |" for c in checks]
    if not checks:
        lines += ["", "No claim can be checked on this grid: each needs a variant or task it does not train "
                  "(e.g. the forward control beside inverse matching)."]
    lines += ["", "## Where it disagrees with the paper", ""]
    bad = [c for c in checks if c["verdict"] == "disagrees"]
    unclear = [c for c in checks if c["verdict"].startswith("inconclusive")]
    missing = [c for c in checks if c["verdict"] == "not run"]
    if bad:
        lines += [f"* {c['claim']} Measured: {c['values']} (check: {c['check']})." for c in bad]
        if preset != "paper":
            lines += [
                "",
                f"These runs used the `{preset}` preset, not the paper's recipe (smaller models, "
                "far fewer epochs); a disagreement here may be under-training rather than a "
                "contradiction. Re-run with `--preset paper` on a GPU before drawing conclusions.",
            ]
    elif any(c["verdict"] == "agrees" for c in checks):
        lines += ["No check disagrees with the paper at these thresholds."]
    else:
        lines += ["No check could be decided (see the claim checks above)."]
    if unclear:
        lines += ["", "Inconclusive (a precondition of the check does not hold; the reason is given):"]
        lines += [f"* {c['claim']} Measured: {c['values']} ({c['verdict']})." for c in unclear]
    if missing:
        lines += ["", "Not run (a cell of the grid has no finished run):"]
        lines += [f"* {c['claim']}" for c in missing]
    lines += [""]
    return "\n".join(lines)


def grid_runs(tasks: Sequence[str], mixers: Sequence[str], seeds: Sequence[int],
              models: Optional[Sequence[str]] = None) -> list[tuple[str, str, Optional[str], int]]:
    """Every run of the grid as ``(task, model, mixer, seed)``, seed-major (seed 0 of every cell
    first, so an interrupted grid has whole seeds), Transformer variants once (mixer None)."""
    out = []
    for seed in seeds:
        for task in tasks:
            for model, mixer in grid(models_for(task, models), mixers):
                out.append((task, model, mixer, seed))
    return out


def grid_cells(tasks: Sequence[str], mixers: Sequence[str],
               models: Optional[Sequence[str]] = None) -> set[tuple[str, str]]:
    """The grid's ``(task, variant label)`` cells, e.g. ``("inverse-matching", "mamba-mamba1")``."""
    return {(task, variant_label(model, mixer)) for task, model, mixer, _ in grid_runs(tasks, mixers, [0], models)}


def models_for(task: str, models: Optional[Sequence[str]] = None) -> list[str]:
    """The grid's variants for ``task``, restricted to ``models`` when given."""
    default = COMPOSITE_MODELS if task.startswith("composite") else MATCHING_MODELS
    return [m for m in default if models is None or m in models]


def _train_in_parallel(args, preset: str, device: str) -> None:
    """Run one child process per run of the grid, at most ``args.jobs`` at a time, all writing
    into the shared runs dir (their run directories are disjoint), with a shared deadline. A run
    stopped by the deadline keeps its last checkpoint (every ``eval_every`` epochs) and the next
    invocation resumes it."""
    import subprocess

    forwarded = []
    for flag in ("epochs", "n_train", "n_eval", "d_model", "n_layers", "threads", "init_gamma", "init_fan", "filler"):
        value = getattr(args, flag)
        if value is not None:
            forwarded += [f"--{flag.replace('_', '-')}", str(value)]
    pending = [
        (task, model, mixer, seed)
        for task, model, mixer, seed in grid_runs(args.tasks, args.mixers, args.seeds, args.models)
        if finished_run(Path(args.runs_dir) / task, model, mixer, seed) is None
    ]  # finished runs are reused, not given a process
    running: list = []
    deadline = None if args.time_limit is None else time.time() + args.time_limit
    while pending or running:
        while pending and len(running) < args.jobs:
            task, model, mixer, seed = pending.pop(0)
            cmd = [sys.executable, "-m", "achilles_interp.training.reproduce", "--tasks", task, "--seeds", str(seed),
                   "--mixers", mixer or args.mixers[0], "--models", model, "--preset", preset, "--device", device,
                   "--runs-dir", args.runs_dir, "--no-report", "--no-progress", *forwarded]
            running.append(subprocess.Popen(cmd))
        running = [p for p in running if p.poll() is None]
        if deadline is not None and time.time() > deadline:
            for p in running:
                p.terminate()
            print(f"time limit reached: {len(running)} run(s) stopped, {len(pending)} not started", file=sys.stderr)
            return
        time.sleep(2)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m achilles_interp.training.reproduce",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--out", default="docs/reproduction.md", help="markdown report to write")
    ap.add_argument(
        "--runs-dir", default="runs/reproduction", help="where the runs are kept (reused if present)"
    )
    ap.add_argument(
        "--preset", default="auto", choices=["auto", *PRESETS],
        help="paper | quick | ship | auto (paper on a GPU, else quick)",
    )
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--mixers", nargs="+", default=["mamba2", "mamba1"], choices=["mamba1", "mamba2"])
    ap.add_argument(
        "--tasks",
        nargs="+",
        default=["inverse-matching", "forward-matching", "composite"],
        choices=["inverse-matching", "forward-matching", "composite"],
    )
    ap.add_argument("--device", default=None, choices=["cpu", "cuda"])
    ap.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    ap.add_argument("--n-train", type=int, default=None, help="override the preset's training-set size")
    ap.add_argument("--n-eval", type=int, default=None, help="override the preset's evaluation-set size")
    ap.add_argument("--d-model", type=int, default=None, help="override the preset's model width")
    ap.add_argument("--n-layers", type=int, default=None,
                    help="override the preset's depth (every model; the matching tasks' filler run is "
                         "3 x n_layers tokens, so it changes the sequences too)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--models", nargs="+", default=None, choices=sorted(set(MATCHING_MODELS + COMPOSITE_MODELS)),
                    help="restrict the grid to these variants (default: all of each task's)")
    ap.add_argument("--init-gamma", type=float, default=None,
                    help="override the preset's init_gamma (weights ~ N(0, fan_in^(-2 gamma))) in every model")
    ap.add_argument("--init-fan", default=None, choices=list(FANS),
                    help="which fan d1 the initialisation N(0, d1^(-2 gamma)) uses in every model: in (the "
                         "paper's, default) or out (as a public reproduction attempt did)")
    ap.add_argument("--filler", default=None, choices=list(FILLERS),
                    help="inverse/forward matching fillers: reserved ids (special, the default) or numbers "
                         "outside the row's three")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--jobs", type=int, default=1,
                    help="train the grid's runs in this many parallel processes (one GPU hosts several of "
                         "these small models), then tabulate. Measured on an H100 at the paper preset (CUDA "
                         "graphs on): 8 runs at once held 30 GB in all (Mamba-2 chunk 32; at chunk 256 each "
                         "held 4.6-6.9 GB and 14 did not fit in 80 GB). One run keeps the GPU busy, so more "
                         "jobs mostly overlap the 1-3 minutes each process spends compiling Triton kernels")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="stop the runs still training after this many seconds (each keeps its last "
                         "checkpoint, and the next invocation resumes it) and tabulate the runs that "
                         "finished; the others are listed as unfinished")
    ap.add_argument("--render-only", action="store_true",
                    help="train nothing: tabulate the finished runs under --runs-dir")
    ap.add_argument("--no-report", action="store_true", help="train only; write no markdown report")
    args = ap.parse_args(argv)
    # Every check before anything is trained or written (a bad value would otherwise surface as a
    # traceback from the trainer, or, under --jobs/--time-limit, as failed child processes and an
    # empty report).
    try:
        overrides = positive_settings({k: getattr(args, k) for k in ("d_model", "n_layers", "init_gamma")})
        positive_settings({k: getattr(args, k) for k in ("epochs", "n_train", "n_eval", "threads")})
    except ValueError as e:
        ap.error(str(e))
    if args.init_fan is not None:
        overrides["init_fan"] = args.init_fan
    try:
        check_seeds(args.seeds, "--seeds")
    except ValueError as e:
        ap.error(str(e))
    if args.jobs < 1:
        ap.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.time_limit is not None and args.time_limit <= 0:
        ap.error(f"--time-limit must be a positive number of seconds, got {args.time_limit}")

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    preset = get_preset(args.preset, device).name
    command = "python -m achilles_interp.training.reproduce " + " ".join(
        sys.argv[1:] if argv is None else list(argv)
    )
    t0 = time.time()
    runs = Path(args.runs_dir)
    finished_only = args.render_only
    # A time limit needs runs in child processes that can be stopped (they keep their last
    # checkpoint), so it uses the parallel driver even at --jobs 1.
    if (args.jobs > 1 or args.time_limit is not None) and not args.render_only:
        _train_in_parallel(args, preset, device)
        finished_only = True
    results = {}
    for task in args.tasks:
        models = models_for(task, args.models)
        if not models:
            continue
        task_arg = task
        if args.filler is not None and task in ("inverse-matching", "forward-matching"):
            n_layers = overrides.get("n_layers", get_preset(preset, device).model.get("n_layers", 2))
            task_arg = InverseMatchingTask(n_layers=n_layers, reverse=task == "inverse-matching", filler=args.filler)
        try:
            results[task] = compare(
                task_arg, models, args.mixers, args.seeds, preset, runs / task, device=device,
                progress=False, command=command, finished_only=True,
            ) if finished_only else None
        except ValueError as e:  # nothing finished for this task
            print(f"{task}: {e}", file=sys.stderr)
            continue
        if finished_only:
            continue
        results[task] = compare(
            task_arg,
            models,
            args.mixers,
            args.seeds,
            preset,
            runs / task,
            device=device,
            epochs=args.epochs,
            n_train=args.n_train,
            n_eval=args.n_eval,
            model_overrides=overrides or None,
            progress=not args.no_progress,
            command=command,
            threads=args.threads,
        )
    if args.no_report:
        return 0
    settings = [f"{k} = {v}" for k, v in overrides.items()]
    if args.filler is not None:
        settings.append(f"matching-task fillers = {args.filler}")
    unfinished = unfinished_runs(runs, args.tasks, args.mixers, args.seeds, args.models)
    text = render(results, args.mixers, args.seeds, preset, command, time.time() - t0, settings, unfinished,
                  grid_cells(args.tasks, args.mixers, args.models))
    write_text(args.out, text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
