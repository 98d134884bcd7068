"""Trainer, presets, CLI train/compare, reproduction report: tiny configurations only (CPU, seconds)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from achilles_interp.cli import main
from achilles_interp.tasks import get_task, task_loss
from achilles_interp.training import PRESETS, get_preset, train
from achilles_interp.training.trainer import lr_at, param_groups, seed_everything
from achilles_interp.zoo import build_model, load_model

pytestmark = pytest.mark.usefixtures("one_thread")


from tiny_presets import TINY  # noqa: E402



@pytest.mark.parametrize("name", ["mamba", "transformer", "mamba-bypass-pe"])
def test_few_steps_reduce_loss(name):
    task = get_task("inverse-matching", n_layers=2)
    batch = task.generate(64, seed=0)
    torch.manual_seed(0)
    model = build_model(name, vocab_size=256, max_len=64, d_model=16, d_state=4, headdim=8)
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = task_loss(model(batch.tokens), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_param_groups_and_schedule():
    model = build_model("mamba-ones", vocab_size=32, max_len=16, d_model=16, d_state=4, headdim=8)
    decay, no_decay = param_groups(model, 0.01)
    ids = {id(p) for p in no_decay["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in ids}
    assert any(n.endswith("A_log") for n in names) and any(n.endswith("norm.weight") for n in names)
    assert all(p.dim() >= 2 for p in decay["params"])
    assert not any(
        n.endswith("conv1d.weight")
        for n, p in model.named_parameters()
        if id(p) in ids | {id(q) for q in decay["params"]}
    )  # frozen all-ones kernel excluded
    # paper schedule: 1e-5 -> 2.5e-4 over 10 epochs, cosine back to 1e-5 at epoch 200
    p = PRESETS["paper"]
    assert lr_at(0, 100, p.warmup_epochs, p.epochs, p.lr_min, p.lr_max) == pytest.approx(1e-5)
    assert lr_at(1000, 100, p.warmup_epochs, p.epochs, p.lr_min, p.lr_max) == pytest.approx(2.5e-4)
    assert lr_at(20000, 100, p.warmup_epochs, p.epochs, p.lr_min, p.lr_max) == pytest.approx(1e-5)
    assert get_preset("auto", "cpu").name == "quick" and get_preset("auto", "cuda").name == "paper"


def test_train_writes_everything(tmp_path):
    m = train(
        "inverse-matching", "mamba", tmp_path / "run", preset=TINY, seed=0, device="cpu", progress=False
    )
    for f in ("config.json", "model.safetensors", "train_state.pt", "metrics.json"):
        assert (tmp_path / "run" / f).is_file(), f
    doc = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert doc["complete"] and set(doc["final"]["accuracy"]) == {"train", "test", "ood"}
    assert all(0.0 <= a <= 1.0 for a in doc["final"]["accuracy"].values())
    assert "distractor_rate" in doc["final"]["extra"]["test"]
    assert [h["epoch"] for h in doc["history"]] == [1, 2, 3]
    prov = doc["provenance"]
    assert (
        prov["seed"] == 0 and prov["preset"] == "tiny" and prov["elapsed_s"] > 0 and "cpu" in prov["device"]
    )
    assert prov["backend"] == "torch" and "short_scan_max_len" not in prov  # which arithmetic ran
    assert doc["final"] == m["final"] and doc["history"] == m["history"]
    model = load_model(tmp_path / "run")
    assert model(torch.zeros(1, 29, dtype=torch.long)).shape == (1, 29, 256)
    with pytest.raises(ValueError, match="already holds a run"):
        train(
            "inverse-matching", "mamba", tmp_path / "run", preset=TINY, seed=0, device="cpu", progress=False
        )


@pytest.mark.parametrize("name", ["mamba", "transformer"])
def test_resume_matches_uninterrupted(tmp_path, name):
    def run(out, **kw):
        return train("forward-matching", name, tmp_path / out, preset=TINY, seed=3, device="cpu", progress=False, **kw)

    full = run("full")
    part = run("part", stop_after_epochs=1)
    assert part["final"] is None and not part["complete"]
    done = run("part", resume=True)
    a, b = (
        load_file(str(tmp_path / "full" / "model.safetensors")),
        load_file(str(tmp_path / "part" / "model.safetensors")),
    )
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert done["final"]["accuracy"] == full["final"]["accuracy"]
    assert [h["train_loss"] for h in done["history"]] == [h["train_loss"] for h in full["history"]]


def test_resume_accepts_another_kernel_chunk_length_but_not_another_model(tmp_path):
    # chunk_size only tiles the Mamba-2 scan (the same function), so a run may resume with another;
    # a change to what the model computes (d_state) must still be refused.
    kw = dict(preset=TINY, seed=1, device="cpu", progress=False)
    train("forward-matching", "mamba", tmp_path / "run", stop_after_epochs=1,
          model_overrides={"chunk_size": 256}, **kw)
    with pytest.raises(ValueError, match="differs in \\['model_config'\\]"):
        train("forward-matching", "mamba", tmp_path / "run", resume=True,
              model_overrides={"chunk_size": 16, "d_state": 8}, **kw)
    done = train("forward-matching", "mamba", tmp_path / "run", resume=True,
                 model_overrides={"chunk_size": 16}, **kw)
    assert done["complete"] and len(done["history"]) == TINY.epochs
    assert json.loads((tmp_path / "run" / "config.json").read_text())["chunk_size"] == 16


def test_provenance_says_when_the_package_differs_from_its_commit(tmp_path):
    import shutil
    import subprocess

    from achilles_interp.training.trainer import git_commit, git_modified

    if shutil.which("git") is None:
        pytest.skip("needs git")
    assert git_commit(tmp_path) is None and git_modified(tmp_path) is None  # not a checkout
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text("x = 1\n")
    env = ["-c", "user.name=t", "-c", "user.email=t@t"]
    for cmd in (["init", "-q"], ["add", "."], [*env, "commit", "-q", "-m", "c"]):
        subprocess.run(["git", *cmd], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout
    assert git_commit(pkg) == head.strip() and git_modified(pkg) is False
    (tmp_path / "notes.txt").write_text("outside the package: untracked, ignored\n")
    assert git_modified(pkg) is False
    (pkg / "m.py").write_text("x = 2\n")
    assert git_modified(pkg) is True


def test_cli_train_end_to_end(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(
        [
            "train",
            "--task",
            "composite",
            "--model",
            "mamba-ones",
            "--mixer",
            "mamba2",
            "--out",
            str(out),
            "--preset",
            "quick",
            "--epochs",
            "1",
            "--n-train",
            "64",
            "--d-model",
            "16",
            "--batch-size",
            "32",
            "--seed",
            "1",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert rc == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert set(doc["final"]["accuracy"]) == {"train", "test", "test_seen", "test_34"}
    assert {"match_compositional_answer", "match_symmetric_answer"} <= set(doc["final"]["extra"]["test"])
    assert "accuracy" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--task", "nope", "--model", "mamba"], "unknown task 'nope'"),
        (["--task", "inverse-matching", "--model", "mamba", "--epochs", "0"], "--epochs must be positive"),
        (["--task", "inverse-matching", "--model", "mamba", "--seed", "-1"], "--seed must be >= 0"),
        (["--task", "inverse-matching", "--model", "mamba", "--resume"], "no train_state.pt"),
    ],
)
def test_cli_bad_arguments_exit_2(tmp_path, capsys, argv, message):
    rc = main(["train", *argv, "--out", str(tmp_path / "x"), "--device", "cpu", "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_cli_unknown_model_is_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--task", "inverse-matching", "--model", "mamba3", "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "invalid choice: 'mamba3'" in capsys.readouterr().err


def test_compare_and_reproduce_tiny(tmp_path):
    rc = main(
        [
            "compare",
            "--task",
            "forward-matching",
            "--models",
            "transformer",
            "mamba",
            "--seeds",
            "0",
            "1",
            "--preset",
            "quick",
            "--epochs",
            "1",
            "--n-train",
            "32",
            "--d-model",
            "16",
            "--out",
            str(tmp_path / "cmp"),
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert rc == 0
    res = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert set(res["summary"]) == {"transformer", "mamba-mamba2"}
    assert res["summary"]["transformer"]["accuracy"]["test"]["n"] == 2
    assert "| transformer | 2 |" in (tmp_path / "cmp" / "results.md").read_text()
    assert (tmp_path / "cmp" / "accuracy.png").stat().st_size > 1000


BAD_NUMBERS = [
    ("--epochs", "0", "an integer >= 1"),
    ("--epochs", "-3", "an integer >= 1"),
    ("--n-train", "0", "an integer >= 1"),
    ("--n-train", "-5", "an integer >= 1"),
    ("--threads", "0", "an integer >= 1"),
    ("--threads", "-1", "an integer >= 1"),
    ("--d-model", "0", "an integer >= 1"),
    ("--n-layers", "-1", "an integer >= 1"),
    ("--init-gamma", "0", "a finite number > 0"),
    ("--init-gamma", "-0.5", "a finite number > 0"),
    ("--init-gamma", "nan", "a finite number > 0"),
]


@pytest.mark.parametrize("command", ["train", "compare"])
@pytest.mark.parametrize("flag, value, allowed", BAD_NUMBERS + [("--batch-size", "0", "an integer >= 1")])
def test_cli_rejects_non_positive_numbers_before_writing(tmp_path, capsys, command, flag, value, allowed):
    """train / compare: the same rules and messages as the reproduction driver (one shared helper)."""
    model = ["--model", "mamba"] if command == "train" else ["--models", "mamba", "--seeds", "0"]
    out = tmp_path / "out"
    rc = main([command, "--task", "inverse-matching", *model, "--out", str(out), "--device", "cpu", "--no-progress",
               flag, value])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    got = float(value) if flag == "--init-gamma" else value  # the parsed value
    assert err == f"achilles-interp {command}: error: {flag} must be positive ({allowed}), got {got}"
    assert not out.exists()


def test_positive_settings_helper():
    from achilles_interp.training.validation import positive_settings

    assert positive_settings({"n_layers": 3, "d_model": None, "init_gamma": 0.5}) == {"n_layers": 3,
                                                                                      "init_gamma": 0.5}
    assert list(positive_settings({"init_gamma": 1, "epochs": 2})) == ["init_gamma", "epochs"]
    for name, bad in (("epochs", 0), ("n_eval", -1), ("threads", 1.5), ("batch_size", True),
                      ("init_gamma", 0.0), ("init_gamma", float("inf")), ("init_gamma", float("nan"))):
        with pytest.raises(ValueError, match=f"^--{name.replace('_', '-')} must be positive"):
            positive_settings({name: bad})
    with pytest.raises(KeyError):
        positive_settings({"seed": 1})  # no rule for it: a programming error, not a user error


def test_train_api_rejects_zero_sizes_instead_of_using_the_preset(tmp_path):
    """``n_train=0`` used to fall back to the preset's size silently (``0 or preset``); every
    size / count argument of :func:`train` is now checked by the shared rule, named as the
    keyword argument, before anything is written."""
    for name, bad in (("n_train", 0), ("n_eval", 0), ("batch_size", -4), ("epochs", 0), ("threads", 0),
                      ("epochs", 2.5)):
        out = tmp_path / f"{name}-{bad}"
        with pytest.raises(ValueError, match=f"^{name} must be positive \\(an integer >= 1\\), got {bad}$"):
            train("forward-matching", "mamba", out, preset=TINY, device="cpu", progress=False, **{name: bad})
        assert not out.exists()


def test_training_package_does_not_import_the_cli():
    """training/ is the library layer: the command-line front ends import it, never the reverse."""
    import ast
    from pathlib import Path

    import achilles_interp.training as pkg

    for path in Path(pkg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                name = ("." * node.level) + (node.module or "")
            elif isinstance(node, ast.Import):
                name = " ".join(a.name for a in node.names)
            else:
                continue
            assert "commands" not in name and not name.endswith("cli"), f"{path.name} imports {name}"


def test_shipped_checkpoints_match_their_provenance():
    """Each shipped checkpoint loads, is small, and re-evaluates on the CPU to the test accuracy its GPU
    run recorded, up to 3 examples of the n_eval (the CUDA kernels and the CPU reference agree to ~1e-4
    relative, which can tip an argmax that sits on a tie)."""
    from achilles_interp.training.trainer import evaluate, resolve_task
    from achilles_interp.zoo import checkpoints_dir, list_checkpoints, load_default

    names = list_checkpoints()
    if not names:
        pytest.skip("no shipped checkpoints (python -m achilles_interp.training.ship)")
    for name in names:
        folder = checkpoints_dir() / name
        prov = json.loads((folder / "PROVENANCE.json").read_text())
        assert (folder / "model.safetensors").stat().st_size < 2 * 1024 * 1024
        model = load_default(name)
        run = prov["run"]
        task = resolve_task(run["task"], run["model_config"]["n_layers"])
        batch = task.generate(run["n_eval"], seed=prov["seed"], split="test")
        got = evaluate(model, batch, torch.device("cpu"))["accuracy"]
        assert got == pytest.approx(prov["final_accuracy"]["test"], abs=3 / run["n_eval"] + 1e-9), name


# 6 full batches per epoch (3 eager warm-up steps, the capture, replays) and a smaller last batch
# (eager, on the graph's gradient buffers), for 2 epochs.
GRAPHED = TINY.replace(name="graphed", epochs=2, batch_size=32, n_train=6 * 32 + 20, warmup_epochs=0.5)


@pytest.mark.cuda
@pytest.mark.parametrize(
    "name,mixer,short_scan",
    [("mamba", "mamba2", 0), ("mamba", "mamba1", 0), ("mamba", "mamba1", 64), ("mamba-bypass-pe", "mamba2", 0),
     ("transformer", "mamba2", 0)],
)
def test_cuda_graph_training_equals_eager_training(tmp_path, name, mixer, short_scan, monkeypatch):
    """short_scan: Mamba-1 on the Triton short-sequence scan (captured in the graph like the rest)."""
    from achilles_interp.ops import CUDA_OPS

    monkeypatch.setattr(CUDA_OPS, "short_scan_max_len", short_scan)
    runs = {
        graph: train(
            "inverse-matching", name, tmp_path / str(graph), preset=GRAPHED, seed=1, device="cuda",
            mixer=mixer, progress=False, cuda_graph=graph,
        )
        for graph in (False, True)
    }
    assert runs[False]["provenance"]["train_step"] == "eager"
    assert runs[True]["provenance"]["train_step"] == "cuda-graph"  # no fallback to eager
    if name != "transformer":
        assert runs[True]["provenance"]["short_scan_max_len"] == short_scan
    eager = load_file(str(tmp_path / "False" / "model.safetensors"))
    graphed = load_file(str(tmp_path / "True" / "model.safetensors"))
    kw = GRAPHED.model_kwargs(name, mixer)
    seed_everything(1)  # the trainer's initialisation of seed 1
    initial = build_model(name, vocab_size=256, max_len=64, mixer=mixer, **kw).state_dict()
    moved = 0
    for k in eager:
        torch.testing.assert_close(graphed[k], eager[k], rtol=1e-3, atol=1e-4)
        moved += not torch.equal(eager[k].cpu(), initial[k].cpu()) if k in initial else 0
    assert moved > 0  # the runs trained (so equal weights are not two untouched initialisations)
    for h_e, h_g in zip(runs[False]["history"], runs[True]["history"]):
        assert h_g["train_loss"] == pytest.approx(h_e["train_loss"], rel=1e-3)


@pytest.mark.cuda
def test_cuda_graph_run_resumes_to_the_uninterrupted_run(tmp_path):
    kw = dict(preset=GRAPHED, seed=2, device="cuda", progress=False)
    train("forward-matching", "mamba", tmp_path / "full", **kw)
    train("forward-matching", "mamba", tmp_path / "part", stop_after_epochs=1, **kw)
    done = train("forward-matching", "mamba", tmp_path / "part", resume=True, **kw)
    assert done["provenance"]["train_step"] == "cuda-graph"
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4)


def test_cuda_graph_on_cpu_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="cuda_graph=True needs device='cuda'"):
        train("forward-matching", "mamba", tmp_path / "run", preset=TINY, device="cpu", progress=False, cuda_graph=True)
    assert not (tmp_path / "run").exists()




def test_ctrl_c_saves_mid_epoch_and_the_printed_command_resumes_to_the_same_run(tmp_path):
    """SIGINT to a real `achilles-interp train` before its first epoch ends: exit 130, one line with the
    exact --resume command, no traceback; that command finishes the run with the same metrics and
    weights as an uninterrupted run."""
    import re
    import shlex
    import signal
    import subprocess
    import sys

    from safetensors.torch import load_file

    exe = [sys.executable, "-m", "achilles_interp.cli"]
    args = ["train", "--task", "forward-matching", "--model", "mamba", "--preset", "quick", "--epochs", "2",
            "--n-train", "3200", "--batch-size", "16", "--d-model", "16", "--device", "cpu", "--threads", "1"]
    run_dir = tmp_path / "interrupted"
    proc = subprocess.Popen(exe + args + ["--out", str(run_dir)], stderr=subprocess.PIPE, text=True, bufsize=1)
    seen = ""
    while proc.poll() is None:
        seen += proc.stderr.read(1)
        m = re.findall(r"(\d+)/400 \[", seen)  # tqdm: steps done of 2 x 200
        if m and 20 <= int(m[-1]) < 150:
            proc.send_signal(signal.SIGINT)
            break
    err = seen + proc.stderr.read()
    assert proc.wait() == 130, err
    last = err.strip().splitlines()[-1].split("\r")[-1]
    assert "Traceback" not in err and last.startswith("achilles-interp train: interrupted at epoch 1 of 2, step ")
    resume = last.split("Resume with: ")[1]
    assert resume.endswith(" --resume") and str(run_dir) in resume
    state = torch.load(run_dir / "train_state.pt", weights_only=False)
    assert state["epoch"] == 0 and 0 < state["step"] < 200  # saved mid-epoch
    cmd = shlex.split(resume)
    assert cmd[0] == "achilles-interp"
    done = subprocess.run(exe + cmd[1:] + ["--no-progress"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ref_dir = tmp_path / "uninterrupted"
    ref = subprocess.run(exe + args + ["--out", str(ref_dir), "--no-progress"], capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, ref_dir))
    assert a["final"] == b["final"]
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    wa, wb = (load_file(str(d / "model.safetensors")) for d in (run_dir, ref_dir))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
