"""Composite-function (anchor-function) task of arXiv 2509.17514, and its full-symmetry variant.

Paper's definition (appendix "Data setup", composite function task)
-------------------------------------------------------------------
Sequences of length 8 hold one *key* number followed immediately by an *anchor pair* ``a b``;
the other positions are random numbers of the key's range.  Loss on the last token only.
Train / test split by the key's position: positions counted from 1, each position is a
residue class mod 8; in training the key is never at the position of its own residue, in
test it always is.

* **Standard** (``"composite"``): anchors 1..4, each a shift ``1: +5, 2: +1, 3: -2, 4: -8``;
  the pair ``ab`` applies ``a`` then ``b`` (target ``key + f(a) + f(b)``).  Of the 16 ordered
  pairs, 15 are trained on and ``"43"`` is held out.  The trained pair ``"34"`` is set to
  ``key - 6`` instead of the compositional ``key - 10``.  On ``"43"`` a model that composes the
  anchor functions answers ``key - 10`` (*compositional solution*); one that treats ``43``
  like the seen ``34`` answers ``key - 6`` (*symmetric solution*).
* **Full symmetry** (``"composite-symmetric"``): five anchors 0..4 and two sets of anchor
  functions, set 1 ``{0: +2, 1: +5, 2: +1, 3: -2, 4: -8}`` and set 2 ``{0: -9, 1: +6, 2: -7,
  3: +3, 4: ?}``.  The 20 pairs of distinct anchors are split between them: ``01 02 10 20 14
  41 23 32 34 43`` follow set 1, ``03 30 04 40 12 21 13 31 24 42`` set 2; a pair's target is
  the key plus the sum of its two anchors' shifts in its set, so ``T(ab) = T(ba)`` for every
  pair, and no single function per anchor fits all pairs.  ``"43"`` is held out; the only
  solution the paper's design leaves is the symmetric one, ``T(43) = T(34) = key - 10``
  (which here coincides with composing set 1).  Each training pair is 4.5 % of the data.

Layout: ``tokens [n, 8]``; the key at 0-indexed position ``p`` in ``0..5``, anchors at ``p+1``
and ``p+2``, fillers elsewhere; ``answer_pos = 7`` (the logits at the last token predict the
label).

Formats
-------
* ``format="paper"`` (default): fillers are drawn i.i.d. uniformly from the key range 20..100
  (so they are never an anchor id, and can equal the key: the key is told apart only by the
  anchors after it), as the paper states.
* ``format="special-tokens"`` (our earlier reading, kept as an ablation): fillers from the
  reserved ids ``128..255``, disjoint from anchors, keys and answers.

Our choices where the paper is silent
-------------------------------------
* Token ids (``vocab_size = 256``): anchors are their own ids (1..4, or 0..4); keys drawn
  uniformly from 20..100 (the paper's figure shows keys 39..66; its inverse-matching task uses
  20..100); answers are plain numbers (their own ids; ``label_tokens`` spans every possible
  answer, e.g. 4..110 for the standard task, which shares the ids 4 with an anchor - output
  only).  Answers are not wrapped modulo anything.
* Anchor 4 of set 2 in the full-symmetry task (the paper lists set 2 only for anchors 0..3):
  :data:`SET2_ANCHOR4` = -4, chosen so that the targets of ``04/40`` (key - 13) and ``24/42``
  (key - 11) differ from every other pair's.
* "Position matching the residue": 1-indexed key position ``p + 1`` satisfies
  ``(p + 1) % 8 == key % 8``.  Since the key can only sit at 1-indexed positions 1..6, test keys
  have residues 1..6 (test draws ``p`` uniformly, then the key uniformly among 20..100 with that
  residue).  Train draws ``p`` and the key uniformly and rejects matches.
* Splits (generated separately): ``"train"`` - the training pairs uniformly, non-matching
  positions; ``"test"`` - the held-out pair ``"43"`` only, matching positions (the paper's
  test); ``"test_seen"`` - the training pairs at matching positions (position generalisation
  only); ``"test_34"`` - the mirror pair ``"34"`` at matching positions (the paper's "34-test"
  curve of the full-symmetry figure).
* ``meta`` (all splits): ``key``, ``key_pos`` (0-indexed), ``anchor_a``, ``anchor_b``,
  ``compositional_answer`` (standard: ``key + f(a) + f(b)``; full symmetry: the pair's own
  set composed, i.e. the target, ``key - 10`` on ``43``), ``symmetric_answer`` = the answer of
  the trained pair with the same anchors in either order (on ``"43"``: ``key - 6`` standard,
  ``key - 10`` full symmetry).

Clean/corrupted pairs: the anchor order is swapped (``ab -> ba``; positions ``p+1, p+2``);
clean pairs are drawn with ``a != b`` so the swap is a real change.  On ``"test"`` the clean
pair is ``"43"`` and the corrupted ``"34"``; on ``"train"`` a corrupted ``"43"`` can appear
(from a clean ``"34"``) - that is an analysis input, never training data.  Corrupted labels use
the task's target table; on training pairs they equal the clean labels (``T(ab) = T(ba)``),
on ``"test"`` of ``"composite"`` they differ (``key - 10`` vs ``key - 6``).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError
from .base import Task, TaskBatch, _long

SEQ_LEN = 8
KEY_LO, KEY_HI = 20, 100
SPECIAL_FILLER_LO, SPECIAL_FILLER_HI = 128, 255  # special-tokens format only
VOCAB_SIZE = 256
FORMATS = ("paper", "special-tokens")
HELD_OUT = (4, 3)
MIRROR = (3, 4)

# standard task
ANCHOR_FN = {1: 5, 2: 1, 3: -2, 4: -8}
MODIFIED_SHIFT = -6  # the trained "34" target, instead of the compositional -10

# full-symmetry task
SET2_ANCHOR4 = -4  # not given by the paper (see the module docstring)
SYMMETRY_SETS = ({0: 2, 1: 5, 2: 1, 3: -2, 4: -8}, {0: -9, 1: 6, 2: -7, 3: 3, 4: SET2_ANCHOR4})
SET1_PAIRS = [(0, 1), (0, 2), (1, 0), (2, 0), (1, 4), (4, 1), (2, 3), (3, 2), (3, 4), (4, 3)]


def _tables(symmetric: bool) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray, np.ndarray]:
    """``(pairs, target, compositional, symmetric)``: every ordered anchor pair of the task and
    three shift tables ``[5, 5]`` indexed by anchor ids (entries of pairs not in the task are 0)."""
    target = np.zeros((5, 5), dtype=np.int64)
    if symmetric:
        pairs = [(a, b) for a in range(5) for b in range(5) if a != b]
        for a, b in pairs:
            fn = SYMMETRY_SETS[0 if (a, b) in SET1_PAIRS else 1]
            target[a, b] = fn[a] + fn[b]
        comp = target.copy()
    else:
        pairs = [(a, b) for a in range(1, 5) for b in range(1, 5)]
        for a, b in pairs:
            target[a, b] = ANCHOR_FN[a] + ANCHOR_FN[b]
        comp = target.copy()
        target[MIRROR] = MODIFIED_SHIFT
    sym = target.copy()
    sym[HELD_OUT] = target[MIRROR]  # the seen mirror pair's answer
    return pairs, target, comp, sym


class CompositeTask(Task):
    """Composite-function task (``symmetric=False``) or its full-symmetry variant (``symmetric=True``).

    Args:
        symmetric: the paper's full-symmetry variant (two function sets over anchors 0..4).
        format: ``"paper"`` (fillers from the key range, default) or ``"special-tokens"``
            (fillers from the reserved ids 128..255).

    ``generate(n, seed, split)`` returns ``tokens [n, 8]``, ``labels [n]`` (the target number),
    ``answer_pos = 7`` and ``meta`` as in the module docstring.  ``label_tokens`` is every
    possible answer id.
    """

    splits = ("train", "test", "test_seen", "test_34")
    changes = ("anchors",)
    seq_len = SEQ_LEN
    vocab_size = VOCAB_SIZE

    def __init__(self, symmetric: bool = False, format: str = "paper"):
        if format not in FORMATS:
            raise UserError(f"format must be one of {FORMATS}, got {format!r}")
        self.symmetric = bool(symmetric)
        self.format = format
        self.name = "composite-symmetric" if self.symmetric else "composite"
        pairs, self.target_shift, self.comp_shift, self.sym_shift = _tables(self.symmetric)
        self.train_pairs = [p for p in pairs if p != HELD_OUT]
        shifts = [int(t[a, b]) for t in (self.target_shift, self.comp_shift, self.sym_shift) for a, b in pairs]
        lo, hi = KEY_LO + min(shifts), KEY_HI + max(shifts)
        self.label_tokens = torch.arange(lo, hi + 1, dtype=torch.long)
        anchors = sorted({a for p in pairs for a in p})
        self.special_tokens = {
            "anchors": (anchors[0], anchors[-1]),
            "keys": (KEY_LO, KEY_HI),
            "answers": (int(lo), int(hi)),
            "filler": (KEY_LO, KEY_HI) if format == "paper" else (SPECIAL_FILLER_LO, SPECIAL_FILLER_HI),
        }
        keys = np.arange(KEY_LO, KEY_HI + 1)
        per_res = [keys[keys % 8 == r] for r in range(8)]
        self._res_count = np.array([len(k) for k in per_res])
        self._res_keys = np.zeros((8, self._res_count.max()), dtype=np.int64)
        for r, k in enumerate(per_res):
            self._res_keys[r, : len(k)] = k

    def __repr__(self) -> str:
        return f"CompositeTask(symmetric={self.symmetric}, format={self.format!r})"

    def answer(self, key: int, a: int, b: int) -> int:
        """Ground-truth target for ``key`` and anchor pair ``ab`` under this task's table."""
        return int(key + self.target_shift[a, b])

    # ------------------------------------------------------------------ core
    def _sample(self, n: int, rng: np.random.Generator, split: str, distinct_anchors: bool = False):
        if split == "test":
            pairs = np.array([HELD_OUT])
        elif split == "test_34":
            pairs = np.array([MIRROR])
        else:
            pairs = np.array([p for p in self.train_pairs if not distinct_anchors or p[0] != p[1]])
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
        lo, hi = self.special_tokens["filler"]
        fillers = rng.integers(lo, hi + 1, (n, SEQ_LEN))
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

    def _clean_corrupted(self, n, rng, split, change):
        key, pos, a, b, fillers = self._sample(n, rng, split, distinct_anchors=True)
        clean = self._build(key, pos, a, b, fillers)
        corrupted = self._build(key, pos, b, a, fillers)
        info = {
            "change": "anchor order swapped (ab -> ba)",
            "positions": _long(np.stack([pos + 1, pos + 2], axis=1)),
        }
        return clean, corrupted, info
