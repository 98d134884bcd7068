"""Errors that teach: a user's mistake raises a one-line UserError that says what was wrong and what
is allowed (unknown hook names, hooks that change an activation's shape, bad state positions,
unreadable checkpoints)."""

import pytest
import torch

from achilles_interp import CheckpointError, ConfigError, HookedMamba, InputError, MambaConfig
from achilles_interp.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")
V = 30


@pytest.fixture(scope="module", params=["mamba1", "mamba2"])
def model(request):
    torch.manual_seed(0)
    cfg = MambaConfig(d_model=16, n_layers=2, vocab_size=V, mixer=request.param, d_state=4, headdim=8)
    return HookedMamba(cfg, backend="torch").eval()


def tokens(L=9):
    return torch.randint(0, V, (2, L), generator=torch.Generator().manual_seed(1))


def test_error_types_are_user_errors():
    for cls in (ConfigError, CheckpointError, InputError):
        assert issubclass(cls, UserError) and issubclass(cls, ValueError)


def one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("call", ["run_with_hooks", "hooks", "add_hook", "names_filter_str", "names_filter_list"])
def test_unknown_hook_name_names_the_closest_hooks(model, call):
    bad = "blocks.0.mixer.hook_conv"
    noop = lambda t, hook: None  # noqa: E731
    with pytest.raises(UserError) as e:
        if call == "run_with_hooks":
            model.run_with_hooks(tokens(), fwd_hooks=[(bad, noop)])
        elif call == "hooks":
            with model.hooks(fwd_hooks=[(bad, noop)]):
                pass
        elif call == "add_hook":
            model.add_hook(bad, noop)
        elif call == "names_filter_str":
            model.run_with_cache(tokens(), names_filter=bad)
        else:
            model.run_with_cache(tokens(), names_filter=["blocks.0.mixer.hook_x", bad])
    msg = one_line(e)
    assert "no hook named 'blocks.0.mixer.hook_conv'" in msg
    assert "blocks.0.mixer.hook_conv_out" in msg and "blocks.0.mixer.hook_conv_act" in msg
    model.reset_hooks()
    assert not any(hp.fwd_hooks for hp in model.hook_dict.values())


def test_module_paths_and_callables_still_work(model):
    _, cache = model.run_with_cache(tokens(), names_filter=["backbone.layers.1.mixer.hook_out"])
    assert list(cache.keys()) == ["blocks.1.mixer.hook_out"]
    _, cache = model.run_with_cache(tokens(), names_filter=lambda name: "nothing matches" in name)
    assert len(cache) == 0
    with pytest.raises(UserError, match="no hook named 'blocks.0.mixer.in_proj'"):
        model.run_with_hooks(tokens(), fwd_hooks=[("blocks.0.mixer.in_proj", lambda t, hook: None)])


def test_hook_returning_the_wrong_shape_names_hook_and_shapes(model):
    with pytest.raises(UserError) as e:
        model.run_with_hooks(tokens(), fwd_hooks=[("blocks.1.mixer.hook_gate", lambda t, hook: t[:, :3])])
    msg = one_line(e)
    d_inner = model.cfg.d_inner
    assert "blocks.1.mixer.hook_gate" in msg
    assert f"[2, 3, {d_inner}]" in msg and f"[2, 9, {d_inner}]" in msg
    model.reset_hooks()
    # the same shape (or None, or an in-place edit) is fine
    model.run_with_hooks(tokens(), fwd_hooks=[("blocks.1.mixer.hook_gate", lambda t, hook: t * 2)])


@pytest.mark.parametrize("bad, match", [
    ([1.5], r"integers, got 1\.5"),
    (["3"], r"integers, got '3'"),
    ("3", r"None, 'all' or a list of integer positions, got the string '3'"),
    ([4, 4], r"distinct.*repeated: \[4\]"),
    ([8, -1], r"distinct.*repeated: \[8\]"),
    ([9], r"lie in \[-9, 9\)"),
    ([], "empty"),
    (torch.tensor([0.0, 2.0]), "integer tensor"),
])
def test_bad_state_positions(model, bad, match):
    with pytest.raises(InputError, match=match) as e:
        model(tokens(), ssm_state_positions=bad)
    one_line(e)


def test_states_come_back_in_the_order_asked(model):
    name = "blocks.1.mixer.hook_ssm_state"
    _, every = model.run_with_cache(tokens(), ssm_state_positions="all")
    for asked, index in [([7, 2], [7, 2]), ([-1, 0, 4], [8, 0, 4]), (torch.tensor([5, 3]), [5, 3])]:
        _, some = model.run_with_cache(tokens(), ssm_state_positions=asked)
        torch.testing.assert_close(some[name], every[name][:, index])


def test_state_edits_in_unsorted_positions_propagate(model):
    """An edit at the later of two unsorted positions equals the same edit with sorted positions."""
    def at_col(col):
        def f(states, hook):
            states = states.clone()
            states[:, col] = 0.5
            return states
        return f
    name = "blocks.0.mixer.hook_ssm_state"
    with torch.no_grad():
        a = model.run_with_hooks(tokens(), ssm_state_positions=[6, 2], fwd_hooks=[(name, at_col(0))])
        b = model.run_with_hooks(tokens(), ssm_state_positions=[2, 6], fwd_hooks=[(name, at_col(1))])
        c = model.run_with_hooks(tokens(), ssm_state_positions=[2, 6], fwd_hooks=[(name, at_col(0))])
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors_is_one_line_checkpoint_error(tmp_path, model, damage):
    model.save_pretrained(tmp_path)
    f = tmp_path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a safetensors file")
    with pytest.raises(CheckpointError) as e:
        HookedMamba.from_pretrained(tmp_path)
    msg = one_line(e)
    assert str(f) in msg and "truncated or corrupt" in msg


def test_corrupt_pytorch_bin_is_checkpoint_error(tmp_path, model):
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    data = (tmp_path / "pytorch_model.bin").read_bytes()
    (tmp_path / "pytorch_model.bin").write_bytes(data[:100])
    with pytest.raises(CheckpointError, match="pytorch_model.bin") as e:
        HookedMamba.from_pretrained(tmp_path)
    one_line(e)
