"""The reference operators against independent oracles: a naive per-token loop in float64."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from achilles_interp import InputError
from achilles_interp.reference_ops import (
    causal_conv1d_ref,
    selective_scan_ref,
    ssd_chunked_ref,
    ssd_scan_ref,
)

f64 = torch.float64


def naive_mamba1(u, dt, A, B, C, D, h0):
    """h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t ; y_t = C_t . h_t + D u_t, one token at a time."""
    h, ys, hs = h0.clone(), [], []
    for t in range(u.shape[1]):
        h = torch.exp(dt[:, t, :, None] * A) * h + dt[:, t, :, None] * B[:, t, None, :] * u[:, t, :, None]
        hs.append(h)
        ys.append((h * C[:, t, None, :]).sum(-1) + D * u[:, t])
    return torch.stack(ys, 1), torch.stack(hs, 1)


def naive_mamba2(x, dt, A, B, C, D, h0):
    rep = x.shape[2] // B.shape[2]
    Bh, Ch = B.repeat_interleave(rep, 2), C.repeat_interleave(rep, 2)
    h, ys, hs = h0.clone(), [], []
    for t in range(x.shape[1]):
        h = (torch.exp(dt[:, t, :, None, None] * A[:, None, None]) * h
             + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :])
        hs.append(h)
        ys.append((h * Ch[:, t, :, None, :]).sum(-1) + D[:, None] * x[:, t])
    return torch.stack(ys, 1), torch.stack(hs, 1)


def mamba1_inputs(b, L, d, n, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=f64)  # noqa: E731
    return dict(u=r(b, L, d), dt=torch.rand(b, L, d, generator=g, dtype=f64) * 0.5,
                A=-torch.rand(d, n, generator=g, dtype=f64) * 4, B=r(b, L, n), C=r(b, L, n), D=r(d)), r(b, d, n)


@settings(max_examples=25, deadline=None)
@given(L=st.integers(1, 40), chunk=st.integers(1, 17), seed=st.integers(0, 10_000))
def test_selective_scan_matches_naive_loop(L, chunk, seed):
    args, h0 = mamba1_inputs(2, L, 3, 4, seed)
    y_ref, h_ref = naive_mamba1(**args, h0=h0)
    y, states, last = selective_scan_ref(**args, h0=h0, state_positions="all", chunk=chunk)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(states, h_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, h_ref[:, -1], rtol=1e-10, atol=1e-10)


def test_selective_scan_position_list_in_order_asked_and_negative_index():
    args, h0 = mamba1_inputs(2, 20, 3, 4, 7)
    _, h_ref = naive_mamba1(**args, h0=h0)
    _, states, _ = selective_scan_ref(**args, h0=h0, state_positions=[17, 2, -1], chunk=8)
    torch.testing.assert_close(states, h_ref[:, [17, 2, 19]])
    _, states, _ = selective_scan_ref(**args, h0=h0, state_positions=torch.tensor([3, 11]), chunk=8)
    torch.testing.assert_close(states, h_ref[:, [3, 11]])


def test_selective_scan_long_decay_is_stable():
    """Strong decay over many tokens: no overflow/NaN (decays multiply, never divide)."""
    args, h0 = mamba1_inputs(1, 300, 2, 3, 3)
    args["A"] = args["A"] * 50
    y, _, _ = selective_scan_ref(**{k: v.float() for k, v in args.items()}, chunk=64)
    y_ref, _ = naive_mamba1(**args, h0=torch.zeros_like(h0))
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)


def test_known_analytic_case_constant_decay():
    """A = -1, dt = log 2, B = C = 1, u = 1: h_t = h_{t-1}/2 + log 2, so h_t -> 2 log 2 geometrically."""
    L = 12
    u = torch.ones(1, L, 1, dtype=f64)
    dt = torch.full((1, L, 1), torch.log(torch.tensor(2.0, dtype=f64)).item(), dtype=f64)
    A = -torch.ones(1, 1, dtype=f64)
    ones = torch.ones(1, L, 1, dtype=f64)
    y, _, _ = selective_scan_ref(u, dt, A, ones, ones, None, chunk=5)
    t = torch.arange(1, L + 1, dtype=f64)
    expected = 2 * torch.log(torch.tensor(2.0, dtype=f64)) * (1 - 0.5 ** t)
    torch.testing.assert_close(y[0, :, 0], expected)


@settings(max_examples=20, deadline=None)
@given(L=st.integers(1, 33), chunk=st.integers(1, 12), groups=st.sampled_from([1, 2, 4]),
       seed=st.integers(0, 10_000))
def test_ssd_recurrence_and_chunked_match_naive(L, chunk, groups, seed):
    g = torch.Generator().manual_seed(seed)
    b, H, P, n = 2, 4, 3, 5
    x = torch.randn(b, L, H, P, generator=g, dtype=f64)
    dt = torch.rand(b, L, H, generator=g, dtype=f64)
    A = -torch.rand(H, generator=g, dtype=f64) * 3
    B = torch.randn(b, L, groups, n, generator=g, dtype=f64)
    C = torch.randn(b, L, groups, n, generator=g, dtype=f64)
    D = torch.randn(H, generator=g, dtype=f64)
    h0 = torch.randn(b, H, P, n, generator=g, dtype=f64)
    y_ref, h_ref = naive_mamba2(x, dt, A, B, C, D, h0)
    y, states, last = ssd_scan_ref(x, dt, A, B, C, D, h0, "all", chunk=chunk)
    y2, last2 = ssd_chunked_ref(x, dt, A, B, C, D, h0, chunk=chunk)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(states, h_ref)
    torch.testing.assert_close(y2, y_ref)
    torch.testing.assert_close(last2, h_ref[:, -1])


def test_causal_conv_matches_definition():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 3, generator=g, dtype=f64)
    w = torch.randn(3, 1, 4, generator=g, dtype=f64)
    bias = torch.randn(3, generator=g, dtype=f64)
    out = causal_conv1d_ref(x, w, bias)
    for t in range(9):
        expect = bias + sum(w[:, 0, 3 - k] * x[:, t - k] for k in range(4) if t - k >= 0)
        torch.testing.assert_close(out[:, t], expect)


def test_bad_state_positions_are_rejected():
    args, h0 = mamba1_inputs(1, 5, 2, 2, 0)
    for bad, match in [([5], r"lie in \[-5, 5\)"), ("every", "'all'"), ([1.5], r"integers, got 1\.5"),
                       (["3"], "integers, got '3'"), ([True], "integers"), ([2, 2], r"distinct.*\[2\]"),
                       ([4, -1], r"distinct.*\[4\]"), ([], "empty"), (torch.tensor([1.0]), "integer tensor"),
                       ([[1]], "integers")]:
        with pytest.raises(InputError, match=match):
            selective_scan_ref(**args, state_positions=bad)
