"""The Dask grid engine (achilles_interp.training.distributed) on local CPU clusters of 2 worker
processes: a tiny grid finishes, a failing run is reported with its traceback while the others
finish, reruns skip finished runs, GPU slots are pinned through CUDA_VISIBLE_DEVICES, and a run
whose worker is killed mid-run resumes from its checkpoint to the uninterrupted run's result."""

import io
import json
import os
import signal
import threading
import time

import pytest
import torch
from safetensors.torch import load_file

distributed = pytest.importorskip("distributed")

from achilles_interp.training.distributed import local_cluster, run_specs  # noqa: E402
from achilles_interp.cli import main  # noqa: E402
from achilles_interp.training.paper_grid import Cell, RunSpec  # noqa: E402
from achilles_interp.training.presets import PRESETS  # noqa: E402
from tiny_presets import TINY as BASE  # noqa: E402
from achilles_interp.training.trainer import METRICS_FILE, STATE_FILE  # noqa: E402

# A run of a few hundred milliseconds to a few seconds on one CPU thread; it travels to the
# workers through run_specs(presets=[TINY]), which registers it there.
TINY = BASE.replace(name="dask-tiny", n_train=256, n_eval=64,
                    model=dict(BASE.model, n_layers=1, pos_embed="learned"))


def spec(model="mamba", seed=0, task="inverse-matching", epochs=None, **cell) -> RunSpec:
    return RunSpec(Cell(task, model, None if model == "transformer" else "mamba2", **cell), seed, TINY.name, epochs)


BAD = spec("mamba", 0, n_layers=0)  # raises in the trainer: n_layers must be >= 1


@pytest.fixture(scope="module")
def cluster():
    c = local_cluster(gpus=[], n_workers=2, threads=1, retries=2)
    yield c
    c.close()


def test_grid_finishes_reports_a_failing_run_and_reruns_skip(tmp_path, cluster):
    runs = tmp_path / "runs"
    good = [spec(m, s) for s in (0, 1) for m in ("mamba", "transformer")]
    log = io.StringIO()
    t_submit = time.time()
    r = run_specs(good + [BAD], runs, scheduler=cluster.scheduler_address, presets=[TINY], retries=1, log=log,
                  progress=False)
    t_back = time.time()
    assert r.counts() == {"finished": 4, "skipped": 0, "failed": 1, "stopped": 0} and not r.ok
    assert {o.spec for o in r.finished} == set(good)
    assert len({o.worker for o in r.finished}) == 2  # both workers trained
    for o in r.finished:
        doc = json.loads((runs / o.run_dir / METRICS_FILE).read_text())
        assert doc["complete"] and doc["final"]["accuracy"] == o.accuracy and not o.resumed
        assert set(o.accuracy) == {"train", "test", "ood"} and o.seconds > 0
        assert t_submit <= o.started and o.started + o.seconds <= t_back  # same-host clocks
    (bad,) = r.failed
    assert bad.spec == BAD and bad.error == "UserError: n_layers must be an int >= 1, got 0"
    assert bad.traceback.startswith("Traceback") and "trainer.py" in bad.traceback
    assert "n_layers must be an int >= 1" in (runs / bad.run_dir / "train.log").read_text()
    text = log.getvalue()
    assert text.count("] done inverse-matching/") == 4 and "FAILED inverse-matching/mamba-mamba2-L0 seed0" in text

    # rerun: the finished runs are skipped before anything is submitted (no cluster is started)
    t0 = time.time()
    again = run_specs(good, runs, progress=False, log=io.StringIO())
    assert again.counts() == {"finished": 0, "skipped": 4, "failed": 0, "stopped": 0} and again.ok
    assert time.time() - t0 < 2 and {o.spec for o in again.skipped} == set(good)
    assert sorted(o.accuracy["test"] for o in again.skipped) == sorted(o.accuracy["test"] for o in r.finished)


def test_local_gpu_slots_pin_cuda_visible_devices(tmp_path):
    """scheduler=None starts its own cluster; with GPUs it has one worker per slot, each seeing only
    its GPU (here fake GPU ids on a CPU-only host, the runs training on the CPU)."""
    runs = tmp_path / "runs"
    specs = [spec("transformer", s) for s in range(4)]
    r = run_specs(specs, runs, gpus=["3", "5"], runs_per_gpu=1, device="cpu", presets=[TINY], progress=False,
                  log=io.StringIO())
    assert r.counts()["finished"] == 4
    assert {o.worker for o in r.finished} == {"worker gpu3-0", "worker gpu5-0"}
    for o in r.finished:
        gpu = o.worker.split("gpu")[1].split("-")[0]
        assert f"CUDA_VISIBLE_DEVICES={gpu}" in (runs / o.run_dir / "train.log").read_text()


