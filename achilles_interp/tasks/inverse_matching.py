"""Inverse sequence matching (arXiv 2509.17514, "Achilles' heel of Mamba") and its forward twin.

Paper's definition
------------------
Three distinct numbers ``{a, b, c}`` are drawn from ``[20, 100]``.  Five of their six
permutations ("keys") are listed, each followed by a separator token that is not one of the
numbers.  Then come ``3 * n_layers`` filler tokens (a depthwise conv of width 3 per layer gives
each position a receptive field of ``3 * n_layers`` tokens: the fillers stop the conv alone from
seeing both the keys and the query).  Finally the *query*: one of the five keys reversed.  The
label is the index (1..5) of the key whose reversal is the query (chance 0.2).  Data split:
80 % train (the three numbers NOT all in one residue class mod 3), 10 % test (all three in one
class mod 3), 10 % OOD (numbers from 101..200).

Layout (0-indexed positions, ``L = 5 * 4 + 3 * n_layers + 3``)::

    [k1 k1 k1 SEP  k2 k2 k2 SEP ... k5 k5 k5 SEP | F ... F (3*n_layers) | q q q]
     0 .......................................19   20 ........ 19+3*n_layers   L-3..L-1

``answer_pos = L - 1``: the logits at the last query token predict the label.

Our choices where the paper is silent
-------------------------------------
* Token ids (``vocab_size = 256``): numbers are their own ids (0..200, only 20..200 used);
  label tokens are ids 1..5 (never used as inputs, so no collision with numbers >= 20);
  ``SEP = 201``; fillers are drawn i.i.d. uniformly from ``210..255`` - disjoint from every
  number, the separator and the label ids.  Ids 0, 6..19 and 202..209 are never emitted.
* Filler vocabulary: the paper's "random filler tokens not in the set" admits two readings.
  ``filler="special"`` (the default) draws them from the reserved ids above;
  ``filler="numbers"`` draws numbers of the split's range (20..100, or 101..200 for OOD) other
  than the row's three, so fillers look like keys. Everything else in a row is drawn first, so
  for one seed the two readings give the same keys, query and label.
* Which five permutations, and their order: a uniformly random ordering of the six
  permutations, the first five listed (so the omitted one is uniform).
* The label is uniform over 1..5 and the query is ``reverse(key[label])``.  Since the six
  permutations are closed under reversal, ``reverse(key[label])`` is itself a permutation; it is
  listed as another key (index ``j != label``) unless it is the omitted one.  That key ``j`` is a
  *forward-matching distractor*; its index (0 if not listed) is in ``meta["distractor_label"]``.
  The matching is unambiguous: exactly one listed key reversed equals the query.
* Splits are *generated separately* (the 80/10/10 proportions describe the paper's dataset;
  see :data:`SPLIT_FRACTIONS`).  The OOD split draws three distinct numbers uniformly from
  101..200 with no residue constraint.  Train/test draw three distinct numbers uniformly from
  20..100 conditioned on the residue rule.
* ``forward-matching`` (control twin): identical, except ``query = key[label]`` (not reversed);
  ``meta["distractor_label"]`` is then the index of the key whose *reversal* equals the query.

Clean/corrupted pairs: the clean example is a normal example; the corrupted one replaces the
query by the query of a different label ``label' != label`` (uniform over the other four),
everything else identical.  Tokens differ only inside the query (positions ``L-3..L-1``;
two distinct permutations of three distinct numbers differ in 2 or 3 of them; ``diff_mask``
says which).  ``info["corrupted_labels"] = label'``.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from .base import Task, TaskBatch, _long, _positive_int

NUM_LO, NUM_HI = 20, 100  # train / test numbers (inclusive)
OOD_LO, OOD_HI = 101, 200  # OOD numbers (inclusive)
LABEL_IDS = (1, 2, 3, 4, 5)
SEP = 201
FILLER_LO, FILLER_HI = 210, 255  # inclusive
VOCAB_SIZE = 256
N_KEYS = 5
FILLERS = ("special", "numbers")
SPLIT_FRACTIONS = {"train": 0.8, "test": 0.1, "ood": 0.1}

PERMS = np.array(list(itertools.permutations(range(3))), dtype=np.int64)  # [6, 3]
_REV = np.array(
    [[tuple(PERMS[j]) for j in range(6)].index(tuple(p[::-1])) for p in PERMS]
)  # perm idx of reversal


def _sample_distinct(rng: np.random.Generator, n: int, values: np.ndarray, k: int = 3) -> np.ndarray:
    """``[n, k]`` rows of ``k`` distinct entries of ``values`` (uniform over k-subsets)."""
    r = rng.random((n, len(values)))
    idx = np.argpartition(r, k, axis=1)[:, :k]
    return values[idx]


def sample_numbers(rng: np.random.Generator, n: int, split: str) -> np.ndarray:
    """Three distinct numbers per row, ``[n, 3]``, obeying the split's rule (see module docstring)."""
    if split == "ood":
        return _sample_distinct(rng, n, np.arange(OOD_LO, OOD_HI + 1))
    pool = np.arange(NUM_LO, NUM_HI + 1)
    if split == "test":
        by_class = np.stack([pool[pool % 3 == r] for r in range(3)])  # [3, 27]
        cls = rng.integers(0, 3, n)
        pick = _sample_distinct(rng, n, np.arange(by_class.shape[1]))
        return by_class[cls[:, None], pick]
    # train: rejection-sample rows whose three numbers all share a residue class
    out = _sample_distinct(rng, n, pool)
    bad = np.all(out % 3 == (out[:, :1] % 3), axis=1)
    while bad.any():
        out[bad] = _sample_distinct(rng, int(bad.sum()), pool)
        bad = np.all(out % 3 == (out[:, :1] % 3), axis=1)
    return out


