"""Tests of the synthetic task generators (achilles_interp.tasks).

Labels are re-derived by slow, obviously-correct pure-Python parsers of the tokens, independent
of the vectorised generators.
"""

from __future__ import annotations

import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from achilles_interp.tasks import (
    IGNORE_INDEX,
    CompositeTask,
    CopyTask,
    InverseMatchingTask,
    MQARTask,
    TaskBatch,
    evaluate_by_length,
    get_task,
    list_tasks,
    logit_diff,
    task_accuracy,
    task_loss,
)

ALL_NAMES = ["inverse-matching", "forward-matching", "composite", "composite-symmetric", "copy", "mqar"]
ANCHOR_FN = {1: 5, 2: 1, 3: -2, 4: -8}
# the paper's full-symmetry task, written out from its appendix (anchor 4 of set 2: our choice, -4)
SYM_SET1 = {0: 2, 1: 5, 2: 1, 3: -2, 4: -8}
SYM_SET2 = {0: -9, 1: 6, 2: -7, 3: 3, 4: -4}
SYM_SET1_PAIRS = {"01", "02", "10", "20", "14", "41", "23", "32", "34", "43"}
SYM_SET2_PAIRS = {"03", "30", "04", "40", "12", "21", "13", "31", "24", "42"}


# ----------------------------------------------------------------- parsers
def parse_matching(row: list[int], n_layers: int, sep: int | None = None):
    """(keys, separators, fillers, query) of one matching-task row, checking the layout;
    ``sep``: the separator id every separator must be (special-tokens format), None: any."""
    assert len(row) == 20 + 3 * n_layers + 3
    keys, seps = [], []
    for i in range(5):
        chunk = row[4 * i : 4 * i + 4]
        assert sep is None or chunk[3] == sep, "separator missing"
        keys.append(tuple(chunk[:3]))
        seps.append(chunk[3])
    fillers = row[20 : 20 + 3 * n_layers]
    query = tuple(row[-3:])
    return keys, seps, fillers, query


def matching_label(row: list[int], n_layers: int, reverse: bool) -> int:
    keys, _, _, query = parse_matching(row, n_layers)
    hits = [i + 1 for i, k in enumerate(keys) if (tuple(reversed(k)) if reverse else k) == query]
    assert len(hits) == 1, f"ambiguous or no match: {hits}"
    return hits[0]


def parse_composite(row: list[int], special: bool = False):
    """(key, key_pos0, a, b) of one composite row: the anchors are the only tokens below 20 (two,
    adjacent), the key the token before them; fillers are numbers of the key range (paper format)
    or reserved ids 128..255 (``special``)."""
    assert len(row) == 8
    anchor_positions = [i for i, t in enumerate(row) if t < 20]
    assert len(anchor_positions) == 2 and anchor_positions[1] == anchor_positions[0] + 1
    p = anchor_positions[0] - 1
    assert p >= 0 and 20 <= row[p] <= 100
    a, b = row[p + 1], row[p + 2]
    for i, t in enumerate(row):
        if i not in (p, p + 1, p + 2):
            assert (128 <= t <= 255) if special else (20 <= t <= 100), "filler outside its family"
    return row[p], p, a, b


def composite_label(row: list[int], symmetric: bool, special: bool = False) -> int:
    key, _, a, b = parse_composite(row, special)
    if symmetric:
        pair = f"{a}{b}"
        fn = SYM_SET1 if pair in SYM_SET1_PAIRS else SYM_SET2
        assert pair in SYM_SET1_PAIRS | SYM_SET2_PAIRS
        return key + fn[a] + fn[b]
    assert a in ANCHOR_FN and b in ANCHOR_FN
    if (a, b) == (3, 4):
        return key - 6
    return key + ANCHOR_FN[a] + ANCHOR_FN[b]


def copy_labels(row: list[int], m: int) -> list[int]:
    assert row[m] == 26 and len(row) == 2 * m
    assert row[m + 1 :] == row[: m - 1]
    return row[:m]


