"""Train a grid of runs on a Dask distributed cluster: one GPU per worker, a local machine or many.

    from achilles_interp.training.paper_grid import paper_cells, grid_specs
    from achilles_interp.training.distributed import run_specs
    specs = grid_specs(paper_cells(["mamba2"]), seeds=[0, 1, 2], preset="paper")
    result = run_specs(specs, "runs/paper")                     # every visible GPU of this machine
    result = run_specs(specs, "runs/paper", runs_per_gpu=2)     # two runs share each GPU
    result = run_specs(specs, "/shared/runs", scheduler="tcp://head:8786")  # an existing cluster
    result.failed[0].traceback                                  # what went wrong, with the worker's frames

    python -m achilles_interp.training.paper_grid --runs-dir runs/paper --runs-per-gpu 2
    python -m achilles_interp.training.paper_grid --runs-dir /shared/runs --scheduler tcp://head:8786

Each run (a :class:`~achilles_interp.training.paper_grid.RunSpec`) is one Dask task, calling
:meth:`RunSpec.train` on a worker; the task asks for one unit of the worker resource
:data:`RUN_RESOURCE`, so a worker that declares one unit trains one run at a time.

Where the runs go (``scheduler``):

* ``None``: a local cluster of worker *processes*. With GPUs, one worker per GPU slot (visible
  GPUs x ``runs_per_gpu``), each pinned to its GPU by ``CUDA_VISIBLE_DEVICES`` set in the
  worker's environment by its nanny before the worker process starts (so before CUDA
  initialises; the run then trains on ``cuda``, its one visible GPU). On a CPU-only host,
  ``n_workers`` workers (default: usable cores // ``threads``), each training with ``threads``
  torch threads. Closing the cluster (at the end, on Ctrl-C, or at ``time_limit``) kills the
  workers; every interrupted run keeps its last checkpoint.
* a scheduler address (``"tcp://host:8786"``), a :class:`distributed.Client` or a cluster object:
  an existing cluster, e.g. ``dask scheduler`` on one machine and on each GPU of each machine
  ``CUDA_VISIBLE_DEVICES=<i> dask worker tcp://host:8786 --nthreads 1 --resources grid-run=1``
  (or ``dask cuda worker``, from dask-cuda, which starts one worker per GPU: add ``--resources
  grid-run=1``). On SLURM, dask-jobqueue's ``SLURMCluster`` submits the workers as batch jobs::

      from dask_jobqueue import SLURMCluster
      cluster = SLURMCluster(cores=8, memory="64GB", processes=1, job_extra_directives=["--gres=gpu:1"],
                             worker_extra_args=["--resources", "grid-run=1"], walltime="04:00:00")
      cluster.scale(jobs=16)   # or cluster.adapt(maximum_jobs=16)
      run_specs(specs, "/shared/runs", scheduler=cluster)

  The workers must run the same ``achilles_interp`` (installed in their environment) and see
  ``runs_dir`` at the same path: **``runs_dir`` must be on a filesystem shared by every machine**
  (NFS, Lustre, ...), since runs write their checkpoints there and a retried run resumes from
  them, possibly on another machine. Workers that declare no ``grid-run`` resource are never
  given a run (pass ``resource=None`` to drop the requirement; then start them with
  ``--nthreads 1``, or several runs share a worker).

Fault tolerance: a run whose worker dies (killed, out of memory, node lost) is given to another
worker by the scheduler, and :meth:`RunSpec.train` resumes it from the last ``train_state.pt``
it wrote (every ``eval_every`` epochs), to the same final weights as an uninterrupted run. A
run that raises is retried ``retries`` times (each retry resumes too), then reported in
:attr:`GridResult.failed` with the worker's traceback, while the rest of the grid goes on.
Finished runs (``metrics.json`` with ``"complete": true``) are skipped before anything is
submitted, so rerunning a grid trains only what is missing.

Why Dask rather than Ray: the grid is a few hundred independent, coarse tasks (minutes each),
which is what ``distributed`` schedules well, with the pieces used here built in: worker
resources (one run per GPU slot), a nanny that restarts a dead worker and a scheduler that hands
its task to another (``allowed-failures``), ``retries``, per-worker environments, and
``dask-jobqueue`` / ``dask-cuda`` for SLURM and multi-GPU nodes. It is pure Python: ``dask`` and
``distributed`` plus four small pure-Python dependencies missing from a PyTorch image (partd,
locket, tblib, zict) are 2.6 MB of wheels (5.0 MB with everything a bare ``pip install torch``
lacks), so they travel with the code to a machine without internet. Ray's wheel alone is 79 MB
(ray 2.60.0, CPython 3.12, manylinux x86_64) plus grpcio / protobuf / aiohttp, and it brings an
object store, a GCS server and a dashboard that a grid of file-writing runs does not use.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, TextIO, Union

from ..errors import UserError
from .paper_grid import RunSpec
from .presets import PRESETS, Preset

RUN_RESOURCE = "grid-run"
"""The worker resource a run asks one unit of (``dask worker --resources grid-run=1``)."""

LOG_FILE = "train.log"


# ---------------------------------------------------------------------------------------------
# result
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunOutcome:
    """What became of one run.

    Attributes:
        spec: the run.
        run_dir: its directory (``spec.run_dir(runs_dir)``).
        status: ``"finished"`` (trained, or finished resuming, now), ``"skipped"`` (already
            finished before the call), ``"failed"`` (raised, or its workers kept dying) or
            ``"stopped"`` (still pending or training at ``time_limit``).
        accuracy: final accuracy per split (finished and skipped runs).
        seconds: wall seconds the last attempt trained (finished runs).
        resumed: the last attempt continued from a checkpoint (an earlier call's, or a killed
            worker's).
        worker: name of the worker that trained it (finished runs).
        started: the worker's ``time.time()`` when the last attempt began (finished runs); with
            ``seconds``, when the run held its slot (same-host clocks compare with the client's).
        error: ``"ExceptionType: message"`` (failed runs).
        traceback: the full traceback text, with the worker's frames (failed runs).
    """

    spec: RunSpec
    run_dir: str
    status: str
    accuracy: Optional[dict] = None
    seconds: Optional[float] = None
    resumed: bool = False
    worker: Optional[str] = None
    started: Optional[float] = None
    error: Optional[str] = None
    traceback: Optional[str] = None

    @property
    def name(self) -> str:
        return f"{self.spec.cell.task}/{self.spec.cell.label} seed{self.spec.seed}"


@dataclass
class GridResult:
    """The outcome of :func:`run_specs`: every requested run is in exactly one list."""

    finished: list[RunOutcome] = field(default_factory=list)
    failed: list[RunOutcome] = field(default_factory=list)
    skipped: list[RunOutcome] = field(default_factory=list)
    stopped: list[RunOutcome] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        """Every run is finished (now or before)."""
        return not self.failed and not self.stopped

    def outcomes(self) -> list[RunOutcome]:
        return self.finished + self.skipped + self.failed + self.stopped

    def counts(self) -> dict:
        return {k: len(getattr(self, k)) for k in ("finished", "skipped", "failed", "stopped")}

    def add(self, outcome: RunOutcome) -> None:
        getattr(self, outcome.status).append(outcome)


# ---------------------------------------------------------------------------------------------
# the task a worker runs
# ---------------------------------------------------------------------------------------------
def train_run(spec: RunSpec, runs_dir: str, device: Optional[str] = None, threads: Optional[int] = 1,
              presets: Sequence[Preset] = (), command: Optional[str] = None) -> dict:
    """Train one run on this process (what each Dask task calls): registers ``presets`` in
    :data:`~achilles_interp.training.presets.PRESETS` (custom presets travel with the task),
    appends the run's Python-level output to ``<run_dir>/train.log`` and returns a small summary
    (the accuracy, seconds, whether it resumed, the worker's name and when it started)."""
    for p in presets:
        PRESETS[p.name] = p
    out = spec.run_dir(runs_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        from distributed import get_worker

        worker = f"worker {get_worker().name}"
    except (ImportError, ValueError):
        worker = None
    with open(out / LOG_FILE, "a") as logf, contextlib.redirect_stdout(logf), contextlib.redirect_stderr(logf):
        print(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} worker {worker} pid {os.getpid()} "
              f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}", flush=True)
        try:
            doc = spec.train(runs_dir, device=device, progress=False, threads=threads,
                             command=command or f"achilles_interp.training.distributed {spec.to_json()}")
        except BaseException:
            traceback.print_exc()
            raise
    return {
        "accuracy": (doc.get("final") or {}).get("accuracy"),
        "seconds": round(time.time() - t0, 3),
        "resumed": bool(doc.get("provenance", {}).get("resumed")),
        "worker": worker,
        "started": t0,
    }


# ---------------------------------------------------------------------------------------------
# clusters
# ---------------------------------------------------------------------------------------------
def visible_gpus() -> list[str]:
    """This process's GPUs as ``CUDA_VISIBLE_DEVICES`` entries: the entries of that variable when
    set, else ``0 .. torch.cuda.device_count() - 1``."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _thread_env(threads: int) -> dict:
    n = str(max(1, int(threads)))
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n}


def local_cluster(gpus: Optional[Sequence[Union[int, str]]] = None, runs_per_gpu: int = 1,
                  n_workers: Optional[int] = None, threads: int = 1, retries: int = 2,
                  dashboard_address: Optional[str] = None, memory_limit: Union[int, str, None] = 0):
    """A cluster of worker processes on this machine, one run per worker at a time.

    Args:
        gpus: ``CUDA_VISIBLE_DEVICES`` entries to use (e.g. ``[0, 1]``); non-empty: one worker
            per GPU slot, ``runs_per_gpu`` per GPU, each seeing only its GPU. Empty or None: a
            CPU cluster of ``n_workers`` workers (default ``usable cores // threads``).
        threads: torch / OpenMP threads per worker.
        retries: times a run may lose its worker before it is reported failed (the scheduler's
            ``allowed-failures``).
        dashboard_address: e.g. ``":8787"`` for Dask's dashboard (needs ``bokeh``); None: none.
        memory_limit: per-worker memory limit at which the nanny restarts the worker (0: none;
            training holds its data for the whole run, so Dask's spilling does not apply).

    Returns:
        A :class:`distributed.LocalCluster` (CPU) or :class:`distributed.SpecCluster` (GPUs).
    """
    import dask
    from distributed import LocalCluster, Nanny, Scheduler, SpecCluster

    if runs_per_gpu < 1:
        raise UserError(f"runs_per_gpu must be >= 1, got {runs_per_gpu}")
    env = _thread_env(threads)
    # the nanny exports pre-spawn-environ before starting the worker process (OpenMP reads its
    # thread count once, at start-up); allowed-failures is read by the scheduler when it starts
    cfg = {"distributed.scheduler.allowed-failures": int(retries),
           **{f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in env.items()}}
    # no dashboard: the scheduler's HTTP server (metrics) still listens, on a free port
    dash = {"dashboard_address": dashboard_address} if dashboard_address else {"dashboard": False,
                                                                                "dashboard_address": ":0"}
    with dask.config.set(cfg):
        if not gpus:
            n = n_workers if n_workers is not None else max(1, usable_cpus() // max(1, threads))
            if n < 1:
                raise UserError(f"n_workers must be >= 1, got {n}")
            return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, resources={RUN_RESOURCE: 1},
                                env=env, memory_limit=memory_limit, scheduler_kwargs=dash,
                                dashboard_address=dashboard_address)
        workers = {
            f"gpu{g}-{k}": {"cls": Nanny, "options": {
                "nthreads": 1, "resources": {RUN_RESOURCE: 1}, "memory_limit": memory_limit,
                "silence_logs": logging.WARN,
                "env": {**env, "CUDA_VISIBLE_DEVICES": str(g)}}}
            for g in gpus for k in range(runs_per_gpu)
        }
        scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "port": 0, **dash}}
        return SpecCluster(workers=workers, scheduler=scheduler, name="achilles-grid", silence_logs=logging.WARN)


def _workers_without_resource(client, resource: str) -> Optional[int]:
    """How many connected workers lack ``resource`` when none has it (else None)."""
    try:
        info = client.scheduler_info(n_workers=-1)
    except TypeError:  # distributed before 2025.4 returns every worker already
        info = client.scheduler_info()
    workers = info.get("workers", {})
    if workers and not any(w.get("resources", {}).get(resource) for w in workers.values()):
        return len(workers)
    return None


# ---------------------------------------------------------------------------------------------
# the engine
# ---------------------------------------------------------------------------------------------
def _fmt_acc(acc: Optional[dict]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in (acc or {}).items())


def run_specs(
    specs: Iterable[RunSpec],
    runs_dir: Union[str, os.PathLike],
    scheduler: Any = None,
    runs_per_gpu: int = 1,
    device: Optional[str] = None,
    threads: int = 1,
    n_workers: Optional[int] = None,
    progress: bool = True,
    log: Optional[TextIO] = None,
    gpus: Optional[Sequence[Union[int, str]]] = None,
    retries: int = 2,
    time_limit: Optional[float] = None,
    presets: Union[Sequence[Preset], dict, None] = None,
    resource: Optional[str] = RUN_RESOURCE,
    command: Optional[str] = None,
    dashboard_address: Optional[str] = None,
) -> GridResult:
    """Train every unfinished run of ``specs`` on a Dask cluster; see the module docstring.

    Args:
        specs: the runs (duplicates, by run directory, are trained once).
        runs_dir: root of the run directories; on a multi-machine cluster, a shared filesystem
            path that is the same on every machine.
        scheduler: None (a local cluster, :func:`local_cluster`), a scheduler address string, a
            :class:`distributed.Client`, or a cluster object (``SLURMCluster``, ...). Only a
            cluster started here is closed at the end.
        runs_per_gpu: local GPU cluster: workers (concurrent runs) per GPU.
        device: ``"cuda"`` / ``"cpu"`` for the runs; None: ``"cuda"`` when the local cluster has
            GPUs, else ``"cpu"``; with an external cluster, None lets each worker pick (cuda
            when it sees a GPU).
        threads: torch threads per run (and per local worker).
        n_workers: local CPU cluster: number of workers (default: usable cores // threads).
        progress: a progress bar over the runs to train (on ``log``).
        log: where the one line per finished / failed run goes (default ``sys.stderr``).
        gpus: local cluster: the ``CUDA_VISIBLE_DEVICES`` entries to use (default: every
            visible GPU; ``[]`` forces a CPU cluster).
        retries: a run that raises is resubmitted this many times (each attempt resumes from the
            last checkpoint); on a local cluster a run may also lose its worker this many times
            (on an external cluster that is its scheduler's ``allowed-failures``, default 3).
        time_limit: seconds after which pending runs are cancelled and reported stopped (a local
            cluster is closed, so runs training are stopped at their last checkpoint; on an
            external cluster, runs already training go on until they end).
        presets: custom :class:`Preset` objects (a list, or a name -> preset dict) that the
            specs name: they are sent with each run and registered on its worker.
        resource: the worker resource each run needs one unit of (None: none; then only
            ``--nthreads 1`` workers keep runs from sharing a worker).
        command: recorded as the runs' provenance command.
        dashboard_address: local cluster: serve Dask's dashboard there (e.g. ``":8787"``).

    Returns:
        A :class:`GridResult`.
    """
    from distributed import Client, wait
    from tqdm import tqdm

    log = sys.stderr if log is None else log
    t0 = time.time()
    runs_dir = str(runs_dir)
    if isinstance(presets, dict):
        presets = list(presets.values())
    presets = tuple(presets or ())
    result = GridResult()

    # ---- skip finished runs before anything is submitted ------------------------------------
    todo: list[RunSpec] = []
    seen: set[Path] = set()
    for spec in specs:
        d = spec.run_dir(runs_dir)
        if d in seen:
            continue
        seen.add(d)
        doc = spec.metrics(runs_dir)
        if doc is not None and doc.get("complete"):
            result.add(RunOutcome(spec, str(d), "skipped", accuracy=(doc.get("final") or {}).get("accuracy"),
                                  resumed=bool(doc.get("provenance", {}).get("resumed"))))
        else:
            todo.append(spec)
    if result.skipped:
        print(f"{len(result.skipped)} run(s) already finished in {runs_dir}: skipped", file=log, flush=True)
    if not todo:
        result.wall_s = time.time() - t0
        return result

    # ---- connect ----------------------------------------------------------------------------
    cluster = None
    own_client = True
    if scheduler is None:
        if gpus is None:
            gpus = [] if device == "cpu" else visible_gpus()
        if device is not None and str(device).startswith("cuda") and not gpus:
            raise UserError(f"device={device!r} but no GPU is visible; use device='cpu'")
        device = device or ("cuda" if gpus else "cpu")
        cluster = local_cluster(list(gpus), runs_per_gpu, n_workers, threads, retries, dashboard_address)
        client = Client(cluster)
        where = (f"{len(gpus)} GPU(s) x {runs_per_gpu} run(s)" if gpus
                 else f"{len(cluster.workers)} CPU worker(s) x {threads} thread(s)")
    elif isinstance(scheduler, Client):
        client, own_client, where = scheduler, False, scheduler.scheduler.address
    else:  # an address, or a cluster object
        client = Client(scheduler)
        where = client.scheduler.address
    try:
        if resource is not None and cluster is None:
            n = _workers_without_resource(client, resource)
            if n is not None:
                raise UserError(
                    f"none of the {n} workers of {where} declares the resource {resource!r}: start them with "
                    f"`--resources {resource}=1` (one per run slot), or pass resource=None (then `--nthreads 1`)")
        dash = f", dashboard {client.dashboard_link}" if cluster is not None and dashboard_address else ""
        print(f"training {len(todo)} run(s) on {where}{dash}", file=log, flush=True)

        # ---- submit: one task per run ---------------------------------------------------------
        futures = {}
        for spec in todo:
            key = f"train-{spec.cell.task}/{spec.cell.label}/seed{spec.seed}-{uuid.uuid4().hex[:8]}"
            fut = client.submit(train_run, spec, runs_dir, device, threads, presets, command, key=key, pure=False,
                                retries=retries, resources={resource: 1} if resource else None)
            futures[fut] = spec

        # ---- collect, as they finish ------------------------------------------------------------
        tty = hasattr(log, "isatty") and log.isatty()
        bar = tqdm(total=len(todo), disable=not progress, file=log, unit="run", desc="grid", dynamic_ncols=True,
                   mininterval=0.1 if tty else 60.0)  # a log file gets a bar line a minute
        deadline = None if time_limit is None else t0 + time_limit
        pending = set(futures)
        try:
            while pending:
                timeout = None if deadline is None else max(0.0, deadline - time.time())
                try:
                    done, pending = wait(pending, timeout=timeout, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    break
                for fut in done:
                    outcome = _outcome(fut, futures[fut], runs_dir)
                    result.add(outcome)
                    _report(outcome, t0, bar, log)
                    bar.update(1)
        finally:
            bar.close()
        if pending:
            client.cancel(list(pending), force=True)
            for fut in pending:
                spec = futures[fut]
                result.add(RunOutcome(spec, str(spec.run_dir(runs_dir)), "stopped"))
            print(f"time limit: {len(pending)} run(s) stopped (each keeps its last checkpoint)", file=log, flush=True)
    finally:
        if own_client:
            client.close()
        if cluster is not None:
            cluster.close()
    result.wall_s = time.time() - t0
    return result


def _outcome(fut, spec: RunSpec, runs_dir: str) -> RunOutcome:
    d = str(spec.run_dir(runs_dir))
    if fut.status == "finished":
        r = fut.result()
        return RunOutcome(spec, d, "finished", accuracy=r["accuracy"], seconds=r["seconds"], resumed=r["resumed"],
                          worker=r["worker"], started=r["started"])
    try:
        exc = fut.exception()
        tb = fut.traceback()
    except Exception as e:  # cancelled or lost: no exception to fetch
        exc, tb = e, None
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    return RunOutcome(spec, d, "failed", error=f"{type(exc).__name__}: {exc}", traceback=text)


def _report(o: RunOutcome, t0: float, bar, log: TextIO) -> None:
    head = f"[{time.time() - t0:6.0f} s] "
    if o.status == "finished":
        extra = ", resumed" if o.resumed else ""
        bar.write(f"{head}done {o.name}: {_fmt_acc(o.accuracy)} ({o.seconds:.0f} s{extra}, {o.worker})", file=log)
    else:
        body = "    " + (o.traceback or "").rstrip().replace("\n", "\n    ")
        bar.write(f"{head}FAILED {o.name}: {o.error}\n{body}", file=log)


def summary_line(result: GridResult) -> str:
    """``finished 10, skipped 2, failed 0, stopped 0 in 123 s``."""
    return ", ".join(f"{k} {v}" for k, v in result.counts().items()) + f" in {result.wall_s:.0f} s"


__all__ = ["RUN_RESOURCE", "GridResult", "RunOutcome", "local_cluster", "run_specs", "summary_line", "train_run",
           "visible_gpus"]
