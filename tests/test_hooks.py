"""Every documented hook fires with its documented shape, and editing a hook changes exactly
what lies downstream of it (in the layer and along time)."""

import pytest
import torch

from achilles_interp import HookedMamba, MambaConfig

B_, L_ = 2, 11


def make(mixer, **kw):
    cfg = MambaConfig(d_model=16, n_layers=2, vocab_size=40, mixer=mixer, d_state=4, headdim=8, **kw)
    return HookedMamba(cfg, backend="torch").eval()


def expected_shapes(cfg):
    d, di, n = cfg.d_model, cfg.d_inner, cfg.d_state
    common = {"hook_in": (d,), "hook_gate": (di,), "hook_conv_out": (cfg.conv_dim,),
              "hook_conv_act": (cfg.conv_dim,), "hook_ssm_out": (di,), "hook_gated": (di,),
              "hook_out": (d,)}
    if cfg.mixer == "mamba1":
        return {**common, "hook_x": (di,), "hook_dt": (di,), "hook_B": (n,), "hook_C": (n,),
                "hook_ssm_state": (di, n)}
    return {**common, "hook_xBC": (cfg.conv_dim,), "hook_x": (di,), "hook_dt": (cfg.nheads,),
            "hook_B": (cfg.ngroups, n), "hook_C": (cfg.ngroups, n), "hook_norm_out": (di,),
            "hook_ssm_state": (cfg.nheads, cfg.headdim, n)}


@pytest.mark.parametrize("mixer", ["mamba1", "mamba2"])
@pytest.mark.parametrize("pos_embed", [None, "learned"])
def test_every_hook_in_cache_with_documented_shape(mixer, pos_embed):
    model = make(mixer, pos_embed=pos_embed, max_len=32)
    tokens = torch.randint(0, 40, (B_, L_))
    logits, cache = model.run_with_cache(tokens, ssm_state_positions="all")
    assert logits.shape == (B_, L_, 40)
    want = {"hook_embed": (B_, L_, 16), "hook_resid_final": (B_, L_, 16)}
    if pos_embed:
        want["hook_pos_embed"] = (B_, L_, 16)
    for i in range(2):
        want[f"blocks.{i}.hook_resid_pre"] = want[f"blocks.{i}.hook_resid_post"] = (B_, L_, 16)
        for name, shape in expected_shapes(model.cfg).items():
            want[f"blocks.{i}.mixer.{name}"] = (B_, L_, *shape)
    assert set(cache.keys()) == set(want)
    for name, shape in want.items():
        assert tuple(cache[name].shape) == shape, name


@pytest.mark.parametrize("mixer", ["mamba1", "mamba2"])
def test_states_opt_in_and_position_list(mixer):
    model = make(mixer)
    tokens = torch.randint(0, 40, (B_, L_))
    _, cache = model.run_with_cache(tokens)
    assert not any("ssm_state" in k for k in cache.keys()), "states are opt-in"
    _, all_cache = model.run_with_cache(tokens, ssm_state_positions="all")
    _, some = model.run_with_cache(tokens, ssm_state_positions=[0, 5, 10])
    key = "blocks.1.mixer.hook_ssm_state"
    assert some[key].shape[1] == 3
    torch.testing.assert_close(some[key], all_cache[key][:, [0, 5, 10]])
    # naming the hook in names_filter is enough
    _, named = model.run_with_cache(tokens, names_filter=key)
    torch.testing.assert_close(named[key], all_cache[key])


def _run_with_edit(model, tokens, hook_name, pos, positions=None):
    """Add 1 to hook `hook_name` at position `pos`; cache everything."""
    def edit(t, hook):
        t = t.clone()
        t[:, pos] += 1.0
        return t
    cache = {}

    def save(t, hook):
        cache[hook.name] = t.detach().clone()
    names = [n for n in model.hook_dict if "ssm_state" not in n]
    hooks = [(hook_name, edit)] + [(n, save) for n in names]
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks, ssm_state_positions=positions)
    return logits, cache


