"""``achilles-interp train``: train one model variant on one synthetic task."""

from __future__ import annotations

import argparse
import sys


def add_common_args(p: argparse.ArgumentParser) -> None:
    """Options shared by ``train`` and ``compare``."""
    from ..config import FANS
    from ..training.presets import PRESETS

    from ..catalog import TASK_NAMES

    p.add_argument("--task", required=True, metavar="TASK",
                   help=f"task: {', '.join(TASK_NAMES)}")
    p.add_argument(
        "--preset",
        default="auto",
        choices=["auto", *PRESETS],
        help="training recipe: paper (GPU), quick (CPU: about 1 min for a Mamba-2 on 2 cores), ship; auto = paper "
        "on a GPU, else quick",
    )
    p.add_argument(
        "--task-format",
        default=None,
        choices=["paper", "special-tokens"],
        help="token format of the matching and composite tasks: paper (default; every token a number) or "
        "special-tokens (reserved separator/filler ids, our earlier reading)",
    )
    p.add_argument("--epochs", type=int, default=None, help="override the preset's number of epochs")
    p.add_argument("--n-train", type=int, default=None, help="override the training-set size (examples)")
    p.add_argument("--batch-size", type=int, default=None, help="override the batch size")
    p.add_argument("--n-layers", type=int, default=None, help="override the number of layers")
    p.add_argument("--d-model", type=int, default=None, help="override the residual width")
    p.add_argument(
        "--init-gamma",
        type=float,
        default=None,
        help="override the initialisation exponent gamma (weights ~ N(0, fan_in^(-2 gamma)))",
    )
    p.add_argument(
        "--init-fan",
        default=None,
        choices=list(FANS),
        help="which fan d1 the initialisation N(0, d1^(-2 gamma)) uses: in (the paper's, default) or out "
        "(as a public reproduction attempt did)",
    )
    p.add_argument(
        "--pos-embed",
        default=None,
        choices=["sinusoidal", "learned"],
        help="positional encoding of the *-pe Mamba variants (default: the preset's)",
    )
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice; 1 is fastest on a busy machine)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--no-cuda-graph",
        action="store_true",
        help="on a GPU, launch every training step eagerly instead of replaying it as a CUDA graph",
    )


def model_overrides(args: argparse.Namespace) -> dict:
    """The model overrides given on the command line, after checking that they and the other
    numeric settings of :func:`add_common_args` are positive (rules in
    :mod:`achilles_interp.training.validation`); a bad one raises that module's ``ValueError``,
    which :func:`achilles_interp.cli.main` prints as a one-line usage error like a ``CLIError``."""
    from ..training.validation import positive_settings

    out = positive_settings({k: getattr(args, k) for k in ("n_layers", "d_model", "init_gamma")})
    positive_settings({k: getattr(args, k) for k in ("epochs", "n_train", "batch_size", "threads")})
    for name in ("init_fan", "pos_embed"):
        if getattr(args, name) is not None:
            out[name] = getattr(args, name)
    return out


def command_line(args: argparse.Namespace, name: str) -> str:
    """The command as typed when run from a shell (``sys.argv``), else rebuilt from ``args``."""
    if len(sys.argv) > 1 and sys.argv[1] == name:
        return "achilles-interp " + " ".join(sys.argv[1:])
    parts = ["achilles-interp", name]
    for key, value in vars(args).items():
        if key in ("func", "command") or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, (list, tuple)):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return " ".join(parts)


def check_task(name: str) -> None:
    from ..cli import CLIError
    from ..tasks import list_tasks

    if name not in list_tasks():
        raise CLIError(f"unknown task {name!r}; allowed: {', '.join(list_tasks())}")


def check_device(device) -> None:
    import torch

    from ..cli import CLIError

    if device == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda requested but no CUDA GPU is visible; use --device cpu")


def register(sub, help_text: str) -> None:
    from ..catalog import VARIANTS

    p = sub.add_parser(
        "train",
        help=help_text,
        description=(
            "Train a Mamba variant or the Transformer baseline on a synthetic task. Writes config.json, "
            "model.safetensors, train_state.pt and metrics.json into --out."
        ),
    )
    add_common_args(p)
    p.add_argument("--model", required=True, choices=list(VARIANTS), help="model variant")
    p.add_argument(
        "--mixer", default="mamba2", choices=["mamba1", "mamba2"], help="Mamba mixer (default mamba2)"
    )
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of data, initialisation and shuffling (default 0)"
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its train_state.pt")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training import train
    from ..training.validation import check_seeds

    check_task(args.task)
    check_device(args.device)
    check_seeds(args.seed, "--seed")
    overrides = model_overrides(args)
    metrics = train(
        args.task,
        args.model,
        args.out,
        preset=args.preset,
        seed=args.seed,
        device=args.device,
        epochs=args.epochs,
        mixer=args.mixer,
        resume=args.resume,
        n_train=args.n_train,
        batch_size=args.batch_size,
        model_overrides=overrides,
        progress=not args.no_progress,
        threads=args.threads,
        cuda_graph=False if args.no_cuda_graph else None,
        command=command_line(args, "train"),
        task_format=args.task_format,
    )
    final = metrics["final"]
    acc = ", ".join(f"{s} {a:.3f}" for s, a in final["accuracy"].items())
    print(
        f"{args.model} ({metrics['run']['mixer'] or 'attention'}) on {args.task}, seed {args.seed}: "
        f"accuracy {acc}; "
        f"{metrics['provenance']['elapsed_s']:.0f} s; run in {args.out}"
    )
    return 0
