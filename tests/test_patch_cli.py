"""`achilles-interp patch` (the attribution study) on tiny checkpoints saved in a tmp dir; the
walkthrough notebook runs."""

import json
import math
import os
from pathlib import Path

import pytest
import torch

from achilles_interp import zoo
from achilles_interp.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--n", "4", "--eval-examples", "16", "--probe-examples", "16", "--fusion-examples", "1",
        "--fusion-probes", "1", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ck")
    torch.manual_seed(0)
    common = dict(vocab_size=256, max_len=64, n_layers=2, d_model=8)
    zoo.build_model("mamba", d_state=4, headdim=4, backend="torch", **common).save_pretrained(root / "mamba")
    zoo.build_model("mamba-pe", d_state=4, headdim=4, backend="torch", **common).save_pretrained(root / "mamba-pe")
    zoo.build_model("transformer", **common).save_pretrained(root / "transformer")
    return root


def test_patch_cli_writes_everything(checkpoints, tmp_path, capsys):
    out = tmp_path / "attribution_assets"
    n_threads = torch.get_num_threads()
    try:
        rc = main(["patch", "--checkpoint", str(checkpoints / "mamba"),
                   "--checkpoint", str(checkpoints / "transformer"),
                   "--components", "resid_pre", "conv_act", "ssm_state", "gate", "attn_out", "--out", str(out),
                   "--reproduction", str(ROOT / "docs" / "reproduction_assets" / "results.json"), *TINY])
    finally:
        torch.set_num_threads(n_threads)
    assert rc == 0
    printed = capsys.readouterr().out
    assert "verdict: The evidence" in printed and "mamba: test accuracy" in printed
    for name in ("activation_patching_query.png", "activation_patching_query.svg", "attribution_patching_keys.png",
                 "fusion.png", "fusion.svg", "attention.png", "summary.json", "all_cells.csv.gz", "fusion.json"):
        assert (out / name).is_file(), name
    import pandas as pd

    cells = pd.read_csv(out / "all_cells.csv.gz")
    assert set(cells.model) == {"mamba", "transformer"} and set(cells.pairs) == {"query", "keys"}
    assert set(cells.method) == {"activation", "attribution"}
    summary = json.loads((out / "summary.json").read_text())
    mamba = summary["models"]["mamba"]
    assert set(mamba["pairs"]) == {"query", "keys"}
    shares = mamba["pairs"]["keys"]["path_shares"]["share"]
    assert set(shares) == {"conv", "ssm", "gate"}
    assert all(math.isnan(v) for v in shares.values()) or sum(shares.values()) == pytest.approx(1.0)
    assert summary["models"]["transformer"]["pairs"]["query"]["path_shares"] is None
    assert {p["target"] for p in mamba["probes"]} == {"slot", "position"}
    assert summary["explanation"]["verdict"] in ("conv", "scan", "position", "undecided")
    md = (tmp_path / "attribution.md").read_text()
    assert summary["explanation"]["sentence"] in md and "attribution_assets/activation_patching_keys.png" in md
    assert "## Position information in the residual stream" in md
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_patching_stage_computes_each_run_once(checkpoints):
    """Per kind of pair: two unpatched runs (clean and corrupted, shared by activation and attribution
    patching), then one pass per component whose activations differ between them (every cell fits in
    one pass; the SSM state only before the answer), then one forward for attribution: no cell and no
    baseline is computed twice, and the path shares re-run nothing."""
    from achilles_interp.analyses.study import StudyConfig, study_model

    from achilles_interp.tasks import get_task

    model = zoo.load_model(checkpoints / "mamba", backend="torch").eval()
    task = get_task("inverse-matching", n_layers=2)
    calls, stage = [], {"now": None}
    # every forward pass runs block 0 once
    handle = model.blocks[0].register_forward_pre_hook(lambda mod, args: calls.append(stage["now"]))
    cfg = StudyConfig(n=4, components=("conv_act", "ssm_state", "gate", "mixer_out"), eval_examples=8,
                      fusion_examples=0, probe_examples=0, cells_per_pass=1000)
    try:
        ms = study_model("m", model, task, cfg, stage=lambda s: stage.update(now=s))
    finally:
        handle.remove()
    for change in ("query", "keys"):
        first = min(ms.pairs[change].diff_positions)
        # in a causal model, a component's activations differ from the first changed position on
        live = sum(1 for c in cfg.components if c != "ssm_state") + (1 if first <= task.seq_len - 2 else 0)
        assert calls.count(f"patching ({change} pairs)") == 2 + live
        assert calls.count(f"attribution ({change} pairs)") == 1
    assert ms.pairs["keys"].shares is not None


