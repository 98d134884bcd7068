"""`HookedMamba`: a Mamba-1 / Mamba-2 language model whose every intermediate is a TransformerLens
HookPoint, with parameters named exactly as ``mamba_ssm``'s ``MambaLMHeadModel``.

Module tree (parameter names)                     Hook names (TransformerLens style)
    backbone.embedding                              hook_embed
    backbone.pos_embedding (pos_embed="learned")   hook_pos_embed
    backbone.layers.{i}.norm                        blocks.{i}.hook_resid_pre / hook_resid_post
    backbone.layers.{i}.mixer.*                     blocks.{i}.mixer.hook_*
    backbone.norm_f                                 hook_resid_final (normed final residual)
    lm_head
"""

from __future__ import annotations

import difflib
import math
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformer_lens import ActivationCache, HookedRootModule

from . import generation
from . import ops as ops_layer
from .config import MambaConfig
from .errors import UserError
from .generation import InferenceState
from .initialisation import paper_std
from .inputs import InputError, validate_tokens
from .mamba1 import HookedMamba1Mixer
from .mamba2 import HookedMamba2Mixer
from .mixer_base import HookPoint, rms_norm
from .ops import TORCH_OPS, TorchOps
from .reference_ops import StatePositions, accum_dtype, normalize_positions

RETURN_TYPES = ("logits", "loss", "both", None)


def check_return_type(return_type) -> None:
    """Raise :class:`InputError` unless ``return_type`` is one of :data:`RETURN_TYPES`."""
    if return_type not in RETURN_TYPES:
        raise InputError(f"return_type must be one of {RETURN_TYPES}, got {return_type!r}")


def model_output(logits: torch.Tensor, tokens: torch.Tensor, return_type: Optional[str]):
    """What ``forward(tokens, return_type)`` returns given its ``logits [batch, pos, vocab]``:
    the logits, the mean next-token cross-entropy (nats), both, or None."""
    if return_type == "logits":
        return logits
    if return_type is None:
        return None
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten())
    return loss if return_type == "loss" else (logits, loss)


class Norm(nn.Module):
    """RMSNorm (``rms_norm=True``, the Mamba default) or LayerNorm; ``weight`` [, ``bias``] [d]."""

    def __init__(self, d: int, eps: float, rms: bool):
        super().__init__()
        self.eps, self.rms = eps, rms
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = None if rms else nn.Parameter(torch.zeros(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[..., d]`` -> ``[..., d]`` in the weight's dtype: a residual stream kept in fp32
        (``residual_in_fp32``) is normed in fp32 and handed to a half-precision mixer in its dtype,
        as ``mamba_ssm``'s fused add + norm does."""
        if self.rms:
            return rms_norm(x, self.weight, self.eps).to(self.weight.dtype)
        f = accum_dtype(x)
        return F.layer_norm(x.to(f), x.shape[-1:], self.weight.to(f), self.bias.to(f), self.eps).to(self.weight.dtype)


class MambaBlock(nn.Module):
    """Pre-norm residual block: resid_post = resid_pre + mixer(norm(resid_pre))."""

    def __init__(self, cfg: MambaConfig, layer_idx: int):
        super().__init__()
        self.norm = Norm(cfg.d_model, cfg.norm_eps, cfg.rms_norm)
        mixer_cls = HookedMamba1Mixer if cfg.mixer == "mamba1" else HookedMamba2Mixer
        self.mixer = mixer_cls(cfg, layer_idx)
        self.hook_resid_pre = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, resid: torch.Tensor, state_positions: StatePositions = None,
                ops: TorchOps = TORCH_OPS, cache=None) -> torch.Tensor:
        """resid ``[batch, pos, d_model]`` -> ``[batch, pos, d_model]``; ``cache``: this layer's
        :class:`~achilles_interp.generation.LayerState` when generating."""
        resid = self.hook_resid_pre(resid)
        out = self.mixer(self.norm(resid), state_positions, ops, cache)
        return self.hook_resid_post(resid + out.to(resid.dtype))


def sinusoidal_table(max_len: int, d: int) -> torch.Tensor:
    """``[max_len, d]`` fixed sin/cos positional encoding (Vaswani et al., 2017)."""
    pos = torch.arange(max_len, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(max_len, d)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : d // 2]
    return table


class MambaBackbone(nn.Module):
    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.embedding = nn.Embedding(cfg.padded_vocab_size, cfg.d_model)
        if cfg.pos_embed == "learned":
            self.pos_embedding = nn.Embedding(cfg.max_len, cfg.d_model)
        elif cfg.pos_embed == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_table(cfg.max_len, cfg.d_model), persistent=False)
        self.layers = nn.ModuleList([MambaBlock(cfg, i) for i in range(cfg.n_layers)])
        self.norm_f = Norm(cfg.d_model, cfg.norm_eps, cfg.rms_norm)


class HookedMamba(HookedRootModule):
    """Mamba language model with TransformerLens hooks on every intermediate.

    Args:
        cfg: a :class:`MambaConfig`.
        backend: ``"auto"`` (CUDA kernels when they import and the model is on a GPU, else the
            PyTorch reference), ``"torch"`` or ``"cuda"``.

    ``forward(tokens [batch, pos], return_type="logits", ssm_state_positions=None)`` returns
    logits ``[batch, pos, vocab]``. ``ssm_state_positions`` (None, ``"all"`` or a list of
    positions) makes every layer's ``hook_ssm_state`` fire with the states at those positions.

    Text (TransformerLens-style, with ``model.tokenizer``): ``forward`` / ``run_with_cache`` /
    ``run_with_hooks`` take strings too; ``to_tokens``, ``to_string``, ``to_str_tokens``,
    ``to_single_token``, ``set_tokenizer``; ``generate`` (:mod:`achilles_interp.generation`).
    """

    def __init__(self, cfg: MambaConfig, backend: str = "auto"):
        super().__init__()
        if not isinstance(cfg, MambaConfig):
            raise TypeError(f"HookedMamba needs a MambaConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.backend = backend
        self.backbone = MambaBackbone(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.padded_vocab_size, bias=False)
        self.hook_embed = HookPoint()
        if cfg.pos_embed is not None:
            self.hook_pos_embed = HookPoint()
        self.hook_resid_final = HookPoint()
        self.tokenizer = None
        self.tokenizer_hint: Optional[str] = None
        self.default_prepend_bos = False
        self._init_weights()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight
        self.setup()

    # ---- construction --------------------------------------------------------------------
    def _init_weights(self) -> None:
        """mamba_ssm's MambaLMHeadModel init, or the paper's N(0, d1^(-2 gamma)) if init_gamma
        (d1 = fan-in, or fan-out with ``init_fan="out"``; :mod:`achilles_interp.initialisation`)."""
        cfg = self.cfg
        with torch.no_grad():
            nn.init.normal_(self.backbone.embedding.weight, std=0.02)
            for name, p in self.named_parameters():
                if name.endswith("out_proj.weight"):
                    # GPT-2 style rescale of the residual-writing projection by 1/sqrt(n_layers)
                    nn.init.kaiming_uniform_(p, a=math.sqrt(5))
                    p /= math.sqrt(cfg.n_layers)
                elif name.endswith(".bias") and ("in_proj" in name or "out_proj" in name):
                    p.zero_()
            if cfg.init_gamma is not None:
                for module in self.modules():
                    if module is self.lm_head and cfg.tie_embeddings:
                        continue
                    if isinstance(module, (nn.Linear, nn.Embedding)):
                        module.weight.normal_(0.0, paper_std(module, cfg.init_gamma, cfg.init_fan))

    def setup(self) -> None:
        """Name hook points TransformerLens-style (``blocks.{i}...``) while parameters keep the
        ``mamba_ssm`` names (``backbone.layers.{i}...``)."""
        super().setup()
        renamed_hooks, renamed_mods = {}, dict(self.mod_dict)
        for name, hp in self.hook_dict.items():
            alias = name.replace("backbone.layers.", "blocks.")
            hp.name = alias
            renamed_hooks[alias] = hp
            renamed_mods[alias] = hp
        self.hook_dict = renamed_hooks
        self.mod_dict = renamed_mods

    @property
    def blocks(self) -> nn.ModuleList:
        """The Mamba blocks (an alias of ``backbone.layers``, as ``model.blocks`` in TransformerLens)."""
        return self.backbone.layers

    # ---- backend -------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        self._backend = ops_layer.check_backend(value)

    def resolved_backend(self) -> str:
        """The backend this forward will use: "cuda" or "torch"."""
        return ops_layer.resolve_backend(self._backend, self.backbone.embedding.weight.device)

    # ---- forward -------------------------------------------------------------------------
    def _check_tokens(self, tokens, offset: int = 0) -> torch.Tensor:
        cfg = self.cfg
        return validate_tokens(tokens, cfg.padded_vocab_size, self.backbone.embedding.weight.device,
                               cfg.max_len - offset if cfg.pos_embed is not None else None)

    def embed(self, tokens: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """tokens ``[batch, pos]`` -> residual stream ``[batch, pos, d_model]`` (fp32 if residual_in_fp32);
        ``offset``: the position of the first token (generation)."""
        resid = self.hook_embed(self.backbone.embedding(tokens))
        if self.cfg.pos_embed is not None:
            L = tokens.shape[1]
            if self.cfg.pos_embed == "learned":
                pos = self.backbone.pos_embedding.weight[offset : offset + L]
            else:
                pos = self.backbone.pos_table[offset : offset + L].to(resid.dtype)
            resid = resid + self.hook_pos_embed(pos.expand(tokens.shape[0], L, -1))
        if self.cfg.residual_in_fp32 and resid.dtype in (torch.float16, torch.bfloat16):
            resid = resid.float()
        return resid

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        """Final norm and ``lm_head``: residual ``[batch, pos, d_model]`` -> logits ``[batch, pos, vocab]``."""
        final = self.hook_resid_final(self.backbone.norm_f(resid).to(self.lm_head.weight.dtype))
        return self.lm_head(final)[..., : self.cfg.vocab_size]

    def forward(
        self,
        tokens: Union[torch.Tensor, str, list],
        return_type: Optional[str] = "logits",
        ssm_state_positions: StatePositions = None,
        stop_at_layer: Optional[int] = None,
        inference_state: Optional[InferenceState] = None,
        prepend_bos: Optional[bool] = None,
    ) -> Union[torch.Tensor, tuple, None]:
        """Run the model.

        Args:
            tokens: ``[batch, pos]`` token ids (a 1-D tensor is treated as batch 1), or a string /
                list of strings (tokenised with ``model.to_tokens(..., prepend_bos)``).
            return_type: ``"logits"`` ``[batch, pos, vocab]``, ``"loss"`` (mean next-token
                cross-entropy), ``"both"`` (logits, loss) or None.
            ssm_state_positions: None, ``"all"`` or a list of distinct integer positions (negatives
                count from the end): fire ``hook_ssm_state`` with ``[batch, P, ...state]``, the states
                at those positions in the order given, in every layer.
            stop_at_layer: if given, run only blocks ``[0, stop_at_layer)`` and return the
                residual stream ``[batch, pos, d_model]``.
            inference_state: an :class:`~achilles_interp.generation.InferenceState`: empty, the
                tokens are a prompt (full forward) and the state after them is kept in it; filled,
                the tokens continue it, one recurrent step per token. The logits are those of the
                full forward over everything seen, at these tokens' positions.
        """
        check_return_type(return_type)
        if isinstance(tokens, str) or (isinstance(tokens, list) and tokens and all(isinstance(t, str) for t in tokens)):
            tokens = self.to_tokens(tokens, prepend_bos=prepend_bos)
        offset = 0 if inference_state is None else inference_state.position
        tokens = self._check_tokens(tokens, offset)
        ops = ops_layer.get_ops(self.resolved_backend())
        if inference_state is not None:
            if ssm_state_positions is not None or stop_at_layer is not None:
                raise InputError("inference_state cannot be combined with ssm_state_positions or stop_at_layer")
            return model_output(self._forward_recurrent(tokens, inference_state, ops), tokens, return_type)
        positions = normalize_positions(ssm_state_positions, tokens.shape[1], tokens.device)
        resid = self.embed(tokens)
        layers = self.backbone.layers if stop_at_layer is None else self.backbone.layers[:stop_at_layer]
        for block in layers:
            resid = block(resid, positions, ops)
        if stop_at_layer is not None:
            return resid
        return model_output(self.unembed(resid), tokens, return_type)

    def _forward_recurrent(self, tokens: torch.Tensor, state: InferenceState, ops: TorchOps) -> torch.Tensor:
        """Logits of ``tokens`` continuing ``state``: the prompt as one full forward, later tokens
        one recurrent step each."""
        prompt = state.begin(self.cfg.n_layers, tokens.shape[0])
        logits = []
        for chunk in ([tokens] if prompt else tokens.split(1, dim=1)):
            resid = self.embed(chunk, offset=state.position)
            for block, cache in zip(self.backbone.layers, state.layers):
                resid = block(resid, None, ops, cache)
            logits.append(self.unembed(resid))
            state.position += chunk.shape[1]
        return torch.cat(logits, dim=1)

    # ---- text ----------------------------------------------------------------------------
    def set_tokenizer(self, tokenizer, default_prepend_bos: Optional[bool] = None) -> None:
        """Use ``tokenizer`` (a Hugging Face tokenizer) for text in and out of this model."""
        if tokenizer is not None and not callable(getattr(tokenizer, "encode", None)):
            raise UserError(f"set_tokenizer needs a Hugging Face tokenizer, got {type(tokenizer).__name__}")
        self.tokenizer = tokenizer
        if default_prepend_bos is not None:
            self.default_prepend_bos = bool(default_prepend_bos)

    def to_tokens(self, input, prepend_bos: Optional[bool] = None, padding_side: str = "right",
                  move_to_device: bool = True) -> torch.Tensor:
        """Text -> ``LongTensor [batch, pos]`` (see :func:`achilles_interp.generation.to_tokens`)."""
        return generation.to_tokens(self, input, prepend_bos, padding_side, move_to_device)

    def to_string(self, tokens):
        """Token ids ``[pos]`` -> str, ``[batch, pos]`` -> list of str."""
        return generation.to_string(self, tokens)

    def to_str_tokens(self, input, prepend_bos: Optional[bool] = None) -> list:
        """Text or ids -> one string per token."""
        return generation.to_str_tokens(self, input, prepend_bos)

    def to_single_token(self, string: str) -> int:
        """The id of a string that is exactly one token."""
        return generation.to_single_token(self, string)

    def generate(self, input="", max_new_tokens: int = 10, do_sample: bool = False, temperature: float = 1.0,
                 top_k: Optional[int] = None, top_p: Optional[float] = None, seed: Optional[int] = None,
                 stop_at_eos: bool = True, eos_token_id: Optional[int] = None, prepend_bos: Optional[bool] = None,
                 return_type: str = "input", verbose: bool = False):
        """Greedy (default) or sampled continuation on the recurrent path; see
        :func:`achilles_interp.generation.generate`."""
        return generation.generate(self, input, max_new_tokens, do_sample, temperature, top_k, top_p, seed,
                                   stop_at_eos, eos_token_id, prepend_bos, return_type, verbose)

    # ---- TransformerLens conveniences -----------------------------------------------------
    def hook_point(self, name: str) -> HookPoint:
        """The hook point ``name`` (``blocks.{i}.…`` or its module path ``backbone.layers.{i}.…``);
        a :class:`UserError` naming the closest hook names if there is none."""
        hp = self.mod_dict.get(name) if isinstance(name, str) else None
        if isinstance(hp, HookPoint):
            return hp
        raise UserError(unknown_hook_message(name, list(self.hook_dict)))

    def add_hook(self, name, hook, *args, **kwargs) -> None:
        """As ``HookedRootModule.add_hook``; an unknown hook name is a :class:`UserError`."""
        super().add_hook(self.hook_point(name).name if isinstance(name, str) else name, hook, *args, **kwargs)

    def _enable_hook_with_name(self, name: str, hook, dir) -> None:
        # run_with_hooks / hooks(): check the name before TransformerLens looks it up
        super()._enable_hook_with_name(self.hook_point(name).name, hook, dir)

    def run_with_cache(self, *model_args, return_cache_object: bool = True, names_filter=None, **kwargs):
        """As ``HookedRootModule.run_with_cache``, returning an ``ActivationCache``.

        Per-timestep SSM states are large, so ``hook_ssm_state`` is cached only when asked for:
        pass ``ssm_state_positions="all"`` (or a list), or name it in ``names_filter``. A
        ``names_filter`` string or list naming no hook is a :class:`UserError` (a callable is
        used as given).
        """
        wants_states = kwargs.get("ssm_state_positions") is not None
        if names_filter is None and not wants_states:
            names_filter = _not_state_hook
        elif isinstance(names_filter, str):
            names_filter = [self.hook_point(names_filter).name]
        elif isinstance(names_filter, (list, tuple)):
            names_filter = [self.hook_point(n).name for n in names_filter]
        out, cache_dict = super().run_with_cache(*model_args, names_filter=names_filter, **kwargs)
        if return_cache_object:
            return out, ActivationCache(cache_dict, self)
        return out, cache_dict

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As ``nn.Module.load_state_dict``; a tied ``lm_head.weight`` may be absent."""
        if self.cfg.tie_embeddings and "lm_head.weight" not in state_dict:
            state_dict = dict(state_dict)
            state_dict["lm_head.weight"] = state_dict.get("backbone.embedding.weight")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @classmethod
    def from_pretrained(cls, name_or_path, backend: str = "auto", device=None, dtype=None, *,
                        revision: Optional[str] = None, cache_dir=None, tokenizer="auto",
                        local_files_only: Optional[bool] = None, **overrides) -> "HookedMamba":
        """Load a checkpoint: a local directory, or a Hugging Face Hub repo id resolved through
        ``huggingface_hub`` (its cache, ``HF_HUB_OFFLINE``, ``revision``; see :mod:`achilles_interp.hub`).

        Formats: achilles-interp, ``mamba_ssm`` (``state-spaces/mamba-*``, ``state-spaces/mamba2-*``),
        Hugging Face ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` / ``FalconMambaForCausalLM``, and
        Mistral's ``params.json`` + ``consolidated.safetensors`` (Mamba-Codestral). ``tokenizer``:
        ``"auto"`` (the checkpoint's own, loaded offline from its folder, if it has one), a tokenizer,
        a repo id / folder to load one from, or None. ``dtype`` (a ``torch.dtype`` or its name) and
        ``device`` are applied after loading; ``overrides`` replace config fields.
        """
        from .loading import load_pretrained

        return load_pretrained(name_or_path, backend=backend, device=device, dtype=dtype, revision=revision,
                               cache_dir=cache_dir, tokenizer=tokenizer, local_files_only=local_files_only,
                               **overrides)

    def save_pretrained(self, path) -> None:
        """Write ``config.json`` + ``model.safetensors`` (achilles-interp format) into ``path``."""
        from .loading import save_pretrained

        save_pretrained(self, path)


def _not_state_hook(name: str) -> bool:
    return not name.endswith("hook_ssm_state")


def unknown_hook_message(name, names: list) -> str:
    """One line: ``name`` is no hook, and the closest of ``names`` (difflib)."""
    key = name.replace("backbone.layers.", "blocks.") if isinstance(name, str) else str(name)
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"hook names look like {', '.join(names[:3])}, ..."
    return f"no hook named {name!r} in this model: {hint} (model.hook_dict lists all {len(names)})"
