"""The names of a training run's directory and files (no torch import: the grid's client and the CLI
read them, and importing the trainer costs seconds of model and transformer-lens imports)."""

from typing import Optional

STATE_FILE = "train_state.pt"  # model, optimiser, scheduler, RNG states, epoch and step: what --resume reads
METRICS_FILE = "metrics.json"  # run description, evaluation history, final metrics, provenance


def variant_label(model: str, mixer: Optional[str]) -> str:
    """A run directory's variant name: ``"transformer"``, or ``"<variant>-<mixer>"`` for the Mamba variants."""
    return model if model.startswith("transformer") or mixer is None else f"{model}-{mixer}"
