"""All-position SSM states on the GPU: Triton kernels vs the alternatives, Mamba-1 or Mamba-2.

Prints one table from a single run. ``--mixer mamba1`` (default; targets from issue #5):
  * states kernel ("all" states) / selective_scan_fn (same y, no states; the floor)   target <= 3x
  * per-timestep PyTorch loop (TransformerLens-bridge method) / states kernel      target >= 100x
  * achieved GB/s of the state writes vs this card's device-to-device copy bandwidth, measured in
    the same run (a copy moves 2 bytes per byte copied: read + write; both counted)
``--mixer mamba2`` (issue #17): ssd_scan_states (chunked SSD scan emitting states) with
  * "all" states / mamba_chunk_scan_combined (same y, no states)                     target <= 2x
  * per-timestep PyTorch loop / "all" states                                        target >= 100x
  * state-write GB/s vs copy bandwidth, as above. Sizes: d_inner 1536 (24 heads of 64), d_state 128,
    one group, chunk 256 (Mamba-2 defaults); --d-state / --headdim / --chunk-size change them.

Timings are medians of triton.testing.do_bench (L2 flushed between runs); the per-timestep loop is
timed with CUDA events (median of 3 after a warm-up) at the full length unless --loop-len is given,
in which case it is scaled linearly to L and marked as such.

Usage (device): python benchmarks/states.py [--mixer mamba1|mamba2] [--quick] [--json PATH] [--sweep]
"""

from __future__ import annotations

import functools
import sys

import torch
import torch.nn.functional as F

try:  # run as a script: this folder is on sys.path
    from _timing import (add_quick_json, gpu_missing, graph_timer, median_ms, parser, print_table, spaced_positions,
                         write_json)
except ImportError:  # imported as benchmarks.states
    from benchmarks._timing import (add_quick_json, gpu_missing, graph_timer, median_ms, parser, print_table,
                                    spaced_positions, write_json)

N_LISTED = 16   # positions of the "listed states" timing


def setup(args, do_bench):
    """(copy bandwidth GB/s, device name, the kernel timer: median of do_bench) of a run."""
    bw = copy_bandwidth_gbs(do_bench, (256 << 20) if args.quick else (4 << 30))

    def bench(fn):
        return do_bench(fn, warmup=25, rep=200, return_mode="median")
    return bw, torch.cuda.get_device_name(), bench


def loop_check(loop, args_upto, st_all, L, loop_len):
    """The per-timestep loop on the first loop_L = min(L, loop_len) tokens (L without loop_len), built by
    ``args_upto(loop_L)``: (loop_L, those arguments, the relative error of the states st_all there)."""
    loop_L = min(L, loop_len) if loop_len else L
    loop_args = args_upto(loop_L)
    _, st_loop = loop(*loop_args)
    return loop_L, loop_args, ((st_all[:, :loop_L] - st_loop).norm() / st_loop.norm()).item()


TAIL_HEADER = ("loop ms", "loop/all", "states GB", "write GB/s", "% copy bw", "y err", "h err")


def print_report(title, bw, header, rows, head_cells, y_err):
    """The table of a run: ``header`` + TAIL_HEADER; a row's cells are ``head_cells(r)`` then the loop time
    (scaled to L where --loop-len was shorter), loop / all states, the states' size and write bandwidth,
    that as a share of the copy bandwidth bw, r[y_err] and the states' error."""
    print(title)
    print(f"# device-to-device copy bandwidth (read + write bytes): {bw:.0f} GB/s")

    def tail(r):
        loop = f"{r['t_loop_ms']:.1f}"
        if r["loop_len"] != r["L"]:
            loop += f" (L={r['loop_len']} x{r['L'] // r['loop_len']})"
        return [loop, f"{r['t_loop_ms'] / r['t_all_states_ms']:.0f}x", f"{r['state_gb']:.2f}",
                f"{r['state_write_gbs']:.0f}", f"{100 * r['state_write_gbs'] / bw:.0f}%", f"{r[y_err]:.1e}",
                f"{r['states_rel_err_vs_loop']:.1e}"]
    print_table(header + TAIL_HEADER, [head_cells(r) + tail(r) for r in rows])


