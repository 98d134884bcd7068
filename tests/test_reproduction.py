"""The paper grid as data, the claim checks and `achilles-interp reproduce` (CPU, tiny settings)."""

from __future__ import annotations

import json

import pytest

from achilles_interp.cli import main
from achilles_interp.training.claims import Cond, Claim, Measure, check, paper_claims
from achilles_interp.training.paper_grid import Cell, RunSpec, grid_specs, paper_cells
from achilles_interp.training.reproduction import CellResult, RunResult, check_claims, collect, cell_columns

TINY = ["--preset", "quick", "--seeds", "0", "--mixers", "mamba2", "--epochs", "1", "--n-train", "32",
        "--n-eval", "16", "--d-model", "16", "--device", "cpu"]


def test_grid_cells_and_seed_major_specs():
    cells = paper_cells(["mamba2", "mamba1"])
    labels = {(c.task, c.label) for c in cells}
    assert ("inverse-matching", "transformer") in labels and ("forward-matching", "mamba-ones-mamba1") in labels
    assert ("composite", "mamba-ones-mamba2-L5-g1") in labels and ("composite", "mamba-pe-mamba1-L2-g0.5") in labels
    assert ("composite-symmetric", "mamba-mamba2-L2-g0.5") in labels
    # one Transformer per matching task (no mixer), seven variants x two mixers otherwise
    assert sum(c.model == "transformer" for c in cells) == 2
    assert len([c for c in cells if c.task == "inverse-matching"]) == 1 + 6 * 2
    specs = grid_specs(cells, [0, 1], "paper")
    assert [s.seed for s in specs] == [0] * len(cells) + [1] * len(cells)
    s = RunSpec(Cell("composite", "mamba", "mamba2", 5, 1.0), 2, "paper", 40, model_overrides=(("d_model", 16),))
    assert RunSpec.from_json(s.to_json()) == s
    assert s.overrides() == {"n_layers": 5, "init_gamma": 1.0, "d_model": 16}
    assert str(s.run_dir("r")) == "r/composite/mamba-mamba2-L5-g1/seed2"


def _cell_result(cell, test_by_seed, train=1.0):
    runs = [RunResult(seed, True, 200, [], {"accuracy": {"train": train, "test": v}, "loss": {}, "extra": {}}, {})
            for seed, v in test_by_seed.items()]
    return CellResult(cell, runs)


def test_claim_verdicts_and_per_seed_counts():
    std, pe = Cell("inverse-matching", "mamba", "mamba2"), Cell("inverse-matching", "mamba-pe", "mamba2")
    claim = Claim("PE alone does not fix it.", "our reading",
                  {"pe": Measure(pe, "test"), "standard": Measure(std, "test")}, (Cond("pe", "<", 0.9),),
                  ((Cond("standard", "<=", 0.35), "standard does not fail"),))
    results = {std: _cell_result(std, {0: 0.2, 1: 0.21, 2: 0.19}), pe: _cell_result(pe, {0: 0.95, 1: 0.85, 2: 0.97})}
    v = check_claims(results, [claim])[0]
    assert v.verdict == "disagrees" and v.values["pe"] == pytest.approx(0.92333, abs=1e-4)
    assert v.per_seed == (1, 3)  # seed 1 alone has pe < 0.9
    results[std] = _cell_result(std, {0: 0.88, 1: 0.9, 2: 0.87})
    v = check_claims(results, [claim])[0]
    assert v.verdict == "inconclusive: standard does not fail"
    results[pe] = CellResult(pe)  # no finished run
    assert check_claims(results, [claim])[0].verdict == "not run"
    del results[pe]  # a cell the grid never asked for: the claim is left out
    assert check_claims(results, [claim]) == []
    assert claim.check_text() == "pe < 0.9; counted only if standard <= 0.35"
    assert Cond("fix", ">=", "standard", 0.3).text() == "fix >= standard + 0.3"
    assert check(claim, lambda m: 0.5, lambda m: {0: 0.5}).verdict == "inconclusive: standard does not fail"


def test_composite_plot_shows_both_answers_to_the_held_out_pair():
    """The composite plot's bars are its table's columns: a symmetric answer must show, not only the test
    (compositional) accuracy."""
    cell = Cell("composite", "mamba-pe", "mamba2", 2, 0.5)
    extra = {"test": {"match_compositional_answer": 0.03, "match_symmetric_answer": 0.95}}
    final = {"accuracy": {"train": 1.0, "test": 0.03, "test_34": 1.0, "test_seen": 0.99}, "loss": {}, "extra": extra}
    bars = cell_columns(CellResult(cell, [RunResult(1, True, 200, [], final, {})]))
    assert {k: v["mean"] for k, v in bars.items()} == {
        "'43' compositional": 0.03, "'43' symmetric": 0.95, "'34'": 1.0, "trained pairs": 0.99, "train": 1.0}
    matching = _cell_result(Cell("inverse-matching", "mamba", "mamba2"), {0: 0.2})
    matching.runs[0].final["accuracy"]["ood"] = 0.19
    matching.runs[0].history.append({"epoch": 200, "accuracy": matching.runs[0].final["accuracy"]})
    assert {k: v["mean"] for k, v in cell_columns(matching).items()} == {"train": 1.0, "test": 0.2, "ood": 0.19}


def test_every_paper_claim_names_cells_of_the_grid():
    cells = set(paper_cells(["mamba2", "mamba1"]))
    for claim in paper_claims(["mamba2", "mamba1"]):
        for m in claim.measures.values():
            assert m.cell in cells, (claim.text, m.cell)
        names = set(claim.measures)
        for cond in claim.conditions + tuple(c for c, _ in claim.preconditions):
            assert cond.lhs in names and (not isinstance(cond.rhs, str) or cond.rhs in names), claim.text


