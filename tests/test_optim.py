"""Optimizer rules (fedrec.optim) against paper 000 Eq. (2)-(6), (44), (50), (78): hand-computed steps,
independent cross-checks (textbook Adam, torch.optim), exact reconstruction, default rows, and the
verifier: no false rejection of honest float32 uploads over many carried rounds, and every forgery
flagged on exactly the forged rows."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.optim import RULES, SLACK, AdaGrad, Adam, Momentum, RMSProp, Rule, make_rule

NAMES = sorted(RULES)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
U32 = 2.0**-24
TINY32 = torch.finfo(torch.float32).tiny


def prev_of(rule: Rule, theta: torch.Tensor, **state: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {"theta": theta, **rule.init_state(theta)}
    out.update(state)
    return out


def t64(*x: float) -> torch.Tensor:
    return torch.tensor([list(x)], dtype=torch.float64)


def log_uniform_grads(shape: tuple[int, ...], gen: torch.Generator, zero_frac: float = 0.2) -> torch.Tensor:
    """Signed magnitudes 10^U(-6, 2), a fraction of zero coordinates and ~10 % all-zero rows (float32)."""
    mag = 10.0 ** (torch.rand(shape, generator=gen, dtype=torch.float64) * 8 - 6)
    g = torch.where(torch.rand(shape, generator=gen) < 0.5, -mag, mag)
    g = torch.where(torch.rand(shape, generator=gen) < zero_frac, 0.0, g)
    g = torch.where((torch.rand(shape[:-1], generator=gen) < 0.1)[..., None], 0.0, g)
    return g.float()


def server_round(rule: Rule, prev: dict, g: torch.Tensor, t: int, w: torch.Tensor) -> tuple[dict, dict]:
    """All clients (leading dim of ``g``) step from ``prev``; the next global state is the weighted mean
    of their uploads (paper 000 Algorithm 1). Returns (uploads, next prev)."""
    n = g.shape[0]
    batch_prev = {k: v.expand(n, *v.shape) for k, v in prev.items()}
    up = rule.client_step(batch_prev, g, t)
    w = (w / w.sum()).to(g.dtype).reshape(n, *([1] * (g.dim() - 1)))
    return up, {k: (w * v).sum(0) for k, v in up.items()}


# ----------------------------------------------------------------------------- registry


def test_registry_names_and_state() -> None:
    assert NAMES == ["adagrad", "adam", "momentum", "rmsprop", "sgd"]
    expected = {"adam": ("m", "v"), "sgd": (), "momentum": ("m",), "adagrad": ("r",), "rmsprop": ("r",)}
    for name, states in expected.items():
        rule = make_rule(name)
        assert rule.name == name and rule.state_names == states
        assert rule.keys == ("theta", *states)
        assert isinstance(rule, Rule)
        assert rule.eta == 1e-3
    assert make_rule("adam") == Adam(eta=1e-3, b1=0.9, b2=0.999, eps=1e-8)
    assert make_rule("momentum").b3 == 0.9 and make_rule("rmsprop").b4 == 0.9
    assert make_rule("adagrad").eps == 1e-10 and make_rule("rmsprop").eps == 1e-8
    assert make_rule("adam", eta=0.01, b1=0.5) == Adam(eta=0.01, b1=0.5)


def test_registry_errors() -> None:
    with pytest.raises(ValueError, match="adagrad, adam, momentum, rmsprop, sgd"):
        make_rule("adamw")
    with pytest.raises(ValueError, match="b3"):
        make_rule("adam", b3=0.9)
    with pytest.raises(ValueError, match="eps"):
        make_rule("sgd", eps=1e-8)
    for name, bad in [
        ("adam", {"b1": 1.0}),
        ("adam", {"b2": -0.1}),
        ("adam", {"eps": 0.0}),
        ("sgd", {"eta": 0.0}),
        ("momentum", {"b3": 1.5}),
        ("adagrad", {"eps": -1.0}),
        ("rmsprop", {"eta": float("nan")}),
    ]:
        with pytest.raises(ValueError):
            make_rule(name, **bad)
    with pytest.raises(dataclasses.FrozenInstanceError):
        make_rule("adam").eta = 0.1  # type: ignore[misc]


@pytest.mark.parametrize("name", NAMES)
def test_round_number_checked(name: str) -> None:
    rule = make_rule(name)
    prev = prev_of(rule, torch.zeros(1, 2))
    for bad in (0, -1, 1.0):
        with pytest.raises(ValueError):
            rule.client_step(prev, torch.zeros(1, 2), bad)  # type: ignore[arg-type]


def test_init_state_is_zeros() -> None:
    theta = torch.randn(3, 4)
    for name in NAMES:
        state = make_rule(name).init_state(theta)
        assert tuple(state) == make_rule(name).state_names
        for v in state.values():
            assert v.shape == theta.shape and v.dtype == theta.dtype and not v.any()


# ----------------------------------------------------------------------------- hand-computed steps


def test_adam_hand_round_1() -> None:
    # t = 1 from m = v = 0, theta = 1, g = 2 (Eq. 2-6, eta 1e-3, b1 0.9, b2 0.999, eps 1e-8):
    # m = 0.1*2 = 0.2, v = 0.001*4 = 0.004, eta_1 = 1e-3*sqrt(0.001)/0.1 = 3.1622776601683816e-4,
    # step = eta_1*0.2/sqrt(0.00400001) = 9.999987500023443e-4, theta = 0.9990000012499977.
    rule = Adam()
    assert rule.step_size(1) == pytest.approx(3.1622776601683816e-4, rel=1e-15)
    up = rule.client_step(prev_of(rule, t64(1.0)), t64(2.0), 1)
    assert up["m"].item() == pytest.approx(0.2, rel=1e-15)
    assert up["v"].item() == pytest.approx(0.004, rel=1e-15)
    assert up["theta"].item() == pytest.approx(0.9990000012499977, rel=1e-15)
    assert 1.0 - up["theta"].item() == pytest.approx(9.999987500023443e-4, rel=1e-10)


def test_adam_hand_round_2() -> None:
    # t = 2 from m_bar = 0.2, v_bar = 0.004, theta_bar = 0.999 with g = -1:
    # m = 0.18 - 0.1 = 0.08, v = 0.003996 + 0.001 = 0.004996,
    # eta_2 = 1e-3*sqrt(1-0.999^2)/(1-0.81) = 2.3531672532745276e-4,
    # step = eta_2*0.08/sqrt(0.00499601) = 2.663367731105211e-4, theta = 0.9987336632268895.
    rule = Adam()
    prev = {"theta": t64(0.999), "m": t64(0.2), "v": t64(0.004)}
    up = rule.client_step(prev, t64(-1.0), 2)
    assert rule.step_size(2) == pytest.approx(2.3531672532745276e-4, rel=1e-14)
    assert up["m"].item() == pytest.approx(0.08, rel=1e-14)
    assert up["v"].item() == pytest.approx(0.004996, rel=1e-14)
    assert up["theta"].item() == pytest.approx(0.9987336632268895, rel=1e-14)
    assert rule.reconstruct(prev, up, 2).item() == pytest.approx(-1.0, rel=1e-13)
    assert rule.verify(prev, up, 2).item() <= 1


def test_momentum_hand() -> None:
    # Eq. (44), b3 = 0.9, eta = 0.1: m = 0.9*0.5 + 2 = 2.45, theta = 1 - 0.1*2.45 = 0.755.
    rule = Momentum(eta=0.1)
    prev = {"theta": t64(1.0), "m": t64(0.5)}
    up = rule.client_step(prev, t64(2.0), 7)
    assert up["m"].item() == pytest.approx(2.45, rel=1e-15)
    assert up["theta"].item() == pytest.approx(0.755, rel=1e-15)
    assert rule.reconstruct(prev, up, 7).item() == pytest.approx(2.0, rel=1e-14)
    assert rule.default_rows(prev, 7)["theta"].item() == pytest.approx(1 - 0.1 * 0.45, rel=1e-15)


def test_adagrad_hand() -> None:
    # Eq. (50): r = 5 + 2^2 = 9, theta = 1 - 1e-3*2/(3 + 1e-10) = 0.9993333333333555.
    rule = AdaGrad()
    prev = {"theta": t64(1.0), "r": t64(5.0)}
    up = rule.client_step(prev, t64(2.0), 3)
    assert up["r"].item() == 9.0
    assert up["theta"].item() == pytest.approx(0.9993333333333555, rel=1e-15)
    assert rule.reconstruct(prev, up, 3).item() == pytest.approx(2.0, rel=1e-9)


def test_rmsprop_hand() -> None:
    # Eq. (78), b4 = 0.9: r = 0.9*1 + 0.1*3^2 = 1.8, theta = 1 - 1e-3*3/sqrt(1.8 + 1e-8) = 0.9977639320287115.
    rule = RMSProp()
    prev = {"theta": t64(1.0), "r": t64(1.0)}
    up = rule.client_step(prev, t64(-3.0), 3)  # the sign goes into theta only
    assert up["r"].item() == pytest.approx(1.8, rel=1e-15)
    assert up["theta"].item() == pytest.approx(2 - 0.9977639320287115, rel=1e-15)
    assert rule.reconstruct(prev, up, 3).item() == pytest.approx(-3.0, rel=1e-9)


def test_sgd_hand() -> None:
    rule = make_rule("sgd", eta=0.1)
    up = rule.client_step({"theta": t64(1.0)}, t64(2.0), 1)
    assert up == {"theta": up["theta"]} and up["theta"].item() == pytest.approx(0.8, rel=1e-15)
    assert rule.reconstruct({"theta": t64(1.0)}, up, 1).item() == pytest.approx(2.0, rel=1e-14)


# ----------------------------------------------------------------------------- independent cross-checks


def test_adam_folded_form_equals_textbook_form() -> None:
    """theta_bar - eta_t m / sqrt(v + eps) == theta_bar - eta m_hat / sqrt(v_hat + eps / (1 - b2^t))
    with the bias-corrected m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t), over a many-step run."""
    rule = Adam(eta=0.01, b1=0.8, b2=0.99, eps=1e-6)
    gen = torch.Generator().manual_seed(3)
    prev = prev_of(rule, torch.randn(5, 7, generator=gen, dtype=torch.float64))
    for t in range(1, 60):
        g = torch.randn(5, 7, generator=gen, dtype=torch.float64) * 10.0 ** torch.randint(-3, 2, (5, 1))
        up = rule.client_step(prev, g, t)
        m_hat = up["m"] / (1 - rule.b1**t)
        v_hat = up["v"] / (1 - rule.b2**t)
        textbook = prev["theta"] - rule.eta * m_hat / torch.sqrt(v_hat + rule.eps / (1 - rule.b2**t))
        torch.testing.assert_close(up["theta"], textbook, rtol=1e-14, atol=1e-15)
        prev = up


@pytest.mark.parametrize(
    ("name", "hyper", "make_torch"),
    [
        ("sgd", {"eta": 0.05}, lambda p: torch.optim.SGD(p, lr=0.05)),
        ("momentum", {"eta": 0.05, "b3": 0.7}, lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.7)),
        ("adagrad", {"eta": 0.05, "eps": 1e-10}, lambda p: torch.optim.Adagrad(p, lr=0.05, eps=1e-10)),
        # torch puts eps outside the square root; with a negligible eps the two coincide.
        ("rmsprop", {"eta": 0.05, "b4": 0.8, "eps": 1e-300}, lambda p: torch.optim.RMSprop(p, 0.05, 0.8, 0)),
    ],
)
def test_single_client_matches_torch_optim(name: str, hyper: dict, make_torch) -> None:
    """With one client the federated rule is the centralised optimizer: compare with torch.optim."""
    rule = make_rule(name, **hyper)
    gen = torch.Generator().manual_seed(4)
    p = torch.nn.Parameter(torch.randn(4, 6, generator=gen, dtype=torch.float64))
    opt = make_torch([p])
    prev = prev_of(rule, p.detach().clone())
    for t in range(1, 40):
        g = torch.randn(4, 6, generator=gen, dtype=torch.float64) * (t % 5 + 0.1)
        p.grad = g.clone()
        opt.step()
        prev = rule.client_step(prev, g, t)
        torch.testing.assert_close(prev["theta"], p.detach(), rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- trajectories for property tests

SNAP_T = (0, 1, 2, 10, 100, 1000, 2500)
ROWS, D = 8, 16


@functools.cache
def trajectory(name: str) -> dict[int, dict[str, torch.Tensor]]:
    """Global float32 states after t rounds of a 3-client federation with log-uniform gradients."""
    rule = make_rule(name)
    gen = torch.Generator().manual_seed(5)
    prev = prev_of(rule, torch.randn(ROWS, D, generator=gen))
    snaps = {0: prev}
    for t in range(1, SNAP_T[-1] + 1):
        _, prev = server_round(
            rule, prev, log_uniform_grads((3, ROWS, D), gen), t, torch.rand(3, generator=gen)
        )
        if t in SNAP_T:
            snaps[t] = prev
    return snaps


def reconstruction_bound(rule: Rule, prev: dict, up: dict, g: torch.Tensor, u: float) -> torch.Tensor:
    """Generous element-wise bounds on |g_hat - g| for an honest upload (rounding of the client's
    float ops, amplified by the reconstruction; see each rule's docstring), plus the output rounding."""
    g, th = g.abs().double(), up["theta"].abs().double()
    tiny = 64 * torch.finfo(up["theta"].dtype).tiny
    if rule.name == "adam":
        return 8 * u * (g + 10 * prev["m"].abs().double()) + tiny / (1 - rule.b1)
    if rule.name == "momentum":
        return 4 * u * (g + prev["m"].abs().double()) + tiny
    if rule.name == "sgd":
        return 4 * u * (g + th / rule.eta) + tiny / rule.eta
    r = up["r"].double()
    denom = r.sqrt() + rule.eps if rule.name == "adagrad" else (r + rule.eps).sqrt()
    return 8 * u * (g + th * denom / rule.eta) + tiny * denom / rule.eta


grad_value = st.one_of(
    st.just(0.0),
    st.floats(-100.0, 100.0),
    st.builds(lambda s, e: s * 10.0**e, st.sampled_from([-1.0, 1.0]), st.floats(-6.0, 2.0)),
    st.floats(-1e-30, 1e-30),
)


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(NAMES),
    snap=st.sampled_from(SNAP_T),
    row=st.integers(0, ROWS - 1),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    values=st.lists(grad_value, min_size=D, max_size=D),
)
def test_reconstruct_inverts_client_step(name, snap, row, dtype, values) -> None:
    rule = make_rule(name)
    prev = {k: v[row : row + 1].to(dtype) for k, v in trajectory(name)[snap].items()}
    g = torch.tensor([values], dtype=dtype)
    t = snap + 1
    up = rule.client_step(prev, g, t)
    assert all(up[k].dtype == dtype for k in rule.keys)
    g_hat = rule.reconstruct(prev, up, t)
    assert g_hat.dtype == dtype and g_hat.shape == g.shape
    u = torch.finfo(dtype).eps / 2
    err = (g_hat.double() - g.double()).abs()
    bound = reconstruction_bound(rule, prev, up, g, u)
    assert bool((err <= bound).all()), (err / bound).max()
    g_rv, viol = rule.reconstruct_and_verify(prev, up, t)
    assert torch.equal(g_rv, g_hat)
    assert viol.shape == (1,) and viol.item() <= 1


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reconstruct_relative_accuracy_from_fresh_state(name: str, dtype: torch.dtype) -> None:
    """From m = v = r = 0 and theta = 0 the reconstruction is accurate to a few ulps of g itself."""
    rule = make_rule(name)
    g = torch.tensor([[1e-6, -3e-3, 0.5, -7.0, 100.0, 0.0]], dtype=dtype)
    prev = prev_of(rule, torch.zeros_like(g))
    g_hat = rule.reconstruct(prev, rule.client_step(prev, g, 1), 1)
    torch.testing.assert_close(g_hat, g, rtol=64 * torch.finfo(dtype).eps, atol=0)


