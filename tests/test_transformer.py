"""HookedTransformerBaseline: attention semantics, hooks, hand computation, save/load, zoo."""

import json
import math

import pytest
import torch

from achilles_interp.model import HookedMamba, InputError
from achilles_interp.transformer import HookedTransformerBaseline, TransformerConfig
from achilles_interp.zoo import VARIANTS, build_model, load_model


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw):
    cfg = dict(d_model=16, n_layers=2, n_heads=2, vocab_size=32, max_len=16)
    cfg.update(kw)
    return HookedTransformerBaseline(TransformerConfig(**cfg))


def test_pattern_rows_sum_to_one_and_causal():
    model = tiny()
    tokens = torch.randint(0, 32, (3, 9))
    _, cache = model.run_with_cache(tokens)
    for i in range(2):
        pat = cache[f"blocks.{i}.attn.hook_pattern"]
        assert pat.shape == (3, 2, 9, 9)
        torch.testing.assert_close(pat.sum(-1), torch.ones(3, 2, 9))
        assert torch.all(pat.triu(1) == 0)
        scores = cache[f"blocks.{i}.attn.hook_attn_scores"]
        assert torch.isneginf(scores.triu(1)[..., torch.ones(9, 9, dtype=torch.bool).triu(1)]).all()


def test_hook_shapes():
    model = tiny(d_mlp=24)
    _, cache = model.run_with_cache(torch.randint(0, 32, (2, 5)))
    b, p, h, d = 2, 5, 2, 8
    expected = {"hook_embed": (b, p, 16), "hook_pos_embed": (b, p, 16), "hook_resid_final": (b, p, 16)}
    for i in range(2):
        expected.update(
            {
                f"blocks.{i}.hook_resid_pre": (b, p, 16),
                f"blocks.{i}.attn.hook_q": (b, p, h, d),
                f"blocks.{i}.attn.hook_k": (b, p, h, d),
                f"blocks.{i}.attn.hook_v": (b, p, h, d),
                f"blocks.{i}.attn.hook_attn_scores": (b, h, p, p),
                f"blocks.{i}.attn.hook_pattern": (b, h, p, p),
                f"blocks.{i}.attn.hook_z": (b, p, h, d),
                f"blocks.{i}.hook_attn_out": (b, p, 16),
                f"blocks.{i}.hook_mlp_out": (b, p, 16),
                f"blocks.{i}.hook_resid_post": (b, p, 16),
                f"blocks.{i}.mlp.hook_post": (b, p, 24),
            }
        )
    for name, shape in expected.items():
        assert tuple(cache[name].shape) == shape, name


def test_attention_matches_hand_computation():
    """One attention-only layer, no positional encoding: logits by explicit loops over positions."""
    torch.manual_seed(1)
    model = HookedTransformerBaseline(
        TransformerConfig(
            d_model=4, n_layers=1, n_heads=1, d_mlp=None, vocab_size=7, max_len=8, pos_embed=None
        )
    )
    with torch.no_grad():
        for prm in model.parameters():
            prm.normal_(0, 0.7)
    tokens = torch.tensor([[3, 1, 6, 0, 2]])
    got = model(tokens)[0].double().detach()
    model.requires_grad_(False)

    def ln(v, mod):
        mu = sum(v) / len(v)
        var = sum((x - mu) ** 2 for x in v) / len(v)
        return [
            (x - mu) / math.sqrt(var + mod.eps) * float(w) + float(b)
            for x, w, b in zip(v, mod.weight, mod.bias)
        ]

    def lin(v, mod):
        W, b = mod.weight.double(), (mod.bias.double() if mod.bias is not None else None)
        return [
            sum(float(W[o, k]) * v[k] for k in range(len(v))) + (float(b[o]) if b is not None else 0.0)
            for o in range(W.shape[0])
        ]

    blk = model.blocks[0]
    E = model.embed.weight.double()
    xs = [[float(E[t, k]) for k in range(4)] for t in tokens[0].tolist()]
    normed = [ln(x, blk.ln1) for x in xs]
    qs = [lin(v, blk.attn.W_Q) for v in normed]
    ks = [lin(v, blk.attn.W_K) for v in normed]
    vs = [lin(v, blk.attn.W_V) for v in normed]
    for t in range(5):
        s = [sum(a * b for a, b in zip(qs[t], ks[j])) / 2.0 for j in range(t + 1)]  # sqrt(d_head=4)
        m = max(s)
        w = [math.exp(x - m) for x in s]
        w = [x / sum(w) for x in w]
        z = [sum(w[j] * vs[j][c] for j in range(t + 1)) for c in range(4)]
        resid = [a + b for a, b in zip(xs[t], lin(z, blk.attn.W_O))]
        want = lin(ln(resid, model.ln_final), model.unembed)
        torch.testing.assert_close(got[t], torch.tensor(want, dtype=torch.float64), atol=1e-5, rtol=1e-5)


def test_qkv_conv_is_causal():
    model = tiny(qkv_conv=3)
    a = torch.randint(0, 32, (1, 8))
    b = a.clone()
    b[0, 5] = (a[0, 5] + 1) % 32
    la, lb = model(a), model(b)
    torch.testing.assert_close(la[:, :5], lb[:, :5])
    assert not torch.allclose(la[:, 5:], lb[:, 5:])
    assert {"blocks.0.attn.conv_q.weight", "blocks.0.attn.conv_v.bias"} <= set(dict(model.named_parameters()))


def test_save_load_roundtrip_and_dispatch(tmp_path):
    model = tiny(pos_embed="sinusoidal", qkv_conv=2, init_gamma=0.5)
    model.save_pretrained(tmp_path / "tf")
    raw = json.loads((tmp_path / "tf" / "config.json").read_text())
    assert raw["format"] == "achilles-interp-transformer"
    loaded = load_model(tmp_path / "tf")
    assert isinstance(loaded, HookedTransformerBaseline)
    tokens = torch.randint(0, 32, (2, 6))
    torch.testing.assert_close(model(tokens), loaded(tokens))
    mamba = build_model("mamba", vocab_size=32, max_len=16, d_model=16, d_state=4, headdim=8)
    mamba.save_pretrained(tmp_path / "m")
    assert isinstance(load_model(tmp_path / "m"), HookedMamba)


def test_bad_input_and_config():
    model = tiny()
    with pytest.raises(InputError, match="max_len"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(InputError, match="token ids"):
        model(torch.full((1, 3), 40))
    with pytest.raises(ValueError, match="n_heads"):
        TransformerConfig(d_model=10, n_heads=3)


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("mixer", ["mamba1", "mamba2"])
def test_every_variant_builds_and_runs(name, mixer):
    model = build_model(name, vocab_size=32, max_len=16, d_model=16, d_state=4, headdim=8, mixer=mixer)
    assert model(torch.randint(0, 32, (2, 6))).shape == (2, 6, 32)
    cfg = model.cfg
    if name.startswith("mamba"):
        assert cfg.mixer == mixer
        assert cfg.conv_mode == {"mamba-noconv": "none"}.get(
            name, "bypass" if "bypass" in name else "standard"
        )
        assert (cfg.pos_embed is not None) == name.endswith("-pe")
        assert (cfg.conv_kernel == "ones") == (name == "mamba-ones")
    else:
        assert (cfg.qkv_conv is not None) == (name == "transformer-conv")
