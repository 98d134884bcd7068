"""Mamba-1 training scan by sequence length: the Triton short-sequence scan vs ``mamba_ssm``'s.

``CudaOps.short_scan_max_len`` (``ACHILLES_INTERP_SHORT_SCAN_MAX_LEN``) sends Mamba-1 sequences up to
that many tokens to ``kernels/triton_scan_grad.py`` instead of ``selective_scan_fn``. This script
measures where that pays: one forward + backward of the scan alone (the op a training step calls, with
the same ``[batch, pos, d_inner]`` inputs the mixer passes) for each length, both kernels, replayed as
a CUDA graph (the trainer's graphed step: no launch cost), at the two shapes of the paper preset's
Mamba-1 grid and at a pretrained model's:

  * matching: batch 1024, d_inner 256, d_state 16 (inverse / forward matching, L 29)
  * composite: batch 2048, d_inner 64, d_state 16 (composite tasks, L 8)
  * mamba-130m: batch 8, d_inner 1536, d_state 16 (fine-tuning a small pretrained Mamba-1)

Prints, per shape, ms of each kernel, their ratio (Triton / mamba_ssm: < 1 means the Triton scan is
faster), the Triton scan's extra memory (it keeps every state for the backward) and the largest
difference of y and of the gradients between the two; then the crossover: the longest length up to
which the Triton scan is faster at every measured length.

Usage (device): python benchmarks/short_scan.py [--lengths 8 16 ...] [--quick] [--json PATH]
"""

from __future__ import annotations

import sys

import torch

try:  # run as a script: this folder is on sys.path
    from _timing import add_quick_json, gpu_missing, graph_timer, parser, print_table, timed, write_json
except ImportError:  # imported as benchmarks.short_scan
    from benchmarks._timing import add_quick_json, gpu_missing, graph_timer, parser, print_table, timed, write_json

# (batch, d_inner, d_state)
SHAPES = {"matching": (1024, 256, 16), "composite": (2048, 64, 16), "mamba-130m": (8, 1536, 16)}
LENGTHS = (8, 16, 29, 32, 64, 96, 128, 192, 256, 512)


def scan_inputs(batch: int, L: int, d_inner: int, d_state: int, seed: int = 0):
    """(u, dt, A, B, C, D, dy) as the Mamba-1 mixer hands them to the scan: u, dt, dy ``[batch, L, d_inner]``,
    dt positive (softplus of a N(-2, 0.5) pre-activation, as the init's dt range); A ``[d_inner, d_state]``
    negative (S4D-real); B, C ``[batch, L, d_state]``; D ``[d_inner]``; fp32 on the GPU."""
    g = torch.Generator(device="cuda").manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, device="cuda", generator=g)
    u = randn(batch, L, d_inner)
    dt = torch.nn.functional.softplus(randn(batch, L, d_inner) * 0.5 - 2.0)
    A = -torch.arange(1, d_state + 1, device="cuda", dtype=torch.float32).expand(d_inner, d_state).contiguous()
    return u, dt, A, randn(batch, L, d_state), randn(batch, L, d_state), randn(d_inner), randn(batch, L, d_inner)


def step_fn(scan, inputs):
    """One forward + backward of ``scan`` (a ``cuda_ops`` scan) on fresh leaves of ``inputs``: returns
    (y, grads of u, dt, A, B, C, D)."""
    *args, dy = inputs
    leaves = [a.detach().requires_grad_() for a in args]

    def step():
        y, _ = scan(*leaves)
        return (y, *torch.autograd.grad(y, leaves, dy))
    return step


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def bench_length(shape: str, L: int, graph_bench) -> dict:
    from achilles_interp.kernels.cuda_ops import selective_scan_cuda, selective_scan_short_cuda

    batch, d_inner, d_state = SHAPES[shape]
    inputs = scan_inputs(batch, L, d_inner, d_state)
    ref_step, short_step = step_fn(selective_scan_cuda, inputs), step_fn(selective_scan_short_cuda, inputs)
    ref, short = ref_step(), short_step()
    diff = {name: max_rel(s, r) for name, s, r in zip(("y", "du", "ddt", "dA", "dB", "dC", "dD"), short, ref)}
    del ref, short
    _, ref_bytes = timed(ref_step, warmup=1, reps=1)
    _, short_bytes = timed(short_step, warmup=1, reps=1)
    ref_ms, short_ms = graph_bench(ref_step), graph_bench(short_step)
    return dict(shape=shape, L=L, batch=batch, d_inner=d_inner, d_state=d_state, mamba_ssm_ms=ref_ms,
                triton_ms=short_ms, ratio=short_ms / ref_ms, mamba_ssm_peak_bytes=ref_bytes,
                triton_peak_bytes=short_bytes, max_rel_diff=diff)


def crossover(rows: list[dict]) -> int:
    """The longest measured length up to which the Triton scan is faster at every measured length (0: at none)."""
    best = 0
    for r in sorted(rows, key=lambda r: r["L"]):
        if not r["ratio"] < 1:   # nan (a failed capture) ends it too
            break
        best = r["L"]
    return best


def main(argv=None) -> int:
    p = parser(__doc__)
    add_quick_json(p)
    p.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS), help="sequence lengths (tokens)")
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=list(SHAPES))
    args = p.parse_args(argv)
    if any(L < 1 for L in args.lengths):
        p.error(f"--lengths must be positive token counts, got {args.lengths}")
    if gpu_missing("short_scan.py"):
        return 0
    lengths = [8, 29] if args.quick else sorted(set(args.lengths))
    graph_bench = graph_timer()
    results = dict(device=torch.cuda.get_device_name(), shapes={})
    for shape in args.shapes:
        rows = [bench_length(shape, L, graph_bench) for L in lengths]
        results["shapes"][shape] = dict(rows=rows, crossover=crossover(rows))
        batch, d_inner, d_state = SHAPES[shape]
        print(f"\n# {shape}: batch {batch}, d_inner {d_inner}, d_state {d_state}, fp32; forward + backward of the "
              f"scan, graphed (median ms of do_bench_cudagraph) on {results['device']}")
        print_table(("L", "mamba_ssm ms", "Triton ms", "Triton / mamba_ssm", "peak MiB mamba_ssm / Triton",
                     "max rel diff y / grads"),
                    [(str(r["L"]), f"{r['mamba_ssm_ms']:.3f}", f"{r['triton_ms']:.3f}", f"{r['ratio']:.2f}",
                      f"{r['mamba_ssm_peak_bytes'] / 2**20:.0f} / {r['triton_peak_bytes'] / 2**20:.0f}",
                      f"{r['max_rel_diff']['y']:.1e} / {max(v for k, v in r['max_rel_diff'].items() if k != 'y'):.1e}")
                     for r in rows])
        print(f"crossover ({shape}): the Triton scan is faster at every measured length up to "
              f"{results['shapes'][shape]['crossover']} tokens")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