def mqar_labels(row: list[int], n_pairs: int) -> list[int]:
    table = {}
    for i in range(n_pairs):
        k, v = row[2 * i], row[2 * i + 1]
        assert 1 <= k <= 64 and 65 <= v <= 128 and k not in table
        table[k] = v
    return [table[q] for q in row[2 * n_pairs :]]


def oracle_logits(batch: TaskBatch, vocab: int) -> torch.Tensor:
    logits = torch.zeros(batch.n, batch.seq_len, vocab)
    t = batch.targets
    mask = t != IGNORE_INDEX
    logits[mask.nonzero(as_tuple=True) + (t[mask],)] = 20.0
    return logits


# ------------------------------------------------------------ registry/API
def test_registry_and_bad_args():
    assert list_tasks() == ALL_NAMES
    from achilles_interp.catalog import TASK_NAMES, TEXT_TASK_NAMES
    from achilles_interp.tasks import list_text_tasks

    assert tuple(list_tasks()) == TASK_NAMES  # the CLI's torch-free lists are the registries
    assert tuple(list_text_tasks()) == TEXT_TASK_NAMES
    with pytest.raises(ValueError, match="inverse-matching.*mqar"):
        get_task("nope")
    with pytest.raises(ValueError, match="n_layers"):
        get_task("inverse-matching", n_layers=0)
    task = get_task("inverse-matching")
    with pytest.raises(ValueError, match="positive"):
        task.generate(0)
    with pytest.raises(ValueError, match="train, test, ood"):
        task.generate(4, split="validation")
    with pytest.raises(ValueError, match="seed"):
        task.generate(4, seed=-1)
    with pytest.raises(ValueError, match="train, test, test_seen, test_34"):
        get_task("composite").clean_corrupted_pairs(4, split="ood")
    with pytest.raises(ValueError, match="unknown change 'anchor'.*query, keys"):
        get_task("inverse-matching").clean_corrupted_pairs(4, change="anchor")
    with pytest.raises(ValueError, match="format must be one of"):
        get_task("composite", format="letters")
    with pytest.raises(ValueError, match="needs format='special-tokens'"):
        get_task("inverse-matching", filler="special")
    with pytest.raises(ValueError, match="num_pairs"):
        get_task("mqar", num_pairs=100)
    with pytest.raises(ValueError, match="length"):
        get_task("copy", length=0)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_deterministic_and_shapes(name):
    task = get_task(name)
    for split in task.splits:
        a, b = task.generate(64, seed=3, split=split), task.generate(64, seed=3, split=split)
        c = task.generate(64, seed=4, split=split)
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.labels, b.labels)
        assert not torch.equal(a.tokens, c.tokens)
        assert a.tokens.shape == (64, task.seq_len) and a.tokens.dtype == torch.long
        assert int(a.tokens.min()) >= 0 and int(a.tokens.max()) < task.vocab_size
        assert bool(torch.isin(a.labels, task.label_tokens).all())
        for k, v in a.meta.items():
            assert v.shape[0] == 64, k
    tr, te = task.generate(64, seed=3, split=task.splits[0]), task.generate(64, seed=3, split=task.splits[1])
    assert not torch.equal(tr.tokens, te.tokens)
    c1, k1, _ = task.clean_corrupted_pairs(32, seed=5, split=task.splits[-1])
    c2, k2, _ = task.clean_corrupted_pairs(32, seed=5, split=task.splits[-1])
    assert torch.equal(c1.tokens, c2.tokens) and torch.equal(k1.tokens, k2.tokens)


def test_speed_100k():
    for name in ALL_NAMES:
        t0 = time.perf_counter()
        get_task(name).generate(100_000, seed=0)
        assert time.perf_counter() - t0 < 3.0, name