def test_patch_cli_help_and_errors(checkpoints, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["patch", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--checkpoint", "--task", "--components", "--n", "--seed", "--out", "--metric", "--threads",
                "--probe-examples", "--state-cells", "--reproduction"):
        assert opt in text
    assert main(["patch", "--checkpoint", str(checkpoints / "mamba"), "--components", "conv",
                 "--out", str(tmp_path / "x")]) == 2
    assert "allowed" in capsys.readouterr().err
    assert main(["patch", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert main(["patch", "--checkpoint", str(checkpoints / "mamba"), "--n", "1", "--out", str(tmp_path / "x")]) == 2
    assert main(["patch", "--checkpoint", str(checkpoints / "mamba"), "--probe-examples", "3",
                 "--out", str(tmp_path / "x")]) == 2
    mamba2_only = tmp_path / "results.json"
    mamba2_only.write_text(json.dumps({"cells": [{"task": "inverse-matching", "model": "mamba", "mixer": "mamba2",
                                                  "accuracy": {"test": {"mean": 0.2}}}]}))
    assert main(["patch", "--checkpoint", str(checkpoints / "mamba"), "--mixer", "mamba1",
                 "--reproduction", str(mamba2_only), "--out", str(tmp_path / "x")]) == 2
    assert "has no mamba1 cells (it has: mamba2)" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_patch_cli_default_models(checkpoints, tmp_path, monkeypatch, capsys):
    """With no --checkpoint the command studies the shipped checkpoints (here: stand-ins)."""
    monkeypatch.setattr(zoo, "list_checkpoints", lambda: [])
    assert main(["patch", "--out", str(tmp_path / "none")]) == 2
    assert "no shipped checkpoints" in capsys.readouterr().err
    monkeypatch.undo()
    shipped = tmp_path / "shipped"
    for src, name in (("mamba", "mamba2-inverse"), ("mamba-pe", "mamba2-pe-inverse"),
                      ("transformer", "transformer-inverse")):
        (shipped / name).mkdir(parents=True)
        for f in (checkpoints / src).iterdir():
            (shipped / name / f.name).write_bytes(f.read_bytes())
    monkeypatch.setattr(zoo, "checkpoints_dir", lambda: shipped)
    n_threads = torch.get_num_threads()
    try:
        rc = main(["patch", "--components", "conv_act", "ssm_state", "gate", "--out",
                   str(tmp_path / "docs" / "attribution_assets"), *TINY])
    finally:
        torch.set_num_threads(n_threads)
    assert rc == 0
    md = (tmp_path / "docs" / "attribution.md").read_text()
    for name in ("mamba2-inverse", "mamba2-pe-inverse", "transformer-inverse"):
        assert f"`{name}`" in md


def test_walkthrough_notebook_executes(tmp_path, monkeypatch):
    nb_path = ROOT / "examples" / "walkthrough.ipynb"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ACHILLES_WALKTHROUGH_FAST", "1")
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.reads(nb_path.read_text(), as_version=4)
    NotebookClient(nb, timeout=300, resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert os.environ["ACHILLES_WALKTHROUGH_FAST"] == "1"


def test_patch_studies_the_finished_runs_of_a_grid(checkpoints, tmp_path):
    """--runs-dir picks the finished runs that kept their weights, per task, variant and seed."""
    from achilles_interp.commands.patch import grid_checkpoints

    runs = tmp_path / "runs"
    layout = {("inverse-matching", "mamba-mamba2", 0, "mamba", True), ("inverse-matching", "mamba-mamba2", 1, "mamba",
              False), ("forward-matching", "transformer", 0, "transformer", True),
              ("inverse-matching", "mamba-pe-mamba2", 0, "mamba-pe", True),
              ("inverse-matching", "mamba-mamba1", 0, "mamba", True)}
    for task, label, seed, variant, complete in layout:
        d = runs / task / label / f"seed{seed}"
        d.mkdir(parents=True)
        for f in (checkpoints / variant).iterdir():
            (d / f.name).write_bytes(f.read_bytes())
        mixer = None if variant == "transformer" else label.rsplit("-", 1)[1]   # as the trainer records it
        (d / "metrics.json").write_text(json.dumps(
            {"complete": complete, "run": {"task": task, "model": variant, "mixer": mixer, "seed": seed}}))
    found = grid_checkpoints(runs, ["inverse-matching", "forward-matching"])
    assert [str(p.relative_to(runs)) for p in found] == [
        "inverse-matching/mamba-mamba1/seed0", "inverse-matching/mamba-mamba2/seed0",
        "inverse-matching/mamba-pe-mamba2/seed0", "forward-matching/transformer/seed0"]
    assert len(grid_checkpoints(runs, ["inverse-matching"], models=["mamba"])) == 2
    # one mixer's Mamba runs, and the Transformer runs beside them
    assert [str(p.relative_to(runs)) for p in grid_checkpoints(runs, ["inverse-matching", "forward-matching"],
                                                                mixer="mamba1")] == [
        "inverse-matching/mamba-mamba1/seed0", "forward-matching/transformer/seed0"]
    out = tmp_path / "attribution_assets"
    n_threads = torch.get_num_threads()
    try:
        assert main(["patch", "--runs-dir", str(runs), "--tasks", "inverse-matching", "--components", "conv_act",
                     "ssm_state", "gate", "--out", str(out), *TINY]) == 0
    finally:
        torch.set_num_threads(n_threads)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["models"]) == {"inverse-matching/mamba-mamba2/seed0", "inverse-matching/mamba-pe-mamba2/seed0"}
