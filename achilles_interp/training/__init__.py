"""Training: the paper's recipe and smaller presets, a resumable seeded trainer, variant
comparisons (:mod:`.compare`), the paper's grid as data (:mod:`.paper_grid`), its claims
(:mod:`.claims`) and report (:mod:`.reproduction`), and the shipped checkpoints (:mod:`.ship`)."""

from .presets import PRESETS, Preset, default_preset_name, get_preset
from .trainer import evaluate, train

__all__ = ["PRESETS", "Preset", "default_preset_name", "get_preset", "evaluate", "train"]
