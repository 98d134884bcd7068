"""Train a model variant on a synthetic task: seeded, resumable, with per-split evaluation.

    from achilles_interp.training import train
    metrics = train("inverse-matching", "mamba-bypass-pe", "runs/bypass", preset="quick", seed=0)
    metrics["final"]["accuracy"]        # {"train": ..., "test": ..., "ood": ...}

Files written into ``out_dir`` (every one atomically, see :mod:`achilles_interp.outputs`):

* ``config.json`` + ``model.safetensors`` - the model (``model.save_pretrained``), loadable with
  :func:`achilles_interp.zoo.load_model`;
* ``train_state.pt`` - model, optimiser and scheduler state, epoch, history and RNG states, so
  ``train(..., resume=True)`` continues to the same final weights as an uninterrupted run;
* ``metrics.json`` - run description, evaluation history, final per-split accuracy and loss,
  and provenance (command line, seed, preset, git commit, elapsed seconds, device).

Determinism: the training set and every evaluation set are generated from ``seed`` by the task
(independent streams per split), the model is initialised under ``torch.manual_seed(seed)``,
and epoch ``e`` is shuffled by a generator seeded with ``(seed, e)``; so an interrupted run and
a resumed run see the same batches in the same order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import platform
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ..catalog import FORMAT_TASKS, MATCHING_TASKS
from ..errors import UserError
from ..ops import CUDA_OPS
from ..outputs import atomic_write, check_output, write_json
from ..tasks import Task, TaskBatch, get_task, task_loss
from ..tasks.base import answer_logits
from ..zoo import build_model
from .graphed_step import TrainStep, adapt_loaded_optimizer, make_optimizer
from .layout import METRICS_FILE, STATE_FILE
from .presets import Preset, get_preset
from .validation import check_seeds, positive_settings

EVAL_BATCH = 2048


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


PACKAGE_DIR = Path(__file__).resolve().parent.parent


def _git(args: list, cwd: Path) -> Optional[str]:
    """stdout of ``git <args>`` run in ``cwd``, or None (no git, not a checkout, or an error)."""
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit(path: Path = PACKAGE_DIR) -> Optional[str]:
    """HEAD commit of the repository holding ``path`` (default: this package), or None."""
    out = _git(["rev-parse", "HEAD"], path)
    return (out or "").strip() or None


def git_modified(path: Path = PACKAGE_DIR) -> Optional[bool]:
    """Whether tracked files under ``path`` (default: this package) differ from HEAD - a run
    trained from such a tree is not exactly the code of :func:`git_commit` - or None without git."""
    out = _git(["status", "--porcelain", "--untracked-files=no", "--", "."], path)
    return None if out is None else bool(out.strip())


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return (
        f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads)"
    )


def resolve_task(task: Union[str, Task], n_layers: int, task_format: Optional[str] = None) -> Task:
    """A Task object; a name is built with ``get_task`` (matching tasks get ``n_layers`` fillers x 3;
    ``task_format``, None = the task's default ``"paper"``, picks the token format of the matching
    and composite tasks)."""
    if isinstance(task, Task):
        if task_format is not None and getattr(task, "format", None) != task_format:
            raise UserError(f"task_format={task_format!r} disagrees with the given task {task!r}")
        return task
    kwargs = {}
    if task_format is not None:
        if task not in FORMAT_TASKS:
            raise UserError(f"task {task!r} has no format option; only {', '.join(FORMAT_TASKS)} do")
        kwargs["format"] = task_format
    if task in MATCHING_TASKS:
        kwargs["n_layers"] = n_layers
    return get_task(task, **kwargs)


def kernel_choice(model: torch.nn.Module) -> dict:
    """The provenance of a Mamba model's arithmetic: ``backend`` (``"torch"`` or ``"cuda"``) and, on the
    kernels, the CUDA ops' ``short_scan_max_len`` (which Mamba-1 sequences took the Triton scan); empty
    for the Transformer."""
    if not hasattr(model, "resolved_backend"):
        return {}
    backend = model.resolved_backend()
    return {"backend": backend, **({"short_scan_max_len": CUDA_OPS.short_scan_max_len} if backend == "cuda" else {})}


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on ``_no_weight_decay`` parameters, norm weights and biases
    (every parameter with fewer than 2 dimensions); frozen parameters are left out."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if getattr(p, "_no_weight_decay", False) or p.dim() < 2 or "norm" in name or ".ln" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(
    step: int, steps_per_epoch: int, warmup_epochs: float, epochs: int, lr_min: float, lr_max: float
) -> float:
    """Learning rate at optimiser step ``step`` (0-based): linear warm-up then cosine to lr_min."""
    warm = warmup_epochs * steps_per_epoch
    total = epochs * steps_per_epoch
    if warm > 0 and step < warm:
        return lr_min + (lr_max - lr_min) * step / warm
    if total <= warm:
        return lr_max
    frac = min(1.0, (step - warm) / (total - warm))
    return lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(math.pi * frac))


@torch.no_grad()
def evaluate(model, batch: TaskBatch, device: torch.device, batch_size: int = EVAL_BATCH) -> dict:
    """Accuracy and loss of ``model`` on ``batch``, plus task-specific rates.

    Returns a dict with ``accuracy`` (fraction of answer positions whose argmax is the label),
    ``loss`` (mean cross-entropy at the answer positions, nats) and, when the batch's ``meta``
    allows: ``match_<key>`` for every ``meta`` entry ending in ``_answer`` (fraction of
    predictions equal to that alternative answer, e.g. the composite task's compositional /
    symmetric solutions) and ``distractor_rate`` (inverse/forward matching: fraction of
    predictions equal to the other matching rule's key, over rows that have one).
    """
    model.eval()
    preds, losses, n = [], 0.0, 0
    for start in range(0, batch.n, batch_size):
        chunk = batch[start : start + batch_size].to(device)
        logits = model(chunk.tokens)
        losses += task_loss(logits, chunk).item() * chunk.n
        n += chunk.n
        preds.append(answer_logits(logits, chunk).argmax(-1).cpu())
    pred = torch.cat(preds)  # [n, k]
    labels = batch.labels_2d()
    out = {"accuracy": (pred == labels).float().mean().item(), "loss": losses / n}
    if not batch.multi_answer:
        p = pred[:, 0]
        for key, value in batch.meta.items():
            if key.endswith("_answer") and value.shape == p.shape:
                out[f"match_{key}"] = (p == value).float().mean().item()
        if "distractor_label" in batch.meta:
            d = batch.meta["distractor_label"]
            has = d > 0
            if bool(has.any()):
                out["distractor_rate"] = (p[has] == d[has]).float().mean().item()
    return out


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------

# Config fields that choose how the kernels tile the computation, not what the model computes: a
# run may resume with other values (e.g. a preset whose Mamba-2 chunk length was changed for speed).
KERNEL_TILING_FIELDS = ("chunk_size",)


@dataclass(frozen=True)
class RunSettings:
    """What a run *is*: everything its final weights depend on. A run resumes only under the same
    settings (:meth:`differences`); ``model_config`` is compared without its kernel-tiling fields."""

    task: str
    task_repr: str
    model: str
    mixer: Optional[str]
    seed: int
    epochs: int
    batch_size: int
    n_train: int
    model_config: dict = field(hash=False)

    def differences(self, saved: dict) -> list:
        """Names of the settings that differ from a saved run description (``metrics.json``'s
        ``run``)."""
        def key(name, value):
            if name == "model_config" and isinstance(value, dict):
                return {k: v for k, v in value.items() if k not in KERNEL_TILING_FIELDS}
            return value

        return [f.name for f in dataclasses.fields(self)
                if key(f.name, saved.get(f.name)) != key(f.name, getattr(self, f.name))]


@dataclass
class Checkpoint:
    """What ``train_state.pt`` holds: the run description, model / optimiser / scheduler states,
    the position reached (``epoch`` epochs done plus ``step`` steps of the next, with the partial
    epoch's loss sum), the evaluation history, the time spent and the RNG states."""

    run: dict
    model: dict
    optimizer: dict
    scheduler: dict
    epoch: int
    history: list
    elapsed_s: float
    rng: dict
    step: int = 0
    loss_sum: float = 0.0
    n_seen: int = 0

    def save(self, path: Path) -> None:
        atomic_write(path, lambda f: torch.save(dataclasses.asdict(self), f))

    @classmethod
    def load(cls, path: Path) -> "Checkpoint":
        # on the CPU: the RNG states must stay CPU ByteTensors, and load_state_dict copies weights and
        # optimiser moments onto the parameters' device
        st = torch.load(path, map_location="cpu", weights_only=False)
        return cls(**{k: v for k, v in st.items() if k in {f.name for f in dataclasses.fields(cls)}})


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during training: the state was saved at the last finished step; the
    message says how to resume."""


def _rng_states() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_states(rng: dict) -> None:
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])


@contextlib.contextmanager
def _deferred_interrupt():
    """Turn SIGINT into a flag checked between optimiser steps (a step is never cut in half);
    only in the main thread (elsewhere, e.g. a Dask worker, signals are not ours to take)."""
    flag = {"hit": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if flag["hit"]:  # a second Ctrl-C: stop now
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        flag["hit"] = True

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _resume_command(command: str) -> str:
    return command if " --resume" in f" {command} " else f"{command} --resume"


@dataclass
class _Plan:
    """A run's settings resolved from the arguments and the preset (nothing built yet)."""

    out_dir: Path
    preset: Preset
    device: torch.device
    task: Task
    model_kwargs: dict
    epochs: int
    warmup: float
    batch_size: int
    n_train: int
    n_eval: int
    cuda_graph: bool


def _plan(task, model_name, out_dir, preset, seed, device, epochs, mixer, resume, n_train, n_eval, batch_size,
          model_overrides, threads, cuda_graph, task_format) -> _Plan:
    """Check every argument (one UserError naming the first bad one) and resolve the preset's values,
    before anything is built or written."""
    out_dir = check_output(out_dir, "out_dir")
    # None = the preset's value; 0 or a negative value is an error, never a silent fallback
    positive_settings({"epochs": epochs, "n_train": n_train, "n_eval": n_eval, "batch_size": batch_size,
                       "threads": threads}, as_flags=False)
    if threads is not None:
        torch.set_num_threads(threads)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={device!r} requested but no CUDA GPU is visible; use --device cpu")
    dev = torch.device(device)
    use_graph = dev.type == "cuda" if cuda_graph is None else bool(cuda_graph)
    if use_graph and dev.type != "cuda":
        raise UserError(f"cuda_graph=True needs device='cuda', got device={device!r}")
    p = preset if isinstance(preset, Preset) else get_preset(preset, str(dev))
    check_seeds(seed, "seed")
    if mixer not in ("mamba1", "mamba2"):
        raise UserError(f"mixer must be 'mamba1' or 'mamba2', got {mixer!r}")
    state_path = out_dir / STATE_FILE
    if resume and not state_path.is_file():
        raise UserError(f"--resume: no {STATE_FILE} in {out_dir}; start the run without --resume")
    if not resume and state_path.exists():
        raise UserError(f"{out_dir} already holds a run ({STATE_FILE}); pass resume=True (--resume) "
                        "or choose another output directory")
    n_epochs = p.epochs if epochs is None else epochs
    mkw = p.model_kwargs(model_name, mixer, task if isinstance(task, str) else task.name)
    mkw.update(model_overrides or {})
    task_obj = resolve_task(task, mkw.get("n_layers", 2), task_format)
    return _Plan(out_dir, p, dev, task_obj, mkw, n_epochs, p.warmup_epochs * n_epochs / p.epochs,
                 p.batch_size_for(task_obj.name) if batch_size is None else batch_size,
                 p.n_train_for(task_obj.name) if n_train is None else n_train,
                 p.n_eval if n_eval is None else n_eval, use_graph)


def train(
    task: Union[str, Task],
    model_name: str,
    out_dir: Union[str, os.PathLike],
    preset: Union[str, Preset, None] = "auto",
    seed: int = 0,
    device: Optional[str] = None,
    epochs: Optional[int] = None,
    mixer: str = "mamba2",
    resume: bool = False,
    n_train: Optional[int] = None,
    n_eval: Optional[int] = None,
    batch_size: Optional[int] = None,
    model_overrides: Optional[dict] = None,
    stop_after_epochs: Optional[int] = None,
    progress: bool = True,
    command: Optional[str] = None,
    threads: Optional[int] = None,
    cuda_graph: Optional[bool] = None,
    task_format: Optional[str] = None,
) -> dict:
    """Train variant ``model_name`` on ``task`` and write the run into ``out_dir``.

    Args:
        task: task name (see :func:`achilles_interp.tasks.list_tasks`) or a Task object. The
            matching tasks are built with the model's ``n_layers`` (3 fillers per layer).
        model_name: variant name (:data:`achilles_interp.zoo.VARIANTS`).
        out_dir: run directory (created; checked for writability before anything is built).
        preset: ``"paper"``, ``"quick"``, ``"ship"``, a :class:`Preset`, or ``"auto"``/None
            (paper on a GPU, quick on the CPU).
        seed: seeds data generation, initialisation and shuffling.
        device: ``"cpu"``, ``"cuda"`` (HookedMamba then uses the CUDA kernels through
            ``backend="auto"``) or None (cuda when available).
        epochs: override the preset's number of epochs (warm-up scaled proportionally).
        mixer: ``"mamba1"`` or ``"mamba2"`` for the Mamba variants.
        resume: continue from ``out_dir/train_state.pt`` (the run's :class:`RunSettings` must match).
        n_train, n_eval, batch_size: override the preset's dataset sizes / batch size.
        model_overrides: extra :func:`~achilles_interp.zoo.build_model` arguments (e.g.
            ``{"n_layers": 3, "init_gamma": 1.0}``).
        stop_after_epochs: return after this many epochs *in this call* (the schedule is still
            that of the full run; ``resume=True`` later finishes it).
        progress: show a tqdm bar over optimiser steps (rate, running loss, last accuracies).
        command: command line recorded in the provenance (default: ``sys.argv``).
        threads: if set, ``torch.set_num_threads(threads)`` for this process (CPU training; on a
            shared machine 1 thread avoids OpenMP oversubscription, which can be 10x slower).
        cuda_graph: replay each full-size training step as a CUDA graph (same arithmetic, far
            fewer kernel launches; see :mod:`~achilles_interp.training.graphed_step`). None: on
            when training on a GPU. Falls back to eager steps, with a warning, if capture fails.
        task_format: token format of the matching and composite tasks (``"paper"``, their
            default, or ``"special-tokens"``); None keeps the task's default.

    Ctrl-C (SIGINT, main thread only) finishes the current step, saves ``train_state.pt`` there
    (mid-epoch included) and raises :class:`TrainingInterrupted` whose message is the command that
    resumes the run; a resumed run ends with the same weights as an uninterrupted one.

    Returns:
        The ``metrics.json`` content: ``run`` (description), ``history`` (per evaluation: epoch,
        step, lr, mean train loss since the last evaluation, per-split accuracy/loss/extras),
        ``final`` (``accuracy``/``loss``/``extra`` per split; None while unfinished),
        ``complete`` and ``provenance``.
    """
    t_start = time.time()
    plan = _plan(task, model_name, out_dir, preset, seed, device, epochs, mixer, resume, n_train, n_eval, batch_size,
                 model_overrides, threads, cuda_graph, task_format)
    out_dir, p, dev, task_obj, mkw = plan.out_dir, plan.preset, plan.device, plan.task, plan.model_kwargs
    n_epochs, warmup, bs, n_tr, n_ev, use_graph = (plan.epochs, plan.warmup, plan.batch_size, plan.n_train,
                                                   plan.n_eval, plan.cuda_graph)
    state_path = out_dir / STATE_FILE
    command = command if command is not None else " ".join([Path(sys.argv[0]).name] + sys.argv[1:])

    # ---- data and model (both deterministic in seed) ----------------------------------------
    seed_everything(seed)
    model = build_model(
        model_name, vocab_size=task_obj.vocab_size, max_len=max(task_obj.seq_len, 64), mixer=mixer, **mkw
    ).to(dev)
    kernels = kernel_choice(model)  # here, so that a bad kernel setting stops the run before it trains
    train_split = task_obj.splits[0]
    train_set = task_obj.generate(n_tr, seed=seed, split=train_split)
    eval_sets = {
        s: (train_set[: min(n_ev, n_tr)] if s == train_split else task_obj.generate(n_ev, seed=seed, split=s))
        for s in task_obj.splits
    }
    train_dev = train_set.to(dev)
    steps_per_epoch = math.ceil(n_tr / bs)
    opt = make_optimizer(param_groups(model, p.weight_decay), p.lr_min, tuple(p.betas), p.eps, dev)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_at(s, steps_per_epoch, warmup, n_epochs, p.lr_min, p.lr_max) / p.lr_min
    )
    settings = RunSettings(task_obj.name, repr(task_obj), model_name,
                           mixer if not model_name.startswith("transformer") else None, seed, n_epochs, bs, n_tr,
                           model.cfg.to_dict())
    run = {
        **{k: v for k, v in dataclasses.asdict(settings).items()},
        "preset": p.name,
        "warmup_epochs": warmup,
        "n_eval": n_ev,
        "steps_per_epoch": steps_per_epoch,
        "splits": list(task_obj.splits),
        "model_class": type(model).__name__,
        "n_parameters": sum(q.numel() for q in model.parameters()),
        "preset_params": p.to_dict(),
        "model_overrides": model_overrides or {},
    }
    ck = Checkpoint(run, {}, {}, {}, 0, [], 0.0, {})
    if resume:
        saved = Checkpoint.load(state_path)
        diff = settings.differences(saved.run)
        if diff:
            raise UserError(f"--resume: the run in {out_dir} differs in {diff} "
                            f"(saved {[saved.run.get(k) for k in diff]}, now {[run.get(k) for k in diff]})")
        model.load_state_dict(saved.model)
        opt.load_state_dict(saved.optimizer)
        adapt_loaded_optimizer(opt, dev)
        sched.load_state_dict(saved.scheduler)
        _set_rng_states(saved.rng)
        ck = dataclasses.replace(saved, run=run)
    history = ck.history
    code_version = {"git_commit": git_commit(), "git_modified": git_modified()}  # read once, not per save
    step = TrainStep(model, opt, p.grad_clip, bs, use_graph)

    def metrics_doc(final: Optional[dict]) -> dict:
        prov = {"command": command, "seed": seed, "preset": p.name, **code_version,
                "elapsed_s": round(ck.elapsed_s + time.time() - t_start, 3), "device": device_description(dev),
                "torch": torch.__version__, "python": platform.python_version(), "resumed": bool(resume),
                "train_step": "cuda-graph" if step.graphed else "eager", **kernels}
        return {"run": run, "history": history, "final": final, "complete": final is not None, "provenance": prov}

    def save(epoch: int, at_step: int, loss_sum: float, n_seen: int) -> None:
        Checkpoint(run, model.state_dict(), opt.state_dict(), sched.state_dict(), epoch, history,
                   ck.elapsed_s + time.time() - t_start, _rng_states(), at_step, loss_sum, n_seen).save(state_path)

    def eval_all() -> dict:
        return {s: evaluate(model, b, dev) for s, b in eval_sets.items()}

    # ---- loop ---------------------------------------------------------------------------------
    end_epoch = n_epochs if stop_after_epochs is None else min(n_epochs, ck.epoch + int(stop_after_epochs))
    bar = _progress_bar(progress, n_epochs * steps_per_epoch, ck.epoch * steps_per_epoch + ck.step,
                        f"{model_name}/{run['mixer'] or 'attn'} s{seed}")
    results = None
    with _deferred_interrupt() as interrupt:
        for epoch in range(ck.epoch, end_epoch):
            model.train()
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            perm = torch.randperm(n_tr, generator=g).to(dev)
            first = ck.step if epoch == ck.epoch else 0
            loss_sum = torch.full((), ck.loss_sum if first else 0.0, device=dev)
            n_seen = ck.n_seen if first else 0
            for i in range(first, steps_per_epoch):
                batch = train_dev[perm[i * bs: (i + 1) * bs]]
                loss = step(batch)
                sched.step()
                loss_sum += loss * batch.n
                n_seen += batch.n
                bar.update(1)
                if i % 20 == 0:
                    bar.set_postfix_str(f"loss {float(loss):.3f}" + _acc_text(history), refresh=False)
                if interrupt["hit"]:
                    save(epoch, i + 1, float(loss_sum), n_seen)
                    write_json(out_dir / METRICS_FILE, metrics_doc(None))
                    bar.close()
                    raise TrainingInterrupted(
                        f"interrupted at epoch {epoch + 1} of {n_epochs}, step {i + 1} of {steps_per_epoch}; the "
                        f"state is saved in {state_path}. Resume with: {_resume_command(command)}")
            done = epoch + 1
            if done % p.eval_every == 0 or done == n_epochs:
                results = eval_all()
                history.append({
                    "epoch": done, "step": done * steps_per_epoch, "lr": float(sched.get_last_lr()[0]),
                    "train_loss": (loss_sum / max(n_seen, 1)).item(),
                    "accuracy": {s: r["accuracy"] for s, r in results.items()},
                    "loss": {s: r["loss"] for s, r in results.items()},
                    "extra": {s: {k: v for k, v in r.items() if k not in ("accuracy", "loss")}
                              for s, r in results.items()},
                    "elapsed_s": round(ck.elapsed_s + time.time() - t_start, 3),
                })
            if done % p.eval_every == 0 or done == end_epoch:
                save(done, 0, 0.0, 0)
                if done < n_epochs:  # progress snapshot for long runs (complete: false)
                    write_json(out_dir / METRICS_FILE, metrics_doc(None))
    bar.close()

    final = None
    if end_epoch == n_epochs:
        if results is None or not history or history[-1]["epoch"] != n_epochs:
            results = eval_all()  # resumed after the last epoch already ran
        final = {
            "accuracy": {s: r["accuracy"] for s, r in results.items()},
            "loss": {s: r["loss"] for s, r in results.items()},
            "extra": {s: {k: v for k, v in r.items() if k not in ("accuracy", "loss")} for s, r in results.items()},
        }
    model.save_pretrained(out_dir)
    doc = metrics_doc(final)
    write_json(out_dir / METRICS_FILE, doc)
    return doc


def _progress_bar(enabled: bool, total: int, initial: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, unit="step", leave=False,
                mininterval=0.5, smoothing=0.1)


def _acc_text(history: list) -> str:
    if not history:
        return ""
    return ", " + ", ".join(f"{s} {a:.2f}" for s, a in history[-1]["accuracy"].items())
