"""`achilles-interp info`: hook names and shapes of a checkpoint; bad input exits 2 with a message."""

import json

from achilles_interp import HookedMamba, MambaConfig
from achilles_interp.cli import main


def test_info_lists_every_hook_with_shape(tmp_path, capsys):
    HookedMamba(MambaConfig(d_model=16, n_layers=1, vocab_size=20, d_state=4)).save_pretrained(tmp_path)
    assert main(["info", str(tmp_path), "--seq-len", "5", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["class"] == "HookedMamba"
    assert info["hooks"]["blocks.0.mixer.hook_ssm_state"] == [1, 5, 32, 4]
    assert info["hooks"]["blocks.0.mixer.hook_conv_out"] == [1, 5, 32]
    assert info["parameters"] > 0


def test_info_bad_input_exits_2(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
    HookedMamba(MambaConfig(d_model=16, n_layers=1, vocab_size=20)).save_pretrained(tmp_path / "m")
    assert main(["info", str(tmp_path / "m"), "--seq-len", "0"]) == 2
    assert "--seq-len must be >= 1" in capsys.readouterr().err