def copy_bandwidth_gbs(do_bench, n_bytes=2 << 30):
    """Device-to-device copy bandwidth in GB/s, counting bytes read + bytes written."""
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), return_mode="median")
    return 2 * n_bytes / (ms * 1e-3) / 1e9


def per_timestep_loop(u, delta, A, B, C, D, delta_bias):
    """The TransformerLens-bridge method: h = exp(dt A) h + dt B u in a Python loop, stacking h_t."""
    dt = F.softplus(delta + delta_bias[:, None])                    # [b, d, L]
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], device=u.device)
    hs = []
    for t in range(u.shape[2]):
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]
        hs.append(h)
    states = torch.stack(hs, 1)                                     # [b, L, d, n]
    y = torch.einsum("bldn,bnl->bdl", states, C) + D[:, None] * u
    return y, states


def make_inputs(batch, d_inner, d_state, L, dtype=torch.float32):
    g = torch.Generator(device="cuda").manual_seed(0)
    u = torch.randn(batch, d_inner, L, device="cuda", generator=g).to(dtype)
    delta = (0.5 * torch.randn(batch, d_inner, L, device="cuda", generator=g) - 2.0).to(dtype)
    A = -torch.exp(0.5 * torch.randn(d_inner, d_state, device="cuda", generator=g))
    B = torch.randn(batch, d_state, L, device="cuda", generator=g).to(dtype)
    C = torch.randn(batch, d_state, L, device="cuda", generator=g).to(dtype)
    D = torch.randn(d_inner, device="cuda", generator=g)
    delta_bias = 0.1 * torch.randn(d_inner, device="cuda", generator=g)
    return u, delta, A, B, C, D, delta_bias


def bench_length(L, batch, d_inner, d_state, n_listed, loop_len, bench):
    """One table row: every timing and the correctness spot checks at sequence length L."""
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    from achilles_interp.kernels.triton_scan import selective_scan_states

    u, delta, A, B, C, D, bias = make_inputs(batch, d_inner, d_state, L)
    state_bytes = batch * L * d_inner * d_state * 4
    pos = spaced_positions(L, n_listed)
    tm = [x.transpose(1, 2).contiguous().transpose(1, 2) for x in (u, delta, B, C)]   # model layout
    hb = [x.bfloat16() for x in (u, delta, B, C)]

    def ours(u_, delta_, B_, C_, positions):
        return selective_scan_states(u_, delta_, A, B_, C_, D, bias, True, state_positions=positions)

    with torch.no_grad():
        t_ref = bench(lambda: selective_scan_fn(u, delta, A, B, C, D, z=None, delta_bias=bias,
                                                delta_softplus=True))
        t_y = bench(lambda: ours(u, delta, B, C, None))
        t_all = bench(lambda: ours(u, delta, B, C, "all"))
        t_list = bench(lambda: ours(u, delta, B, C, pos))
        t_all_tm = bench(lambda: ours(*tm, "all"))
        t_all_bf16 = bench(lambda: ours(*hb, "all"))
        # correctness spot checks: y against selective_scan_fn, states against the loop
        y_ref = selective_scan_fn(u, delta, A, B, C, D, z=None, delta_bias=bias, delta_softplus=True)
        y_all, st_all, _ = ours(u, delta, B, C, "all")
        y_err = ((y_all - y_ref).norm() / y_ref.norm()).item()
        loop_L, loop_args, st_err = loop_check(
            per_timestep_loop, lambda n: (u[..., :n], delta[..., :n], A, B[..., :n], C[..., :n], D, bias),
            st_all, L, loop_len)
        del st_all, y_all, y_ref
        t_loop = median_ms(lambda: per_timestep_loop(*loop_args)) * (L / loop_L)
    torch.cuda.empty_cache()
    return dict(L=L, t_selective_scan_fn_ms=t_ref, t_y_only_ms=t_y, t_all_states_ms=t_all,
                t_listed_states_ms=t_list, n_listed=len(pos), t_all_states_time_major_ms=t_all_tm,
                t_all_states_bf16_ms=t_all_bf16, t_loop_ms=t_loop, loop_len=loop_L,
                state_gb=state_bytes / 1e9, state_write_gbs=state_bytes / (t_all * 1e-3) / 1e9,
                y_rel_err_vs_selective_scan_fn=y_err, states_rel_err_vs_loop=st_err)


