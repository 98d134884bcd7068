"""The paper's reproduction grid as data, and a runner that trains it in parallel processes.

    from achilles_interp.training.paper_grid import paper_cells, grid_specs, run_grid
    specs = grid_specs(paper_cells(["mamba2"]), seeds=[0, 1, 2], preset="paper")
    run_grid(specs, "runs/paper", jobs=8, device="cuda")

    python -m achilles_interp.training.paper_grid --runs-dir runs/paper --mixers mamba2 --jobs 8

A :class:`Cell` is one configuration of the grid (task, variant, mixer, and the depth / init
scale / token format where the cell fixes them); a :class:`RunSpec` is a cell trained with one
seed under one preset. Everything a run's result depends on is in its spec, so the runner passes
the spec itself (as JSON) to each child process: there is no list of options to forward by hand.

Cells (:func:`paper_cells`, arXiv 2509.17514, appendix "Experiment detail and result"):

* inverse matching and its forward-matching control: every variant of :data:`MATCHING_VARIANTS`
  (Transformer, standard Mamba, no conv, bypass, +PE, bypass + PE = the paper's fix, all-ones
  kernel), at the preset's size (2 layers, d_model 128, one head, init_gamma 0.5);
* composite: standard and all-ones kernel at 5 layers, init_gamma 1 (the paper's all-ones
  comparison); standard and +PE at 2 layers, init_gamma 0.5 (the paper's PE comparison);
* composite-symmetric (full symmetry): standard Mamba at 2 layers, init_gamma 0.5, d_model 128
  (the smallest depth of the paper's sweep) and, beyond the paper, the all-ones kernel in the
  same cell (if the conv's asymmetry is what blocks the symmetric solution, it should help).

Each run lives in ``runs_dir/<task>/<cell label>/seed<k>/`` (:meth:`RunSpec.run_dir`); a finished
run (``metrics.json`` with ``"complete": true``) is reused, a stopped one resumed from its
``train_state.pt``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .compare import variant_label
from .trainer import METRICS_FILE, STATE_FILE, train

MATCHING_TASKS = ("inverse-matching", "forward-matching")
MATCHING_VARIANTS = ("transformer", "mamba", "mamba-noconv", "mamba-bypass", "mamba-pe", "mamba-bypass-pe",
                     "mamba-ones")
GRID_TASKS = MATCHING_TASKS + ("composite", "composite-symmetric")


@dataclass(frozen=True)
class Cell:
    """One configuration of the grid.

    Attributes:
        task: task name.
        model: variant name (:data:`achilles_interp.zoo.VARIANTS`).
        mixer: ``"mamba1"`` / ``"mamba2"``; None for the Transformer variants.
        n_layers, init_gamma: the cell's depth and init exponent (None: the preset's for the task).
        task_format: the task's token format (None: the task's default, ``"paper"``).
    """

    task: str
    model: str
    mixer: Optional[str]
    n_layers: Optional[int] = None
    init_gamma: Optional[float] = None
    task_format: Optional[str] = None

    @property
    def label(self) -> str:
        """Directory name: ``mamba-mamba2``, ``mamba-ones-mamba2-L5-g1``, ``transformer-special-tokens``."""
        parts = [variant_label(self.model, self.mixer)]
        if self.n_layers is not None:
            parts.append(f"L{self.n_layers}")
        if self.init_gamma is not None:
            parts.append(f"g{self.init_gamma:g}")
        if self.task_format is not None:
            parts.append(self.task_format)
        return "-".join(parts)

    def model_overrides(self) -> dict:
        return {k: v for k, v in (("n_layers", self.n_layers), ("init_gamma", self.init_gamma)) if v is not None}


@dataclass(frozen=True)
class RunSpec:
    """A cell trained with one seed under one preset (``epochs`` None: the preset's)."""

    cell: Cell
    seed: int
    preset: str
    epochs: Optional[int] = None

    def run_dir(self, runs_dir) -> Path:
        return Path(runs_dir) / self.cell.task / self.cell.label / f"seed{self.seed}"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RunSpec":
        d = json.loads(text)
        return cls(cell=Cell(**d.pop("cell")), **d)

    def metrics(self, runs_dir) -> Optional[dict]:
        """The run's ``metrics.json`` (finished or not), or None."""
        f = self.run_dir(runs_dir) / METRICS_FILE
        return json.loads(f.read_text()) if f.is_file() else None

    def finished(self, runs_dir) -> bool:
        doc = self.metrics(runs_dir)
        return bool(doc and doc.get("complete"))

    def train(self, runs_dir, device: Optional[str] = None, progress: bool = False,
              command: Optional[str] = None, threads: Optional[int] = None) -> dict:
        """Train (or resume, or reuse when finished) this run; returns its ``metrics.json``."""
        doc = self.metrics(runs_dir)
        if doc is not None and doc.get("complete"):
            return doc
        out = self.run_dir(runs_dir)
        return train(
            self.cell.task, self.cell.model, out, preset=self.preset, seed=self.seed, device=device,
            epochs=self.epochs, mixer=self.cell.mixer or "mamba2", resume=(out / STATE_FILE).is_file(),
            model_overrides=self.cell.model_overrides() or None, progress=progress, command=command,
            threads=threads, task_format=self.cell.task_format,
        )


def paper_cells(mixers: Sequence[str] = ("mamba2",), tasks: Sequence[str] = GRID_TASKS,
                task_format: Optional[str] = None) -> list[Cell]:
    """The grid's cells for ``mixers`` and ``tasks`` (see the module docstring); ``task_format``
    builds the same cells on another token format (e.g. ``"special-tokens"`` for the ablation)."""
    cells = []
    for task in tasks:
        if task in MATCHING_TASKS:
            for model in MATCHING_VARIANTS:
                for mixer in ([None] if model.startswith("transformer") else mixers):
                    cells.append(Cell(task, model, mixer, task_format=task_format))
        elif task == "composite":
            for mixer in mixers:
                cells += [Cell(task, "mamba", mixer, 5, 1.0, task_format),
                          Cell(task, "mamba-ones", mixer, 5, 1.0, task_format),
                          Cell(task, "mamba", mixer, 2, 0.5, task_format),
                          Cell(task, "mamba-pe", mixer, 2, 0.5, task_format)]
        elif task == "composite-symmetric":
            for mixer in mixers:
                cells += [Cell(task, "mamba", mixer, 2, 0.5, task_format),
                          Cell(task, "mamba-ones", mixer, 2, 0.5, task_format)]
        else:
            raise ValueError(f"no grid cells for task {task!r}; allowed: {', '.join(GRID_TASKS)}")
    return cells


def grid_specs(cells: Sequence[Cell], seeds: Sequence[int], preset: str,
               epochs: Optional[int] = None) -> list[RunSpec]:
    """Every run of the grid, seed-major (seed 0 of every cell first, so an interrupted grid has
    whole seeds)."""
    return [RunSpec(cell, seed, preset, epochs) for seed in seeds for cell in cells]


def _child_command(spec: RunSpec, runs_dir, device: Optional[str], threads: Optional[int]) -> list[str]:
    cmd = [sys.executable, "-m", "achilles_interp.training.paper_grid", "--run-one", spec.to_json(),
           "--runs-dir", str(runs_dir)]
    if device:
        cmd += ["--device", device]
    if threads:
        cmd += ["--threads", str(threads)]
    return cmd


def run_grid(specs: Sequence[RunSpec], runs_dir, jobs: int = 1, device: Optional[str] = None,
             time_limit: Optional[float] = None, threads: Optional[int] = 1, log=sys.stderr,
             gpus: Optional[Sequence[int]] = None) -> dict:
    """Train every unfinished run of ``specs``, ``jobs`` child processes at a time, each writing
    its own run directory (and its output to ``train.log`` there). Runs still training after
    ``time_limit`` seconds are stopped; each keeps its last checkpoint (every ``eval_every``
    epochs) for the next invocation to resume. ``gpus``: GPU indices to spread the children
    over (each child sees one, through ``CUDA_VISIBLE_DEVICES``; the least busy is taken).

    Returns ``{"finished": [...], "failed": [...], "stopped": [...], "not_started": [...]}``
    (lists of run directories as strings).
    """
    pending = [s for s in specs if not s.finished(runs_dir)]
    status = {"finished": [], "failed": [], "stopped": [], "not_started": []}
    running: list[tuple[RunSpec, subprocess.Popen, Optional[int]]] = []
    deadline = None if time_limit is None else time.time() + time_limit
    env = {**os.environ, "OMP_NUM_THREADS": str(threads or 1), "PYTHONUNBUFFERED": "1"}
    t0 = time.time()
    while pending or running:
        while pending and len(running) < jobs:
            spec = pending.pop(0)
            d = spec.run_dir(runs_dir)
            d.mkdir(parents=True, exist_ok=True)
            gpu = None
            child_env = env
            if gpus:
                gpu = min(gpus, key=lambda g: sum(r[2] == g for r in running))
                child_env = {**env, "CUDA_VISIBLE_DEVICES": str(gpu)}
            logf = open(d / "train.log", "ab")
            running.append((spec, subprocess.Popen(_child_command(spec, runs_dir, device, threads),
                                                   stdout=logf, stderr=subprocess.STDOUT, env=child_env), gpu))
            logf.close()
        still = []
        for spec, proc, gpu in running:
            rc = proc.poll()
            if rc is None:
                still.append((spec, proc, gpu))
                continue
            d = str(spec.run_dir(runs_dir))
            if rc == 0 and spec.finished(runs_dir):
                acc = spec.metrics(runs_dir)["final"]["accuracy"]
                status["finished"].append(d)
                print(f"[{time.time() - t0:6.0f} s] done {d}: "
                      + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()), file=log, flush=True)
            else:
                status["failed"].append(d)
                print(f"[{time.time() - t0:6.0f} s] FAILED (exit {rc}) {d}; see {d}/train.log", file=log, flush=True)
        running = still
        if deadline is not None and time.time() > deadline:
            for spec, proc, _ in running:
                proc.terminate()
            for spec, proc, _ in running:
                proc.wait()
                status["stopped"].append(str(spec.run_dir(runs_dir)))
            status["not_started"] = [str(s.run_dir(runs_dir)) for s in pending]
            print(f"time limit: {len(running)} run(s) stopped, {len(pending)} not started", file=log, flush=True)
            return status
        time.sleep(1.0)
    return status


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m achilles_interp.training.paper_grid", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", default="runs/paper")
    ap.add_argument("--mixers", nargs="+", default=["mamba2"], choices=["mamba1", "mamba2"])
    ap.add_argument("--tasks", nargs="+", default=list(GRID_TASKS), choices=list(GRID_TASKS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--task-format", default=None, choices=["paper", "special-tokens"])
    ap.add_argument("--models", nargs="+", default=None, help="restrict the grid to these variants")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--device", default=None, choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--time-limit", type=float, default=None)
    ap.add_argument("--gpus", nargs="+", type=int, default=None, help="GPU indices to spread the runs over")
    ap.add_argument("--run-one", default=None, help=argparse.SUPPRESS)  # a child: one RunSpec as JSON
    args = ap.parse_args(argv)
    if args.run_one is not None:
        spec = RunSpec.from_json(args.run_one)
        spec.train(args.runs_dir, device=args.device, threads=args.threads,
                   command=f"paper_grid --run-one {args.run_one}")
        return 0
    cells = [c for c in paper_cells(args.mixers, args.tasks, args.task_format)
             if args.models is None or c.model in args.models]
    specs = grid_specs(cells, args.seeds, args.preset, args.epochs)
    status = run_grid(specs, args.runs_dir, args.jobs, args.device, args.time_limit, args.threads,
                      gpus=args.gpus)
    print(json.dumps({k: len(v) for k, v in status.items()}))
    return 1 if status["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
