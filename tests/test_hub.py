"""Loading by Hugging Face Hub name, with no network: each test writes a Hub cache into tmp_path
(``models--org--name/snapshots/<commit>/...`` + ``refs/main``, the layout huggingface_hub writes),
points ``HF_HUB_CACHE`` / ``HF_HOME`` at it, sets ``HF_HUB_OFFLINE=1`` and blocks sockets. The
checkpoints are random-weight Hugging Face models (``MambaForCausalLM``, ``Mamba2ForCausalLM``,
``FalconMambaForCausalLM``) in each family's file format; logits must match the HF reference at 1e-4.

``tiny_tokenizer`` (imported by the other test modules) trains a byte-level BPE offline.
"""

from __future__ import annotations

import json
import random
import socket
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from achilles_interp import CheckpointError, HookedMamba  # noqa: E402
from achilles_interp.hub import hub_cache_dir, is_repo_id, weight_files  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

COMMIT = "a" * 40
OTHER_COMMIT = "b" * 40
_TOKENIZER = None


# ---------------------------------------------------------------- helpers shared with other test modules
def tiny_tokenizer():
    """A byte-level BPE (about 480 tokens, EOS = BOS = PAD = ``<|endoftext|>``) trained offline on
    text like the matching prompts: every " 0" .. " 200" and " 1".." 5" is one token, as in GPT-NeoX's."""
    global _TOKENIZER
    if _TOKENIZER is None:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast

        rng = random.Random(0)
        corpus = [" ".join(str(i) for i in range(201))] * 20
        for _ in range(300):
            nums = " ".join(str(rng.randint(0, 200)) for _ in range(12))
            corpus.append(f"Keys: 1) {nums}; 2) the cat sat on the mat. Other: {nums}; Query: {nums}. "
                          f"Answer: {rng.randint(1, 5)}\nHello world, Mamba reads text.")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(corpus, trainers.BpeTrainer(
            vocab_size=512, special_tokens=["<|endoftext|>"], show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        _TOKENIZER = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                             eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    return _TOKENIZER


def randomise(model: torch.nn.Module, seed: int) -> None:
    """HF init leaves D = 1, norms = 1, biases = 0: perturb every parameter so nothing is trivially equal."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "A_log" in name:
                p.copy_(torch.log(torch.rand(p.shape, generator=g) * 4 + 0.5))
            elif "dt_bias" in name or "dt_proj.bias" in name:
                p.copy_(torch.rand(p.shape, generator=g) * 2 - 3)
            else:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


def snapshot(cache: Path, repo_id: str, commit: str = COMMIT, ref: str | None = "main") -> Path:
    """The snapshot folder of ``repo_id`` at ``commit`` in a Hub cache (created), with ``refs/<ref>``."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    folder = repo / "snapshots" / commit
    folder.mkdir(parents=True, exist_ok=True)
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return folder


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty offline Hub cache; any socket connection fails the test."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    return cache


def hf_model(kind: str, vocab: int, seed: int = 1, **kw):
    """A randomised HF causal LM of ``kind`` ("mamba", "mamba2", "falcon_mamba")."""
    torch.manual_seed(seed)
    if kind == "mamba":
        cfg = transformers.MambaConfig(vocab_size=vocab, hidden_size=32, state_size=8, num_hidden_layers=2,
                                       expand=2, conv_kernel=4, time_step_rank=4, **kw)
        model = transformers.MambaForCausalLM(cfg)
    elif kind == "falcon_mamba":
        cfg = transformers.FalconMambaConfig(vocab_size=vocab, hidden_size=32, state_size=8, num_hidden_layers=2,
                                             expand=2, conv_kernel=4, time_step_rank=4, **kw)
        model = transformers.FalconMambaForCausalLM(cfg)
    else:
        kw = {"n_groups": 1, "tie_word_embeddings": True, **kw}
        cfg = transformers.Mamba2Config(vocab_size=vocab, hidden_size=32, state_size=8, num_hidden_layers=2,
                                        expand=2, head_dim=8, num_heads=8, conv_kernel=4, chunk_size=8, **kw)
        model = transformers.Mamba2ForCausalLM(cfg)
    model = model.eval()
    randomise(model, seed)
    return model


def mamba_ssm_state(hf) -> dict:
    """An HF model's weights under mamba_ssm's names (what state-spaces/mamba-* hold)."""
    return {k.replace("backbone.embeddings.", "backbone.embedding."): v.detach().clone()
            for k, v in hf.state_dict().items()}


def hf_logits(hf, tokens):
    with torch.no_grad():
        return hf(tokens).logits


# ---------------------------------------------------------------- families
def test_hf_mamba_by_hub_name_with_tokenizer(hub_cache):
    tok = tiny_tokenizer()
    hf = hf_model("mamba", len(tok), tie_word_embeddings=False)
    folder = snapshot(hub_cache, "state-spaces/mamba-tiny-hf")
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    model = HookedMamba.from_pretrained("state-spaces/mamba-tiny-hf", backend="torch").eval()
    tokens = torch.randint(0, len(tok), (2, 23))
    torch.testing.assert_close(model(tokens), hf_logits(hf, tokens), atol=1e-4, rtol=1e-4)
    text = "Hello world, Mamba reads text."
    assert model.tokenizer is not None and model.to_string(model.to_tokens(text)[0]) == text
    torch.testing.assert_close(model(text), hf_logits(hf, model.to_tokens(text)), atol=1e-4, rtol=1e-4)


def test_mamba_ssm_formats_by_hub_name_and_state_spaces_tokenizer(hub_cache):
    """state-spaces/mamba-* and mamba2-*: config.json (d_model, n_layer, ssm_cfg) + pytorch_model.bin,
    no tokenizer: GPT-NeoX's comes from the cache (here: the tiny one under its name)."""
    tok = tiny_tokenizer()
    neox = snapshot(hub_cache, "EleutherAI/gpt-neox-20b")
    tok.save_pretrained(neox)
    (neox / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    for kind, repo, ssm_cfg in [("mamba", "state-spaces/mamba-tiny", {"d_state": 8, "dt_rank": 4}),
                                ("mamba2", "state-spaces/mamba2-tiny", {"layer": "Mamba2", "d_state": 8,
                                                                        "headdim": 8, "chunk_size": 8})]:
        hf = hf_model(kind, len(tok))
        folder = snapshot(hub_cache, repo)
        (folder / "config.json").write_text(json.dumps({
            "d_model": 32, "d_intermediate": 0, "n_layer": 2, "vocab_size": len(tok), "ssm_cfg": ssm_cfg,
            "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True,
            "fused_add_norm": True, "pad_vocab_size_multiple": 8, "tie_embeddings": True}))
        torch.save(mamba_ssm_state(hf), folder / "pytorch_model.bin")
        model = HookedMamba.from_pretrained(repo, backend="torch").eval()
        assert model.cfg.mixer == ("mamba2" if kind == "mamba2" else "mamba1")
        tokens = torch.randint(0, len(tok), (2, 19))
        torch.testing.assert_close(model(tokens), hf_logits(hf, tokens), atol=1e-4, rtol=1e-4)
        assert model.tokenizer is not None and model.to_str_tokens(" 28 92")[0] == " 28"


def test_state_spaces_without_tokenizer_in_cache_says_so(hub_cache):
    hf = hf_model("mamba", 40)
    folder = snapshot(hub_cache, "state-spaces/mamba-tiny")
    (folder / "config.json").write_text(json.dumps({"d_model": 32, "n_layer": 2, "vocab_size": 40,
                                                    "ssm_cfg": {"d_state": 8, "dt_rank": 4}}))
    torch.save(mamba_ssm_state(hf), folder / "pytorch_model.bin")
    model = HookedMamba.from_pretrained("state-spaces/mamba-tiny", backend="torch")
    assert model.tokenizer is None
    with pytest.raises(ValueError, match="gpt-neox-20b") as e:
        model.to_tokens("hello")
    assert "\n" not in str(e.value)
    model.set_tokenizer(tiny_tokenizer())
    assert model.to_tokens("hello").shape[0] == 1


def test_falcon_mamba_by_hub_name(hub_cache):
    """FalconMambaForCausalLM: RMSNorms (no weight) on dt, B and C; exposed as hooks."""
    hf = hf_model("falcon_mamba", 50, mixer_rms_eps=1e-5)
    folder = snapshot(hub_cache, "tiiuae/falcon-mamba-tiny")
    hf.save_pretrained(folder)
    model = HookedMamba.from_pretrained("tiiuae/falcon-mamba-tiny", backend="torch").eval()
    assert model.cfg.bcdt_norm and model.cfg.bcdt_norm_eps == 1e-5
    tokens = torch.randint(0, 50, (2, 21))
    torch.testing.assert_close(model(tokens), hf_logits(hf, tokens), atol=1e-4, rtol=1e-4)
    _, cache = model.run_with_cache(tokens)
    for name in ("hook_dt_pre_norm", "hook_dt_norm", "hook_B_pre_norm", "hook_C_pre_norm"):
        assert f"blocks.1.mixer.{name}" in cache
    rms = cache["blocks.0.mixer.hook_B"].pow(2).mean(-1)
    torch.testing.assert_close(rms, torch.ones_like(rms), atol=1e-3, rtol=0)   # hook_B is the normed B
    with torch.no_grad():   # a norm hook edit changes the output
        edited = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.mixer.hook_dt_norm", lambda t, hook: t * 0)])
    assert not torch.allclose(edited, model(tokens))


def test_codestral_style_mamba2_hf_and_mistral_formats(hub_cache):
    """Mamba-Codestral: Mamba-2 with 8 groups and an untied head, as Mamba2ForCausalLM (config.json +
    safetensors) and as Mistral's params.json + consolidated.safetensors; both match the HF logits."""
    from safetensors.torch import save_file

    hf = hf_model("mamba2", 60, n_groups=8, tie_word_embeddings=False)
    hf_folder = snapshot(hub_cache, "mistralai/Mamba-Codestral-tiny")
    hf.save_pretrained(hf_folder)
    mistral = snapshot(hub_cache, "mistralai/Mamba-Codestral-tiny-mistral")
    (mistral / "params.json").write_text(json.dumps({
        "dim": 32, "n_layers": 2, "vocab_size": 60, "n_groups": 8, "rms_norm": True, "residual_in_fp32": True,
        "fused_add_norm": True, "pad_vocab_size_multiple": 1, "tie_embeddings": False, "model_type": "mamba"}))
    save_file({k: v.contiguous() for k, v in mamba_ssm_state(hf).items()}, str(mistral / "consolidated.safetensors"))
    tokens = torch.randint(0, 60, (2, 17))
    ref = hf_logits(hf, tokens)
    for repo, kw in [("mistralai/Mamba-Codestral-tiny", {}),
                     ("mistralai/Mamba-Codestral-tiny-mistral", {"d_state": 8, "headdim": 8, "chunk_size": 8})]:
        model = HookedMamba.from_pretrained(repo, backend="torch", **kw).eval()
        assert model.cfg.ngroups == 8 and not model.cfg.tie_embeddings
        torch.testing.assert_close(model(tokens), ref, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- revisions, cache location, errors
def test_revisions_and_hf_home(hub_cache, monkeypatch):
    """refs/main, a tag (refs/v1) and a commit hash each give their own snapshot; HF_HOME alone finds the cache."""
    models = {}
    for commit, ref, seed in [(COMMIT, "main", 1), (OTHER_COMMIT, "v1", 2)]:
        hf = hf_model("mamba", 30, seed=seed)
        hf.save_pretrained(snapshot(hub_cache, "org/tiny", commit, ref))
        models[commit] = hf
    tokens = torch.randint(0, 30, (1, 9))
    main = HookedMamba.from_pretrained("org/tiny", backend="torch")
    tag = HookedMamba.from_pretrained("org/tiny", revision="v1", backend="torch")
    commit = HookedMamba.from_pretrained("org/tiny", revision=OTHER_COMMIT, backend="torch")
    torch.testing.assert_close(main(tokens), hf_logits(models[COMMIT], tokens), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(tag(tokens), hf_logits(models[OTHER_COMMIT], tokens), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(commit(tokens), tag(tokens))
    monkeypatch.delenv("HF_HUB_CACHE")
    assert hub_cache_dir() == hub_cache
    torch.testing.assert_close(HookedMamba.from_pretrained("org/tiny", backend="torch")(tokens), main(tokens))
    other = hub_cache.parent / "elsewhere"
    hf_model("mamba", 30, seed=3).save_pretrained(snapshot(other, "org/tiny"))
    elsewhere = HookedMamba.from_pretrained("org/tiny", cache_dir=other, backend="torch")
    assert not torch.allclose(elsewhere(tokens), main(tokens))


def test_errors_are_one_line(hub_cache, tmp_path):
    def one_line(call, match):
        with pytest.raises(CheckpointError, match=match) as e:
            call()
        assert "\n" not in str(e.value)

    one_line(lambda: HookedMamba.from_pretrained("state-spaces/mamba-130m"), "not in the cache")
    one_line(lambda: HookedMamba.from_pretrained("org/tiny", revision="v9"), "not in the cache")
    llama = snapshot(hub_cache, "meta/llama-tiny")
    (llama / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    one_line(lambda: HookedMamba.from_pretrained("meta/llama-tiny"),
             "unsupported architecture LlamaForCausalLM.*supported: .*FalconMambaForCausalLM")
    one_line(lambda: HookedMamba.from_pretrained(tmp_path, revision="main"), "applies to Hub repo ids")
    one_line(lambda: HookedMamba.from_pretrained(tmp_path / "nope"), "does not exist")
    empty = snapshot(hub_cache, "org/no-weights")
    (empty / "config.json").write_text(json.dumps({"model_type": "mamba", "hidden_size": 8, "num_hidden_layers": 1,
                                                   "vocab_size": 10}))
    one_line(lambda: HookedMamba.from_pretrained("org/no-weights"), "no weights in")


def test_names_and_weight_file_choice(tmp_path):
    assert is_repo_id("state-spaces/mamba-130m") and is_repo_id("gpt2")
    assert not is_repo_id(str(tmp_path)) and not is_repo_id("./a/b") and not is_repo_id("a/b/c")
    (tmp_path / "config.json").write_text("{}")
    both = {"config.json", "model.safetensors", "pytorch_model.bin", "consolidated.safetensors"}
    assert weight_files(both, tmp_path) == ["model.safetensors"]
    shards = {"config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
              "consolidated.safetensors", "model.safetensors.index.json"}
    assert weight_files(shards, tmp_path) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert weight_files({"config.json", "pytorch_model.bin"}, tmp_path) == ["pytorch_model.bin"]
    (tmp_path / "config.json").unlink()
    assert weight_files({"params.json", "consolidated.safetensors", "model.safetensors"}, tmp_path) == [
        "consolidated.safetensors"]


def test_dtype_by_name_keeps_ssm_parameters_fp32(hub_cache):
    hf = hf_model("mamba2", 30)
    hf.save_pretrained(snapshot(hub_cache, "org/m2"))
    model = HookedMamba.from_pretrained("org/m2", backend="torch", dtype="bfloat16", tokenizer=None)
    mixer = model.blocks[0].mixer
    assert mixer.in_proj.weight.dtype == torch.bfloat16
    assert mixer.A_log.dtype == mixer.D.dtype == mixer.dt_bias.dtype == torch.float32
    with pytest.raises(CheckpointError, match="dtype must be"):
        HookedMamba.from_pretrained("org/m2", dtype="float8")


def test_patch_cli_on_a_hub_model_with_the_text_task(hub_cache, tmp_path, capsys):
    """`achilles-interp patch --checkpoint org/name --task text-inverse-matching` studies a pretrained
    LM by Hub name (here a random-weight one in the offline cache), prompted through its tokenizer."""
    from achilles_interp.cli import main

    tok = tiny_tokenizer()
    hf = hf_model("mamba", len(tok), tie_word_embeddings=False)
    folder = snapshot(hub_cache, "state-spaces/mamba-tiny-hf")
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    out = tmp_path / "text_assets"
    n_threads = torch.get_num_threads()
    try:
        rc = main(["patch", "--checkpoint", "state-spaces/mamba-tiny-hf", "--task", "text-inverse-matching",
                   "--n", "4", "--eval-examples", "8", "--components", "conv_act", "ssm_state", "gate",
                   "--fusion-examples", "0", "--out", str(out), "--no-progress", "--threads", "1"])
    finally:
        torch.set_num_threads(n_threads)
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    m = summary["models"]["mamba-tiny-hf"]
    assert m["task"] == "text-inverse-matching" and set(m["pairs"]) == {"query", "keys"}
    assert m["probes"] == []  # the slot probe reads the synthetic layout only
