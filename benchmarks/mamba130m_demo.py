"""A pretrained-size demo on synthetic weights with the shape of `mamba-130m`.

d_model 768, 24 layers, vocab 50280, L 2048: one full `run_with_cache` (every hook) including the
SSM states at 64 chosen positions in every layer, on the GPU kernels. Prints its time and peak GPU
memory, next to a plain forward. (No weights are downloaded: the numbers depend on shapes, not
values.)

Usage (device): python benchmarks/mamba130m_demo.py [--batch 1] [--json PATH]
"""

from __future__ import annotations

import sys

import torch

try:  # run as a script: this folder is on sys.path
    from _timing import gpu_missing, parser, print_table, spaced_positions, timed, write_json
except ImportError:  # imported as benchmarks.mamba130m_demo
    from benchmarks._timing import gpu_missing, parser, print_table, spaced_positions, timed, write_json


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--positions", type=int, default=64, help="state positions cached per layer")
    p.add_argument("--json")
    args = p.parse_args(argv)
    if gpu_missing("benchmarks/mamba130m_demo.py"):
        return 0
    from achilles_interp import HookedMamba, MambaConfig

    cfg = MambaConfig(d_model=768, n_layers=24, vocab_size=50277, pad_vocab_size_multiple=8)
    model = HookedMamba(cfg).cuda().eval()
    tokens = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len), device="cuda")
    positions = spaced_positions(args.seq_len, args.positions)

    with torch.no_grad():
        t_fwd, m_fwd = timed(lambda: model(tokens))
        t_cache, m_cache = timed(lambda: model.run_with_cache(tokens, ssm_state_positions=positions))
        m_fwd, m_cache = m_fwd / 2**30, m_cache / 2**30
        _, cache = model.run_with_cache(tokens, ssm_state_positions=positions)
        n_entries = len(cache.keys())
        state_shape = tuple(cache["blocks.0.mixer.hook_ssm_state"].shape)
        cache_gb = sum(v.numel() * v.element_size() for v in cache.values()) / 2**30
    res = dict(device=torch.cuda.get_device_name(), batch=args.batch, seq_len=args.seq_len,
               positions_per_layer=args.positions, forward_ms=t_fwd, forward_peak_gb=m_fwd,
               run_with_cache_ms=t_cache, run_with_cache_peak_gb=m_cache, cache_entries=n_entries,
               cache_gb=cache_gb, state_shape_per_layer=state_shape)
    print(f"\nmamba-130m-shaped model (d_model 768, 24 layers), batch {args.batch}, L {args.seq_len}, fp32, "
          f"{res['device']}")
    print_table(("run", "time ms", "peak extra GPU memory GB"), [
        ("forward, no hooks (fused kernels)", f"{t_fwd:.1f}", f"{m_fwd:.2f}"),
        (f"run_with_cache, every hook + states at {args.positions} positions x 24 layers "
         f"({n_entries} entries, {cache_gb:.2f} GB; state {state_shape})", f"{t_cache:.1f}", f"{m_cache:.2f}"),
    ])
    write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