def test_reproduce_trains_a_tiny_grid_and_writes_the_report(tmp_path):
    out = tmp_path / "docs" / "repro.md"
    rc = main(["reproduce", "--runs-dir", str(tmp_path / "runs"), "--out", str(out), "--tasks", "inverse-matching",
               "forward-matching", "--models", "transformer", "mamba", "mamba-pe", "--jobs", "2", *TINY])
    assert rc == 0
    for task in ("inverse-matching", "forward-matching"):
        for label in ("transformer", "mamba-mamba2", "mamba-pe-mamba2"):
            m = json.loads((tmp_path / "runs" / task / label / "seed0" / "metrics.json").read_text())
            assert m["complete"] and m["run"]["model_config"]["d_model"] == 16 and m["run"]["n_train"] == 32
            assert "format='paper'" in m["run"]["task_repr"]
    text = out.read_text()
    assert "| mamba-pe-mamba2 | 1 |" in text and "## Claim checks" in text
    assert "The failure is specific to reversal" in text
    assert "fixes Mamba" not in text  # no bypass+PE cell was asked for: that claim is left out
    res = json.loads((tmp_path / "docs" / "repro_assets" / "results.json").read_text())
    assert {c["label"] for c in res["cells"]} == {"transformer", "mamba-mamba2", "mamba-pe-mamba2"}
    assert (tmp_path / "docs" / "repro_assets" / "inverse-matching.png").stat().st_size > 1000
    # rendering again from the same runs trains nothing and writes the same tables
    first_tables = text.split("* Report rendered on")[1]
    assert main(["reproduce", "--runs-dir", str(tmp_path / "runs"), "--out", str(out), "--tasks", "inverse-matching",
                 "forward-matching", "--models", "transformer", "mamba", "mamba-pe", "--render-only",
                 *TINY]) == 0
    assert out.read_text().split("* Report rendered on")[1] == first_tables


def test_reproduce_time_limit_lists_the_stopped_run(tmp_path):
    out = tmp_path / "repro.md"
    argv = ["reproduce", "--runs-dir", str(tmp_path / "runs"), "--out", str(out), "--tasks", "forward-matching",
            "--models", "mamba", "--time-limit", "3", *TINY]
    argv[argv.index("--epochs") + 1] = "500"
    argv[argv.index("--n-train") + 1] = "4096"
    assert main(argv) == 0
    tables, rest = out.read_text().split("## Runs not in the tables")
    assert "| forward-matching | mamba-mamba2 | 0 |" in rest


@pytest.mark.parametrize("flag, value, message", [
    ("--epochs", "0", "--epochs must be positive (an integer >= 1), got 0"),
    ("--n-train", "-5", "--n-train must be positive (an integer >= 1), got -5"),
    ("--d-model", "0", "--d-model must be positive (an integer >= 1), got 0"),
    ("--jobs", "0", "--jobs must be at least 1, got 0"),
    ("--time-limit", "-1", "--time-limit must be a positive number of seconds, got -1.0"),
])
def test_reproduce_rejects_bad_numbers_before_writing(tmp_path, capsys, flag, value, message):
    work = tmp_path / "work"
    work.mkdir()
    rc = main(["reproduce", "--runs-dir", str(work / "runs"), "--out", str(work / "r.md"), "--device", "cpu",
               flag, value])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err == f"achilles-interp reproduce: error: {message}"
    assert list(work.iterdir()) == []


def test_reproduce_rejects_duplicate_seeds(tmp_path, capsys):
    rc = main(["reproduce", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "r.md"),
               "--seeds", "1", "0", "1", "--device", "cpu"])
    assert rc == 2 and "--seeds has duplicates: [1, 0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_committed_report_renders_from_the_committed_runs(tmp_path):
    """docs/reproduction.md is what `reproduce --render-only` writes from docs/reproduction_runs."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    first = (root / "docs" / "reproduction.md").read_text().splitlines()[4]
    assert first.startswith("* Command: `achilles-interp reproduce --render-only")
    argv = first.split("`")[1].split()[1:]
    out = tmp_path / "reproduction.md"
    argv = [str(root / a) if a.startswith("docs/") else a for a in argv]
    assert main(argv + ["--out", str(out), "--assets", str(tmp_path / "assets")]) == 0
    strip = ("* Report rendered on", "* Command")
    mine = [ln for ln in out.read_text().splitlines() if not ln.startswith(strip)]
    theirs = [ln for ln in (root / "docs" / "reproduction.md").read_text().splitlines() if not ln.startswith(strip)]
    assert mine == theirs
    assert collect(root / "docs" / "reproduction_runs", paper_cells(["mamba2"]), [0])


def test_committed_quick_preset_report_renders_from_its_runs(tmp_path):
    """docs/quick_preset.md (the CPU preset's pattern) is what its own command writes from
    docs/quick_preset_runs."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "quick_preset.md").read_text()
    cmd = next(ln for ln in doc.splitlines() if ln.startswith("* Command: ")).split("`")[1].split()[1:]
    cmd = [str(root / a) if a.startswith("docs/") else a for a in cmd]
    out = tmp_path / "quick.md"
    assert main(cmd + ["--out", str(out), "--assets", str(tmp_path / "assets")]) == 0
    strip = ("* Report rendered on", "* Command")
    mine = [ln for ln in out.read_text().splitlines() if not ln.startswith(strip)]
    assert mine == [ln for ln in doc.splitlines() if not ln.startswith(strip)]