# ----------------------------------------------------------------------------- default rows and purity


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_default_rows_equal_zero_gradient_step(name: str, dtype: torch.dtype) -> None:
    rule = make_rule(name)
    for snap, state in trajectory(name).items():
        prev = {k: v.to(dtype) for k, v in state.items()}
        t = snap + 1
        default = rule.default_rows(prev, t)
        zero_step = rule.client_step(prev, torch.zeros(ROWS, D, dtype=dtype), t)
        assert set(default) == set(rule.keys)
        for k in rule.keys:
            assert default[k].dtype == dtype
            assert torch.equal(default[k], zero_step[k]), (k, snap)
            assert default[k].data_ptr() != prev[k].data_ptr()  # never aliases the global state
        assert rule.verify(prev, default, t).max() <= 1
        # The reconstructed gradient is 0 up to the client's rounding (b1 * m_bar in float32 for Adam).
        zero = torch.zeros_like(prev["theta"])
        bound = reconstruction_bound(rule, prev, default, zero, torch.finfo(dtype).eps / 2)
        assert bool((rule.reconstruct(prev, default, t).double().abs() <= bound).all())
    # theta still moves on a zero gradient under Adam (eta_t b1 m_bar / sqrt(b2 v_bar + eps)) and
    # momentum (eta b3 m_bar); it stays under SGD, AdaGrad and RMSProp.
    assert torch.equal(default["theta"], prev["theta"]) == (name not in ("adam", "momentum"))


@pytest.mark.parametrize("name", NAMES)
def test_methods_are_pure(name: str) -> None:
    rule = make_rule(name)
    prev = trajectory(name)[100]
    snapshot = {k: v.clone() for k, v in prev.items()}
    g = log_uniform_grads((ROWS, D), torch.Generator().manual_seed(6))
    g_copy = g.clone()
    up = rule.client_step(prev, g, 101)
    up_copy = {k: v.clone() for k, v in up.items()}
    rule.default_rows(prev, 101)
    rule.reconstruct(prev, up, 101)
    rule.verify(prev, up, 101)
    rule.reconstruct_and_verify(prev, up, 101)
    assert torch.equal(g, g_copy)
    for k in rule.keys:
        assert torch.equal(prev[k], snapshot[k]) and torch.equal(up[k], up_copy[k])
        assert up[k].data_ptr() != prev[k].data_ptr()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("device", DEVICES)
def test_any_leading_shape_and_device(name: str, device: str) -> None:
    rule = make_rule(name)
    gen = torch.Generator().manual_seed(7)
    prev = {k: v.reshape(2, 4, D).to(device) for k, v in trajectory(name)[10].items()}
    g = log_uniform_grads((2, 4, D), gen).to(device)
    up = rule.client_step(prev, g, 11)
    assert all(up[k].shape == (2, 4, D) and up[k].device.type == device for k in rule.keys)
    g_hat, viol = rule.reconstruct_and_verify(prev, up, 11)
    assert g_hat.shape == (2, 4, D) and viol.shape == (2, 4) and viol.device.type == device
    assert viol.max() <= 1
    flat = {k: v.reshape(8, D) for k, v in prev.items()}
    flat_up = rule.client_step(flat, g.reshape(8, D), 11)
    for k in rule.keys:
        assert torch.equal(flat_up[k].reshape(2, 4, D), up[k])
    assert torch.equal(rule.verify(flat, flat_up, 11).reshape(2, 4), viol)


# ----------------------------------------------------------------------------- the verifier


@functools.cache
def honest_run(
    name: str, rounds: int = 200, theta_scale: float = 1.0, clients: int = 4, rows: int = 64, d: int = 64
):
    """Carry the global state over ``rounds`` float32 rounds from theta ~ N(0, theta_scale^2); return the
    worst honest violation and the state reached (the next prev is the weighted mean of the uploads)."""
    rule = make_rule(name)
    gen = torch.Generator().manual_seed(8)
    prev = prev_of(rule, theta_scale * torch.randn(rows, d, generator=gen))
    worst = torch.zeros((), dtype=torch.float64)
    for t in range(1, rounds + 1):
        g = log_uniform_grads((clients, rows, d), gen)
        up, nxt = server_round(rule, prev, g, t, torch.rand(clients, generator=gen))
        batch_prev = {k: v.expand(clients, rows, d) for k, v in prev.items()}
        viol = rule.verify(batch_prev, up, t)
        assert viol.shape == (clients, rows)
        worst = torch.maximum(worst, viol.max())
        prev = nxt
    return float(worst), prev, rounds


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("rounds", "theta_scale"), [(200, 1.0), (60, 0.0)])
def test_verify_never_rejects_honest_float32_uploads(name: str, rounds: int, theta_scale: float) -> None:
    """Zero false rejections over 200 rounds x 4 clients x 64 rows (and 60 rounds from theta = 0, where
    the step terms of the tolerances dominate)."""
    worst, _, _ = honest_run(name, rounds, theta_scale)
    assert worst <= 1.0
    # Sharper: the documented first-order bounds hold by themselves (SLACK is pure margin) ...
    assert worst <= (1 + 1e-3) / SLACK
    if name != "sgd":
        # ... and are not vacuous: honest rounding errors come within a small factor of them.
        assert worst > 0.05 / SLACK