# --------------------------------------------------------- inverse matching
@pytest.mark.parametrize("reverse", [True, False])
@pytest.mark.parametrize("split", ["train", "test", "ood"])
def test_matching_paper_format_rules(reverse, split):
    """The paper's format: every token a number of the split's range (OOD rows entirely in
    101..200); separators and fillers never one of the row's three numbers."""
    n_layers = 3
    task = InverseMatchingTask(n_layers=n_layers, reverse=reverse)
    assert task.format == "paper"
    batch = task.generate(300, seed=11, split=split)
    assert batch.answer_pos == task.seq_len - 1 == 5 * 4 + 3 * n_layers + 3 - 1
    lo, hi = (101, 200) if split == "ood" else (20, 100)
    filler_values = set()
    for row, label, distractor in zip(
        batch.tokens.tolist(), batch.labels.tolist(), batch.meta["distractor_label"].tolist()
    ):
        assert all(lo <= t <= hi for t in row), "a token outside the split's number range"
        keys, seps, fillers, query = parse_matching(row, n_layers)
        assert matching_label(row, n_layers, reverse) == label
        nums = set(keys[0])
        assert len(nums) == 3 and len(set(keys)) == 5 and all(set(k) == nums for k in keys)
        assert not (set(seps) | set(fillers)) & nums, "a separator or filler is one of the row's three"
        filler_values |= set(fillers) | set(seps)
        other = [i + 1 for i, k in enumerate(keys) if (k if reverse else tuple(reversed(k))) == query]
        assert distractor == (other[0] if other else 0)
        residues = {x % 3 for x in nums}
        if split == "train":
            assert len(residues) > 1
        elif split == "test":
            assert len(residues) == 1
    assert len(filler_values) > 0.9 * (hi - lo + 1)  # spread over the whole range
    counts = torch.bincount(batch.labels, minlength=6)[1:]
    assert (counts > 30).all()  # roughly uniform labels (chance 0.2)


def test_matching_special_token_format():
    """The earlier reading, kept as an option: separator 201, fillers from 210..255 (or numbers with
    filler="numbers"); keys, query and label are the ones the paper format draws for the same seed."""
    task = InverseMatchingTask(n_layers=2, format="special-tokens")
    paper = InverseMatchingTask(n_layers=2).generate(500, seed=0, split="test")
    fillers = set(range(210, 256))
    meaningful = set(range(20, 201)) | {201} | set(range(1, 6))
    assert not fillers & meaningful
    for split in task.splits:
        toks = task.generate(500, seed=0, split=split).tokens
        for row in toks.tolist():
            parse_matching(row, 2, sep=201)
        body = torch.cat([toks[:, :20], toks[:, -3:]], dim=1)
        assert not torch.isin(body, torch.tensor(sorted(fillers))).any()
        assert torch.isin(toks[:, 20:26], torch.tensor(sorted(fillers))).all()
    special = task.generate(500, seed=0, split="test")
    keys = [i for i in range(29) if i % 4 != 3 and not 20 <= i < 26]
    assert torch.equal(special.tokens[:, keys], paper.tokens[:, keys])
    assert torch.equal(special.labels, paper.labels)


@pytest.mark.parametrize("split,lo,hi", [("train", 20, 100), ("test", 20, 100), ("ood", 101, 200)])
def test_matching_number_fillers_in_special_token_format(split, lo, hi):
    """format="special-tokens", filler="numbers": fillers are numbers of the split's range outside
    the row's three; the rest of every row is the one the special-filler task draws."""
    n_layers = 3
    special = InverseMatchingTask(n_layers=n_layers, format="special-tokens").generate(400, seed=5, split=split)
    numbers = InverseMatchingTask(n_layers=n_layers, format="special-tokens", filler="numbers").generate(
        400, seed=5, split=split)
    fill = slice(20, 20 + 3 * n_layers)
    rest = torch.ones(special.tokens.shape[1], dtype=torch.bool)
    rest[fill] = False
    assert torch.equal(numbers.tokens[:, rest], special.tokens[:, rest])
    assert torch.equal(numbers.labels, special.labels)
    f = numbers.tokens[:, fill]
    assert ((f >= lo) & (f <= hi)).all()
    assert not (f[:, :, None] == numbers.meta["numbers"][:, None, :]).any()
    assert len(torch.unique(f)) > 0.8 * (hi - lo + 1 - 3)  # spread over the range, not a few values
    with pytest.raises(ValueError, match="filler must be one of"):
        InverseMatchingTask(filler="letters")


