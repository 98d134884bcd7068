"""Model zoo: the paper's variants by name, a loader that dispatches on ``config.json``, and the
checkpoints shipped with the package.

Variants (:data:`VARIANTS`; each Mamba variant exists for ``mixer="mamba1"`` and ``"mamba2"``):

==================  =====================================================================
``transformer``      causal Transformer baseline (:mod:`achilles_interp.transformer`)
``transformer-conv`` the same with a causal depthwise conv (width ``d_conv``) on Q, K and V
``mamba``            standard Mamba block (conv -> SiLU -> selective scan, gated)
``mamba-noconv``     conv removed (``conv_mode="none"``)
``mamba-bypass``     residual path around the conv (``conv_mode="bypass"``)
``mamba-bypass-pe``  bypass + positional encoding: the paper's fix
``mamba-pe``         standard conv + positional encoding
``mamba-ones``       conv kernel frozen to all ones (symmetric token fusion)
==================  =====================================================================
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .config import MambaConfig
from .errors import UserError
from .model import HookedMamba
from .transformer import FORMAT as TRANSFORMER_FORMAT
from .transformer import HookedTransformerBaseline, TransformerConfig

Model = Union[HookedMamba, HookedTransformerBaseline]

from .catalog import VARIANTS  # noqa: E402  (re-exported: the variant table lives in a torch-free module)


def variant_name(cfg: Union[MambaConfig, TransformerConfig]) -> str:
    """The :data:`VARIANTS` name a config is an instance of (``"mamba-bypass-pe"``, ...)."""
    if isinstance(cfg, TransformerConfig):
        return "transformer-conv" if cfg.qkv_conv else "transformer"
    name = {"none": "mamba-noconv", "bypass": "mamba-bypass"}.get(cfg.conv_mode, "mamba")
    if cfg.pos_embed is not None:
        name += "-pe"
    if cfg.conv_kernel == "ones":
        name += "-ones"
    return name


def list_variants() -> list[str]:
    """Registered variant names."""
    return list(VARIANTS)


def build_config(
    name: str,
    vocab_size: int,
    max_len: int,
    n_layers: int = 2,
    d_model: int = 128,
    mixer: str = "mamba2",
    d_state: int = 128,
    d_conv: int = 4,
    expand: int = 2,
    headdim: int = 64,
    init_gamma: Optional[float] = 0.5,
    pos_embed: str = "learned",
    n_heads: int = 1,
    d_mlp: Union[int, str, None] = "auto",
    transformer_pos_embed: Optional[str] = "learned",
    **overrides: Any,
) -> Union[MambaConfig, TransformerConfig]:
    """The config of variant ``name`` (see :func:`build_model` for the arguments)."""
    if name not in VARIANTS:
        raise UserError(f"unknown model variant {name!r}; allowed: {', '.join(VARIANTS)}")
    if pos_embed not in ("sinusoidal", "learned"):
        raise UserError(
            f"pos_embed (for the +PE variants) must be 'sinusoidal' or 'learned', got {pos_embed!r}"
        )
    spec = VARIANTS[name][1]
    if spec is None:
        kw = dict(
            d_model=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            d_mlp=d_mlp,
            vocab_size=vocab_size,
            max_len=max_len,
            pos_embed=transformer_pos_embed,
            init_gamma=init_gamma,
            qkv_conv=d_conv if name == "transformer-conv" else None,
        )
        kw.update(overrides)
        return TransformerConfig(**kw)
    spec = {k: (pos_embed if v == "PE" else v) for k, v in spec.items()}
    kw = dict(
        d_model=d_model,
        n_layers=n_layers,
        vocab_size=vocab_size,
        mixer=mixer,
        d_state=d_state,
        d_conv=d_conv,
        expand=expand,
        headdim=headdim,
        init_gamma=init_gamma,
        max_len=max_len,
        **spec,
    )
    kw.update(overrides)
    return MambaConfig(**kw)


def build_model(name: str, vocab_size: int, max_len: int, backend: str = "auto", **config: Any) -> Model:
    """Build a freshly initialised model of variant ``name`` (:data:`VARIANTS`).

    Args:
        name: variant name.
        vocab_size, max_len: token ids in ``[0, vocab_size)``; sequences up to ``max_len`` tokens.
        n_layers, d_model: depth and residual width (both families).
        mixer: ``"mamba1"`` or ``"mamba2"`` (ignored by the Transformer variants).
        d_state, d_conv, expand, headdim: Mamba sizes; ``d_conv`` is also the Q/K/V conv width
            of ``transformer-conv``.
        init_gamma: the paper's N(0, fan_in^(-2 gamma)) initialisation (None: library defaults).
        pos_embed: positional encoding of the ``*-pe`` Mamba variants (``"learned"``, the default,
            or ``"sinusoidal"``).
        n_heads, d_mlp, transformer_pos_embed: Transformer-only sizes.
        backend: HookedMamba backend (``"auto"`` uses CUDA kernels when on a GPU).
        config: the keyword arguments of :func:`build_config` (the sizes above, plus extra config
            fields such as ``dt_rank``).
    """
    return model_from_config(build_config(name, vocab_size, max_len, **config), backend=backend)


def model_from_config(cfg: Union[MambaConfig, TransformerConfig], backend: str = "auto") -> Model:
    """A fresh model for either config type."""
    if isinstance(cfg, TransformerConfig):
        return HookedTransformerBaseline(cfg)
    return HookedMamba(cfg, backend=backend)


def config_from_dict(raw: dict) -> Union[MambaConfig, TransformerConfig]:
    """Inverse of ``cfg.to_dict()`` for either family (dispatch on ``"format"``)."""
    if raw.get("format") == TRANSFORMER_FORMAT:
        return TransformerConfig.from_dict(raw)
    return MambaConfig.from_dict(raw)


def load_model(path, device=None, backend: str = "auto", dtype: Optional[torch.dtype] = None) -> Model:
    """Load a checkpoint directory: a Transformer baseline if its ``config.json`` says
    ``"format": "achilles-interp-transformer"``, else a :class:`HookedMamba` (achilles-interp,
    ``mamba_ssm`` or Hugging Face format); a string that names no directory is read as a Hub id
    (resolved by :mod:`achilles_interp.hub`, offline from the local cache where so configured)."""
    from .loading import CheckpointError

    local = Path(path)
    cfg_file = local / "config.json"
    if local.is_dir() and cfg_file.is_file():
        try:
            raw = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{cfg_file} is not valid JSON: {e}") from None
        if isinstance(raw, dict) and raw.get("format") == TRANSFORMER_FORMAT:
            return HookedTransformerBaseline.from_pretrained(local, device=device, dtype=dtype)
    # a directory, or (a string that is no directory) a Hugging Face Hub id such as "state-spaces/mamba-130m"
    return HookedMamba.from_pretrained(local if local.is_dir() else str(path), backend=backend, device=device,
                                       dtype=dtype)


# ---- shipped checkpoints -------------------------------------------------------------------
def checkpoints_dir() -> Path:
    """Folder of the checkpoints shipped in the package (``achilles_interp/checkpoints``)."""
    return Path(__file__).resolve().parent / "checkpoints"


def list_checkpoints() -> list[str]:
    """Names of the shipped checkpoints (sub-folders holding a config.json)."""
    root = checkpoints_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "config.json").is_file())


def load_default(name: str, device=None, backend: str = "auto") -> Model:
    """Load shipped checkpoint ``name`` (see :func:`list_checkpoints`; written by
    ``python -m achilles_interp.training.ship``; each folder's PROVENANCE.json says how)."""
    from .loading import CheckpointError

    available = list_checkpoints()
    if name not in available:
        raise CheckpointError(
            f"no shipped checkpoint {name!r}; available: "
            f"{available or 'none (run python -m achilles_interp.training.ship)'}"
        )
    return load_model(checkpoints_dir() / name, device=device, backend=backend)