def forge(name: str, rule: Rule, prev: dict, g: torch.Tensor, t: int, kind: str) -> dict:
    """A rule-breaking upload on every row (the test keeps it only on the tampered rows)."""
    up = rule.client_step(prev, g, t)
    if kind == "m_only":  # a forged (ascent) gradient in m, honest v and theta
        return {**up, "m": rule.client_step(prev, -g, t)["m"]}
    if kind == "v_scaled":
        return {**up, "v": up["v"] * 1.01}
    if kind == "v_inconsistent":  # v of another gradient, theta consistent with the uploaded m and v
        v = up["v"] * 1.5
        return {
            **up,
            "v": v,
            "theta": prev["theta"] - rule.step_size(t) * (up["m"] / torch.sqrt(v + rule.eps)),
        }
    if kind == "v_negative":
        return {**up, "v": -up["v"] - 1.0}
    if kind == "theta_from_other_m":  # momentum: theta of gradient 2g, m of g
        return {**up, "theta": rule.client_step(prev, 2 * g, t)["theta"]}
    if kind == "r_from_other_g":  # adagrad / rmsprop: theta of gradient 3g, r of g
        return {**up, "theta": rule.client_step(prev, 3 * g, t)["theta"]}
    if kind == "r_scaled":
        return {**up, "r": up["r"] * 1.01}
    if kind == "theta_relative":  # theta off by 2^-16 of its magnitude (~500 float32 ulps)
        return {**up, "theta": up["theta"] + up["theta"].abs() * 2.0**-16 + 1e-30}
    if kind == "nan":
        key = rule.keys[-1]
        return {**up, key: torch.full_like(up[key], float("nan"))}
    if kind == "inf":
        return {**up, "theta": torch.full_like(up["theta"], float("inf"))}
    raise AssertionError(kind)


