"""Forward-pass speed of HookedMamba against mamba_ssm's MambaLMHeadModel (same weights), on a GPU.

Prints one table of ratios from a single run (targets from issue #2):
  * hooks off             HookedMamba / MambaLMHeadModel           target <= 1.10x
  * run_with_cache        full cache, no states / MambaLMHeadModel target <= 1.60x
  * listed states         run_with_cache with hook_ssm_state at --state-positions evenly spaced
                          positions (every other hook cached too) / MambaLMHeadModel
                          (issue #17, Mamba-2 at d_model 1024, 4 layers, L 4096, batch 4: target <= 1.3x)
  * all-position states   (Mamba-1) naive per-timestep loop (on cached u, dt, B, C) / the cost our cache
                          adds for all-position states                  target >= 50x faster
                          (the end-to-end ratio, forward + loop vs our forward with states, is printed too)

Usage (device): python benchmarks/forward.py [--mixer mamba1|mamba2] [--quick] [--json PATH]
                [--d-model 768] [--layers 4] [--batch 8] [--lengths 512 2048] [--state-positions 16]
Issue #17's setting: python benchmarks/forward.py --mixer mamba2 --d-model 1024 --layers 4 --batch 4 --lengths 4096
"""

from __future__ import annotations

import sys
import time

import torch

try:  # run as a script: this folder is on sys.path
    from _timing import add_quick_json, gpu_missing, median_ms, parser, print_table, spaced_positions, write_json
except ImportError:  # imported as benchmarks.forward
    from benchmarks._timing import (add_quick_json, gpu_missing, median_ms, parser, print_table, spaced_positions,
                                    write_json)


def bench(fn, warmup=3, reps=10):
    """Median wall time (ms) of fn() with CUDA synchronisation around each call."""
    return median_ms(fn, warmup, reps)