def sweep_configs(L, batch, d_inner, d_state, bench):
    """Time (BLOCK_D, num_warps) choices for y only and for all states."""
    from achilles_interp.kernels import triton_scan

    u, delta, A, B, C, D, bias = make_inputs(batch, d_inner, d_state, L)
    default = triton_scan._default_config(d_inner, d_state)
    print(f"\n# sweep at L={L} (default BLOCK_D, num_warps = {default}): ms, y-only / all states")
    out = []
    for block_d in (2, 4, 8, 16, 32):
        for warps in (1, 2, 4):
            if block_d * 16 < 32 * warps:
                continue

            def run(positions):
                return triton_scan._scan_impl(u, delta, A, B, C, D, bias, True, None, positions,
                                              block_d=block_d, num_warps=warps)
            with torch.no_grad():
                ty, ta = bench(lambda: run(None)), bench(lambda: run("all"))
            out.append(dict(block_d=block_d, num_warps=warps, t_y_only_ms=ty, t_all_states_ms=ta))
            print(f"BLOCK_D={block_d:3d} warps={warps}: {ty:.3f} / {ta:.3f}")
    return out


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--mixer", choices=("mamba1", "mamba2"), default="mamba1",
                   help="mamba1: selective_scan_states; mamba2: ssd_scan_states")
    add_quick_json(p)
    p.add_argument("--sweep", action="store_true",
                   help="also time BLOCK_D (mamba1) / BLOCK_P (mamba2) x num_warps configurations")
    p.add_argument("--loop-len", type=int, default=None,
                   help="time the per-timestep loop at this length and scale linearly to L")
    p.add_argument("--d-state", type=int, default=None, help="mamba2: d_state (default 128)")
    p.add_argument("--headdim", type=int, default=64, help="mamba2: head dimension (default 64)")
    p.add_argument("--chunk-size", type=int, default=256, help="mamba2: chunk size (default 256)")
    args = p.parse_args(argv)
    if gpu_missing("benchmarks/states.py"):
        return 0
    from triton.testing import do_bench

    if args.mixer == "mamba2":
        return main_mamba2(args, do_bench)

    batch, d_inner, d_state = (2, 256, 16) if args.quick else (4, 1536, 16)
    lengths = [256] if args.quick else [512, 2048]
    bw, dev, bench = setup(args, do_bench)
    rows = [bench_length(L, batch, d_inner, d_state, N_LISTED, args.loop_len, bench) for L in lengths]
    results = dict(device=dev, batch=batch, d_inner=d_inner, d_state=d_state, copy_bandwidth_gbs=bw,
                   rows=rows)

    title = (f"\n# selective_scan_states (Triton) on {dev}: batch {batch}, d_inner {d_inner}, "
             f"d_state {d_state}, fp32 inputs unless noted, delta_softplus, D; medians of do_bench")
    header = ("L", "scan_fn ms", "y-only ms", "all ms", "all/scan_fn", f"{N_LISTED} pos ms", "all t-major ms",
              "all bf16 ms")

    def cells(r):
        return [str(r["L"]), f"{r['t_selective_scan_fn_ms']:.3f}", f"{r['t_y_only_ms']:.3f}",
                f"{r['t_all_states_ms']:.3f}", f"{r['t_all_states_ms'] / r['t_selective_scan_fn_ms']:.2f}x",
                f"{r['t_listed_states_ms']:.3f}", f"{r['t_all_states_time_major_ms']:.3f}",
                f"{r['t_all_states_bf16_ms']:.3f}"]
    print_report(title, bw, header, rows, cells, "y_rel_err_vs_selective_scan_fn")
    print("targets: all/scan_fn <= 3x; loop/all >= 100x")

    if args.sweep:
        results["sweep"] = sweep_configs(lengths[-1], batch, d_inner, d_state, bench)
    write_json(args.json, results)
    return 0


