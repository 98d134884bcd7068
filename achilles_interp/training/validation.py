"""Checks of user-given training settings, shared by the command-line front ends
(``achilles-interp train`` / ``compare`` / ``reproduce``)
so that each rule and its message live in one place.

The checks raise :class:`ValueError`; each front end turns that into its own one-line usage
error (``CLIError`` in :mod:`achilles_interp.commands`, ``ArgumentParser.error`` in
the paper grid's runner). Messages name the setting as its command-line flag (``n_train`` ->
``--n-train``), since both front ends spell their flags that way; the Python API
(:func:`~achilles_interp.training.trainer.train`) asks for its keyword names instead.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence, Union

from ..errors import UserError

# Settings that must be positive: integers >= 1, except the real-valued init exponent.
POSITIVE_INT = ("epochs", "n_train", "n_eval", "batch_size", "threads", "d_model", "n_layers")
POSITIVE_REAL = ("init_gamma",)


def flag_name(name: str) -> str:
    """``n_train`` -> ``--n-train``."""
    return "--" + name.replace("_", "-")


def positive_settings(values: Mapping[str, Any], as_flags: bool = True) -> dict:
    """Check that every given setting in ``values`` (``None`` = not given, skipped) is positive
    and return the given ones, in order. Raises :class:`ValueError` naming the first bad one,
    e.g. ``--epochs must be positive (an integer >= 1), got 0``; ``init_gamma`` must be a
    finite number > 0 (NaN and infinity are rejected). ``as_flags=False`` names the setting as
    the keyword argument (``n_train must be ...``). A name not in :data:`POSITIVE_INT` or
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
            raise UserError(f"{flag_name(name) if as_flags else name} must be positive ({allowed}), got {v!r}")
        out[name] = v
    return out



def check_seeds(seeds: Union[int, Sequence[int]], name: str = "--seeds") -> None:
    """Seeds must be integers >= 0 (numpy's generators reject negative seeds), and a list of them
    distinct (two runs of one seed would write the same run directory, concurrently under
    ``--jobs``). ``seeds``: one seed (messages then show the value) or a list (messages show
    the list); ``name`` is how the message names it (``--seed``, ``--seeds``, ``seed``). Raises
    :class:`ValueError`, e.g. ``--seeds must be >= 0, got [-1]``."""
    values = list(seeds) if isinstance(seeds, (list, tuple)) else [seeds]
    if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise UserError(f"{name} must be an integer >= 0, got {seeds!r}")
    if any(v < 0 for v in values):
        raise UserError(f"{name} must be >= 0, got {seeds}")
    if len(set(values)) != len(values):
        raise UserError(f"{name} has duplicates: {seeds}")
