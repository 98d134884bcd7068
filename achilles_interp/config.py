"""`MambaConfig`: one dataclass for Mamba-1 and Mamba-2 models and the paper's variants.

Field names follow `mamba_ssm` (``d_model``, ``d_state``, ``d_conv``, ``expand``, ``dt_rank``,
``headdim``, ``ngroups``) so that converting a checkpoint's config is a rename, not a guess.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Union

from .errors import UserError

MIXERS = ("mamba1", "mamba2")
CONV_MODES = ("standard", "none", "bypass")
CONV_KERNELS = ("learned", "ones")
POS_EMBEDS = (None, "learned", "sinusoidal")
BACKENDS = ("auto", "torch", "cuda")
FANS = ("in", "out")  # init_fan: which fan d1 of the N(0, d1^(-2 gamma)) init is


class ConfigError(UserError):
    """A configuration value is outside what the model supports."""


def check_init_fan(config: str, value: Any) -> None:
    """``init_fan`` of ``config`` (a class name, for the message) must be one of :data:`FANS`."""
    if value not in FANS:
        raise ConfigError(f"{config}.init_fan must be one of {FANS}, got {value!r}")


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"MambaConfig.{name} must be a positive integer, got {value!r}")


class SerialisableConfig:
    """Dict / JSON round trip shared by the model configs (dataclasses). ``FORMAT`` tags the
    ``config.json`` so loaders can tell the families apart."""

    FORMAT: ClassVar[str] = ""
    # Fields added after checkpoints were shipped: left out of the dict while they hold their
    # default, so older config.json files and run records stay as they were (and older
    # versions of the package can still load what this one writes).
    OMIT_IF_DEFAULT: ClassVar[tuple[str, ...]] = ("init_fan",)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for f in dataclasses.fields(self):
            if f.name in self.OMIT_IF_DEFAULT and getattr(self, f.name) == f.default:
                del d[f.name]
        d["format"] = self.FORMAT
        return d

    @classmethod
    def from_dict(cls, d: dict):
        d = {k: v for k, v in d.items() if k != "format"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} fields {unknown}; allowed: {sorted(known)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)


@dataclass
class MambaConfig(SerialisableConfig):
    """Architecture of a (Hooked)Mamba language model.

    Core sizes:
        d_model: width of the residual stream.
        n_layers: number of Mamba blocks.
        vocab_size: number of token ids (the embedding may be padded, see ``pad_vocab_size_multiple``).
        mixer: ``"mamba1"`` (selective scan, A per channel and state, S6) or ``"mamba2"`` (SSD:
            scalar A per head, conv over the concatenated x,B,C, gated RMSNorm).
        d_state: SSM state size N per channel (Mamba-1) or per head dim (Mamba-2).
        d_conv: causal depthwise conv kernel width (receptive field in tokens).
        expand: d_inner = expand * d_model.
        dt_rank: rank of the dt projection (Mamba-1); ``"auto"`` = ceil(d_model / 16).
        headdim, ngroups: Mamba-2 head size P and number of B/C groups.

    The paper's variants (arXiv 2509.17514):
        conv_mode: ``"standard"``; ``"none"`` removes the conv (u = SiLU(x)); ``"bypass"`` adds a
            residual path around it (u = SiLU(conv(x)) + x).
        conv_kernel: ``"learned"`` or ``"ones"`` (all-ones kernel, frozen; zero conv bias): the
            paper's symmetric-fusion intervention.
        pos_embed: ``None``, ``"learned"`` or ``"sinusoidal"`` positional encoding added to the
            token embedding (needs ``max_len``).
        init_gamma: if set, every weight matrix W in R^{d1 x d2} (d1 = fan-in: ``in_features`` of a
            Linear, the vocabulary of an embedding read as one-hot @ W) is drawn from
            N(0, (1 / d1**gamma)**2); conv, A, D and dt parameters keep the Mamba initialisation.
        init_fan: ``"in"`` (the paper's) or ``"out"``: d1 of ``init_gamma`` is the fan-out
            (``out_features`` of a Linear, ``d_model`` for the embedding), as in a public
            reproduction attempt that missed the paper's result.

    Numerics and compatibility with ``mamba_ssm`` / HF checkpoints: ``norm_eps``, ``rms_norm``,
    ``bias`` (in/out projections), ``conv_bias``, ``tie_embeddings``, ``pad_vocab_size_multiple``,
    ``dt_min``/``dt_max``/``dt_init_floor`` (dt initialisation, in units of the discretisation
    step), ``dt_limit`` (Mamba-2 clamp on dt), ``norm_before_gate`` (Mamba-2 gated norm order),
    ``chunk_size`` (Mamba-2 kernel chunk length, tokens), ``residual_in_fp32``.

    Pretrained families:
        bcdt_norm: Falcon-Mamba (``FalconMambaForCausalLM``): a weightless RMSNorm on the low-rank
            dt (before ``dt_proj``), on B and on C, each over its last dim (Mamba-1 only).
        bcdt_norm_eps: the epsilon of those three norms (Falcon-Mamba's ``mixer_rms_eps``).
    """

    d_model: int
    n_layers: int
    vocab_size: int
    mixer: str = "mamba1"
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: Union[int, str] = "auto"
    headdim: int = 64
    ngroups: int = 1
    init_gamma: Optional[float] = None
    init_fan: str = "in"
    conv_mode: str = "standard"
    conv_kernel: str = "learned"
    pos_embed: Optional[str] = None
    max_len: int = 2048
    norm_eps: float = 1e-5
    rms_norm: bool = True
    bias: bool = False
    conv_bias: bool = True
    tie_embeddings: bool = True
    pad_vocab_size_multiple: int = 1
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_limit: tuple = (0.0, float("inf"))
    norm_before_gate: bool = False
    chunk_size: int = 256
    residual_in_fp32: bool = True
    bcdt_norm: bool = False
    bcdt_norm_eps: float = 1e-6
    extra: dict = field(default_factory=dict)
    FORMAT: ClassVar[str] = "achilles-interp"
    OMIT_IF_DEFAULT: ClassVar[tuple[str, ...]] = ("init_fan", "bcdt_norm", "bcdt_norm_eps")

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "vocab_size", "d_state", "d_conv", "expand", "headdim",
                     "ngroups", "max_len", "pad_vocab_size_multiple", "chunk_size"):
            _check_positive_int(name, getattr(self, name))
        if self.mixer not in MIXERS:
            raise ConfigError(f"MambaConfig.mixer must be one of {MIXERS}, got {self.mixer!r}")
        if self.conv_mode not in CONV_MODES:
            raise ConfigError(f"MambaConfig.conv_mode must be one of {CONV_MODES}, got {self.conv_mode!r}")
        if self.conv_kernel not in CONV_KERNELS:
            raise ConfigError(
                f"MambaConfig.conv_kernel must be one of {CONV_KERNELS}, got {self.conv_kernel!r}")
        if self.pos_embed not in POS_EMBEDS:
            raise ConfigError(f"MambaConfig.pos_embed must be one of {POS_EMBEDS}, got {self.pos_embed!r}")
        if self.dt_rank != "auto":
            _check_positive_int("dt_rank", self.dt_rank)
        if self.init_gamma is not None and not (isinstance(self.init_gamma, (int, float)) and self.init_gamma > 0):
            raise ConfigError(f"MambaConfig.init_gamma must be None or a positive number, got {self.init_gamma!r}")
        check_init_fan("MambaConfig", self.init_fan)
        self.dt_limit = tuple(float(v) for v in self.dt_limit)
        if len(self.dt_limit) != 2 or not self.dt_limit[0] <= self.dt_limit[1]:
            raise ConfigError(f"MambaConfig.dt_limit must be (low, high) with low <= high, got {self.dt_limit!r}")
        if self.bcdt_norm and self.mixer != "mamba1":
            raise ConfigError("MambaConfig.bcdt_norm (Falcon-Mamba's norms on dt, B and C) needs mixer='mamba1'")
        if not (isinstance(self.bcdt_norm_eps, (int, float)) and self.bcdt_norm_eps > 0):
            raise ConfigError(f"MambaConfig.bcdt_norm_eps must be a positive number, got {self.bcdt_norm_eps!r}")
        if self.mixer == "mamba2":
            if self.d_inner % self.headdim:
                raise ConfigError(
                    f"mamba2 needs d_inner = expand*d_model = {self.d_inner} divisible by headdim "
                    f"{self.headdim}; pick headdim from the divisors of {self.d_inner}")
            if self.nheads % self.ngroups:
                raise ConfigError(
                    f"mamba2 needs nheads ({self.nheads}) divisible by ngroups ({self.ngroups})")

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def d_inner(self) -> int:
        """Width of the SSM branch: expand * d_model."""
        return self.expand * self.d_model

    @property
    def resolved_dt_rank(self) -> int:
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else int(self.dt_rank)

    @property
    def nheads(self) -> int:
        """Mamba-2 heads: d_inner / headdim."""
        return self.d_inner // self.headdim

    @property
    def conv_dim(self) -> int:
        """Channels the depthwise conv runs over: d_inner (Mamba-1) or d_inner + 2*ngroups*d_state."""
        if self.mixer == "mamba1":
            return self.d_inner
        return self.d_inner + 2 * self.ngroups * self.d_state

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return ((self.vocab_size + m - 1) // m) * m

    # ---- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict:
        d = super().to_dict()
        d["dt_limit"] = list(self.dt_limit)
        return d