# ---------------------------------------------------------------------------------------------
# Mamba-2 (SSD)
# ---------------------------------------------------------------------------------------------
def ssd_per_timestep_loop(x, dt, A, B, C, D, dt_bias):
    """The per-timestep method for Mamba-2: h = exp(dt A) h + dt x B^T in a Python loop, stacking h_t."""
    dt = F.softplus(dt + dt_bias)                                   # [b, L, h]
    batch, L, H, P = x.shape
    rep = H // B.shape[2]
    Bh, Ch = B.repeat_interleave(rep, 2), C.repeat_interleave(rep, 2)
    h = torch.zeros(batch, H, P, B.shape[3], device=x.device)
    hs = []
    for t in range(L):
        h = (torch.exp(dt[:, t, :, None, None] * A[:, None, None]) * h
             + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :])
        hs.append(h)
    states = torch.stack(hs, 1)                                     # [b, L, h, p, n]
    y = torch.einsum("blhpn,blhn->blhp", states, Ch) + D[:, None] * x
    return y, states


def ssd_make_inputs(batch, L, nheads, headdim, ngroups, d_state, dtype=torch.float32):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(batch, L, nheads, headdim, device="cuda", generator=g).to(dtype)
    dt = (0.5 * torch.randn(batch, L, nheads, device="cuda", generator=g) - 2.0).to(dtype)
    A = -torch.exp(0.5 * torch.randn(nheads, device="cuda", generator=g))
    B = torch.randn(batch, L, ngroups, d_state, device="cuda", generator=g).to(dtype)
    C = torch.randn(batch, L, ngroups, d_state, device="cuda", generator=g).to(dtype)
    D = torch.randn(nheads, device="cuda", generator=g)
    dt_bias = 0.1 * torch.randn(nheads, device="cuda", generator=g)
    return x, dt, A, B, C, D, dt_bias


@functools.lru_cache(maxsize=None)
def _mamba_chunk_scan_combined():
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception as e:  # not installed, or its compiled extension fails to load
        print(f"(mamba_ssm's mamba_chunk_scan_combined does not import: {type(e).__name__}: {e}; "
              "its columns are n/a)", file=sys.stderr)
        return None
    return mamba_chunk_scan_combined


