"""Run code in a fresh Python interpreter, for tests of what a code path imports (nothing else in the
test session has imported anything there)."""

import ast
import subprocess
import sys


def imported_after(code: str, modules) -> list:
    """The ``modules`` (names) that are in ``sys.modules`` after ``code`` ran in a fresh interpreter;
    fails the calling test if ``code`` raises."""
    probe = f"{code}\nimport sys\nprint(sorted(m for m in {tuple(modules)!r} if m in sys.modules))\n"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return ast.literal_eval(r.stdout.strip().splitlines()[-1])
