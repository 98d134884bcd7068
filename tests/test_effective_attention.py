"""Effective attention (achilles_interp.kernels.effective_attention), Mamba-1 and Mamba-2 (SSD).

CPU: the PyTorch implementation against a brute-force float64 oracle that materialises every
[c, n, L, L] term from the product form prod_k exp(dt_k A), an analytic case (A = 0), the reduce
modes and channel subsets, and the identity y_i = sum_j M[c, i, j] u_j + D u_i against a
sequential scan. The Triton kernel runs in Triton's interpreter (subprocess, tiny sizes).
GPU (`pytest -m cuda`): the Triton kernel against the float64 PyTorch implementation.
Mamba-2: the same checks (brute force per head from the product form, the identity
y_i = sum_j M[h, i, j] x_j + D x_i against the float64 SSD loop, reduce modes, head subsets, groups).
"""

import textwrap

import pytest
import torch
import torch.nn.functional as F

from triton_interpreter import run_in_interpreter

from achilles_interp.kernels.effective_attention import (
    effective_attention,
    effective_attention_torch,
    effective_attention_triton,
    ssd_effective_attention,
    ssd_effective_attention_torch,
    ssd_effective_attention_triton,
)
from test_ssd_states import make_inputs as ssd_inputs
from test_ssd_states import naive_ssd

def rel_err(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make_inputs(batch, d, n, L, device="cpu", dtype=torch.float64):
    g = torch.Generator().manual_seed(batch * 1000 + d * 100 + n * 10 + L)
    delta = 0.7 * torch.randn(batch, d, L, generator=g, dtype=torch.float64)
    A = -torch.exp(0.5 * torch.randn(d, n, generator=g, dtype=torch.float64))
    B = torch.randn(batch, n, L, generator=g, dtype=torch.float64)
    C = torch.randn(batch, n, L, generator=g, dtype=torch.float64)
    bias = 0.3 * torch.randn(d, generator=g, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype) for t in (delta, A, B, C, bias)]


def brute_force(delta, A, B, C, delta_bias=None, delta_softplus=False):
    """Materialise T[b, c, n, i, j] = C_i[n] * prod_{k=j+1..i} exp(dt_k A[c, n]) * B_j[n] dt_j in float64."""
    f = torch.float64
    dt = delta.to(f) + (0 if delta_bias is None else delta_bias.to(f)[:, None])
    if delta_softplus:
        dt = F.softplus(dt)
    A, B, C = A.to(f), B.to(f), C.to(f)
    batch, d, L = dt.shape
    n = A.shape[1]
    T = torch.zeros(batch, d, n, L, L, dtype=f)
    for i in range(L):
        for j in range(i + 1):
            decay = torch.ones(batch, d, n, dtype=f)
            for k in range(j + 1, i + 1):
                decay = decay * torch.exp(dt[:, :, k, None] * A)
            T[:, :, :, i, j] = C[:, None, :, i] * decay * B[:, None, :, j] * dt[:, :, j, None]
    return T.sum(2)


def sequential_scan_y(u, delta, A, B, C, D, delta_bias=None, delta_softplus=False):
    """y [b, d, L] from h_t = exp(dt A) h + dt B u, y = C.h + D u, one step at a time (float64)."""
    f = torch.float64
    dt = delta.to(f) + (0 if delta_bias is None else delta_bias.to(f)[:, None])
    if delta_softplus:
        dt = F.softplus(dt)
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=f)
    ys = []
    for t in range(u.shape[2]):
        x_t = (dt[:, :, t] * u[:, :, t].to(f))[..., None] * B[:, None, :, t].to(f)
        h = torch.exp(dt[:, :, t, None] * A.to(f)) * h + x_t
        ys.append((h * C[:, None, :, t].to(f)).sum(-1) + D.to(f) * u[:, :, t].to(f))
    return torch.stack(ys, -1)


# ---------------------------------------------------------------------------------------------
# CPU
# ---------------------------------------------------------------------------------------------
def test_torch_matches_brute_force_float64():
    delta, A, B, C, bias = make_inputs(2, 3, 4, 7)
    ref = brute_force(delta, A, B, C, bias, True)
    M = effective_attention(delta, A, B, C, bias, True, out_dtype=torch.float64)   # CPU -> torch
    assert M.shape == (2, 3, 7, 7) and M.dtype == torch.float64
    assert rel_err(M, ref) < 1e-12
    assert torch.all(M.triu(1) == 0)
    # float32 inputs: float32 arithmetic, still close
    M32 = effective_attention(*(t.float() for t in (delta, A, B, C, bias)), delta_softplus=True)
    assert M32.dtype == torch.float32 and rel_err(M32, ref) < 1e-5


def test_analytic_case_A_zero():
    delta, A, B, C, _ = make_inputs(1, 3, 4, 7)
    dt = delta.abs()
    M = effective_attention_torch(dt, torch.zeros_like(A), B, C, out_dtype=torch.float64)
    expected = torch.einsum("bni,bnj,bcj->bcij", C, B, dt).tril()        # C_i . B_j dt_j for j <= i
    assert rel_err(M, expected) < 1e-13


def test_reduce_modes_channels_and_chunking():
    delta, A, B, C, bias = make_inputs(2, 5, 3, 9)
    full = effective_attention_torch(delta, A, B, C, bias, True, out_dtype=torch.float64)
    # one channel per chunk: same numbers
    chunked = effective_attention_torch(delta, A, B, C, bias, True, out_dtype=torch.float64,
                                        max_chunk_elems=1)
    assert torch.allclose(chunked, full, rtol=0, atol=1e-14)
    s = effective_attention_torch(delta, A, B, C, bias, True, reduce="sum", out_dtype=torch.float64,
                                  max_chunk_elems=2 * 9 * 9 * 2)
    a = effective_attention_torch(delta, A, B, C, bias, True, reduce="abs_sum", out_dtype=torch.float64)
    assert s.shape == a.shape == (2, 9, 9)
    assert torch.allclose(s, full.sum(1), atol=1e-13) and torch.allclose(a, full.abs().sum(1), atol=1e-13)
    sub = effective_attention_torch(delta, A, B, C, bias, True, channels=torch.tensor([4, 1]),
                                    out_dtype=torch.float64)
    assert torch.allclose(sub, full[:, [4, 1]], rtol=0, atol=1e-14)
    sub_sum = effective_attention_torch(delta, A, B, C, bias, True, channels=[4, 1], reduce="sum",
                                        out_dtype=torch.float64)
    assert torch.allclose(sub_sum, full[:, [4, 1]].sum(1), atol=1e-13)
    low = effective_attention_torch(delta, A, B, C, bias, True, out_dtype=torch.bfloat16)
    assert low.dtype == torch.bfloat16
    # [batch, 1, d_state, L] B / C (selective_scan_fn's grouped layout) is accepted
    grouped = effective_attention_torch(delta, A, B[:, None], C[:, None], bias, True, out_dtype=torch.float64)
    assert torch.allclose(grouped, full, rtol=0, atol=1e-14)


def test_attention_reproduces_scan_output():
    delta, A, B, C, bias = make_inputs(2, 4, 5, 23)
    u = torch.randn(2, 4, 23, dtype=torch.float64)
    D = torch.randn(4, dtype=torch.float64)
    M = effective_attention(delta, A, B, C, bias, True, out_dtype=torch.float64)
    y_attn = torch.einsum("bcij,bcj->bci", M, u) + D[:, None] * u
    y_scan = sequential_scan_y(u, delta, A, B, C, D, bias, True)
    assert rel_err(y_attn, y_scan) < 1e-12


def test_long_sequence_precision():
    """Delta_i - Delta_j stays accurate when the cumulative step is large (float32 inputs)."""
    delta, A, B, C, bias = make_inputs(1, 2, 4, 300)
    delta = delta.abs() + 5.0           # cumulative step ~1700 at the end
    A = A * 1e-3                         # slow decay so far-apart pairs still matter
    ref = effective_attention_torch(delta, A, B, C, out_dtype=torch.float64)
    M32 = effective_attention_torch(delta.float(), A.float(), B.float(), C.float())
    assert rel_err(M32, ref) < 1e-5


@pytest.mark.parametrize("kw, match", [
    (dict(reduce="mean"), "reduce must be"),
    (dict(channels=[0, 9]), r"channels must lie in \[0, 3\)"),
    (dict(channels=[]), "non-empty"),
    (dict(channels=torch.tensor([0.5])), "channel indices"),
    (dict(delta_bias=torch.zeros(4)), "delta_bias must be"),
])
def test_bad_arguments(kw, match):
    delta, A, B, C, _ = make_inputs(1, 3, 2, 5)
    with pytest.raises(ValueError, match=match):
        effective_attention(delta, A, B, C, **kw)
    with pytest.raises(ValueError, match="B must be"):
        effective_attention(delta, A, B[..., :4], C)
    with pytest.raises(ValueError, match="backend"):
        effective_attention(delta, A, B, C, backend="cuda")
    with pytest.raises(TypeError, match="delta must be a torch.Tensor, got list"):
        effective_attention(delta.tolist(), A, B, C)
    with pytest.raises(ValueError, match="A has dtype complex64; allowed: float32, float64, bfloat16, float16 "
                       r"\(real A only\)"):
        effective_attention(delta, A.to(torch.complex64), B, C)




