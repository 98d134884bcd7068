"""Token-fusion influence matrices, asymmetry index, effective attention (float64 reconstruction)."""

import pytest
import torch

from achilles_interp.analyses.effective_attention import (
    effective_attention,
    effective_attention_mamba1,
    layer_ssm_attention_score,
    ssm_attention_score,
    transformer_attention,
)
from achilles_interp.analyses.fusion import (
    ablation_influence,
    asymmetry_index,
    default_spans,
    fusion_report,
    jacobian_influence,
)
from achilles_interp.analyses.interventions import all_ones_conv
from achilles_interp.config import MambaConfig
from achilles_interp.model import HookedMamba


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(mixer="mamba1", layers=2, d_conv=3, dtype=torch.float64):
    torch.manual_seed(0)
    cfg = MambaConfig(
        d_model=8, n_layers=layers, vocab_size=20, d_state=4, d_conv=d_conv, mixer=mixer, headdim=4
    )
    return HookedMamba(cfg, backend="torch").to(dtype).eval()


@pytest.mark.parametrize("mixer", ["mamba1", "mamba2"])
def test_effective_attention_reproduces_the_scan(mixer):
    model = _model(mixer)
    tok = torch.randint(0, 20, (2, 9))
    _, cache = model.run_with_cache(tok)
    for layer in range(2):
        M = effective_attention(model, tok, layer, channel_chunk=3)
        D = model.blocks[layer].mixer.D.detach()
        pre = f"blocks.{layer}.mixer."
        if mixer == "mamba1":
            u = cache[pre + "hook_conv_act"]
            assert M.shape == (2, 16, 9, 9)
            y = torch.einsum("bcij,bjc->bic", M, u) + D * u
        else:
            x = cache[pre + "hook_x"].view(2, 9, model.cfg.nheads, model.cfg.headdim)
            assert M.shape == (2, model.cfg.nheads, 9, 9)
            y = (torch.einsum("bhij,bjhp->bihp", M, x) + D[:, None] * x).reshape(2, 9, -1)
        assert torch.allclose(y, cache[pre + "hook_ssm_out"], atol=1e-12, rtol=1e-10)
        assert torch.all(M.triu(1) == 0)  # causal
    S = layer_ssm_attention_score(model, tok, 0)
    assert torch.all(S.triu(1) == 0)
    B, C = cache["blocks.0.mixer.hook_B"], cache["blocks.0.mixer.hook_C"]
    assert torch.allclose(S, ssm_attention_score(B, C))
    with pytest.raises(ValueError, match="Mamba-1 effective attention needs"):
        effective_attention_mamba1(torch.zeros(2, 3), torch.zeros(2, 2), B, C)
    with pytest.raises(ValueError, match="attn"):
        transformer_attention(model, tok, 0)


def test_influence_respects_causality_and_the_conv_window():
    model = _model(layers=1)
    tok = torch.randint(0, 20, (2, 7))
    J = jacobian_influence(model, tok, "conv_out", 0, n_probes=None)
    A = ablation_influence(model, tok, "conv_out", 0)
    for infl in (J, A):
        assert infl.shape == (7, 7)
        assert torch.all(infl.triu(1) < 1e-12)  # nothing from the future
        for i in range(7):
            for j in range(i - 2):
                assert infl[i, j] < 1e-12  # outside the width-3 window
            assert infl[i, i] > 0
    # Hutchinson estimate approaches the exact norm
    Jh = jacobian_influence(model, tok, "conv_out", 0, n_probes=256, seed=1)
    assert torch.allclose(Jh, J, rtol=0.2, atol=1e-9)
    # the scan reaches every earlier token
    S = ablation_influence(model, tok, "ssm_out", 0)
    assert torch.all(S.tril(-3)[3:, :1] > 0)


def test_asymmetry_index_definition_and_all_ones_kernel():
    infl = torch.zeros(6, 6)
    infl[5, 4], infl[5, 3] = 3.0, 1.0  # span (3, 3): left = 4, partner = 3
    out = asymmetry_index(infl, [(3, 3)])
    assert out["index"] == pytest.approx(0.5) and out["left"] == [3.0] and out["partner"] == [1.0]
    with pytest.raises(ValueError, match="span"):
        asymmetry_index(infl, [(4, 3)])
    assert default_spans(29) == [(0, 3), (4, 3), (8, 3), (12, 3), (16, 3), (26, 3)]
    # all-ones kernel and a mixer input that does not depend on the token: symmetric conv fusion
    model = all_ones_conv(_model(layers=1))
    with torch.no_grad():
        model.backbone.embedding.weight[:] = model.backbone.embedding.weight[0]
    tok = torch.randint(0, 20, (1, 6))
    J = jacobian_influence(model, tok, "conv_out", 0, n_probes=None)
    assert asymmetry_index(J, [(3, 3)])["index"] == pytest.approx(0.0, abs=1e-9)
    rep = fusion_report(model, tok, components=("conv_out",), spans=[(3, 3)], method="ablation")
    assert set(rep["matrices"]) == {("conv_out", 0)}
    with pytest.raises(ValueError, match="method"):
        fusion_report(model, tok, method="magic")


def test_matches_the_kernel_modules_torch_path():
    kernels = pytest.importorskip("achilles_interp.kernels.effective_attention")
    model = _model("mamba1")
    tok = torch.randint(0, 20, (2, 9))
    _, cache = model.run_with_cache(tok)
    pre = "blocks.1.mixer."
    dt, B, C = cache[pre + "hook_dt"], cache[pre + "hook_B"], cache[pre + "hook_C"]
    A = model.blocks[1].mixer.A.detach()
    ours = effective_attention_mamba1(dt, A, B, C)
    theirs = kernels.effective_attention(
        dt.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), out_dtype=torch.float64, backend="torch"
    )
    assert torch.allclose(ours, theirs, atol=1e-12)
