"""nnsight (0.8) traces a HookedMamba: conv, scan and gate outputs can be saved and set."""

import pytest
import torch

from achilles_interp.config import MambaConfig
from achilles_interp.model import HookedMamba
from achilles_interp.nnsight_support import conv, gate, scan, stage, trace

pytest.importorskip("nnsight")


@pytest.fixture(scope="module", params=["mamba1", "mamba2"])
def model(request):
    torch.manual_seed(0)
    cfg = MambaConfig(
        d_model=8, n_layers=2, vocab_size=20, d_state=4, d_conv=3, mixer=request.param, headdim=4
    )
    return HookedMamba(cfg, backend="torch").eval()


def test_save_matches_the_cache(model):
    tok = torch.randint(0, 20, (2, 6))
    nn_model = trace(model)
    with nn_model.trace(tok):
        # nnsight 0.8: access modules in the order they run
        co = nn_model.backbone.layers[0].mixer.hook_conv_out.output.save()
        u = conv(nn_model, 0).output.save()
        z = gate(nn_model, 1).output.save()
        y = scan(nn_model, 1).output.save()
    _, cache = model.run_with_cache(tok)
    assert torch.allclose(u, cache["blocks.0.mixer.hook_conv_act"])
    assert torch.allclose(y, cache["blocks.1.mixer.hook_ssm_out"])
    assert torch.allclose(z, cache["blocks.1.mixer.hook_gate"])
    assert torch.allclose(co, cache["blocks.0.mixer.hook_conv_out"])


def test_setting_outputs_equals_hook_edits(model):
    tok = torch.randint(0, 20, (2, 6))
    nn_model = trace(model)
    with nn_model.trace(tok):
        gate(nn_model, 0).output = torch.zeros_like(gate(nn_model, 0).output)
        scan(nn_model, 1).output[:, -1] = 0.0
        logits = nn_model.output.save()

    def zero_last(act, hook):
        act = act.clone()
        act[:, -1] = 0
        return act

    ref = model.run_with_hooks(
        tok,
        fwd_hooks=[
            ("blocks.1.mixer.hook_ssm_out", zero_last),
            ("blocks.0.mixer.hook_gate", lambda a, hook: torch.zeros_like(a)),
        ],
    )
    assert torch.allclose(logits, ref, atol=1e-6)
    assert not torch.allclose(logits, model(tok), atol=1e-6)


def test_bad_stage(model):
    nn_model = trace(model)
    with pytest.raises(ValueError, match="stage must be one of"):
        stage(nn_model, 0, "attention")
    with pytest.raises(ValueError, match="layer must be in"):
        stage(nn_model, 5, "conv")


def test_state_hook_can_be_saved_and_set(model):
    """hook_ssm_state is reachable from nnsight: saved (all positions, or those asked for, in that
    order) and set (the edit propagates as a TransformerLens hook's does)."""
    tok = torch.randint(0, 20, (2, 6))
    nn_model = trace(model)
    _, cache = model.run_with_cache(tok, ssm_state_positions="all")
    with nn_model.trace(tok):
        s1 = stage(nn_model, 1, "state").output.save()
    torch.testing.assert_close(s1, cache["blocks.1.mixer.hook_ssm_state"])
    with nn_model.trace(tok, ssm_state_positions=[4, 1]):
        s0 = stage(nn_model, 0, "state").output.save()
    torch.testing.assert_close(s0, cache["blocks.0.mixer.hook_ssm_state"][:, [4, 1]])

    with nn_model.trace(tok):
        stage(nn_model, 0, "state").output[:, 2] = 0.0
        logits = nn_model.output.save()

    def zero_t2(states, hook):
        states = states.clone()
        states[:, 2] = 0.0
        return states
    ref = model.run_with_hooks(tok, fwd_hooks=[("blocks.0.mixer.hook_ssm_state", zero_t2)])
    torch.testing.assert_close(logits, ref)
    assert not torch.allclose(logits, model(tok), atol=1e-6)
