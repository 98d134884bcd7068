"""The recurrent (one token at a time) path and generation, checked against the full forward; text
in and out with a tokenizer trained offline (tests/test_hub.py: tiny_tokenizer).

CPU: the step path's logits equal the full forward's at every position (1e-5 fp64 / 1e-4 fp32)
for every family and variant; greedy generation equals the argmax of the full forward step by step.
CUDA (``@pytest.mark.cuda``, skipped without a GPU): the kernels' step path (``causal_conv1d_update``,
``selective_state_update``) against the full forward, and bf16 / fp16 forwards and caches against
the fp32 reference within the tolerances below.
"""

from __future__ import annotations

import pytest
import torch

from achilles_interp import HookedMamba, InputError, MambaConfig
from achilles_interp.generation import InferenceState, sample_next

pytestmark = pytest.mark.usefixtures("one_thread")

VARIANTS = {
    "mamba1": dict(mixer="mamba1"),
    "mamba2-groups": dict(mixer="mamba2", headdim=8, ngroups=2, dt_limit=(0.01, 0.5)),
    "falcon": dict(mixer="mamba1", bcdt_norm=True),
    "mamba1-bypass": dict(mixer="mamba1", conv_mode="bypass"),
    "mamba2-noconv": dict(mixer="mamba2", headdim=8, conv_mode="none"),
    "mamba1-learned-pos": dict(mixer="mamba1", pos_embed="learned", max_len=32),
}
# Relative Frobenius error of a half-precision cache against the fp32 reference on the same
# (rounded) weights, per activation: bf16 keeps 8 mantissa bits (fp16: 11), and errors grow
# through the layers and the recurrence.
HALF_TOLERANCE = {torch.bfloat16: 5e-2, torch.float16: 1e-2}


def tiny(vocab=40, seed=0, dtype=torch.float32, **kw) -> HookedMamba:
    torch.manual_seed(seed)
    cfg = MambaConfig(**{"d_model": 16, "n_layers": 2, "vocab_size": vocab, "d_state": 4, **kw})
    model = HookedMamba(cfg, backend="torch").eval().to(dtype)
    with torch.no_grad():   # D = 1 and zero biases by default: perturb so nothing is trivially equal
        for name, p in model.named_parameters():
            if name.endswith(("D", "bias", "norm.weight")):
                p.add_(torch.randn_like(p) * 0.2)
    return model


def stepped(model, tokens, prompt: int) -> torch.Tensor:
    """Logits of ``tokens``: the first ``prompt`` as one call, then one call per token."""
    state = InferenceState()
    with torch.no_grad():
        out = [model(tokens[:, :prompt], inference_state=state)]
        out += [model(tokens[:, t : t + 1], inference_state=state) for t in range(prompt, tokens.shape[1])]
    assert state.position == tokens.shape[1]
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-5), (torch.float32, 1e-4)])
def test_step_logits_equal_full_forward(variant, dtype, tol):
    model = tiny(dtype=dtype, **VARIANTS[variant])
    tokens = torch.randint(0, 40, (2, 14))
    with torch.no_grad():
        full = model(tokens)
    for prompt in (1, 5):
        torch.testing.assert_close(stepped(model, tokens, prompt), full, atol=tol, rtol=tol)


@pytest.mark.parametrize("mixer", ["mamba1", "mamba2"])
def test_greedy_generate_equals_argmax_of_full_forward(mixer):
    model = tiny(mixer=mixer, headdim=8)
    prompt = torch.randint(0, 40, (3, 6))
    out = model.generate(prompt, max_new_tokens=8)
    assert out.shape == (3, 14) and torch.equal(out[:, :6], prompt)
    with torch.no_grad():
        logits = model(out)
    torch.testing.assert_close(out[:, 6:], logits[:, 5:-1].argmax(-1), rtol=0, atol=0)
    assert torch.equal(model.generate(prompt[0], max_new_tokens=3), out[:1, :9])   # 1-D prompt = batch 1