def ssd_bench_length(L, batch, nheads, headdim, d_state, chunk, n_listed, loop_len, bench, graph_bench):
    """One table row for Mamba-2 at sequence length L. ``graph_bench`` times a function replayed as one CUDA
    graph: the GPU's time alone, without the Python launch cost that do_bench includes (mcsc launches five
    Triton kernels and several torch ops per call; its do_bench time varied 2.5x between device runs, where
    ours stayed within 2%)."""
    from achilles_interp.kernels.ssd_states import ssd_scan_states, ssd_states_at

    mcsc = _mamba_chunk_scan_combined()
    x, dt, A, B, C, D, bias = ssd_make_inputs(batch, L, nheads, headdim, 1, d_state)
    state_bytes = batch * L * nheads * headdim * d_state * 4
    pos = spaced_positions(L, n_listed)
    hb = [t.bfloat16() for t in (x, dt, B, C)]

    def ours(x_, dt_, B_, C_, positions):
        return ssd_scan_states(x_, dt_, A, B_, C_, chunk, D, bias, True, state_positions=positions)

    def ref():
        return mcsc(x, dt, A, B, C, chunk, D=D, z=None, dt_bias=bias, dt_softplus=True)

    nan = float("nan")
    with torch.no_grad():
        t_ref = bench(ref) if mcsc is not None else nan
        t_y = bench(lambda: ours(x, dt, B, C, None))
        t_all = bench(lambda: ours(x, dt, B, C, "all"))
        t_ref_graph = graph_bench(ref) if mcsc is not None else nan
        t_all_graph = graph_bench(lambda: ours(x, dt, B, C, "all"))
        t_list = bench(lambda: ours(x, dt, B, C, pos))
        # the CUDA backend's way to a few states: mcsc's y, then the states alone (ops.CudaOps.ssd_scan)
        t_at = bench(lambda: ssd_states_at(x, dt, A, B, chunk, pos, bias, True))
        # as ops.CudaOps.ssd_scan calls it (kernels/cuda_ops.ssd_scan_cuda asks for the final state too)
        t_list_mcsc = bench(lambda: (mcsc(x, dt, A, B, C, chunk, D=D, z=None, dt_bias=bias, dt_softplus=True,
                                          return_final_states=True),
                                     ssd_states_at(x, dt, A, B, chunk, pos, bias, True))) if mcsc is not None else nan
        t_all_bf16 = bench(lambda: ours(*hb, "all"))
        t_ref_again = bench(ref) if mcsc is not None else nan   # the peer once more: its spread within a run
        y_all, st_all, _ = ours(x, dt, B, C, "all")
        y_err = nan
        if mcsc is not None:
            y_ref = ref()
            y_err = ((y_all - y_ref).norm() / y_ref.norm()).item()
            del y_ref
        loop_L, loop_args, st_err = loop_check(
            ssd_per_timestep_loop, lambda n: (x[:, :n], dt[:, :n], A, B[:, :n], C[:, :n], D, bias), st_all, L, loop_len)
        del st_all, y_all
        torch.cuda.empty_cache()
        t_loop = median_ms(lambda: ssd_per_timestep_loop(*loop_args)) * (L / loop_L)
    torch.cuda.empty_cache()
    return dict(L=L, t_mamba_chunk_scan_combined_ms=t_ref, t_mamba_chunk_scan_combined_again_ms=t_ref_again,
                t_mamba_chunk_scan_combined_graph_ms=t_ref_graph, t_y_only_ms=t_y, t_all_states_ms=t_all,
                t_all_states_graph_ms=t_all_graph,
                t_listed_states_ms=t_list, n_listed=len(pos), t_states_at_ms=t_at, t_mcsc_plus_states_at_ms=t_list_mcsc,
                t_all_states_bf16_ms=t_all_bf16, t_loop_ms=t_loop,
                loop_len=loop_L, state_gb=state_bytes / 1e9, state_write_gbs=state_bytes / (t_all * 1e-3) / 1e9,
                y_rel_err_vs_mamba_chunk_scan_combined=y_err, states_rel_err_vs_loop=st_err)


def ssd_sweep_configs(L, batch, nheads, headdim, d_state, chunk, bench):
    """Time (BLOCK_P, num_warps) of the chunk-scan kernel for y only and for all states."""
    from achilles_interp.kernels import ssd_states

    x, dt, A, B, C, D, bias = ssd_make_inputs(batch, L, nheads, headdim, 1, d_state)
    default = ssd_states._default_config(headdim, d_state)
    print(f"\n# sweep at L={L} (default BLOCK_P, num_warps = {default}): ms, y-only / all states")
    out = []
    for block_p in (1, 2, 4, 8, 16, 32, 64):
        if block_p > headdim:
            continue
        for warps in (1, 2, 4, 8):
            if block_p * d_state < 32 * warps or block_p * d_state > 8192:
                continue

            def run(positions):
                return ssd_states._ssd_triton_impl(x, dt, A, B, C, chunk, D, bias, True, None, positions,
                                                   (0.0, float("inf")), block_p=block_p, num_warps=warps)
            with torch.no_grad():
                ty, ta = bench(lambda: run(None)), bench(lambda: run("all"))
            out.append(dict(block_p=block_p, num_warps=warps, t_y_only_ms=ty, t_all_states_ms=ta))
            print(f"BLOCK_P={block_p:3d} warps={warps}: {ty:.3f} / {ta:.3f}")
    return out


