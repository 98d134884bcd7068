"""Training-step time: CUDA-graph replay vs eager launches, at the paper's model size (GPU only).

    python benchmarks/train_step.py [--steps 200] [--models mamba:mamba2 mamba:mamba1 ...]
    python benchmarks/train_step.py --models mamba:mamba2 --set chunk_size=32   # a preset override
    python benchmarks/train_step.py --models mamba:mamba2 --chunk-sizes 256 64 32   # a row per chunk
    python benchmarks/train_step.py --graphed-only --profile --models mamba:mamba2 mamba:mamba1  # where time goes
    python benchmarks/train_step.py --graphed-only --share 1 4 12 --models mamba:mamba1  # several runs, one GPU

For each model, builds the ``paper`` preset's model and optimiser, trains ``--steps`` steps on
inverse-matching batches of the preset's size (1024) with :class:`TrainStep` eagerly and then
graphed (fresh model each time, same seed), and prints milliseconds per step and the ratio
eager / graphed, plus the loss after the last step of each mode (they train the same way).

``--share K ...`` asks what the training grid gets from one GPU when it trains K runs on it at
once: K separate processes (what the grid's workers are: their CUDA contexts take turns on the
GPU) against K graphed steps replayed on K streams of one process (whose kernels may overlap).
Each prints the GPU's aggregate steps per second and that over one run's.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import multiprocessing as mp
import time

import torch

from achilles_interp.ops import CUDA_OPS
from achilles_interp.training.graphed_step import TrainStep, make_optimizer
from achilles_interp.training.paper_grid import GRID_TASKS
from achilles_interp.training.presets import PRESETS
from achilles_interp.training.trainer import param_groups, resolve_task
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


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every timed model shares: the task its batches come from (the ``paper`` preset's batch size,
    model size and layer count for that task) and the model arguments overridden on the command line."""

    task: str = "inverse-matching"
    overrides: dict = dataclasses.field(default_factory=dict)
    short_scan_max_len: int = 0  # the CUDA ops' short-sequence policy for Mamba-1 (0: mamba_ssm's scan)

    def task_obj(self):
        n_layers = {**PRESETS["paper"].model_kwargs("mamba", "mamba2", self.task), **self.overrides}["n_layers"]
        return resolve_task(self.task, n_layers)


def make_step(name: str, mixer: str, graph: bool, batches, setup: Setup) -> TrainStep:
    """A fresh paper-preset model (seed 0) for ``setup``'s task and its optimiser, as one training step
    on the GPU."""
    preset = PRESETS["paper"]
    dev = torch.device("cuda")
    CUDA_OPS.short_scan_max_len = setup.short_scan_max_len
    torch.manual_seed(0)
    task = setup.task_obj()
    kwargs = {**preset.model_kwargs(name, mixer, setup.task), **setup.overrides}
    model = build_model(name, vocab_size=task.vocab_size, max_len=max(task.seq_len, 64), mixer=mixer, **kwargs)
    opt = make_optimizer(param_groups(model, preset.weight_decay), preset.lr_max, preset.betas, preset.eps, dev)
    return TrainStep(model.to(dev), opt, preset.grad_clip, batches[0].n, use_graph=graph)


def warmed_step(name: str, mixer: str, graph: bool, batches, setup: Setup) -> TrainStep:
    """:func:`make_step`, then 8 untimed steps (autotuning, and the capture of a graphed step) on the
    current stream."""
    step = make_step(name, mixer, graph, batches, setup)
    for i in range(8):
        step(batches[i % len(batches)])
    return step


def time_steps(
    name: str, mixer: str, graph: bool, steps: int, batches, setup: Setup
) -> tuple[float, float, str]:
    step = warmed_step(name, mixer, graph, batches, setup)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        loss = step(batches[i % len(batches)])
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps * 1e3, float(loss), "cuda-graph" if step.graphed else "eager"


def make_batches(setup: Setup) -> tuple[list, int]:
    """Eight training batches of ``setup``'s task at the paper preset's batch size, on the GPU, and
    their length in tokens."""
    task, size = setup.task_obj(), PRESETS["paper"].batch_size_for(setup.task)
    data = task.generate(8 * size, seed=0, split=task.splits[0]).to("cuda")
    return [data[i * size : (i + 1) * size] for i in range(8)], task.seq_len


def streams_rate(name: str, mixer: str, k: int, steps: int, batches, setup: Setup) -> float:
    """Graphed steps per second of ``k`` models trained together, each on its own stream of this
    process, replayed in turn (round-robin), summed over the models."""
    streams = [torch.cuda.Stream() for _ in range(k)]
    torch.cuda.synchronize()  # the batches, made on the default stream, are ready for every stream
    trains = []
    for s in streams:
        with torch.cuda.stream(s):  # warm-up and capture, one model at a time
            trains.append(warmed_step(name, mixer, True, batches, setup))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        for s, train in zip(streams, trains):
            with torch.cuda.stream(s):
                train(batches[i % len(batches)])
    torch.cuda.synchronize()
    return k * steps / (time.perf_counter() - t0)


