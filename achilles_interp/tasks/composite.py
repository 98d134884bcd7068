"""Composite-function (anchor-function) task of arXiv 2509.17514, and its full-symmetry variant.

Paper's definition
------------------
Sequences of length 8 hold one *key* number followed immediately by an *anchor pair* ``a b``
(anchors are tokens 1..4); the other positions are filler.  Each anchor is a function:
``1: +5, 2: +1, 3: -2, 4: -8``; the pair ``ab`` applies ``a`` then ``b``, so the target is
``key + f(a) + f(b)``.  Of the 16 ordered pairs, 15 are trained on and ``"43"`` is held out.
The trained pair ``"34"`` is given the target ``key - 6`` instead of the compositional
``key - 10``.  On the held-out ``"43"`` a model that composes the anchor functions answers
``key - 10`` (*compositional solution*); a model that treats ``ab`` like ``ba`` answers
``key - 6`` (the answer of the seen ``"34"``; *symmetric solution*).  Keys are never at the
position matching their residue mod 8 in training and always are in test (positions counted
from 1).  Loss on the last token only.

Layout: ``tokens [n, 8]``; the key at 0-indexed position ``p`` in ``0..5``, anchors at ``p+1``
and ``p+2``, filler elsewhere; ``answer_pos = 7`` (the logits at the last token predict the
label).

Our choices where the paper is silent
-------------------------------------
* Token ids (``vocab_size = 256``): anchors 1..4; keys drawn uniformly from 20..100 and
  answers are plain numbers (their own ids; answers lie in 4..110, so the answer ``4``
  for key 20 + pair 44 shares its id with anchor 4 - output only, anchors are never labels
  otherwise); fillers i.i.d. uniform from ``128..255``, disjoint from anchors, keys and answers.
* "Position matching the residue": 1-indexed key position ``p + 1`` satisfies
  ``(p + 1) % 8 == key % 8``.  Since the key can only sit at 1-indexed positions 1..6, test keys
  have residues 1..6 (test draws ``p`` uniformly, then the key uniformly among 20..100 with that
  residue).  Train draws ``p`` and the key uniformly and rejects matches.
* Splits: ``"train"`` - the 15 training pairs uniformly, non-matching positions;
  ``"test"`` - the held-out pair ``"43"`` only, matching positions (the paper's test);
  ``"test_seen"`` - the 15 training pairs at matching positions (position generalisation only).
* ``"composite-symmetric"`` (the paper's full-symmetry variant, our reading: the paper's text
  was not available to us verbatim): the target table is made fully symmetric, every ``ab``
  and ``ba`` map to the same answer, i.e. the held-out ``"43"`` has ground truth ``key - 6``
  (= ``"34"``).  Every training pair already satisfies ``T(ab) = T(ba)`` (additions commute and
  only ``"34"`` was modified), so the training distribution is identical to ``"composite"``;
  the variants differ in the ground truth of ``"43"``, i.e. in which generalisation counts as
  correct.
* ``meta`` (all splits): ``key``, ``key_pos`` (0-indexed), ``anchor_a``, ``anchor_b``,
  ``compositional_answer = key + f(a) + f(b)``, ``symmetric_answer`` = the answer of the
  trained pair with the same anchors in either order (for ``"43"``: ``key - 6``).

Clean/corrupted pairs: the anchor order is swapped (``ab -> ba``; positions ``p+1, p+2``);
clean pairs are drawn with ``a != b`` so the swap is a real change.  On ``"test"`` the clean
pair is ``"43"`` and the corrupted ``"34"``; on ``"train"`` a corrupted ``"43"`` can appear
(from a clean ``"34"``) - that is an analysis input, never training data.  Corrupted labels use
the task's target table; on training pairs they usually equal the clean labels (``T(ab) = T(ba)``),
on ``"test"`` of ``"composite"`` they differ (``key - 10`` vs ``key - 6``).
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Task, TaskBatch, _long

SEQ_LEN = 8
ANCHOR_FN = {1: 5, 2: 1, 3: -2, 4: -8}
KEY_LO, KEY_HI = 20, 100
FILLER_LO, FILLER_HI = 128, 255
VOCAB_SIZE = 256
HELD_OUT = (4, 3)
MODIFIED = (3, 4)
MODIFIED_SHIFT = -6

ALL_PAIRS = [(a, b) for a in range(1, 5) for b in range(1, 5)]
TRAIN_PAIRS = [p for p in ALL_PAIRS if p != HELD_OUT]


def _tables(symmetric: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Target, compositional and symmetric shift tables, each ``[5, 5]`` indexed by anchor ids."""
    comp = np.zeros((5, 5), dtype=np.int64)
    for a, b in ALL_PAIRS:
        comp[a, b] = ANCHOR_FN[a] + ANCHOR_FN[b]
    target = comp.copy()
    target[MODIFIED] = MODIFIED_SHIFT
    sym = target.copy()
    sym[HELD_OUT] = target[MODIFIED]  # the seen mirror pair's answer
    return (sym if symmetric else target), comp, sym


