"""docs/paper_settings.md is the table of the paper's settings and ours: every `key = value` of its
"ours" column must be what the `paper` preset (or the task's default) really uses."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from achilles_interp.tasks import get_task
from achilles_interp.training.presets import PRESETS

DOC = Path(__file__).resolve().parents[1] / "docs" / "paper_settings.md"
SECTIONS = {
    "Inverse and forward sequence matching": "inverse-matching",
    "Composite function task": "composite",
    "Full-symmetry composite task (`composite-symmetric`)": "composite-symmetric",
    "Training (both tasks)": None,
}
TOP_LEVEL = ("betas", "eps", "weight_decay", "grad_clip", "lr_min", "lr_max", "warmup_epochs", "epochs",
             "eval_every", "n_eval")


def table_claims() -> list[tuple[str, str, str, str, object]]:
    """(section task, row setting, family, key, value) for every `key = value` in an "ours" cell."""
    out, task = [], "?"
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            task = SECTIONS[line[3:].strip()]
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("setting", "---"):
            continue
        setting, ours = cells[0], cells[2]
        family = "transformer" if setting.startswith("Transformer") else (
            "mamba1" if setting.startswith("Mamba-1") else "mamba2")
        for key, raw in re.findall(r"`(\w+) = ([^`]+)`", ours):
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                value = raw
            out.append((task, setting, family, key, value))
    return out


CLAIMS = table_claims()


def test_the_table_names_the_main_settings():
    keys = {(t, k) for t, _, _, k, _ in CLAIMS}
    for task in ("inverse-matching", "composite", "composite-symmetric"):
        assert {(task, "d_model"), (task, "n_train")} <= keys
    assert {(None, "lr_max"), (None, "epochs"), ("inverse-matching", "headdim"), ("composite", "headdim")} <= keys
    assert len(CLAIMS) > 40


@pytest.mark.parametrize("task,setting,family,key,value", CLAIMS, ids=[f"{c[0]}:{c[3]}" for c in CLAIMS])
def test_preset_matches_the_table(task, setting, family, key, value):
    p = PRESETS["paper"]
    if key in TOP_LEVEL:
        actual = getattr(p, key)
        actual = list(actual) if isinstance(actual, tuple) else actual
        value = list(value) if isinstance(value, tuple) else value
    elif key == "batch_size":
        actual = p.batch_size_for(task)
    elif key == "n_train":
        actual = p.n_train_for(task)
    elif key == "format":
        actual = get_task(task).format
    else:
        model = "transformer" if family == "transformer" else "mamba"
        actual = p.model_kwargs(model, "mamba1" if family == "mamba1" else "mamba2", task)[key]
    assert actual == value, f"{setting}: table says {key} = {value!r}, preset has {actual!r}"
