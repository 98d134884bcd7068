"""``achilles-interp patch``: the attribution study (activation and attribution patching on two
kinds of clean/corrupted pairs, path shares, position probes, the paper's interventions, fusion
asymmetry, effective attention) on a set of models, and the computed verdict: conv fusion order,
the scan, or missing position information."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# the shipped models, in order: a failing standard Mamba-2, the fixed variants, the Transformer
DEFAULT_MODELS = ("mamba2-inverse", "mamba2-pe-inverse", "mamba2-bypass-pe-inverse", "transformer-inverse")


def register(sub, help_text: str) -> None:
    from achilles_interp.analyses.components import DEFAULT_COMPONENTS, all_component_names

    p = sub.add_parser(
        "patch",
        help=help_text,
        description=(
            "Study a set of models on their task: denoising activation patching and attribution patching over "
            "(component x layer x position) on each kind of clean/corrupted pair (inverse matching: the query "
            "changed, or the matching key moved), the conv / scan / gate shares, linear probes of position and "
            "key slot, the paper's blocking / substitution / all-ones interventions, fusion asymmetry and "
            "effective attention; then the verdict comparing failing and solving models. Writes heatmaps "
            "(PNG+SVG), CSV/JSON of every number and a markdown page. With no --checkpoint, studies the shipped "
            f"models ({', '.join(DEFAULT_MODELS)}): a failing standard Mamba-2 beside fixed ones."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", action="append", metavar="DIR_OR_HUB_ID", default=None,
                   help="checkpoint or training-run directory, or a Hub id such as state-spaces/mamba-130m (from the "
                        "local Hugging Face cache; repeat for several models); a run directory's metrics.json names "
                        "its task. Default: the shipped models")
    p.add_argument("--runs-dir", default=None, metavar="DIR",
                   help="study every finished run of a grid (achilles-interp reproduce's --runs-dir) that kept its "
                        "weights, restricted by --tasks, --models and --seeds; adds to --checkpoint")
    p.add_argument("--tasks", nargs="+", default=["inverse-matching", "forward-matching"],
                   help="with --runs-dir: the tasks whose runs are studied")
    p.add_argument("--models", nargs="+", default=None, help="with --runs-dir: the variants studied (default: all)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="with --runs-dir: the seeds (default: all)")
    p.add_argument("--mixer", default="mamba2", choices=["mamba1", "mamba2"],
                   help="with --runs-dir: whose Mamba runs are studied (the Transformer runs always are), and "
                        "whose reproduction cells the verdict reads; a study pools no two mixers")
    from ..catalog import TASK_NAMES, TEXT_TASK_NAMES

    p.add_argument("--task", default="inverse-matching", metavar="TASK",
                   help="task of checkpoints that do not name one: " + ", ".join(TASK_NAMES[:4] + TEXT_TASK_NAMES)
                        + " (the text tasks prompt a pretrained LM through its tokenizer; docs/pretrained.md)")
    p.add_argument("--task-format", default=None, choices=["paper", "special-tokens"],
                   help="token format of the matching / composite tasks for checkpoints that do not record one "
                        "(a training run's metrics.json does); default: the task's own, paper")
    p.add_argument("--reproduction", default=None, metavar="RESULTS_JSON",
                   help="the reproduction's results.json, whose variant accuracies enter the verdict "
                        "(default: docs/reproduction_assets/results.json when it exists; 'none': the study alone)")
    p.add_argument("--components", nargs="+", default=list(DEFAULT_COMPONENTS), metavar="NAME",
                   help=f"components to patch; allowed: {', '.join(all_component_names())}")
    p.add_argument("--n", type=int, default=32, help="clean/corrupted pairs of each kind")
    p.add_argument("--seed", type=int, default=0, help="seed of the task generator (split 'test')")
    p.add_argument("--metric", default="logit_diff", choices=["logit_diff", "prob"], help="patching metric")
    p.add_argument("--state-cells", default="answer", choices=["answer", "all"],
                   help="patch the SSM state only before the answer position (what the path shares need), or "
                        "at every position (a state patch re-runs the scan: far slower)")
    p.add_argument("--eval-examples", type=int, default=512, help="test examples for each model's accuracy")
    p.add_argument("--probe-examples", type=int, default=256, help="examples for the position probes (0 skips)")
    p.add_argument("--fusion-examples", type=int, default=2,
                   help="examples for the Jacobian fusion matrices (0 skips the fusion analysis)")
    p.add_argument("--fusion-probes", type=int, default=4,
                   help="Gaussian probes per position for the Jacobian norms (Hutchinson estimate)")
    p.add_argument("--out", default="patch_results", help="output folder; 'X_assets' also writes X.md beside it")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="print no stage lines")
    p.set_defaults(func=run)


def run_task(path: Path):
    """``(task name, token format)`` a training run or shipped checkpoint was trained on (its
    metrics.json / PROVENANCE.json), each None where it does not say."""
    for name in ("metrics.json", "PROVENANCE.json"):
        f = path / name
        if f.is_file():
            doc = json.loads(f.read_text())
            run = doc.get("run", {})
            repr_ = run.get("task_repr") or ""
            fmt = next((v for v in ("special-tokens", "paper") if f"format={v!r}" in repr_), None)
            return run.get("task") or doc.get("task"), fmt
    return None, None


def grid_checkpoints(runs_dir: Path, tasks, models=None, seeds=None, mixer=None) -> list:
    """The finished runs under a grid's ``runs_dir/<task>/<cell>/seed<k>/`` that kept their weights; with
    ``mixer``, the Mamba runs of that mixer only (a Transformer run records none and is kept)."""
    out = []
    for task in tasks:
        for metrics in sorted((Path(runs_dir) / task).glob("*/seed*/metrics.json")):
            run = json.loads(metrics.read_text())
            d = metrics.parent
            if not run.get("complete") or not (d / "model.safetensors").is_file():
                continue
            if models is not None and run["run"]["model"] not in models:
                continue
            if seeds is not None and run["run"]["seed"] not in seeds:
                continue
            if mixer is not None and run["run"].get("mixer") not in (None, mixer):
                continue
            out.append(d)
    return out


def _load_models(checkpoints, default_task: str):
    """``(models, tasks, sources)``: name -> model / task name / where it came from."""
    from achilles_interp import zoo

    from ..cli import CLIError

    models, tasks, sources = {}, {}, {}
    if not checkpoints:
        available = zoo.list_checkpoints()
        names = [n for n in DEFAULT_MODELS if n in available] or available
        if not names:
            raise CLIError("no shipped checkpoints found (achilles_interp/checkpoints); pass --checkpoint DIR")
        checkpoints = [zoo.checkpoints_dir() / n for n in names]
    for path in map(Path, checkpoints):
        if not path.is_dir() and len(path.parts) != 2:
            raise CLIError(f"--checkpoint {path}: not a directory (nor a Hub id org/name)")
        task, fmt = run_task(path) if path.is_dir() else (None, None)
        name = "/".join(path.parts[-3:]) if path.name.startswith("seed") else path.name
        k, base = 2, name
        while name in models:
            name, k = f"{base}-{k}", k + 1
        models[name] = zoo.load_model(path if path.is_dir() else str(path), backend="torch").eval()
        tasks[name] = (task or default_task, fmt)
        sources[name] = str(path)
    return models, tasks, sources


def run(args: argparse.Namespace) -> int:
    import torch

    from achilles_interp.analyses.components import check_components
    from achilles_interp.analyses.explanation import explain
    from achilles_interp.analyses.report import markdown_path, write_study
    from achilles_interp.analyses.study import StudyConfig, run_study
    from achilles_interp.catalog import FORMAT_TASKS
    from achilles_interp.tasks import get_task
    from achilles_interp.training.trainer import resolve_task

    from ..cli import CLIError
    from ..training.validation import check_seeds
    from .train import command_line

    t0 = time.time()
    if args.n < 2:
        raise CLIError(f"--n must be >= 2, got {args.n}")
    check_seeds(args.seed, "--seed")
    if args.fusion_examples < 0 or args.fusion_probes < 1:
        raise CLIError("--fusion-examples must be >= 0 and --fusion-probes >= 1")
    if args.probe_examples != 0 and args.probe_examples < 8:
        raise CLIError(f"--probe-examples must be 0 (skip) or >= 8, got {args.probe_examples}")
    if args.eval_examples < 1:
        raise CLIError(f"--eval-examples must be >= 1, got {args.eval_examples}")
    components = tuple(check_components(args.components))
    from ..outputs import check_output

    check_output(args.out, "--out", "dir")
    check_output(markdown_path(Path(args.out)), "--out (its markdown page)", "file")
    if args.threads < 1:
        raise CLIError(f"--threads must be >= 1, got {args.threads}")
    reproduction = args.reproduction
    if reproduction is None and Path("docs/reproduction_assets/results.json").is_file():
        reproduction = "docs/reproduction_assets/results.json"
    if reproduction == "none":
        reproduction = None
    elif reproduction is not None and not Path(reproduction).is_file():
        raise CLIError(f"--reproduction {reproduction}: no such file (give a reproduction's results.json, or 'none')")
    grid = json.loads(Path(reproduction).read_text())["cells"] if reproduction else None
    if grid is not None and not any(c.get("mixer") == args.mixer for c in grid):
        # without this, the verdict's grid rows would all read "not measured"
        have = sorted({c["mixer"] for c in grid if c.get("mixer")})
        raise CLIError(f"--reproduction {reproduction} has no {args.mixer} cells "
                       f"(it has: {', '.join(have) or 'none'}); "
                       f"render it with `achilles-interp reproduce --render-only --mixers ... {args.mixer}`, "
                       "or pass --reproduction none to judge on the study alone")
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(True)
    checkpoints = list(args.checkpoint or [])
    if args.runs_dir:
        found = grid_checkpoints(Path(args.runs_dir), args.tasks, args.models, args.seeds, args.mixer)
        if not found:
            raise CLIError(f"--runs-dir {args.runs_dir}: no finished run with its weights for tasks {args.tasks} "
                           f"(mixer {args.mixer})")
        checkpoints += found
    models, task_names, sources = _load_models(checkpoints, args.task)
    tasks = {}
    for name, model in models.items():
        task_name, fmt = task_names[name]
        if task_name.startswith("text-"):
            if getattr(model, "tokenizer", None) is None:
                raise CLIError(f"{name}: the text tasks need the model's tokenizer, and none was found with it")
            tasks[name] = get_task(task_name, tokenizer=model.tokenizer)
        else:  # the trainer's rule: matching tasks get the model's depth, format where the task has one
            fmt = (fmt or args.task_format) if task_name in FORMAT_TASKS else None
            tasks[name] = resolve_task(task_name, model.cfg.n_layers, fmt)
    cfg = StudyConfig(n=args.n, seed=args.seed, components=components, metric=args.metric,
                      eval_examples=args.eval_examples, fusion_examples=args.fusion_examples,
                      fusion_probes=args.fusion_probes, probe_examples=args.probe_examples,
                      state_cells=args.state_cells)
    say = None if args.no_progress else (lambda s: print(f"[{time.time() - t0:5.0f} s] {s}", flush=True))
    study = run_study(models, tasks, cfg, sources, progress=say)
    explanation = explain(study, grid, args.mixer)
    write_study(study, explanation, args.out, command_line(args, "patch"))
    if say is None:  # with progress, each model's result was printed as soon as it was known
        for name, m in study.models.items():
            shares = "; ".join(f"{c}: {p.shares.sentence()}" for c, p in m.pairs.items() if p.shares)
            print(f"{name}: test accuracy {m.accuracy:.3f} ({m.role})" + (f"; shares {shares}" if shares else ""))
    print(f"verdict: {explanation.sentence}")
    print(f"wrote {args.out}/ and {markdown_path(Path(args.out))} in {time.time() - t0:.1f}s", file=sys.stderr)
    return 0
