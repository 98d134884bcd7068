"""Load and save HookedMamba checkpoints: local directories, or Hugging Face Hub repo ids resolved
to a folder of the Hub cache by :mod:`achilles_interp.hub`.

The on-disk formats understood (:data:`SUPPORTED` is the one-line list errors print):

* **achilles-interp** (what :func:`save_pretrained` writes): ``config.json`` holding a
  ``MambaConfig`` (``"format": "achilles-interp"``) + ``model.safetensors``.
* **mamba_ssm** (``state-spaces/mamba-*`` checkpoints): ``config.json`` with ``d_model``,
  ``n_layer``, ``ssm_cfg`` ... + ``pytorch_model.bin``; parameter names already match ours.
* **Hugging Face** ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` / ``FalconMambaForCausalLM``:
  ``config.json`` with ``model_type`` ``"mamba"`` / ``"mamba2"`` / ``"falcon_mamba"`` +
  ``model.safetensors`` (or sharded, or ``pytorch_model.bin``); ``backbone.embeddings`` is renamed
  to ``backbone.embedding``. Falcon-Mamba sets ``MambaConfig.bcdt_norm`` (its weightless norms on
  dt, B and C); Mamba-Codestral's HF form is a ``Mamba2ForCausalLM`` (8 groups, untied head).
* **Mistral** (``mistral_inference``, Mamba-Codestral's original form): ``params.json`` (``dim``,
  ``n_layers``, ``n_groups``, ...; a ``mamba_ssm`` Mamba-2 with its defaults) +
  ``consolidated.safetensors`` in ``mamba_ssm``'s names.

A local directory is never looked up online; a Hub repo id goes through ``huggingface_hub``, offline
when ``HF_HUB_OFFLINE`` is set (see :mod:`achilles_interp.hub`).
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any, Optional

import torch

from . import hub
from .config import ConfigError, MambaConfig
from .errors import UserError
from .outputs import atomic_write

SUPPORTED = ("achilles-interp; mamba_ssm (state-spaces/mamba-*, state-spaces/mamba2-*); Hugging Face "
             "MambaForCausalLM (state-spaces/mamba-*-hf), Mamba2ForCausalLM (incl. Mamba-Codestral), "
             "FalconMambaForCausalLM; Mistral params.json (Mamba-Codestral)")
HF_MODEL_TYPES = {"mamba": "hf-mamba", "mamba2": "hf-mamba2", "falcon_mamba": "hf-falcon_mamba"}
# The tokenizer state-spaces' mamba_ssm checkpoints were trained with (their repos hold none).
STATE_SPACES_TOKENIZER = "EleutherAI/gpt-neox-20b"
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32, "float64": torch.float64,
           "fp64": torch.float64, "double": torch.float64, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
# Parameters mamba_ssm keeps in fp32 in a half-precision model (its modules create them without the
# factory dtype); loading in bf16/fp16 keeps them so too.
FP32_PARAMS = ("A_log", "D", "dt_bias")


class CheckpointError(UserError):
    """A checkpoint directory is missing, malformed, or does not fit the model."""


# ---------------------------------------------------------------------------------------------
# config translation
# ---------------------------------------------------------------------------------------------
def detect_format(raw: dict, source: str = "config.json") -> str:
    """``"achilles-interp"``, ``"mamba_ssm"``, ``"mistral"`` or ``"hf-<model_type>"``; else a one-line
    :class:`CheckpointError` naming the architecture found and the supported ones."""
    if raw.get("format") == "achilles-interp":
        return "achilles-interp"
    if {"dim", "n_layers", "n_groups"} <= set(raw) and raw.get("model_type", "mamba") == "mamba":
        return "mistral"
    if raw.get("model_type") in HF_MODEL_TYPES:
        return HF_MODEL_TYPES[raw["model_type"]]
    if "d_model" in raw and "n_layer" in raw:
        return "mamba_ssm"
    arch = raw.get("architectures") or raw.get("model_type")
    if arch:
        arch = ", ".join(arch) if isinstance(arch, list) else str(arch)
        raise CheckpointError(f"unsupported architecture {arch} (model_type {raw.get('model_type')!r}) in {source}; "
                              f"supported: {SUPPORTED}")
    raise CheckpointError(f"{source} is in no known format (found keys {sorted(raw)[:12]}); supported: {SUPPORTED}")


def config_from_mamba_ssm(raw: dict, **overrides) -> MambaConfig:
    ssm = dict(raw.get("ssm_cfg") or {})
    if raw.get("d_intermediate", 0):
        raise CheckpointError(f"unsupported mamba_ssm config: d_intermediate={raw['d_intermediate']} "
                              "(MLP layers between mixers); only pure-Mamba models (0) are supported")
    if raw.get("attn_layer_idx"):
        raise CheckpointError(f"unsupported mamba_ssm config: attention layers at {raw['attn_layer_idx']} "
                              "(hybrid models); only pure-Mamba models are supported")
    layer = ssm.pop("layer", "Mamba1")
    if layer not in ("Mamba1", "Mamba2"):
        raise CheckpointError(f"unsupported mamba_ssm ssm_cfg.layer={layer!r}; allowed: 'Mamba1', 'Mamba2'")
    mixer = "mamba2" if layer == "Mamba2" else "mamba1"
    kw: dict[str, Any] = dict(
        d_model=raw["d_model"], n_layers=raw["n_layer"], vocab_size=raw["vocab_size"], mixer=mixer,
        rms_norm=raw.get("rms_norm", True), residual_in_fp32=raw.get("residual_in_fp32", True),
        pad_vocab_size_multiple=raw.get("pad_vocab_size_multiple", 8),
        tie_embeddings=raw.get("tie_embeddings", True), norm_eps=raw.get("norm_epsilon", 1e-5),
        d_state=ssm.pop("d_state", 128 if mixer == "mamba2" else 16),
    )
    renames = {"d_conv": "d_conv", "expand": "expand", "dt_rank": "dt_rank", "headdim": "headdim",
               "ngroups": "ngroups", "bias": "bias", "conv_bias": "conv_bias", "dt_min": "dt_min",
               "dt_max": "dt_max", "dt_init_floor": "dt_init_floor", "chunk_size": "chunk_size",
               "norm_before_gate": "norm_before_gate", "dt_limit": "dt_limit"}
    for src, dst in renames.items():
        if src in ssm:
            kw[dst] = ssm.pop(src)
    if ssm.get("rmsnorm", True) is False:
        raise CheckpointError("unsupported mamba_ssm Mamba2 config: rmsnorm=False")
    if ssm.get("d_ssm") not in (None, kw["d_model"] * kw.get("expand", 2)):
        raise CheckpointError(f"unsupported mamba_ssm Mamba2 config: d_ssm={ssm['d_ssm']} (partial SSM)")
    return MambaConfig(**{**kw, **overrides})


def config_from_mistral(raw: dict, **overrides) -> MambaConfig:
    """Mistral's ``params.json`` (``MambaArgs``): a ``mamba_ssm`` Mamba-2 with ``ngroups = n_groups``."""
    ssm_like = {"d_model": raw["dim"], "n_layer": raw["n_layers"], "vocab_size": raw["vocab_size"],
                "ssm_cfg": {"layer": "Mamba2", "ngroups": raw["n_groups"]},
                "rms_norm": raw.get("rms_norm", True), "residual_in_fp32": raw.get("residual_in_fp32", True),
                "pad_vocab_size_multiple": raw.get("pad_vocab_size_multiple", 1),
                "tie_embeddings": raw.get("tie_embeddings", False)}
    return config_from_mamba_ssm(ssm_like, **overrides)