def test_triton_kernel_in_interpreter():
    pytest.importorskip("triton")
    body = textwrap.dedent("""
        import torch
        from tests.test_effective_attention import make_inputs, rel_err
        from achilles_interp.kernels.effective_attention import (
            effective_attention_torch, effective_attention_triton)
        # 3 tiles of 16: diagonal, off-diagonal and a ragged last tile
        delta, A, B, C, bias = make_inputs(2, 3, 5, 37)
        ref = effective_attention_torch(delta, A, B, C, bias, True, out_dtype=torch.float64)
        f = [t.float() for t in (delta, A, B, C, bias)]
        M = effective_attention_triton(*f[:4], f[4], True, block=16)
        assert M.shape == ref.shape and rel_err(M, ref) < 1e-5, rel_err(M, ref)
        s = effective_attention_triton(*f[:4], f[4], True, reduce="sum", block=16)
        a = effective_attention_triton(*f[:4], f[4], True, reduce="abs_sum", block=16, channels=[2, 0])
        assert rel_err(s, ref.sum(1)) < 1e-5 and rel_err(a, ref[:, [2, 0]].abs().sum(1)) < 1e-5
        print("OK")
    """)
    assert "OK" in run_in_interpreter(body)


# ---------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("L, d_state", [(200, 16), (64, 16), (333, 5)])
def test_triton_matches_float64_torch(L, d_state):
    delta, A, B, C, bias = make_inputs(2, 24, d_state, L)
    ref = effective_attention_torch(delta, A, B, C, bias, True, out_dtype=torch.float64)
    g = [t.float().cuda() for t in (delta, A, B, C, bias)]
    M = effective_attention(*g[:4], g[4], True)                       # CUDA -> Triton
    assert M.is_cuda and M.shape == ref.shape
    assert rel_err(M, ref) < 1e-5
    assert torch.all(M.triu(1) == 0)
    s = effective_attention(*g[:4], g[4], True, reduce="sum")
    a = effective_attention(*g[:4], g[4], True, reduce="abs_sum")
    assert rel_err(s, ref.sum(1)) < 1e-5 and rel_err(a, ref.abs().sum(1)) < 1e-5
    ch = torch.tensor([23, 0, 7], device="cuda")
    sub = effective_attention(*g[:4], g[4], True, channels=ch, out_dtype=torch.bfloat16)
    assert sub.dtype == torch.bfloat16 and rel_err(sub, ref[:, [23, 0, 7]]) < 1e-2
    for block in (16, 32, 128):
        assert rel_err(effective_attention_triton(*g[:4], g[4], True, block=block), ref) < 1e-5


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_triton_attention_reproduces_scan():
    delta, A, B, C, bias = make_inputs(1, 32, 16, 700)
    u = torch.randn(1, 32, 700, dtype=torch.float64)
    D = torch.randn(32, dtype=torch.float64)
    y_scan = sequential_scan_y(u, delta, A, B, C, D, bias, True)
    M = effective_attention(*(t.float().cuda() for t in (delta, A, B, C, bias)), delta_softplus=True)
    y_attn = torch.einsum("bcij,bcj->bci", M.double().cpu(), u) + D[:, None] * u
    assert rel_err(y_attn, y_scan) < 1e-5


# =============================================================================================
# Mamba-2 (SSD)
# =============================================================================================
def ssd_brute_force(dt, A, B, C, dt_bias=None, dt_softplus=True):
    """M[b, h, i, j] = C_i . B_j * prod_{k=j+1..i} exp(dt_k A_h) * dt_j, float64, one entry at a time."""
    f = torch.float64
    d = dt.to(f) + (0 if dt_bias is None else dt_bias.to(f))
    d = F.softplus(d) if dt_softplus else d.clamp_min(0)
    batch, L, H = d.shape
    rep = H // B.shape[2]
    Bh, Ch = B.to(f).repeat_interleave(rep, 2), C.to(f).repeat_interleave(rep, 2)
    M = torch.zeros(batch, H, L, L, dtype=f)
    for i in range(L):
        for j in range(i + 1):
            decay = torch.ones(batch, H, dtype=f)
            for k in range(j + 1, i + 1):
                decay = decay * torch.exp(d[:, k] * A.to(f))
            M[:, :, i, j] = (Ch[:, i] * Bh[:, j]).sum(-1) * decay * d[:, j]
    return M


