"""Training: the paper's recipe and smaller presets, a resumable seeded trainer, variant
comparisons (:mod:`.compare`), the paper's grid as data (:mod:`.paper_grid`), its claims
(:mod:`.claims`) and report (:mod:`.reproduction`), and the shipped checkpoints (:mod:`.ship`)."""

import importlib

from .presets import PRESETS, Preset, default_preset_name, get_preset

__all__ = ["PRESETS", "Preset", "default_preset_name", "get_preset", "evaluate", "train"]


def __getattr__(name: str):  # the trainer (torch) is imported on first use only
    if name in ("evaluate", "train"):
        return getattr(importlib.import_module(".trainer", __name__), name)
    raise AttributeError(f"module 'achilles_interp.training' has no attribute {name!r}")