@pytest.mark.parametrize("mixer", ["mamba1", "mamba2"])
@pytest.mark.parametrize("hook,pos", [("hook_conv_out", 4), ("hook_gate", 6), ("hook_ssm_state", 3)])
def test_patching_changes_downstream_and_only_downstream(mixer, hook, pos):
    model = make(mixer)
    tokens = torch.randint(0, 40, (B_, L_))
    positions = "all" if hook == "hook_ssm_state" else None
    with torch.no_grad():
        _, clean = model.run_with_cache(tokens)
        _, edited = _run_with_edit(model, tokens, f"blocks.0.mixer.{hook}", pos, positions)
    changed = lambda n: not torch.allclose(clean[n], edited[n], atol=1e-6)  # noqa: E731
    changed_before = lambda n: not torch.allclose(clean[n][:, :pos], edited[n][:, :pos], atol=1e-6)  # noqa: E731
    # upstream hooks of the same layer: untouched
    pre_conv = "hook_x" if mixer == "mamba1" else "hook_xBC"
    for up in ["blocks.0.hook_resid_pre", "blocks.0.mixer.hook_in", f"blocks.0.mixer.{pre_conv}"]:
        assert not changed(up), up
    downstream = {"hook_conv_out": ["hook_conv_act", "hook_ssm_out", "hook_gated", "hook_out"],
                  "hook_gate": ["hook_gated", "hook_out"],
                  "hook_ssm_state": ["hook_ssm_out", "hook_gated", "hook_out"]}[hook]
    for down in downstream + ["../hook_resid_post", "../../blocks.1.mixer.hook_out", "../../hook_resid_final"]:
        name = {"../hook_resid_post": "blocks.0.hook_resid_post",
                "../../blocks.1.mixer.hook_out": "blocks.1.mixer.hook_out",
                "../../hook_resid_final": "hook_resid_final"}.get(down, f"blocks.0.mixer.{down}")
        assert changed(name), name
        assert not changed_before(name), f"{name} changed before position {pos}: not causal"
    if hook == "hook_gate":
        assert not changed("blocks.0.mixer.hook_ssm_out"), "the gate is not upstream of the SSM"
        assert not changed("blocks.0.mixer.hook_conv_act")
        # the gate acts per position: later positions of this layer's output are untouched
        out_c, out_e = clean["blocks.0.mixer.hook_out"], edited["blocks.0.mixer.hook_out"]
        torch.testing.assert_close(out_c[:, pos + 1:], out_e[:, pos + 1:])
    if hook in ("hook_conv_out", "hook_ssm_state"):
        # the recurrence carries the edit forward in time
        out_c, out_e = clean["blocks.0.mixer.hook_ssm_out"], edited["blocks.0.mixer.hook_ssm_out"]
        assert not torch.allclose(out_c[:, pos + 1], out_e[:, pos + 1], atol=1e-6)


