"""Names the command line offers, without importing torch: the model variants (built by
:mod:`achilles_interp.zoo`) and the tasks (registered in :mod:`achilles_interp.tasks`, which
checks its registry against :data:`TASK_NAMES`)."""

from __future__ import annotations

from typing import Optional

# name -> (description, MambaConfig overrides or None for the Transformer family)
VARIANTS: dict[str, tuple[str, Optional[dict]]] = {
    "transformer": ("causal Transformer baseline", None),
    "transformer-conv": ("Transformer with a causal depthwise conv on Q/K/V", None),
    "mamba": ("standard Mamba", {"conv_mode": "standard"}),
    "mamba-noconv": ("Mamba without the conv", {"conv_mode": "none"}),
    "mamba-bypass": ("Mamba with a residual bypass around the conv", {"conv_mode": "bypass"}),
    "mamba-bypass-pe": (
        "Mamba with conv bypass + positional encoding (the paper's fix)",
        {"conv_mode": "bypass", "pos_embed": "PE"},
    ),
    "mamba-pe": ("standard Mamba + positional encoding", {"conv_mode": "standard", "pos_embed": "PE"}),
    "mamba-ones": (
        "Mamba with a frozen all-ones conv kernel",
        {"conv_mode": "standard", "conv_kernel": "ones"},
    ),
}


MATCHING_TASKS = ("inverse-matching", "forward-matching")  # answer = key slot; 3 x n_layers fillers
FORMAT_TASKS = MATCHING_TASKS + ("composite", "composite-symmetric")  # tasks with a ``format`` option
TASK_NAMES = FORMAT_TASKS + ("copy", "mqar")
TEXT_TASK_NAMES = ("text-inverse-matching", "text-forward-matching")  # for pretrained LMs: need the model's tokenizer
