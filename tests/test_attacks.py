"""Attacks (fedrec.attacks): the camouflage attack against paper 000 Eq. (8) / Appendix F with eps put
back (hand-computed roots, an independent angle-form oracle, theta unchanged on every random Adam state,
point C and the asymptote left honest, untouched rows), gradient ascent, additive noise, the registry
and who is Byzantine (paper 000's seeded subset, Spattack's injected fake users)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.attacks import (
    ATTACKS,
    AdditiveNoise,
    Attack,
    AttackContext,
    Camouflage,
    GradientAscent,
    byzantine_count,
    byzantine_mask,
    camouflage_gradient,
    dense_upload_from_gradient,
    extend_users,
    fake_user_count,
    inject_fake_users,
    make_attack,
    other_root,
    untouched_root,
    upload_from_gradient,
)
from fedrec.data.interactions import Interactions
from fedrec.optim import Adam, Rule, make_rule
from fedrec.protocol import ServerState, UploadBatch

ADAMS = [
    Adam(),  # paper 000 Appendix G defaults
    Adam(eta=0.01, b1=0.5, b2=0.75, eps=1e-3),
    Adam(eta=1e-3, b1=0.8, b2=0.99, eps=1e-6),
]


# ----------------------------------------------------------------------------- helpers


def make_ctx(
    rule: Rule,
    theta: torch.Tensor,
    state: dict[str, torch.Tensor],
    t: int,
    client_rows: list[list[int]],
    g: torch.Tensor,
    seed: int = 0,
) -> AttackContext:
    """A context whose Byzantine client ``i`` touches ``client_rows[i]`` (sorted) with ``g`` stacked."""
    counts = torch.tensor([len(r) for r in client_rows], dtype=torch.int64)
    ptr = torch.zeros(len(client_rows) + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=ptr[1:])
    rows = torch.tensor([r for rs in client_rows for r in sorted(rs)], dtype=torch.int64)
    return AttackContext(
        server=ServerState(theta, state, t - 1),
        t=t,
        rule=rule,
        client_ids=torch.arange(10, 10 + len(client_rows), dtype=torch.int64),
        n_examples=counts + 1,
        ptr=ptr,
        rows=rows,
        g=g,
        generator=torch.Generator().manual_seed(seed),
    )


def rows_of(up: UploadBatch) -> dict[str, torch.Tensor]:
    return {"theta": up.theta, **up.state}


def adam_history(
    rule: Adam, n_rows: int, d: int, t: int, gen: torch.Generator, dtype: torch.dtype
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """The global Adam state after ``t - 1`` rounds of paper 000 Algorithm 1 with two sampled clients
    per round, each touching a row with a per-row probability and drawing ``g = mu + sigma z`` there
    (per-coordinate drift ``mu`` of magnitude 10^U(-4.5, 1), noise ``sigma`` 10^U(-1.5, 1) times it).
    Aggregating the uploads is linear in ``g`` and ``g^2``: ``m = sum_j (1-b1) b1^j mean(g)_{t-1-j}``,
    ``v = sum_j (1-b2) b2^j mean(g^2)_{t-1-j}``. Returns (state with theta, mu, sigma)."""
    f64 = torch.float64
    shape = (n_rows, d)
    mu = 10 ** (torch.rand(shape, generator=gen, dtype=f64) * 5.5 - 4.5)
    mu = torch.where(torch.rand(shape, generator=gen) < 0.5, -mu, mu)
    sigma = mu.abs() * 10 ** (torch.rand(shape, generator=gen, dtype=f64) * 2.5 - 1.5)
    p = torch.rand(n_rows, 1, generator=gen, dtype=f64) * 0.95 + 0.05
    k = t - 1
    z = torch.randn((k, 2, *shape), generator=gen, dtype=f64)
    touched = torch.rand((k, 2, n_rows, 1), generator=gen, dtype=f64) < p
    G = torch.where(touched, mu + sigma * z, 0.0)
    age = torch.arange(k - 1, -1, -1, dtype=f64)  # round t-1-j has age j
    w1 = ((1 - rule.b1) * rule.b1**age).reshape(k, 1, 1)
    w2 = ((1 - rule.b2) * rule.b2**age).reshape(k, 1, 1)
    m = (w1 * G.mean(1)).sum(0) if k else torch.zeros(shape, dtype=f64)
    v = (w2 * (G * G).mean(1)).sum(0) if k else torch.zeros(shape, dtype=f64)
    scale = 10 ** torch.randint(-2, 1, (n_rows, 1), generator=gen).to(f64)
    theta = torch.randn(shape, generator=gen, dtype=f64) * scale
    return {"theta": theta.to(dtype), "m": m.to(dtype), "v": v.to(dtype)}, mu, sigma


def angle_oracle(rule: Adam, m_bar: torch.Tensor, v_bar: torch.Tensor, g: torch.Tensor):
    """An independent solution of u(x) = u(g) (not Eq. 113): with x = sqrt(B/c2) tan(phi),
    u = R cos(phi - alpha) / sqrt(B); the other root is phi~ = 2 alpha - phi, a camouflage iff
    |phi~ mod 2 pi| < pi/2 (a shift by an odd multiple of pi flips the sign of cos: the update).
    Returns (g~, margin = pi/2 - |phi~ mod 2 pi|, a bound on the oracle's own float64 error) in float64; g~ is meaningful where margin > 0."""
    m_bar, v_bar, g = (x.to(torch.float64) for x in (m_bar, v_bar, g))
    c1, c2 = 1 - rule.b1, 1 - rule.b2
    B = rule.b2 * v_bar + rule.eps
    s = torch.sqrt(B / c2)
    phi = torch.atan(g / s)
    alpha = torch.atan2(c1 * s, rule.b1 * m_bar)
    psi = torch.remainder(2 * alpha - phi + math.pi, 2 * math.pi) - math.pi  # the same cos, in [-pi, pi)
    # its own float64 error: psi is off by a few 1e-16 rad, d(s tan psi) = s dpsi / cos^2 psi
    err = 1e-14 * s / torch.cos(psi) ** 2
    return s * torch.tan(psi), math.pi / 2 - psi.abs(), err


def step_dir(rule: Adam, m_bar, v_bar, g) -> torch.Tensor:
    """u(g) of Eq. (5) in float64."""
    m = rule.b1 * m_bar + (1 - rule.b1) * g
    return m / torch.sqrt(rule.b2 * v_bar + (1 - rule.b2) * g * g + rule.eps)


def theta_tol(rule: Adam, prev: dict[str, torch.Tensor], t: int) -> torch.Tensor:
    """A bound on |theta(g~) - theta(g)| for two float Adam steps with u(g~) = u(g) exactly: each
    theta carries a few roundings of the step (at most eta_t u_max, u_max = max_x |u(x)| =
    sqrt(A^2 / B + c1^2 / c2) by Cauchy-Schwarz) and of theta, and rounding g~ to the state's dtype moves
    u by at most 2 u_max times the unit roundoff (|x u'(x)| <= c1/sqrt(c2) + |A|/sqrt(B))."""
    dtype = prev["theta"].dtype
    u, tiny = torch.finfo(dtype).eps / 2, torch.finfo(dtype).tiny
    m_bar, v_bar, theta = (prev[k].to(torch.float64) for k in ("m", "v", "theta"))
    A, B = rule.b1 * m_bar, rule.b2 * v_bar + rule.eps
    u_max = torch.sqrt(A * A / B + (1 - rule.b1) ** 2 / (1 - rule.b2))
    eta_t = rule.step_size(t)
    return 16 * u * (theta.abs() + eta_t * u_max) + 8 * tiny


def grad_tol(rule: Adam, prev: dict[str, torch.Tensor], up: dict[str, torch.Tensor], g_t: torch.Tensor):
    """A bound on |reconstruct(up) - g~| (the client's rounding of m, amplified by 1/(1-b1), and the
    rounding of g~ itself), times 4."""
    dtype = up["theta"].dtype
    u, tiny = torch.finfo(dtype).eps / 2, torch.finfo(dtype).tiny
    m, m_bar = up["m"].to(torch.float64), prev["m"].to(torch.float64)
    dg = (3 * u * (m.abs() + 2 * rule.b1 * m_bar.abs()) + 3 * tiny) / (1 - rule.b1)
    return 4 * (dg + 2 * u * g_t.abs())


def random_round(rule: Adam, t: int, dtype: torch.dtype, seed: int, n_rows: int = 7, d: int = 6):
    """A random Adam state after t - 1 rounds and three Byzantine clients touching random rows, with
    honest gradients from the same per-coordinate distributions (sometimes 10-1000 times larger: a
    fresh gradient against a quiet history) and some exact zeros."""
    gen = torch.Generator().manual_seed(seed)
    prev, mu, sigma = adam_history(rule, n_rows, d, t, gen, dtype)
    client_rows = [
        torch.nonzero(torch.rand(n_rows, generator=gen) < 0.6).flatten().tolist() for _ in range(3)
    ]
    rows = torch.tensor([r for rs in client_rows for r in rs], dtype=torch.int64)
    z = torch.randn((len(rows), d), generator=gen, dtype=torch.float64)
    boost = 10 ** torch.randint(0, 4, (len(rows), 1), generator=gen).to(torch.float64)
    g = (mu[rows] + sigma[rows] * z) * torch.where(torch.rand(len(rows), 1, generator=gen) < 0.2, boost, 1.0)
    g = torch.where(torch.rand(g.shape, generator=gen) < 0.05, 0.0, g).to(dtype)
    state = {"m": prev["m"], "v": prev["v"]}
    return make_ctx(rule, prev["theta"], state, t, client_rows, g, seed)


def check_camouflage_rows(
    rule: Adam, t: int, prev: dict, up: dict, honest: dict, g: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every property of a camouflaged upload ``up`` against the honest upload ``honest`` (same rows,
    honest gradient ``g``). Returns the masks (clearly forged, clearly left honest) of the oracle."""
    f64 = torch.float64
    # 1. rule-consistent: the server's verifier accepts every row.
    assert (rule.verify(prev, up, t) <= 1).all()
    # 2. theta is the honest theta, on every coordinate.
    err = (up["theta"].to(f64) - honest["theta"].to(f64)).abs()
    assert (err <= theta_tol(rule, prev, t)).all(), float((err / theta_tol(rule, prev, t)).max())
    # 3. where the oracle has a camouflage root (clear of the asymptote and of the double root), the
    #    server reconstructs it, and it differs from g; elsewhere the upload is the honest one, bit for bit.
    g_or, margin, err_or = angle_oracle(rule, prev["m"], prev["v"], g)
    g64 = g.to(f64)
    g_rec = rule.reconstruct(prev, up, t).to(f64)
    tol = grad_tol(rule, prev, up, g_or) + err_or
    forged = (margin > 1e-6) & ((g_or - g64).abs() > 10 * tol)
    assert ((g_rec - g_or).abs() <= tol)[forged].all()
    assert ((g_rec - g64).abs() > tol)[forged].all()
    honest_only = margin < -1e-6  # point C: the squared equation's other root flips the update
    for k in ("theta", "m", "v"):
        assert torch.equal(up[k][honest_only], honest[k][honest_only]), k
    return forged, honest_only


# ----------------------------------------------------------------------------- camouflage: by hand

HAND = Adam(eta=0.1, b1=0.5, b2=0.75, eps=0.25)  # t = 1: eta_t = 0.1 sqrt(1 - 0.75) / (1 - 0.5) = 0.1


def test_camouflage_hand_roots() -> None:
    """Eq. (113) with V = v_bar + eps / b2, b1 = 0.5, b2 = 0.75, eps = 0.25 (c1 = 0.5, c2 = 0.25),
    m_bar = 2, v_bar = 1, so V = 1 + 0.25 / 0.75 = 4/3:

    g = 1: numerator   2 b1 b2 c1 m_bar V + b2 c1^2 V g - b1^2 c2 m_bar^2 g
                     = 2 (.5)(.75)(.5)(2)(4/3) + (.75)(.25)(4/3)(1) - (.25)(.25)(4)(1) = 1 + .25 - .25 = 1
           denominator b1^2 c2 m_bar^2 + 2 b1 c1 c2 m_bar g - b2 c1^2 V
                     = (.25)(.25)(4) + 2 (.5)(.5)(.25)(2)(1) - (.75)(.25)(4/3) = .25 + .25 - .25 = .25
           g~ = 4. Check: u(1) = (1 + .5) / sqrt(.75 + .25 + .25) = 1.5 / sqrt(1.25) = 3 / sqrt(5);
           u(4) = (1 + 2) / sqrt(.75 + .25 * 16 + .25) = 3 / sqrt(5). Same update.
           (The paper's eps-free Eq. 113 with v_bar = 1 would give .6875 / .3125 = 2.2: wrong here.)
    g = -1: numerator 1, denominator .25 - .25 - .25 = -.25: the other root is -4 with
           u(-4) = (1 - 2) / sqrt(5) = -1 / sqrt(5) = -u(-1) (u(-1) = .5 / sqrt(1.25)): point C, kept.
    g = 0: denominator .25 - .25 = 0: no finite root (u = 1 = c1 / sqrt(c2), the asymptote), kept.
    g = 2: numerator 1 + 0, denominator .25 + .5 - .25 = .5: g~ = 2 = g, the double root at the top.
    """
    t64 = lambda *x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    g = t64(1.0, -1.0, 0.0, 2.0)
    m_bar, v_bar = t64(2.0, 2.0, 2.0, 2.0), t64(1.0, 1.0, 1.0, 1.0)
    g_t, ok = other_root(m_bar, v_bar, g, b1=0.5, b2=0.75, eps=0.25)
    assert torch.allclose(g_t, t64(4.0, -1.0, 0.0, 2.0), rtol=1e-15, atol=0)
    assert ok.tolist() == [True, False, False, True]
    u = step_dir(HAND, m_bar[:3], v_bar[:3], t64(1.0, -1.0, -4.0))
    assert torch.allclose(u, t64(3 / 5**0.5, 1 / 5**0.5, -1 / 5**0.5), rtol=1e-15)
    assert abs(float(step_dir(HAND, t64(2.0), t64(1.0), t64(4.0))) - 3 / 5**0.5) < 1e-15
    crafted, forged = camouflage_gradient(HAND, m_bar, v_bar, g)
    assert crafted.tolist() == [4.0, -1.0, 0.0, 2.0] and forged.tolist() == [True, False, False, False]

    # Untouched rows (g = 0): g~_0 = 2 b1 c1 m_bar (b2 v_bar + eps) / (b1^2 c2 m_bar^2 - c1^2 (b2 v_bar + eps)).
    # m_bar = 3, v_bar = 1: 2 (.5)(.5)(3)(1) / ((.25)(.25)(9) - (.25)(1)) = 1.5 / .3125 = 4.8, and
    # u(0) = 1.5 / 1 = u(4.8) = (1.5 + 2.4) / sqrt(.75 + .25 * 23.04 + .25) = 3.9 / 2.6 = 1.5.
    # m_bar = 2: denominator .25 - .25 = 0 (none); m_bar = 0: denominator < 0, g~ = -0 (point C).
    g0, ok0 = untouched_root(t64(3.0, 2.0, 0.0), t64(1.0, 1.0, 0.0), b1=0.5, b2=0.75, eps=0.25)
    assert torch.allclose(g0, t64(4.8, 0.0, 0.0), rtol=1e-15, atol=0) and ok0.tolist() == [True, False, False]
    assert abs(float(step_dir(HAND, t64(3.0), t64(1.0), t64(4.8))) - 1.5) < 1e-15


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_camouflage_hand_upload(dtype: torch.dtype) -> None:
    """The 1-D rows of the hand case as uploads (d = 1): client 0 touches rows 0-3 with g = 1, -1, 0, 2;
    rows 4-6 (m_bar = 3, 2, 0) it does not touch. theta_bar = 0.5, t = 1, eta_t = 0.1."""
    m_bar = torch.tensor([[2.0], [2.0], [2.0], [2.0], [3.0], [2.0], [0.0]], dtype=dtype)
    v_bar = torch.tensor([[1.0], [1.0], [1.0], [1.0], [1.0], [1.0], [0.0]], dtype=dtype)
    theta = torch.full((7, 1), 0.5, dtype=dtype)
    g = torch.tensor([[1.0], [-1.0], [0.0], [2.0]], dtype=dtype)
    ctx = make_ctx(HAND, theta, {"m": m_bar, "v": v_bar}, 1, [[0, 1, 2, 3]], g)

    up = Camouflage(all_rows=False)(ctx)
    assert up.rows.tolist() == [0, 1, 2, 3] and up.ptr.tolist() == [0, 4]
    # row 0: m~ = .5 * 2 + .5 * 4 = 3, v~ = .75 * 1 + .25 * 16 = 4.75, theta = .5 - .1 * 3 / sqrt(5)
    # rows 1-3 honest: m = 1 + .5 g = .5, 1, 2; v = .75 + .25 g^2 = 1, .75, 1.75
    assert up.state["m"].flatten().tolist() == [3.0, 0.5, 1.0, 2.0]
    assert up.state["v"].flatten().tolist() == [4.75, 1.0, 0.75, 1.75]
    expect = torch.tensor([0.5 - 0.3 / 5**0.5, 0.5 - 0.05 / 1.25**0.5, 0.5 - 0.1, 0.5 - 0.2 / 2**0.5])
    assert torch.allclose(up.theta.flatten().double(), expect.double(), rtol=0, atol=4e-7)
    honest = upload_from_gradient(ctx, ctx.rows, ctx.ptr, ctx.g)
    assert torch.allclose(up.theta, honest.theta, rtol=0, atol=4e-7)
    assert HAND.reconstruct(ctx.prev(up.rows), rows_of(up), 1).flatten().tolist() == [4.0, -1.0, 0.0, 2.0]

    dense = Camouflage(all_rows=True)(ctx)
    assert dense.rows.tolist() == list(range(7)) and dense.ptr.tolist() == [0, 7]
    for k in ("theta", "m", "v"):  # touched rows as without all_rows
        assert torch.equal(rows_of(dense)[k][:4], rows_of(up)[k])
    g_dense = HAND.reconstruct(ctx.prev(dense.rows), rows_of(dense), 1).flatten().double()
    assert torch.allclose(g_dense, torch.tensor([4.0, -1.0, 0.0, 2.0, 4.8, 0.0, 0.0]).double(), atol=1e-6)
    default = HAND.default_rows(ctx.prev(torch.arange(4, 7)), 1)
    assert torch.allclose(dense.theta[4:], default["theta"], rtol=0, atol=4e-7)
    for k in ("theta", "m", "v"):  # rows 5, 6 cannot be camouflaged: the default values, bit for bit
        assert torch.equal(rows_of(dense)[k][5:], default[k][1:])
    assert (HAND.verify(ctx.prev(dense.rows), rows_of(dense), 1) <= 1).all()


def test_camouflage_closed_form_agrees_with_eq113_at_zero() -> None:
    """g~_0 needs b1^2 c2 m_bar^2 > c1^2 (b2 v_bar + eps). An aggregated history has, by Cauchy-Schwarz,
    m_bar^2 <= v_bar sum_k c1^2 b1^(2k) / (c2 b2^k): for b1 = 0.5, b2 = 0.75 that is 1.5 v_bar < 3 v_bar,
    so untouched rows can never be camouflaged there; for the defaults they often can early on."""
    gen = torch.Generator().manual_seed(3)
    for rule in ADAMS:
        prev, _, _ = adam_history(rule, 50, 8, 6, gen, torch.float64)
        kw = {"b1": rule.b1, "b2": rule.b2, "eps": rule.eps}
        a, ok_a = untouched_root(prev["m"], prev["v"], **kw)
        b, ok_b = other_root(prev["m"], prev["v"], torch.zeros_like(prev["m"]), **kw)
        assert torch.equal(ok_a, ok_b) and bool(ok_a.any()) == (rule.b1 > 0.5) and (~ok_a).any()
        assert torch.allclose(a, b, rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------- camouflage: random states


@settings(max_examples=40, deadline=None)
@given(
    rule=st.sampled_from(ADAMS),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    t=st.one_of(st.integers(1, 30), st.integers(1, 3000)),
    seed=st.integers(0, 2**31 - 1),
)
def test_camouflage_random_states(rule: Adam, dtype: torch.dtype, t: int, seed: int) -> None:
    ctx = random_round(rule, t, dtype, seed)
    prev = ctx.prev(ctx.rows)
    honest = rows_of(upload_from_gradient(ctx, ctx.rows, ctx.ptr, ctx.g))

    up = Camouflage(all_rows=False)(ctx)
    assert torch.equal(up.rows, ctx.rows) and torch.equal(up.ptr, ctx.ptr)
    assert torch.equal(up.client_ids, ctx.client_ids) and torch.equal(up.n_examples, ctx.n_examples)
    assert up.theta.dtype == dtype and all(s.dtype == dtype for s in up.state.values())
    check_camouflage_rows(rule, t, prev, rows_of(up), honest, ctx.g)

    # all_rows: every row of the table per client; untouched rows forge g~_0 and keep the default theta.
    dense = Camouflage(all_rows=True)(ctx)
    n, b = ctx.n_rows, ctx.b
    assert torch.equal(dense.rows, torch.arange(n).repeat(b))
    assert torch.equal(dense.ptr, torch.arange(b + 1) * n)
    g_dense = torch.zeros((b, n, ctx.g.shape[1]), dtype=dtype)
    g_dense[ctx.owner(), ctx.rows] = ctx.g
    honest_dense = rows_of(dense_upload_from_gradient(ctx, g_dense))
    prev_dense = ctx.prev(dense.rows)
    check_camouflage_rows(rule, t, prev_dense, rows_of(dense), honest_dense, g_dense.reshape(b * n, -1))
    flat = (ctx.owner() * n + ctx.rows).tolist()
    untouched = torch.ones(b * n, dtype=torch.bool)
    untouched[flat] = False
    default = rule.default_rows(prev_dense, t)
    assert torch.equal(honest_dense["theta"][untouched], default["theta"][untouched])
    err = (dense.theta[untouched].double() - default["theta"][untouched].double()).abs()
    assert (err <= theta_tol(rule, prev_dense, t)[untouched]).all()
    for k in ("theta", "m", "v"):  # touched rows: as without all_rows
        assert torch.equal(rows_of(dense)[k][flat], rows_of(up)[k])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_camouflage_coverage(dtype: torch.dtype) -> None:
    """The random-state test is not vacuous: early rounds with steady histories camouflage many touched
    and untouched coordinates and leave point-C coordinates honest."""
    forged_n = honest_n = total = 0
    for seed, t in [(1, 4), (2, 8), (3, 20), (4, 60)]:
        ctx = random_round(Adam(), t, dtype, seed, n_rows=20, d=16)
        honest = rows_of(upload_from_gradient(ctx, ctx.rows, ctx.ptr, ctx.g))
        up = Camouflage(all_rows=False)(ctx)
        forged, kept = check_camouflage_rows(Adam(), t, ctx.prev(ctx.rows), rows_of(up), honest, ctx.g)
        forged_n, honest_n, total = (
            forged_n + int(forged.sum()),
            honest_n + int(kept.sum()),
            total + forged.numel(),
        )
        # all_rows: every client forges the untouched rows where g~_0 exists, and only there
        dense = Camouflage(all_rows=True)(ctx)
        m, v = ctx.server.state["m"], ctx.server.state["v"]
        g0, ok0 = untouched_root(m, v, b1=0.9, b2=0.999, eps=1e-8)
        g_rec = Adam().reconstruct(ctx.prev(dense.rows), rows_of(dense), t).reshape(ctx.b, ctx.n_rows, -1)
        untouched = torch.ones(ctx.b, ctx.n_rows, dtype=torch.bool)
        untouched[ctx.owner(), ctx.rows] = False
        assert ok0.any() and (untouched[:, :, None] & ok0).any()
        forge0 = untouched[:, :, None] & ok0
        assert torch.allclose(g_rec[forge0].double(), g0.expand_as(g_rec)[forge0], rtol=1e-3, atol=0)
        default = Adam().default_rows(ctx.prev(dense.rows), t)
        keep0 = (untouched[:, :, None] & ~ok0).reshape(ctx.b * ctx.n_rows, -1)
        for k in ("theta", "m", "v"):
            assert torch.equal(rows_of(dense)[k][keep0], default[k][keep0])
    assert forged_n > 0.1 * total and honest_n > 0.1 * total


def test_camouflage_select_random_and_seed() -> None:
    ctx = random_round(Adam(), 6, torch.float64, 11, n_rows=20, d=16)
    far = Camouflage(all_rows=False)(ctx)
    rnd = Camouflage(all_rows=False, select="random")(ctx)
    again = Camouflage(all_rows=False, select="random")(random_round(Adam(), 6, torch.float64, 11, 20, 16))
    assert torch.equal(rnd.state["m"], again.state["m"])  # the attacker's own seeded generator
    prev = ctx.prev(ctx.rows)
    g_far, g_rnd = Adam().reconstruct(prev, rows_of(far), 6), Adam().reconstruct(prev, rows_of(rnd), 6)
    forged = (g_far - ctx.g).abs() > 1e-9 * (1 + ctx.g.abs())
    took = (g_rnd - g_far).abs() <= 1e-9 * (1 + g_far.abs())
    kept = (g_rnd - ctx.g).abs() <= 1e-9 * (1 + ctx.g.abs())
    assert (took | kept).all()
    share = float(took[forged].double().mean())
    assert 0.3 < share < 0.7  # about half of the forgeable coordinates
    assert (Adam().verify(prev, rows_of(rnd), 6) <= 1).all()
    # "farthest" is the farthest camouflage: no coordinate of "random" is farther from g.
    assert ((g_rnd - ctx.g).abs() <= (g_far - ctx.g).abs() + 1e-12).all()
    dense = Camouflage(select="random")(ctx)
    assert (Adam().verify(ctx.prev(dense.rows), rows_of(dense), 6) <= 1).all()


@pytest.mark.parametrize("name", ["sgd", "momentum", "adagrad", "rmsprop"])
def test_camouflage_needs_adam(name: str) -> None:
    rule = make_rule(name)
    theta = torch.zeros(3, 2)
    ctx = make_ctx(rule, theta, rule.init_state(theta), 1, [[0]], torch.ones(1, 2))
    with pytest.raises(ValueError, match="defined for Adam"):
        Camouflage()(ctx)


# ----------------------------------------------------------------------------- gradient ascent


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(["adam", "sgd", "momentum", "adagrad", "rmsprop"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    scale=st.sampled_from([1.0, 3.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_gradient_ascent(name: str, dtype: torch.dtype, scale: float, seed: int) -> None:
    rule = make_rule(name)
    gen = torch.Generator().manual_seed(seed)
    theta = (torch.randn(9, 4, generator=gen, dtype=torch.float64) * 0.1).to(dtype)
    state = {
        k: (torch.rand(9, 4, generator=gen, dtype=torch.float64) * 1e-2).to(dtype) for k in rule.state_names
    }
    if "m" in state:
        state["m"] = state["m"] - 5e-3
    g = (torch.randn(6, 4, generator=gen, dtype=torch.float64) * 0.1).to(dtype)
    ctx = make_ctx(rule, theta, state, 7, [[0, 2, 5], [], [1, 2, 8]], g, seed)
    up = GradientAscent(scale=scale)(ctx)
    assert torch.equal(up.rows, ctx.rows) and torch.equal(up.ptr, ctx.ptr)
    prev = ctx.prev(ctx.rows)
    g_rec, viol = rule.reconstruct_and_verify(prev, rows_of(up), 7)
    assert (viol <= 1).all()
    rtol = 1e-9 if dtype == torch.float64 else 1e-3  # float32: reconstruction from rounded uploads
    assert torch.allclose(g_rec.double(), -scale * g.double(), rtol=rtol, atol=rtol * float(g.abs().max()))
    expect = rule.client_step(prev, -scale * g, 7)  # exactly the honest step with -scale g
    for k in rule.keys:
        assert torch.equal(rows_of(up)[k], expect[k])


# ----------------------------------------------------------------------------- noise


@pytest.mark.parametrize("name", ["adam", "momentum", "adagrad", "rmsprop"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_noise_fails_verify_on_every_row(name: str, dtype: torch.dtype) -> None:
    rule = make_rule(name)
    gen = torch.Generator().manual_seed(5)
    theta = torch.randn(40, 8, generator=gen).to(dtype)
    state = {k: (torch.rand(40, 8, generator=gen) * 1e-2).to(dtype) for k in rule.state_names}
    g = (torch.randn(45, 8, generator=gen) * 0.1).to(dtype)
    g[:3] = 0.0  # an all-zero gradient row is noised and flagged too
    ctx = make_ctx(rule, theta, state, 3, [list(range(0, 40, 2)), list(range(15)), list(range(30, 40))], g, 9)
    attack = AdditiveNoise()
    assert attack.sigma == 0.5 and not attack.rule_consistent
    up = attack(ctx)
    honest = upload_from_gradient(ctx, ctx.rows, ctx.ptr, ctx.g)
    prev = ctx.prev(ctx.rows)
    assert (rule.verify(prev, rows_of(honest), 3) <= 1).all()
    assert (rule.verify(prev, rows_of(up), 3) > 1).all()  # every noised row
    for k in rule.state_names:  # only theta is edited
        assert torch.equal(up.state[k], honest.state[k])
    noise = (up.theta - honest.theta).double()
    assert (noise != 0).all() and abs(float(noise.std()) - 0.5) < 0.05
    again = AdditiveNoise()(
        make_ctx(rule, theta, state, 3, [list(range(0, 40, 2)), list(range(15)), list(range(30, 40))], g, 9)
    )
    assert torch.equal(again.theta, up.theta)  # the attacker's seeded generator


# ----------------------------------------------------------------------------- registry and context


def test_registry() -> None:
    assert {"camouflage", "gradient-ascent", "noise", "poison"} <= set(ATTACKS)
    flags = {name: (cls.omniscient, cls.rule_consistent) for name, cls in ATTACKS.items()}
    want = {"camouflage": (False, True), "gradient-ascent": (False, True), "noise": (False, False)}
    assert {k: flags[k] for k in want} == want and flags["poison"] == (False, False)
    assert make_attack("gradient-ascent") == GradientAscent(scale=1.0)
    assert make_attack("noise", sigma=0.1).sigma == 0.1
    assert make_attack("camouflage", all_rows=False, select="random") == Camouflage(False, "random")
    for name in ATTACKS:
        assert isinstance(make_attack(name), Attack) and make_attack(name).name == name
    with pytest.raises(ValueError, match=", ".join(sorted(ATTACKS))):
        make_attack("no-such-attack")
    with pytest.raises(ValueError, match="it takes sigma"):
        make_attack("noise", scale=2.0)
    for name, bad in [
        ("noise", {"sigma": 0.0}),
        ("noise", {"sigma": float("nan")}),
        ("gradient-ascent", {"scale": -1.0}),
        ("camouflage", {"select": "nearest"}),
        ("camouflage", {"all_rows": 1}),
    ]:
        with pytest.raises(ValueError):
            make_attack(name, **bad)


def test_context_checks_shapes() -> None:
    rule = make_rule("adam")
    theta = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="g has shape"):
        make_ctx(rule, theta, rule.init_state(theta), 1, [[0, 1]], torch.zeros(3, 3))
    ctx = make_ctx(rule, theta, rule.init_state(theta), 1, [[0, 1], [3]], torch.zeros(3, 3))
    assert ctx.b == 2 and ctx.n_rows == 4 and ctx.owner().tolist() == [0, 0, 1]


# ----------------------------------------------------------------------------- population


def test_byzantine_mask() -> None:
    for n, fraction, k in [
        (943, 0.2, 189),
        (943, 0.3, 283),
        (1892, 0.4, 757),
        (10, 0.3, 3),
        (10, 0.25, 3),
        (5, 0.0, 0),
    ]:
        assert byzantine_count(n, fraction) == k
        mask = byzantine_mask(n, fraction, seed=7)
        assert mask.dtype == torch.bool and mask.shape == (n,) and int(mask.sum()) == k
    a, b, c = byzantine_mask(500, 0.3, 1), byzantine_mask(500, 0.3, 1), byzantine_mask(500, 0.3, 2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert byzantine_mask(500, 0.0, 1).sum() == 0 and byzantine_mask(50, 1.0, 1).all()
    for bad in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match="fraction"):
            byzantine_mask(10, bad, 0)


def small_train() -> Interactions:
    rng = np.random.default_rng(0)
    users, items = [], []
    for u, size in enumerate([3, 5, 5, 8, 2, 6, 5, 9, 4]):  # median 5
        users += [u] * size
        items += rng.choice(30, size=size, replace=False).tolist()
    return Interactions.from_pairs(np.array(users), np.array(items), n_users=9, n_items=30, name="toy")


def test_inject_fake_users() -> None:
    train = small_train()
    assert (
        fake_user_count(9, 0.25) == 3 and fake_user_count(9, 0.4) == 6 and fake_user_count(1000, 0.1) == 111
    )
    enlarged, mask = inject_fake_users(train, 0.4, seed=3)
    assert enlarged.n_users == 15 and enlarged.n_items == 30 and enlarged.name == "toy"
    assert mask.tolist() == [False] * 9 + [True] * 6
    assert int(mask.sum()) / len(mask) == pytest.approx(0.4)
    # the real users are untouched, the fake ones come after them with the median size (5), distinct items
    assert np.array_equal(enlarged.indptr[:10], train.indptr)
    assert np.array_equal(enlarged.indices[: train.nnz], train.indices)
    assert (enlarged.counts()[9:] == 5).all()
    for u in range(9, 15):
        items = enlarged.items_of(u)
        assert len(np.unique(items)) == 5 and np.all(np.diff(items) > 0) and items.max() < 30
    assert list(enlarged.user_ids[9:]) == list(range(9, 15))
    # seeded: same seed, same users; another seed, other items
    again, _ = inject_fake_users(train, 0.4, seed=3)
    other, _ = inject_fake_users(train, 0.4, seed=4)
    assert np.array_equal(again.indices, enlarged.indices)
    assert not np.array_equal(other.indices, enlarged.indices)
    # the test split grows with empty users
    test = extend_users(train, 15)
    assert test.n_users == 15 and test.nnz == train.nnz and (test.counts()[9:] == 0).all()
    # fraction 0: no Byzantine
    same, none = inject_fake_users(train, 0.0, seed=3)
    assert same is train and none.shape == (9,) and not none.any()
    with pytest.raises(ValueError, match="fraction"):
        inject_fake_users(train, 1.0, seed=0)


def test_inject_fake_users_string_ids() -> None:
    x = Interactions.from_pairs(
        np.array([0, 0, 1]), np.array([0, 1, 1]), user_ids=np.array(["ann", "bob"]), n_items=3
    )
    enlarged, mask = inject_fake_users(x, 0.5, seed=0)
    assert list(enlarged.user_ids) == ["ann", "bob", "fake-0", "fake-1"] and mask.sum() == 2
    assert (enlarged.counts()[2:] == 2).all()  # median of (2, 1) = 1.5 rounds half up to 2
