"""The files of a training run's directory (no torch import: the grid and the CLI read them)."""

STATE_FILE = "train_state.pt"  # model, optimiser, scheduler, RNG states, epoch and step: what --resume reads
METRICS_FILE = "metrics.json"  # run description, evaluation history, final metrics, provenance
