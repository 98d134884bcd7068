"""The paper's claims (and our readings of them) as data: each a set of measured cell values and
comparisons that must hold, checked against a reproduction grid's results.

A :class:`Claim` names its measures (``name -> (cell, split, metric)``), the conditions that make it
hold and the preconditions without which the check means nothing (e.g. "fails" only counts for a
model that learned the easy control). :func:`check` evaluates one claim on the mean over seeds and
on every seed on its own, and returns a :class:`Verdict`; the text of every check is generated from
the conditions, so what the report says is what was computed.

Thresholds: "solves" = test accuracy >= :data:`SOLVES`; "fails" = <= :data:`NEAR_CHANCE` (chance 0.2
on the matching tasks); "fixes" = solves and beats standard by :data:`FIX_MARGIN`; a change "helps"
when it beats the other by :data:`HELPS`; a precondition on learning = :data:`LEARNED`.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

from .paper_grid import Cell

SOLVES = 0.9
NEAR_CHANCE = 0.35
FIX_MARGIN = 0.3
HELPS = 0.1
LEARNED = 0.5

INV, FWD, COMP, SYM = "inverse-matching", "forward-matching", "composite", "composite-symmetric"
COMPOSITIONAL, SYMMETRIC = "match_compositional_answer", "match_symmetric_answer"
_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


@dataclass(frozen=True)
class Measure:
    """One number of one cell: a split's ``accuracy`` or one of its extra metrics."""

    cell: Cell
    split: str
    metric: str = "accuracy"


@dataclass(frozen=True)
class Cond:
    """``lhs op rhs (+ plus)``: ``lhs`` a measure name, ``rhs`` a measure name or a number."""

    lhs: str
    op: str
    rhs: Union[str, float]
    plus: float = 0.0

    def holds(self, v: dict) -> bool:
        rhs = v[self.rhs] if isinstance(self.rhs, str) else self.rhs
        return _OPS[self.op](v[self.lhs], rhs + self.plus)

    def text(self) -> str:
        rhs = self.rhs if isinstance(self.rhs, str) else f"{self.rhs:g}"
        return f"{self.lhs} {self.op} {rhs}" + (f" + {self.plus:g}" if self.plus else "")


@dataclass(frozen=True)
class Claim:
    """A claim and its check.

    Attributes:
        text: the claim in words.
        source: ``"paper"`` (the paper states it) or ``"our reading"`` (what its explanation implies,
            or a control it did not run).
        measures: name -> :class:`Measure`.
        conditions: all must hold for "agrees".
        preconditions: (condition, reason shown when it fails): the check is "inconclusive" unless
            all hold.
    """

    text: str
    source: str
    measures: dict
    conditions: tuple
    preconditions: tuple = ()

    def check_text(self) -> str:
        s = " and ".join(c.text() for c in self.conditions)
        if self.preconditions:
            s += "; counted only if " + " and ".join(c.text() for c, _ in self.preconditions)
        return s


@dataclass
class Verdict:
    """A claim's outcome: ``verdict`` is ``agrees``, ``disagrees``, ``inconclusive: <why>`` or
    ``not run``; ``values`` the means over seeds; ``per_seed`` ``(agreeing seeds, seeds with every
    measure)``."""

    claim: Claim
    verdict: str
    values: dict
    per_seed: tuple = (0, 0)
    seeds: list = field(default_factory=list)


def check(claim: Claim, value_of, seed_values_of) -> Verdict:
    """Evaluate ``claim``. ``value_of(measure)`` -> the mean over seeds or None (no finished run);
    ``seed_values_of(measure)`` -> ``{seed: value}`` of the finished runs."""
    values = {name: value_of(m) for name, m in claim.measures.items()}
    if any(v is None for v in values.values()):
        return Verdict(claim, "not run", values)
    per_seed = {name: seed_values_of(m) for name, m in claim.measures.items()}
    seeds = sorted(set.intersection(*(set(s) for s in per_seed.values())))
    agreeing = [s for s in seeds if all(c.holds({k: per_seed[k][s] for k in per_seed}) for c in claim.conditions)]
    for cond, reason in claim.preconditions:
        if not cond.holds(values):
            return Verdict(claim, f"inconclusive: {reason}", values, (len(agreeing), len(seeds)), agreeing)
    ok = all(c.holds(values) for c in claim.conditions)
    return Verdict(claim, "agrees" if ok else "disagrees", values, (len(agreeing), len(seeds)), agreeing)


def _m(task: str, model: str, mixer: Optional[str], split: str = "test", metric: str = "accuracy", **cell) -> Measure:
    return Measure(Cell(task, model, mixer, **cell), split, metric)


