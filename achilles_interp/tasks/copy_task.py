"""COPY task ("Repeat After Me", arXiv 2402.01032; also arXiv 2410.03810).

Definition
----------
A string ``x_1 .. x_m`` of tokens drawn i.i.d. uniformly from an alphabet, a copy separator,
then the model must reproduce the string.  Teacher-forced next-token layout
(``L = 2 * length``)::

    [x_1 ... x_m  COPY  x_1 ... x_{m-1}]
     0 ..... m-1  m     m+1 ...... 2m-1

``answer_pos[:, j] = m + j`` and ``labels[:, j] = x_{j+1}`` for ``j = 0..m-1``: the logits at
the separator predict ``x_1`` and the logits at the copied ``x_j`` predict ``x_{j+1}``.  The last
copied token ``x_m`` is not fed (nothing would be predicted from it).  ``batch.targets`` is the
dense ``[n, L]`` form (-100 on the first ``m`` positions).

Our choices
-----------
* Token ids: alphabet ``0 .. alphabet_size-1`` (default 26, as in "Repeat After Me"),
  ``COPY = alphabet_size``; ``vocab_size = alphabet_size + 1`` unless a larger one is given
  (to share a model's vocabulary).  No BOS/EOS: the length is fixed per task instance.
* Splits ``"train"`` and ``"test"`` share the distribution and use independent streams;
  length generalisation is measured by building tasks of other lengths
  (:func:`achilles_interp.tasks.evaluation.evaluate_by_length`).

Clean/corrupted pairs: one source token ``x_j`` (``j`` uniform in 1..m) is replaced by a
different alphabet token; the teacher-forced copy of ``x_j`` (position ``m + j``, present when
``j < m``) is replaced consistently, so the corrupted batch is a valid COPY example.  Changed
positions: ``info["positions"] = [j-1, m+j]`` (for ``j = m`` only ``[m-1]``, padded by repeating
it).  Labels differ at exactly one answer slot, ``info["answer_index"] = j-1``.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Task, TaskBatch, _long, _positive_int


class CopyTask(Task):
    """COPY of a random string of ``length`` tokens.

    Args:
        length: string length ``m`` (>= 1).
        alphabet_size: number of content tokens (>= 2).
        vocab_size: optional total vocabulary (>= alphabet_size + 1).

    ``generate`` returns ``tokens [n, 2m]``, ``labels [n, m]``, ``answer_pos [n, m]`` and
    ``meta["string"] [n, m]``.
    """

    name = "copy"
    splits = ("train", "test")
    changes = ("source",)

    def __init__(self, length: int = 16, alphabet_size: int = 26, vocab_size: int | None = None):
        self.length = _positive_int("length", length)
        self.alphabet_size = _positive_int("alphabet_size", alphabet_size, minimum=2)
        self.copy_token = self.alphabet_size
        min_vocab = self.alphabet_size + 1
        self.vocab_size = (
            min_vocab if vocab_size is None else _positive_int("vocab_size", vocab_size, minimum=min_vocab)
        )
        self.seq_len = 2 * self.length
        self.label_tokens = torch.arange(self.alphabet_size, dtype=torch.long)
        self.special_tokens = {"alphabet": (0, self.alphabet_size - 1), "copy": self.copy_token}

    def __repr__(self) -> str:
        return (
            f"CopyTask(length={self.length}, alphabet_size={self.alphabet_size}, "
            f"vocab_size={self.vocab_size})"
        )

    def _build(self, string: np.ndarray) -> TaskBatch:
        n, m = string.shape
        tokens = np.concatenate([string, np.full((n, 1), self.copy_token), string[:, :-1]], axis=1)
        pos = np.broadcast_to(np.arange(m, 2 * m), (n, m))
        return TaskBatch(_long(tokens), _long(string), _long(pos), {"string": _long(string)})

    def _generate(self, n, rng, split):
        return self._build(rng.integers(0, self.alphabet_size, (n, self.length)))

    def _clean_corrupted(self, n, rng, split, change):
        m = self.length
        string = rng.integers(0, self.alphabet_size, (n, m))
        j = rng.integers(0, m, n)  # 0-indexed slot
        r = np.arange(n)
        bad = string.copy()
        bad[r, j] = (string[r, j] + rng.integers(1, self.alphabet_size, n)) % self.alphabet_size
        clean, corrupted = self._build(string), self._build(bad)
        second = np.where(j < m - 1, m + 1 + j, j)
        info = {
            "change": "one source token replaced (and its teacher-forced copy)",
            "positions": _long(np.stack([j, second], axis=1)),
            "answer_index": _long(j),
        }
        return clean, corrupted, info
