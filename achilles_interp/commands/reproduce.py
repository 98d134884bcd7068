"""``achilles-interp reproduce``: train the paper's grid (or reuse its finished runs) and write the
reproduction report with its claim checks."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError


def register(sub, help_text: str) -> None:
    from ..training.paper_grid import GRID_TASKS
    from ..training.presets import PRESETS

    p = sub.add_parser(
        "reproduce",
        help=help_text,
        description=(
            "Train every cell of the paper's grid (inverse and forward matching: Transformer and six Mamba "
            "variants; composite and full-symmetry cells at the paper's depths and init scales) for each seed, "
            "reusing finished runs and resuming stopped ones, then write the report: tables, accuracy at "
            "epochs 40/100/200, and each of the paper's claims checked against the numbers. "
            "--render-only trains nothing."
        ),
    )
    p.add_argument("--runs-dir", default="runs/paper", help="where the runs live (default runs/paper)")
    p.add_argument("--out", default="docs/reproduction.md", help="markdown report (default docs/reproduction.md)")
    p.add_argument("--assets", default=None,
                   help="folder for results.json and the accuracy plots (default: <out>_assets)")
    p.add_argument("--mixers", nargs="+", default=["mamba2"], choices=["mamba1", "mamba2"])
    p.add_argument("--tasks", nargs="+", default=list(GRID_TASKS), choices=list(GRID_TASKS))
    p.add_argument("--models", nargs="+", default=None, help="restrict the grid to these variants")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--preset", default="paper", choices=list(PRESETS))
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--n-train", type=int, default=None, help="override the preset's training-set size")
    p.add_argument("--n-eval", type=int, default=None, help="override the preset's evaluation-set size")
    p.add_argument("--batch-size", type=int, default=None, help="override the preset's batch size")
    p.add_argument("--d-model", type=int, default=None, help="override every model's residual width")
    p.add_argument("--task-format", default=None, choices=["paper", "special-tokens"],
                   help="token format of every cell (default: the tasks' own, paper)")
    p.add_argument("--ablation-runs", default=None,
                   help="runs of the same grid in the special-token format, shown as an ablation section")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"])
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="Dask scheduler of an existing cluster, e.g. tcp://head:8786 (its workers need --resources "
                        "grid-run=1 and --runs-dir on a shared filesystem); default: a local cluster on this machine")
    p.add_argument("--runs-per-gpu", type=int, default=None,
                   help="local cluster: runs sharing each GPU (default 1, or --jobs spread over the GPUs)")
    p.add_argument("--gpus", nargs="+", default=None, help="local cluster: the GPUs to use (default: all visible)")
    p.add_argument("--jobs", type=int, default=None,
                   help="local cluster: CPU workers on a machine without GPUs (default: cores // --threads); "
                        "with GPUs and no --runs-per-gpu, runs at once spread over the GPUs")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    p.add_argument("--retries", type=int, default=2,
                   help="times a run may raise or lose its worker (each retry resumes it) before it is reported")
    p.add_argument("--time-limit", type=float, default=None,
                   help="stop runs still training after this many seconds (they keep their last checkpoint)")
    p.add_argument("--render-only", action="store_true", help="train nothing: report the finished runs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training.claims import paper_claims
    from ..training.paper_grid import grid_specs, paper_cells
    from ..training.reproduction import collect, collect_ablation, write_report
    from ..training.validation import check_seeds, positive_settings
    from .train import check_device, command_line

    check_seeds(args.seeds, "--seeds")
    sizes = positive_settings({k: getattr(args, k) for k in ("n_train", "n_eval", "batch_size")})
    positive_settings({"epochs": args.epochs, "threads": args.threads})
    overrides = tuple(positive_settings({"d_model": args.d_model}).items())
    for flag in ("jobs", "runs_per_gpu"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.retries < 0:
        raise UserError(f"--retries must be >= 0, got {args.retries}")
    if args.time_limit is not None and args.time_limit <= 0:
        raise UserError(f"--time-limit must be a positive number of seconds, got {args.time_limit}")
    check_device(args.device)
    from ..outputs import check_output

    out = Path(args.out)
    assets = Path(args.assets) if args.assets else out.with_name(out.stem + "_assets")
    check_output(out, "--out", "file")
    check_output(assets, "--assets", "dir")
    if not args.render_only:
        check_output(args.runs_dir, "--runs-dir", "dir")
    cells = [c for c in paper_cells(args.mixers, args.tasks, args.task_format)
             if args.models is None or c.model in args.models]
    if not cells:
        raise UserError(f"no cell of the grid uses the variants {args.models}")
    command = command_line(args, "reproduce")
    if not args.render_only:
        from ..training.distributed import run_specs, summary_line, visible_gpus

        specs = grid_specs(cells, args.seeds, args.preset, args.epochs, model_overrides=overrides, **sizes)
        runs_per_gpu = args.runs_per_gpu or 1
        if args.runs_per_gpu is None and args.jobs and args.scheduler is None and args.device != "cpu":
            n_gpus = len(args.gpus) if args.gpus is not None else len(visible_gpus())
            if n_gpus:
                runs_per_gpu = -(-args.jobs // n_gpus)
        result = run_specs(specs, args.runs_dir, scheduler=args.scheduler, runs_per_gpu=runs_per_gpu,
                           device=args.device, threads=args.threads, n_workers=args.jobs, gpus=args.gpus,
                           retries=args.retries, time_limit=args.time_limit, command=command,
                           progress=False)
        print(summary_line(result))
    results = collect(args.runs_dir, cells, args.seeds, args.preset)
    ablation = None
    if args.ablation_runs:
        ablation = ("Ablation: the special-token format (earlier grid)",
                    collect_ablation(args.ablation_runs, args.mixers, args.seeds))
    write_report(out, results, paper_claims(args.mixers), command, assets, ablation=ablation)
    print(f"wrote {out} and {assets}/")
    return 0
