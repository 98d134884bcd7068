"""Checks of user-given training settings, shared by the command-line front ends
(``achilles-interp train`` / ``compare`` and ``python -m achilles_interp.training.reproduce``)
so that each rule and its message live in one place.

The checks raise :class:`ValueError`; each front end turns that into its own one-line usage
error (``CLIError`` in :mod:`achilles_interp.commands`, ``ArgumentParser.error`` in
:mod:`.reproduce`). Messages name the setting as its command-line flag (``n_train`` ->
``--n-train``), since both front ends spell their flags that way.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

# Settings that must be positive: integers >= 1, except the real-valued init exponent.
POSITIVE_INT = ("epochs", "n_train", "n_eval", "batch_size", "threads", "d_model", "n_layers")
POSITIVE_REAL = ("init_gamma",)


def flag_name(name: str) -> str:
    """``n_train`` -> ``--n-train``."""
    return "--" + name.replace("_", "-")


def positive_settings(values: Mapping[str, Any]) -> dict:
    """Check that every given setting in ``values`` (``None`` = not given, skipped) is positive
    and return the given ones, in order. Raises :class:`ValueError` naming the first bad one,
    e.g. ``--epochs must be positive (an integer >= 1), got 0``; ``init_gamma`` must be a
    finite number > 0 (NaN and infinity are rejected). A name not in :data:`POSITIVE_INT` or
    :data:`POSITIVE_REAL` is a programming error (:class:`KeyError`)."""
    out = {}
    for name, v in values.items():
        if name not in POSITIVE_INT and name not in POSITIVE_REAL:
            raise KeyError(f"no positivity rule for setting {name!r}")
        if v is None:
            continue
        if name in POSITIVE_INT:
            ok = not isinstance(v, bool) and isinstance(v, int) and v >= 1
            allowed = "an integer >= 1"
        else:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
            allowed = "a finite number > 0"
        if not ok:
            raise ValueError(f"{flag_name(name)} must be positive ({allowed}), got {v}")
        out[name] = v
    return out

