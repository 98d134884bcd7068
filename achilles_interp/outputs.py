"""Writing output files so that a failure never leaves a partial file behind.

Every file the toolkit writes (checkpoints, JSON/CSV results, figures) goes through
:func:`atomic_write`: the content is written to a temporary file in the target's directory and
renamed into place only once complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Union

PathLike = Union[str, os.PathLike]


def check_output(path: PathLike, flag: str, kind: str = "dir") -> Path:
    """Check, before any work, that ``path`` can be written as a ``kind`` (``"dir"`` or ``"file"``):
    it is not the other kind already, and the nearest existing folder above it accepts a new file
    (tried for real: permission bits say nothing about read-only filesystems). Creates nothing;
    raises :class:`~achilles_interp.errors.UserError` naming ``flag``, what is wrong and what is
    allowed."""
    from .errors import UserError

    path = Path(path)
    if kind == "dir" and path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path}: is an existing file; give a folder (new or existing)")
    if kind == "file" and path.is_dir():
        raise UserError(f"{flag} {path}: is a folder; give a file name")
    probe = path if kind == "dir" else path.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{flag} {path}: {probe} is a file, so nothing can be written below it")
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".achilles-write-check.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write into {probe} ({e.strerror}); choose a writable location") \
            from None
    return path


def atomic_write(target: PathLike, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` onto ``target``; on error remove it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(target: PathLike, text: str) -> Path:
    return atomic_write(target, lambda f: Path(f).write_text(text))


def write_json(target: PathLike, obj: Any) -> Path:
    """JSON with a trailing newline; non-finite floats are written as strings ("inf", "nan")."""
    return write_text(target, json.dumps(_finite(obj), indent=2) + "\n")


def save_figure(fig, target: PathLike, **kwargs) -> Path:
    """``fig.savefig`` through a temporary file (format taken from the target's suffix)."""
    target = Path(target)
    fmt = target.suffix.lstrip(".") or "png"
    return atomic_write(target, lambda f: fig.savefig(f, format=fmt, **kwargs))


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
