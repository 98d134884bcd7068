"""Training steps (forward, task loss, backward, grad-norm clip, AdamW) run eagerly or replayed as
one CUDA graph.

Why a graph: the paper-scale models are tiny (about 0.3 M parameters; batch 1024 x 29 tokens), so
an eager step on a GPU is bound by launching its few hundred kernels from Python, not by the
GPU. Capturing the whole step once and replaying it (the "whole-network capture" recipe of the
PyTorch CUDA-graphs notes) launches it as one unit. The arithmetic is the same as the eager
step's; only the launch changes.

Requirements the trainer meets for the graph (see :func:`make_optimizer`):

* AdamW with ``capturable=True`` and a tensor learning rate, so the optimiser reads its step
  count and the scheduler's current rate from GPU memory at replay time
  (``LRScheduler`` updates a tensor rate in place);
* every full-size batch has the same shape: it is copied into static input buffers before each
  replay. A smaller last batch of an epoch runs eagerly, on the same parameter and gradient
  tensors (gradients are zeroed in place, never set to None, once a graph exists);
* nothing in the captured step synchronises with the host (token-range validation is skipped
  while a capture is in progress, see :func:`achilles_interp.inputs.validate_tokens`).

If capture fails (a kernel that cannot be captured), :class:`TrainStep` warns, discards the
graph and continues eagerly; ``TrainStep.graphed`` says which mode is in use.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch

from ..tasks import TaskBatch, task_loss

WARMUP_STEPS = 3  # eager steps on a side stream before capture (cuBLAS/Triton autotuning, optimiser state)


def make_optimizer(params: list[dict], lr: float, betas: tuple, eps: float, device: torch.device):
    """AdamW over ``params`` groups; on a GPU capturable with a tensor learning rate (graph-ready)."""
    if device.type == "cuda":
        opt = torch.optim.AdamW(
            params, lr=torch.tensor(lr, device=device), betas=betas, eps=eps, capturable=True, foreach=True
        )
        for group in opt.param_groups:
            # A float base rate: a scheduler built on a tensor one would read it back to the host
            # (a GPU sync) at every step; with a float it only fills the tensor rate in place.
            group["initial_lr"] = float(lr)
        return opt
    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps)


def adapt_loaded_optimizer(opt: torch.optim.Optimizer, device: torch.device) -> None:
    """After ``load_state_dict`` of a state saved on another device kind, restore the settings
    :func:`make_optimizer` chose for ``device`` (capturable flag, tensor or float rate, where
    AdamW's step counters live)."""
    on_gpu = device.type == "cuda"
    for group in opt.param_groups:
        lr = float(group["lr"])
        group["capturable"] = on_gpu
        group["lr"] = torch.tensor(lr, device=device) if on_gpu else lr
        if isinstance(group.get("initial_lr"), torch.Tensor):
            group["initial_lr"] = float(group["initial_lr"])
        for p in group["params"]:
            st = opt.state.get(p, {})
            if "step" in st and isinstance(st["step"], torch.Tensor):
                st["step"] = st["step"].to(device=p.device if on_gpu else "cpu", dtype=torch.float32)


class TrainStep:
    """``step(batch) -> loss`` (detached scalar tensor): one optimiser update on ``batch``.

    Args:
        model: the model (``model(tokens) -> logits [n, L, V]``).
        opt: its optimiser (from :func:`make_optimizer` when graphs are used).
        grad_clip: max global gradient L2 norm.
        batch_size: the full batch size; only batches of exactly this size are graphed.
        use_graph: capture and replay a CUDA graph (requires the model on a GPU).
    """

    def __init__(
        self, model: torch.nn.Module, opt: torch.optim.Optimizer, grad_clip: float, batch_size: int, use_graph: bool
    ):
        self.model, self.opt, self.grad_clip, self.batch_size = model, opt, grad_clip, batch_size
        self.graphed = bool(use_graph)
        self._graph: Optional[torch.cuda.CUDAGraph] = None
        self._static: Optional[TaskBatch] = None
        self._static_loss: Optional[torch.Tensor] = None
        self._warm = 0
        self._stream: Optional[torch.cuda.Stream] = None

    # ---- the step itself (identical arithmetic in every mode) ----------------------------------
    def _update(self, batch: TaskBatch, zero_in_place: bool) -> torch.Tensor:
        loss = task_loss(self.model(batch.tokens), batch)
        self.opt.zero_grad(set_to_none=not zero_in_place)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()
        return loss.detach()

    def __call__(self, batch: TaskBatch) -> torch.Tensor:
        if not self.graphed or batch.n != self.batch_size:
            return self._update(batch, zero_in_place=self._graph is not None)
        if self._graph is not None:
            self._copy_in(batch)
            self._graph.replay()
            return self._static_loss.clone()
        if self._warm < WARMUP_STEPS:
            # Real training steps, run on a side stream as the PyTorch notes prescribe before capture.
            if self._stream is None:
                self._stream = torch.cuda.Stream()
            self._stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self._stream):
                loss = self._update(batch, zero_in_place=False)
            torch.cuda.current_stream().wait_stream(self._stream)
            self._warm += 1
            return loss
        self._capture(batch)
        return self(batch)

    # ---- capture ----------------------------------------------------------------------------------
    def _copy_in(self, batch: TaskBatch) -> None:
        st = self._static
        st.tokens.copy_(batch.tokens, non_blocking=True)
        st.labels.copy_(batch.labels, non_blocking=True)
        if isinstance(st.answer_pos, torch.Tensor):
            st.answer_pos.copy_(batch.answer_positions().reshape(st.answer_pos.shape), non_blocking=True)

    def _capture(self, batch: TaskBatch) -> None:
        dev = batch.tokens.device
        ap = batch.answer_positions().reshape(batch.labels.shape).clone()
        self._static = TaskBatch(batch.tokens.clone(), batch.labels.clone(), ap, {})
        graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)
        try:
            with torch.cuda.graph(graph):
                loss = task_loss(self.model(self._static.tokens), self._static)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
                self.opt.step()
            self._static_loss = loss.detach()
        except Exception as e:  # noqa: BLE001 - any capture failure means: fall back to eager
            warnings.warn(
                f"CUDA-graph capture of the training step failed ({type(e).__name__}: {e}); "
                "training continues with eager steps",
                RuntimeWarning,
                stacklevel=2,
            )
            torch.cuda.synchronize(dev)
            self.opt.zero_grad(set_to_none=True)
            self.graphed, self._graph, self._static = False, None, None
            return
        self._graph = graph
