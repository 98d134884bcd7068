"""Keep freed CPU memory in the process for reuse (glibc's malloc), instead of handing it back to the
kernel at every free.

Why: glibc serves an allocation above its mmap threshold (adaptive, at most 32 MiB by default) with
a fresh ``mmap`` and returns it with ``munmap`` when freed, so the kernel zeroes its pages again at
the next allocation's first touch. A patching study allocates and frees CPU tensors of tens to hundreds
of MB thousands of times (caches of ``[batch, pos, d_inner, d_state]`` states, batched corrupted
runs), and on 2 cores about half of ``achilles-interp patch``'s wall time went to that kernel work
(measured: sys 96 s of 113 s wall; with freed blocks kept for reuse, 51-63 s wall and 7-23 s sys).

The cost: memory freed by torch stays in this process and serves the next allocations; it is not
given back to the system until the process ends, and the heap keeps some slack (the default patch
study peaked at 6.5 GB resident instead of 3.7 GB). The CLI applies it unless
``ACHILLES_INTERP_MALLOC=system`` is set, or glibc's own malloc settings are (the user has chosen
them); in a notebook, call :func:`reuse_freed_memory` once if the same trade suits you.
"""

from __future__ import annotations

import ctypes
import os
import platform

from .errors import UserError

# glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1
# glibc's own malloc settings: where the user set one, they have chosen, and we leave malloc alone
_GLIBC_MALLOC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_TRIM_THRESHOLD_")
OPT_OUT = "ACHILLES_INTERP_MALLOC"
_CHOICES = ("reuse", "system")   # reuse: this module's setting (the CLI's default); system: glibc's defaults


def reuse_freed_memory(mmap_threshold: int = 1 << 30) -> bool:
    """Make glibc's malloc keep freed blocks for reuse: blocks below ``mmap_threshold`` bytes come from
    the heap (not a fresh ``mmap`` each time) and the heap's free top is not trimmed back to the kernel.

    Returns whether it applied. It does nothing (False) where the C library is not glibc (macOS,
    Windows, musl), where ``ACHILLES_INTERP_MALLOC=system`` is set, or where the environment sets glibc's
    own malloc settings (``MALLOC_*_`` or ``glibc.malloc.*`` in ``GLIBC_TUNABLES``; note that setting a
    threshold variable, even to its default value, turns glibc's adaptive threshold off). A glibc
    that refuses a threshold this high (older ones cap it at 32 MiB) gets the same effect from
    ``M_MMAP_MAX=0``: no block is mmapped. Process-wide and not undone; call it once, early.
    """
    if not 0 < mmap_threshold <= _INT_MAX:
        raise ValueError(f"mmap_threshold must be in 1..{_INT_MAX} bytes (mallopt takes an int), got {mmap_threshold}")
    choice = os.environ.get(OPT_OUT, "reuse")
    if choice not in _CHOICES:
        raise UserError(f"{OPT_OUT}={choice!r}: allowed values are {', '.join(_CHOICES)} "
                        "(system keeps glibc's malloc defaults)")
    if (choice == "system" or platform.libc_ver()[0] != "glibc"
            or any(name in os.environ for name in _GLIBC_MALLOC_ENV)
            or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt       # glibc's soname on every Linux it runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not mallopt(_M_TRIM_THRESHOLD, _INT_MAX):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold) or mallopt(_M_MMAP_MAX, 0))
