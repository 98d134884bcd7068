"""Which explanation of a failure the evidence supports: the conv's fusion order, the scan, or
missing position information. A pure function of a finished study (and, optionally, the
reproduction grid's accuracies), so the conclusion is computed, not written.

Each piece of :class:`Evidence` is a measured comparison with an explicit threshold and the
direction in which it counts for each explanation (+1 for, -1 against, 0 not bearing on it):

* grid, *PE alone repairs it* (PE-only Mamba solves inverse matching while standard Mamba fails):
  for position information; against the conv (the paper's fix needs the bypass) and the scan
  (the same scan succeeds once positions are given).
* grid, *conv changes alone do not repair it* (bypass only, all-ones kernel, no conv all fail):
  against the conv.
* grid, *the forward control fails as well*: against the conv's fusion *order* (an asymmetric
  fusion harms matching a reversed key, not an identical one); for position information (both
  tasks answer with a slot index).
* probes, *failing models do not encode the key slot; solving Mamba models do*: for position
  information (against it if failing models encode it as well).
* patching of the key-swap pairs, *in solving Mamba models the moved key reaches the answer
  through the scan*: against the scan being what cannot do the retrieval.
* fusion, *the conv fuses neighbouring tokens no more asymmetrically in failing models than in
  solving ones* (mean absolute asymmetry index of the conv output within 0.1): against the conv.
* interventions, *the all-ones kernel does not repair a trained failing model*: reported, not
  counted (a model not trained with that kernel is not expected to work with it).

The verdict names the explanation with the largest net count (for minus against), if it is
positive and unique; otherwise "undecided".
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .study import FAILS, SOLVES, StudyResult

EXPLANATIONS = {"conv": "the conv's fusion order", "scan": "the selective scan",
                "position": "missing position information"}
SLOT_ENCODED, SLOT_ABSENT = 0.9, 0.5  # best slot-probe accuracy of a stream that encodes / lacks it (chance 0.2)
SCAN_CARRIES = 0.5  # share of the key-swap effect through the scan path
ASYM_MARGIN = 0.1  # failing models' conv asymmetry counts as "no larger" within this margin


@dataclass
class Evidence:
    """One measured comparison: ``holds`` (None: not measured), what was ``measured``, and how it
    counts for each explanation (applied when it holds)."""

    text: str
    source: str
    measured: str
    holds: Optional[bool]
    counts: Dict[str, int] = field(default_factory=dict)
    if_false: Dict[str, int] = field(default_factory=dict)

    def signed(self) -> Dict[str, int]:
        """How it counts: ``counts`` when it holds, ``if_false`` when it is measured and does not."""
        if self.holds is None:
            return {}
        return dict(self.counts) if self.holds else dict(self.if_false)


@dataclass
class Explanation:
    evidence: List[Evidence]
    tally: Dict[str, Dict[str, int]]
    verdict: str
    sentence: str

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "sentence": self.sentence, "tally": self.tally,
                "evidence": [e.__dict__ for e in self.evidence]}


def _ms(values: List[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.pstdev(values):.2f} (n={len(values)})"


def _grid_acc(grid: Optional[list], task: str, model: str, mixer: str = "mamba2") -> Optional[float]:
    for c in grid or []:
        if c["task"] == task and c["model"] == model and (c["mixer"] == mixer or model == "transformer") \
                and c.get("n_layers") is None and c["accuracy"].get("test", {}).get("mean") is not None:
            return c["accuracy"]["test"]["mean"]
    return None


def explain(study: StudyResult, grid: Optional[list] = None, mixer: str = "mamba2") -> Explanation:
    """The evidence and the verdict. ``grid``: the ``cells`` of the reproduction's
    ``results.json`` (its accuracies per variant), or None to use the study alone."""
    ev: List[Evidence] = []
    inv, fwd = "inverse-matching", "forward-matching"
    std, pe = _grid_acc(grid, inv, "mamba", mixer), _grid_acc(grid, inv, "mamba-pe", mixer)
    conv_only = {m: _grid_acc(grid, inv, m, mixer) for m in ("mamba-bypass", "mamba-ones", "mamba-noconv")}
    std_fwd = _grid_acc(grid, fwd, "mamba", mixer)
    if grid is not None:
        ev.append(Evidence(
            "Positional encoding alone repairs inverse matching.", "reproduction grid",
            f"PE-only test {pe if pe is None else round(pe, 3)} vs standard {std if std is None else round(std, 3)}",
            None if pe is None or std is None else (pe >= SOLVES and std <= FAILS),
            {"position": 1, "conv": -1, "scan": -1}))
        known = {k: v for k, v in conv_only.items() if v is not None}
        ev.append(Evidence(
            "Changing the conv alone (bypass, all-ones kernel, no conv) does not repair it.", "reproduction grid",
            ", ".join(f"{k} {v:.3f}" for k, v in known.items()) or "not run",
            None if not known or std is None or std > FAILS else all(v <= FAILS for v in known.values()),
            {"conv": -1}))
        ev.append(Evidence(
            "Standard Mamba fails the forward-matching control as well.", "reproduction grid",
            f"forward test {std_fwd if std_fwd is None else round(std_fwd, 3)}",
            None if std_fwd is None else std_fwd <= FAILS, {"conv": -1, "position": 1}))
    models = [m for m in study.models.values() if m.task in (inv, fwd)]
    failing = [m for m in models if m.is_mamba and m.role == "fails"]
    solving = [m for m in models if m.is_mamba and m.role == "solves"]
    f_slot = [v for m in failing if (v := m.best_probe("slot")) is not None]
    s_slot = [v for m in solving if (v := m.best_probe("slot")) is not None]
    holds = None
    if f_slot and s_slot and max(f_slot) < SLOT_ABSENT and min(s_slot) >= SLOT_ENCODED:
        holds = True
    elif f_slot and min(f_slot) >= SLOT_ENCODED:
        holds = False  # failing models encode the slot: position information is not what they lack
    ev.append(Evidence(
        "Failing models' residual streams do not encode the key slot; solving Mamba models' do.", "position probes",
        f"best slot-probe accuracy (chance 0.2): failing {_ms(f_slot)}, solving Mamba {_ms(s_slot)}",
        holds, {"position": 1}, {"position": -1}))
    scan = [m.pairs["keys"].shares.share["ssm"] for m in solving
            if "keys" in m.pairs and m.pairs["keys"].shares is not None
            and m.pairs["keys"].shares.share["ssm"] == m.pairs["keys"].shares.share["ssm"]]
    ev.append(Evidence(
        "In solving Mamba models the moved key reaches the answer through the scan.", "activation patching "
        "(key-swap pairs)", f"scan share of the key-swap effect: {_ms(scan)}",
        None if not scan else min(scan) >= SCAN_CARRIES, {"scan": -1}))
    def conv_asym(m) -> Optional[float]:
        vals = [abs(v) for (c, _), v in (m.fusion or {}).get("asymmetry", {}).items() if c == "conv_out" and v == v]
        return statistics.fmean(vals) if vals else None

    f_asym = [v for m in failing if (v := conv_asym(m)) is not None]
    s_asym = [v for m in solving if (v := conv_asym(m)) is not None]
    ev.append(Evidence(
        "The conv fuses neighbouring tokens no more asymmetrically in failing models than in solving ones.",
        "fusion asymmetry (Jacobian)", f"mean absolute asymmetry index of the conv output: failing {_ms(f_asym)}, "
        f"solving Mamba {_ms(s_asym)}",
        None if not f_asym or not s_asym else statistics.fmean(f_asym) <= statistics.fmean(s_asym) + ASYM_MARGIN,
        {"conv": -1}))
    ones = [r.accuracy for m in failing for r in m.interventions if r.label == "conv kernel := all ones"]
    ev.append(Evidence(
        "An all-ones kernel put into a trained failing model does not make it generalise (not counted).",
        "interventions", f"accuracy with the all-ones kernel: {_ms(ones)}",
        None if not ones else max(ones) <= FAILS, {}))
    tally = {k: {"for": 0, "against": 0} for k in EXPLANATIONS}
    for e in ev:
        for k, v in e.signed().items():
            if v > 0:
                tally[k]["for"] += v
            elif v < 0:
                tally[k]["against"] -= v
    net = {k: t["for"] - t["against"] for k, t in tally.items()}
    best = max(net.values())
    winners = [k for k, v in net.items() if v == best]
    verdict = winners[0] if best > 0 and len(winners) == 1 else "undecided"
    parts = [f"{EXPLANATIONS[k]}: {tally[k]['for']} for, {tally[k]['against']} against" for k in EXPLANATIONS]
    head = (f"The evidence supports {EXPLANATIONS[verdict]}" if verdict != "undecided"
            else "The evidence does not single out one explanation")
    sentence = head + " (" + "; ".join(parts) + ")."
    named = [(role, [m for m in study.models.values() if m.role == role]) for role in ("fails", "solves")]
    if all(ms for _, ms in named):
        sentence = ("Failing (test accuracy <= 0.35): " + ", ".join(f"{m.name} {m.accuracy:.2f}" for m in named[0][1])
                    + "; solving (>= 0.9): " + ", ".join(f"{m.name} {m.accuracy:.2f}" for m in named[1][1]) + ". "
                    + sentence)
    if verdict in ("scan", "position"):
        sentence += (" This disagrees with the paper, which blames the conv's asymmetric fusion of neighbouring "
                     "tokens.")
    return Explanation(ev, tally, verdict, sentence)
