"""Hand-built HookedMamba models where the answer reaches the last position through one known
path: for tests, docs and sanity checks of the attribution methods.

Both are 1-layer Mamba-1 models (d_model 4, d_inner 8, d_state 2, d_conv 3, vocab 8) on sequences
of length 4 whose answer is read at position 3; token 3 is the same in the clean and corrupted runs.

* :func:`conv_only_model`: the conv kernel copies the previous token (tap at lag 1), C := 0 so the
  state never reaches the output (y = D u), the gate is held open (z = 5 via the in_proj bias). The
  token at position 2 reaches position 3 **only through the conv**. Use :func:`conv_only_data`.
* :func:`ssm_only_model`: the conv is the identity tap (no mixing across positions), D := 0. The
  token at position 0 (outside the conv window) reaches position 3 **only through the scan**. Use
  :func:`ssm_only_data`.
"""

from __future__ import annotations

import torch

from achilles_interp.config import MambaConfig
from achilles_interp.model import HookedMamba

from .metrics import PatchingData

VOCAB, SEQ_LEN = 8, 4


def _base(seed: int) -> HookedMamba:
    torch.manual_seed(seed)
    cfg = MambaConfig(
        d_model=4,
        n_layers=1,
        vocab_size=VOCAB,
        d_state=2,
        d_conv=3,
        expand=2,
        bias=True,
        dt_rank=1,
        tie_embeddings=False,
    )
    model = HookedMamba(cfg, backend="torch").double().eval()
    with torch.no_grad():
        mixer = model.blocks[0].mixer
        d = cfg.d_inner
        mixer.in_proj.bias.zero_()
        mixer.in_proj.weight[d:].zero_()  # z rows: constant gate ...
        mixer.in_proj.bias[d:] = 5.0  # ... held open: SiLU(5) ~ 4.97
        mixer.conv1d.bias.zero_()
        model.backbone.embedding.weight.normal_(0, 1)
        model.lm_head.weight.normal_(0, 1)
    return model


def conv_only_model(seed: int = 0) -> HookedMamba:
    """Signal path: token 2 -> conv (lag-1 tap) -> u_3 -> D u_3 -> output. The scan is cut (C = 0)."""
    model = _base(seed)
    with torch.no_grad():
        mixer = model.blocks[0].mixer
        n, r = model.cfg.d_state, model.cfg.resolved_dt_rank
        mixer.conv1d.weight.zero_()
        mixer.conv1d.weight[:, 0, -2] = 1.0  # conv_out_t = x_{t-1}
        mixer.x_proj.weight[r + n :] = 0.0  # C = 0: states never reach y
        mixer.D.fill_(1.0)
    return model


def ssm_only_model(seed: int = 0) -> HookedMamba:
    """Signal path: token 0 -> u_0 -> state h_0 .. h_3 -> C h_3 -> output. No conv mixing, D = 0."""
    model = _base(seed)
    with torch.no_grad():
        mixer = model.blocks[0].mixer
        mixer.conv1d.weight.zero_()
        mixer.conv1d.weight[:, 0, -1] = 1.0  # identity tap: conv_out_t = x_t
        mixer.D.zero_()
        mixer.dt_proj.bias.fill_(0.0)  # dt = softplus(...) ~ 0.7: slow enough decay
        r = model.cfg.resolved_dt_rank
        mixer.x_proj.weight[r:] *= 5.0  # larger B and C: a strong write and readout
    return model


def _pairs(n: int, diff_pos: int, seed: int) -> PatchingData:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, VOCAB, (n, SEQ_LEN), generator=g)
    clean[:, diff_pos] = 1  # the same change in every pair: token 1 -> token 2
    corrupted = clean.clone()
    corrupted[:, diff_pos] = 2
    return PatchingData(
        clean,
        corrupted,
        SEQ_LEN - 1,
        clean_labels=clean[:, diff_pos],
        corrupted_labels=corrupted[:, diff_pos],
    )


def conv_only_data(n: int = 16, seed: int = 0) -> PatchingData:
    """Pairs differing at position 2 (token 1 clean, 2 corrupted; inside the conv window of position 3)."""
    return _pairs(n, 2, seed)


def ssm_only_data(n: int = 16, seed: int = 0) -> PatchingData:
    """Pairs differing at position 0 (token 1 clean, 2 corrupted; outside the conv window of position 3)."""
    return _pairs(n, 0, seed)
