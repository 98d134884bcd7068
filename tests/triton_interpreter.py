"""Run a script in Triton's CPU interpreter (a fresh Python with TRITON_INTERPRET=1), for the
Triton-kernel tests on machines without a GPU."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Preamble of the interpreter subprocess. (1) Import the kernels without the package __init__ (the
# model, transformer-lens: seconds of imports). (2) Triton's interpreter converts 1-element arrays
# with int(), which numpy >= 2.4 refuses for 1-D arrays: convert through .reshape(-1)[0].
INTERPRETER_PREAMBLE = f"""
import sys, types
for _name, _path in [("achilles_interp", {str(REPO / "achilles_interp")!r}),
                     ("achilles_interp.kernels", {str(REPO / "achilles_interp" / "kernels")!r})]:
    _m = types.ModuleType(_name)
    _m.__path__ = [_path]
    sys.modules[_name] = _m
import numpy as np
import triton.runtime.interpreter as _ti
_orig_patch = _ti._patch_lang_tensor
def _patch(tensor, scope):
    _orig_patch(tensor, scope)
    scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))
_ti._patch_lang_tensor = _patch
"""


def run_in_interpreter(body: str) -> str:
    """Run ``body`` in a fresh Python with TRITON_INTERPRET=1; return its stdout (fails the test on error)."""
    pytest.importorskip("triton")
    script = INTERPRETER_PREAMBLE + textwrap.dedent(body)
    # the script may import test modules (``tests.test_...``), which import this helper by its name
    path = os.pathsep.join(p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, f"interpreter run failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout
