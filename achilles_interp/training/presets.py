"""Training presets: the paper's recipe (``"paper"``), a CPU smoke-scale recipe (``"quick"``) and
the recipe of the shipped checkpoints (``"ship"``).

Paper recipe (arXiv 2509.17514, as given in the issue): AdamW (beta 0.9/0.999, eps 1e-8,
weight decay 1e-2, none on ``_no_weight_decay`` parameters, norms and biases), gradient-norm
clip 1, learning rate 1e-5 warmed up linearly to 2.5e-4 over 10 epochs then cosine-decayed to
1e-5 at epoch 200, batch 1024 (inverse matching) / 2048 (composite). Mamba: d_model 128,
d_state 128, expand 2, d_conv 4, 2 layers; Transformer: d_model 128, 1 head, 2 layers.

Our choices where the paper is silent or gives a range (all overridable):

* ``init_gamma = 0.5`` (the paper uses 0.5-1.0): the largest initial scale of that range,
  std = fan_in^-0.5, i.e. close to the usual 1/sqrt(fan_in) - it trains reliably at every depth;
  gamma = 1 (much smaller weights) is the regime the paper associates with stronger
  inductive biases and is one ``--init-gamma 1`` away (``train`` / ``compare`` commands).
* Dataset size: 80 000 training examples with 10 000 held-out test and OOD examples each -
  the 80/10/10 proportions of the paper's split (each split is generated separately, see
  :mod:`achilles_interp.tasks.inverse_matching`).
* Mamba-2 ``headdim`` 64 (4 heads at d_model 128) and kernel ``chunk_size`` 32 (mamba_ssm's
  default is 256). The chunk length only tiles the scan - every chunk length computes the same
  function - but the sequences here are 29 tokens long, and at 256 the SSD kernels pad each one
  to a 256-token tile. Measured on an H100: 11.7 ms per graphed training step at chunk 256
  (``benchmarks/train_step.py``, batch 1024 x 29 tokens); at chunk 32 a paper-preset run alone on
  the GPU trained 10 epochs (800 steps plus one evaluation of all three splits) in 5.4 s, i.e.
  at most 6.8 ms per step, so a 200-epoch run trains in under 2 minutes (plus 1-3 minutes of
  Triton compilation and autotuning per process on a cold cache).
  ``benchmarks/train_step.py --chunk-sizes 256 32`` times them side by side. Resuming a run
  with another chunk length is allowed (:data:`~achilles_interp.training.trainer.KERNEL_TILING_FIELDS`).
* Mamba-1 ``d_state`` 16 (the Mamba-1 default, and that of every public Mamba-1 checkpoint)
  instead of the paper's 128 (a Mamba-2 size): ``selective_scan_cuda`` at d_state 128 took
  84 ms per training step on an H100 (batch 1024), 22 minutes per 200-epoch run.
* The +PE variants use a *learned* positional embedding. Measured on this CPU (ship-scale model,
  inverse matching, bypass+PE, after 2 epochs): learned PE reached 0.37 (batch 256) / 0.59
  (batch 128) test accuracy where sinusoidal PE stayed at chance (0.19-0.22 after 2-3 epochs).
  A likely reason: the sinusoidal table has
  amplitude 1 while the init_gamma=0.5 token embedding has std 256^-0.5 = 0.06, so after the
  RMSNorm the token identity is a small perturbation of the position code.
* ``"quick"``: Mamba-2 d_model 64 / d_state 16 / headdim 16, batch 128, a 40 000-example
  training set seen 3 times with a 12x larger peak learning rate (3e-3). Sized to finish in
  about three minutes on a 2-core CPU and to learn the forward-matching control above chance
  (measured: standard Mamba-2, seed 0, forward control test accuracy 0.43 vs chance 0.2, 131 s
  wall end to end with 1 torch thread while the other core was busy).
* ``"ship"``: the shipped checkpoints' recipe: the quick model trained for 8 epochs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import torch


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
        batch_size: default batch size; ``task_batch_size`` overrides it per task name.
        n_train: training-set size (examples); ``n_eval``: examples per evaluation split.
        eval_every: evaluate every this many epochs (and always after the last).
        model: keyword arguments of :func:`achilles_interp.zoo.build_model` (sizes, init_gamma).
        transformer, mamba1, mamba2: overrides of ``model`` for the Transformer variants and for
            the Mamba variants of each mixer.
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
    task_batch_size: dict = field(default_factory=dict)
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 1e-2
    grad_clip: float = 1.0

    def batch_size_for(self, task_name: str) -> int:
        return int(self.task_batch_size.get(task_name, self.batch_size))

    def model_kwargs(self, model_name: str, mixer: str = "mamba2") -> dict:
        """:func:`~achilles_interp.zoo.build_model` keyword arguments of ``model_name`` (with
        ``mixer`` for the Mamba variants): ``model`` updated by the family's overrides."""
        kw = dict(self.model)
        if model_name.startswith("transformer"):
            kw.update(self.transformer)
        else:
            kw.update(self.mamba1 if mixer == "mamba1" else self.mamba2)
        return kw

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
        task_batch_size={"composite": 2048, "composite-symmetric": 2048},
        n_train=80_000,
        n_eval=10_000,
        eval_every=10,
        model=dict(
            d_model=128,
            d_state=128,
            expand=2,
            d_conv=4,
            n_layers=2,
            headdim=64,
            init_gamma=0.5,
            pos_embed="learned",
        ),
        transformer=dict(n_heads=1, d_mlp="auto"),
        mamba1=dict(d_state=16),
        mamba2=dict(chunk_size=32),
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
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return "paper" if str(device).startswith("cuda") else "quick"


def get_preset(name: Optional[str], device: Optional[str] = None) -> Preset:
    """Preset by name; None or ``"auto"`` picks :func:`default_preset_name`."""
    if name is None or name == "auto":
        name = default_preset_name(device)
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; allowed: {', '.join(PRESETS)} (or 'auto')")
    return PRESETS[name]