def naive_state_loop(cache, model):
    """The TransformerLens-bridge method: a Python loop over time steps per layer, stacking h_t."""
    out = []
    for i, block in enumerate(model.blocks):
        m = block.mixer
        u, dt = cache[f"blocks.{i}.mixer.hook_conv_act"], cache[f"blocks.{i}.mixer.hook_dt"]
        B = cache[f"blocks.{i}.mixer.hook_B"]
        A = m.A
        h = torch.zeros(u.shape[0], u.shape[2], A.shape[1], device=u.device)
        hs = []
        for t in range(u.shape[1]):
            h = torch.exp(dt[:, t, :, None] * A) * h + dt[:, t, :, None] * B[:, t, None, :] * u[:, t, :, None]
            hs.append(h)
        out.append(torch.stack(hs, 1))
    return out


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--mixer", default="mamba1", choices=["mamba1", "mamba2"])
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    p.add_argument("--state-positions", type=int, default=16,
                   help="evenly spaced positions whose states the 'listed states' row caches")
    add_quick_json(p)
    args = p.parse_args(argv)
    if gpu_missing("benchmarks/forward.py"):
        return 0
    from mamba_ssm.models.config_mamba import MambaConfig as SsmConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    from achilles_interp import HookedMamba, MambaConfig

    d_model, n_layer, batch = (256, 2, 2) if args.quick else (args.d_model, args.layers, args.batch)
    lengths = [128] if args.quick else args.lengths
    vocab = 50277
    ssm_cfg = {"layer": "Mamba1"} if args.mixer == "mamba1" else {"layer": "Mamba2", "d_state": 128}
    theirs = MambaLMHeadModel(SsmConfig(d_model=d_model, n_layer=n_layer, vocab_size=vocab, ssm_cfg=ssm_cfg,
                                        pad_vocab_size_multiple=8),
                              device="cuda", dtype=torch.float32).eval()
    cfg = MambaConfig(d_model=d_model, n_layers=n_layer, vocab_size=vocab, mixer=args.mixer,
                      d_state=16 if args.mixer == "mamba1" else 128, pad_vocab_size_multiple=8)
    ours = HookedMamba(cfg, backend="cuda").cuda().eval()
    ours.load_state_dict(theirs.state_dict())
    rows = []
    for L in lengths:
        tokens = torch.randint(0, vocab, (batch, L), device="cuda")
        with torch.no_grad():
            ref = theirs(tokens).logits[..., :vocab]
            err = ((ours(tokens) - ref).norm() / ref.norm()).item()
            t_ref = bench(lambda: theirs(tokens))
            t_off = bench(lambda: ours(tokens))
            t_cache = bench(lambda: ours.run_with_cache(tokens))
            listed = spaced_positions(L, args.state_positions)
            t_listed = bench(lambda: ours.run_with_cache(tokens, ssm_state_positions=listed), warmup=1, reps=5)
            row = dict(L=L, batch=batch, rel_err=err, mamba_ssm_ms=t_ref, hooks_off_ms=t_off,
                       run_with_cache_ms=t_cache, hooks_off_ratio=t_off / t_ref, cache_ratio=t_cache / t_ref,
                       state_positions=len(listed), listed_states_ms=t_listed, listed_states_ratio=t_listed / t_ref)
            if args.mixer == "mamba1":
                names = lambda n: n.endswith(("hook_ssm_state", "hook_conv_act", "hook_dt", "hook_B", "hook_C"))  # noqa: E731
                t_states = bench(lambda: ours.run_with_cache(tokens, names_filter=names, ssm_state_positions="all"),
                                 warmup=1, reps=5)
                # the same cache without states: what the naive method needs before its loop
                inputs_only = lambda n: names(n) and not n.endswith("hook_ssm_state")  # noqa: E731
                t_inputs = bench(lambda: ours.run_with_cache(tokens, names_filter=inputs_only), warmup=1, reps=5)
                _, cache = ours.run_with_cache(tokens, names_filter=names, ssm_state_positions="all")
                naive = naive_state_loop(cache, ours)
                s_err = max(((cache[f"blocks.{i}.mixer.hook_ssm_state"] - naive[i]).norm() / naive[i].norm()).item()
                            for i in range(n_layer))
                del naive
                t0 = time.perf_counter()
                torch.cuda.synchronize()
                for _ in range(2):
                    naive_state_loop(cache, ours)
                torch.cuda.synchronize()
                t_naive = (time.perf_counter() - t0) / 2 * 1e3
                state_cost = max(t_states - t_inputs, 1e-3)
                row.update(states_ms=t_states, inputs_cache_ms=t_inputs, naive_loop_ms=t_naive,
                           state_cost_ms=state_cost, states_speedup=t_naive / state_cost,
                           end_to_end_speedup=(t_inputs + t_naive) / t_states, states_rel_err=s_err)
                del cache
            rows.append(row)
            torch.cuda.empty_cache()
    print(f"\nHookedMamba ({args.mixer}) vs mamba_ssm MambaLMHeadModel, d_model {d_model}, {n_layer} layers, "
          f"batch {batch}, fp32, {torch.cuda.get_device_name()}")
    header = ("L", "logits rel.err", "mamba_ssm ms", "hooks off ms (ratio, target <=1.10)",
              "run_with_cache ms (ratio, target <=1.60)",
              f"+ states at {args.state_positions} positions ms (ratio; Mamba-2 target <=1.3)",
              "state cost ms: our all-pos cache minus the same cache without states",
              "naive loop ms (speed-up on the state cost, target >=50; end to end)")

    def cells(r):
        states = [f"{r['state_cost_ms']:.1f} ({r['states_ms']:.1f} - {r['inputs_cache_ms']:.1f})",
                  f"{r['naive_loop_ms']:.0f} ({r['states_speedup']:.0f}x; {r['end_to_end_speedup']:.1f}x end to end, "
                  f"state rel.err {r['states_rel_err']:.1e})"] if "states_ms" in r else ["n/a", "n/a"]
        return [str(r["L"]), f"{r['rel_err']:.1e}", f"{r['mamba_ssm_ms']:.2f}",
                f"{r['hooks_off_ms']:.2f} ({r['hooks_off_ratio']:.2f}x)",
                f"{r['run_with_cache_ms']:.2f} ({r['cache_ratio']:.2f}x)",
                f"{r['listed_states_ms']:.2f} ({r['listed_states_ratio']:.2f}x)", *states]
    print_table(header, [cells(r) for r in rows])
    write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
