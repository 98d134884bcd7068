"""Training-step time: CUDA-graph replay vs eager launches, at the paper's model size (GPU only).

    python benchmarks/train_step.py [--steps 200] [--models mamba:mamba2 mamba:mamba1 ...]
    python benchmarks/train_step.py --models mamba:mamba2 --set chunk_size=32   # a preset override
    python benchmarks/train_step.py --models mamba:mamba2 --chunk-sizes 256 64 32   # a row per chunk
    python benchmarks/train_step.py --graphed-only --profile --models mamba:mamba2 mamba:mamba1  # where time goes

For each model, builds the ``paper`` preset's model and optimiser, trains ``--steps`` steps on
inverse-matching batches of the preset's size (1024) with :class:`TrainStep` eagerly and then
graphed (fresh model each time, same seed), and prints milliseconds per step and the ratio
eager / graphed, plus the loss after the last step of each mode (they train the same way).
"""

from __future__ import annotations

import argparse
import ast
import time

import torch

from achilles_interp.tasks import get_task
from achilles_interp.training.graphed_step import TrainStep, make_optimizer
from achilles_interp.training.presets import PRESETS
from achilles_interp.training.trainer import param_groups
from achilles_interp.zoo import build_model

try:  # run as a script (benchmarks/ on sys.path) or imported as benchmarks.train_step
    from _timing import gpu_missing
except ImportError:
    from benchmarks._timing import gpu_missing


def parse_override(text: str) -> tuple[str, object]:
    """``"chunk_size=32"`` -> ``("chunk_size", 32)``; the value is read as a Python literal if it is one."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE (e.g. chunk_size=32), got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def parse_spec(spec: str) -> tuple[str, str]:
    """``"mamba:mamba1"`` -> ``("mamba", "mamba1")``; a ``-`` mixer (the Transformer) reads as mamba2."""
    name, mixer = spec.split(":")
    return name, "mamba2" if mixer == "-" else mixer


def make_step(name: str, mixer: str, graph: bool, batches, overrides: dict) -> TrainStep:
    """A fresh paper-preset model (seed 0) and its optimiser, as one training step on the GPU."""
    preset = PRESETS["paper"]
    dev = torch.device("cuda")
    torch.manual_seed(0)
    kwargs = {**preset.model_kwargs(name, mixer), **overrides}
    model = build_model(name, vocab_size=256, max_len=64, mixer=mixer, **kwargs).to(dev)
    opt = make_optimizer(param_groups(model, preset.weight_decay), preset.lr_max, preset.betas, preset.eps, dev)
    return TrainStep(model, opt, preset.grad_clip, batches[0].n, use_graph=graph)


def time_steps(
    name: str, mixer: str, graph: bool, steps: int, batches, overrides: dict
) -> tuple[float, float, str]:
    step = make_step(name, mixer, graph, batches, overrides)
    for i in range(8):  # warm-up (autotuning, capture)
        step(batches[i % len(batches)])
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        loss = step(batches[i % len(batches)])
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps * 1e3, float(loss), "cuda-graph" if step.graphed else "eager"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument(
        "--models", nargs="+", default=["mamba:mamba2", "mamba:mamba1", "mamba-bypass-pe:mamba2", "transformer:-"]
    )
    p.add_argument(
        "--set",
        type=parse_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a model argument of the paper preset (repeatable), e.g. chunk_size=32",
    )
    p.add_argument(
        "--chunk-sizes",
        nargs="+",
        type=int,
        default=None,
        metavar="N",
        help="time each Mamba-2 model once per Mamba-2 kernel chunk length (tokens), a row each",
    )
    p.add_argument("--graphed-only", action="store_true", help="skip the eager timing")
    p.add_argument("--profile", action="store_true",
                   help="after the table, the GPU kernels that take the most time in 5 eager steps of each model "
                        "(torch.profiler): where a slow model's step goes")
    args = p.parse_args(argv)
    overrides = dict(args.set)
    if gpu_missing("benchmarks/train_step.py"):
        return 0
    task = get_task("inverse-matching", n_layers=PRESETS["paper"].model["n_layers"])
    data = task.generate(8 * 1024, seed=0, split="train").to("cuda")
    batches = [data[i * 1024 : (i + 1) * 1024] for i in range(8)]
    print(f"GPU: {torch.cuda.get_device_name()}; batch 1024 x {task.seq_len} tokens; {args.steps} timed steps")
    if overrides:
        print(f"model overrides: {overrides}")
    print("| model | eager ms/step | graphed ms/step | eager / graphed | final loss eager / graphed |")
    print("|---|---|---|---|---|")
    models = [parse_spec(spec) for spec in args.models]
    for name, mixer in models:
        label = name if name.startswith("transformer") else f"{name} ({mixer})"
        chunked = mixer == "mamba2" and not name.startswith("transformer") and args.chunk_sizes
        for chunk in args.chunk_sizes if chunked else [None]:
            ov = overrides if chunk is None else {**overrides, "chunk_size": chunk}
            row = label if chunk is None else f"{label}, chunk {chunk}"
            tg, lg, mode = time_steps(name, mixer, True, args.steps, batches, ov)
            note = "" if mode == "cuda-graph" else " (capture failed: eager)"
            if args.graphed_only:
                print(f"| {row} | - | {tg:.2f}{note} | - | - / {lg:.4f} |")
                continue
            te, le, _ = time_steps(name, mixer, False, args.steps, batches, ov)
            print(f"| {row} | {te:.2f} | {tg:.2f}{note} | {te / tg:.1f}x | {le:.4f} / {lg:.4f} |")
    if args.profile:
        for name, mixer in models:
            print(f"\n# {name} ({mixer}): GPU time of 5 eager steps by kernel")
            print(profile_steps(name, mixer, batches, overrides))
    return 0


def profile_steps(name: str, mixer: str, batches, overrides: dict, steps: int = 5, rows: int = 10) -> str:
    """torch.profiler's table of the CUDA kernels in ``steps`` eager training steps, most time first."""
    from torch.profiler import ProfilerActivity, profile

    step = make_step(name, mixer, False, batches, overrides)
    for i in range(3):
        step(batches[i])
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(steps):
            step(batches[i % len(batches)])
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="device_time_total", row_limit=rows, max_name_column_width=60)


if __name__ == "__main__":
    raise SystemExit(main())
