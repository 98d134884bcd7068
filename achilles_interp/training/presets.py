"""Training presets: the paper's recipe (``"paper"``), a CPU smoke-scale recipe (``"quick"``) and
the recipe of the shipped checkpoints (``"ship"``).

Paper recipe (arXiv 2509.17514, appendix "Training setup" and "Experiment detail"; the table in
``docs/paper_settings.md`` lists every setting as paper / ours / silent): AdamW (beta
0.9/0.999, eps 1e-8, weight decay 1e-2, none on ``_no_weight_decay`` parameters, norms and
biases), gradient-norm clip 1, learning rate 1e-5 warmed up linearly to 2.5e-4 (25x) over 10
epochs then cosine-decayed to 1e-5 at epoch 200, loss on the last token only. Per task:

* inverse / forward matching: batch 1024; 100 000 samples as 80 000 train, 10 000 test, 10 000
  OOD; Mamba d_model 128, d_state 128, expand 2, d_conv 4, 2 layers, **one head** (Mamba-2
  ``headdim`` = d_inner = 256); Transformer d_model 128, one head, Q/K width 128, V width 256,
  FFN hidden 128 with SiLU, post-LN.
* composite: batch 2048; 300 000 samples of which each of the 15 training pairs is 5.6 %
  (252 000 training sequences); d_model 32, one head (``headdim`` 64). Depth and init scale
  are the *cell's*: the standard vs all-ones comparison uses 5 layers at ``init_gamma`` 1, the
  PE comparison 2 layers at 0.5 (``achilles_interp.training.paper_grid``); the preset's own
  default is the first (5 layers, gamma 1).
* composite-symmetric (full symmetry): batch 2048; each of the 19 training pairs is 4.5 % of
  300 000 (256 500 training sequences); d_model 128, one head, 2 layers, ``init_gamma`` 0.5 (the
  paper sweeps 2-6 layers at 0.5).

Our choices where the paper is silent or gives a range (all overridable):

* ``init_gamma = 0.5`` for the matching tasks (the paper sweeps 0.5-1.0 and reports failure
  at nearly all): std = fan_in^-0.5, close to the usual 1/sqrt(fan_in).
* Evaluation sets: 10 000 examples per held-out split (inverse matching: the paper's 10 %
  each; composite: the paper's test pairs are 0.6 % of 300 000 each, we draw 10 000).
* Mamba-2 kernel ``chunk_size`` 32 (mamba_ssm's default is 256). The chunk length only tiles
  the scan - every chunk length computes the same function - but the sequences here are 8-29
  tokens long, and at 256 the SSD kernels pad each one to a 256-token tile (11.7 ms per graphed
  training step on an H100 at 256 vs at most 6.8 ms at 32, ``benchmarks/train_step.py
  --chunk-sizes 256 32``). Resuming with another chunk length is allowed
  (:data:`~achilles_interp.training.trainer.KERNEL_TILING_FIELDS`).
* Mamba-1 ``d_state`` 16 (the Mamba-1 default, and that of every public Mamba-1 checkpoint)
  instead of 128 (the paper's models are Mamba-2): ``selective_scan_cuda`` at d_state 128 took
  84 ms per training step on an H100 (batch 1024), 22 minutes per 200-epoch run.
* The +PE variants use a *learned* positional embedding (type and place: silent). Measured on
  this CPU (ship-scale model, special-token format, bypass+PE, after 2 epochs): learned PE
  reached 0.37 (batch 256) / 0.59 (batch 128) test accuracy where sinusoidal PE stayed at
  chance (0.19-0.22 after 2-3 epochs): the sinusoidal table has amplitude 1 while the
  init_gamma=0.5 token embedding has std 256^-0.5 = 0.06, so after the RMSNorm the token
  identity is a small perturbation of the position code.
* ``"quick"``: Mamba-2 d_model 64 / d_state 16 / headdim 16, batch 128, a 40 000-example
  training set seen 3 times with a 12x larger peak learning rate (3e-3); sized for a 2-core
  CPU (README's timing table).
* ``"ship"``: the shipped CPU-scale recipe: the quick model trained for 8 epochs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import UserError


@dataclass(frozen=True)
class TaskSettings:
    """A preset's settings for one task, over the preset's defaults (None / empty = the default).

    Attributes:
        batch_size, n_train: batch size and training-set size for this task.
        model: :func:`~achilles_interp.zoo.build_model` keyword arguments for every variant.
        transformer, mamba1, mamba2: the same for one family only (applied after ``model``).
    """

    batch_size: Optional[int] = None
    n_train: Optional[int] = None
    model: dict = field(default_factory=dict)
    transformer: dict = field(default_factory=dict)
    mamba1: dict = field(default_factory=dict)
    mamba2: dict = field(default_factory=dict)


def _family(model_name: str, mixer: str) -> str:
    return "transformer" if model_name.startswith("transformer") else ("mamba1" if mixer == "mamba1" else "mamba2")


@dataclass(frozen=True)
class Preset:
    """A training recipe.

    Learning rate schedule (per optimiser step, ``epoch`` fractional): linear from ``lr_min`` to
    ``lr_max`` over ``warmup_epochs``, then cosine from ``lr_max`` to ``lr_min`` at ``epochs``.
    When a run overrides ``epochs``, ``warmup_epochs`` is scaled by the same factor.

    Attributes:
        name: preset name.
        epochs: passes over the training set.
        warmup_epochs: linear warm-up length (epochs).
        lr_min, lr_max: learning rates (per step) at the ends of warm-up/cosine, and the peak.
        betas, eps, weight_decay, grad_clip: AdamW and clipping (clip on the global grad L2 norm).
        batch_size: default batch size.
        n_train: training-set size (examples); ``n_eval``: examples per evaluation split.
        eval_every: evaluate every this many epochs (and always after the last).
        model: keyword arguments of :func:`achilles_interp.zoo.build_model` (sizes, init_gamma).
        transformer, mamba1, mamba2: overrides of ``model`` for the Transformer variants and for
            the Mamba variants of each mixer.
        tasks: task name -> :class:`TaskSettings` applied over all of the above.
    """

    name: str
    epochs: int
    warmup_epochs: float
    lr_min: float
    lr_max: float
    batch_size: int
    n_train: int
    n_eval: int
    eval_every: int
    model: dict = field(default_factory=dict)
    transformer: dict = field(default_factory=dict)
    mamba1: dict = field(default_factory=dict)
    mamba2: dict = field(default_factory=dict)
    tasks: dict = field(default_factory=dict)
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 1e-2
    grad_clip: float = 1.0

    def _task(self, task_name: Optional[str]) -> TaskSettings:
        return self.tasks.get(task_name, TaskSettings())

    def batch_size_for(self, task_name: Optional[str] = None) -> int:
        return int(self._task(task_name).batch_size or self.batch_size)

    def n_train_for(self, task_name: Optional[str] = None) -> int:
        return int(self._task(task_name).n_train or self.n_train)

    def model_kwargs(self, model_name: str, mixer: str = "mamba2", task_name: Optional[str] = None) -> dict:
        """:func:`~achilles_interp.zoo.build_model` keyword arguments of ``model_name`` (with
        ``mixer`` for the Mamba variants) on ``task_name``: ``model``, then the family's
        overrides, then the task's ``model``, then the task's family overrides."""
        family = _family(model_name, mixer)
        t = self._task(task_name)
        return {**self.model, **getattr(self, family), **t.model, **getattr(t, family)}

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    def replace(self, **changes: Any) -> "Preset":
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, Preset] = {
    "paper": Preset(
        name="paper",
        epochs=200,
        warmup_epochs=10,
        lr_min=1e-5,
        lr_max=2.5e-4,
        batch_size=1024,
        n_train=80_000,
        n_eval=10_000,
        eval_every=10,
        model=dict(
            d_model=128,
            d_state=128,
            expand=2,
            d_conv=4,
            n_layers=2,
            headdim=256,  # one head: d_inner = 2 * 128
            init_gamma=0.5,
            pos_embed="learned",
        ),
        transformer=dict(n_heads=1, d_head=128, d_value=256, d_mlp=128, act="silu", norm="post"),
        mamba1=dict(d_state=16),
        mamba2=dict(chunk_size=32),
        tasks={
            "composite": TaskSettings(
                batch_size=2048, n_train=252_000,
                model=dict(d_model=32, headdim=64, n_layers=5, init_gamma=1.0),
                transformer=dict(d_head=32, d_value=64, d_mlp=32),
            ),
            "composite-symmetric": TaskSettings(batch_size=2048, n_train=256_500),
        },
    ),
    "quick": Preset(
        name="quick",
        epochs=3,
        warmup_epochs=0.3,
        lr_min=1e-4,
        lr_max=3e-3,
        batch_size=128,
        n_train=40_000,
        n_eval=1024,
        eval_every=1,
        model=dict(
            d_model=64,
            d_state=16,
            expand=2,
            d_conv=4,
            n_layers=2,
            headdim=16,
            init_gamma=0.5,
            pos_embed="learned",
        ),
        transformer=dict(n_heads=1, d_mlp="auto"),
    ),
}
# the shipped checkpoints' recipe: the quick model, trained for 8 epochs
PRESETS["ship"] = PRESETS["quick"].replace(name="ship", epochs=8, warmup_epochs=0.5, n_eval=2048)


def default_preset_name(device: Optional[str] = None) -> str:
    """``"paper"`` when training on a GPU, else ``"quick"``."""
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return "paper" if str(device).startswith("cuda") else "quick"


def get_preset(name: Optional[str], device: Optional[str] = None) -> Preset:
    """Preset by name; None or ``"auto"`` picks :func:`default_preset_name`."""
    if name is None or name == "auto":
        name = default_preset_name(device)
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; allowed: {', '.join(PRESETS)} (or 'auto')")
    return PRESETS[name]