def config_from_hf(raw: dict, **overrides) -> MambaConfig:
    mixer = "mamba2" if raw["model_type"] == "mamba2" else "mamba1"
    d_model = raw["hidden_size"]
    expand = raw.get("expand", 2)
    kw: dict[str, Any] = dict(
        d_model=d_model, n_layers=raw["num_hidden_layers"], vocab_size=raw["vocab_size"], mixer=mixer,
        d_state=raw.get("state_size", 128 if mixer == "mamba2" else 16), d_conv=raw.get("conv_kernel", 4),
        expand=expand, bias=raw.get("use_bias", False), conv_bias=raw.get("use_conv_bias", True),
        norm_eps=raw.get("layer_norm_epsilon", 1e-5), residual_in_fp32=raw.get("residual_in_fp32", True),
        tie_embeddings=raw.get("tie_word_embeddings", True),
    )
    if raw.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"unsupported hidden_act={raw['hidden_act']!r}; Mamba uses 'silu'")
    if mixer == "mamba1":
        rank = raw.get("time_step_rank", "auto")
        kw["dt_rank"] = rank if rank == "auto" else int(rank)
        for src, dst in (("time_step_min", "dt_min"), ("time_step_max", "dt_max"),
                         ("time_step_floor", "dt_init_floor")):
            if src in raw:
                kw[dst] = raw[src]
        if raw["model_type"] == "falcon_mamba":
            kw.update(bcdt_norm=True, bcdt_norm_eps=raw.get("mixer_rms_eps", 1e-6))
    else:
        heads, headdim = raw.get("num_heads"), raw.get("head_dim", 64)
        if heads is not None and heads * headdim != expand * d_model:
            raise CheckpointError(f"unsupported Mamba2 config: num_heads*head_dim = {heads}*{headdim} "
                                  f"!= expand*hidden_size = {expand * d_model}")
        kw.update(headdim=headdim, ngroups=raw.get("n_groups", 1), chunk_size=raw.get("chunk_size", 256),
                  norm_before_gate=raw.get("norm_before_gate", False))
        if raw.get("rms_norm", True) is False:
            raise CheckpointError("unsupported Mamba2 config: rms_norm=False")
        limit = raw.get("time_step_limit", (0.0, float("inf")))
        kw["dt_limit"] = tuple(_json_float(v) for v in limit)
    return MambaConfig(**{**kw, **overrides})


def _json_float(v: Any) -> float:
    """transformers >= 5 writes non-finite floats as {"__float__": "Infinity"}."""
    if isinstance(v, dict) and "__float__" in v:
        return float(v["__float__"])
    return float(v)


def read_config(path: Path, **overrides) -> tuple[MambaConfig, str]:
    """The model config of a checkpoint folder and its format; ``overrides`` replace fields before the
    config is checked (so they may also make a config this package would refuse fit, e.g. sizes)."""
    cfg_file = path / "config.json"
    if not cfg_file.is_file() and (path / "params.json").is_file():
        cfg_file = path / "params.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"no config.json in {path}; a checkpoint directory holds config.json "
                              "and model.safetensors (or pytorch_model.bin)")
    try:
        raw = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{cfg_file} is not a JSON object")
    fmt = detect_format(raw, str(cfg_file))
    try:
        if fmt == "achilles-interp":
            return MambaConfig.from_dict({**raw, **overrides}), fmt
        if fmt == "mamba_ssm":
            return config_from_mamba_ssm(raw, **overrides), fmt
        if fmt == "mistral":
            return config_from_mistral(raw, **overrides), fmt
        return config_from_hf(raw, **overrides), fmt
    except (ConfigError, KeyError, TypeError) as e:
        what = f"missing field {e}" if isinstance(e, KeyError) else str(e)
        if overrides and not isinstance(e, KeyError):
            what += f" (overrides {overrides})"
        raise CheckpointError(f"cannot build a model from {cfg_file} ({fmt} format): {what}") from None