def test_state_edit_propagates_like_naive_recurrence():
    """Oracle: set h_t := h_t + 1 at t, continue the naive loop from there, compare y."""
    model = make("mamba1")
    mixer = model.blocks[0].mixer
    tokens = torch.randint(0, 40, (1, L_))
    t_edit = 4
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, ssm_state_positions="all")
        u = cache["blocks.0.mixer.hook_conv_act"].double()
        dt = cache["blocks.0.mixer.hook_dt"].double()
        Bm, Cm = cache["blocks.0.mixer.hook_B"].double(), cache["blocks.0.mixer.hook_C"].double()
        A, D = mixer.A.double(), mixer.D.double()
        h = torch.zeros(1, model.cfg.d_inner, model.cfg.d_state, dtype=torch.float64)
        ys = []
        for t in range(L_):
            h = torch.exp(dt[:, t, :, None] * A) * h + dt[:, t, :, None] * Bm[:, t, None, :] * u[:, t, :, None]
            if t == t_edit:
                h = h + 1.0
            ys.append((h * Cm[:, t, None, :]).sum(-1) + D * u[:, t])
        expected = torch.stack(ys, 1)

        def edit(states, hook):
            states[:, t_edit] += 1.0   # in-place edits count too
        got = {}
        model.run_with_hooks(tokens, ssm_state_positions="all", fwd_hooks=[
            ("blocks.0.mixer.hook_ssm_state", edit),
            ("blocks.0.mixer.hook_ssm_out", lambda t, hook: got.__setitem__("y", t.clone()))])
    torch.testing.assert_close(got["y"].double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mixer", ["mamba1", "mamba2"])
def test_state_gradient_is_total_derivative(mixer):
    """The bwd hook on hook_ssm_state sees dL/dh_t through the recurrence: check it against a
    finite difference of an additive state edit at t (which propagates to t+1...)."""
    model = make(mixer).double()
    tokens = torch.randint(0, 40, (1, 8))
    t_edit, name = 2, "blocks.0.mixer.hook_ssm_state"
    grads = {}
    model.add_hook(name, lambda g, hook: grads.__setitem__("g", g.detach().clone()), dir="bwd")
    loss = model(tokens, ssm_state_positions="all")[0, -1].sum()
    loss.backward()
    model.reset_hooks()
    direction = torch.randn_like(grads["g"][:, t_edit])
    eps = 1e-6

    def bump(sign):
        def f(states, hook):
            states = states.clone()
            states[:, t_edit] += sign * eps * direction
            return states
        with torch.no_grad():
            return model.run_with_hooks(tokens, ssm_state_positions="all", fwd_hooks=[(name, f)])[0, -1].sum()
    fd = (bump(1) - bump(-1)) / (2 * eps)
    analytic = (grads["g"][:, t_edit] * direction).sum()
    torch.testing.assert_close(analytic, fd, rtol=1e-5, atol=1e-7)


def test_run_with_hooks_state_hook_without_positions_fires_on_all():
    model = make("mamba1")
    seen = {}
    model.run_with_hooks(torch.randint(0, 40, (1, 5)),
                         fwd_hooks=[("blocks.1.mixer.hook_ssm_state", lambda t, hook: seen.update(s=t.shape))])
    assert seen["s"] == (1, 5, model.cfg.d_inner, model.cfg.d_state)


def test_state_backward_hook_leaves_parameter_gradients_unchanged():
    model = make("mamba2").double()
    tokens = torch.randint(0, 40, (2, 9))

    def param_grads():
        model.zero_grad()
        model(tokens, ssm_state_positions="all")[:, -1].sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    plain = param_grads()
    model.add_hook("blocks.0.mixer.hook_ssm_state", lambda g, hook: None, dir="bwd")
    hooked = param_grads()
    model.reset_hooks()
    assert plain.keys() == hooked.keys()
    for n in plain:
        torch.testing.assert_close(hooked[n], plain[n], msg=n)


@pytest.mark.parametrize("mixer", ["mamba1", "mamba2"])
def test_state_edits_are_per_batch_row(mixer):
    """Row 0 patched at t=2 and row 1 at t=6 in one forward equals each row patched alone."""
    model = make(mixer)
    tokens = torch.randint(0, 40, (2, L_))
    name = "blocks.0.mixer.hook_ssm_state"

    def patch(rows_positions):
        def f(states, hook):
            states = states.clone()
            for row, t in rows_positions:
                states[row, t] = states[row, t] * -2.0 + 0.5
            return states
        with torch.no_grad():
            return model.run_with_hooks(tokens, ssm_state_positions="all", fwd_hooks=[(name, f)])
    both = patch([(0, 2), (1, 6)])
    torch.testing.assert_close(both[0], patch([(0, 2)])[0])
    torch.testing.assert_close(both[1], patch([(1, 6)])[1])
    assert not torch.allclose(both[0], patch([])[0])
    adjacent = patch([(0, 2), (1, 3), (0, 3)])   # consecutive edited positions, two edits in row 0
    torch.testing.assert_close(adjacent[1], patch([(1, 3)])[1])
    torch.testing.assert_close(adjacent[0], patch([(0, 2), (0, 3)])[0])
