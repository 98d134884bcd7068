"""Activation patching, ablations, interventions and the verdict on analytic models."""

import pandas as pd
import pytest
import torch
from achilles_interp.analyses import interventions as iv
from achilles_interp.analyses.evaluation import evaluate
from achilles_interp.analyses.metrics import PatchingData, metric_per_example
from achilles_interp.analyses.patching import activation_patching, patch_cells, patch_one_cell
from achilles_interp.analyses.toy_models import conv_only_data, conv_only_model, ssm_only_data, ssm_only_model
from achilles_interp.analyses.verdict import combine, path_shares

from achilles_interp.config import MambaConfig
from achilles_interp.model import HookedMamba

pytestmark = pytest.mark.usefixtures("one_thread")


ALL = ["resid_pre", "conv_out", "conv_act", "ssm_state", "ssm_out", "gate", "mixer_out"]


def random_data(n=3, L=6, vocab=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, vocab, (n, L), generator=g)
    corr = clean.clone()
    corr[:, 2] = (corr[:, 2] + 1) % vocab
    corr[:, L - 1] = (corr[:, L - 1] + 3) % vocab
    return PatchingData(clean, corr, L - 1, torch.tensor([1, 2, 3][:n]), torch.tensor([4, 5, 6][:n]))


@pytest.fixture(scope="module", params=["mamba1", "mamba2"])
def small_model(request):
    torch.manual_seed(1)
    cfg = MambaConfig(
        d_model=8, n_layers=2, vocab_size=20, d_state=4, d_conv=3, mixer=request.param, headdim=4
    )
    return HookedMamba(cfg, backend="torch").double().eval()


@pytest.mark.parametrize("direction,skip", [("denoising", False), ("noising", False), ("denoising", True)])
def test_batched_equals_one_forward_per_cell(small_model, direction, skip):
    data = random_data()
    res = activation_patching(
        small_model, data, ALL, metric="logit_diff", direction=direction, cells_per_pass=5, skip_noops=skip
    )
    for ci, c in enumerate(ALL):
        for layer in range(2):
            for p in (1, 2, data.seq_len - 1):
                ref = patch_one_cell(small_model, data, c, layer, p, "logit_diff", direction)
                assert res.values[ci, layer, p] == pytest.approx(ref, abs=1e-9), (c, layer, p)


def test_restoring_every_cell_restores_clean_exactly(small_model):
    data = random_data()
    with torch.no_grad():
        clean = float(metric_per_example(small_model(data.clean_tokens), data, "logit_diff").mean())
    for cells in (
        [("resid_pre", 0, "all")],
        [("resid_pre", 1, "all")],
        [("resid_post", 1, data.seq_len - 1)],
        [("resid_pre", 0, 2), ("resid_pre", 0, data.seq_len - 1)],
    ):
        assert patch_cells(small_model, data, cells) == pytest.approx(clean, abs=1e-10)
    # single cells that carry everything: the last residual at the answer position
    res = activation_patching(small_model, data, ["resid_post", "mixer_out"], layers=[1])
    assert res.values[0, 0, -1] == pytest.approx(clean, abs=1e-10)
    assert res.effect[0, 0, -1] == pytest.approx(1.0, abs=1e-8)
    # noising: a cell whose source equals its base changes nothing
    res = activation_patching(
        small_model, data, ["conv_act"], layers=[0], positions=[0, 1], direction="noising"
    )
    assert torch.allclose(res.effect, torch.zeros_like(res.effect), atol=1e-10)


def test_conv_only_model_puts_everything_on_the_conv():
    model, data = conv_only_model(), conv_only_data()
    res = activation_patching(model, data, ALL)
    eff = {c: res.effect[i, 0] for i, c in enumerate(ALL)}
    assert torch.allclose(eff["ssm_state"], torch.zeros(4), atol=1e-9)
    for c in ("conv_out", "conv_act", "ssm_out", "mixer_out"):
        assert eff[c][3] == pytest.approx(1.0, abs=1e-8)
    assert torch.allclose(eff["gate"], torch.zeros(4), atol=1e-9)
    v = path_shares(activation_patching(model, data, ALL, keep_per_example=True), 3, n_boot=20)
    assert v.share["conv"] == pytest.approx(1.0, abs=1e-8)
    assert v.share["ssm"] == pytest.approx(0.0, abs=1e-8) and v.share["gate"] == pytest.approx(0.0, abs=1e-8)
    assert v.sentence().startswith("the conv 100% ± 0%") and "bootstrap std over 16 examples" in v.sentence()


def test_ssm_only_model_puts_everything_on_the_scan():
    model, data = ssm_only_model(), ssm_only_data()
    res = activation_patching(model, data, ALL)
    eff = {c: res.effect[i, 0] for i, c in enumerate(ALL)}
    assert abs(res.clean_baseline - res.corrupted_baseline) > 1e-3
    assert torch.allclose(eff["ssm_state"], torch.ones(4), atol=1e-8)  # any state after token 0 carries it
    assert eff["conv_act"][3] == pytest.approx(0.0, abs=1e-9)  # no conv mixing into position 3
    assert eff["conv_act"][0] == pytest.approx(1.0, abs=1e-8)  # the write at position 0
    v = combine([path_shares(activation_patching(m, data, ALL), 3) for m in (model, ssm_only_model(seed=1))])
    assert v.share["ssm"] == pytest.approx(1.0, abs=1e-8)
    assert v.std["ssm"] == pytest.approx(0.0, abs=1e-8) and "std over 2 models" in v.sentence()
    with pytest.raises(ValueError, match="lacks components"):
        path_shares(activation_patching(model, data, ["conv_act"]), 3)


