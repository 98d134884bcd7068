"""The Triton selective scan with states (achilles_interp.kernels.triton_scan).

CPU: input checks, the list of positions, and the kernel itself run in Triton's interpreter
(a subprocess with TRITON_INTERPRET=1, tiny sizes) against a sequential float64 loop.
GPU (`pytest -m cuda`): y against mamba_ssm's selective_scan_fn, states against the float64 loop.
"""

import pytest
import torch
import torch.nn.functional as F

from achilles_interp.kernels import triton_scan
from achilles_interp.kernels.triton_scan import TritonUnavailable, selective_scan_states
from triton_interpreter import run_in_interpreter


def rel_err(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def naive_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, h0=None):
    """Sequential float64 scan, one time step at a time: (y [b, d, L], states [b, L, d, n], last)."""
    f = torch.float64
    B = B[:, 0] if B.dim() == 4 else B
    C = C[:, 0] if C.dim() == 4 else C
    dt = delta.to(f) + (0 if delta_bias is None else delta_bias.to(f)[:, None])
    if delta_softplus:
        dt = F.softplus(dt)
    u, A, B, C = u.to(f), A.to(f), B.to(f), C.to(f)
    batch, d, L = u.shape
    h = torch.zeros(batch, d, A.shape[1], dtype=f, device=u.device) if h0 is None else h0.to(f)
    ys, hs = [], []
    for t in range(L):
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]
        y = (h * C[:, None, :, t]).sum(-1)
        if D is not None:
            y = y + D.to(f) * u[:, :, t]
        ys.append(y)
        hs.append(h)
    return torch.stack(ys, -1), torch.stack(hs, 1), h


def make_inputs(batch, d, n, L, device="cpu", dtype=torch.float32, grouped=False):
    u = torch.randn(batch, d, L, device=device).to(dtype)
    delta = (0.5 * torch.randn(batch, d, L, device=device)).to(dtype)
    A = -torch.exp(torch.randn(d, n, device=device) * 0.5)
    B = torch.randn(batch, n, L, device=device).to(dtype)
    C = torch.randn(batch, n, L, device=device).to(dtype)
    if grouped:
        B, C = B[:, None], C[:, None]
    D = torch.randn(d, device=device)
    delta_bias = 0.3 * torch.randn(d, device=device)
    return u, delta, A, B, C, D, delta_bias


# ---------------------------------------------------------------------------------------------
# CPU: no kernel launch
# ---------------------------------------------------------------------------------------------
def test_module_imports_and_cpu_call_is_refused_clearly():
    if triton_scan._interpreting():
        pytest.skip("TRITON_INTERPRET=1 lets the kernel run on CPU")
    u, delta, A, B, C, D, bias = make_inputs(1, 4, 3, 5)
    with pytest.raises(TritonUnavailable, match="CUDA tensors|needs Triton"):
        selective_scan_states(u, delta, A, B, C, D)


@pytest.mark.parametrize("bad, match", [
    (dict(u=torch.randn(2, 4)), "u must be"),
    (dict(delta=torch.randn(1, 4, 6)), "delta must have shape"),
    (dict(A=torch.randn(5, 3)), "A must be"),
    (dict(B=torch.randn(1, 2, 3, 5)), "groups"),
    (dict(B=torch.randn(4, 3)), "input-dependent"),
    (dict(C=torch.randn(1, 2, 5)), "d_state=3"),
    (dict(D=torch.randn(3)), "D must have shape"),
    (dict(u=torch.randn(1, 4, 5, dtype=torch.float64)), "allowed: float32, bfloat16, float16"),
    (dict(u=torch.randint(0, 3, (1, 4, 5))), "allowed"),
    (dict(initial_state=torch.randn(1, 4, 2)), "initial_state must have shape"),
])
def test_bad_inputs_raise_value_errors(bad, match):
    u, delta, A, B, C, D, bias = make_inputs(1, 4, 3, 5)
    kw = dict(u=u, delta=delta, A=A, B=B, C=C, D=D)
    kw.update(bad)
    with pytest.raises(ValueError, match=match):
        selective_scan_states(**kw)


