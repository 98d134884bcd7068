"""Grid throughput on 1 GPU vs 2 GPUs through the Dask engine (GPU only; skips cleanly without).

    python benchmarks/grid_scaling.py                       # 8 paper-preset runs of 5 epochs
    python benchmarks/grid_scaling.py --runs 8 --epochs 5 --runs-per-gpu 2 --json scaling.json

Trains the same ``--runs`` runs (one cell, seeds 0..runs-1, the ``paper`` preset cut to
``--epochs`` epochs) twice with :func:`achilles_interp.training.distributed.run_specs`: on a
local cluster using the first GPU, then on one using the first two (``--runs-per-gpu`` workers
per GPU each). Each cluster is started and warmed up first (every worker imports torch,
initialises CUDA and trains a 1-epoch run, which also fills Triton's kernel cache), so the timed
part is the grid alone; cluster start-up is printed apart. Prints the wall time of each grid
(split into submission until the first run starts on a worker, and the first run's start to the
last run's end), the mean seconds per run, and the speed-up 1 GPU / 2 GPUs in wall time (target:
>= 1.8x for 8 runs) and in the runs' span. With one GPU only the first grid runs.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from achilles_interp.training.distributed import local_cluster, run_specs, train_run, visible_gpus
from achilles_interp.training.paper_grid import Cell, RunSpec


def _warm_worker() -> str:
    import torch

    import achilles_interp.zoo  # noqa: F401

    torch.zeros(1, device="cuda").sum().item()
    return torch.cuda.get_device_name(0)


def timed_grid(gpus: list, args, root: Path) -> dict:
    from distributed import Client, wait

    cell = Cell(args.task, args.model, None if args.model.startswith("transformer") else args.mixer)
    specs = [RunSpec(cell, seed, args.preset, args.epochs) for seed in range(args.runs)]
    t0 = time.perf_counter()
    cluster = local_cluster(gpus, args.runs_per_gpu, threads=args.threads)
    client = Client(cluster)
    try:
        names = client.run(_warm_worker)
        warm = [RunSpec(cell, 10_000 + i, args.preset, 1) for i in range(len(names))]
        futs = [client.submit(train_run, s, str(root / "warm"), "cuda", args.threads, key=f"warm-{i}", pure=False,
                              workers=[w]) for i, (s, w) in enumerate(zip(warm, names))]
        wait(futs)
        for f in futs:
            f.result()  # a warm-up that failed raises here
        start_s = time.perf_counter() - t0
        t1, t1_wall = time.perf_counter(), time.time()
        log = io.StringIO()
        result = run_specs(specs, root / "grid", scheduler=client, device="cuda", threads=args.threads,
                           progress=False, log=log)
        grid_s = time.perf_counter() - t1
    finally:
        client.close()
        cluster.close()
    print(log.getvalue().rstrip())
    if not result.ok:
        raise SystemExit(f"{len(result.failed)} run(s) failed: {result.failed[0].traceback}")
    first = min(o.started for o in result.finished)
    last_end = max(o.started + o.seconds for o in result.finished)
    return {"gpus": gpus, "workers": len(names), "device": sorted(set(names.values())), "start_s": round(start_s, 2),
            "grid_s": round(grid_s, 2), "mean_run_s": round(statistics.mean(o.seconds for o in result.finished), 2),
            # the grid's wall time split: submission until the first run starts on a worker, then the runs
            "first_start_s": round(first - t1_wall, 2), "runs_span_s": round(last_end - first, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=8)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--runs-per-gpu", type=int, default=1)
    p.add_argument("--task", default="inverse-matching")
    p.add_argument("--model", default="mamba")
    p.add_argument("--mixer", default="mamba2", choices=["mamba1", "mamba2"])
    p.add_argument("--preset", default="paper")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--runs-dir", default=None, help="where the runs go (default: a temporary folder, removed)")
    p.add_argument("--json", default=None, help="also write the numbers here")
    args = p.parse_args(argv)

    gpus = visible_gpus()
    if not gpus:
        print("benchmarks/grid_scaling.py: skipped, no GPU visible (it needs 1 GPU, and 2 for the speed-up)")
        return 0
    root = Path(args.runs_dir) if args.runs_dir else Path(tempfile.mkdtemp(prefix="grid_scaling_"))
    rows = {}
    try:
        for n in (1, 2):
            if len(gpus) < n:
                print(f"{n} GPUs: skipped, only {len(gpus)} visible")
                continue
            print(f"--- {args.runs} runs ({args.model}/{args.mixer} {args.task}, preset {args.preset}, "
                  f"{args.epochs} epochs) on {n} GPU(s) x {args.runs_per_gpu} run(s)", flush=True)
            rows[n] = timed_grid(gpus[:n], args, root / f"{n}gpu")
    finally:
        if args.runs_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print("| GPUs | workers | cluster start + warm-up (s) | grid wall (s) | of which until the first run starts (s) "
          "| first run start to last run end (s) | mean s / run |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n, r in rows.items():
        print(f"| {n} | {r['workers']} | {r['start_s']:.1f} | {r['grid_s']:.1f} | {r['first_start_s']:.1f} "
              f"| {r['runs_span_s']:.1f} | {r['mean_run_s']:.1f} |")
    out = {"runs": args.runs, "epochs": args.epochs, "runs_per_gpu": args.runs_per_gpu, "rows": rows}
    if 1 in rows and 2 in rows:
        speedup = rows[1]["grid_s"] / rows[2]["grid_s"]
        out["speedup"] = round(speedup, 3)
        span = rows[1]["runs_span_s"] / rows[2]["runs_span_s"]
        out["speedup_runs_span"] = round(span, 3)
        met = "met" if speedup >= 1.8 else "NOT met"
        print(f"\nspeed-up 1 GPU -> 2 GPUs: {speedup:.2f}x wall (target >= 1.8x: {met}); "
              f"{span:.2f}x from the first run's start to the last run's end")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