# ---------------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------------
def read_weights(path: Path, fmt: str = "") -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint, from safetensors (single or sharded) or pytorch_model.bin
    (Mistral's ``consolidated.safetensors`` for that format).

    A truncated or corrupt weights file raises :class:`CheckpointError` naming the file."""
    if fmt == "mistral":
        if not (path / "consolidated.safetensors").is_file():
            raise CheckpointError(f"no weights in {path}: a params.json checkpoint holds consolidated.safetensors")
        return _read_file(path / "consolidated.safetensors")
    single = path / "model.safetensors"
    index = path / "model.safetensors.index.json"
    binary = path / "pytorch_model.bin"
    if single.is_file():
        return _read_file(single)
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index} is not a safetensors index (a JSON object with a "
                                  f"'weight_map'): {type(e).__name__}: {e}") from None
        out: dict[str, torch.Tensor] = {}
        for shard in shards:
            out.update(_read_file(path / shard))
        return out
    if binary.is_file():
        return _read_file(binary)
    raise CheckpointError(f"no weights in {path}: expected model.safetensors, "
                          "model.safetensors.index.json (+ shards) or pytorch_model.bin")


def _read_file(file: Path) -> dict[str, torch.Tensor]:
    """One weights file (safetensors, or a torch.save'd state dict); CheckpointError if unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        if file.suffix == ".safetensors":
            return load_file(str(file))
        return torch.load(str(file), map_location="cpu", weights_only=True)
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"cannot read weights from {file} (truncated or corrupt?): {reason}") from None


def to_our_names(state: dict[str, torch.Tensor], fmt: str) -> dict[str, torch.Tensor]:
    """Checkpoint names -> ours (``mamba_ssm``'s). HF: ``backbone.embeddings`` -> ``backbone.embedding``
    (Falcon-Mamba's weightless-norm buffers, if saved, are dropped); Mistral: a ``model.`` prefix, if
    every key has one, is dropped."""
    if fmt.startswith("hf-"):
        return {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in state.items()
                if not (fmt == "hf-falcon_mamba" and k.endswith(("dt_layernorm.weight", "b_layernorm.weight",
                                                                  "c_layernorm.weight")))}
    if fmt == "mistral" and state and all(k.startswith("model.") for k in state):
        return {k[len("model."):]: v for k, v in state.items()}
    return dict(state)


def _pad_vocab(state: dict[str, torch.Tensor], rows: int) -> None:
    """HF checkpoints store the unpadded vocabulary; pad embedding / lm_head rows with zeros."""
    for key in ("backbone.embedding.weight", "lm_head.weight"):
        w = state.get(key)
        if w is not None and w.shape[0] < rows:
            state[key] = torch.cat([w, w.new_zeros(rows - w.shape[0], *w.shape[1:])])


def check_state(model, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointError listing missing / unexpected keys and shape mismatches."""
    expected = model.state_dict()
    optional = {"lm_head.weight"} if getattr(model.cfg, "tie_embeddings", False) else set()
    missing = sorted(set(expected) - set(state) - optional)
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {unexpected[:8]}"
                        f"{' ...' if len(unexpected) > 8 else ''}")
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}): {shapes[:6]}")
    if problems:
        raise CheckpointError(f"weights in {source} do not fit the model built from its config: "
                              + "; ".join(problems))


def resolve_dtype(dtype) -> Optional[torch.dtype]:
    """None, a ``torch.dtype``, or its name (``"bfloat16"``, ``"bf16"``, ``"float16"``, ...)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.lower().removeprefix("torch.")]
    raise CheckpointError(f"dtype must be a torch.dtype or one of {sorted(_DTYPES)}, got {dtype!r}")


def to_dtype(model, dtype: torch.dtype):
    """``model.to(dtype)``; in half precision ``A_log``, ``D`` and ``dt_bias`` stay fp32, as
    ``mamba_ssm`` keeps them (their full-precision values, not a round trip through the half type)."""
    if dtype not in (torch.bfloat16, torch.float16):
        return model.to(dtype)
    keep = {n: p.detach().float().clone() for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] in FP32_PARAMS}
    model = model.to(dtype)
    params = dict(model.named_parameters())
    for name, value in keep.items():
        params[name].data = value.to(params[name].device)
    return model


def load_pretrained(name_or_path, backend: str = "auto", device=None, dtype=None, revision: Optional[str] = None,
                    cache_dir=None, tokenizer="auto", local_files_only: Optional[bool] = None, **overrides):
    """Build a HookedMamba from a checkpoint directory or a Hub repo id (see module docstring and
    :meth:`HookedMamba.from_pretrained`).

    ``overrides`` replace config fields (e.g. ``conv_mode``), useful for ablated variants;
    the weights must still fit.
    """
    from .model import HookedMamba

    dtype = resolve_dtype(dtype)
    try:
        path, repo_id = hub.resolve(name_or_path, revision, cache_dir, local_files_only)
    except hub.HubError as e:
        raise CheckpointError(str(e)) from None
    if not path.exists():
        raise CheckpointError(f"checkpoint directory {path} does not exist (a local directory, or a Hub repo id "
                              "such as state-spaces/mamba-130m)")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file; from_pretrained takes a checkpoint directory")
    cfg, fmt = read_config(path, **overrides)
    state = to_our_names(read_weights(path, fmt), fmt)
    with torch.device("meta"):
        model = HookedMamba(cfg, backend="torch")
    _pad_vocab(state, cfg.padded_vocab_size)
    check_state(model, state, str(path))
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    model = _materialise(model, cfg, state, dtype or torch.float32)
    del state
    if device is not None:
        model = model.to(device)
    model.backend = backend
    tok, hint = load_tokenizer(tokenizer, path, repo_id, fmt, cache_dir, local_files_only)
    model.set_tokenizer(tok)
    model.tokenizer_hint = hint
    return model