def main_mamba2(args, do_bench) -> int:
    d_state = args.d_state or 128
    headdim = args.headdim
    batch, d_inner = (1, 256) if args.quick else (4, 1536)
    nheads = d_inner // headdim
    chunk = args.chunk_size
    lengths = [256] if args.quick else [512, 1024, 2048]
    bw, dev, bench = setup(args, do_bench)
    graph_bench = graph_timer()
    rows = [ssd_bench_length(L, batch, nheads, headdim, d_state, chunk, N_LISTED, args.loop_len, bench, graph_bench)
            for L in lengths]
    results = dict(mixer="mamba2", device=dev, batch=batch, d_inner=d_inner, nheads=nheads, headdim=headdim,
                   ngroups=1, d_state=d_state, chunk_size=chunk, copy_bandwidth_gbs=bw, rows=rows)

    title = (f"\n# ssd_scan_states (Triton) on {dev}: batch {batch}, d_inner {d_inner} ({nheads} heads x {headdim}), "
             f"d_state {d_state}, 1 group, chunk {chunk}, fp32 inputs unless noted, dt_softplus, D; "
             "medians of do_bench")
    header = ("L", "mcsc ms (again)", "y-only ms", "all ms", "all/mcsc", "graphed: mcsc ms", "graphed: all ms (/mcsc)",
              f"{N_LISTED} pos ms", f"{N_LISTED} pos, states only ms", f"mcsc + {N_LISTED} pos states ms (/mcsc)",
              "all bf16 ms")

    def cells(r):
        mcsc_ms, g_mcsc, g_all = (r["t_mamba_chunk_scan_combined_ms"], r["t_mamba_chunk_scan_combined_graph_ms"],
                                  r["t_all_states_graph_ms"])
        return [str(r["L"]), f"{mcsc_ms:.3f} ({r['t_mamba_chunk_scan_combined_again_ms']:.3f})",
                f"{r['t_y_only_ms']:.3f}", f"{r['t_all_states_ms']:.3f}", f"{r['t_all_states_ms'] / mcsc_ms:.2f}x",
                f"{g_mcsc:.3f}", f"{g_all:.3f} ({g_all / g_mcsc:.2f}x)",
                f"{r['t_listed_states_ms']:.3f}", f"{r['t_states_at_ms']:.3f}",
                f"{r['t_mcsc_plus_states_at_ms']:.3f} ({r['t_mcsc_plus_states_at_ms'] / mcsc_ms:.2f}x)",
                f"{r['t_all_states_bf16_ms']:.3f}"]
    print_report(title, bw, header, rows, cells, "y_rel_err_vs_mamba_chunk_scan_combined")
    print("mcsc = mamba_ssm's mamba_chunk_scan_combined (y only, no states; nan where it does not import); "
          f"'{N_LISTED} pos': ssd_scan_states with y; 'states only': ssd_states_at; 'mcsc + states': the CUDA "
          "backend's path for a few positions; (again): mcsc timed once more at the row's end; 'graphed': "
          "one call replayed as a CUDA graph, the GPU's time without Python's launch cost")
    for r in rows:
        floor = r["state_gb"] / bw * 1e3                          # ms to write the states at copy bandwidth
        print(f"L {r['L']}: writing the {r['state_gb']:.2f} GB of fp32 states at the copy bandwidth takes "
              f"{floor:.3f} ms = {floor / r['t_mamba_chunk_scan_combined_ms']:.2f}x mcsc, "
              f"{floor / r['t_mamba_chunk_scan_combined_graph_ms']:.2f}x graphed mcsc (the floor of all/mcsc); "
              f"all states ran at {r['t_all_states_ms'] / floor:.2f}x that floor")
    print("targets: all/mcsc <= 2x; loop/all >= 100x")
    if args.sweep:
        results["sweep"] = ssd_sweep_configs(lengths[-1], batch, nheads, headdim, d_state, chunk, bench)
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