def paper_claims(mixers: Sequence[str] = ("mamba2",)) -> list[Claim]:
    """The claims checked on a grid of :func:`~achilles_interp.training.paper_grid.paper_cells`."""
    claims = [Claim(
        "The Transformer solves inverse sequence matching.", "paper",
        {"transformer": _m(INV, "transformer", None)}, (Cond("transformer", ">=", SOLVES),))]
    not_learned = (Cond("train", ">=", SOLVES), "the model does not fit its training set either")
    for mx in mixers:
        std, fix, pe, byp, ones, noconv = (_m(INV, v, mx) for v in ("mamba", "mamba-bypass-pe", "mamba-pe",
                                                                     "mamba-bypass", "mamba-ones", "mamba-noconv"))
        fails = (Cond("standard", "<=", NEAR_CHANCE), f"standard Mamba does not fail here (test > {NEAR_CHANCE})")
        claims += [
            Claim(f"Standard Mamba ({mx}) fits inverse matching's training set but stays at chance on its test set.",
                  "paper", {"train": _m(INV, "mamba", mx, "train"), "test": std},
                  (Cond("train", ">=", SOLVES), Cond("test", "<=", NEAR_CHANCE))),
            Claim(f"The failure is specific to reversal: standard Mamba ({mx}) learns the forward-matching "
                  "control.", "our reading",
                  {"forward": _m(FWD, "mamba", mx), "inverse": std, "train": _m(FWD, "mamba", mx, "train")},
                  (Cond("forward", ">=", SOLVES), Cond("inverse", "<=", NEAR_CHANCE)), (not_learned,)),
            Claim(f"Conv bypass + positional encoding fixes Mamba ({mx}) on inverse matching.", "paper",
                  {"fix": fix, "standard": std}, (Cond("fix", ">=", SOLVES), Cond("fix", ">=", "standard", FIX_MARGIN)),
                  (fails,)),
            Claim(f"The bypass is needed: positional encoding alone ({mx}) does not fix inverse matching.",
                  "our reading", {"pe": pe, "standard": std}, (Cond("pe", "<", SOLVES),), (fails,)),
            Claim(f"Positional encoding is needed: the bypass alone ({mx}) does not fix inverse matching.", "paper",
                  {"bypass": byp, "standard": std}, (Cond("bypass", "<", SOLVES),), (fails,)),
            Claim(f"The conv's asymmetric fusion causes the failure, so a symmetric (all-ones) kernel ({mx}) helps.",
                  "our reading", {"ones": ones, "standard": std}, (Cond("ones", ">", "standard", HELPS),), (fails,)),
            Claim(f"The conv, not the SSM, causes the failure, so removing the conv ({mx}) helps.", "our reading",
                  {"noconv": noconv, "standard": std}, (Cond("noconv", ">", "standard", HELPS),), (fails,)),
            Claim(f"The Transformer and the fixed Mamba ({mx}) generalise above chance to OOD numbers (~0.55 and "
                  "~0.6 in the paper).", "paper",
                  {"transformer ood": _m(INV, "transformer", None, "ood"),
                   "fix ood": _m(INV, "mamba-bypass-pe", mx, "ood")},
                  (Cond("transformer ood", ">=", NEAR_CHANCE), Cond("fix ood", ">=", NEAR_CHANCE))),
        ]
        c5, o5 = _m(COMP, "mamba", mx, "test", COMPOSITIONAL, n_layers=5, init_gamma=1.0), \
            _m(COMP, "mamba-ones", mx, "test", COMPOSITIONAL, n_layers=5, init_gamma=1.0)
        s5, so5 = (Measure(m.cell, "test", SYMMETRIC) for m in (c5, o5))
        c2, p2 = _m(COMP, "mamba", mx, "test", COMPOSITIONAL, n_layers=2, init_gamma=0.5), \
            _m(COMP, "mamba-pe", mx, "test", COMPOSITIONAL, n_layers=2, init_gamma=0.5)
        s2, sp2 = (Measure(m.cell, "test", SYMMETRIC) for m in (c2, p2))
        claims += [
            Claim(f"Standard Mamba ({mx}; 5 layers, gamma 1) answers the held-out composite pair '43' with the "
                  "compositional solution.", "paper", {"compositional": c5, "symmetric": s5},
                  (Cond("compositional", ">", "symmetric"),),
                  ((Cond("compositional", ">=", LEARNED), "the model gives the compositional answer on fewer than "
                    f"{LEARNED} of the examples"),)),
            Claim(f"An all-ones conv kernel ({mx}; 5 layers, gamma 1) flips it to the symmetric solution.", "paper",
                  {"compositional": o5, "symmetric": so5}, (Cond("symmetric", ">", "compositional"),)),
            Claim(f"At 2 layers, gamma 0.5, standard Mamba ({mx}) learns neither solution.", "paper",
                  {"compositional": c2, "symmetric": s2},
                  (Cond("compositional", "<", LEARNED), Cond("symmetric", "<", LEARNED))),
            Claim(f"Positional encoding ({mx}; 2 layers, gamma 0.5) makes Mamba learn the symmetric solution.",
                  "paper", {"compositional": p2, "symmetric": sp2},
                  (Cond("symmetric", ">", "compositional"), Cond("symmetric", ">=", LEARNED))),
            Claim(f"Full symmetry: standard Mamba ({mx}) learns '34' but not the held-out '43'.", "paper",
                  {"34": _m(SYM, "mamba", mx, "test_34", n_layers=2, init_gamma=0.5),
                   "43": _m(SYM, "mamba", mx, "test", n_layers=2, init_gamma=0.5)},
                  (Cond("34", ">=", SOLVES), Cond("43", "<=", NEAR_CHANCE))),
            Claim(f"Full symmetry: if the conv's asymmetry blocks '43', an all-ones kernel ({mx}) helps.",
                  "our reading", {"ones 43": _m(SYM, "mamba-ones", mx, "test", n_layers=2, init_gamma=0.5),
                                  "standard 43": _m(SYM, "mamba", mx, "test", n_layers=2, init_gamma=0.5)},
                  (Cond("ones 43", ">", "standard 43", HELPS),)),
        ]
    return claims
