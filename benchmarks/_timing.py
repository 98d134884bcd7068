"""Timing, memory and report helpers shared by the GPU benchmark scripts of this folder.

The scripts run as ``python benchmarks/<x>.py`` (from the repo root or from here), which puts this folder on
``sys.path``; they import this module as ``_timing`` and, when imported as ``benchmarks.<x>``, as
``benchmarks._timing``. Importing it needs no GPU.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser that prints the script's docstring as its description, as written."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_quick_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    p.add_argument("--json", help="also write the numbers to this JSON file")


def gpu_missing(script: str) -> bool:
    """True, after saying so, when no CUDA GPU is visible: every benchmark times GPU kernels against
    their peers, so without one it skips (the caller returns 0), as the GPU tests do."""
    if torch.cuda.is_available():
        return False
    print(f"{script}: skipped, no GPU visible (it times the CUDA kernels against their peers)")
    return True


def measure(fn):
    """(ms of this one call timed with CUDA events, peak extra bytes, result) of fn(); the peak is
    torch.cuda.max_memory_allocated() during the call minus what was allocated before it."""
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


def timed(fn, warmup: int = 1, reps: int = 3) -> tuple[float, int]:
    """(median ms, peak extra bytes) of ``reps`` calls of fn() after ``warmup`` untimed ones: each call timed
    with CUDA events and its result dropped before the next; the peak is max_memory_allocated() during the
    timed calls minus what was allocated before them."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
        del out
    return sorted(times)[len(times) // 2], torch.cuda.max_memory_allocated() - base


def median_ms(fn, warmup: int = 1, reps: int = 3) -> float:
    """Median wall time (ms) of fn() over ``reps`` runs after ``warmup`` ones, with CUDA events."""
    return timed(fn, warmup, reps)[0]


def spaced_positions(L: int, n: int) -> list[int]:
    """Up to ``n`` distinct positions spread evenly over ``[0, L)``, first and last included, ascending."""
    return torch.linspace(0, L - 1, n).round().long().unique().tolist()


def graph_timer():
    """A timer of one call replayed as a CUDA graph (median ms of triton's do_bench_cudagraph), or nan with a
    message where the call cannot be captured."""
    from triton.testing import do_bench_cudagraph

    def graph_bench(fn):
        try:
            with torch.cuda.stream(torch.cuda.Stream()):   # older Triton refuses to capture on the default stream
                return do_bench_cudagraph(fn, rep=200, return_mode="median")
        except Exception as e:  # a host sync or pageable copy inside fn makes capture fail
            print(f"(CUDA-graph timing failed: {type(e).__name__}: {e}; that column is nan)", file=sys.stderr)
            torch.cuda.synchronize()
            return float("nan")
    return graph_bench


def md_row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def print_table(header, rows) -> None:
    """A Markdown table: the header, its rule, then one line per row of cells (strings)."""
    print(md_row(header))
    print("|" + "---|" * len(header))
    for cells in rows:
        print(md_row(cells))


def write_json(path, obj) -> None:
    """Write obj as indented JSON to path; nothing when path is None (no --json)."""
    if path:
        with open(path, "w") as f:
            json.dump(obj, f, indent=2)
