"""The CLI's error contract: a user-input error is one line and exit 2; anything else is a bug and
surfaces with its traceback (issue: every ValueError used to become a usage error)."""

import pytest

from achilles_interp import cli
from achilles_interp.errors import UserError


def _run_raising(monkeypatch, exc):
    import achilles_interp.commands.info as info

    def boom(args):
        raise exc

    monkeypatch.setattr(info, "run", boom)
    return cli.main(["info", "anything"])


def test_user_errors_are_one_line(monkeypatch, capsys):
    assert _run_raising(monkeypatch, UserError("--n must be >= 2, got 1")) == 2
    assert capsys.readouterr().err == "achilles-interp info: error: --n must be >= 2, got 1\n"


def test_internal_errors_surface(monkeypatch):
    with pytest.raises(ValueError, match="internal"):
        _run_raising(monkeypatch, ValueError("internal: shapes disagree"))
    with pytest.raises(KeyError):
        _run_raising(monkeypatch, KeyError("bug"))


def test_library_validation_errors_are_user_errors():
    from achilles_interp.config import ConfigError
    from achilles_interp.loading import CheckpointError
    from achilles_interp.tasks import get_task
    from achilles_interp.training.presets import get_preset

    assert issubclass(ConfigError, UserError) and issubclass(CheckpointError, UserError)
    assert issubclass(cli.CLIError, UserError)
    for bad in (lambda: get_task("nope"), lambda: get_preset("nope"), lambda: get_task("inverse-matching", n_layers=0)):
        with pytest.raises(UserError):
            bad()


COMMANDS = {
    "train": ["train", "--task", "forward-matching", "--model", "mamba", "--device", "cpu"],
    "compare": ["compare", "--task", "forward-matching", "--models", "mamba", "--seeds", "0", "--device", "cpu"],
    "patch": ["patch", "--checkpoint", "{ck}"],
    "reproduce": ["reproduce", "--render-only", "--runs-dir", "{runs}"],
}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import torch

    from achilles_interp import zoo

    root = tmp_path_factory.mktemp("ck") / "m"
    torch.manual_seed(0)
    zoo.build_model("mamba", vocab_size=256, max_len=64, n_layers=1, d_model=8, d_state=4, headdim=4,
                    backend="torch").save_pretrained(root)
    return root


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("where", ["existing file", "read-only location", "below a file"])
def test_outputs_are_checked_before_any_work(command, where, tmp_path, tiny_checkpoint, capsys, monkeypatch):
    """--out that cannot be written is a one-line error (exit 2) before any model is built, and
    nothing is left behind."""
    import achilles_interp.zoo as zoo

    monkeypatch.setattr(zoo, "build_model", lambda *a, **k: pytest.fail("a model was built"))
    monkeypatch.setattr(zoo, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = {"existing file": blocker, "read-only location": "/proc/achilles-out",
           "below a file": blocker / "sub" / "out"}[where]
    if command == "reproduce" and where == "existing file":
        out = tmp_path  # reproduce's --out is a file: an existing folder is the wrong kind
    argv = [a.format(ck=tiny_checkpoint, runs=tmp_path / "runs") for a in COMMANDS[command]] + ["--out", str(out)]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"achilles-interp {command}: error: ")
    assert "--out" in err or "out_dir" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("pkg", ["analyses", "probes"])
def test_top_level_analyses_and_probes_refuse_a_second_copy(pkg):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", f"import {pkg}"], cwd=root, capture_output=True, text=True)
    assert r.returncode != 0 and f"import this package as achilles_interp.{pkg}" in r.stderr
    ok = subprocess.run([sys.executable, "-c", f"import achilles_interp.{pkg}"], cwd=root, capture_output=True)
    assert ok.returncode == 0, ok.stderr


def test_help_imports_neither_torch_nor_transformer_lens():
    """`achilles-interp --help` and every command's --help build their parsers without the heavy
    imports (a fresh interpreter, so nothing else has imported them)."""
    from fresh_python import imported_after

    code = ("from achilles_interp.cli import build_parser\np = build_parser()\n"
            "subs = p._subparsers._group_actions[0].choices\n"
            "assert set(subs) == {'info', 'train', 'compare', 'patch', 'reproduce'}\n"
            "texts = [p.format_help()] + [sub.format_help() for sub in subs.values()]")
    assert imported_after(code, ("torch", "transformer_lens", "matplotlib")) == []


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`achilles-interp info --json NAME | head -1`: no BrokenPipeError traceback."""
    import subprocess
    import sys

    cmd = f"{sys.executable} -m achilles_interp.cli info mamba2-inverse --json | head -1"
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    assert r.stdout.strip() == "{" and "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr
