"""The ops layer (achilles_interp.ops): one interface, a PyTorch and a CUDA implementation.

CPU: the CUDA implementation's guard for the fused path is evaluated with the kernels replaced by the
reference (no kernel is called): every kind of hook on any module inside a mixer keeps that mixer off
the fused path. The CUDA implementation's state-emitting scans run in Triton's interpreter against the
reference. GPU: tests/test_cuda_backend.py.
"""

import warnings

import pytest
import torch

from achilles_interp import HookedMamba, MambaConfig, ops
from achilles_interp.kernels import cuda_ops
from achilles_interp.ops import CudaOps, TorchOps
from triton_interpreter import run_in_interpreter

pytestmark = pytest.mark.usefixtures("one_thread")
V, L_ = 30, 9


def make(mixer):
    cfg = MambaConfig(d_model=16, n_layers=2, vocab_size=V, mixer=mixer, d_state=4, headdim=8)
    return HookedMamba(cfg, backend="torch").eval()


@pytest.fixture
def fake_cuda(monkeypatch):
    """Models resolve to the CUDA ops, whose kernels are replaced by the reference; the fused path
    is recorded (layer index) and computes the unfused reference forward."""
    fused_layers = []

    def fused(self, mixer, hidden):
        fused_layers.append(mixer.layer_idx)
        return type(mixer).forward(mixer, hidden, None, ops.TORCH_OPS)

    monkeypatch.setattr(cuda_ops, "kernels_available", lambda: True)
    monkeypatch.setattr(ops, "resolve_backend", lambda backend, device: "cuda")
    for name in ("conv", "selective_scan", "ssd_scan"):
        monkeypatch.setattr(CudaOps, name, getattr(TorchOps, name))
    monkeypatch.setattr(CudaOps, "fused", fused)
    return fused_layers


@pytest.mark.parametrize("mixer", ["mamba1", "mamba2"])
def test_fused_only_where_nothing_observes_the_mixer(mixer, fake_cuda):
    model = make(mixer)
    tokens = torch.randint(0, V, (2, L_))
    with torch.no_grad():
        ref = model.run_with_hooks(tokens, fwd_hooks=[(lambda name: True, lambda t, hook: None)])
        assert model.resolved_backend() == "cuda" and fake_cuda == []
        torch.testing.assert_close(model(tokens), ref)
        assert fake_cuda == [0, 1], "no hook: every mixer fused"

        seen = []
        m0, m1 = model.blocks[0].mixer, model.blocks[1].mixer
        cases = [
            (lambda: m0.hook_conv_act.register_forward_hook(lambda mod, i, o: seen.append("fwd")), [1]),
            (lambda: m1.hook_dt.register_forward_pre_hook(lambda mod, i: seen.append("pre")), [0]),
            (lambda: m1.hook_ssm_out.register_full_backward_hook(lambda mod, gi, go: None), [0]),
            (lambda: m0.out_proj.register_forward_hook(lambda mod, i, o: seen.append("proj")), [1]),
            (lambda: m1.hook_ssm_state.register_forward_hook(lambda mod, i, o: seen.append("state")), [0]),
        ]
        for register, fused in cases:
            handle = register()
            fake_cuda.clear()
            out = model(tokens)
            handle.remove()
            assert fake_cuda == fused
            torch.testing.assert_close(out, ref)
        assert seen == ["fwd", "pre", "proj", "state"]

        fake_cuda.clear()
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.mixer.hook_gate", lambda t, hook: None)])
        assert fake_cuda == [1], "TransformerLens hook"
        fake_cuda.clear()
        model(tokens, ssm_state_positions=[3])
        assert fake_cuda == [], "states asked for"


@pytest.mark.parametrize("mixer", ["mamba1", "mamba2"])
def test_nnsight_keeps_the_mixers_it_reads_off_the_fused_path(mixer, fake_cuda):
    from achilles_interp.nnsight_support import trace
    model = make(mixer)
    tokens = torch.randint(0, V, (2, L_))
    nn_model = trace(model)
    with nn_model.trace(tokens):
        co = nn_model.backbone.layers[0].mixer.hook_conv_out.output.save()
        st = nn_model.backbone.layers[0].mixer.hook_ssm_state.output.save()
    assert fake_cuda == [1], "layer 0 is read, layer 1 is not"
    _, cache = model.run_with_cache(tokens, ssm_state_positions="all")
    torch.testing.assert_close(co, cache["blocks.0.mixer.hook_conv_out"])
    torch.testing.assert_close(st, cache["blocks.0.mixer.hook_ssm_state"])
    fake_cuda.clear()
    with torch.no_grad():
        model(tokens)
    assert fake_cuda == [0, 1], "outside a trace nnsight's controllers are inert"


@pytest.mark.parametrize("mixer", ["mamba1", "mamba2"])
def test_short_mamba1_sequences_leave_the_fused_path(mixer, fake_cuda, monkeypatch):
    """The short-sequence policy: Mamba-1 sequences up to ``short_scan_max_len`` tokens run unfused (their
    scan is the Triton one); longer ones, and Mamba-2 at any length, stay fused."""
    model = make(mixer)
    monkeypatch.setattr(ops.CUDA_OPS, "short_scan_max_len", L_)
    with torch.no_grad():
        model(torch.randint(0, V, (2, L_)))
        assert fake_cuda == ([] if mixer == "mamba1" else [0, 1])
        fake_cuda.clear()
        model(torch.randint(0, V, (2, L_ + 1)))
        assert fake_cuda == [0, 1]


def test_short_scan_length_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("ACHILLES_INTERP_SHORT_SCAN_MAX_LEN", "128")
    assert CudaOps().short_scan_max_len == 128
    assert CudaOps(short_scan_max_len=0).short_scan_max_len == 0
    monkeypatch.delenv("ACHILLES_INTERP_SHORT_SCAN_MAX_LEN")
    assert CudaOps().short_scan_max_len == 0, "off unless asked for"
    for bad in ("-1", "lots", "1.5", "\u00b2"):
        monkeypatch.setenv("ACHILLES_INTERP_SHORT_SCAN_MAX_LEN", bad)
        with pytest.raises(ops.UserError, match="whole number of tokens"):
            CudaOps().short_scan_max_len


def test_guard_is_the_only_backend_test_in_the_mixers():
    """The mixers take their arithmetic from the ops passed in: nothing else names a backend."""
    import inspect

    from achilles_interp import mamba1, mamba2, mixer_base
    for mod in (mamba1, mamba2, mixer_base):
        src = inspect.getsource(mod)
        assert "cuda" not in src.replace("cuda_ops", ""), mod.__name__


def test_torch_ops_match_the_reference_functions():
    from achilles_interp.reference_ops import selective_scan_ref, ssd_scan_ref
    g = torch.Generator().manual_seed(0)
    b, L, d, n = 2, 11, 3, 4
    u, dt = torch.randn(b, L, d, generator=g), torch.rand(b, L, d, generator=g)
    A, B, C, D = -torch.rand(d, n, generator=g), torch.randn(b, L, n, generator=g), torch.randn(b, L, n, generator=g), \
        torch.randn(d, generator=g)
    pos = torch.tensor([9, 2, 5])
    y, st, last = ops.TORCH_OPS.selective_scan(u, dt, A, B, C, D, positions=pos)
    yr, str_, lr = selective_scan_ref(u, dt, A, B, C, D, state_positions=[9, 2, 5])
    torch.testing.assert_close((y, st, last), (yr, str_, lr))
    H, P = 4, 2
    x, dt2 = torch.randn(b, L, H, P, generator=g), torch.rand(b, L, H, generator=g)
    A2, B2, C2, D2 = -torch.rand(H, generator=g), torch.randn(b, L, 2, n, generator=g), \
        torch.randn(b, L, 2, n, generator=g), torch.randn(H, generator=g)
    y, st, last = ops.TORCH_OPS.ssd_scan(x, dt2, A2, B2, C2, D2, 8)
    yr, _, lr = ssd_scan_ref(x, dt2, A2, B2, C2, D2)
    assert st is None
    torch.testing.assert_close((y, last), (yr, lr), rtol=1e-5, atol=1e-5)