def test_result_exports(tmp_path, small_model):
    data = random_data()
    res = activation_patching(
        small_model,
        data,
        ["conv_act", "attn_out"],
        metric="accuracy",
        layers=[0],
        token_labels=[f"t{i}" for i in range(6)],
    )
    df = res.to_dataframe()
    assert len(df) == 2 * 6 and set(df.columns) >= {
        "component",
        "layer",
        "position",
        "token",
        "value",
        "effect",
    }
    assert df[df.component == "attn_out"]["value"].isna().all()  # absent component -> NaN
    res.to_csv(tmp_path / "r.csv")
    res.to_json(tmp_path / "r.json")
    assert len(pd.read_csv(tmp_path / "r.csv")) == 12
    assert not list(tmp_path.glob(".*tmp"))


def test_bad_input_messages(small_model):
    data = random_data()
    with pytest.raises(ValueError, match="allowed"):
        activation_patching(small_model, data, ["conv"])
    with pytest.raises(ValueError, match="metric must be one of"):
        activation_patching(small_model, data, ["conv_act"], metric="loss")
    with pytest.raises(ValueError, match="direction must be one of"):
        activation_patching(small_model, data, ["conv_act"], direction="up")
    with pytest.raises(ValueError, match="layers must be"):
        activation_patching(small_model, data, ["conv_act"], layers=[5])
    with pytest.raises(ValueError, match="same shape"):
        PatchingData(
            torch.zeros(2, 3, dtype=torch.long),
            torch.zeros(2, 4, dtype=torch.long),
            2,
            torch.ones(2),
            torch.ones(2),
        )


def test_interventions_on_analytic_models():
    model, data = conv_only_model(), conv_only_data()
    clean = data.clean_tokens
    base = evaluate(model, clean, data)
    # the conv carries the signal: freezing u to its corrupted value gives the corrupted answer
    frozen = evaluate(model, clean, data, [iv.Patch(iv._sites("conv_act", model, None), data.corrupted_tokens)])
    corr = evaluate(model, data.corrupted_tokens, data)
    assert frozen.mean("logit_diff") == pytest.approx(corr.mean("logit_diff"), abs=1e-9)
    # knocking out state writes does nothing here (C = 0)
    ko = evaluate(model, clean, data, [iv.knock_out_writes(model, [0, 1, 2])])
    assert ko.mean("logit_diff") == pytest.approx(base.mean("logit_diff"), abs=1e-10)
    rows = iv.run_interventions(model, data, iv.ablation_set(model, data) + iv.paper_interventions(model, data),
                                other=data.corrupted_tokens)
    assert rows[0].label == "none" and rows[0].agreement == 1.0
    labels = [r.label for r in rows]
    assert "conv := identity" in labels and "conv kernel := all ones" in labels
    # blocking the source token's write into the state changes nothing for the conv-only model ...
    blocked = evaluate(model, clean, data, [iv.block_writes(model, [2])])
    assert torch.equal(blocked.predictions(), base.predictions())
    # ... but everything for the scan-only model's source token (its only path)
    m2, d2 = ssm_only_model(), ssm_only_data()
    h_blocked = evaluate(m2, d2.clean_tokens, d2, [iv.block_writes(m2, [0])])
    h_corr_blocked = evaluate(m2, d2.corrupted_tokens, d2, [iv.block_writes(m2, [0])])
    assert h_blocked.mean("logit_diff") == pytest.approx(h_corr_blocked.mean("logit_diff"), abs=1e-10)
    # substitution of the post-conv state at the answer position follows the other input
    sub = [r for r in iv.run_interventions(model, data, [iv.substitute_conv(model, data.corrupted_tokens, [3])],
                                           other=data.corrupted_tokens)][1]
    assert sub.follows_other == 1.0
    ones = iv.all_ones_conv(model)
    assert torch.all(ones.blocks[0].mixer.conv1d.weight == 1) and not torch.all(
        model.blocks[0].mixer.conv1d.weight == 1
    )
    cos = iv.conv_tap_cosine([model, ones])
    assert cos.shape == (2, 1, 3, 3)
    assert torch.allclose(cos[1], torch.ones(1, 3, 3), atol=1e-6)


def test_all_ones_conv_hook_equals_the_weight_edited_copy(small_model):
    """AllOnesConv (a hook on the trained model) computes what a copy with all-ones weights and zero
    conv bias computes: two independent routes to the paper's symmetric kernel."""
    data = random_data()
    with torch.no_grad():
        copy_logits = iv.all_ones_conv(small_model)(data.clean_tokens)
    hooked = small_model.run_with_hooks(data.clean_tokens,
                                        fwd_hooks=iv.AllOnesConv().hooks(small_model, data.clean_tokens))
    assert torch.allclose(hooked, copy_logits, atol=1e-10)
    identity = small_model.run_with_hooks(data.clean_tokens,
                                          fwd_hooks=iv.ConvIdentity().hooks(small_model, data.clean_tokens))
    assert not torch.allclose(identity, hooked)


def test_set_at_is_the_one_write():
    act = torch.zeros(2, 4, 3)
    out = iv.set_at(act, [1, 3], torch.ones(3))
    assert out[:, [1, 3]].eq(1).all() and out[:, [0, 2]].eq(0).all() and act.eq(0).all()
    out = iv.set_at(act, torch.tensor([0, 2]), torch.full((2, 3), 5.0), rows=torch.tensor([1, 0]))
    assert out[1, 0].eq(5).all() and out[0, 2].eq(5).all() and out.sum() == 30
    with pytest.raises(ValueError, match="re-run the scan"):
        iv.Site("ssm_state", 0).name(conv_only_model())
