"""Inverse and forward sequence matching as in-context text, for pretrained language models.

The synthetic task (:mod:`achilles_interp.tasks.inverse_matching`) written out in words: five keys,
each three numbers, then a query, and the model must name the key that matches it. A prompt of
``n_shots`` solved examples (default 3) and one unsolved::

    Keys: 1) 28 92 37; 2) 37 28 92; 3) 92 37 28; 4) 28 37 92; 5) 92 28 37; Query: 37 92 28. Answer: 1
    Keys: ...; Query: ... . Answer:

* ``text-inverse-matching``: the query is one key **reversed**; ``text-forward-matching``: the
  query is one key as listed. The answer is its index, rendered as the token of ``" 1"`` .. ``" 5"``
  (``label_tokens``, in that order; each must be one token of the tokenizer).
* Numbers, keys, splits and the permutation logic are the synthetic task's: three distinct
  numbers per example from 20..100 (train: not all in one residue class mod 3; test: all in one;
  ``ood``: 101..200), five of their six orderings listed as keys, the label uniform over 1..5.
  Shots draw their own numbers from the same split.
* ``n_fillers`` (default 0) adds ``" Other: n n ...;"`` between the keys and the query: random
  numbers of the split, not the example's three (the synthetic task's fillers).

One length per batch: renderings of equal token length, not padding
---------------------------------------------------------------------
Every row of a batch must have one length and clean/corrupted rows must line up token by token,
so the task does not pad. The prompt is built from fixed pieces (``"Keys:"``, ``" 1)"``, ``";"``,
``" Query:"``, ``"."``, ``" Answer:"``, ``"\\n"``), each tokenised once, and numbers rendered
``" n"``; only the numbers change from row to row. The numbers used are those whose rendering is
``k`` tokens, ``k`` (``number_len``) the most common length over 20..200 for this tokenizer
(typically 1 for a byte-level BPE such as GPT-NeoX's, which the Mamba checkpoints use). So every
row has the same layout, and the key / query positions are the same in every row. The token ids
are the concatenation of the pieces' ids; ``rendering_matches`` tells whether tokenising the
rendered text of a row in one go gives the same ids (it does for byte-level BPE tokenizers, whose
pre-tokenizer splits at the same places).

``answer_pos = L - 1`` (the ``":"`` of the last ``" Answer:"``): its logits predict the answer.

Clean/corrupted pairs (``changes = ("query", "keys")``), both on the last example only (the shots
are the same in both rows), with ``info["corrupted_labels"]`` the other answer:

* ``"query"``: the query is replaced by the query of another key (label' != label, uniform over the
  other four); the tokens differ only in the query's numbers.
* ``"keys"``: the query stays; the matching key and the key in slot label' swap places; the tokens
  differ only in those two keys' numbers.
"""

from __future__ import annotations

from collections import Counter
from typing import Optional

import numpy as np
import torch

from ..errors import UserError
from .base import Task, TaskBatch, _long, _positive_int

N_KEYS = 5
NUM_LO, NUM_HI = 20, 100
OOD_LO, OOD_HI = 101, 200
PERMS = np.array([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]], dtype=np.int64)
REVERSED = np.array([[tuple(q) for q in PERMS].index(tuple(p[::-1])) for p in PERMS])  # index of each reversal
MIN_POOL = 6