def test_positions():
    mode, pos, P = triton_scan._positions([1, 4, 6], 8, torch.device("cpu"))
    assert (mode, P) == (triton_scan._MODE_LIST, 3)
    assert pos.dtype == torch.int32 and pos.tolist() == [1, 4, 6, -1]
    assert triton_scan._positions("all", 8, "cpu")[::2] == (triton_scan._MODE_ALL, 8)
    assert triton_scan._positions(None, 8, "cpu")[::2] == (triton_scan._MODE_NONE, 0)
    assert triton_scan._positions(torch.tensor([0, 7]), 8, "cpu")[2] == 2
    for bad, match in [([3, 1], "sorted"), ([1, 1], "sorted"), ([8], r"\[0, 8\)"), ([-1], r"\[0, 8\)"),
                       ([], "empty"), ("last", "'all'"), (torch.tensor([[1]]), "1-D"),
                       (torch.tensor([1.0]), "integer")]:
        with pytest.raises(ValueError, match=match):
            triton_scan._positions(bad, 8, "cpu")


# ---------------------------------------------------------------------------------------------
# CPU: the kernel in Triton's interpreter
# ---------------------------------------------------------------------------------------------

def test_kernel_in_triton_interpreter_matches_float64_loop():
    out = run_in_interpreter("""
        import torch
        from tests.test_triton_scan import make_inputs, naive_scan, rel_err
        from achilles_interp.kernels.triton_scan import selective_scan_states
        torch.manual_seed(0)
        b, d, n, L = 2, 5, 3, 9
        u, delta, A, B, C, D, bias = make_inputs(b, d, n, L, grouped=True)
        h0 = torch.randn(b, d, n)
        y, st, last = selective_scan_states(u, delta, A, B, C, D, bias, True, h0, "all")
        yr, sr, lr = naive_scan(u, delta, A, B, C, D, bias, True, h0)
        assert y.dtype == torch.float32 and st.shape == (b, L, d, n) and st.dtype == torch.float32
        assert rel_err(y, yr) < 1e-5 and rel_err(st, sr) < 1e-5 and rel_err(last, lr) < 1e-5
        # positions list, no D / bias / softplus
        y2, st2, last2 = selective_scan_states(u, delta.abs(), A, B, C, state_positions=[0, 4, 8])
        yr2, sr2, lr2 = naive_scan(u, delta.abs(), A, B, C)
        assert st2.shape == (b, 3, d, n)
        assert rel_err(st2, sr2[:, [0, 4, 8]]) < 1e-5 and rel_err(y2, yr2) < 1e-5
        # initial state: second half from the first half's last state == the full scan
        _, _, mid = selective_scan_states(u[..., :4], delta[..., :4], A, B[..., :4], C[..., :4], D, bias,
                                          True, initial_state=h0)
        y_b, st_b, _ = selective_scan_states(u[..., 4:], delta[..., 4:], A, B[..., 4:], C[..., 4:], D, bias,
                                             True, initial_state=mid, state_positions="all")
        assert rel_err(y_b, yr[..., 4:]) < 1e-5 and rel_err(st_b, sr[:, 4:]) < 1e-5
        # time-major bf16 input: y is contiguous [b, d, L] in bf16
        ut = u.transpose(1, 2).contiguous().to(torch.bfloat16).transpose(1, 2)
        y3, st3, _ = selective_scan_states(ut, delta.bfloat16(), A, B.bfloat16(), C.bfloat16(), D, bias, True)
        yr3, _, _ = naive_scan(ut, delta.bfloat16(), A, B.bfloat16(), C.bfloat16(), D, bias, True)
        assert st3 is None and y3.dtype == torch.bfloat16 and y3.is_contiguous()
        assert rel_err(y3, yr3) < 1e-2
        # inference only: backward raises
        Ag = A.clone().requires_grad_(True)
        y4, _, _ = selective_scan_states(u, delta, Ag, B, C)
        try:
            y4.sum().backward()
        except NotImplementedError as e:
            assert "inference-only" in str(e)
        else:
            raise AssertionError("backward did not raise")
        print("OK")
    """)
    assert "OK" in out


