"""The verdict (analyses.explanation) on hand-built studies, and the position probe on models whose
position information is known by construction."""

import pytest
import torch

from achilles_interp import zoo
from achilles_interp.analyses.explanation import explain
from achilles_interp.analyses.study import ModelStudy, PairStudy, StudyConfig, StudyResult
from achilles_interp.analyses.verdict import PathShares
from achilles_interp.probes.position import PositionProbe, key_slots, position_probes


def _model(name, variant, acc, slot, scan_share=None):
    m = ModelStudy(name, "test", "inverse-matching", variant, variant != "transformer", acc)
    m.probes = [PositionProbe("after layer 1", 2, "slot", slot, 0.2, 0.2)]
    if scan_share is not None:
        shares = PathShares({"conv": 1 - scan_share, "ssm": scan_share, "gate": 0.0}, {}, {}, "one model")
        m.pairs["keys"] = PairStudy("keys", "", [0], None, None, {}, shares)
    return m


def _grid(std, pe, fwd, conv_only=0.2):
    cells = [("inverse-matching", "mamba", std), ("inverse-matching", "mamba-pe", pe),
             ("forward-matching", "mamba", fwd)]
    cells += [("inverse-matching", m, conv_only) for m in ("mamba-bypass", "mamba-ones", "mamba-noconv")]
    return [{"task": t, "model": m, "mixer": "mamba2", "n_layers": None, "accuracy": {"test": {"mean": a}}}
            for t, m, a in cells]


def _study(*models):
    return StudyResult(StudyConfig(), {}, {m.name: m for m in models}, {})


def test_position_is_supported_when_pe_repairs_and_failing_models_lack_the_slot():
    study = _study(_model("f0", "mamba", 0.2, 0.25), _model("f1", "mamba", 0.21, 0.3),
                   _model("s0", "mamba-pe", 0.95, 1.0, scan_share=0.9))
    e = explain(study, _grid(std=0.2, pe=0.95, fwd=0.2))
    assert e.verdict == "position"
    assert e.tally["position"] == {"for": 3, "against": 0}
    assert e.tally["conv"] == {"for": 0, "against": 3}  # no fusion measured here: that evidence is absent
    assert e.tally["scan"] == {"for": 0, "against": 2}
    assert "disagrees with the paper" in e.sentence


def test_the_paper_s_pattern_leaves_position_unsupported():
    """A grid where only conv changes repair reversal, the forward control is learned and failing
    models encode the slot: nothing counts for position information."""
    study = _study(_model("f0", "mamba", 0.2, 0.95), _model("s0", "mamba-pe", 0.95, 0.99, scan_share=0.2))
    e = explain(study, _grid(std=0.2, pe=0.3, fwd=0.95, conv_only=0.95))
    assert e.tally["position"]["for"] == 0 and e.tally["position"]["against"] == 1
    assert e.tally["conv"]["against"] == 0 and e.verdict == "undecided"


def test_nothing_measured_is_undecided():
    e = explain(_study(_model("t", "transformer", 1.0, 1.0)))
    assert e.verdict == "undecided" and all(t == {"for": 0, "against": 0} for t in e.tally.values())


def test_position_probe_reads_a_learned_embedding_and_not_a_model_without_one():
    """A learned positional embedding makes position linearly decodable from the embedding stream
    (every position has its own vector); with no positional embedding the embedding stream holds only
    the token, which is random, so position and slot are at chance there."""
    torch.manual_seed(0)
    common = dict(vocab_size=256, max_len=64, n_layers=1, d_model=16, d_state=4, headdim=4, backend="torch")
    tokens = torch.randint(20, 101, (160, 29))
    with_pe = position_probes(zoo.build_model("mamba-pe", **common).eval(), tokens, key_slots(29), steps=200)
    without = position_probes(zoo.build_model("mamba", **common).eval(), tokens, key_slots(29), steps=200)
    get = {(p.stream, p.target): p for p in with_pe}
    assert get[("embedding", "position")].accuracy > 0.95 and get[("embedding", "slot")].accuracy > 0.95
    got = {(p.stream, p.target): p for p in without}
    assert got[("embedding", "position")].accuracy < 0.15  # chance 1/29
    assert got[("embedding", "slot")].accuracy < 0.35  # chance 0.2
    assert got[("embedding", "slot")].chance == pytest.approx(0.2)
    assert [s for s, _ in ((p.stream, 0) for p in without)][::2] == ["embedding", "after layer 0"]


def test_undecided_does_not_claim_to_disagree():
    e = explain(_study(_model("t", "transformer", 1.0, 1.0)))
    assert "disagrees" not in e.sentence


def test_conv_asymmetry_evidence():
    f, s = _model("f0", "mamba", 0.2, 0.25), _model("s0", "mamba-pe", 0.95, 1.0)
    f.fusion = {"asymmetry": {("conv_out", 0): 0.6, ("ssm_out", 0): 0.1}}
    s.fusion = {"asymmetry": {("conv_out", 0): -0.05}}
    e = explain(_study(f, s))
    ev = next(x for x in e.evidence if x.source.startswith("fusion"))
    assert ev.holds is False and e.tally["conv"]["against"] == 0  # failing convs are more asymmetric
    f.fusion = {"asymmetry": {("conv_out", 0): 0.05}}
    e = explain(_study(f, s))
    assert next(x for x in e.evidence if x.source.startswith("fusion")).holds and e.tally["conv"]["against"] == 1
