"""HookedMamba at pretrained scale against mamba_ssm's MambaLMHeadModel (same weights, same run), on a GPU.

Two shapes with synthetic weights, bf16 (A_log, D, dt_bias fp32, as mamba_ssm keeps them):
  * mamba-2.8b:  Mamba-1, d_model 2560, 64 layers, d_state 16, vocab 50280
  * mamba2-2.7b: Mamba-2, d_model 2560, 64 layers, d_state 128, headdim 64, vocab 50288

At L 2048 (batch 1 by default), each of
  * forward          HookedMamba(tokens), no hooks (the fused kernels)
  * run_with_cache   every hook cached (no states)
  * cache + states   every hook cached and hook_ssm_state at 64 positions
  * decode           ms per new token after a 2048-token prompt (ours: InferenceState steps;
                     theirs: MambaLMHeadModel.generate without CUDA graphs)
gives the median time (CUDA events) and the peak memory above the weights, and both as ratios to
MambaLMHeadModel's forward (decode: to its own decode). Logits' relative error to MambaLMHeadModel
is printed too.

Without a GPU (or without the mamba-ssm kernels) it prints why and exits 0.

Usage (device): python benchmarks/pretrained_scale.py [--models mamba-2.8b mamba2-2.7b] [--seq-len 2048]
                [--batch 1] [--positions 64] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time

import torch

try:  # run as a script: this folder is on sys.path
    from _timing import gpu_missing, measure, median_ms, spaced_positions
except ImportError:  # imported as benchmarks.pretrained_scale
    from benchmarks._timing import gpu_missing, measure, median_ms, spaced_positions

SHAPES = {
    "mamba-2.8b": dict(mixer="mamba1", d_model=2560, n_layers=64, d_state=16, vocab=50277, pad=8),
    "mamba2-2.7b": dict(mixer="mamba2", d_model=2560, n_layers=64, d_state=128, vocab=50277, pad=16),
}


def bench(fn, warmup=2, reps=5):
    """(median ms of ``reps`` calls after ``warmup``, peak bytes of one more call above what was
    allocated before it) of fn(); results dropped, caches emptied before and after the memory call."""
    ms = median_ms(fn, warmup, reps)
    gc.collect()
    _, peak, out = measure(fn)
    del out
    gc.collect()
    torch.cuda.empty_cache()
    return ms, peak


def build(name: str, quick: bool):
    """(theirs: MambaLMHeadModel, ours: HookedMamba with its weights), bf16 on the GPU."""
    from mamba_ssm.models.config_mamba import MambaConfig as SsmConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    from achilles_interp import HookedMamba, MambaConfig
    from achilles_interp.loading import to_dtype

    s = dict(SHAPES[name])
    if quick:
        s.update(d_model=256, n_layers=4)
    ssm_cfg = {"layer": "Mamba1"} if s["mixer"] == "mamba1" else {"layer": "Mamba2", "d_state": s["d_state"]}
    torch.manual_seed(0)
    theirs = MambaLMHeadModel(SsmConfig(d_model=s["d_model"], n_layer=s["n_layers"], vocab_size=s["vocab"],
                                        ssm_cfg=ssm_cfg, pad_vocab_size_multiple=s["pad"]),
                              device="cuda", dtype=torch.bfloat16).eval()
    cfg = MambaConfig(d_model=s["d_model"], n_layers=s["n_layers"], vocab_size=s["vocab"], mixer=s["mixer"],
                      d_state=s["d_state"], pad_vocab_size_multiple=s["pad"])
    with torch.device("cuda"):
        ours = HookedMamba(cfg, backend="cuda")
    ours = to_dtype(ours, torch.bfloat16).eval()
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours, s


def run_model(name: str, args) -> dict:
    theirs, ours, shape = build(name, args.quick)
    L = 256 if args.quick else args.seq_len
    tokens = torch.randint(0, shape["vocab"], (args.batch, L), device="cuda")
    positions = spaced_positions(L, args.positions)
    row = dict(model=name, mixer=shape["mixer"], d_model=shape["d_model"], n_layers=shape["n_layers"], L=L,
               batch=args.batch, weights_gib=sum(p.numel() * p.element_size() for p in ours.parameters()) / 2**30)
    with torch.no_grad():
        ref = theirs(tokens).logits[..., : shape["vocab"]].float()
        row["logits_rel_err"] = ((ours(tokens).float() - ref).norm() / ref.norm()).item()
        del ref
        cases = {
            "mamba_ssm": lambda: theirs(tokens).logits,
            "forward": lambda: ours(tokens),
            "run_with_cache": lambda: ours.run_with_cache(tokens),
            "cache_states": lambda: ours.run_with_cache(tokens, ssm_state_positions=positions),
        }
        for case, fn in cases.items():
            ms, peak = bench(fn, reps=3 if case != "forward" and case != "mamba_ssm" else 5)
            row[f"{case}_ms"], row[f"{case}_peak_gib"] = ms, peak / 2**30
            print(f"  {name} {case}: {ms:.1f} ms, peak {peak / 2**30:.2f} GiB", flush=True)
        for case in ("forward", "run_with_cache", "cache_states"):
            row[f"{case}_time_ratio"] = row[f"{case}_ms"] / row["mamba_ssm_ms"]
            row[f"{case}_mem_ratio"] = row[f"{case}_peak_gib"] / max(row["mamba_ssm_peak_gib"], 1e-9)
        row.update(decode(theirs, ours, tokens, args.new_tokens))
    return row


def decode(theirs, ours, tokens, n_new: int) -> dict:
    """ms per generated token after the prompt (greedy), ours vs MambaLMHeadModel.generate (no CUDA graphs)."""
    out = {}
    try:
        def ours_gen():
            return ours.generate(tokens, max_new_tokens=n_new, stop_at_eos=False)

        def theirs_gen():
            return theirs.generate(tokens, max_length=tokens.shape[1] + n_new, cg=False)

        for name, fn, prompt in (("ours", ours_gen, lambda: ours(tokens)), ("mamba_ssm", theirs_gen,
                                                                           lambda: theirs(tokens).logits)):
            fn()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            total = time.perf_counter() - t0
            t0 = time.perf_counter()
            prompt()
            torch.cuda.synchronize()
            pre = time.perf_counter() - t0
            out[f"decode_{name}_ms_per_token"] = max(total - pre, 0.0) / n_new * 1e3
        out["decode_time_ratio"] = out["decode_ours_ms_per_token"] / out["decode_mamba_ssm_ms_per_token"]
    except Exception as e:  # report, keep the other numbers
        out["decode_error"] = f"{type(e).__name__}: {e}"
        print(f"  decode: {out['decode_error']}", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--positions", type=int, default=64, help="state positions cached in 'cache + states'")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens generated in the decode timing")
    p.add_argument("--quick", action="store_true", help="4 layers of d_model 256 at L 256: a smoke test")
    p.add_argument("--json", help="also write the numbers to this JSON file")
    args = p.parse_args(argv)
    if gpu_missing("benchmarks/pretrained_scale.py"):
        return 0
    try:
        import mamba_ssm  # noqa: F401
        from achilles_interp.kernels.cuda_ops import kernels_available
    except Exception as e:
        print(f"benchmarks/pretrained_scale.py: mamba_ssm does not import ({type(e).__name__}: {e}); skipped")
        return 0
    if not kernels_available():
        print("benchmarks/pretrained_scale.py: the mamba-ssm / causal-conv1d kernels are unavailable; skipped")
        return 0
    rows = []
    for name in args.models:
        rows.append(run_model(name, args))
        gc.collect()
        torch.cuda.empty_cache()
    print(f"\nHookedMamba vs mamba_ssm MambaLMHeadModel, bf16, batch {args.batch}, {torch.cuda.get_device_name()}; "
          "time = median ms; memory = peak GiB above the weights; ratios to MambaLMHeadModel's forward")
    print("| model | L | logits rel.err | mamba_ssm fwd ms / GiB | forward (ratio) | run_with_cache (ratio) | "
          f"cache + states at {args.positions} positions (ratio) | decode ms/token ours / mamba_ssm |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = []
        for case in ("forward", "run_with_cache", "cache_states"):
            cells.append(f"{r[case + '_ms']:.1f} ms ({r[case + '_time_ratio']:.2f}x), {r[case + '_peak_gib']:.2f} GiB "
                         f"({r[case + '_mem_ratio']:.1f}x)")
        dec = (f"{r['decode_ours_ms_per_token']:.1f} / {r['decode_mamba_ssm_ms_per_token']:.1f} "
               f"({r['decode_time_ratio']:.1f}x)") if "decode_time_ratio" in r else r.get("decode_error", "n/a")
        print(f"| {r['model']} | {r['L']} | {r['logits_rel_err']:.1e} | {r['mamba_ssm_ms']:.1f} / "
              f"{r['mamba_ssm_peak_gib']:.2f} | " + " | ".join(cells) + f" | {dec} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
