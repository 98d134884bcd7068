"""Load and save HookedMamba checkpoints from local directories.

Three on-disk formats are understood:

* **achilles-interp** (what :func:`save_pretrained` writes): ``config.json`` holding a
  ``MambaConfig`` (``"format": "achilles-interp"``) + ``model.safetensors``.
* **mamba_ssm** (``state-spaces/mamba-*`` checkpoints): ``config.json`` with ``d_model``,
  ``n_layer``, ``ssm_cfg`` ... + ``pytorch_model.bin``; parameter names already match ours.
* **Hugging Face** ``MambaForCausalLM`` / ``Mamba2ForCausalLM``: ``config.json`` with
  ``model_type`` ``"mamba"`` / ``"mamba2"`` + ``model.safetensors`` (or sharded, or
  ``pytorch_model.bin``); ``backbone.embeddings`` is renamed to ``backbone.embedding``.

No network access is ever attempted: ``path`` must be a local directory.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any, Optional

import torch

from .config import ConfigError, MambaConfig
from .errors import UserError
from .outputs import atomic_write


class CheckpointError(UserError):
    """A checkpoint directory is missing, malformed, or does not fit the model."""


# ---------------------------------------------------------------------------------------------
# config translation
# ---------------------------------------------------------------------------------------------
def detect_format(raw: dict) -> str:
    if raw.get("format") == "achilles-interp":
        return "achilles-interp"
    if raw.get("model_type") in ("mamba", "mamba2"):
        return "hf-" + raw["model_type"]
    if "d_model" in raw and "n_layer" in raw:
        return "mamba_ssm"
    raise CheckpointError(
        "config.json is in no known format: expected an achilles-interp config (\"format\": "
        "\"achilles-interp\"), a mamba_ssm config (d_model, n_layer, ssm_cfg) or a Hugging Face "
        f"config (model_type 'mamba' or 'mamba2'); found keys {sorted(raw)[:12]}")


def config_from_mamba_ssm(raw: dict) -> MambaConfig:
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
    return MambaConfig(**kw)


def config_from_hf(raw: dict) -> MambaConfig:
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
    return MambaConfig(**kw)


def _json_float(v: Any) -> float:
    """transformers >= 5 writes non-finite floats as {"__float__": "Infinity"}."""
    if isinstance(v, dict) and "__float__" in v:
        return float(v["__float__"])
    return float(v)


def read_config(path: Path) -> tuple[MambaConfig, str]:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"no config.json in {path}; a checkpoint directory holds config.json "
                              "and model.safetensors (or pytorch_model.bin)")
    try:
        raw = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON: {e}") from None
    fmt = detect_format(raw)
    try:
        if fmt == "achilles-interp":
            return MambaConfig.from_dict(raw), fmt
        if fmt == "mamba_ssm":
            return config_from_mamba_ssm(raw), fmt
        return config_from_hf(raw), fmt
    except (ConfigError, KeyError, TypeError) as e:
        what = f"missing field {e}" if isinstance(e, KeyError) else str(e)
        raise CheckpointError(f"cannot build a model from {cfg_file} ({fmt} format): {what}") from None


# ---------------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------------
def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint, from safetensors (single or sharded) or pytorch_model.bin.

    A truncated or corrupt weights file raises :class:`CheckpointError` naming the file."""
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
    if fmt.startswith("hf-"):
        return {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in state.items()}
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


def load_pretrained(path, backend: str = "auto", device=None, dtype: Optional[torch.dtype] = None,
                    **overrides):
    """Build a HookedMamba from a local checkpoint directory (see module docstring).

    ``overrides`` replace config fields (e.g. ``conv_mode``), useful for ablated variants;
    the weights must still fit.
    """
    from .model import HookedMamba

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint directory {path} does not exist (only local directories are "
                              "supported; nothing is downloaded)")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file; from_pretrained takes a checkpoint directory")
    cfg, fmt = read_config(path)
    if overrides:
        try:
            cfg = cfg.replace(**overrides)
        except (TypeError, ConfigError) as e:
            raise CheckpointError(f"bad override for {path}: {e}") from None
    state = to_our_names(read_weights(path), fmt)
    with torch.device("meta"):
        model = HookedMamba(cfg, backend="torch")
    _pad_vocab(state, cfg.padded_vocab_size)
    check_state(model, state, str(path))
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    model = HookedMamba(cfg, backend="torch")
    model.load_state_dict(state, strict=True)
    if dtype is not None:
        model = model.to(dtype)
    if device is not None:
        model = model.to(device)
    model.backend = backend
    return model


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

