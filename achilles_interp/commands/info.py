"""``achilles-interp info``: what a checkpoint is, and every hook it exposes with its shape."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub, help_text: str) -> None:
    p = sub.add_parser("info", help=help_text, description=(
        "Describe a checkpoint directory: its configuration, parameter count, and every hook name "
        "with the activation shape it produces on a [1, SEQ_LEN] input."))
    p.add_argument("checkpoint", help="checkpoint directory (achilles-interp, mamba_ssm or Hugging Face format), "
                                      "the name of a shipped checkpoint (e.g. mamba2-inverse), or a Hub id "
                                      "(org/name, read from the local Hugging Face cache)")
    p.add_argument("--seq-len", type=int, default=8, help="length of the probe input used to read shapes (default 8)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")
    p.set_defaults(func=run)


def describe(model, seq_len: int = 8) -> dict:
    """Config, parameter count and ``{hook name: shape}`` for a loaded model."""
    import torch

    from ..cli import CLIError

    if seq_len < 1:
        raise CLIError(f"--seq-len must be >= 1, got {seq_len}")
    tokens = torch.zeros(1, seq_len, dtype=torch.long, device=next(model.parameters()).device)
    kwargs = {"ssm_state_positions": "all"} if hasattr(model.cfg, "mixer") else {}
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, **kwargs)
    return {
        "class": type(model).__name__,
        "config": model.cfg.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "hooks": {name: list(cache[name].shape) for name in cache.keys()},
    }


def run(args: argparse.Namespace) -> int:
    from ..cli import CLIError
    from ..zoo import list_checkpoints, load_default, load_model

    if Path(args.checkpoint).is_dir() or "/" in args.checkpoint.strip("/"):
        model = load_model(args.checkpoint)  # a directory, or a Hugging Face Hub id (from the local cache)
    elif args.checkpoint in list_checkpoints():
        model = load_default(args.checkpoint)
    else:
        raise CLIError(f"{args.checkpoint!r} does not exist as a checkpoint directory and is not a shipped "
                       f"checkpoint ({', '.join(list_checkpoints()) or 'none shipped'}) or a Hub id (org/name)")
    info = describe(model, args.seq_len)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    cfg = info["config"]
    print(f"{info['class']}: {info['parameters']:,} parameters")
    print("  " + ", ".join(f"{k}={v}" for k, v in cfg.items() if k not in ("extra", "format")))
    print(f"hooks ({len(info['hooks'])}), shapes on a [1, {args.seq_len}] input:")
    for name, shape in info["hooks"].items():
        print(f"  {name:45s} {tuple(shape)}")
    return 0
