"""Hugging Face Hub names -> local checkpoint folders, through ``huggingface_hub``.

``HookedMamba.from_pretrained("state-spaces/mamba-130m")`` calls :func:`resolve`: a local
directory is used as it is; anything else that reads as a repo id (``org/name``) is looked up in
the Hub cache, and downloaded into it unless offline:

* **Cache**: ``cache_dir`` if given, else ``HF_HUB_CACHE`` (or ``HUGGINGFACE_HUB_CACHE``), else
  ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``: the layout ``huggingface_hub`` writes
  (``models--org--name/snapshots/<commit>/...``, ``refs/<branch>``). The environment is read at
  each call, so setting these variables after ``import huggingface_hub`` still counts.
* **Offline**: ``local_files_only=True``, or ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` set to
  a true value: nothing is fetched; the snapshot of ``revision`` (a branch or tag through
  ``refs/``, or a commit hash) must be in the cache.
* **Online**: ``config.json`` (or Mistral's ``params.json``) comes first, then only the weights that
  format needs (``model.safetensors`` or its shards, else ``pytorch_model.bin``; Mistral's
  ``consolidated.safetensors``) and the tokenizer files, never a repository's other copies of the
  weights.

Each failure is one :class:`~achilles_interp.loading.CheckpointError` line naming the repo, the
revision and the cache.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from .errors import UserError

CONFIG_FILES = ("config.json", "params.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "added_tokens.json")
_TRUE = {"1", "ON", "YES", "TRUE"}


class HubError(UserError):
    """A Hub repo id could not be resolved to a local folder (the loader re-raises it as a CheckpointError)."""


def offline_mode() -> bool:
    """Whether ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` ask for no network (read now, not at import)."""
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    if env.upper() in _TRUE:
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def hub_cache_dir(cache_dir=None) -> Path:
    """The Hub cache folder: ``cache_dir``, ``HF_HUB_CACHE``, ``HUGGINGFACE_HUB_CACHE``, ``$HF_HOME/hub``
    or ``$XDG_CACHE_HOME/huggingface/hub`` (read now)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hub"


def is_repo_id(name) -> bool:
    """True when ``name`` (a str that is not an existing path) reads as a Hub repo id ``org/name``."""
    if not isinstance(name, str) or os.path.exists(name):
        return False
    if name.startswith((".", "~", "/", "\\")) or name.count("/") > 1 or "\\" in name:
        return False
    try:
        from huggingface_hub.utils import validate_repo_id
    except ImportError:
        return "/" in name
    try:
        validate_repo_id(name)
    except Exception:  # HFValidationError
        return False
    return True


def resolve(name_or_path: Union[str, os.PathLike], revision: Optional[str] = None, cache_dir=None,
            local_files_only: Optional[bool] = None, weights: bool = True) -> tuple[Path, Optional[str]]:
    """A local folder holding the checkpoint ``name_or_path``, and its repo id (None for a local directory).

    A ``Path``, an existing path, or a string that is no repo id is a local directory (returned
    as given: the loader checks it). A repo id is resolved in the Hub cache (see module docstring);
    ``weights=False`` fetches the config and tokenizer files only (a tokenizer's repo).
    """
    if not is_repo_id(name_or_path) or isinstance(name_or_path, os.PathLike):
        if revision is not None:
            raise HubError(f"revision={revision!r} applies to Hub repo ids, but {str(name_or_path)!r} is a local path")
        return Path(name_or_path), None
    offline = offline_mode() if local_files_only is None else bool(local_files_only)
    cache = hub_cache_dir(cache_dir)
    folder = _download_config(name_or_path, revision, cache, offline)
    if not offline:
        _download_rest(name_or_path, revision, cache, folder, weights)
    return folder, name_or_path


def _where(repo_id: str, revision: Optional[str], cache: Path, offline: bool) -> str:
    rev = f" at revision {revision!r}" if revision else ""
    mode = "offline (HF_HUB_OFFLINE or local_files_only)" if offline else "online"
    return f"Hub repo {repo_id!r}{rev} (cache {cache}, {mode})"


def _hub():
    try:
        import huggingface_hub  # noqa: F401
        from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError
    except ImportError as e:
        raise HubError(f"loading by Hub name needs huggingface_hub (pip install huggingface_hub): {e}") from None
    return huggingface_hub, EntryNotFoundError, LocalEntryNotFoundError


def _download_config(repo_id: str, revision: Optional[str], cache: Path, offline: bool) -> Path:
    """The snapshot folder of ``repo_id`` at ``revision``, found through its config file."""
    hh, EntryNotFound, LocalEntryNotFound = _hub()
    missing = []
    for name in CONFIG_FILES:
        try:
            file = hh.hf_hub_download(repo_id, name, revision=revision, cache_dir=str(cache), local_files_only=offline)
            return Path(file).parent
        except (EntryNotFound, LocalEntryNotFound) as e:
            missing.append((name, e))
        except Exception as e:  # no such repo or revision, network, authentication
            raise HubError(f"cannot resolve {_where(repo_id, revision, cache, offline)}: {_first_line(e)}") from None
    where = _where(repo_id, revision, cache, offline)
    if offline:
        raise HubError(f"{where} is not in the cache (neither config.json nor params.json is there): download it "
                       f"on a machine with internet (`hf download {repo_id}`) and copy the cache, or pass a local "
                       "directory")
    raise HubError(f"{where} has no config.json or params.json: {_first_line(missing[0][1])}")


def _download_rest(repo_id: str, revision: Optional[str], cache: Path, folder: Path, weights: bool = True) -> None:
    """Online: the weights the checkpoint's format needs (if ``weights``) and the tokenizer files, into the cache."""
    hh, _, _ = _hub()
    try:
        files = set(hh.list_repo_files(repo_id, revision=revision))
        wanted = [f for f in TOKENIZER_FILES if f in files]
        if weights:
            wanted += weight_files(files, folder)
            if "model.safetensors.index.json" in files and "model.safetensors" not in files:
                wanted.append("model.safetensors.index.json")
        if not wanted:
            return
        hh.snapshot_download(repo_id, revision=revision, cache_dir=str(cache), allow_patterns=sorted(set(wanted)))
    except Exception as e:
        raise HubError(f"cannot download {_where(repo_id, revision, cache, False)}: {_first_line(e)}") from None


def weight_files(files: set, folder: Path) -> list:
    """Which of a repo's ``files`` hold the weights, in the order the loader prefers: safetensors
    (single, or the shards of its index), else ``pytorch_model.bin`` (or its shards); Mistral's
    ``consolidated.safetensors`` only for a ``params.json`` checkpoint."""
    if (folder / "config.json").is_file():
        if "model.safetensors" in files:
            return ["model.safetensors"]
        shards = sorted(f for f in files if f.startswith("model-") and f.endswith(".safetensors"))
        if shards:
            return shards
        if "pytorch_model.bin" in files:
            return ["pytorch_model.bin"]
        return sorted(f for f in files if f.startswith("pytorch_model-") and f.endswith(".bin"))
    return [f for f in ("consolidated.safetensors",) if f in files]


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def has_tokenizer(folder: Path) -> bool:
    """Whether a checkpoint folder holds tokenizer files ``AutoTokenizer`` can load."""
    return any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json",
                                                 "tokenizer.model"))
