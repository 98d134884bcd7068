"""Run code in a fresh Python interpreter: for tests of what a code path imports (nothing else in the
test session has imported anything there), or of process-wide state such as malloc's settings."""

import ast
import subprocess
import sys


def run_fresh(code: str, env=None) -> str:
    """The last line ``code`` printed, run in a fresh interpreter (with ``env``, else this environment);
    fails the calling test, with the child's stderr, if ``code`` raises."""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().splitlines()[-1]


def imported_after(code: str, modules) -> list:
    """The ``modules`` (names) that are in ``sys.modules`` after ``code`` ran in a fresh interpreter;
    fails the calling test if ``code`` raises."""
    probe = f"{code}\nimport sys\nprint(sorted(m for m in {tuple(modules)!r} if m in sys.modules))\n"
    return ast.literal_eval(run_fresh(probe))
