"""Attribution patching: exact on a linear model, zero where the analytic models say, Spearman."""

import pytest
import torch
import torch.nn as nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from achilles_interp.analyses.attribution import _ranks, agreement, attribution_patching, spearman
from achilles_interp.analyses.metrics import PatchingData
from achilles_interp.analyses.patching import activation_patching
from achilles_interp.analyses.toy_models import conv_only_data, conv_only_model, ssm_only_data, ssm_only_model


pytestmark = pytest.mark.usefixtures("one_thread")


class _Cfg:
    n_layers = 2


class LinearBlock(nn.Module):
    def __init__(self, d, L):
        super().__init__()
        self.W = nn.Linear(d, d, bias=False)
        self.mix = nn.Parameter(torch.randn(L, L).tril() / L)  # causal linear token mixing
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x):
        x = self.hook_resid_pre(x)
        out = self.hook_attn_out(torch.einsum("ij,bjd->bid", self.mix, self.W(x)))
        return self.hook_resid_post(x + out)


class LinearToy(HookedRootModule):
    """Embedding -> two linear token-mixing blocks -> unembedding: every metric of logit
    differences is linear in every activation, so attribution patching is exact."""

    def __init__(self, vocab=10, d=6, L=5):
        super().__init__()
        self.cfg = _Cfg()
        self.embed = nn.Embedding(vocab, d)
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList([LinearBlock(d, L) for _ in range(2)])
        self.unembed = nn.Linear(d, vocab, bias=False)
        self.setup()

    def forward(self, tokens, return_type="logits", **kwargs):
        x = self.hook_embed(self.embed(tokens))
        for b in self.blocks:
            x = b(x)
        return self.unembed(x)


def _data(n=4, L=5, vocab=10):
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, vocab, (n, L), generator=g)
    corr = torch.randint(0, vocab, (n, L), generator=g)
    return PatchingData(
        clean,
        corr,
        L - 1,
        torch.randint(0, vocab, (n,), generator=g),
        torch.randint(0, vocab, (n,), generator=g),
    )


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_attribution_equals_activation_patching_on_a_linear_model(direction):
    torch.manual_seed(0)
    model, data = LinearToy().double(), _data()
    comps = ["resid_pre", "attn_out", "resid_post"]
    act = activation_patching(model, data, comps, direction=direction)
    att = attribution_patching(model, data, comps, direction=direction)
    assert torch.allclose(act.values, att.values, atol=1e-6)
    assert torch.allclose(act.effect, att.effect, atol=1e-6)
    assert agreement(act, att) == pytest.approx(1.0)


def test_attribution_zero_on_the_cut_path_and_first_order_elsewhere():
    model, data = conv_only_model(), conv_only_data()
    comps = ["conv_out", "conv_act", "ssm_state", "ssm_out", "gate"]
    att = attribution_patching(model, data, comps)
    assert torch.all(att.effect[comps.index("ssm_state")] == 0)  # C = 0: no gradient reaches the states
    assert torch.all(att.effect[comps.index("gate")] == 0)  # gate identical in clean and corrupted
    assert att.effect[comps.index("conv_act"), 0, 3] != 0
    # ssm-only: the state gradient (total derivative through the recurrence) is nonzero after the write
    m2, d2 = ssm_only_model(), ssm_only_data()
    att2 = attribution_patching(m2, d2, ["conv_act", "ssm_state"])
    act2 = activation_patching(m2, d2, ["conv_act", "ssm_state"])
    assert float(att2.values[0, 0, 3]) == pytest.approx(
        float(act2.values[0, 0, 3]), abs=1e-6
    )  # no difference at 3
    # ssm_out -> logits is not linear (RMSNorm), but tiny here: close to first order
    assert torch.allclose(att2.effect[1], act2.effect[1], atol=0.2)
    with pytest.raises(ValueError, match="metric must be one of"):
        attribution_patching(model, data, ["conv_act"], metric="accuracy")


def test_spearman_without_scipy_matches_definition():
    a = torch.tensor([1.0, 2.0, 2.0, 5.0, float("nan")])
    b = torch.tensor([10.0, 30.0, 20.0, 40.0, 0.0])
    assert torch.equal(
        _ranks(torch.tensor([3.0, 1.0, 3.0])), torch.tensor([1.5, 0.0, 1.5], dtype=torch.float64)
    )
    ra, rb = torch.tensor([0, 1.5, 1.5, 3.0]), torch.tensor([0, 2.0, 1.0, 3.0])
    ra, rb = ra - ra.mean(), rb - rb.mean()
    assert spearman(a, b) == pytest.approx(float((ra * rb).sum() / (ra.norm() * rb.norm())))
    assert spearman(torch.arange(5.0), -torch.arange(5.0)) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        spearman(torch.zeros(3), torch.zeros(4))