FORGERIES = [
    ("adam", "m_only"),
    ("adam", "v_scaled"),
    ("adam", "v_inconsistent"),
    ("adam", "v_negative"),
    ("adam", "theta_relative"),
    ("adam", "nan"),
    ("momentum", "theta_from_other_m"),
    ("momentum", "theta_relative"),
    ("momentum", "nan"),
    ("adagrad", "r_from_other_g"),
    ("adagrad", "r_scaled"),
    ("adagrad", "nan"),
    ("rmsprop", "r_from_other_g"),
    ("rmsprop", "r_scaled"),
    ("rmsprop", "inf"),
    ("sgd", "nan"),
    ("sgd", "inf"),
]


@pytest.mark.parametrize(("name", "kind"), FORGERIES)
def test_verify_flags_exactly_the_forged_rows(name: str, kind: str) -> None:
    rule = make_rule(name)
    _, prev, rounds = honest_run(name)
    t = rounds + 1
    gen = torch.Generator().manual_seed(9)
    rows, d = prev["theta"].shape
    g = torch.randn(rows, d, generator=gen)
    honest = rule.client_step(prev, g, t)
    forged = forge(name, rule, prev, g, t, kind)
    tampered = torch.rand(rows, generator=gen) < 0.3
    up = {k: torch.where(tampered[:, None], forged[k], honest[k]) for k in rule.keys}
    viol = rule.verify(prev, up, t)
    assert bool((viol[~tampered] <= 1).all())
    assert bool((viol[tampered] > 1).all()), viol[tampered].min()


