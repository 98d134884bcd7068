"""Batched activation patching vs one forward pass per cell, on the same grid.

    python benchmarks/patching.py [--n 16] [--threads 1] [--cells-per-pass 64] [--components ...]

Builds (or loads, with --checkpoint) a model of the shipped size (Mamba-2, d_model 64, d_state 16,
2 layers), runs :func:`activation_patching` twice on inverse-matching clean/corrupted pairs, checks
that both give the same numbers, and prints the speed-up ratio (target >= 5x).
"""

from __future__ import annotations

import argparse
import time

import torch

from achilles_interp import zoo
from achilles_interp.analyses.components import DEFAULT_COMPONENTS
from achilles_interp.analyses.metrics import PatchingData
from achilles_interp.analyses.patching import activation_patching
from achilles_interp.tasks import get_task


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--checkpoint", default=None, help="checkpoint directory (default: a fresh shipped-size model)"
    )
    p.add_argument("--n", type=int, default=16, help="clean/corrupted pairs")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--cells-per-pass", type=int, default=64, help="cells per forward pass in the batched run")
    p.add_argument(
        "--components",
        nargs="+",
        default=[c for c in DEFAULT_COMPONENTS if c != "ssm_state"],
        help="components (ssm_state is grouped by position in both runs, so it is left out by default)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.checkpoint:
        model = zoo.load_model(args.checkpoint, backend="torch").eval()
    else:
        model = zoo.build_model(
            "mamba",
            vocab_size=256,
            max_len=64,
            n_layers=2,
            d_model=64,
            d_state=16,
            headdim=16,
            backend="torch",
        ).eval()
    task = get_task("inverse-matching", n_layers=model.cfg.n_layers)
    data = PatchingData.from_task(task, args.n, seed=0)
    kw = dict(components=args.components)
    activation_patching(model, data, components=args.components[:1], layers=[0], positions=[0])  # warm-up
    timings, results = {}, {}
    for label, cpp, skip in (
        ("one forward per cell", 1, False),
        ("batched", args.cells_per_pass, False),
        ("batched + no-op skipping (default)", args.cells_per_pass, True),
    ):
        t = time.perf_counter()
        results[label] = activation_patching(model, data, cells_per_pass=cpp, skip_noops=skip, **kw)
        timings[label] = time.perf_counter() - t
    ref = results["one forward per cell"]
    for label, r in results.items():
        assert torch.allclose(r.values, ref.values, atol=1e-4, rtol=1e-4), f"{label} != per-cell loop"
    cells = len(ref.components) * len(ref.layers) * len(ref.positions)
    print(
        f"grid: {len(ref.components)} components x {len(ref.layers)} layers x {len(ref.positions)} positions "
        f"= {cells} cells, n={args.n}, threads={args.threads}, {args.cells_per_pass} cells/pass"
    )
    base = timings["one forward per cell"]
    for label, t in timings.items():
        print(f"  {label:40s} {t:7.2f}s   speed-up {base / t:5.1f}x")
    ratio = base / timings["batched + no-op skipping (default)"]
    print(
        f"speed-up of activation_patching (default settings) over one forward per cell: {ratio:.1f}x "
        "(target >= 5x)"
    )
    return ratio


if __name__ == "__main__":
    main()