def _materialise(meta_model, cfg: MambaConfig, state: dict, dtype: torch.dtype):
    """The model with the checkpoint's tensors (cast to ``dtype``; :data:`FP32_PARAMS` stay fp32 in half
    precision) as its parameters: no random init and no fp32 copy of a half-precision checkpoint,
    so a 7B model loads in about its own size of memory."""
    from .model import HookedMamba

    half = dtype in (torch.bfloat16, torch.float16)
    cast = {k: v.to(torch.float32 if half and k.rsplit(".", 1)[-1] in FP32_PARAMS else dtype)
            for k, v in state.items()}
    meta_model.load_state_dict(cast, strict=True, assign=True)
    if cfg.tie_embeddings:
        meta_model.lm_head.weight = meta_model.backbone.embedding.weight
    if any(t.is_meta for t in [*meta_model.parameters(), *meta_model.buffers()]):
        # a buffer no checkpoint holds (the sinusoidal table): build the model normally instead
        model = HookedMamba(cfg, backend="torch")
        model.load_state_dict(cast, strict=True)
        return to_dtype(model, dtype) if dtype != torch.float32 else model
    return meta_model


def load_tokenizer(spec, folder: Path, repo_id: Optional[str], fmt: str, cache_dir=None,
                   local_files_only: Optional[bool] = None):
    """(tokenizer or None, why there is none). ``spec``: ``"auto"`` (the checkpoint folder's own;
    for a ``state-spaces`` ``mamba_ssm`` repo, which holds none, EleutherAI/gpt-neox-20b's through
    the Hub cache), a tokenizer object, a repo id or folder to load one from, or None."""
    if spec is None or spec is False:
        return None, "from_pretrained(..., tokenizer=None)"
    if not (isinstance(spec, (str, os.PathLike))):
        return spec, None
    if spec == "auto":
        if hub.has_tokenizer(folder):
            return _auto_tokenizer(folder), None
        if fmt == "mamba_ssm" and repo_id is not None and repo_id.startswith("state-spaces/"):
            try:
                tfolder, _ = hub.resolve(STATE_SPACES_TOKENIZER, None, cache_dir, local_files_only, weights=False)
                return _auto_tokenizer(tfolder), None
            except (hub.HubError, CheckpointError) as e:
                return None, (f"{repo_id} holds no tokenizer and {STATE_SPACES_TOKENIZER}'s, which it was "
                              f"trained with, could not be loaded: {e}")
        return None, f"{folder} holds no tokenizer files"
    try:
        tfolder, _ = hub.resolve(spec, None, cache_dir, local_files_only, weights=False)
    except hub.HubError as e:
        raise CheckpointError(str(e)) from None
    return _auto_tokenizer(tfolder), None


def _auto_tokenizer(folder: Path):
    """``AutoTokenizer.from_pretrained`` on a local folder, offline; CheckpointError naming it on failure."""
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        raise CheckpointError(f"loading the tokenizer in {folder} needs transformers: {e}") from None
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:
        line = (str(e).strip().splitlines() or [""])[0]
        raise CheckpointError(f"cannot load the tokenizer in {folder}: {type(e).__name__}: {line} "
                              "(pass tokenizer=None to load the model without one)") from None


def save_pretrained(model, path) -> None:
    """Write ``config.json`` (``model.cfg.to_json()``) + ``model.safetensors`` for any of our models
    (a tied lm_head is not duplicated)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"cannot save into {path}: it is a file, not a directory")
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if getattr(model.cfg, "tie_embeddings", False):
        state.pop("lm_head.weight", None)
    atomic_write(path / "model.safetensors", lambda f: save_file(state, f, metadata={"format": "pt"}))
    atomic_write(path / "config.json", lambda f: Path(f).write_text(model.cfg.to_json()))

