"""The tiny training preset the CPU tests share: a run of a few hundred milliseconds on one thread."""

from achilles_interp.training.presets import Preset

TINY = Preset(
    name="tiny",
    epochs=3,
    warmup_epochs=1,
    lr_min=1e-4,
    lr_max=3e-3,
    batch_size=32,
    n_train=96,
    n_eval=32,
    eval_every=1,
    model=dict(d_model=16, d_state=4, n_layers=2, headdim=8, init_gamma=0.5, pos_embed="sinusoidal"),
    transformer=dict(d_mlp=32),
)