@pytest.mark.parametrize("reverse", [True, False])
def test_matching_key_swap_pairs(reverse):
    """change="keys": the query stays, two key slots swap, the answer moves to the other slot."""
    task = InverseMatchingTask(n_layers=2, reverse=reverse)
    clean, corr, info = task.clean_corrupted_pairs(200, seed=3, split="test", change="keys")
    assert info["change_name"] == "keys"
    assert torch.equal(clean.tokens[:, -3:], corr.tokens[:, -3:])
    diff = info["diff_mask"]
    assert not diff[:, 20:].any() and (diff.sum(1) >= 4).all()  # two distinct permutations per slot
    for c, k, cl, kl, pos in zip(clean.tokens.tolist(), corr.tokens.tolist(), clean.labels.tolist(),
                                 corr.labels.tolist(), info["positions"].tolist()):
        assert matching_label(c, 2, reverse) == cl and matching_label(k, 2, reverse) == kl and cl != kl
        assert sorted(pos) == sorted([4 * (cl - 1) + j for j in range(3)] + [4 * (kl - 1) + j for j in range(3)])
        changed = {i for i in range(29) if c[i] != k[i]}
        assert changed <= set(pos)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n_layers=st.integers(1, 8),
    reverse=st.booleans(),
    split=st.sampled_from(["train", "test", "ood"]),
)
def test_matching_property(seed, n_layers, reverse, split):
    task = InverseMatchingTask(n_layers=n_layers, reverse=reverse)
    batch = task.generate(20, seed=seed, split=split)
    assert batch.tokens.shape == (20, 23 + 3 * n_layers)
    for row, label in zip(batch.tokens.tolist(), batch.labels.tolist()):
        assert matching_label(row, n_layers, reverse) == label
    clean, corr, info = task.clean_corrupted_pairs(20, seed=seed, split=split)
    diff = clean.tokens != corr.tokens
    assert torch.equal(diff, info["diff_mask"])
    assert not diff[:, : task.seq_len - 3].any() and (diff.sum(1) >= 2).all()
    assert info["change_name"] == "query"
    assert (info["positions"] == torch.arange(task.seq_len - 3, task.seq_len)).all()
    assert (clean.labels != corr.labels).all() and torch.equal(corr.labels, info["corrupted_labels"])
    for row, label in zip(corr.tokens.tolist(), corr.labels.tolist()):
        assert matching_label(row, n_layers, reverse) == label


# ---------------------------------------------------------------- composite
@pytest.mark.parametrize("special", [False, True])
def test_composite_rules(special):
    task = CompositeTask(format="special-tokens" if special else "paper")
    train = task.generate(4000, seed=1, split="train")
    assert train.answer_pos == 7 and train.tokens.shape == (4000, 8)
    pairs = set()
    for row, label in zip(train.tokens.tolist(), train.labels.tolist()):
        key, p, a, b = parse_composite(row, special)  # fillers: the key range, never an anchor id
        pairs.add((a, b))
        assert (p + 1) % 8 != key % 8
        assert composite_label(row, False, special) == label
        if (a, b) == (3, 4):
            assert label == key - 6
    assert (4, 3) not in pairs and len(pairs) == 15
    for split in ("test", "test_seen", "test_34"):
        batch = task.generate(2000, seed=2, split=split)
        for row, label in zip(batch.tokens.tolist(), batch.labels.tolist()):
            key, p, a, b = parse_composite(row, special)
            assert (p + 1) % 8 == key % 8
            assert ((a, b) == (4, 3)) == (split == "test")
            assert ((a, b) == (3, 4)) or split != "test_34"
            assert composite_label(row, False, special) == label
    test = task.generate(500, seed=3, split="test")
    key = test.meta["key"]
    assert torch.equal(test.meta["compositional_answer"], key - 10)
    assert torch.equal(test.meta["symmetric_answer"], key - 6)
    assert torch.equal(test.labels, key - 10)
    assert torch.isin(test.meta["compositional_answer"], task.label_tokens).all()