def test_trainable_scan_in_triton_interpreter_matches_float64_autograd():
    """The short-sequence scan's Triton backward against autograd through the float64 loop: every
    input's gradient, with and without D, channel-major and time-major (the mixers') inputs."""
    out = run_in_interpreter("""
        import torch
        import torch.nn.functional as F
        from tests.test_triton_scan import make_inputs, naive_scan, rel_err
        from achilles_interp.kernels.triton_scan_grad import selective_scan_trainable
        torch.manual_seed(0)
        for b, d, n, L, with_D, time_major in [(2, 5, 3, 9, True, False), (3, 40, 16, 7, False, True)]:
            u, delta, A, B, C, D, _ = make_inputs(b, d, n, L)
            dt = F.softplus(delta)
            if time_major:
                u, dt, B, C = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (u, dt, B, C))
            leaves = [x.clone().requires_grad_(True) for x in (u, dt, A, B, C, D)]
            ref = [x.detach().double().requires_grad_(True) for x in leaves]
            w = torch.randn(b, d, L)
            y, last = selective_scan_trainable(*leaves[:5], leaves[5] if with_D else None)
            (y * w).sum().backward()
            yr, _, lr = naive_scan(*ref[:5], ref[5] if with_D else None)
            (yr * w.double()).sum().backward()
            assert rel_err(y, yr) < 1e-5 and rel_err(last, lr) < 1e-5 and not last.requires_grad
            names = "u dt A B C D".split()[: 6 if with_D else 5]
            for name, x, r in zip(names, leaves, ref):
                assert rel_err(x.grad, r.grad) < 1e-5, (name, rel_err(x.grad, r.grad))
        # only u and B need gradients; D a strided view; B and C with their group dim [b, 1, n, L]
        D2 = torch.randn(2 * d)[::2]
        ug, Bg = u.detach().clone().requires_grad_(True), B.detach().clone()[:, None].requires_grad_(True)
        y, _ = selective_scan_trainable(ug, dt.detach(), A.detach(), Bg, C.detach()[:, None], D2)
        (y * w).sum().backward()
        ur, Br = u.detach().double().requires_grad_(True), B.detach().double().requires_grad_(True)
        yr2, _, _ = naive_scan(ur, dt.detach().double(), A.detach().double(), Br, C.detach().double(), D2.double())
        (yr2 * w.double()).sum().backward()
        assert rel_err(y, yr2) < 1e-5 and rel_err(Bg.grad[:, 0], Br.grad) < 1e-5 and rel_err(ug.grad, ur.grad) < 1e-5
        # without gradients the forward keeps no state
        from achilles_interp.kernels import triton_scan_grad
        asked, real = [], triton_scan_grad._scan_impl
        triton_scan_grad._scan_impl = lambda *a: asked.append(a[9]) or real(*a)
        with torch.no_grad():
            y3, last3 = selective_scan_trainable(u, dt, A, B, C)
        y4, _ = selective_scan_trainable(u, dt, A.requires_grad_(True), B, C)
        assert asked == [None, "all"]
        assert rel_err(y3, y4) < 1e-6
        print("OK")
    """)
    assert "OK" in out


