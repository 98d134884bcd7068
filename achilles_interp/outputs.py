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