def documented_tolerance(
    rule: Rule, key: str, prev: dict, up: dict, g: torch.Tensor, t: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The element-wise float32 tolerance of ``key``'s equation as the docstrings derive it (before
    SLACK), and how much a change of ``up[key]`` moves that equation's error (its sensitivity)."""
    P = {k: v.double() for k, v in prev.items()}
    Up = {k: v.double() for k, v in up.items()}
    g = g.double().abs()
    u = U32
    if rule.name == "adam" and key == "theta":
        step = rule.step_size(t) * Up["m"] / (Up["v"] + rule.eps).sqrt()
        return 5 * u * step.abs() + u * Up["theta"].abs(), torch.ones_like(g)
    if rule.name == "adam":  # v; theta's equation also moves, but by less (see the test)
        dg = 3 * u * (Up["m"].abs() + 2 * rule.b1 * P["m"].abs()) / (1 - rule.b1)
        return 4 * u * Up["v"] + (1 - rule.b2) * (2 * g + dg) * dg, torch.ones_like(g)
    if rule.name == "momentum":
        return 2 * u * rule.eta * Up["m"].abs() + u * Up["theta"].abs(), torch.ones_like(g)
    r, th = Up["r"], Up["theta"].abs()
    if rule.name == "adagrad":
        denom = r.sqrt() + rule.eps
        dg = 5 * u * g + u * th * denom / rule.eta
        return 2 * u * r + (2 * g + dg) * dg, 1 - g * g / (r.sqrt() * denom)
    denom = (r + rule.eps).sqrt()
    dg = 5 * u * g + u * th * denom / rule.eta
    c4 = 1 - rule.b4
    return 4 * u * r + c4 * (2 * g + dg) * dg, 1 - c4 * g * g / denom**2


@pytest.mark.parametrize(
    ("name", "key", "theta_scale"),
    [
        ("adam", "theta", 1.0),
        ("adam", "theta", 0.0),
        ("adam", "v", 1.0),
        ("adam", "v", 0.0),
        ("momentum", "theta", 1.0),
        ("momentum", "theta", 0.0),
        ("adagrad", "r", 1.0),
        ("rmsprop", "r", 1.0),
    ],
)
def test_shift_of_ten_tolerances(name: str, key: str, theta_scale: float) -> None:
    """Moving one coordinate per row by 10x the documented tolerance of its equation gives a violation
    of about 10 on that row: the verifier measures |error| / tolerance, with the docstrings' tolerance,
    element by element (a tolerance that is too loose or too tight anywhere fails)."""
    rule = make_rule(name)
    _, prev, rounds = honest_run(name, 200 if theta_scale else 60, theta_scale)
    if not theta_scale:  # theta = 0: the step terms of the tolerance dominate
        prev = {**prev, "theta": torch.zeros_like(prev["theta"])}
    t = rounds + 1
    gen = torch.Generator().manual_seed(10)
    rows, d = prev["theta"].shape
    g = log_uniform_grads((rows, d), gen, zero_frac=0.0)
    g = torch.where(g == 0, 1.0, g)
    up = rule.client_step(prev, g, t)
    tol, sensitivity = documented_tolerance(rule, key, prev, up, g, t)
    col = torch.randint(0, d, (rows,), generator=gen)
    one = torch.zeros(rows, d, dtype=torch.bool).scatter_(1, col[:, None], True)
    sign = torch.where(torch.rand(rows, d, generator=gen) < 0.5, -1.0, 1.0).double()
    shift = torch.where(one, sign * 10 * SLACK * tol / sensitivity, 0.0)
    if key in ("v", "r"):
        shift = shift.abs()  # keep the moment positive
    viol = rule.verify(prev, {**up, key: (up[key].double() + shift).float()}, t)
    assert bool((viol > 8).all()) and bool((viol < 12).all()), (viol.min(), viol.max())


def test_adam_forged_m_in_first_round() -> None:
    """Round 1 from zero state: v alone cannot give the sign of g, but theta does."""
    rule = Adam()
    g = torch.tensor([[0.3, -2.0, 5e-4, 40.0]])
    prev = prev_of(rule, torch.randn(1, 4))
    up = rule.client_step(prev, g, 1)
    assert rule.verify(prev, up, 1).item() <= 1
    forged = {**up, "m": -up["m"]}
    assert rule.verify(prev, forged, 1).item() > 1e3