# ---------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------
def _selective_scan_fn():
    pytest.importorskip("mamba_ssm")
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    return selective_scan_fn


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-3), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("softplus", [True, False])
@pytest.mark.parametrize("grouped", [False, True])
def test_y_matches_mamba_ssm(dtype, tol, softplus, grouped):
    selective_scan_fn = _selective_scan_fn()
    torch.manual_seed(1)
    u, delta, A, B, C, D, bias = make_inputs(3, 200, 16, 333, device="cuda", dtype=dtype, grouped=grouped)
    if not softplus:  # keep dt = delta + delta_bias >= 0, or the scan blows up in both kernels
        delta, bias = delta.abs(), bias.abs()
    with torch.no_grad():
        ref = selective_scan_fn(u, delta, A, B, C, D, z=None, delta_bias=bias, delta_softplus=softplus)
        y, states, last = selective_scan_states(u, delta, A, B, C, D, bias, softplus)
    assert states is None and y.dtype == dtype and y.shape == ref.shape
    assert rel_err(y, ref) <= tol
    _, _, last_ref = naive_scan(u, delta, A, B, C, D, bias, softplus)
    assert rel_err(last, last_ref) <= tol


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("d_state", [16, 5])
def test_states_all_and_listed_match_float64_loop(d_state):
    torch.manual_seed(2)
    u, delta, A, B, C, D, bias = make_inputs(2, 100, d_state, 257, device="cuda")
    yr, sr, lr = naive_scan(u, delta, A, B, C, D, bias, True)
    with torch.no_grad():
        y, st, last = selective_scan_states(u, delta, A, B, C, D, bias, True, state_positions="all")
        pos = [0, 1, 63, 64, 200, 256]
        y2, st2, last2 = selective_scan_states(u, delta, A, B, C, D, bias, True,
                                               state_positions=torch.tensor(pos, device="cuda"))
    assert st.shape == (2, 257, 100, d_state) and st.dtype == torch.float32
    assert rel_err(st, sr) <= 1e-5 and rel_err(y, yr) <= 1e-5 and rel_err(last, lr) <= 1e-5
    assert st2.shape == (2, len(pos), 100, d_state)
    assert rel_err(st2, st[:, pos]) <= 1e-6 and rel_err(y2, y) <= 1e-6 and rel_err(last2, last) <= 1e-6


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_initial_state_continues_the_scan():
    torch.manual_seed(3)
    u, delta, A, B, C, D, bias = make_inputs(2, 96, 16, 300, device="cuda")
    with torch.no_grad():
        y, st, last = selective_scan_states(u, delta, A, B, C, D, bias, True, state_positions="all")
        k = 137
        y1, _, mid = selective_scan_states(u[..., :k], delta[..., :k], A, B[..., :k], C[..., :k], D, bias,
                                           True)
        y2, st2, last2 = selective_scan_states(u[..., k:], delta[..., k:], A, B[..., k:], C[..., k:], D, bias,
                                               True, initial_state=mid, state_positions="all")
    assert rel_err(torch.cat([y1, y2], -1), y) <= 1e-6
    assert rel_err(st2, st[:, k:]) <= 1e-6 and rel_err(last2, last) <= 1e-6


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_time_major_views_and_backward_error():
    torch.manual_seed(4)
    u, delta, A, B, C, D, bias = make_inputs(2, 64, 16, 128, device="cuda")
    tm = [x.transpose(1, 2).contiguous().transpose(1, 2) for x in (u, delta, B, C)]
    with torch.no_grad():
        y, st, _ = selective_scan_states(u, delta, A, B, C, D, bias, True, state_positions=[5, 100])
        y_tm, st_tm, _ = selective_scan_states(*tm[:2], A, *tm[2:], D, bias, True, state_positions=[5, 100])
    assert y_tm.is_contiguous()
    assert rel_err(y_tm, y) <= 1e-6 and rel_err(st_tm, st) <= 1e-6
    y_g, _, _ = selective_scan_states(u, delta, A.clone().requires_grad_(True), B, C, D, bias, True)
    with pytest.raises(NotImplementedError, match="inference-only"):
        y_g.sum().backward()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("L", [8, 29, 100])
def test_trainable_scan_gradients_match_selective_scan_fn_and_float64(L):
    """The short-sequence scan's forward and every gradient against mamba_ssm's selective_scan_fn (the
    peer it replaces) and against autograd through the float64 loop, at the paper's width."""
    from achilles_interp.kernels.triton_scan_grad import selective_scan_trainable

    selective_scan_fn = _selective_scan_fn()
    torch.manual_seed(5)
    u, delta, A, B, C, D, _ = make_inputs(64, 256, 16, L, device="cuda")
    dt = F.softplus(delta)
    w = torch.randn_like(u)
    grads = {}
    for name in ("triton", "mamba_ssm", "float64"):
        leaves = [x.detach().clone().double() if name == "float64" else x.detach().clone()
                  for x in (u, dt, A, B, C, D)]
        for x in leaves:
            x.requires_grad_(True)
        if name == "triton":
            y = selective_scan_trainable(*leaves)[0]
        elif name == "mamba_ssm":
            y = selective_scan_fn(*leaves[:5], leaves[5], z=None, delta_bias=None, delta_softplus=False)
        else:
            y = naive_scan(*leaves)[0]
        (y * w.to(y.dtype)).sum().backward()
        grads[name] = [y] + [x.grad for x in leaves]
    for k, name in enumerate("y u dt A B C D".split()):
        assert rel_err(grads["triton"][k], grads["float64"][k]) <= 1e-5, name
        assert rel_err(grads["triton"][k], grads["mamba_ssm"][k]) <= 1e-3, name
