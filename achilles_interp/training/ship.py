"""Ship checkpoints in ``achilles_interp/checkpoints/`` from finished runs of the paper grid.

    python -m achilles_interp.training.ship --runs-dir runs/paper --seed 0

The default study of ``achilles-interp patch`` compares a model that fails inverse matching with
models that solve it, all at the paper's scale (``paper`` preset, 200 epochs, trained on a GPU by
``achilles-interp reproduce``; each is about 1.2 MB in fp32):

* ``mamba2-inverse``: standard Mamba-2 (fails: test accuracy at chance);
* ``mamba2-pe-inverse``: Mamba-2 with a learned positional embedding (PE alone; solves it);
* ``mamba2-bypass-pe-inverse``: conv bypass + PE, the paper's fix;
* ``transformer-inverse``: the paper's Transformer baseline.

A name whose run has not finished is skipped (and said so). Each folder holds ``config.json`` +
``model.safetensors`` (load with :func:`achilles_interp.zoo.load_default`) and ``PROVENANCE.json``
(the run's description, history, final per-split accuracies and provenance: command, git commit,
device, time). ``achilles_interp/checkpoints/README.md`` is rewritten from the PROVENANCE files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..outputs import atomic_write, write_json, write_text
from ..zoo import checkpoints_dir
from .paper_grid import Cell, RunSpec

# checkpoint name -> the grid cell it is taken from
SHIPPED = {
    "mamba2-inverse": Cell("inverse-matching", "mamba", "mamba2"),
    "mamba2-pe-inverse": Cell("inverse-matching", "mamba-pe", "mamba2"),
    "mamba2-bypass-pe-inverse": Cell("inverse-matching", "mamba-bypass-pe", "mamba2"),
    "transformer-inverse": Cell("inverse-matching", "transformer", None),
}


def ship_one(name: str, runs_dir: Path, dest_root: Path, seed: int = 0, preset: str = "paper",
             command: Optional[str] = None) -> Optional[dict]:
    """Copy the finished run of checkpoint ``name`` (seed ``seed``) into ``dest_root/name``; None
    when that run has not finished."""
    spec = RunSpec(SHIPPED[name], seed, preset)
    metrics = spec.metrics(runs_dir)
    run_dir = spec.run_dir(runs_dir)
    if not metrics or not metrics.get("complete") or not (run_dir / "model.safetensors").is_file():
        return None
    dest = dest_root / name
    dest.mkdir(parents=True, exist_ok=True)
    for fname in ("config.json", "model.safetensors"):
        atomic_write(dest / fname, lambda f, src=run_dir / fname: shutil.copyfile(src, f))
    run = metrics["run"]
    prov = {
        "name": name,
        "task": run["task"],
        "task_repr": run.get("task_repr"),
        "variant": run["model"],
        "mixer": run["mixer"],
        "command": command,
        "source_run": str(run_dir),
        "seed": seed,
        "preset": run["preset"],
        "final_accuracy": metrics["final"]["accuracy"],
        "final_loss": metrics["final"]["loss"],
        "final_extra": metrics["final"]["extra"],
        "history": metrics["history"],
        "run": run,
        "provenance": metrics["provenance"],
        "size_bytes": {f: (dest / f).stat().st_size for f in ("config.json", "model.safetensors")},
    }
    write_json(dest / "PROVENANCE.json", prov)
    for f in dest.iterdir():  # atomic_write's temporary files are 0600; package data must be readable
        f.chmod(0o644)
    return prov


def write_index(dest_root: Path) -> Path:
    """(Re)write ``dest_root/README.md``: one table row per shipped checkpoint, from its PROVENANCE.json."""
    rows = [
        "# Shipped checkpoints",
        "",
        "Written by `python -m achilles_interp.training.ship` from each folder's PROVENANCE.json; "
        "load with `achilles_interp.zoo.load_default(name)`. Accuracy = argmax over the whole "
        "vocabulary equals the label (chance 0.2 on inverse matching).",
        "",
        "| name | variant | mixer | preset | seed | train acc | test acc | OOD acc | size (KiB) "
        "| train time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    commands = []
    for d in sorted(p for p in dest_root.iterdir() if (p / "PROVENANCE.json").is_file()):
        prov = json.loads((d / "PROVENANCE.json").read_text())
        acc = prov["final_accuracy"]
        if prov["command"] not in commands:
            commands.append(prov["command"])
        size = sum(prov["size_bytes"].values()) / 1024
        rows.append(
            f"| {d.name} | {prov['variant']} | {prov['mixer'] or '-'} | {prov['preset']} | {prov['seed']} | "
            f"{acc.get('train', float('nan')):.3f} | {acc.get('test', float('nan')):.3f} | "
            f"{acc.get('ood', float('nan')):.3f} | {size:.0f} | {prov['provenance']['elapsed_s']:.0f} |"
        )
    rows += [
        "",
        "Commands: " + "; ".join(f"`{c}`" for c in commands) if commands else "No checkpoint yet.",
        "",
    ]
    target = write_text(dest_root / "README.md", "\n".join(rows))
    target.chmod(0o644)
    return target


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m achilles_interp.training.ship", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--names", nargs="+", default=list(SHIPPED), choices=list(SHIPPED))
    ap.add_argument("--runs-dir", default="runs/paper", help="the paper grid's runs (achilles-interp reproduce)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--dest", default=None, help="default: the package's checkpoints folder")
    ap.add_argument("--index-only", action="store_true", help="only rewrite the checkpoints' README.md")
    args = ap.parse_args(argv)
    command = "python -m achilles_interp.training.ship " + " ".join(sys.argv[1:] if argv is None else list(argv))
    dest_root = Path(args.dest) if args.dest else checkpoints_dir()
    if not args.index_only:
        for name in args.names:
            prov = ship_one(name, Path(args.runs_dir), dest_root, args.seed, args.preset, command.strip())
            if prov is None:
                print(f"{name}: no finished run of seed {args.seed} under {args.runs_dir}; skipped", flush=True)
                continue
            acc = ", ".join(f"{s} {a:.3f}" for s, a in prov["final_accuracy"].items())
            print(f"{name}: {acc}; {sum(prov['size_bytes'].values()) / 1024:.0f} KiB", flush=True)
    if dest_root.is_dir():
        print(f"index: {write_index(dest_root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
