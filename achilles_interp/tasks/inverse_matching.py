"""Inverse sequence matching (arXiv 2509.17514, "Achilles' heel of Mamba") and its forward twin.

Paper's definition
------------------
Three distinct numbers ``{a, b, c}`` are drawn from ``[20, 100]``.  Five of their six
permutations ("keys") are listed, each followed by a random token that is not in the row's set.
Then come ``3 * n_layers`` random filler tokens, also not in the set (a causal conv of width 4
per layer reaches 3 tokens back, so ``n_layers`` convs alone reach ``3 * n_layers`` tokens: the
fillers stop the convs alone from seeing both the keys and the query).  Finally the *query*: one
of the five keys reversed.  The label is the index (1..5) of the key whose reversal is the query
(chance 0.2).  All numerical values of a sequence are drawn from 20..100.  Data split: 80 %
train (the three numbers NOT all in one residue class mod 3), 10 % test (all three in one class
mod 3), 10 % OOD (all sequence elements from 101..200).

Layout (0-indexed positions, ``L = 5 * 4 + 3 * n_layers + 3``)::

    [k1 k1 k1 s1  k2 k2 k2 s2 ... k5 k5 k5 s5 | F ... F (3*n_layers) | q q q]
     0 .......................................19   20 ........ 19+3*n_layers   L-3..L-1

``answer_pos = L - 1``: the logits at the last query token predict the label.

Formats
-------
* ``format="paper"`` (the default, what the paper's appendix states): **every token is a
  number**. The separator after each key and the ``3 * n_layers`` fillers are random numbers
  of the split's range (20..100 for train and test, 101..200 for OOD) that are not one of the
  row's three numbers; each separator and filler is drawn independently and uniformly from
  that range minus the row's three. So an OOD row lies entirely in 101..200, and a separator or
  filler cannot be told from a key by its id, only by its position.
* ``format="special-tokens"`` (our earlier reading, kept as an ablation): the separator is the
  reserved id ``SEP = 201``; fillers are drawn from the reserved ids ``210..255``
  (``filler="special"``, the default of this format) or, with ``filler="numbers"``, from the
  split's range minus the row's three as in the paper format.

Our choices where the paper is silent
-------------------------------------
* Token ids (``vocab_size = 256``): numbers are their own ids (0..200, only 20..200 used);
  label tokens are ids 1..5 (never used as inputs, so no collision with numbers >= 20).
  In the special-tokens format ``SEP = 201`` and fillers ``210..255``; ids 0, 6..19 and
  202..209 are never emitted.
* Separators and fillers (paper format) are drawn i.i.d. (they may repeat each other); the
  paper says only "a random token that is not in the set".
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
* Everything but the separators and fillers is drawn first, so for one seed all formats give
  the same numbers, keys, query and label.

Clean/corrupted pairs (``change=``)
-----------------------------------
* ``"query"`` (default): the corrupted row replaces the query by the query of a different
  label ``label' != label`` (uniform over the other four), everything else identical.  Tokens
  differ only inside the query (positions ``L-3..L-1``).  The whole query lies inside the
  conv window of the answer position, so the answer can change without the scan carrying it.
* ``"keys"``: the query stays; the matching key and the key in slot ``label'`` swap places,
  so the answer moves to ``label'``.  Tokens differ only inside those two key slots (positions
  ``0..19``), far outside any conv window of the answer: whatever carries the change to the
  answer position goes through the scan (and the residual stream of later positions).

``info["corrupted_labels"] = label'`` in both.

"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from ..errors import UserError
from .base import Task, TaskBatch, _long, _positive_int

NUM_LO, NUM_HI = 20, 100  # train / test numbers (inclusive)
OOD_LO, OOD_HI = 101, 200  # OOD numbers (inclusive)
LABEL_IDS = (1, 2, 3, 4, 5)
SEP = 201
FILLER_LO, FILLER_HI = 210, 255  # inclusive
VOCAB_SIZE = 256
N_KEYS = 5
FORMATS = ("paper", "special-tokens")
FILLERS = ("special", "numbers")  # filler vocabularies of the special-tokens format
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


def numbers_outside(rng: np.random.Generator, nums: np.ndarray, lo: int, hi: int, k: int) -> np.ndarray:
    """``[n, k]`` numbers drawn i.i.d. uniformly from ``lo..hi`` (inclusive) minus each row's own
    numbers ``nums [n, 3]`` (rejection sampling: with >= 78 allowed values it ends in a few rounds)."""
    out = rng.integers(lo, hi + 1, (nums.shape[0], k))
    clash = (out[:, :, None] == nums[:, None, :]).any(-1)
    while clash.any():
        out[clash] = rng.integers(lo, hi + 1, int(clash.sum()))
        clash = (out[:, :, None] == nums[:, None, :]).any(-1)
    return out


class InverseMatchingTask(Task):
    """Inverse (``reverse=True``) or forward (``reverse=False``) sequence matching.

    Args:
        n_layers: number of Mamba layers the task is built for; ``3 * n_layers`` fillers.
        reverse: True -> ``"inverse-matching"`` (query = reversed key); False ->
            ``"forward-matching"`` (query = key).
        format: ``"paper"`` (default): separators and fillers are numbers of the split's range
            other than the row's three; ``"special-tokens"``: separator id 201 and fillers
            chosen by ``filler``.
        filler: special-tokens format only: ``"special"`` (its default, reserved ids 210..255) or
            ``"numbers"`` (as in the paper format). The paper format takes None or ``"numbers"``.

    ``generate(n, seed, split)`` returns ``tokens [n, 23 + 3 * n_layers]``, ``labels [n]`` in
    1..5, ``answer_pos = L - 1`` and ``meta``: ``numbers [n, 3]``, ``keys [n, 5, 3]``,
    ``query [n, 3]``, ``key_perm [n, 5]`` (index into :data:`PERMS` of each listed key),
    ``distractor_label [n]`` (0..5, see module docstring).
    ``clean_corrupted_pairs(n, seed, split, change)``: ``change`` in :attr:`changes`.
    """

    splits = ("train", "test", "ood")
    changes = ("query", "keys")

    def __init__(self, n_layers: int = 2, reverse: bool = True, format: str = "paper",
                 filler: str | None = None):
        self.n_layers = _positive_int("n_layers", n_layers)
        self.reverse = bool(reverse)
        if format not in FORMATS:
            raise UserError(f"format must be one of {FORMATS}, got {format!r}")
        if filler is not None and filler not in FILLERS:
            raise UserError(f"filler must be one of {FILLERS} (or None), got {filler!r}")
        if format == "paper" and filler == "special":
            raise UserError("filler='special' needs format='special-tokens': in the paper format every "
                             "token is a number (fillers are numbers of the split's range)")
        self.format = format
        self.filler = filler or ("numbers" if format == "paper" else "special")
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
        }
        if format == "special-tokens":
            self.special_tokens["sep"] = SEP
        if self.filler == "special":
            self.special_tokens["filler"] = (FILLER_LO, FILLER_HI)

    def __repr__(self) -> str:
        extra = f", filler={self.filler!r}" if self.format == "special-tokens" else ""
        return (f"InverseMatchingTask(n_layers={self.n_layers}, reverse={self.reverse}, "
                f"format={self.format!r}{extra})")

    # ------------------------------------------------------------------ core
    def _query_perm(self, key_perm: np.ndarray, label_idx: np.ndarray) -> np.ndarray:
        p = key_perm[np.arange(len(label_idx)), label_idx]
        return _REV[p] if self.reverse else p

    def _sample(self, n: int, rng: np.random.Generator, split: str):
        """Everything random in ``n`` rows: numbers, key permutations, label index, separators
        ``[n, 5]`` and fillers ``[n, 3 * n_layers]``."""
        nums = sample_numbers(rng, n, split)  # [n, 3]
        key_perm = np.argsort(rng.random((n, 6)), axis=1)[:, :N_KEYS]  # [n, 5]
        label_idx = rng.integers(0, N_KEYS, n)
        lo, hi = (OOD_LO, OOD_HI) if split == "ood" else (NUM_LO, NUM_HI)
        if self.filler == "special":
            fillers = rng.integers(FILLER_LO, FILLER_HI + 1, (n, self.n_filler))
        else:
            fillers = numbers_outside(rng, nums, lo, hi, self.n_filler)
        if self.format == "paper":
            seps = numbers_outside(rng, nums, lo, hi, N_KEYS)
        else:
            seps = np.full((n, N_KEYS), SEP, dtype=np.int64)
        return nums, key_perm, label_idx, seps, fillers

    def _build(self, nums, key_perm, label_idx, seps, fillers) -> TaskBatch:
        n = nums.shape[0]
        rows = np.arange(n)[:, None, None]
        keys = nums[rows, PERMS[key_perm]]  # [n, 5, 3]
        qperm = self._query_perm(key_perm, label_idx)
        query = nums[np.arange(n)[:, None], PERMS[qperm]]  # [n, 3]
        key_block = np.concatenate([keys, seps[:, :, None]], axis=2).reshape(n, N_KEYS * 4)
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

    def _clean_corrupted(self, n, rng, split, change):
        nums, key_perm, label_idx, seps, fillers = self._sample(n, rng, split)
        wrong_idx = (label_idx + rng.integers(1, N_KEYS, n)) % N_KEYS
        clean = self._build(nums, key_perm, label_idx, seps, fillers)
        rows = np.arange(n)
        if change == "query":
            corrupted = self._build(nums, key_perm, wrong_idx, seps, fillers)
            positions = self.query_positions.expand(n, 3).clone()
            what = "query replaced by the query of a different key (label changes)"
        else:  # keys: the matching key and the key in slot wrong_idx swap places
            swapped = key_perm.copy()
            swapped[rows, label_idx], swapped[rows, wrong_idx] = key_perm[rows, wrong_idx], key_perm[rows, label_idx]
            corrupted = self._build(nums, swapped, wrong_idx, seps, fillers)
            slot = np.arange(3)[None, :]
            positions = _long(np.concatenate([4 * label_idx[:, None] + slot, 4 * wrong_idx[:, None] + slot], axis=1))
            what = "matching key swapped with another key slot, query unchanged (label changes)"
        return clean, corrupted, {"change": what, "positions": positions}
