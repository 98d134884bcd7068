"""Text in and out of a :class:`~achilles_interp.model.HookedMamba`, TransformerLens-style, and
generation on the recurrent (one token at a time) path.

* **Tokenizer**: ``model.tokenizer`` is a Hugging Face tokenizer (loaded with the checkpoint by
  :meth:`HookedMamba.from_pretrained` when the checkpoint has one, or given: ``from_pretrained(...,
  tokenizer=tok)`` / ``model.set_tokenizer(tok)``). :func:`to_tokens`, :func:`to_string`,
  :func:`to_str_tokens` and :func:`to_single_token` are the model's methods of the same names.
* **Recurrent state**: an :class:`InferenceState` passed as ``model(tokens, inference_state=state)``
  is filled by a first call (the prompt: the full forward, keeping each layer's conv state, the
  last ``d_conv`` pre-conv inputs, and SSM state after the last token) and carried by later calls,
  which run one token at a time through the ops layer's ``conv_step`` / ``selective_step`` /
  ``ssd_step`` (the PyTorch recurrence, or ``causal_conv1d_update`` / ``selective_state_update``
  on the GPU). Every hook fires on that path too, with ``pos = 1``; an edit at
  ``hook_ssm_state`` becomes the state carried on.
* :func:`generate` (``model.generate``): greedy or sampled (temperature, top-k, top-p, seed)
  continuation of a prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

from .errors import UserError
from .inputs import InputError

TextInput = Union[str, list]
RETURN_TYPES = ("input", "str", "tokens")


# ---------------------------------------------------------------------------------------------
# recurrent state
# ---------------------------------------------------------------------------------------------
@dataclass
class LayerState:
    """One layer's carried state: ``conv`` ``[batch, channels, d_conv]`` (the last ``d_conv``
    pre-conv inputs; None when the model has no conv) and ``ssm`` (``[batch, d_inner, d_state]``
    Mamba-1, ``[batch, nheads, headdim, d_state]`` Mamba-2; fp32, fp64 for fp64 models)."""

    conv: Optional[torch.Tensor] = None
    ssm: Optional[torch.Tensor] = None


class InferenceState:
    """The recurrent state of a model across calls (what a KV cache is to a Transformer).

    ``model(prompt, inference_state=state)`` fills it (``state.position`` = tokens seen); each later
    ``model(tokens, inference_state=state)`` continues from it, one token at a time, and returns the
    logits the full forward over everything seen would give at those positions.
    """

    def __init__(self) -> None:
        self.layers: Optional[list[LayerState]] = None
        self.position = 0
        self.batch: Optional[int] = None

    def begin(self, n_layers: int, batch: int) -> bool:
        """Check a call of ``batch`` rows against the state (allocating it on the first call);
        True when this call is the prompt (nothing seen yet)."""
        if self.layers is None:
            self.layers = [LayerState() for _ in range(n_layers)]
            self.batch = batch
        if len(self.layers) != n_layers:
            raise InputError(f"this InferenceState belongs to a model of {len(self.layers)} layers, not {n_layers}")
        if batch != self.batch:
            raise InputError(f"this InferenceState holds {self.batch} sequences; got a batch of {batch}")
        return self.position == 0

    def __repr__(self) -> str:
        return f"InferenceState(position={self.position}, batch={self.batch})"


# ---------------------------------------------------------------------------------------------
# tokenizer conveniences
# ---------------------------------------------------------------------------------------------
def require_tokenizer(model):
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        hint = getattr(model, "tokenizer_hint", None) or "the checkpoint had none"
        raise UserError(f"this model has no tokenizer ({hint}): pass from_pretrained(..., tokenizer=...) "
                        "or call model.set_tokenizer(tokenizer)")
    return tok


def _prepend_bos(model, prepend_bos: Optional[bool]) -> bool:
    return bool(model.default_prepend_bos if prepend_bos is None else prepend_bos)


def _encode(tok, text: str, bos: bool) -> list[int]:
    ids = list(tok.encode(text, add_special_tokens=False))
    if bos:
        if tok.bos_token_id is None:
            raise UserError("prepend_bos=True but the tokenizer has no BOS token")
        ids = [tok.bos_token_id] + ids
    return ids


def to_tokens(model, input: TextInput, prepend_bos: Optional[bool] = None, padding_side: str = "right",
              move_to_device: bool = True) -> torch.Tensor:
    """Text -> token ids ``LongTensor [batch, pos]`` (one row per string).

    ``prepend_bos`` (default ``model.default_prepend_bos``, False for these models: Mamba checkpoints
    were trained on documents separated by EOS, and their HF tokenizers add no BOS) puts the
    tokenizer's BOS first. Strings of different lengths are padded (``padding_side``) with the pad
    token (EOS when there is none); Mamba has no attention mask, so the pad tokens are part of the
    padded rows' input.
    """
    tok = require_tokenizer(model)
    texts = [input] if isinstance(input, str) else list(input)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise InputError("to_tokens takes a string or a non-empty list of strings")
    if padding_side not in ("left", "right"):
        raise InputError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    bos = _prepend_bos(model, prepend_bos)
    rows = [_encode(tok, t, bos) for t in texts]
    if any(not r for r in rows):
        raise InputError("a string tokenised to no tokens; pass prepend_bos=True or a non-empty string")
    width = max(len(r) for r in rows)
    if any(len(r) != width for r in rows):
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if pad is None:
            raise InputError("these strings tokenise to different lengths and the tokenizer has no pad or EOS "
                             "token to pad with; pass them one at a time")
        rows = [([pad] * (width - len(r)) + r) if padding_side == "left" else (r + [pad] * (width - len(r)))
                for r in rows]
    tokens = torch.tensor(rows, dtype=torch.long)
    return tokens.to(model.backbone.embedding.weight.device) if move_to_device else tokens


def _as_ids(tokens) -> torch.Tensor:
    if isinstance(tokens, torch.Tensor):
        return tokens.detach().cpu().long()
    return torch.as_tensor(tokens, dtype=torch.long)


def to_string(model, tokens) -> Union[str, list]:
    """Token ids -> text: a 1-D tensor (or list of ints) gives one string, ``[batch, pos]`` a list."""
    tok = require_tokenizer(model)
    ids = _as_ids(tokens)
    if ids.dim() == 0:
        ids = ids[None]
    if ids.dim() == 1:
        return tok.decode(ids.tolist(), clean_up_tokenization_spaces=False)
    if ids.dim() == 2:
        return [tok.decode(row.tolist(), clean_up_tokenization_spaces=False) for row in ids]
    raise InputError(f"to_string takes token ids [pos] or [batch, pos], got shape {tuple(ids.shape)}")


def to_str_tokens(model, input, prepend_bos: Optional[bool] = None) -> list:
    """One string per token: text (tokenised first), or ids ``[pos]`` / ``[1, pos]`` -> ``list[str]``;
    a list of strings or ids ``[batch, pos]`` with batch > 1 -> one list per row."""
    tok = require_tokenizer(model)
    if isinstance(input, str):
        ids = to_tokens(model, input, prepend_bos=prepend_bos, move_to_device=False)[0]
    elif isinstance(input, (list, tuple)) and input and all(isinstance(t, str) for t in input):
        return [to_str_tokens(model, t, prepend_bos) for t in input]
    else:
        ids = _as_ids(input)
        if ids.dim() == 2:
            if ids.shape[0] != 1:
                return [to_str_tokens(model, row) for row in ids]
            ids = ids[0]
        if ids.dim() == 0:
            ids = ids[None]
    return [tok.decode([i], clean_up_tokenization_spaces=False) for i in ids.tolist()]


def to_single_token(model, string: str) -> int:
    """The id of ``string``, which must be exactly one token (no BOS)."""
    ids = _encode(require_tokenizer(model), string, False)
    if len(ids) != 1:
        raise InputError(f"{string!r} is {len(ids)} tokens, not one: {ids}")
    return ids[0]


# ---------------------------------------------------------------------------------------------
# sampling and generation
# ---------------------------------------------------------------------------------------------
def sample_next(logits: torch.Tensor, do_sample: bool = False, temperature: float = 1.0,
                top_k: Optional[int] = None, top_p: Optional[float] = None,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Next token ids ``[batch]`` from ``logits [batch, vocab]``: argmax unless ``do_sample`` (and
    ``temperature > 0``); else a draw from softmax(logits / temperature) restricted to the ``top_k``
    most likely tokens and to the smallest set whose probability reaches ``top_p``."""
    if not do_sample or temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        ordered, order = torch.sort(logits, dim=-1, descending=True)
        cum = ordered.softmax(-1).cumsum(-1)
        drop = cum - ordered.softmax(-1) >= top_p          # tokens after the nucleus is complete
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def _check_sampling(max_new_tokens, temperature, top_k, top_p, return_type) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise InputError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise InputError(f"temperature must be >= 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise InputError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise InputError(f"top_p must be None or in (0, 1], got {top_p!r}")
    if return_type not in RETURN_TYPES:
        raise InputError(f"return_type must be one of {RETURN_TYPES}, got {return_type!r}")


@torch.no_grad()
def generate(model, input: Union[str, list, torch.Tensor] = "", max_new_tokens: int = 10, do_sample: bool = False,
             temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
             seed: Optional[int] = None, stop_at_eos: bool = True, eos_token_id: Optional[int] = None,
             prepend_bos: Optional[bool] = None, return_type: str = "input", verbose: bool = False):
    """Continue ``input`` by up to ``max_new_tokens`` tokens on the recurrent path.

    Args:
        input: a string, a list of strings that tokenise to one length, or token ids ``[batch, pos]``
            (``[pos]`` is batch 1).
        do_sample: False (default): greedy (argmax at each step); True: sample (``temperature``,
            ``top_k``, ``top_p``), reproducibly when ``seed`` is given.
        stop_at_eos: stop a row at the EOS token (``eos_token_id``, default the tokenizer's); rows
            that stopped are filled with EOS until every row has; generation ends when all have.
        return_type: ``"input"`` (text for text input, ids for ids), ``"str"`` or ``"tokens"``;
            what comes back holds the prompt followed by the new tokens.
    The prompt runs as one full forward (filling an :class:`InferenceState`); each new token is one
    step of the recurrence per layer, so a step costs the same at any length.
    """
    _check_sampling(max_new_tokens, temperature, top_k, top_p, return_type)
    text_input = isinstance(input, str) or (isinstance(input, (list, tuple)) and bool(input)
                                            and all(isinstance(t, str) for t in input))
    if text_input:
        tokens = to_tokens(model, input, prepend_bos=prepend_bos)
        texts = [input] if isinstance(input, str) else list(input)
        lengths = {len(_encode(model.tokenizer, t, _prepend_bos(model, prepend_bos))) for t in texts}
        if len(lengths) > 1:
            raise InputError("generate: these prompts tokenise to different lengths, and Mamba has no attention "
                             "mask to hide padding; generate them one at a time (or pass token ids)")
    elif isinstance(input, torch.Tensor):
        tokens = input if input.dim() == 2 else input[None]
    else:
        raise InputError(f"generate takes a string, a list of strings or a LongTensor, got {type(input).__name__}")
    tokens = tokens.to(model.backbone.embedding.weight.device)
    tok = getattr(model, "tokenizer", None)
    if eos_token_id is None and tok is not None:
        eos_token_id = tok.eos_token_id
    stop = stop_at_eos and eos_token_id is not None
    generator = None
    if do_sample and seed is not None:
        generator = torch.Generator(device=tokens.device).manual_seed(int(seed))
    state = InferenceState()
    out = [tokens]
    if max_new_tokens:
        logits = model(tokens, inference_state=state)[:, -1]
        finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
        for i in range(max_new_tokens):
            nxt = sample_next(logits, do_sample, temperature, top_k, top_p, generator)
            if stop:
                nxt = torch.where(finished, torch.full_like(nxt, eos_token_id), nxt)
                finished |= nxt == eos_token_id
            out.append(nxt[:, None])
            if verbose:
                print(f"generate: {i + 1}/{max_new_tokens}", flush=True)
            if (stop and bool(finished.all())) or i + 1 == max_new_tokens:
                break
            logits = model(nxt[:, None], inference_state=state)[:, -1]
    result = torch.cat(out, dim=1)
    if return_type == "tokens" or (return_type == "input" and not text_input):
        return result
    strings = to_string(model, result)
    return strings[0] if isinstance(input, str) else strings
