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

import math
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ..errors import UserError
from ..outputs import atomic_write, write_json
from ..tasks import Task, TaskBatch, get_task, task_loss
from ..tasks.base import answer_logits
from ..zoo import build_model
from .graphed_step import TrainStep, adapt_loaded_optimizer, make_optimizer
from .presets import Preset, get_preset
from .validation import check_seeds, positive_settings

STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.json"
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


MATCHING_TASKS = ("inverse-matching", "forward-matching")
FORMAT_TASKS = MATCHING_TASKS + ("composite", "composite-symmetric")  # tasks with a ``format`` option


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


def _resume_key(value):
    """A run setting as compared on resume: model configs without their kernel-tiling fields."""
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in KERNEL_TILING_FIELDS}
    return value


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
        out_dir: run directory (created).
        preset: ``"paper"``, ``"quick"``, ``"ship"``, a :class:`Preset`, or ``"auto"``/None
            (paper on a GPU, quick on the CPU).
        seed: seeds data generation, initialisation and shuffling.
        device: ``"cpu"``, ``"cuda"`` (HookedMamba then uses the CUDA kernels through
            ``backend="auto"``) or None (cuda when available).
        epochs: override the preset's number of epochs (warm-up scaled proportionally).
        mixer: ``"mamba1"`` or ``"mamba2"`` for the Mamba variants.
        resume: continue from ``out_dir/train_state.pt`` (the run's arguments must match).
        n_train, n_eval, batch_size: override the preset's dataset sizes / batch size.
        model_overrides: extra :func:`~achilles_interp.zoo.build_model` arguments (e.g.
            ``{"n_layers": 3, "init_gamma": 1.0}``).
        stop_after_epochs: return after this many epochs *in this call* (the schedule is still
            that of the full run; ``resume=True`` later finishes it).
        progress: show a tqdm progress bar.
        command: command line recorded in the provenance (default: ``sys.argv``).
        threads: if set, ``torch.set_num_threads(threads)`` for this process (CPU training; on a
            shared machine 1 thread avoids OpenMP oversubscription, which can be 10x slower).
        cuda_graph: replay each full-size training step as a CUDA graph (same arithmetic, far
            fewer kernel launches; see :mod:`~achilles_interp.training.graphed_step`). None: on
            when training on a GPU. Falls back to eager steps, with a warning, if capture fails.
        task_format: token format of the matching and composite tasks (``"paper"``, their
            default, or ``"special-tokens"``); None keeps the task's default.

    Returns:
        The ``metrics.json`` content: ``run`` (description), ``history`` (per evaluation: epoch,
        step, lr, mean train loss since the last evaluation, per-split accuracy/loss), ``final``
        (``accuracy``/``loss``/``extra`` per split; None while unfinished), ``complete`` and
        ``provenance``.
    """
    from tqdm.auto import tqdm

    t_start = time.time()
    out_dir = Path(out_dir)
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
    n_epochs = p.epochs if epochs is None else epochs
    warmup = p.warmup_epochs * n_epochs / p.epochs
    mkw = p.model_kwargs(model_name, mixer, task if isinstance(task, str) else task.name)
    mkw.update(model_overrides or {})
    task_obj = resolve_task(task, mkw.get("n_layers", 2), task_format)
    bs = p.batch_size_for(task_obj.name) if batch_size is None else batch_size
    n_tr = p.n_train_for(task_obj.name) if n_train is None else n_train
    n_ev = p.n_eval if n_eval is None else n_eval

    # ---- data and model (both deterministic in seed) ----------------------------------------
    seed_everything(seed)
    model = build_model(
        model_name, vocab_size=task_obj.vocab_size, max_len=max(task_obj.seq_len, 64), mixer=mixer, **mkw
    ).to(dev)
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

    run = {
        "task": task_obj.name,
        "task_repr": repr(task_obj),
        "model": model_name,
        "mixer": mixer if not model_name.startswith("transformer") else None,
        "preset": p.name,
        "seed": seed,
        "epochs": n_epochs,
        "warmup_epochs": warmup,
        "batch_size": bs,
        "n_train": n_tr,
        "n_eval": n_ev,
        "steps_per_epoch": steps_per_epoch,
        "splits": list(task_obj.splits),
        "model_config": model.cfg.to_dict(),
        "model_class": type(model).__name__,
        "n_parameters": sum(q.numel() for q in model.parameters()),
        "preset_params": p.to_dict(),
        "model_overrides": model_overrides or {},
    }
    history: list[dict] = []
    start_epoch, elapsed_before = 0, 0.0
    state_path = out_dir / STATE_FILE
    if resume:
        if not state_path.is_file():
            raise UserError(f"--resume: no {STATE_FILE} in {out_dir}; start the run without --resume")
        # Loaded on the CPU: the RNG states must stay CPU ByteTensors, and load_state_dict copies
        # weights and optimiser moments onto the parameters' device.
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        keys = ("task", "task_repr", "model", "mixer", "seed", "epochs", "batch_size", "n_train", "model_config")
        diff = [k for k in keys if _resume_key(st["run"].get(k)) != _resume_key(run.get(k))]
        if diff:
            raise UserError(
                f"--resume: the run in {out_dir} differs in {diff} "
                f"(saved {[st['run'].get(k) for k in diff]}, now {[run.get(k) for k in diff]})"
            )
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        adapt_loaded_optimizer(opt, dev)
        sched.load_state_dict(st["scheduler"])
        start_epoch, history, elapsed_before = st["epoch"], st["history"], st["elapsed_s"]
        random.setstate(st["rng"]["python"])
        np.random.set_state(st["rng"]["numpy"])
        torch.set_rng_state(st["rng"]["torch"])
    elif state_path.exists():
        raise UserError(
            f"{out_dir} already holds a run ({STATE_FILE}); pass resume=True (--resume) "
            "or choose another output directory"
        )

    # the code the run was started from, read once (not at every checkpoint, two git calls each)
    code_version = {"git_commit": git_commit(), "git_modified": git_modified()}

    def provenance() -> dict:
        return {
            "command": command if command is not None else " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
            "seed": seed,
            "preset": p.name,
            **code_version,
            "elapsed_s": round(elapsed_before + time.time() - t_start, 3),
            "device": device_description(dev),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "resumed": bool(resume),
            "train_step": "cuda-graph" if step.graphed else "eager",
        }

    def metrics_doc(final: Optional[dict]) -> dict:
        return {
            "run": run,
            "history": history,
            "final": final,
            "complete": final is not None,
            "provenance": provenance(),
        }

    def save_state(epoch: int) -> None:
        st = {
            "run": run,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "epoch": epoch,
            "history": history,
            "elapsed_s": elapsed_before + time.time() - t_start,
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
            },
        }
        atomic_write(state_path, lambda f: torch.save(st, f))

    def eval_all() -> dict:
        return {s: evaluate(model, b, dev) for s, b in eval_sets.items()}

    # ---- loop ---------------------------------------------------------------------------------
    end_epoch = n_epochs if stop_after_epochs is None else min(n_epochs, start_epoch + int(stop_after_epochs))
    bar = tqdm(
        total=n_epochs,
        initial=start_epoch,
        desc=f"{model_name}/{run['mixer'] or 'attn'} s{seed}",
        disable=not progress,
        unit="epoch",
        leave=False,
    )
    step = TrainStep(model, opt, p.grad_clip, bs, use_graph)
    results = None
    for epoch in range(start_epoch, end_epoch):
        model.train()
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(n_tr, generator=g).to(dev)
        loss_sum, n_seen = torch.zeros((), device=dev), 0
        for i in range(steps_per_epoch):
            idx = perm[i * bs : (i + 1) * bs]
            batch = train_dev[idx]
            loss = step(batch)
            sched.step()
            loss_sum += loss * batch.n
            n_seen += batch.n
        done = epoch + 1
        if done % p.eval_every == 0 or done == n_epochs:
            results = eval_all()
            history.append(
                {
                    "epoch": done,
                    "step": done * steps_per_epoch,
                    "lr": float(sched.get_last_lr()[0]),
                    "train_loss": (loss_sum / max(n_seen, 1)).item(),
                    "accuracy": {s: r["accuracy"] for s, r in results.items()},
                    "loss": {s: r["loss"] for s, r in results.items()},
                    "extra": {s: {k: v for k, v in r.items() if k not in ("accuracy", "loss")}
                              for s, r in results.items()},
                    "elapsed_s": round(elapsed_before + time.time() - t_start, 3),
                }
            )
            bar.set_postfix({f"acc_{s}": f"{a:.3f}" for s, a in history[-1]["accuracy"].items()})
        bar.update(1)
        if done % p.eval_every == 0 or done == end_epoch:
            save_state(done)
            if done < n_epochs:  # progress snapshot for long runs (complete: false)
                write_json(out_dir / METRICS_FILE, metrics_doc(None))
    bar.close()

    finished = end_epoch == n_epochs
    if finished:
        if results is None or not history or history[-1]["epoch"] != n_epochs:
            results = eval_all()  # resumed after the last epoch already ran
        final = {
            "accuracy": {s: r["accuracy"] for s, r in results.items()},
            "loss": {s: r["loss"] for s, r in results.items()},
            "extra": {
                s: {k: v for k, v in r.items() if k not in ("accuracy", "loss")} for s, r in results.items()
            },
        }
    else:
        final = None
    model.save_pretrained(out_dir)
    doc = metrics_doc(final)
    write_json(out_dir / METRICS_FILE, doc)
    return doc
