"""Mamba-1 effective attention on the GPU: time and peak memory of the tiled Triton kernel.

Prints one table from a single run: batch 1, d_inner 1536, d_state 16, L 4096 (--quick: small),
  * channel-summed map [b, L, L] over all channels (reduce="sum"), Triton and the chunked PyTorch
    implementation (on the same GPU);
  * full per-channel map [b, 64, L, L] for 64 channels, Triton and chunked PyTorch;
  * the materialising method (the [b, c, d_state, L, L] tensor of every term): its size against the
    card's memory. It is not attempted when it cannot fit.
Peak memory is torch.cuda.max_memory_allocated() during the call minus what was allocated before
(the inputs). Times: median of triton.testing.do_bench for Triton (after the first, compiling call); one call
timed with CUDA events for PyTorch (seconds long; no compilation).

Usage (device): python benchmarks/effective_attention.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


def measure(fn):
    """(ms of this one call timed with CUDA events, peak extra bytes, result) of fn()."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    out = fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end), torch.cuda.max_memory_allocated() - base, out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    p.add_argument("--json", help="also write the numbers to this JSON file")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/effective_attention.py needs a GPU", file=sys.stderr)
        return 2
    from triton.testing import do_bench

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
        _, m_tri, tri = measure(run_tri)          # first call compiles; its peak memory is what counts
        t_tri = do_bench(run_tri, warmup=3, rep=100, return_mode="median")
        t_pt, m_pt, ref = measure(lambda: effective_attention_torch(delta, A, B, C, bias, True, channels=ch,
                                                                    reduce=reduce))
        err = ((tri.double() - ref.double()).norm() / ref.double().norm()).item()
        del tri, ref
        rows.append(dict(case=label, channels=n_chan, reduce=reduce, out_gb=out_bytes / 1e9,
                         triton_ms=t_tri, triton_peak_gb=m_tri / 1e9, torch_ms=t_pt, torch_peak_gb=m_pt / 1e9,
                         rel_err_triton_vs_torch=err))
    materialise = batch * d_inner * d_state * L * L * 4

    print(f"\n# effective attention on {dev} ({card / 2**30:.0f} GiB): batch {batch}, d_inner {d_inner}, "
          f"d_state {d_state}, L {L}, fp32")
    hdr = ("case", "output GB", "Triton ms", "Triton peak GB", "PyTorch chunked ms", "PyTorch peak GB",
           "PyTorch/Triton", "rel err")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for r in rows:
        print(f"| {r['case']} | {r['out_gb']:.2f} | {r['triton_ms']:.1f} | {r['triton_peak_gb']:.2f} | "
              f"{r['torch_ms']:.1f} | {r['torch_peak_gb']:.2f} | {r['torch_ms'] / r['triton_ms']:.0f}x | "
              f"{r['rel_err_triton_vs_torch']:.1e} |")
    fits = materialise < card
    print(f"| materialise [b, c, n, L, L] fp32 | {materialise / 1e9:.0f} | "
          f"{'fits' if fits else 'cannot run'} | {materialise / card:.2g}x the card's memory "
          "| - | - | - | - |")
    if not fits:
        print(f"(the materialising method needs {materialise / 1e9:.0f} GB for one tensor, "
              f"{materialise / card:.0f}x the {card / 1e9:.0f} GB on this card: not attempted)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=dev, card_bytes=card, batch=batch, d_inner=d_inner, d_state=d_state, L=L,
                           rows=rows, materialise_bytes=materialise, materialise_fits=fits), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