def test_composite_paper_fillers_span_the_key_range():
    toks = CompositeTask().generate(3000, seed=0, split="train").tokens
    anchors = toks < 20
    assert (anchors.sum(1) == 2).all()
    assert set(toks[~anchors].tolist()) == set(range(20, 101))


def test_full_symmetry_task_follows_the_paper():
    """Five anchors 0..4, 20 ordered pairs of distinct anchors, two function sets (appendix, "Full
    symmetry"); 43 held out; every target symmetric; on 43 the symmetric answer T(34) = key - 10."""
    task = CompositeTask(symmetric=True)
    train = task.generate(6000, seed=1, split="train")
    pairs = set()
    for row, label in zip(train.tokens.tolist(), train.labels.tolist()):
        key, p, a, b = parse_composite(row)
        pairs.add(f"{a}{b}")
        assert (p + 1) % 8 != key % 8 and composite_label(row, True) == label
    assert pairs == (SYM_SET1_PAIRS | SYM_SET2_PAIRS) - {"43"} and len(pairs) == 19
    for a in range(5):
        for b in range(5):
            if a != b:
                assert task.answer(50, a, b) == task.answer(50, b, a)
    test = task.generate(500, seed=3, split="test")
    key = test.meta["key"]
    assert torch.equal(test.labels, key - 10) and torch.equal(test.meta["symmetric_answer"], key - 10)
    assert (test.meta["anchor_a"] == 4).all() and (test.meta["anchor_b"] == 3).all()
    mirror = task.generate(500, seed=3, split="test_34")
    assert torch.equal(mirror.labels, mirror.meta["key"] - 10)


def test_composite_clean_corrupted():
    task = CompositeTask()
    for split in task.splits:
        clean, corr, info = task.clean_corrupted_pairs(500, seed=7, split=split)
        diff = clean.tokens != corr.tokens
        assert torch.equal(diff, info["diff_mask"])
        assert (diff.sum(1) == 2).all()
        assert torch.equal(diff.nonzero()[:, 1].view(-1, 2), info["positions"])
        for c, k, kl in zip(clean.tokens.tolist(), corr.tokens.tolist(), corr.labels.tolist()):
            _, p, a, b = parse_composite(c)
            _, p2, a2, b2 = parse_composite(k)  # (fillers of the key range: the parser finds anchors)
            assert (p2, a2, b2) == (p, b, a) and a != b
            assert composite_label(k, False) == kl
    clean, corr, info = task.clean_corrupted_pairs(200, seed=8, split="test")
    key = clean.meta["key"]
    assert torch.equal(info["clean_labels"], key - 10) and torch.equal(info["corrupted_labels"], key - 6)


# ------------------------------------------------------------- copy / MQAR
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), m=st.integers(1, 40))
def test_copy(seed, m):
    task = CopyTask(length=m)
    batch = task.generate(16, seed=seed)
    assert batch.tokens.shape == (16, 2 * m) and batch.labels.shape == (16, m)
    for row, lab in zip(batch.tokens.tolist(), batch.labels.tolist()):
        assert copy_labels(row, m) == lab
    t = batch.targets
    assert (t[:, :m] == IGNORE_INDEX).all() and torch.equal(t[:, m:], batch.labels)
    clean, corr, info = task.clean_corrupted_pairs(16, seed=seed)
    diff = clean.tokens != corr.tokens
    for i in range(16):
        assert set(diff[i].nonzero()[:, 0].tolist()) == set(info["positions"][i].tolist())
        ldiff = (clean.labels[i] != corr.labels[i]).nonzero()[:, 0].tolist()
        assert ldiff == [int(info["answer_index"][i])]
        assert copy_labels(corr.tokens[i].tolist(), m) == corr.labels[i].tolist()


