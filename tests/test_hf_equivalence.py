"""Independent oracle: Hugging Face `MambaForCausalLM` / `Mamba2ForCausalLM` logits.

HF models are built from a config with random weights, saved with `save_pretrained`, and loaded
with `HookedMamba.from_pretrained`; logits must agree to 1e-4 on the reference backend.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from achilles_interp import HookedMamba  # noqa: E402
from test_hub import randomise as _randomise  # noqa: E402  (one perturbation for every HF comparison)


def _ours_and_hf(hf_class, cfg, tmp_path, seed: int):
    """A randomised HF model, saved with `save_pretrained`, and ours loaded from that directory."""
    torch.manual_seed(0)
    hf = hf_class(cfg).eval()
    _randomise(hf, seed)
    hf.save_pretrained(tmp_path)
    return HookedMamba.from_pretrained(tmp_path, backend="torch").eval(), hf


@pytest.mark.parametrize("conv_bias,use_bias", [(True, False), (False, True)])
def test_mamba1_logits_match_hf(tmp_path, conv_bias, use_bias):
    cfg = transformers.MambaConfig(vocab_size=97, hidden_size=48, state_size=8, num_hidden_layers=3,
                                   expand=2, conv_kernel=4, use_conv_bias=conv_bias, use_bias=use_bias,
                                   time_step_rank=5, tie_word_embeddings=False)
    ours, hf = _ours_and_hf(transformers.MambaForCausalLM, cfg, tmp_path, 1)
    tokens = torch.randint(0, 97, (3, 37))
    with torch.no_grad():
        ref = hf(tokens).logits
        out = ours(tokens)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("n_groups", [1, 2])
def test_mamba2_logits_match_hf(tmp_path, n_groups):
    cfg = transformers.Mamba2Config(vocab_size=89, hidden_size=64, state_size=16, num_hidden_layers=2,
                                    expand=2, head_dim=16, num_heads=8, n_groups=n_groups, conv_kernel=4,
                                    chunk_size=8, tie_word_embeddings=True)
    ours, hf = _ours_and_hf(transformers.Mamba2ForCausalLM, cfg, tmp_path, 2)
    assert ours.cfg.mixer == "mamba2" and ours.cfg.ngroups == n_groups
    tokens = torch.randint(0, 89, (2, 29))
    with torch.no_grad():
        ref = hf(tokens).logits
        out = ours(tokens)
        out_states = ours(tokens, ssm_state_positions="all")  # the recurrence path, not the SSD one
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out_states, ref, atol=1e-4, rtol=1e-4)


def test_falcon_mamba_logits_match_hf(tmp_path):
    """FalconMambaForCausalLM: weightless RMSNorms on dt, B and C (MambaConfig.bcdt_norm)."""
    cfg = transformers.FalconMambaConfig(vocab_size=71, hidden_size=48, state_size=8, num_hidden_layers=2,
                                         expand=2, conv_kernel=4, time_step_rank=5, mixer_rms_eps=1e-6,
                                         tie_word_embeddings=False)
    ours, hf = _ours_and_hf(transformers.FalconMambaForCausalLM, cfg, tmp_path, 3)
    assert ours.cfg.bcdt_norm
    tokens = torch.randint(0, 71, (2, 31))
    with torch.no_grad():
        ref = hf(tokens).logits
        torch.testing.assert_close(ours(tokens), ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours(tokens, ssm_state_positions="all"), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["mamba", "mamba2", "falcon_mamba"])
def test_greedy_generation_matches_hf_generate(tmp_path, family):
    """Our recurrent path against HF's own cache path: the same greedy continuation."""
    if family == "mamba":
        cls, cfg = transformers.MambaForCausalLM, transformers.MambaConfig(
            vocab_size=61, hidden_size=32, state_size=8, num_hidden_layers=2, time_step_rank=4)
    elif family == "mamba2":
        cls, cfg = transformers.Mamba2ForCausalLM, transformers.Mamba2Config(
            vocab_size=61, hidden_size=32, state_size=8, num_hidden_layers=2, head_dim=8, num_heads=8, n_groups=2,
            chunk_size=8)
    else:
        cls, cfg = transformers.FalconMambaForCausalLM, transformers.FalconMambaConfig(
            vocab_size=61, hidden_size=32, state_size=8, num_hidden_layers=2, time_step_rank=4)
    ours, hf = _ours_and_hf(cls, cfg, tmp_path, 4)
    prompt = torch.randint(1, 61, (2, 7))
    with torch.no_grad():
        ref = hf.generate(prompt, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0,
                          attention_mask=torch.ones_like(prompt))
    out = ours.generate(prompt, max_new_tokens=6, stop_at_eos=False)
    assert torch.equal(out, ref)
