"""reuse_freed_memory: a freed CPU tensor's memory serves the next allocation instead of going back to
the kernel and being faulted in again. The oracle is the kernel's count of this process's page faults."""

import os
import platform
import resource
import subprocess
import sys

import pytest

from achilles_interp.allocator import reuse_freed_memory

N_BYTES = 64 << 20   # above glibc's default mmap threshold (at most 32 MiB)
PAGES = N_BYTES // resource.getpagesize()

# torch allocates 64-byte aligned blocks (posix_memalign), which glibc places with some slack: the heap
# settles after a few cycles, hence the warm-up before counting
MEASURE = f"""
import resource, torch
def cycle():
    t = torch.empty({N_BYTES} // 4)
    t.fill_(1.0)
    del t
for _ in range(30):
    cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    cycle()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def faults_per_cycle(setup: str, env=None) -> float:
    """Page faults per allocate-fill-free cycle of a 64 MiB tensor in steady state, in a fresh interpreter
    that first runs ``setup``."""
    out = subprocess.run([sys.executable, "-c", setup + MEASURE], capture_output=True, text=True, check=True,
                         env=env)
    return float(out.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc")
def test_freed_tensors_are_reused_instead_of_faulted_in_again():
    default = faults_per_cycle("")
    tuned = faults_per_cycle("from achilles_interp.allocator import reuse_freed_memory\n"
                             "assert reuse_freed_memory()\n")
    assert default > 0.5 * PAGES, (default, PAGES)     # glibc's default: every cycle maps fresh zeroed pages
    assert tuned < 0.01 * PAGES, (tuned, PAGES)         # tuned: the freed block is reused in place


def test_bad_threshold_is_refused():
    for bad in (0, -1, 2**31):
        with pytest.raises(ValueError, match="mmap_threshold must be in 1..2147483647"):
            reuse_freed_memory(bad)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc")
def test_the_cli_applies_it_unless_told_not_to():
    setup = ("import contextlib, io\nfrom achilles_interp.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n    assert main(['info', 'mamba2-inverse']) == 0\n")
    assert faults_per_cycle(setup) < 0.01 * PAGES
    assert faults_per_cycle(setup, {**os.environ, "ACHILLES_INTERP_MALLOC": "system"}) > 0.5 * PAGES


@pytest.mark.parametrize("name, value", [("ACHILLES_INTERP_MALLOC", "system"),
                                         ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=131072"),
                                         ("MALLOC_ARENA_MAX", "2")])
def test_an_environment_that_chose_is_left_alone(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    assert reuse_freed_memory() is False
