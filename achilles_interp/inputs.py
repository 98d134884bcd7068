"""Validation of the token input every model takes, with specific messages."""

from __future__ import annotations

from typing import Optional

import torch

from .errors import UserError

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8)


class InputError(UserError):
    """The input given to a model is not of an allowed form."""


def validate_tokens(tokens, vocab_size: int, device: torch.device, max_len: Optional[int] = None) -> torch.Tensor:
    """Check ``tokens`` and return them as a LongTensor ``[batch, pos]`` on ``device``.

    A 1-D tensor is taken as batch 1. ``max_len`` (the positional encoding's length) bounds pos.
    """
    if not isinstance(tokens, torch.Tensor):
        raise InputError(f"tokens must be a torch.LongTensor [batch, pos], got {type(tokens).__name__}")
    if tokens.dtype not in _INT_DTYPES:
        raise InputError(f"tokens must be an integer tensor [batch, pos], got dtype {tokens.dtype}")
    if tokens.dim() == 1:
        tokens = tokens[None]
    if tokens.dim() != 2 or tokens.shape[1] == 0:
        raise InputError(f"tokens must have shape [batch, pos] with pos >= 1, got {tuple(tokens.shape)}")
    # The range check reads two numbers back to the host, which a CUDA-graph capture forbids; a
    # captured training step (achilles_interp.training.graphed_step) replays batches of ids the
    # task generator produced, so it is skipped only while a capture is in progress.
    if tokens.numel() and not (tokens.is_cuda and torch.cuda.is_current_stream_capturing()):
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= vocab_size:
            raise InputError(f"token ids must lie in [0, {vocab_size}), got range [{lo}, {hi}]")
    if max_len is not None and tokens.shape[1] > max_len:
        raise InputError(f"sequence length {tokens.shape[1]} exceeds max_len={max_len} "
                         "of this model's positional encoding")
    return tokens.to(device).long()