def _process_run(name: str, mixer: str, steps: int, setup: Setup, start, spans) -> None:
    """One grid worker's share: a model of its own, graphed, timed from a common start."""
    batches, _ = make_batches(setup)
    train = warmed_step(name, mixer, True, batches, setup)
    torch.cuda.synchronize()
    start.wait()
    t0 = time.perf_counter()
    for i in range(steps):
        train(batches[i % len(batches)])
    torch.cuda.synchronize()
    spans.put((t0, time.perf_counter()))


def processes_rate(name: str, mixer: str, k: int, steps: int, setup: Setup) -> float:
    """Graphed steps per second of ``k`` models trained together in ``k`` processes (separate CUDA
    contexts, as the grid's workers are), summed: ``k * steps`` over the time from the first
    process's start to the last one's end (they start together at a barrier)."""
    ctx = mp.get_context("spawn")
    start, spans = ctx.Barrier(k), ctx.Queue()
    procs = [ctx.Process(target=_process_run, args=(name, mixer, steps, setup, start, spans)) for _ in range(k)]
    for proc in procs:
        proc.start()
    got = [spans.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join()
    return k * steps / (max(t1 for _, t1 in got) - min(t0 for t0, _ in got))


def share_table(rows, ks: list[int], steps: int, batches) -> None:
    print("\n# K runs on one GPU: aggregate graphed steps/s (x one run alone)")
    print("| model | K | K processes | K streams of one process |")
    print("|---|---|---|---|")
    for label, name, mixer, setup in rows:
        one = streams_rate(name, mixer, 1, steps, batches, setup)
        for k in ks:
            by_proc = processes_rate(name, mixer, k, steps, setup)
            by_stream = streams_rate(name, mixer, k, steps, batches, setup)
            cells = [f"{rate:.0f} ({rate / one:.2f}x)" for rate in (by_proc, by_stream)]
            print(f"| {label} | {k} | {cells[0]} | {cells[1]} |", flush=True)


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
    p.add_argument("--share", nargs="+", type=int, default=[], metavar="K",
                   help="also time K runs sharing the GPU, as K processes and as K streams of one process")
    p.add_argument("--short-scan-max-len", type=int, default=0, metavar="L",
                   help="also time each Mamba-1 model with the CUDA ops' short-sequence policy at L tokens "
                        "(the Triton scan and no fused mixer for sequences up to L)")
    p.add_argument("--task", default="inverse-matching", choices=GRID_TASKS,
                   help="the batches, batch size and model size of the paper preset for this task")
    args = p.parse_args(argv)
    setup = Setup(args.task, dict(args.set))
    if gpu_missing("benchmarks/train_step.py"):
        return 0
    batches, seq_len = make_batches(setup)
    print(f"GPU: {torch.cuda.get_device_name()}; {args.task}, batch {batches[0].n} x {seq_len} tokens; "
          f"{args.steps} timed steps")
    if setup.overrides:
        print(f"model overrides: {setup.overrides}")
    print("| model | eager ms/step | graphed ms/step | eager / graphed | final loss eager / graphed |")
    print("|---|---|---|---|---|")
    rows = table_rows([parse_spec(spec) for spec in args.models], setup, args.chunk_sizes, args.short_scan_max_len)
    for row, name, mixer, row_setup in rows:
        tg, lg, mode = time_steps(name, mixer, True, args.steps, batches, row_setup)
        note = "" if mode == "cuda-graph" else " (capture failed: eager)"
        if args.graphed_only:
            print(f"| {row} | - | {tg:.2f}{note} | - | - / {lg:.4f} |")
            continue
        te, le, _ = time_steps(name, mixer, False, args.steps, batches, row_setup)
        print(f"| {row} | {te:.2f} | {tg:.2f}{note} | {te / tg:.1f}x | {le:.4f} / {lg:.4f} |")
    if args.share:
        share_table(rows, args.share, args.steps, batches)
    if args.profile:
        for row, name, mixer, row_setup in rows:
            print(f"\n# {row}: GPU time of 5 eager steps by kernel")
            print(profile_steps(name, mixer, batches, row_setup))
    return 0


def table_rows(models, setup: Setup, chunk_sizes, short_scan_max_len: int) -> list[tuple[str, str, str, Setup]]:
    """(row label, model name, mixer, setup) of each timed row: a row per model, per Mamba-2 chunk size
    when ``chunk_sizes`` are given, and a second row for Mamba-1 on the short-sequence scan when
    ``short_scan_max_len`` is."""
    rows = []
    for name, mixer in models:
        label = name if name.startswith("transformer") else f"{name} ({mixer})"
        mamba = not name.startswith("transformer")
        if mamba and mixer == "mamba2" and chunk_sizes:
            rows += [(f"{label}, chunk {c}", name, mixer, dataclasses.replace(
                setup, overrides={**setup.overrides, "chunk_size": c})) for c in chunk_sizes]
            continue
        rows.append((label, name, mixer, setup))
        if mamba and mixer == "mamba1" and short_scan_max_len:
            rows.append((f"{label}, Triton short scan", name, mixer,
                         dataclasses.replace(setup, short_scan_max_len=short_scan_max_len)))
    return rows


def profile_steps(name: str, mixer: str, batches, setup: Setup, steps: int = 5, rows: int = 10) -> str:
    """torch.profiler's table of the CUDA kernels in ``steps`` eager training steps, most time first."""
    from torch.profiler import ProfilerActivity, profile

    step = make_step(name, mixer, False, batches, setup)
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
