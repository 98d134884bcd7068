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
