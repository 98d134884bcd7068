"""Effective attention on the GPU: time and peak memory of the tiled Triton kernels (Mamba-1 or Mamba-2).

``--mixer mamba1`` (default):

Prints one table from a single run: batch 1, d_inner 1536, d_state 16, L 4096 (--quick: small),
  * channel-summed map [b, L, L] over all channels (reduce="sum"), Triton and the chunked PyTorch
    implementation (on the same GPU);
  * full per-channel map [b, 64, L, L] for 64 channels, Triton and chunked PyTorch;
  * the materialising method (the [b, c, d_state, L, L] tensor of every term): its size against the
    card's memory. It is not attempted when it cannot fit.
Peak memory is torch.cuda.max_memory_allocated() during the call minus what was allocated before
(the inputs). Times: median of triton.testing.do_bench for Triton (after the first, compiling call); one call
timed with CUDA events for PyTorch (seconds long; no compilation).

``--mixer mamba2`` (SSD, one scalar decay per head; issue #17): batch 1, d_inner 1536 = 24 heads x 64,
d_state 128, one group, L 4096 (--quick: small):
  * head-summed map [b, L, L] (reduce="sum"; the d_inner channel sum is headdim times it), Triton and
    the chunked PyTorch implementation; target < 100 ms and < 1 GB peak;
  * per-head maps [b, 24, L, L] for all heads (the output alone is 1.6 GB), Triton and PyTorch;
  * the materialising method ([b, d_inner, d_state, L, L], every channel and state term): its size.

Usage (device): python benchmarks/effective_attention.py [--mixer mamba1|mamba2] [--quick] [--json PATH]
"""

from __future__ import annotations

import sys

import torch

try:  # run as a script: this folder is on sys.path
    from _timing import add_quick_json, gpu_missing, measure, parser, print_table, write_json
except ImportError:  # imported as benchmarks.effective_attention
    from benchmarks._timing import add_quick_json, gpu_missing, measure, parser, print_table, write_json

HEADER = ("case", "output GB", "Triton ms", "Triton peak GB", "PyTorch chunked ms", "PyTorch peak GB",
          "PyTorch/Triton", "rel err")


def compare(run_tri, run_pt, do_bench) -> dict:
    """Time and peak memory of the Triton and the PyTorch call, and their relative difference."""
    _, m_tri, tri = measure(run_tri)          # first call compiles; its peak memory is what counts
    t_tri = do_bench(run_tri, warmup=3, rep=100, return_mode="median")
    t_pt, m_pt, ref = measure(run_pt)
    err = ((tri.double() - ref.double()).norm() / ref.double().norm()).item()
    del tri, ref
    torch.cuda.empty_cache()
    return dict(triton_ms=t_tri, triton_peak_gb=m_tri / 1e9, torch_ms=t_pt, torch_peak_gb=m_pt / 1e9,
                rel_err_triton_vs_torch=err)


def print_rows(title: str, rows, materialise: int, card: int, what: str) -> bool:
    """The table of rows and the materialising method's row; whether that method fits on the card."""
    print(title)
    print_table(HEADER, [[r["case"], f"{r['out_gb']:.2f}", f"{r['triton_ms']:.1f}", f"{r['triton_peak_gb']:.2f}",
                          f"{r['torch_ms']:.1f}", f"{r['torch_peak_gb']:.2f}", f"{r['torch_ms'] / r['triton_ms']:.0f}x",
                          f"{r['rel_err_triton_vs_torch']:.1e}"] for r in rows])
    fits = materialise < card
    print(f"| materialise [{what}] fp32 | {materialise / 1e9:.0f} | "
          f"{'fits' if fits else 'cannot run'} | {materialise / card:.2g}x the card's memory | - | - | - | - |")
    return fits


