"""Checkpoint formats and the errors a user sees for bad checkpoints."""

import json

import pytest
import torch

from achilles_interp import CheckpointError, HookedMamba, MambaConfig


def small(mixer="mamba1", **kw):
    return HookedMamba(MambaConfig(d_model=16, n_layers=2, vocab_size=30, mixer=mixer, d_state=4,
                                   headdim=8, **kw), backend="torch").eval()


@pytest.mark.parametrize("mixer", ["mamba1", "mamba2"])
def test_save_load_round_trip(tmp_path, mixer):
    model = small(mixer, conv_mode="bypass", pos_embed="learned", max_len=64)
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = HookedMamba.from_pretrained(tmp_path / "ckpt", backend="torch")
    assert loaded.cfg == model.cfg
    tokens = torch.randint(0, 30, (2, 10))
    torch.testing.assert_close(loaded(tokens), model(tokens))


def test_mamba_ssm_format_loads(tmp_path):
    """The state-spaces layout: config.json (d_model, n_layer, ssm_cfg, padded vocab) + pytorch_model.bin."""
    model = small("mamba1", pad_vocab_size_multiple=8)
    assert model.backbone.embedding.weight.shape[0] == 32
    (tmp_path / "config.json").write_text(json.dumps({
        "d_model": 16, "n_layer": 2, "vocab_size": 30, "ssm_cfg": {"d_state": 4}, "rms_norm": True,
        "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 8,
        "tie_embeddings": True}))
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    loaded = HookedMamba.from_pretrained(tmp_path, backend="torch")
    assert loaded.cfg.mixer == "mamba1" and loaded.cfg.d_state == 4
    tokens = torch.randint(0, 30, (1, 7))
    torch.testing.assert_close(loaded(tokens), model(tokens))


def test_mamba_ssm_mamba2_format(tmp_path):
    model = small("mamba2", pad_vocab_size_multiple=8)
    (tmp_path / "config.json").write_text(json.dumps({
        "d_model": 16, "n_layer": 2, "vocab_size": 30, "pad_vocab_size_multiple": 8,
        "ssm_cfg": {"layer": "Mamba2", "d_state": 4, "headdim": 8}}))
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    loaded = HookedMamba.from_pretrained(tmp_path, backend="torch")
    assert loaded.cfg.mixer == "mamba2"
    tokens = torch.randint(0, 30, (1, 7))
    torch.testing.assert_close(loaded(tokens), model(tokens))


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        HookedMamba.from_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no config.json"):
        HookedMamba.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        HookedMamba.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(CheckpointError, match="no known format"):
        HookedMamba.from_pretrained(tmp_path)
    small().save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        HookedMamba.from_pretrained(tmp_path / "m")


def test_key_and_shape_errors_are_specific(tmp_path):
    model = small()
    model.save_pretrained(tmp_path)
    state = model.state_dict()
    state.pop("lm_head.weight")
    bad = dict(state)
    bad.pop("backbone.layers.1.mixer.D")
    bad["backbone.layers.1.mixer.extra"] = torch.zeros(1)
    bad["backbone.layers.0.mixer.A_log"] = torch.zeros(5, 5)
    from safetensors.torch import save_file
    save_file(bad, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as e:
        HookedMamba.from_pretrained(tmp_path)
    msg = str(e.value)
    assert "missing keys (1): ['backbone.layers.1.mixer.D']" in msg
    assert "unexpected keys (1): ['backbone.layers.1.mixer.extra']" in msg
    assert "backbone.layers.0.mixer.A_log: checkpoint (5, 5) vs model (32, 4)" in msg


def test_unsupported_configs(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"d_model": 8, "n_layer": 1, "vocab_size": 10,
                                                      "d_intermediate": 32}))
    with pytest.raises(CheckpointError, match="d_intermediate=32"):
        HookedMamba.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba2", "hidden_size": 64,
                                                      "num_hidden_layers": 1, "vocab_size": 10,
                                                      "num_heads": 3, "head_dim": 64}))
    with pytest.raises(CheckpointError, match="num_heads\\*head_dim"):
        HookedMamba.from_pretrained(tmp_path)


def test_save_failure_leaves_no_partial_file(tmp_path, monkeypatch):
    import safetensors.torch as st

    def boom(state, filename, metadata=None):
        open(filename, "wb").write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(st, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        small().save_pretrained(tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_config_validation_messages():
    from achilles_interp import ConfigError
    with pytest.raises(ConfigError, match="mixer must be one of"):
        MambaConfig(d_model=8, n_layers=1, vocab_size=10, mixer="mamba3")
    with pytest.raises(ConfigError, match="divisible by headdim"):
        MambaConfig(d_model=8, n_layers=1, vocab_size=10, mixer="mamba2", headdim=5)
    with pytest.raises(ConfigError, match="positive integer"):
        MambaConfig(d_model=0, n_layers=1, vocab_size=10)


def test_bad_tokens_are_rejected_clearly():
    from achilles_interp import InputError
    model = small()
    with pytest.raises(InputError, match=r"token ids must lie in \[0, 30\)"):
        model(torch.tensor([[1, 2, 99]]))
    with pytest.raises(InputError, match="integer tensor"):
        model(torch.rand(1, 3))
    with pytest.raises(ValueError, match="backend must be one of"):
        HookedMamba(MambaConfig(d_model=8, n_layers=1, vocab_size=10), backend="tpu")