def test_cuda_ops_state_scans_in_triton_interpreter():
    """The CUDA ops' scan-with-states entries (Mamba-1: the Triton selective scan; Mamba-2: y from
    mamba_chunk_scan_combined with the states of a few positions from ``ssd_states_at``, or the Triton
    SSD scan for many) against the reference, with positions in any order and a start state. mamba_ssm
    does not run here: its y is stood in for by the reference's chunked scan, so what is tested is the
    composition and the states."""
    out = run_in_interpreter("""
        import torch
        from achilles_interp.kernels import cuda_ops
        from achilles_interp.ops import CUDA_OPS, TORCH_OPS
        from achilles_interp.reference_ops import ssd_chunked_ref
        calls = []
        def mcsc_stand_in(x, dt, A, B, C, D, h0, chunk_size):
            calls.append(chunk_size)
            return ssd_chunked_ref(x, dt, A, B, C, D, h0=h0, chunk=chunk_size)
        cuda_ops.ssd_scan_cuda = mcsc_stand_in
        torch.manual_seed(0)
        b, L, d, n = 2, 10, 5, 4
        u, dt = torch.randn(b, L, d), torch.rand(b, L, d) * 0.5
        A, B, C, D = -torch.rand(d, n) * 2, torch.randn(b, L, n), torch.randn(b, L, n), torch.randn(d)
        h0, pos = torch.randn(b, d, n), torch.tensor([7, 1, 4])
        got = CUDA_OPS.selective_scan(u, dt, A, B, C, D, h0, pos)
        ref = TORCH_OPS.selective_scan(u, dt, A, B, C, D, h0, pos)
        for g_, r_ in zip(got, ref):
            torch.testing.assert_close(g_, r_, rtol=1e-5, atol=1e-5)
        H, P, G, N = 4, 8, 2, 16
        x, dt2 = torch.randn(b, L, H, P), torch.rand(b, L, H) * 0.5
        A2, B2, C2, D2 = -torch.rand(H) * 2, torch.randn(b, L, G, N), torch.randn(b, L, G, N), torch.randn(H)
        h02 = torch.randn(b, H, P, N)
        for positions in (pos, torch.arange(L)):
            got = CUDA_OPS.ssd_scan(x, dt2, A2, B2, C2, D2, 4, h02, positions)
            ref = TORCH_OPS.ssd_scan(x, dt2, A2, B2, C2, D2, 4, h02, positions)
            for g_, r_ in zip(got, ref):
                torch.testing.assert_close(g_, r_, rtol=1e-4, atol=1e-4)
        assert calls == [4], calls   # 3 positions: mcsc's y + ssd_states_at; all 10: the state-emitting scan
        print("OK")
    """)
    assert "OK" in out


def test_missing_ssd_states_kernel_falls_back_with_one_warning(monkeypatch):
    import sys
    ops._ssd_states_kernels.cache_clear()
    monkeypatch.setitem(sys.modules, "achilles_interp.kernels.ssd_states", None)   # import fails
    called = []
    monkeypatch.setattr(TorchOps, "ssd_scan", lambda self, *a, **k: called.append(1) or (None, None, None))
    x = torch.zeros(1, 3, 2, 2)
    try:
        with pytest.warns(UserWarning, match="fall back to the PyTorch reference"):
            ops.CUDA_OPS.ssd_scan(x, x[..., 0], torch.zeros(2), x, x, None, 4, positions=torch.arange(3))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ops.CUDA_OPS.ssd_scan(x, x[..., 0], torch.zeros(2), x, x, None, 4, positions=torch.arange(3))
    finally:
        ops._ssd_states_kernels.cache_clear()
    assert called == [1, 1]


def test_conv_layout_rule_matches_causal_conv1d_channel_last_requirements():
    """Which time-major x go to causal-conv1d's channel-last kernel without a copy: channels and strides
    multiples of 8 and a 16-byte aligned first element (the kernel's checks and its vector loads)."""
    ok = cuda_ops._channel_last_ok
    x = torch.zeros(2, 7, 32)
    assert ok(x.transpose(1, 2))                                  # contiguous time-major
    assert ok(x[..., :16].transpose(1, 2))                        # Mamba-1's x: a chunk of in_proj's output
    assert ok(x[..., 16:].transpose(1, 2))                        # a later chunk, still 64-byte aligned
    assert not ok(x[..., 1:9].transpose(1, 2))                    # 4 bytes in: misaligned vector loads
    assert not ok(torch.zeros(2, 7, 12).transpose(1, 2))          # channels not a multiple of 8
    assert not ok(x.transpose(1, 2).contiguous())                 # channel-first: the other kernel
    assert not ok(x[:, :1].expand(2, 7, 32).transpose(1, 2))      # time stride 0: read as channel-first