def test_mqar():
    task = MQARTask(num_pairs=6, num_queries=4)
    batch = task.generate(300, seed=0)
    assert batch.tokens.shape == (300, 16) and batch.labels.shape == (300, 4)
    for row, lab in zip(batch.tokens.tolist(), batch.labels.tolist()):
        assert mqar_labels(row, 6) == lab
        assert len(set(row[12:])) == 4
    clean, corr, info = task.clean_corrupted_pairs(300, seed=0)
    diff = clean.tokens != corr.tokens
    assert torch.equal(diff, info["diff_mask"]) and (diff.sum(1) == 1).all()
    assert torch.equal(diff.nonzero()[:, 1:], info["positions"])
    for i, (row, lab) in enumerate(zip(corr.tokens.tolist(), corr.labels.tolist())):
        assert mqar_labels(row, 6) == lab
        assert (clean.labels[i] != corr.labels[i]).nonzero()[:, 0].tolist() == [int(info["answer_index"][i])]


# ------------------------------------------------------------------ metrics
@pytest.mark.parametrize("name", ALL_NAMES)
def test_metrics_with_oracle(name):
    task = get_task(name)
    batch = task.generate(50, seed=0)
    logits = oracle_logits(batch, task.vocab_size)
    assert task_accuracy(logits, batch) == 1.0
    assert task_accuracy(logits, batch, per_sequence=True, restrict_to_labels=task.label_tokens) == 1.0
    assert task_loss(logits, batch).item() < 1e-2
    assert task_loss(torch.zeros_like(logits), batch).item() == pytest.approx(
        torch.log(torch.tensor(float(task.vocab_size))).item(), rel=1e-5
    )
    wrong = task.label_tokens[0].item()
    ld = logit_diff(logits, batch, wrong)
    assert ld.shape == batch.labels.shape
    assert torch.all((ld == 20.0) | (batch.labels == wrong))


def test_logit_diff_inverse_matching_distractor():
    task = get_task("inverse-matching")
    clean, corr, info = task.clean_corrupted_pairs(40, seed=0)
    logits = oracle_logits(clean, task.vocab_size)
    assert torch.allclose(logit_diff(logits, clean, info["corrupted_labels"]), torch.full((40,), 20.0))


def _copy_oracle(tokens):
    n, L = tokens.shape
    m = L // 2
    logits = torch.zeros(n, L, 27)
    logits[torch.arange(n)[:, None], torch.arange(m, L), tokens[:, :m]] = 1.0
    return logits


def _mqar_oracle(tokens):
    n, L = tokens.shape
    logits = torch.zeros(n, L, 129)
    for i, row in enumerate(tokens.tolist()):
        npairs = L // 3  # num_queries == num_pairs
        table = dict(zip(row[0 : 2 * npairs : 2], row[1 : 2 * npairs : 2]))
        for j in range(2 * npairs, L):
            logits[i, j, table[row[j]]] = 1.0
    return logits


def test_evaluate_by_length():
    acc = evaluate_by_length(
        _copy_oracle, lambda m: CopyTask(length=m), [1, 5, 17], n=32, seed=0, batch_size=10
    )
    assert acc == {1: 1.0, 5: 1.0, 17: 1.0}
    acc = evaluate_by_length(_mqar_oracle, lambda k: MQARTask(num_pairs=k), [2, 8], n=16, per_sequence=True)
    assert acc == {2: 1.0, 8: 1.0}
    rand = evaluate_by_length(
        lambda t: torch.randn(t.shape[0], t.shape[1], 27), lambda m: CopyTask(length=m), [20], n=200
    )
    assert rand[20] < 0.15
