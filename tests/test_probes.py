"""Linear probes: separable data, control task, selectivity grid on a HookedMamba."""

import pytest
import torch

from achilles_interp.config import MambaConfig
from achilles_interp.model import HookedMamba
from achilles_interp.probes.linear import (
    control_labels,
    match_bit_targets,
    mirrored_token_targets,
    probe_grid,
    train_probe,
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_probe_learns_a_linear_rule_and_not_noise(optimizer):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(400, 6, generator=g)
    y = (X[:, 0] - X[:, 1] > 0).long() + 2 * (X[:, 2] > 0).long()  # 4 linearly separable classes
    res = train_probe(X, y, optimizer=optimizer, steps=300 if optimizer == "adam" else 100, lr=0.05)
    assert res.test_acc > 0.9
    assert torch.equal(res.classes, torch.arange(4))
    assert (res.predict(X) == y).float().mean() > 0.9
    noise = torch.randint(0, 4, (400,), generator=g)
    assert train_probe(X, noise, l2=1e-2).test_acc < 0.5


def test_control_labels_are_a_function_of_the_type():
    types = torch.tensor([3, 3, 7, 7, 9, 3])
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    c = control_labels(types, labels, seed=0)
    assert c[0] == c[1] == c[5] and c[2] == c[3]
    assert set(c.tolist()) <= {0, 1, 2}


def test_targets_and_bad_input():
    tok = torch.tensor([[1, 2, 3, 4, 5, 6]])
    assert mirrored_token_targets(tok, 3, 3, 5).item() == 4
    assert mirrored_token_targets(tok, 3, 3, 4).item() == 5
    keys = torch.tensor([[6, 5, 4]])
    assert match_bit_targets(tok, keys, 3, 4).item() == 1
    assert match_bit_targets(tok, torch.tensor([[6, 9, 4]]), 3, 4).item() == 0
    with pytest.raises(ValueError, match="outside the span"):
        mirrored_token_targets(tok, 3, 3, 1)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        train_probe(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), optimizer="sgd")
    with pytest.raises(ValueError, match="X \\[n, d\\]"):
        train_probe(torch.zeros(4), torch.zeros(4, dtype=torch.long))


def test_probe_grid_decodes_the_current_token_selectively():
    torch.manual_seed(0)
    cfg = MambaConfig(d_model=16, n_layers=1, vocab_size=6, d_state=4, d_conv=3)
    model = HookedMamba(cfg, backend="torch").eval()
    tok = torch.randint(0, 6, (240, 5))
    # target: the token two positions back (inside the conv window); control: random map of the own token
    df = probe_grid(model, tok, {4: tok[:, 2]}, ["conv_out", "ssm_state", "resid_pre"], steps=60)
    assert list(df.columns) == [
        "component",
        "layer",
        "position",
        "task_acc",
        "control_acc",
        "selectivity",
        "train_acc",
    ]
    row = df[df.component == "conv_out"].iloc[0]
    assert row.task_acc > 0.9  # the conv output at 4 sees token 2
    resid = df[df.component == "resid_pre"].iloc[0]
    assert resid.task_acc < 0.5  # the embedding at 4 does not
    assert resid.control_acc > 0.9  # ... but memorises its own token
    assert row.selectivity == pytest.approx(row.task_acc - row.control_acc)