class TextMatchingTask(Task):
    """In-context text inverse (``reverse=True``) or forward sequence matching.

    Args:
        tokenizer: a Hugging Face tokenizer (e.g. ``model.tokenizer``); required.
        reverse: True -> ``"text-inverse-matching"``; False -> ``"text-forward-matching"``.
        n_shots: solved examples before the question (>= 0).
        n_fillers: filler numbers between the keys and the query of every example (>= 0).
        prepend_bos: start every row with the tokenizer's BOS token.
        n_layers: accepted so that every ``*matching`` task is built alike; unused (the fillers
            are ``n_fillers``, not per layer).

    ``generate(n, seed, split)``: ``tokens [n, seq_len]``, ``labels [n]`` (token ids of the answers),
    ``answer_pos = seq_len - 1`` and ``meta``: ``numbers [n, 3]``, ``keys [n, 5, 3]``, ``query [n, 3]``,
    ``key_perm [n, 5]``, ``label_index [n]`` (1..5), ``distractor_label [n]`` (the answer token the
    other matching rule would give, 0 when that key is not listed).
    """

    splits = ("train", "test", "ood")
    changes = ("query", "keys")

    def __init__(self, tokenizer=None, reverse: bool = True, n_shots: int = 3, n_fillers: int = 0,
                 prepend_bos: bool = False, n_layers: Optional[int] = None):
        if tokenizer is None or not callable(getattr(tokenizer, "encode", None)):
            raise UserError("the text matching tasks need a tokenizer: get_task('text-inverse-matching', "
                            "tokenizer=model.tokenizer)")
        self.tokenizer = tokenizer
        self.reverse = bool(reverse)
        self.name = "text-inverse-matching" if self.reverse else "text-forward-matching"
        self.n_shots = _positive_int("n_shots", n_shots, minimum=0)
        self.n_fillers = _positive_int("n_fillers", n_fillers, minimum=0)
        self.prepend_bos = bool(prepend_bos)
        if self.prepend_bos and getattr(tokenizer, "bos_token_id", None) is None:
            raise UserError("prepend_bos=True but the tokenizer has no BOS token")
        self._piece_ids: dict[str, list[int]] = {}
        labels = [self._piece(f" {i}") for i in range(1, N_KEYS + 1)]
        bad = [f"' {i}' -> {ids}" for i, ids in enumerate(labels, 1) if len(ids) != 1]
        if bad:
            raise UserError(f"the answers ' 1'..' 5' must each be one token of this tokenizer; {', '.join(bad)}")
        self.label_tokens = torch.tensor([ids[0] for ids in labels], dtype=torch.long)
        self.number_len, self.pools = self._number_pools()
        self.vocab_size = len(tokenizer)
        self.special_tokens = {f"answer_{i}": int(t) for i, t in enumerate(self.label_tokens.tolist(), 1)}
        self.special_tokens.update({"numbers_train_test": (NUM_LO, NUM_HI), "numbers_ood": (OOD_LO, OOD_HI)})
        layout = self._layout()
        self.seq_len = len(layout["ids"])
        self.query_positions = torch.tensor(layout["query"], dtype=torch.long)
        self.key_positions = torch.tensor(layout["keys"], dtype=torch.long)          # [5, 3 * number_len]
        self.question_start = layout["question_start"]      # where the unsolved example begins
        self.rendering_matches = self._check_rendering()

    def __repr__(self) -> str:
        return (f"TextMatchingTask(reverse={self.reverse}, n_shots={self.n_shots}, n_fillers={self.n_fillers}, "
                f"seq_len={self.seq_len})")

    # ---------------------------------------------------------------- rendering
    def _piece(self, text: str) -> list[int]:
        if text not in self._piece_ids:
            self._piece_ids[text] = list(self.tokenizer.encode(text, add_special_tokens=False))
        return self._piece_ids[text]

    def _number_pools(self) -> tuple[int, dict[str, np.ndarray]]:
        """The token length k of a rendered number, and per split the numbers rendered in k tokens."""
        lengths = {v: len(self._piece(f" {v}")) for v in range(NUM_LO, OOD_HI + 1)}
        k = Counter(lengths.values()).most_common(1)[0][0]
        pool = {"train": np.array([v for v in range(NUM_LO, NUM_HI + 1) if lengths[v] == k])}
        pool["test"] = pool["train"]
        pool["ood"] = np.array([v for v in range(OOD_LO, OOD_HI + 1) if lengths[v] == k])
        return k, pool

    def _example(self, nums, key_perm, qperm, fillers, label: Optional[int]):
        """Ids of one example and the offsets (within it) of each key's and the query's number tokens."""
        ids, keys = list(self._piece("Keys:")), []
        for i in range(N_KEYS):
            ids += self._piece(f" {i + 1})")
            keys.append(len(ids))
            for j in PERMS[key_perm[i]]:
                ids += self._piece(f" {nums[j]}")
            ids += self._piece(";")
        if len(fillers):
            ids += self._piece(" Other:")
            for v in fillers:
                ids += self._piece(f" {v}")
            ids += self._piece(";")
        ids += self._piece(" Query:")
        query = len(ids)
        for j in PERMS[qperm]:
            ids += self._piece(f" {nums[j]}")
        ids += self._piece(".") + self._piece(" Answer:")
        if label is not None:
            ids += self._piece(f" {label + 1}") + self._piece("\n")
        return ids, keys, query

    def _row(self, shots, final) -> tuple[list[int], list[int], int, int]:
        """Ids of one row (BOS, the solved shots, the question), the final example's key / query offsets
        and where it starts."""
        ids = [self.tokenizer.bos_token_id] if self.prepend_bos else []
        for nums, key_perm, label, fillers in shots:
            ids += self._example(nums, key_perm, self._query_perm(key_perm, label), fillers, label)[0]
        nums, key_perm, label, fillers = final
        ex, keys, query = self._example(nums, key_perm, self._query_perm(key_perm, label), fillers, None)
        return ids + ex, [len(ids) + k for k in keys], len(ids) + query, len(ids)

    def _layout(self) -> dict:
        """Positions of the last example's key and query number tokens (the same in every row)."""
        pool = np.concatenate([self.pools["train"], self.pools["ood"]])
        nums = np.resize(pool, 3)
        example = (nums, np.arange(N_KEYS), 0, np.resize(pool, self.n_fillers))
        ids, keys, query, start = self._row([example] * self.n_shots, example)
        w = 3 * self.number_len
        return {"ids": ids, "keys": [list(range(k, k + w)) for k in keys], "query": list(range(query, query + w)),
                "question_start": start}

    def _check_rendering(self) -> bool:
        ids = self._layout()["ids"]
        text = self.tokenizer.decode(ids)
        again = list(self.tokenizer.encode(text, add_special_tokens=False))
        return again == ids

    def text(self, tokens: torch.Tensor) -> list:
        """The rendered text of each row of ``tokens [n, L]``."""
        return [self.tokenizer.decode(row.tolist()) for row in tokens]

    # ---------------------------------------------------------------- sampling
    def _query_perm(self, key_perm, label: int) -> int:
        p = int(key_perm[label])
        return int(REVERSED[p]) if self.reverse else p

    def _numbers(self, rng: np.random.Generator, split: str) -> np.ndarray:
        pool = self.pools[split]
        if split == "test":
            classes = [pool[pool % 3 == r] for r in range(3)]
            classes = [c for c in classes if len(c) >= 3]
            if not classes:
                raise UserError(f"{self.name}: no residue class mod 3 has 3 numbers rendered in {self.number_len} "
                                "token(s) by this tokenizer; use another split")
            c = classes[rng.integers(len(classes))]
            return c[rng.permutation(len(c))[:3]]
        while True:
            nums = pool[rng.permutation(len(pool))[:3]]
            if split != "train" or not np.all(nums % 3 == nums[0] % 3):
                return nums

    def _example_sample(self, rng: np.random.Generator, split: str):
        nums = self._numbers(rng, split)
        key_perm = np.argsort(rng.random(6))[:N_KEYS]
        label = int(rng.integers(N_KEYS))
        others = np.setdiff1d(self.pools[split], nums)
        fillers = others[rng.integers(len(others), size=self.n_fillers)] if self.n_fillers else np.array([], int)
        return nums, key_perm, label, fillers

    def _sample(self, n: int, rng: np.random.Generator, split: str):
        if len(self.pools[split]) < MIN_POOL:
            raise UserError(f"{self.name}: only {len(self.pools[split])} numbers of the {split} split are rendered "
                            f"in {self.number_len} token(s) by this tokenizer; need {MIN_POOL}")
        rows = []
        for _ in range(n):
            shots = [self._example_sample(rng, split) for _ in range(self.n_shots)]
            rows.append((shots, self._example_sample(rng, split)))
        return rows

    def _build(self, rows) -> TaskBatch:
        tokens, nums, perms, labels = [], [], [], []
        for shots, final in rows:
            ids = self._row(shots, final)[0]
            tokens.append(ids)
            nums.append(final[0])
            perms.append(final[1])
            labels.append(final[2])
        if len({len(t) for t in tokens}) != 1 or len(tokens[0]) != self.seq_len:
            raise UserError(f"{self.name}: rows of different token lengths; the tokenizer renders the pieces "
                            "inconsistently")
        nums, perms, label_idx = np.array(nums), np.array(perms), np.array(labels)
        n = len(rows)
        keys = nums[np.arange(n)[:, None, None], PERMS[perms]]                        # [n, 5, 3]
        qperm = np.array([self._query_perm(p, lab) for p, lab in zip(perms, label_idx)])
        query = nums[np.arange(n)[:, None], PERMS[qperm]]
        other = qperm if self.reverse else REVERSED[qperm]   # the key the other matching rule would pick
        hit = perms == other[:, None]
        lab_tokens = self.label_tokens.numpy()
        distractor = np.where(hit.any(1), lab_tokens[hit.argmax(1)], 0)
        meta = {"numbers": _long(nums), "keys": _long(keys), "query": _long(query), "key_perm": _long(perms),
                "label_index": _long(label_idx + 1), "distractor_label": _long(distractor)}
        return TaskBatch(_long(np.array(tokens)), _long(lab_tokens[label_idx]), self.seq_len - 1, meta)

    def _generate(self, n, rng, split):
        return self._build(self._sample(n, rng, split))

    def _clean_corrupted(self, n, rng, split, change):
        rows = self._sample(n, rng, split)
        wrong = [(final[2] + int(rng.integers(1, N_KEYS))) % N_KEYS for _, final in rows]
        clean = self._build(rows)
        corrupted_rows, positions = [], []
        for (shots, (nums, key_perm, label, fillers)), w in zip(rows, wrong):
            if change == "query":
                corrupted_rows.append((shots, (nums, key_perm, w, fillers)))
                positions.append(self.query_positions)
            else:
                swapped = key_perm.copy()
                swapped[label], swapped[w] = key_perm[w], key_perm[label]
                corrupted_rows.append((shots, (nums, swapped, w, fillers)))
                positions.append(torch.cat([self.key_positions[label], self.key_positions[w]]))
        corrupted = self._build(corrupted_rows)
        what = ("query replaced by the query of a different key (label changes)" if change == "query" else
                "matching key swapped with another key slot, query unchanged (label changes)")
        return clean, corrupted, {"change": what, "positions": torch.stack(positions)}