def test_ssd_torch_matches_brute_force_and_reproduces_the_scan():
    x, dt, A, B, C, D, bias, _ = ssd_inputs(2, 9, 4, 3, 2, 5, seed=11)
    ref = ssd_brute_force(dt, A, B, C, bias)
    M = ssd_effective_attention(dt, A, B, C, bias, out_dtype=torch.float64)      # CPU -> torch
    assert M.shape == (2, 4, 9, 9) and M.dtype == torch.float64
    assert rel_err(M, ref) < 1e-12 and torch.all(M.triu(1) == 0)
    M32 = ssd_effective_attention(*(t.float() for t in (dt, A, B, C, bias)))
    assert M32.dtype == torch.float32 and rel_err(M32, ref) < 1e-5
    # y_i[h, p] = sum_j M[h, i, j] x_j[h, p] + D[h] x_i[h, p], against the float64 loop (L 40)
    x, dt, A, B, C, D, bias, _ = ssd_inputs(2, 40, 4, 3, 2, 5, seed=12)
    M = ssd_effective_attention_torch(dt, A, B, C, bias, out_dtype=torch.float64)
    y = torch.einsum("bhij,bjhp->bihp", M, x) + D[:, None] * x
    assert rel_err(y, naive_ssd(x, dt, A, B, C, D, bias)[0]) < 1e-12
    # dt_softplus=False: negative dt clamps to 0 (dt_limit), as in the scan
    M0 = ssd_effective_attention_torch(dt, A, B, C, dt_softplus=False, out_dtype=torch.float64)
    y0 = torch.einsum("bhij,bjhp->bihp", M0, x)
    assert rel_err(y0, naive_ssd(x, dt, A, B, C, None, None, False)[0]) < 1e-12