def test_killed_worker_run_resumes_from_its_checkpoint(tmp_path, cluster, monkeypatch, one_thread):
    runs = tmp_path / "runs"
    long = spec("mamba", 7, task="forward-matching", epochs=24)  # a few seconds, a checkpoint every epoch
    box = {}
    th = threading.Thread(target=lambda: box.update(r=run_specs(
        [long], runs, scheduler=cluster.scheduler_address, presets=[TINY], progress=False, log=io.StringIO())))
    th.start()
    state = long.run_dir(runs) / STATE_FILE
    deadline = time.time() + 60
    while not state.is_file():
        assert time.time() < deadline and th.is_alive(), "the run wrote no checkpoint"
        time.sleep(0.02)
    with distributed.Client(cluster.scheduler_address) as client:
        busy = [w for w, keys in client.processing().items() if keys]
        assert len(busy) == 1
        pid = client.run(os.getpid, workers=busy)[busy[0]]
    os.kill(pid, signal.SIGKILL)  # mid-run: after its first checkpoint
    epoch_at_kill = torch.load(state, weights_only=False)["epoch"]
    th.join(120)
    assert not th.is_alive()
    r = box["r"]
    assert r.counts()["finished"] == 1, r
    (o,) = r.finished
    assert o.resumed and epoch_at_kill < long.epochs
    doc = long.metrics(runs)
    assert doc["complete"] and doc["provenance"]["resumed"] is True
    assert (runs / o.run_dir / "train.log").read_text().count("--- ") == 2  # two attempts

    # the same spec trained without interruption, in this process: the same result, bit for bit
    monkeypatch.setitem(PRESETS, TINY.name, TINY)
    ref = long.train(tmp_path / "ref", device="cpu", threads=1)
    assert ref["final"] == doc["final"]
    assert [h["train_loss"] for h in ref["history"]] == [h["train_loss"] for h in doc["history"]]
    a = load_file(str(long.run_dir(tmp_path / "ref") / "model.safetensors"))
    b = load_file(str(long.run_dir(runs) / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_reproduce_cli_skips_finished_runs(tmp_path, capsys):
    runs = tmp_path / "runs"
    argv = ["reproduce", "--runs-dir", str(runs), "--out", str(tmp_path / "r.md"), "--tasks", "forward-matching",
            "--models", "transformer", "mamba", "--seeds", "0", "1", "--preset", "paper",
            "--scheduler", "tcp://127.0.0.1:1"]  # never contacted
    for model, mixer in (("transformer", None), ("mamba", "mamba2")):
        for seed in (0, 1):
            d = RunSpec(Cell("forward-matching", model, mixer), seed, "paper").run_dir(runs)
            d.mkdir(parents=True)
            (d / METRICS_FILE).write_text(json.dumps({
                "complete": True, "run": {"epochs": 1}, "history": [], "provenance": {},
                "final": {"accuracy": {"train": 1.0, "test": 1.0, "ood": 0.5}, "loss": {}, "extra": {}}}))
    assert main(argv) == 0
    assert "skipped 4" in capsys.readouterr().out
    assert "| mamba-mamba2 | 2 |" in (tmp_path / "r.md").read_text()
    assert main(argv + ["--runs-per-gpu", "0"]) == 2
    assert "--runs-per-gpu must be at least 1, got 0" in capsys.readouterr().err


def test_grid_client_does_not_import_the_model():
    """The client of a grid names and skips runs without importing torch or the model: importing the
    trainer (transformer-lens included) cost the first grid of a process ~10 s on the device before its
    first run started, which made 1 GPU look 3.06x slower than 2 instead of ~1.9x."""
    from fresh_python import imported_after

    code = (
        "from achilles_interp.training.distributed import run_specs\n"
        "from achilles_interp.training.paper_grid import Cell, RunSpec\n"
        "d = RunSpec(Cell('inverse-matching', 'mamba', 'mamba2', 5, 1.0), 0, 'paper').run_dir('runs')\n"
        "assert str(d) == 'runs/inverse-matching/mamba-mamba2-L5-g1/seed0', d\n"
    )
    assert imported_after(code, ("torch", "transformer_lens", "achilles_interp.training.trainer")) == []
