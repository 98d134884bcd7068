"""reuse_freed_memory: a freed CPU tensor's memory serves the next allocation instead of going back to
the kernel and being faulted in again. The oracle is the kernel's count of this process's page faults."""

import os
import platform

import pytest

from achilles_interp.allocator import reuse_freed_memory
from achilles_interp.cli import main
from achilles_interp.errors import UserError

N_BYTES = 64 << 20   # above glibc's default mmap threshold (at most 32 MiB)
glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc")

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


def faults_per_cycle(setup: str, **env: str) -> float:
    """Page faults per allocate-fill-free cycle of a 64 MiB tensor in steady state, in a fresh interpreter
    that first runs ``setup``, with no malloc setting of the caller's environment but ``env``'s."""
    from fresh_python import run_fresh

    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "ACHILLES_INTERP_MALLOC")}
    return float(run_fresh(setup + MEASURE, env={**clean, **env}))


TUNED = "from achilles_interp.allocator import reuse_freed_memory\nassert reuse_freed_memory()\n"
VIA_CLI = ("import contextlib, io\nfrom achilles_interp.cli import main\n"
           "with contextlib.redirect_stdout(io.StringIO()):\n    assert main(['info', 'mamba2-inverse']) == 0\n")


@glibc_only
def test_freed_tensors_are_reused_instead_of_faulted_in_again():
    default, tuned = faults_per_cycle(""), faults_per_cycle(TUNED)
    # glibc's default maps fresh zeroed pages every cycle (16384 faults of 4 KiB pages; about 32 where
    # transparent huge pages are always on); tuned, the freed block is reused in place
    assert default >= 16 and tuned <= 0.01 * default, (default, tuned)
    # glibc tunables that are not malloc's are no choice about malloc
    assert faults_per_cycle(TUNED, GLIBC_TUNABLES="glibc.pthread.rseq=0") <= 0.01 * default


@glibc_only
def test_the_cli_applies_it_unless_told_not_to():
    default = faults_per_cycle("")
    assert faults_per_cycle(VIA_CLI) <= 0.01 * default
    assert faults_per_cycle(VIA_CLI, ACHILLES_INTERP_MALLOC="system") >= 0.5 * default


@pytest.mark.parametrize("name, value", [("ACHILLES_INTERP_MALLOC", "system"),
                                         ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=131072"),
                                         ("MALLOC_TOP_PAD_", "0")])
def test_an_environment_that_chose_is_left_alone(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    assert reuse_freed_memory() is False


def test_bad_values_are_refused(monkeypatch, capsys):
    for bad in (0, -1, 2**31):
        with pytest.raises(ValueError, match="mmap_threshold must be in 1..2147483647"):
            reuse_freed_memory(bad)
    monkeypatch.setenv("ACHILLES_INTERP_MALLOC", "off")
    with pytest.raises(UserError, match="allowed values are reuse, system"):
        reuse_freed_memory()
    assert main(["info", "mamba2-inverse"]) == 2
    assert "ACHILLES_INTERP_MALLOC='off': allowed values are reuse, system" in capsys.readouterr().err
