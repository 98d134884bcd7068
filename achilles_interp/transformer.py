"""`HookedTransformerBaseline`: the small causal Transformer the paper compares Mamba against.

Why not ``transformer_lens.HookedTransformer``? TransformerLens 4.x removed it (models are
built through its bridge to Hugging Face modules), so this baseline is a self-contained
pre-LayerNorm GPT built directly on :class:`transformer_lens.HookedRootModule` +
:class:`transformer_lens.hook_points.HookPoint`. It therefore gets ``run_with_hooks``,
``run_with_cache``, ``hook_dict`` etc. exactly like :class:`~achilles_interp.model.HookedMamba`,
and the hook names follow TransformerLens's ``HookedTransformer`` conventions so analysis code
written for either reads the same.

Architecture (per block; ``norm="pre"``, the default, a GPT-2 block)::

    resid_pre -> LN1 -> attention -> attn_out;  resid_mid = resid_pre + attn_out
    resid_mid -> LN2 -> MLP (act) -> mlp_out;   resid_post = resid_mid + mlp_out   (no MLP if d_mlp is None)

and with ``norm="post"`` (the original Transformer, as the paper's figure draws its baseline)::

    resid_mid = LN1(resid_pre + attention(resid_pre));  resid_post = LN2(resid_mid + MLP(resid_mid))

with no final LayerNorm (each block already ends in one). The paper's baseline (appendix,
inverse matching): d_model 128, one head, Q/K width 128 (``d_head``), V width 256
(``d_value``, "a 2x expansion when generating value vectors, mirroring Mamba"), FFN hidden 128
(``d_mlp``) with SiLU (``act="silu"``), post-LN.

Hook names and shapes (``b`` batch, ``p`` positions, ``h`` heads, ``d`` d_head)::

    hook_embed                       [b, p, d_model]   token embedding
    hook_pos_embed                   [b, p, d_model]   positional encoding added to it
    blocks.{i}.hook_resid_pre        [b, p, d_model]
    blocks.{i}.attn.hook_q/k         [b, p, h, d]      what enters attention (after qkv_conv if set)
    blocks.{i}.attn.hook_v           [b, p, h, d_v]
    blocks.{i}.attn.hook_attn_scores [b, h, p_q, p_k]  q.k / sqrt(d), -inf above the diagonal
    blocks.{i}.attn.hook_pattern     [b, h, p_q, p_k]  softmax of the scores (rows sum to 1)
    blocks.{i}.attn.hook_z           [b, p, h, d_v]    pattern-weighted values (d_v = d_value)
    blocks.{i}.hook_attn_out         [b, p, d_model]
    blocks.{i}.hook_resid_mid        [b, p, d_model]
    blocks.{i}.hook_mlp_out          [b, p, d_model]   (only when d_mlp is not None)
    blocks.{i}.hook_resid_post       [b, p, d_model]
    hook_resid_final                 [b, p, d_model]   what the unembed reads (final LayerNorm output;
                                                       the last block's output when norm="post")

``qkv_conv=k`` adds a causal depthwise convolution of width ``k`` (tokens) on each of Q, K and
V after their projections - the paper's "Transformer + conv" control, which gives attention the
same local token-fusion inductive bias as Mamba's conv.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.hook_points import HookPoint

from .config import ConfigError, SerialisableConfig, check_init_fan
from .initialisation import paper_std
from .inputs import validate_tokens
from .model import check_return_type, model_output, sinusoidal_table
from .reference_ops import causal_conv1d_ref

FORMAT = "achilles-interp-transformer"
TF_POS_EMBEDS = ("learned", "sinusoidal", None)
ACTIVATIONS = {"gelu": F.gelu, "silu": F.silu}
NORMS = ("pre", "post")


@dataclass
class TransformerConfig(SerialisableConfig):
    """Architecture of :class:`HookedTransformerBaseline`.

    Args:
        d_model: residual stream width (paper: 128).
        n_layers: number of blocks (paper: 2).
        n_heads: attention heads (paper: 1).
        d_mlp: MLP hidden width; ``"auto"`` = 4 * d_model; ``None`` = attention-only blocks.
        vocab_size: number of token ids.
        max_len: longest sequence (tokens) the positional encoding covers.
        pos_embed: ``"learned"`` (default), ``"sinusoidal"`` or None (no positional information:
            a causal Transformer can still infer some from the mask).
        init_gamma: if set, every Linear weight W (fan-in d1) and the embeddings (d1 = vocab /
            max_len) are drawn from N(0, (d1 ** -gamma) ** 2), the paper's initialisation; else
            GPT-2's N(0, 0.02 ** 2). Biases start at zero, LayerNorms at (1, 0).
        init_fan: ``"in"`` (the paper's) or ``"out"``: d1 of ``init_gamma`` is the fan-out
            (``out_features``; ``d_model`` for the embeddings), as in a public reproduction
            attempt that missed the paper's result.
        qkv_conv: None, or the width k (tokens) of a causal depthwise conv on Q, K and V.
        d_head: per-head query/key width; None = d_model // n_heads.
        d_value: per-head value width; None = d_head.
        act: MLP activation, ``"gelu"`` (default) or ``"silu"`` (the paper's).
        norm: ``"pre"`` (default: LayerNorm before each sublayer, plus a final LayerNorm) or
            ``"post"`` (LayerNorm after each residual addition, no final LayerNorm).
        ln_eps: LayerNorm epsilon.
    """

    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 1
    d_mlp: Union[int, str, None] = "auto"
    vocab_size: int = 256
    max_len: int = 2048
    pos_embed: Optional[str] = "learned"
    init_gamma: Optional[float] = None
    init_fan: str = "in"
    qkv_conv: Optional[int] = None
    d_head: Optional[int] = None
    ln_eps: float = 1e-5
    d_value: Optional[int] = None
    act: str = "gelu"
    norm: str = "pre"
    extra: dict = field(default_factory=dict)

    FORMAT: ClassVar[str] = FORMAT
    OMIT_IF_DEFAULT: ClassVar[tuple[str, ...]] = ("init_fan", "d_value", "act", "norm")

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "n_heads", "vocab_size", "max_len"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"TransformerConfig.{name} must be a positive integer, got {v!r}")
        if self.d_mlp == "auto":
            self.d_mlp = 4 * self.d_model
        if self.d_mlp is not None and (
            isinstance(self.d_mlp, bool) or not isinstance(self.d_mlp, int) or self.d_mlp <= 0
        ):
            raise ConfigError(
                f"TransformerConfig.d_mlp must be a positive int, 'auto' or None, got {self.d_mlp!r}"
            )
        if self.d_head is None:
            if self.d_model % self.n_heads:
                raise ConfigError(
                    f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                    "pass d_head explicitly"
                )
            self.d_head = self.d_model // self.n_heads
        if self.pos_embed not in TF_POS_EMBEDS:
            raise ConfigError(
                f"TransformerConfig.pos_embed must be one of {TF_POS_EMBEDS}, got {self.pos_embed!r}"
            )
        if self.qkv_conv is not None and (
            isinstance(self.qkv_conv, bool) or not isinstance(self.qkv_conv, int) or self.qkv_conv <= 0
        ):
            raise ConfigError(
                f"TransformerConfig.qkv_conv must be None or a positive int, got {self.qkv_conv!r}"
            )
        if self.init_gamma is not None and not (
            isinstance(self.init_gamma, (int, float)) and self.init_gamma > 0
        ):
            raise ConfigError(
                f"TransformerConfig.init_gamma must be None or a positive number, got {self.init_gamma!r}"
            )
        check_init_fan("TransformerConfig", self.init_fan)
        if self.d_value is not None and (
            isinstance(self.d_value, bool) or not isinstance(self.d_value, int) or self.d_value <= 0
        ):
            raise ConfigError(f"TransformerConfig.d_value must be None or a positive int, got {self.d_value!r}")
        if self.act not in ACTIVATIONS:
            raise ConfigError(f"TransformerConfig.act must be one of {tuple(ACTIVATIONS)}, got {self.act!r}")
        if self.norm not in NORMS:
            raise ConfigError(f"TransformerConfig.norm must be one of {NORMS}, got {self.norm!r}")

    @property
    def value_width(self) -> int:
        """Per-head value width: ``d_value``, or ``d_head`` when unset."""
        return self.d_head if self.d_value is None else self.d_value


class CausalDepthwiseConv(nn.Module):
    """Causal depthwise conv along time: ``[b, p, c] -> [b, p, c]``; out_t sees x_{t-k+1..t}."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels, 1, width))
        self.bias = nn.Parameter(torch.zeros(channels))
        with torch.no_grad():  # start as the identity (current token only) plus a little noise
            self.weight[:, 0, -1] = 1.0
            self.weight.add_(torch.randn_like(self.weight) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return causal_conv1d_ref(x, self.weight, self.bias)


class Attention(nn.Module):
    """Multi-head causal self-attention with hooks on q, k, v, scores, pattern and z."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        hd, hv = cfg.n_heads * cfg.d_head, cfg.n_heads * cfg.value_width
        self.W_Q = nn.Linear(cfg.d_model, hd)
        self.W_K = nn.Linear(cfg.d_model, hd)
        self.W_V = nn.Linear(cfg.d_model, hv)
        self.W_O = nn.Linear(hv, cfg.d_model)
        if cfg.qkv_conv is not None:
            self.conv_q = CausalDepthwiseConv(hd, cfg.qkv_conv)
            self.conv_k = CausalDepthwiseConv(hd, cfg.qkv_conv)
            self.conv_v = CausalDepthwiseConv(hv, cfg.qkv_conv)
        for name in ("hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z"):
            setattr(self, name, HookPoint())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[b, p, d_model]`` (normed residual) -> ``[b, p, d_model]``."""
        b, p, _ = x.shape
        h, d, dv = self.cfg.n_heads, self.cfg.d_head, self.cfg.value_width
        q, k, v = self.W_Q(x), self.W_K(x), self.W_V(x)
        if self.cfg.qkv_conv is not None:
            q, k, v = self.conv_q(q), self.conv_k(k), self.conv_v(v)
        q = self.hook_q(q.view(b, p, h, d))
        k = self.hook_k(k.view(b, p, h, d))
        v = self.hook_v(v.view(b, p, h, dv))
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
        mask = torch.ones(p, p, dtype=torch.bool, device=x.device).triu(1)
        scores = self.hook_attn_scores(scores.masked_fill(mask, float("-inf")))
        pattern = self.hook_pattern(torch.softmax(scores.float(), dim=-1).to(v.dtype))
        z = self.hook_z(torch.einsum("bhqk,bkhd->bqhd", pattern, v))
        return self.W_O(z.reshape(b, p, h * dv))


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.W_in = nn.Linear(cfg.d_model, cfg.d_mlp)
        self.W_out = nn.Linear(cfg.d_mlp, cfg.d_model)
        self.act = ACTIVATIONS[cfg.act]
        self.hook_post = HookPoint()  # [b, p, d_mlp] activation after the nonlinearity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.W_out(self.hook_post(self.act(self.W_in(x))))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.attn = Attention(cfg)
        self.mlp = MLP(cfg) if cfg.d_mlp is not None else None
        if self.mlp is not None:
            self.ln2 = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
            self.hook_mlp_out = HookPoint()
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_resid_post = HookPoint()

        self.post_norm = cfg.norm == "post"

    def forward(self, resid: torch.Tensor) -> torch.Tensor:
        resid = self.hook_resid_pre(resid)
        if self.post_norm:
            resid = self.hook_resid_mid(self.ln1(resid + self.hook_attn_out(self.attn(resid))))
            if self.mlp is not None:
                resid = self.ln2(resid + self.hook_mlp_out(self.mlp(resid)))
            return self.hook_resid_post(resid)
        resid = self.hook_resid_mid(resid + self.hook_attn_out(self.attn(self.ln1(resid))))
        if self.mlp is not None:
            resid = resid + self.hook_mlp_out(self.mlp(self.ln2(resid)))
        return self.hook_resid_post(resid)


class HookedTransformerBaseline(HookedRootModule):
    """Causal Transformer language model with TransformerLens hooks (see module docstring).

    ``forward(tokens [batch, pos], return_type="logits")`` returns logits ``[batch, pos, vocab]``
    (``"loss"``: mean next-token cross-entropy; ``"both"``: (logits, loss); None: nothing).
    """

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        if not isinstance(cfg, TransformerConfig):
            raise TypeError(f"HookedTransformerBaseline needs a TransformerConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.pos_embed == "learned":
            self.pos_embed = nn.Embedding(cfg.max_len, cfg.d_model)
        elif cfg.pos_embed == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_table(cfg.max_len, cfg.d_model), persistent=False)
        self.blocks = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        # post-LN blocks end in a LayerNorm already: no final one
        self.ln_final = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps) if cfg.norm == "pre" else nn.Identity()
        self.unembed = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.hook_embed = HookPoint()
        if cfg.pos_embed is not None:
            self.hook_pos_embed = HookPoint()
        self.hook_resid_final = HookPoint()
        self._init_weights()
        self.setup()

    def _init_weights(self) -> None:
        """GPT-2 N(0, 0.02^2), or the paper's N(0, d1^(-2 gamma)) if init_gamma (d1 = fan-in, or
        fan-out with ``init_fan="out"``; :mod:`achilles_interp.initialisation`)."""
        g = self.cfg.init_gamma
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    std = 0.02 if g is None else paper_std(module, g, self.cfg.init_fan)
                    module.weight.normal_(0.0, std)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    module.bias.zero_()

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def _check_tokens(self, tokens) -> torch.Tensor:
        cfg = self.cfg
        return validate_tokens(tokens, cfg.vocab_size, self.device, cfg.max_len if cfg.pos_embed is not None else None)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens ``[b, p]`` -> residual stream ``[b, p, d_model]`` (token + positional)."""
        resid = self.hook_embed(self.embed(tokens))
        if self.cfg.pos_embed is not None:
            L = tokens.shape[1]
            pos = self.pos_embed.weight[:L] if self.cfg.pos_embed == "learned" else self.pos_table[:L]
            resid = resid + self.hook_pos_embed(pos.to(resid.dtype).expand(tokens.shape[0], L, -1))
        return resid

    def forward(
        self, tokens: torch.Tensor, return_type: Optional[str] = "logits", stop_at_layer: Optional[int] = None
    ):
        """Run the model.

        Args:
            tokens: ``[batch, pos]`` token ids (1-D is treated as batch 1).
            return_type: ``"logits"`` ``[batch, pos, vocab]``, ``"loss"``, ``"both"`` or None.
            stop_at_layer: if given, run blocks ``[0, stop_at_layer)`` and return the residual
                stream ``[batch, pos, d_model]``.
        """
        check_return_type(return_type)
        tokens = self._check_tokens(tokens)
        resid = self.embed_tokens(tokens)
        blocks = self.blocks if stop_at_layer is None else self.blocks[:stop_at_layer]
        for block in blocks:
            resid = block(resid)
        if stop_at_layer is not None:
            return resid
        return model_output(self.unembed(self.hook_resid_final(self.ln_final(resid))), tokens, return_type)

    def run_with_cache(self, *model_args, return_cache_object: bool = True, names_filter=None, **kwargs):
        """As ``HookedRootModule.run_with_cache``, returning ``(logits, ActivationCache)``."""
        if isinstance(names_filter, str):
            names_filter = [names_filter]
        out, cache_dict = super().run_with_cache(*model_args, names_filter=names_filter, **kwargs)
        if return_cache_object:
            return out, ActivationCache(cache_dict, self)
        return out, cache_dict

    # ---- (de)serialisation ---------------------------------------------------------------
    def save_pretrained(self, path) -> None:
        """Write ``config.json`` (``"format": "achilles-interp-transformer"``) + ``model.safetensors``."""
        from .loading import save_pretrained

        save_pretrained(self, path)

    @classmethod
    def from_pretrained(
        cls, path, device=None, dtype: Optional[torch.dtype] = None
    ) -> "HookedTransformerBaseline":
        """Load a directory written by :meth:`save_pretrained` (strict: every key and shape must fit)."""
        from safetensors.torch import load_file

        from .loading import CheckpointError, check_state

        path = Path(path)
        cfg_file, weights = path / "config.json", path / "model.safetensors"
        if not path.is_dir():
            raise CheckpointError(f"checkpoint directory {path} does not exist or is not a directory")
        if not cfg_file.is_file() or not weights.is_file():
            raise CheckpointError(f"{path} needs config.json and model.safetensors")
        try:
            raw = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{cfg_file} is not valid JSON: {e}") from None
        if raw.get("format") != FORMAT:
            raise CheckpointError(
                f"{cfg_file} is not a Transformer baseline config "
                f"(format {raw.get('format')!r}, expected {FORMAT!r})"
            )
        try:
            cfg = TransformerConfig.from_dict(raw)
        except (ConfigError, TypeError) as e:
            raise CheckpointError(f"cannot build a Transformer from {cfg_file}: {e}") from None
        model = cls(cfg)
        state = load_file(str(weights))
        check_state(model, state, str(path))
        model.load_state_dict(state, strict=True)
        if dtype is not None:
            model = model.to(dtype)
        if device is not None:
            model = model.to(device)
        return model