class CompositeTask(Task):
    """Composite-function task (``symmetric=False``) or its full-symmetry variant (``symmetric=True``).

    ``generate(n, seed, split)`` returns ``tokens [n, 8]``, ``labels [n]`` (the target number),
    ``answer_pos = 7`` and ``meta`` as in the module docstring.  ``label_tokens`` is every
    possible answer id (4..110).
    """

    splits = ("train", "test", "test_seen")
    seq_len = SEQ_LEN
    vocab_size = VOCAB_SIZE

    def __init__(self, symmetric: bool = False):
        self.symmetric = bool(symmetric)
        self.name = "composite-symmetric" if self.symmetric else "composite"
        self.target_shift, self.comp_shift, self.sym_shift = _tables(self.symmetric)
        shifts = self.comp_shift[1:, 1:]
        lo, hi = KEY_LO + min(shifts.min(), MODIFIED_SHIFT), KEY_HI + max(shifts.max(), MODIFIED_SHIFT)
        self.label_tokens = torch.arange(lo, hi + 1, dtype=torch.long)
        self.special_tokens = {
            "anchors": (1, 4),
            "keys": (KEY_LO, KEY_HI),
            "answers": (int(lo), int(hi)),
            "filler": (FILLER_LO, FILLER_HI),
        }
        keys = np.arange(KEY_LO, KEY_HI + 1)
        per_res = [keys[keys % 8 == r] for r in range(8)]
        self._res_count = np.array([len(k) for k in per_res])
        self._res_keys = np.zeros((8, self._res_count.max()), dtype=np.int64)
        for r, k in enumerate(per_res):
            self._res_keys[r, : len(k)] = k

    def __repr__(self) -> str:
        return f"CompositeTask(symmetric={self.symmetric})"

    def answer(self, key: int, a: int, b: int) -> int:
        """Ground-truth target for ``key`` and anchor pair ``ab`` under this task's table."""
        return int(key + self.target_shift[a, b])

    # ------------------------------------------------------------------ core
    def _sample(self, n: int, rng: np.random.Generator, split: str, distinct_anchors: bool = False):
        if split == "test":
            pairs = np.array([HELD_OUT])
        else:
            pairs = np.array([p for p in TRAIN_PAIRS if not distinct_anchors or p[0] != p[1]])
        ab = pairs[rng.integers(0, len(pairs), n)]
        pos = rng.integers(0, SEQ_LEN - 2, n)  # 0-indexed key position, 0..5
        if split == "train":
            key = rng.integers(KEY_LO, KEY_HI + 1, n)
            bad = (pos + 1) % 8 == key % 8
            while bad.any():
                m = int(bad.sum())
                pos[bad] = rng.integers(0, SEQ_LEN - 2, m)
                key[bad] = rng.integers(KEY_LO, KEY_HI + 1, m)
                bad = (pos + 1) % 8 == key % 8
        else:
            res = (pos + 1) % 8
            key = self._res_keys[res, (rng.random(n) * self._res_count[res]).astype(np.int64)]
        fillers = rng.integers(FILLER_LO, FILLER_HI + 1, (n, SEQ_LEN))
        return key, pos, ab[:, 0].copy(), ab[:, 1].copy(), fillers

    def _build(self, key, pos, a, b, fillers) -> TaskBatch:
        n = key.shape[0]
        tokens = fillers.copy()
        r = np.arange(n)
        tokens[r, pos] = key
        tokens[r, pos + 1] = a
        tokens[r, pos + 2] = b
        meta = {
            "key": _long(key),
            "key_pos": _long(pos),
            "anchor_a": _long(a),
            "anchor_b": _long(b),
            "compositional_answer": _long(key + self.comp_shift[a, b]),
            "symmetric_answer": _long(key + self.sym_shift[a, b]),
        }
        return TaskBatch(_long(tokens), _long(key + self.target_shift[a, b]), SEQ_LEN - 1, meta)

    def _generate(self, n, rng, split):
        return self._build(*self._sample(n, rng, split))

    def _clean_corrupted(self, n, rng, split):
        key, pos, a, b, fillers = self._sample(n, rng, split, distinct_anchors=True)
        clean = self._build(key, pos, a, b, fillers)
        corrupted = self._build(key, pos, b, a, fillers)
        info = {
            "change": "anchor order swapped (ab -> ba)",
            "positions": _long(np.stack([pos + 1, pos + 2], axis=1)),
        }
        return clean, corrupted, info
