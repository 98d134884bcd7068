"""The text versions of inverse / forward sequence matching (tasks/text_matching.py), with a tokenizer
trained offline (tests/test_hub.py: tiny_tokenizer). Labels are re-derived by parsing the decoded
text with a regular expression, independently of the generator."""

from __future__ import annotations

import re

import pytest
import torch

from achilles_interp import HookedMamba, MambaConfig
from achilles_interp.errors import UserError
from achilles_interp.tasks import TextMatchingTask, get_task, list_text_tasks, task_accuracy

EXAMPLE = re.compile(r"Keys:((?: [1-5]\)(?: \d+){3};){5})(?: Other:((?: \d+)+);)? Query:((?: \d+){3})\. "
                     r"Answer:(?: (\d)\n)?")


@pytest.fixture(scope="module")
def tok():
    pytest.importorskip("transformers")
    from test_hub import tiny_tokenizer

    return tiny_tokenizer()


def parse(text: str, reverse: bool):
    """[(keys, query, label or None)] of every example in a rendered row, checking the layout."""
    examples = []
    for m in EXAMPLE.finditer(text):
        keys = [tuple(int(v) for v in k.split()[1:]) for k in m.group(1).strip(";").split(";")]
        query = tuple(int(v) for v in m.group(3).split())
        hits = [i + 1 for i, k in enumerate(keys) if (k[::-1] if reverse else k) == query]
        assert len(hits) == 1, (keys, query)
        given = None if m.group(4) is None else int(m.group(4))
        assert given is None or given == hits[0]
        examples.append((keys, query, hits[0], m.group(2)))
    assert "".join(m.group(0) for m in EXAMPLE.finditer(text)) == text
    return examples


@pytest.mark.parametrize("reverse", [True, False])
def test_rows_parse_and_labels_are_the_matching_key(tok, reverse):
    name = "text-inverse-matching" if reverse else "text-forward-matching"
    task = get_task(name, tokenizer=tok, n_layers=2)      # n_layers accepted, as for every *matching task
    assert name in list_text_tasks() and task.name == name and task.rendering_matches
    batch = task.generate(16, seed=0, split="train")
    assert batch.tokens.shape == (16, task.seq_len) and batch.answer_pos == task.seq_len - 1
    answers = [tok.decode([t]) for t in task.label_tokens.tolist()]
    assert answers == [" 1", " 2", " 3", " 4", " 5"]
    for i, (row, label, index, distractor) in enumerate(zip(
            task.text(batch.tokens), batch.labels.tolist(), batch.meta["label_index"].tolist(),
            batch.meta["distractor_label"].tolist())):
        examples = parse(row, reverse)
        assert len(examples) == task.n_shots + 1
        assert examples[-1][2] == index and task.label_tokens[index - 1].item() == label
        keys, query = examples[-1][0], examples[-1][1]
        other = [i + 1 for i, k in enumerate(keys) if (k if reverse else k[::-1]) == query]
        assert distractor == (task.label_tokens[other[0] - 1].item() if other else 0)
        assert tok.encode(row, add_special_tokens=False) == batch.tokens[i].tolist()    # the text gives the ids
    assert torch.equal(batch.tokens, task.generate(16, seed=0, split="train").tokens)
    assert not torch.equal(batch.tokens, task.generate(16, seed=1, split="train").tokens)


def test_splits_follow_the_synthetic_rules(tok):
    task = TextMatchingTask(tok, n_shots=1)
    for split in ("train", "test", "ood"):
        nums = task.generate(64, seed=0, split=split).meta["numbers"]
        same = (nums % 3 == nums[:, :1] % 3).all(1)
        if split == "train":
            assert not same.any() and bool(((nums >= 20) & (nums <= 100)).all())
        elif split == "test":
            assert same.all()
        else:
            assert bool(((nums >= 101) & (nums <= 200)).all())


@pytest.mark.parametrize("change", ["query", "keys"])
def test_clean_corrupted_pairs(tok, change):
    task = get_task("text-inverse-matching", tokenizer=tok, n_shots=2, n_fillers=3)
    clean, corrupted, info = task.clean_corrupted_pairs(12, seed=0, change=change)
    assert clean.tokens.shape == corrupted.tokens.shape
    assert (clean.labels != corrupted.labels).all()
    assert torch.equal(info["corrupted_labels"], corrupted.labels)
    diff = info["diff_mask"]
    allowed = torch.zeros_like(diff)
    allowed.scatter_(1, info["positions"], True)
    assert not (diff & ~allowed).any() and diff.any(1).all()
    assert not diff[:, : task.question_start].any() and task.question_start > 0    # the shots are the same
    for a, b in zip(task.text(clean.tokens), task.text(corrupted.tokens)):
        ca, cb = parse(a, True)[-1], parse(b, True)[-1]
        if change == "query":
            assert ca[0] == cb[0] and ca[1] != cb[1]
        else:
            assert ca[1] == cb[1] and sorted(ca[0]) == sorted(cb[0]) and ca[0] != cb[0]


def test_works_with_a_model_and_the_task_helpers(tok):
    task = get_task("text-forward-matching", tokenizer=tok, n_shots=1, prepend_bos=True)
    batch = task.generate(4, seed=0, split="test")
    assert (batch.tokens[:, 0] == tok.bos_token_id).all()
    model = HookedMamba(MambaConfig(d_model=16, n_layers=1, vocab_size=len(tok), d_state=4), backend="torch")
    with torch.no_grad():
        logits = model(batch.tokens)
    acc = task_accuracy(logits, batch, restrict_to_labels=task.label_tokens)
    assert 0.0 <= acc <= 1.0 and task.vocab_size == len(tok)


class CharTokenizer:
    """Characters as ids, except a space and a digit, which are one token: " 28" is two tokens."""

    bos_token_id = None

    def encode(self, text, add_special_tokens=False):
        out, i = [], 0
        while i < len(text):
            if text[i] == " " and i + 1 < len(text) and text[i + 1].isdigit():
                out.append(256 + int(text[i + 1]))
                i += 2
            else:
                out.append(ord(text[i]))
                i += 1
        return out

    def decode(self, ids):
        return "".join(f" {i - 256}" if i >= 256 else chr(i) for i in ids)

    def __len__(self):
        return 266


def test_multi_token_numbers_and_bad_tokenizers():
    task = TextMatchingTask(CharTokenizer(), n_shots=1)
    assert task.number_len == 3 and task.rendering_matches      # " 100".." 200" are 3 tokens, the most common
    batch = task.generate(3, seed=0, split="ood")
    assert batch.tokens.shape == (3, task.seq_len)
    assert len(task.query_positions) == 9
    with pytest.raises(UserError, match="only 1 numbers of the train split"):
        task.generate(3, seed=0, split="train")
    with pytest.raises(UserError, match="need a tokenizer"):
        get_task("text-inverse-matching")

    class NoSingleAnswers(CharTokenizer):
        def encode(self, text, add_special_tokens=False):
            return [ord(c) for c in text]

    with pytest.raises(UserError, match="must each be one token"):
        TextMatchingTask(NoSingleAnswers())
