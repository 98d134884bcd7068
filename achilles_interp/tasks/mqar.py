"""Multi-query associative recall (MQAR; Zoology, arXiv 2312.04927; see also arXiv 2506.11891).

Definition
----------
A context of ``N`` key-value pairs followed by queries of keys from the context; for each
query the model must output the value bound to that key.  As in Zoology, keys come from one
token range and values from a disjoint one, keys within a sequence are distinct and values
within a sequence are distinct.

Layout (``L = 2 * num_pairs + num_queries``)::

    [k_1 v_1 k_2 v_2 ... k_N v_N  q_1 q_2 ... q_Q]
     0 ................... 2N-1   2N ...... 2N+Q-1

``answer_pos[:, i] = 2N + i`` and ``labels[:, i]`` = the value of key ``q_i``: the logits at
each query token predict its value.  ``batch.targets`` is the dense ``[n, L]`` form (-100
everywhere except the query positions).

Our choices where Zoology differs or is silent
----------------------------------------------
* Queries are placed contiguously right after the context and answers are *not* fed back
  (Zoology scatters queries among noise tokens, with the value following each query in the
  input).  The queried keys are ``num_queries`` distinct context keys in random order
  (default ``num_queries = num_pairs``: every key queried once).
* Token ids: 0 is unused (reserved pad); keys ``1 .. num_keys``; values
  ``num_keys+1 .. num_keys+num_values``; ``vocab_size = 1 + num_keys + num_values`` unless a
  larger one is given.
* Splits ``"train"`` / ``"test"`` share the distribution with independent streams; vary the
  number of pairs with :func:`achilles_interp.tasks.evaluation.evaluate_by_length`.

Clean/corrupted pairs: the value token of one *queried* pair in the context is replaced by a
value id not otherwise used in that sequence.  Exactly one position differs
(``info["positions"] [n, 1]``); the label changes at exactly one answer slot
(``info["answer_index"] [n]``).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError
from .base import Task, TaskBatch, _long, _positive_int


class MQARTask(Task):
    """MQAR with ``num_pairs`` key-value pairs and ``num_queries`` queries.

    Args:
        num_pairs: ``N`` (>= 1, <= num_keys, <= num_values).
        num_queries: ``Q`` (1..N); default ``N``.
        num_keys, num_values: sizes of the key and value id ranges.
        vocab_size: optional total vocabulary (>= 1 + num_keys + num_values).

    ``generate`` returns ``tokens [n, 2N+Q]``, ``labels [n, Q]``, ``answer_pos [n, Q]`` and
    ``meta``: ``keys [n, N]``, ``values [n, N]``, ``query_index [n, Q]`` (which pair each query asks).
    """

    name = "mqar"
    splits = ("train", "test")
    changes = ("value",)

    def __init__(
        self,
        num_pairs: int = 8,
        num_queries: int | None = None,
        num_keys: int = 64,
        num_values: int = 64,
        vocab_size: int | None = None,
    ):
        self.num_keys = _positive_int("num_keys", num_keys)
        self.num_values = _positive_int("num_values", num_values, minimum=2)
        self.num_pairs = _positive_int("num_pairs", num_pairs)
        if self.num_pairs > min(self.num_keys, self.num_values - 1):
            raise UserError(
                f"num_pairs must be <= num_keys ({self.num_keys}) and "
                f"<= num_values - 1 ({self.num_values - 1}), got {num_pairs}"
            )
        self.num_queries = (
            self.num_pairs if num_queries is None else _positive_int("num_queries", num_queries)
        )
        if self.num_queries > self.num_pairs:
            raise UserError(f"num_queries must be in 1..num_pairs ({self.num_pairs}), got {num_queries}")
        self.key_offset = 1
        self.value_offset = 1 + self.num_keys
        min_vocab = 1 + self.num_keys + self.num_values
        self.vocab_size = (
            min_vocab if vocab_size is None else _positive_int("vocab_size", vocab_size, minimum=min_vocab)
        )
        self.seq_len = 2 * self.num_pairs + self.num_queries
        self.label_tokens = torch.arange(
            self.value_offset, self.value_offset + self.num_values, dtype=torch.long
        )
        self.special_tokens = {
            "pad": 0,
            "keys": (self.key_offset, self.key_offset + self.num_keys - 1),
            "values": (self.value_offset, self.value_offset + self.num_values - 1),
        }

    def __repr__(self) -> str:
        return (
            f"MQARTask(num_pairs={self.num_pairs}, num_queries={self.num_queries}, "
            f"num_keys={self.num_keys}, num_values={self.num_values})"
        )

    def _sample(self, n, rng):
        N, Q = self.num_pairs, self.num_queries
        keys = np.argpartition(rng.random((n, self.num_keys)), N - 1, axis=1)[:, :N] + self.key_offset
        vals = np.argpartition(rng.random((n, self.num_values)), N, axis=1)[:, : N + 1] + self.value_offset
        spare = vals[:, N]  # a value id unused in the sequence (for corruption)
        vals = vals[:, :N]
        qidx = np.argsort(rng.random((n, N)), axis=1)[:, :Q]
        return keys, vals, qidx, spare

    def _build(self, keys, vals, qidx) -> TaskBatch:
        n, N = keys.shape
        Q = qidx.shape[1]
        r = np.arange(n)[:, None]
        ctx = np.stack([keys, vals], axis=2).reshape(n, 2 * N)
        tokens = np.concatenate([ctx, keys[r, qidx]], axis=1)
        pos = np.broadcast_to(np.arange(2 * N, 2 * N + Q), (n, Q))
        meta = {"keys": _long(keys), "values": _long(vals), "query_index": _long(qidx)}
        return TaskBatch(_long(tokens), _long(vals[r, qidx]), _long(pos), meta)

    def _generate(self, n, rng, split):
        keys, vals, qidx, _ = self._sample(n, rng)
        return self._build(keys, vals, qidx)

    def _clean_corrupted(self, n, rng, split, change):
        keys, vals, qidx, spare = self._sample(n, rng)
        slot = rng.integers(0, self.num_queries, n)  # which query's pair is corrupted
        r = np.arange(n)
        pair = qidx[r, slot]
        bad_vals = vals.copy()
        bad_vals[r, pair] = spare
        clean, corrupted = self._build(keys, vals, qidx), self._build(keys, bad_vals, qidx)
        info = {
            "change": "value of one queried pair replaced by an unused value id",
            "positions": _long(2 * pair + 1)[:, None],
            "answer_index": _long(slot),
        }
        return clean, corrupted, info
