"""The paper's reproduction grid as data.

    from achilles_interp.training.paper_grid import paper_cells, grid_specs
    from achilles_interp.training.distributed import run_specs
    specs = grid_specs(paper_cells(["mamba2"]), seeds=[0, 1, 2], preset="paper")
    run_specs(specs, "runs/paper")                # trains them on Dask (every GPU of this machine)

    achilles-interp reproduce --runs-dir runs/paper --mixers mamba2   # the same, then the report

A :class:`Cell` is one configuration of the grid (task, variant, mixer, and the depth / init
scale / token format where the cell fixes them); a :class:`RunSpec` is a cell trained with one
seed under one preset. Everything a run's result depends on is in its spec, so a runner ships the
spec itself to a worker: there is no list of options to forward by hand.

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

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..catalog import FORMAT_TASKS, MATCHING_TASKS
from ..errors import UserError
from .layout import METRICS_FILE, STATE_FILE, variant_label

MATCHING_VARIANTS = ("transformer", "mamba", "mamba-noconv", "mamba-bypass", "mamba-pe", "mamba-bypass-pe",
                     "mamba-ones")
GRID_TASKS = FORMAT_TASKS  # the grid trains every task that has the paper's format


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
    """A cell trained with one seed under one preset: everything a run's result depends on.

    ``epochs``, ``n_train``, ``n_eval``, ``batch_size`` (None: the preset's) and ``model_overrides``
    (``(name, value)`` pairs applied over the cell's, e.g. ``(("d_model", 16),)`` for a small test
    grid) complete it; two specs that differ in any field are different runs.
    """

    cell: Cell
    seed: int
    preset: str
    epochs: Optional[int] = None
    n_train: Optional[int] = None
    n_eval: Optional[int] = None
    batch_size: Optional[int] = None
    model_overrides: tuple = ()

    def run_dir(self, runs_dir) -> Path:
        return Path(runs_dir) / self.cell.task / self.cell.label / f"seed{self.seed}"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RunSpec":
        d = json.loads(text)
        overrides = tuple(tuple(kv) for kv in d.pop("model_overrides", ()))
        return cls(cell=Cell(**d.pop("cell")), model_overrides=overrides, **d)

    def overrides(self) -> dict:
        """The model overrides of the run: the cell's, then the spec's own."""
        return {**self.cell.model_overrides(), **dict(self.model_overrides)}

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
        from .trainer import train

        out = self.run_dir(runs_dir)
        return train(
            self.cell.task, self.cell.model, out, preset=self.preset, seed=self.seed, device=device,
            epochs=self.epochs, mixer=self.cell.mixer or "mamba2", resume=(out / STATE_FILE).is_file(),
            n_train=self.n_train, n_eval=self.n_eval, batch_size=self.batch_size,
            model_overrides=self.overrides() or None, progress=progress, command=command,
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
            raise UserError(f"no grid cells for task {task!r}; allowed: {', '.join(GRID_TASKS)}")
    return cells


def grid_specs(cells: Sequence[Cell], seeds: Sequence[int], preset: str, epochs: Optional[int] = None,
               **settings) -> list[RunSpec]:
    """Every run of the grid, seed-major (seed 0 of every cell first, so an interrupted grid has
    whole seeds); ``settings``: the other :class:`RunSpec` fields, the same for every run."""
    return [RunSpec(cell, seed, preset, epochs, **settings) for seed in seeds for cell in cells]