def test_sampling_options():
    logits = torch.randn(4, 40)
    greedy = logits.argmax(-1)
    assert torch.equal(sample_next(logits), greedy)
    assert torch.equal(sample_next(logits, True, temperature=0), greedy)
    assert torch.equal(sample_next(logits, True, top_k=1), greedy)
    assert torch.equal(sample_next(logits, True, top_p=1e-6), greedy)
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, True, top_k=3, generator=g) for _ in range(50)])
    assert all(bool(torch.isin(draws[:, i], torch.topk(logits[i], 3).indices).all()) for i in range(4))
    model = tiny()
    prompt = torch.randint(0, 40, (2, 4))
    a = model.generate(prompt, 6, do_sample=True, seed=3, temperature=1.5)
    b = model.generate(prompt, 6, do_sample=True, seed=3, temperature=1.5)
    c = model.generate(prompt, 6, do_sample=True, seed=4, temperature=1.5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(InputError, match="top_p"):
        model.generate(prompt, 2, do_sample=True, top_p=1.5)


def test_hooks_fire_and_state_edits_propagate_on_the_step_path():
    """A hook_ssm_state edit at step t carries on exactly as the same edit in the full forward."""
    model = tiny(mixer="mamba2", headdim=8, dtype=torch.float64)
    tokens = torch.randint(0, 40, (2, 10))
    name, t = "blocks.0.mixer.hook_ssm_state", 6

    def halve(states, hook):
        return states * 0.5

    with torch.no_grad():
        full = model.run_with_hooks(tokens, ssm_state_positions=[t], fwd_hooks=[(name, halve)])
        state = InferenceState()
        first = model(tokens[:, :t], inference_state=state)
        seen = []
        with model.hooks(fwd_hooks=[(name, halve), ("blocks.1.mixer.hook_dt", lambda x, hook: seen.append(x.shape))]):
            at_t = model(tokens[:, t : t + 1], inference_state=state)
        rest = model(tokens[:, t + 1 :], inference_state=state)
    assert seen == [torch.Size([2, 1, 4])]   # dt [batch, pos=1, nheads]
    torch.testing.assert_close(torch.cat([first, at_t, rest], 1), full, atol=1e-10, rtol=1e-10)
    assert not torch.allclose(full, model(tokens))


def test_inference_state_errors():
    model = tiny()
    state = InferenceState()
    model(torch.randint(0, 40, (2, 3)), inference_state=state)
    with pytest.raises(InputError, match="holds 2 sequences"):
        model(torch.randint(0, 40, (3, 1)), inference_state=state)
    with pytest.raises(InputError, match="cannot be combined"):
        model(torch.randint(0, 40, (2, 1)), inference_state=state, ssm_state_positions="all")
    with pytest.raises(InputError, match="max_len"):   # learned positions: the state counts them
        pos = tiny(pos_embed="learned", max_len=8)
        s = InferenceState()
        pos(torch.randint(0, 40, (1, 6)), inference_state=s)
        pos(torch.randint(0, 40, (1, 3)), inference_state=s)


# ---------------------------------------------------------------- text
def text_model(mixer="mamba1"):
    from test_hub import tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny(vocab=len(tok), mixer=mixer, headdim=8)
    model.set_tokenizer(tok)
    return model, tok


def test_tokenizer_round_trip_and_str_tokens():
    model, tok = text_model()
    text = "Keys: 1) 28 92 37; Query: 37 92 28. Answer: 3"
    tokens = model.to_tokens(text)
    assert tokens.shape[0] == 1 and model.to_string(tokens[0]) == text and model.to_string(tokens) == [text]
    assert "".join(model.to_str_tokens(text)) == text
    assert model.to_str_tokens(text)[:4] == ["Keys", ":", " 1", ")"]
    assert model.to_str_tokens(tokens) == model.to_str_tokens(text)
    assert model.to_single_token(" 28") == tokens[0, 4].item()
    with pytest.raises(InputError, match="not one"):
        model.to_single_token(" 28 92")
    bos = model.to_tokens(text, prepend_bos=True)
    assert bos[0, 0].item() == tok.bos_token_id and torch.equal(bos[0, 1:], tokens[0])
    padded = model.to_tokens(["Hello", "Hello world"])
    assert padded.shape[0] == 2 and padded[0, -1].item() == tok.pad_token_id
    assert model.to_str_tokens(["a b", "c"]) == [model.to_str_tokens("a b"), model.to_str_tokens("c")]


def test_generate_and_run_with_cache_on_text():
    model, tok = text_model("mamba2")
    prompt = "Hello world, Mamba"
    out = model.generate(prompt, max_new_tokens=5, stop_at_eos=False)
    assert isinstance(out, str) and out.startswith(prompt)
    ids = model.generate(prompt, max_new_tokens=5, stop_at_eos=False, return_type="tokens")
    assert ids.shape == (1, model.to_tokens(prompt).shape[1] + 5) and model.to_string(ids[0]) == out
    first = ids[0, model.to_tokens(prompt).shape[1]].item()
    stopped = model.generate(prompt, max_new_tokens=5, eos_token_id=first, return_type="tokens")
    assert stopped.shape[1] == model.to_tokens(prompt).shape[1] + 1   # stops at "EOS"
    logits, cache = model.run_with_cache(prompt)
    torch.testing.assert_close(logits, model(model.to_tokens(prompt)))
    assert cache["blocks.0.mixer.hook_conv_out"].shape[1] == model.to_tokens(prompt).shape[1]
    with pytest.raises(InputError, match="different lengths"):
        model.generate(["Hello", "Hello world"], max_new_tokens=2)


def test_no_tokenizer_is_one_line_error():
    with pytest.raises(ValueError, match="no tokenizer.*set_tokenizer") as e:
        tiny().to_tokens("hello")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("mixer", ["mamba1", "mamba2"])
def test_half_precision_model_keeps_fp32_residual_and_matches_fp32_reference(mixer):
    """A bf16 model (``to_dtype``: fp32 residual stream, fp32 A_log / D / dt_bias) on the torch backend:
    the norm hands each mixer bf16, as mamba_ssm's block does, and every cached activation stays within
    the bf16 tolerance of the fp32 model on the same rounded weights."""
    from achilles_interp.loading import to_dtype

    extra = dict(headdim=8, chunk_size=8) if mixer == "mamba2" else {}
    half = to_dtype(tiny(mixer=mixer, **extra), torch.bfloat16)
    ref = tiny(mixer=mixer, **extra)
    ref.load_state_dict({k: v.float() for k, v in half.state_dict().items()})
    tokens = torch.randint(0, 40, (2, 30))
    with torch.no_grad():
        out_h, cache_h = half.run_with_cache(tokens, ssm_state_positions=[3, 17])
        out_r, cache_r = ref.run_with_cache(tokens, ssm_state_positions=[3, 17])
        plain = half(tokens)
    assert cache_h["blocks.1.hook_resid_pre"].dtype == torch.float32
    assert cache_h["blocks.1.mixer.hook_in"].dtype == torch.bfloat16
    assert out_h.dtype == plain.dtype == torch.bfloat16 and torch.equal(out_h, plain)
    worst = max((_rel(cache_h[k], cache_r[k]), k) for k in cache_r.keys())
    assert worst[0] < HALF_TOLERANCE[torch.bfloat16], worst


# ---------------------------------------------------------------- CUDA (skipped without a GPU)
def _cuda_model(mixer, dtype=torch.float32, **kw):
    from achilles_interp.loading import to_dtype

    torch.manual_seed(0)
    extra = dict(headdim=32, chunk_size=64) if mixer == "mamba2" else {}
    cfg = MambaConfig(d_model=128, n_layers=3, vocab_size=256, mixer=mixer, d_state=16, **extra, **kw)
    model = HookedMamba(cfg, backend="cuda").cuda().eval()
    return to_dtype(model, dtype) if dtype != torch.float32 else model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


@pytest.mark.cuda
@pytest.mark.parametrize("mixer", ["mamba1", "mamba2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_step_path_equals_full_forward(mixer, dtype):
    model = _cuda_model(mixer, dtype)
    tokens = torch.randint(0, 256, (2, 40), device="cuda")
    with torch.no_grad():
        full = model(tokens).float()
    tol = 1e-3 if dtype == torch.float32 else 5e-2
    assert _rel(stepped(model, tokens, 24), full) < tol
    if dtype == torch.float32:   # in bf16 a near-tie may flip an argmax between the two paths
        greedy = model.generate(tokens[:, :8], max_new_tokens=8)
        with torch.no_grad():
            again = model(greedy)
        assert torch.equal(greedy[:, 8:], again[:, 7:-1].argmax(-1))


@pytest.mark.cuda
@pytest.mark.parametrize("mixer", ["mamba1", "mamba2"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_half_precision_cache_matches_fp32_reference(mixer, dtype):
    """Every cached activation (and the states at 16 positions) of a half-precision model on the
    kernels, against the fp32 reference backend on the same rounded weights."""
    half = _cuda_model(mixer, dtype)
    ref = _cuda_model(mixer)
    ref.load_state_dict({k: v.float() for k, v in half.state_dict().items()})
    ref.backend = "torch"
    tokens = torch.randint(0, 256, (2, 300), device="cuda")
    positions = list(range(0, 300, 19))[:16]
    with torch.no_grad():
        out_h, cache_h = half.run_with_cache(tokens, ssm_state_positions=positions)
        out_r, cache_r = ref.run_with_cache(tokens, ssm_state_positions=positions)
    assert out_h.dtype == dtype and cache_h["blocks.0.mixer.hook_conv_out"].dtype == dtype
    worst = max((_rel(cache_h[k], cache_r[k]), k) for k in cache_r.keys())
    assert worst[0] < HALF_TOLERANCE[dtype], worst
    assert _rel(out_h, out_r) < HALF_TOLERANCE[dtype]