class InverseMatchingTask(Task):
    """Inverse (``reverse=True``) or forward (``reverse=False``) sequence matching.

    Args:
        n_layers: number of Mamba layers the task is built for; ``3 * n_layers`` fillers.
        reverse: True -> ``"inverse-matching"`` (query = reversed key); False ->
            ``"forward-matching"`` (query = key).
        filler: ``"special"`` (default): fillers from the reserved ids 210..255; ``"numbers"``:
            fillers are numbers of the split's range (20..100, or 101..200 for OOD) other than the
            row's three - indistinguishable from keys by their ids.

    ``generate(n, seed, split)`` returns ``tokens [n, 23 + 3 * n_layers]``, ``labels [n]`` in
    1..5, ``answer_pos = L - 1`` and ``meta``: ``numbers [n, 3]``, ``keys [n, 5, 3]``,
    ``query [n, 3]``, ``key_perm [n, 5]`` (index into :data:`PERMS` of each listed key),
    ``distractor_label [n]`` (0..5, see module docstring).
    """

    splits = ("train", "test", "ood")

    def __init__(self, n_layers: int = 2, reverse: bool = True, filler: str = "special"):
        self.n_layers = _positive_int("n_layers", n_layers)
        self.reverse = bool(reverse)
        if filler not in FILLERS:
            raise ValueError(f"filler must be one of {FILLERS}, got {filler!r}")
        self.filler = filler
        self.name = "inverse-matching" if self.reverse else "forward-matching"
        self.n_filler = 3 * self.n_layers
        self.seq_len = N_KEYS * 4 + self.n_filler + 3
        self.vocab_size = VOCAB_SIZE
        self.label_tokens = torch.tensor(LABEL_IDS, dtype=torch.long)
        self.query_positions = torch.arange(self.seq_len - 3, self.seq_len)
        self.special_tokens = {
            "numbers_train_test": (NUM_LO, NUM_HI),
            "numbers_ood": (OOD_LO, OOD_HI),
            "labels": (1, 5),
            "sep": SEP,
            "filler": (FILLER_LO, FILLER_HI),
        }

    def __repr__(self) -> str:
        return f"InverseMatchingTask(n_layers={self.n_layers}, reverse={self.reverse}, filler={self.filler!r})"

    # ------------------------------------------------------------------ core
    def _query_perm(self, key_perm: np.ndarray, label_idx: np.ndarray) -> np.ndarray:
        p = key_perm[np.arange(len(label_idx)), label_idx]
        return _REV[p] if self.reverse else p

    def _sample(self, n: int, rng: np.random.Generator, split: str):
        nums = sample_numbers(rng, n, split)  # [n, 3]
        key_perm = np.argsort(rng.random((n, 6)), axis=1)[:, :N_KEYS]  # [n, 5]
        label_idx = rng.integers(0, N_KEYS, n)
        if self.filler == "special":
            fillers = rng.integers(FILLER_LO, FILLER_HI + 1, (n, self.n_filler))
        else:  # numbers of the split's range that are not one of the row's three
            lo, hi = (OOD_LO, OOD_HI) if split == "ood" else (NUM_LO, NUM_HI)
            fillers = rng.integers(lo, hi + 1, (n, self.n_filler))
            clash = (fillers[:, :, None] == nums[:, None, :]).any(-1)
            while clash.any():
                fillers[clash] = rng.integers(lo, hi + 1, int(clash.sum()))
                clash = (fillers[:, :, None] == nums[:, None, :]).any(-1)
        return nums, key_perm, label_idx, fillers

    def _build(self, nums, key_perm, label_idx, fillers) -> TaskBatch:
        n = nums.shape[0]
        rows = np.arange(n)[:, None, None]
        keys = nums[rows, PERMS[key_perm]]  # [n, 5, 3]
        qperm = self._query_perm(key_perm, label_idx)
        query = nums[np.arange(n)[:, None], PERMS[qperm]]  # [n, 3]
        key_block = np.concatenate([keys, np.full((n, N_KEYS, 1), SEP)], axis=2).reshape(n, N_KEYS * 4)
        tokens = np.concatenate([key_block, fillers, query], axis=1)
        # the other matching rule's answer (distractor): forward rule for inverse task and vice versa
        other_perm = qperm if self.reverse else _REV[qperm]
        hit = key_perm == other_perm[:, None]
        distractor = np.where(hit.any(1), hit.argmax(1) + 1, 0)
        meta = {
            "numbers": _long(nums),
            "keys": _long(keys),
            "query": _long(query),
            "key_perm": _long(key_perm),
            "distractor_label": _long(distractor),
        }
        return TaskBatch(_long(tokens), _long(label_idx + 1), self.seq_len - 1, meta)

    def _generate(self, n, rng, split):
        return self._build(*self._sample(n, rng, split))

    def _clean_corrupted(self, n, rng, split):
        nums, key_perm, label_idx, fillers = self._sample(n, rng, split)
        wrong_idx = (label_idx + rng.integers(1, N_KEYS, n)) % N_KEYS
        clean = self._build(nums, key_perm, label_idx, fillers)
        corrupted = self._build(nums, key_perm, wrong_idx, fillers)
        info = {
            "change": "query replaced by the query of a different key (label changes)",
            "positions": self.query_positions.expand(n, 3).clone(),
        }
        return clean, corrupted, info
