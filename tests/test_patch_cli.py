"""`achilles-interp patch` on tiny checkpoints saved in a tmp dir; the walkthrough notebook runs."""

import json
import os
import time
from pathlib import Path

import pytest
import torch

from achilles_interp import zoo
from achilles_interp.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ck")
    torch.manual_seed(0)
    common = dict(vocab_size=256, max_len=64, n_layers=2, d_model=8)
    zoo.build_model("mamba", d_state=4, headdim=4, backend="torch", **common).save_pretrained(root / "mamba")
    zoo.build_model("transformer", **common).save_pretrained(root / "transformer")
    return root


def test_patch_cli_writes_everything(checkpoints, tmp_path, capsys):
    out = tmp_path / "attribution_assets"
    t = time.time()
    n_threads = torch.get_num_threads()
    try:
        rc = main(
            [
                "patch",
                "--checkpoint",
                str(checkpoints / "mamba"),
                "--checkpoint",
                str(checkpoints / "transformer"),
                "--n",
                "4",
                "--components",
                "resid_pre",
                "conv_act",
                "ssm_state",
                "gate",
                "attn_out",
                "--fusion-examples",
                "1",
                "--fusion-probes",
                "1",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
    finally:
        torch.set_num_threads(n_threads)
    assert rc == 0 and time.time() - t < 60
    printed = capsys.readouterr().out
    assert "verdict:" in printed and "carries" in printed
    for name in (
        "activation_patching.png",
        "activation_patching.svg",
        "attribution_patching.png",
        "fusion.png",
        "fusion.svg",
        "summary.json",
        "all_cells.csv",
        "activation_patching_mamba.csv",
        "attribution_patching_transformer.json",
        "fusion.json",
    ):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    v = summary["models"]["mamba"]["verdict"]
    md = (tmp_path / "attribution.md").read_text()
    assert v["sentence"] in md and "attribution_assets/activation_patching.png" in md
    assert "verdict" not in summary["models"]["transformer"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_patch_cli_help_and_errors(checkpoints, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["patch", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--checkpoint", "--task", "--components", "--n", "--seed", "--out", "--metric", "--threads"):
        assert opt in text
    assert (
        main(
            [
                "patch",
                "--checkpoint",
                str(checkpoints / "mamba"),
                "--components",
                "conv",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "allowed" in capsys.readouterr().err
    assert main(["patch", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert (
        main(["patch", "--checkpoint", str(checkpoints / "mamba"), "--n", "1", "--out", str(tmp_path / "x")])
        == 2
    )


def test_walkthrough_notebook_executes(tmp_path, monkeypatch):
    nb_path = ROOT / "examples" / "walkthrough.ipynb"
    nb = json.loads(nb_path.read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ACHILLES_WALKTHROUGH_FAST", "1")
    try:
        import nbclient  # noqa: F401
        import nbformat

        from nbclient import NotebookClient

        NotebookClient(
            nbformat.reads(nb_path.read_text(), as_version=4),
            timeout=120,
            resources={"metadata": {"path": str(tmp_path)}},
        ).execute()
    except ImportError:
        # one real file per cell: nnsight reads the source of the `with` block from the file
        env = {"__name__": "__walkthrough__"}
        for k, cell in enumerate(c for c in nb["cells"] if c["cell_type"] == "code"):
            src = "".join(cell["source"])
            script = tmp_path / f"walkthrough_cell{k}.py"
            script.write_text(src)
            exec(compile(src, str(script), "exec"), env)  # noqa: S102
        assert "v" in env and env["v"].sentence
    assert os.environ["ACHILLES_WALKTHROUGH_FAST"] == "1"


def test_patch_cli_default_models(checkpoints, tmp_path, monkeypatch, capsys):
    """With no --checkpoint the command runs on the shipped checkpoints (here: a stand-in folder)."""
    monkeypatch.setattr(zoo, "list_checkpoints", lambda: [])
    assert main(["patch", "--out", str(tmp_path / "none")]) == 2
    assert "no shipped checkpoints" in capsys.readouterr().err
    monkeypatch.undo()
    monkeypatch.setattr(zoo, "checkpoints_dir", lambda: checkpoints)
    n_threads = torch.get_num_threads()
    try:
        rc = main(
            [
                "patch",
                "--n",
                "2",
                "--components",
                "conv_act",
                "ssm_state",
                "gate",
                "--fusion-examples",
                "0",
                "--out",
                str(tmp_path / "docs" / "attribution_assets"),
                "--no-progress",
            ]
        )
    finally:
        torch.set_num_threads(n_threads)
    assert rc == 0
    md = (tmp_path / "docs" / "attribution.md").read_text()
    assert "**mamba**" in md and "transformer" in md


def test_verdict_from_checkpoint_paths(checkpoints):
    from achilles_interp.analyses.verdict import verdict
    from achilles_interp.tasks import get_task

    v = verdict(
        [str(checkpoints / "mamba"), checkpoints / "mamba"],
        task=get_task("inverse-matching", n_layers=2),
        n=4,
    )
    assert "std over 2 models" in v.sentence
    assert all(s == 0 for s in v.std.values()) or any(x != x for x in v.share.values())
    with pytest.raises(ValueError, match="Mamba"):
        verdict([str(checkpoints / "transformer")], task=get_task("inverse-matching", n_layers=2), n=4)
