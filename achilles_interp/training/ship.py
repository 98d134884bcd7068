"""Train the checkpoints shipped in ``achilles_interp/checkpoints/``.

    python -m achilles_interp.training.ship [--threads 1]

Three inverse-sequence-matching models, trained with the ``"ship"`` preset, seed 0, on the CPU
(measured on a 2-core machine with 1 torch thread per run: about 8 minutes per Mamba-2 model,
2.5 minutes for the Transformer; Mamba-2 mixer because the Mamba-1 PyTorch reference scan is
far slower on a CPU):

* ``mamba2-inverse``: standard Mamba-2 (the model the paper reports failing);
* ``mamba2-bypass-pe-inverse``: Mamba-2 with conv bypass + learned positional embedding (the fix);
* ``transformer-inverse``: the Transformer baseline.

``achilles_interp/checkpoints/README.md`` (rewritten after every run, ``--index-only`` to redo
it) tabulates their accuracies and sizes from the PROVENANCE files.

Each folder holds ``config.json`` + ``model.safetensors`` (load with
:func:`achilles_interp.zoo.load_default`) and ``PROVENANCE.json`` (command, seed, preset, git
commit, device, elapsed time, the training history and final per-split accuracies).
The full runs (with ``train_state.pt``) are kept under ``--runs-dir``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..outputs import atomic_write, write_json, write_text
from ..zoo import checkpoints_dir
from .trainer import train

# checkpoint name -> (task, variant, mixer)
SHIPPED = {
    "mamba2-inverse": ("inverse-matching", "mamba", "mamba2"),
    "mamba2-bypass-pe-inverse": ("inverse-matching", "mamba-bypass-pe", "mamba2"),
    "transformer-inverse": ("inverse-matching", "transformer", "mamba2"),
}


def ship_one(
    name: str,
    runs_dir: Path,
    dest_root: Path,
    preset: str = "ship",
    seed: int = 0,
    epochs: Optional[int] = None,
    progress: bool = True,
    command: Optional[str] = None,
    threads: Optional[int] = None,
) -> dict:
    """Train checkpoint ``name`` (resuming its run if interrupted) and copy it into ``dest_root/name``."""
    task, variant, mixer = SHIPPED[name]
    run_dir = runs_dir / name
    resume = (run_dir / "train_state.pt").is_file()
    metrics = train(
        task,
        variant,
        run_dir,
        preset=preset,
        seed=seed,
        device="cpu",
        epochs=epochs,
        mixer=mixer,
        resume=resume,
        progress=progress,
        command=command,
        threads=threads,
    )
    dest = dest_root / name
    dest.mkdir(parents=True, exist_ok=True)
    for fname in ("config.json", "model.safetensors"):
        atomic_write(dest / fname, lambda f, src=run_dir / fname: shutil.copyfile(src, f))
    prov = {
        "name": name,
        "task": task,
        "variant": variant,
        "mixer": metrics["run"]["mixer"],
        "command": command,
        "seed": seed,
        "preset": metrics["run"]["preset"],
        "final_accuracy": metrics["final"]["accuracy"],
        "final_loss": metrics["final"]["loss"],
        "final_extra": metrics["final"]["extra"],
        "history": metrics["history"],
        "run": metrics["run"],
        "provenance": metrics["provenance"],
        "size_bytes": {f: (dest / f).stat().st_size for f in ("config.json", "model.safetensors")},
    }
    write_json(dest / "PROVENANCE.json", prov)
    for f in dest.iterdir():  # atomic_write's temporary files are 0600; package data must be readable
        f.chmod(0o644)
    return prov


def write_index(dest_root: Path) -> Path:
    """(Re)write ``dest_root/README.md``: one table row per shipped checkpoint, from its PROVENANCE.json."""
    import json

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
    ap = argparse.ArgumentParser(
        prog="python -m achilles_interp.training.ship",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--names", nargs="+", default=list(SHIPPED), choices=list(SHIPPED))
    ap.add_argument("--preset", default="ship")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--runs-dir", default="runs/ship")
    ap.add_argument("--dest", default=None, help="default: the package's checkpoints folder")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a busy machine)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--index-only", action="store_true", help="only rewrite the checkpoints' README.md")
    args = ap.parse_args(argv)
    command = "python -m achilles_interp.training.ship " + " ".join(
        sys.argv[1:] if argv is None else list(argv)
    )
    dest_root = Path(args.dest) if args.dest else checkpoints_dir()
    if not args.index_only:
        for name in args.names:
            prov = ship_one(
                name,
                Path(args.runs_dir),
                dest_root,
                args.preset,
                args.seed,
                args.epochs,
                not args.no_progress,
                command.strip(),
                args.threads,
            )
            acc = ", ".join(f"{s} {a:.3f}" for s, a in prov["final_accuracy"].items())
            size = sum(prov["size_bytes"].values()) / 1024
            print(f"{name}: {acc}; {size:.0f} KiB; {prov['provenance']['elapsed_s']:.0f} s", flush=True)
    if dest_root.is_dir():
        print(f"index: {write_index(dest_root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