def main(argv=None) -> int:
    p = parser(__doc__)
    add_quick_json(p)
    p.add_argument("--mixer", choices=("mamba1", "mamba2"), default="mamba1",
                   help="mamba1: per-channel maps; mamba2: per-head (SSD) maps")
    args = p.parse_args(argv)
    if gpu_missing("benchmarks/effective_attention.py"):
        return 0
    from triton.testing import do_bench

    if args.mixer == "mamba2":
        return main_mamba2(args, do_bench)

    from achilles_interp.kernels.effective_attention import (
        effective_attention_torch,
        effective_attention_triton,
    )

    batch, d_inner, d_state, L = (1, 128, 16, 512) if args.quick else (1, 1536, 16, 4096)
    n_sub = 64
    g = torch.Generator(device="cuda").manual_seed(0)
    delta = 0.5 * torch.randn(batch, d_inner, L, device="cuda", generator=g) - 2.0
    A = -torch.exp(0.5 * torch.randn(d_inner, d_state, device="cuda", generator=g))
    B = torch.randn(batch, d_state, L, device="cuda", generator=g)
    C = torch.randn(batch, d_state, L, device="cuda", generator=g)
    bias = 0.1 * torch.randn(d_inner, device="cuda", generator=g)
    channels = torch.arange(0, d_inner, d_inner // n_sub, device="cuda")[:n_sub]
    card = torch.cuda.get_device_properties(0).total_memory
    dev = torch.cuda.get_device_name()

    rows = []
    cases = [
        ("sum over all channels", d_inner, "sum", None),
        (f"{n_sub} channels, full M", n_sub, None, channels),
    ]
    for label, n_chan, reduce, ch in cases:
        out_bytes = batch * L * L * 4 * (1 if reduce else n_chan)
        run_tri = lambda: effective_attention_triton(delta, A, B, C, bias, True, channels=ch,  # noqa: E731
                                                     reduce=reduce)
        run_pt = lambda: effective_attention_torch(delta, A, B, C, bias, True, channels=ch,  # noqa: E731
                                                   reduce=reduce)
        rows.append(dict(case=label, channels=n_chan, reduce=reduce, out_gb=out_bytes / 1e9,
                         **compare(run_tri, run_pt, do_bench)))
    materialise = batch * d_inner * d_state * L * L * 4

    fits = print_rows(f"\n# effective attention on {dev} ({card / 2**30:.0f} GiB): batch {batch}, d_inner {d_inner}, "
                      f"d_state {d_state}, L {L}, fp32", rows, materialise, card, "b, c, n, L, L")
    if not fits:
        print(f"(the materialising method needs {materialise / 1e9:.0f} GB for one tensor, "
              f"{materialise / card:.0f}x the {card / 1e9:.0f} GB on this card: not attempted)")
    write_json(args.json, dict(device=dev, card_bytes=card, batch=batch, d_inner=d_inner, d_state=d_state, L=L,
                               rows=rows, materialise_bytes=materialise, materialise_fits=fits))
    return 0


def main_mamba2(args, do_bench) -> int:
    from achilles_interp.kernels.effective_attention import (
        ssd_effective_attention_torch,
        ssd_effective_attention_triton,
    )

    batch, d_inner, headdim, d_state, L = (1, 256, 64, 128, 512) if args.quick else (1, 1536, 64, 128, 4096)
    nheads = d_inner // headdim
    g = torch.Generator(device="cuda").manual_seed(0)
    dt = 0.5 * torch.randn(batch, L, nheads, device="cuda", generator=g) - 2.0
    A = -torch.exp(0.5 * torch.randn(nheads, device="cuda", generator=g))
    B = torch.randn(batch, L, 1, d_state, device="cuda", generator=g)
    C = torch.randn(batch, L, 1, d_state, device="cuda", generator=g)
    bias = 0.1 * torch.randn(nheads, device="cuda", generator=g)
    card = torch.cuda.get_device_properties(0).total_memory
    dev = torch.cuda.get_device_name()

    rows = []
    for label, reduce in (("sum over all heads", "sum"), (f"all {nheads} heads, full M", None)):
        out_bytes = batch * L * L * 4 * (1 if reduce else nheads)
        run_tri = lambda: ssd_effective_attention_triton(dt, A, B, C, bias, True, reduce=reduce)  # noqa: E731
        run_pt = lambda: ssd_effective_attention_torch(dt, A, B, C, bias, True, reduce=reduce)  # noqa: E731
        rows.append(dict(case=label, heads=nheads, reduce=reduce, out_gb=out_bytes / 1e9,
                         **compare(run_tri, run_pt, do_bench)))
    materialise = batch * d_inner * d_state * L * L * 4

    fits = print_rows(f"\n# Mamba-2 (SSD) effective attention on {dev} ({card / 2**30:.0f} GiB): batch {batch}, "
                      f"d_inner {d_inner} ({nheads} heads x {headdim}), d_state {d_state}, 1 group, L {L}, fp32",
                      rows, materialise, card, "b, d_inner, n, L, L")
    s = rows[0]
    print(f"target (head-summed map, L {L}): < 100 ms and < 1 GB peak: "
          f"{s['triton_ms']:.1f} ms, {s['triton_peak_gb']:.2f} GB")
    write_json(args.json, dict(mixer="mamba2", device=dev, card_bytes=card, batch=batch, d_inner=d_inner,
                               headdim=headdim, d_state=d_state, L=L, rows=rows, materialise_bytes=materialise,
                               materialise_fits=fits))
    return 0


if __name__ == "__main__":
    sys.exit(main())