def test_ssd_reduce_modes_heads_and_chunking():
    _, dt, A, B, C, _, bias, _ = ssd_inputs(2, 11, 6, 2, 3, 4, seed=13)
    full = ssd_effective_attention_torch(dt, A, B, C, bias, out_dtype=torch.float64)
    one = ssd_effective_attention_torch(dt, A, B, C, bias, out_dtype=torch.float64, max_chunk_elems=1)
    assert torch.allclose(one, full, rtol=0, atol=1e-14)
    s = ssd_effective_attention_torch(dt, A, B, C, bias, reduce="sum", out_dtype=torch.float64)
    a = ssd_effective_attention_torch(dt, A, B, C, bias, reduce="abs_sum", out_dtype=torch.float64)
    assert s.shape == a.shape == (2, 11, 11)
    assert torch.allclose(s, full.sum(1), atol=1e-13) and torch.allclose(a, full.abs().sum(1), atol=1e-13)
    sub = ssd_effective_attention_torch(dt, A, B, C, bias, heads=torch.tensor([5, 0, 3]), out_dtype=torch.float64)
    assert torch.allclose(sub, full[:, [5, 0, 3]], rtol=0, atol=1e-14)
    sub_sum = ssd_effective_attention_torch(dt, A, B, C, bias, heads=[5, 0], reduce="sum", out_dtype=torch.float64)
    assert torch.allclose(sub_sum, full[:, [5, 0]].sum(1), atol=1e-13)
    assert ssd_effective_attention_torch(dt, A, B, C, bias, out_dtype=torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize("kw, match", [
    (dict(reduce="mean"), "reduce must be"),
    (dict(heads=[0, 9]), r"heads must lie in \[0, 4\)"),
    (dict(heads=[]), "non-empty"),
    (dict(dt_bias=torch.zeros(3)), "dt_bias must be"),
    (dict(A=torch.zeros(4, 2)), "A must be"),
    (dict(B=torch.zeros(1, 5, 3, 2), C=torch.zeros(1, 5, 3, 2)), "ngroups"),
    (dict(backend="cuda"), "backend"),
])
def test_ssd_bad_arguments(kw, match):
    _, dt, A, B, C, _, _, _ = ssd_inputs(1, 5, 4, 2, 2, 2)
    args = dict(dt=dt, A=A, B=B, C=C)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        ssd_effective_attention(**args)
    with pytest.raises(TypeError, match="dt must be a torch.Tensor, got list"):
        ssd_effective_attention(dt.tolist(), A, B, C)


def test_ssd_triton_kernel_in_interpreter():
    pytest.importorskip("triton")
    body = textwrap.dedent("""
        import torch
        from tests.test_effective_attention import rel_err
        from tests.test_ssd_states import make_inputs
        from achilles_interp.kernels.effective_attention import (
            ssd_effective_attention_torch, ssd_effective_attention_triton)
        # 3 tiles of 16 (diagonal, off-diagonal, a ragged last tile); 2 groups of 2 heads
        _, dt, A, B, C, _, bias, _ = make_inputs(2, 37, 4, 2, 2, 5, seed=14)
        ref = ssd_effective_attention_torch(dt, A, B, C, bias, out_dtype=torch.float64)
        f = [t.float() for t in (dt, A, B, C, bias)]
        M = ssd_effective_attention_triton(*f[:4], f[4], block=16)
        assert M.shape == ref.shape and rel_err(M, ref) < 1e-5, rel_err(M, ref)
        s = ssd_effective_attention_triton(*f[:4], f[4], reduce="sum", block=16)
        a = ssd_effective_attention_triton(*f[:4], f[4], reduce="abs_sum", block=16, heads=[3, 0, 1])
        sub = ssd_effective_attention_triton(*f[:4], f[4], block=16, heads=[3, 0, 1])
        assert rel_err(s, ref.sum(1)) < 1e-5 and rel_err(a, ref[:, [3, 0, 1]].abs().sum(1)) < 1e-5
        assert rel_err(sub, ref[:, [3, 0, 1]]) < 1e-5
        # d_state 40 (C B^T over three blocks of 16), 3 groups, and reduced maps split over 3 programs
        # per tile pair (partial sums), as on a GPU with few tiles
        import achilles_interp.kernels.effective_attention as E
        _, dt, A, B, C, _, bias, _ = make_inputs(1, 20, 6, 2, 3, 40, seed=16)
        ref = ssd_effective_attention_torch(dt, A, B, C, bias, out_dtype=torch.float64)
        f = [t.float() for t in (dt, A, B, C, bias)]
        assert rel_err(ssd_effective_attention_triton(*f[:4], f[4], block=16), ref) < 1e-5
        E._ssd_reduce_jobs = lambda *a: 3
        s = ssd_effective_attention_triton(*f[:4], f[4], reduce="sum", block=16, heads=[4, 0, 5, 1, 2])
        assert rel_err(s, ref[:, [4, 0, 5, 1, 2]].sum(1)) < 1e-5
        print("OK")
    """)
    assert "OK" in run_in_interpreter(body)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("L, G, d_state", [(200, 1, 128), (64, 2, 16), (333, 8, 5)])
def test_ssd_triton_matches_float64_torch(L, G, d_state):
    _, dt, A, B, C, _, bias, _ = ssd_inputs(2, L, 24, 2, G, d_state, seed=L)
    ref = ssd_effective_attention_torch(dt, A, B, C, bias, out_dtype=torch.float64)
    g = [t.float().cuda() for t in (dt, A, B, C, bias)]
    M = ssd_effective_attention(*g[:4], g[4])                           # CUDA -> Triton
    assert M.is_cuda and M.shape == ref.shape and rel_err(M, ref) < 1e-5
    assert torch.all(M.triu(1) == 0)
    s = ssd_effective_attention(*g[:4], g[4], reduce="sum")
    a = ssd_effective_attention(*g[:4], g[4], reduce="abs_sum")
    assert rel_err(s, ref.sum(1)) < 1e-5 and rel_err(a, ref.abs().sum(1)) < 1e-5
    hs = torch.tensor([23, 0, 7], device="cuda")
    sub = ssd_effective_attention(*g[:4], g[4], heads=hs, out_dtype=torch.bfloat16)
    assert sub.dtype == torch.bfloat16 and rel_err(sub, ref[:, [23, 0, 7]]) < 1e-2
    for block in (16, 32, 128):
        assert rel_err(ssd_effective_attention_triton(*g[:4], g[4], block=block), ref) < 1e-5


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_ssd_triton_attention_reproduces_scan():
    x, dt, A, B, C, D, bias, _ = ssd_inputs(1, 700, 8, 16, 2, 64, seed=15)
    y_scan = naive_ssd(x, dt, A, B, C, D, bias)[0]
    M = ssd_effective_attention(*(t.float().cuda() for t in (dt, A, B, C, bias)))
    y_attn = torch.einsum("bhij,bjhp->bihp", M.double().cpu(), x) + D[:, None] * x
    assert rel_err(y_attn, y_scan) < 1e-5
