"""``achilles-interp compare``: train variants x mixers x seeds on one task and tabulate accuracy."""

from __future__ import annotations

import argparse

DEFAULT_MODELS = ["transformer", "mamba", "mamba-noconv", "mamba-bypass-pe"]


def register(sub, help_text: str) -> None:
    from ..catalog import VARIANTS
    from .train import add_common_args

    p = sub.add_parser(
        "compare",
        help=help_text,
        description=(
            "Train every variant (x mixer) x seed on a task; write results.json, results.md (mean ± std "
            "of each split's accuracy per variant) and accuracy.png into --out. Finished runs found in "
            "--out are reused, unfinished ones resumed."
        ),
    )
    add_common_args(p)
    p.add_argument(
        "--models",
        nargs="+",
        default=DEFAULT_MODELS,
        choices=list(VARIANTS),
        help=f"variants (default: {' '.join(DEFAULT_MODELS)})",
    )
    p.add_argument(
        "--mixers",
        nargs="+",
        default=["mamba2"],
        choices=["mamba1", "mamba2"],
        help="mixers of the Mamba variants (default: mamba2)",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default: 0 1 2)")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training.compare import compare
    from ..training.validation import check_seeds
    from .train import check_device, check_task, command_line, model_overrides

    check_task(args.task)
    check_device(args.device)
    check_seeds(args.seeds, "--seeds")
    from ..outputs import check_output

    check_output(args.out, "--out", "dir")
    command = command_line(args, "compare")
    doc = compare(
        args.task,
        args.models,
        args.mixers,
        args.seeds,
        args.preset,
        args.out,
        device=args.device,
        epochs=args.epochs,
        n_train=args.n_train,
        batch_size=args.batch_size,
        model_overrides=model_overrides(args),
        progress=not args.no_progress,
        command=command,
        threads=args.threads,
        cuda_graph=False if args.no_cuda_graph else None,
        task_format=args.task_format,
    )
    from ..training.compare import markdown_table

    print(markdown_table(doc["summary"], doc["runs"][0]["final"]["accuracy"].keys()))
    print(f"results in {args.out}/results.json, results.md, accuracy.png")
    return 0
