"""``achilles-interp patch``: activation + attribution patching, fusion asymmetry and the
conv-vs-SSM-vs-gate verdict, with heatmaps, CSV/JSON of every number and a markdown report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

# the shipped models, in order; each role accepts any of these checkpoint folder names
DEFAULT_MODELS = (
    ("mamba", "mamba2-inverse"),
    ("mamba-bypass-pe", "mamba2-bypass-pe-inverse"),
    ("transformer", "transformer-inverse"),
)


def register(sub, help_text: str) -> None:
    from achilles_interp.analyses.components import DEFAULT_COMPONENTS, all_component_names

    p = sub.add_parser(
        "patch",
        help=help_text,
        description=(
            "Run denoising activation patching and attribution patching over (component x layer x "
            "position) on clean/corrupted pairs of a task, the token-fusion asymmetry, and the verdict "
            "(share of the effect carried by the conv path, the SSM scan and the gate) for every Mamba "
            "model. Writes heatmaps (PNG+SVG), a fusion figure, CSV/JSON of every number and a markdown "
            "report; prints the verdict. With no --checkpoint, runs on the shipped default models "
            f"({', '.join(' or '.join(role) for role in DEFAULT_MODELS)})."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        action="append",
        metavar="DIR",
        default=None,
        help="checkpoint directory (repeat for several models); default: the shipped models",
    )
    p.add_argument(
        "--task",
        default="inverse-matching",
        help="task name from achilles_interp.tasks (needs clean/corrupted pairs with one answer)",
    )
    p.add_argument(
        "--components",
        nargs="+",
        default=list(DEFAULT_COMPONENTS),
        metavar="NAME",
        help=f"components to patch; allowed: {', '.join(all_component_names())}",
    )
    p.add_argument("--n", type=int, default=32, help="number of clean/corrupted pairs")
    p.add_argument("--seed", type=int, default=0, help="seed of the task generator (split 'test')")
    p.add_argument(
        "--metric",
        default="logit_diff",
        choices=["logit_diff", "prob"],
        help="patching metric at the answer position",
    )
    p.add_argument(
        "--fusion-examples",
        type=int,
        default=2,
        help="examples for the Jacobian fusion matrices (0 skips the fusion analysis)",
    )
    p.add_argument(
        "--fusion-probes",
        type=int,
        default=4,
        help="Gaussian probes per position for the Jacobian norms (Hutchinson estimate)",
    )
    p.add_argument(
        "--out", default="patch_results", help="output folder; 'X_assets' also writes X.md beside it"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (the default models are tiny: 1 thread avoids contention)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bars")
    p.set_defaults(func=run)


def _load_models(checkpoints):
    from achilles_interp import zoo

    from ..cli import CLIError

    models, sources = {}, {}
    if checkpoints:
        for path in checkpoints:
            p = Path(path)
            if not p.is_dir():
                raise CLIError(f"--checkpoint {path}: not a directory")
            name = p.name
            k = 2
            while name in models:
                name, k = f"{p.name}-{k}", k + 1
            models[name] = zoo.load_model(p, backend="torch").eval()
            sources[name] = str(p)
        return models, sources
    available = zoo.list_checkpoints()
    names = [
        next(n for n in role if n in available)
        for role in DEFAULT_MODELS
        if any(n in available for n in role)
    ]
    if not names:
        names = available  # a different set of shipped checkpoints: use them all
    if not names:
        raise CLIError("no shipped checkpoints found (achilles_interp/checkpoints); pass --checkpoint DIR")
    for name in names:
        models[name] = zoo.load_default(name, backend="torch").eval()
        sources[name] = f"shipped checkpoint {name}"
    return models, sources


def run(args: argparse.Namespace) -> int:
    import torch

    from achilles_interp.analyses.components import check_components
    from achilles_interp.analyses.report import markdown_path, run_report
    from achilles_interp.tasks import get_task

    from ..cli import CLIError
    from ..training.validation import check_seeds

    t0 = time.time()
    if args.n < 2:
        raise CLIError(f"--n must be >= 2, got {args.n}")
    check_seeds(args.seed, "--seed")
    if args.fusion_examples < 0 or args.fusion_probes < 1:
        raise CLIError("--fusion-examples must be >= 0 and --fusion-probes >= 1")
    components = check_components(args.components)
    if args.threads < 1:
        raise CLIError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(True)
    models, sources = _load_models(args.checkpoint)
    n_layers = next(iter(models.values())).cfg.n_layers
    try:
        task = get_task(args.task, n_layers=n_layers)
    except TypeError:
        task = get_task(args.task)
    except (KeyError, ValueError) as e:
        raise CLIError(str(e)) from None
    summary = run_report(
        models,
        task,
        args.out,
        n=args.n,
        seed=args.seed,
        components=components,
        metric=args.metric,
        fusion_examples=args.fusion_examples,
        fusion_probes=args.fusion_probes,
        progress=not args.no_progress,
        sources=sources,
    )
    for name, m in summary["models"].items():
        print(
            f"{name}: clean {m['clean_baseline']:.3f}, corrupted {m['corrupted_baseline']:.3f}, "
            f"Spearman(activation, attribution) {m['agreement_spearman']['all']:.3f}"
        )
        if "verdict" in m:
            print(f"  verdict: {m['verdict']['sentence']}")
    print(f"wrote {args.out}/ and {markdown_path(Path(args.out))} in {time.time() - t0:.1f}s")
    return 0
