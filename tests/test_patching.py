"""Activation patching, ablations, interventions and the verdict on analytic models."""

import pandas as pd
import pytest
import torch

from achilles_interp.analyses import ablations, interventions
from achilles_interp.analyses.metrics import PatchingData, metric_per_example
from achilles_interp.analyses.patching import activation_patching, patch_cells, patch_one_cell
from achilles_interp.analyses.toy_models import conv_only_data, conv_only_model, ssm_only_data, ssm_only_model
from achilles_interp.analyses.verdict import verdict
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
    v = verdict([model], data=data, n_boot=20)
    assert v.share["conv"] == pytest.approx(1.0, abs=1e-8)
    assert v.share["ssm"] == pytest.approx(0.0, abs=1e-8) and v.share["gate"] == pytest.approx(0.0, abs=1e-8)
    assert "the conv carries 100%" in v.sentence.lower()


def test_ssm_only_model_puts_everything_on_the_scan():
    model, data = ssm_only_model(), ssm_only_data()
    res = activation_patching(model, data, ALL)
    eff = {c: res.effect[i, 0] for i, c in enumerate(ALL)}
    assert abs(res.clean_baseline - res.corrupted_baseline) > 1e-3
    assert torch.allclose(eff["ssm_state"], torch.ones(4), atol=1e-8)  # any state after token 0 carries it
    assert eff["conv_act"][3] == pytest.approx(0.0, abs=1e-9)  # no conv mixing into position 3
    assert eff["conv_act"][0] == pytest.approx(1.0, abs=1e-8)  # the write at position 0
    v = verdict([model, ssm_only_model(seed=1)], data=data)
    assert v.share["ssm"] == pytest.approx(1.0, abs=1e-8)
    assert v.std["ssm"] == pytest.approx(0.0, abs=1e-8) and "std over 2 models" in v.sentence


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


def test_ablations_and_interventions():
    model, data = conv_only_model(), conv_only_data()
    clean = data.clean_tokens
    base = ablations.evaluate(model, clean, data)
    # the conv carries the signal: bypassing it (identity) or freezing u to corrupted destroys it
    frozen = ablations.evaluate(
        model, clean, data, ablations.freeze_ssm_input_hooks(model, data.corrupted_tokens)
    )
    corr = ablations.evaluate(model, data.corrupted_tokens, data)
    assert frozen["logit_diff"] == pytest.approx(corr["logit_diff"], abs=1e-9)
    # knocking out state writes does nothing here (C = 0)
    ko = ablations.evaluate(model, clean, data, ablations.state_write_knockout_hooks(model, [0, 1, 2]))
    assert ko["logit_diff"] == pytest.approx(base["logit_diff"], abs=1e-10)
    table = ablations.ablation_table(model, data)
    assert list(table.columns) == ["ablation", "logit_diff", "prob", "accuracy"] and len(table) == 6
    with pytest.raises(ValueError, match="mode must be one of"):
        ablations.gate_ablation_hooks(model, "open")
    # blocking the source token's write into the state changes nothing for the conv-only model ...
    b = interventions.blocking(model, clean, 3, [2], labels=data.clean_labels)
    assert b["agreement"] == 1.0
    # ... but everything for the scan-only model's source token (its only path)
    m2, d2 = ssm_only_model(), ssm_only_data()
    h_blocked = ablations.evaluate(m2, d2.clean_tokens, d2, interventions.blocking_hooks(m2, [0]))
    h_corr_blocked = ablations.evaluate(m2, d2.corrupted_tokens, d2, interventions.blocking_hooks(m2, [0]))
    assert h_blocked["logit_diff"] == pytest.approx(h_corr_blocked["logit_diff"], abs=1e-10)
    # substitution of the post-conv state at the answer position follows the other input
    s = interventions.substitution(model, clean, data.corrupted_tokens, 3, positions=[3])
    assert s["follows_other"] == 1.0
    ones = interventions.all_ones_conv(model)
    assert torch.all(ones.blocks[0].mixer.conv1d.weight == 1) and not torch.all(
        model.blocks[0].mixer.conv1d.weight == 1
    )
    acc = interventions.all_ones_accuracy(model, clean, 3, data.clean_labels)
    assert set(acc) == {"accuracy", "accuracy_all_ones_conv"}
    cos = interventions.conv_tap_cosine([model, ones])
    assert cos.shape == (2, 1, 3, 3)
    assert torch.allclose(cos[1], torch.ones(1, 3, 3), atol=1e-6)
