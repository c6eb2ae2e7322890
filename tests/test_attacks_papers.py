"""The attacks of papers 001 (RESAM) and 002 (SignGuard), ALGORITHMS.md section 7: every rule-consistent
attack of the registry passes the rule verifier on every optimizer and the server reconstructs exactly
the crafted gradient; hand-checked ALIE / IPM / ByzMean / sign-flip, min-max and min-sum against the
closed-form end of their feasible interval, Gaussian from the attacker's generator only, label-flip
against a per-user autograd oracle on FISM and MF, and short simulated runs with every attack."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedrec.attacks import (
    ALIE,
    ATTACKS,
    IPM,
    AttackContext,
    ByzMean,
    Gaussian,
    GradientAttack,
    LabelFlip,
    MinMax,
    MinSum,
    SignFlip,
    baruch_z,
    dense_over_union,
    largest_gamma,
    make_attack,
    perturbation,
)
from fedrec.config import Config
from fedrec.data import split_per_user, synthetic
from fedrec.federation.clients import client_gradients
from fedrec.federation.simulation import FederatedRun
from fedrec.models import CSRTensors, TableLayout, gather_users, sample_negatives
from fedrec.optim import RULES, Rule, make_rule
from fedrec.protocol import REASONS, ServerState, UploadBatch

f64 = torch.float64


# ----------------------------------------------------------------------------- contexts


def flat(client_rows: list[list[int]], g: torch.Tensor | None, d: int, gen: torch.Generator, dtype):
    """(ptr, rows, g) for clients listing ``client_rows`` (sorted), random ``g`` unless given."""
    counts = torch.tensor([len(r) for r in client_rows], dtype=torch.int64)
    ptr = torch.zeros(len(client_rows) + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=ptr[1:])
    rows = torch.tensor([r for rs in client_rows for r in sorted(rs)], dtype=torch.int64)
    if g is None:
        g = (torch.randn(rows.shape[0], d, generator=gen, dtype=f64) * 0.1).to(dtype)
    return ptr, rows, g


def make_ctx(
    rule: Rule,
    byz_rows: list[list[int]],
    honest_rows: list[list[int]],
    *,
    n_rows: int = 9,
    d: int = 3,
    t: int = 4,
    seed: int = 0,
    dtype=f64,
    g: torch.Tensor | None = None,
    honest_g: torch.Tensor | None = None,
) -> AttackContext:
    """Byzantine clients listing ``byz_rows``, honest ones ``honest_rows``, random state and gradients;
    ``flipped_g`` filled with other random values (label-flip just uploads it)."""
    gen = torch.Generator().manual_seed(seed)
    theta = (torch.randn(n_rows, d, generator=gen, dtype=f64) * 0.1).to(dtype)
    state = {k: (torch.rand(n_rows, d, generator=gen, dtype=f64) * 1e-2).to(dtype) for k in rule.state_names}
    if "m" in state:
        state["m"] = state["m"] - 5e-3
    ptr, rows, g = flat(byz_rows, g, d, gen, dtype)
    hptr, hrows, hg = flat(honest_rows, honest_g, d, gen, dtype)
    b, h = len(byz_rows), len(honest_rows)
    return AttackContext(
        server=ServerState(theta, state, t - 1),
        t=t,
        rule=rule,
        client_ids=torch.arange(100, 100 + b, dtype=torch.int64),
        n_examples=ptr.diff() + 1,
        ptr=ptr,
        rows=rows,
        g=g,
        generator=torch.Generator().manual_seed(seed + 1),
        honest_client_ids=torch.arange(h, dtype=torch.int64),
        honest_n_examples=hptr.diff() + 2,
        honest_ptr=hptr,
        honest_rows=hrows,
        honest_g=hg,
        flipped_g=(torch.randn(rows.shape[0], d, generator=gen, dtype=f64) * 0.1).to(dtype),
    )


def up_rows(up: UploadBatch) -> dict[str, torch.Tensor]:
    return {"theta": up.theta, **up.state}


SHAPES = {  # (Byzantine rows, honest rows) over 9 rows
    "sparse": ([[0, 2, 5], [1, 2, 8], [4]], [[0, 1], [2, 3, 5], [5, 6, 7, 8], [0, 8]]),
    "dense": ([list(range(9))] * 3, [list(range(9))] * 4),  # dense vectors: every client lists every row
    "one-byzantine": ([[3, 4]], [[0, 1], [1, 3], [2, 6, 8]]),
    "one-honest": ([[0, 2], [7]], [[1, 2, 7]]),
    "no-honest": ([[0, 2], [7]], []),
    "empty-rows": ([[], [1, 2]], [[0], [], [2, 3]]),
}


def rule_consistent_attacks():
    return sorted(name for name, cls in ATTACKS.items() if cls.rule_consistent)


# ----------------------------------------------------------------------------- contract over the registry


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("rule_name", sorted(RULES))
@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_rule_consistent_attacks_pass_the_verifier(shape: str, rule_name: str, dtype) -> None:
    """Every rule-consistent attack of the registry, with its defaults, on every optimizer: each listed
    row passes ``rule.verify``, every client lists sorted unique rows, ``n_examples`` stay the clients'
    own, and (float64) the server reconstructs exactly the crafted gradient."""
    rule = make_rule(rule_name)
    byz, honest = SHAPES[shape]
    checked = 0
    for name in rule_consistent_attacks():
        attack = make_attack(name)
        ctx = make_ctx(rule, byz, honest, dtype=dtype, seed=len(name))
        try:
            up = attack(ctx)
        except ValueError as err:  # an attack defined for one optimizer only (camouflage: Adam)
            assert "defined for" in str(err) and rule_name != "adam", (name, err)
            continue
        checked += 1
        assert torch.equal(up.client_ids, ctx.client_ids) and torch.equal(up.n_examples, ctx.n_examples)
        assert up.ptr.shape == (ctx.b + 1,) and int(up.ptr[-1]) == up.rows.shape[0]
        for i in range(ctx.b):
            r = up.rows[up.ptr[i] : up.ptr[i + 1]]
            assert torch.equal(r, torch.unique(r)), (name, "rows sorted and unique")
        prev = ctx.prev(up.rows)
        g_rec, viol = rule.reconstruct_and_verify(prev, up_rows(up), ctx.t)
        assert (viol <= 1).all(), (name, rule_name, float(viol.max()))
        assert torch.isfinite(g_rec).all()
        if isinstance(attack, GradientAttack):
            ptr, rows, g = attack.craft(make_ctx(rule, byz, honest, dtype=dtype, seed=len(name)))
            assert torch.equal(ptr, up.ptr) and torch.equal(rows, up.rows)
            tol = 1e-9 if dtype == f64 else 2e-3
            scale = max(float(g.abs().max()) if g.numel() else 0.0, 1e-3)
            assert torch.allclose(g_rec.double(), g.double(), rtol=tol, atol=tol * scale), name
    assert checked >= len(rule_consistent_attacks()) - 1


def test_registry_has_the_paper_attacks() -> None:
    want = {
        "sign-flip": (False, True),
        "gaussian": (False, True),
        "label-flip": (False, True),
        "alie": (True, True),
        "ipm": (True, True),
        "min-max": (True, True),
        "min-sum": (True, True),
        "byzmean": (True, True),
    }
    assert {k: (ATTACKS[k].omniscient, ATTACKS[k].rule_consistent) for k in want} == want
    assert ATTACKS["label-flip"].needs_flipped and not ATTACKS["alie"].needs_flipped
    assert make_attack("sign-flip", c=-5.0) == SignFlip(c=-5.0)
    assert make_attack("alie", z=0.3, ddof=1, stats="all") == ALIE(0.3, 1, "all")
    assert make_attack("min-sum", perturbation="sign", gamma_init=50.0).gamma_init == 50.0
    for name, bad in [
        ("sign-flip", {"c": 0.0}),
        ("sign-flip", {"c": math.inf}),
        ("gaussian", {"sigma": -1.0}),
        ("ipm", {"eps": 0.0}),
        ("alie", {"z": math.nan}),
        ("alie", {"ddof": 2}),
        ("byzmean", {"stats": "byzantine"}),
        ("min-max", {"perturbation": "mean"}),
        ("min-max", {"steps": -1}),
        ("min-sum", {"gamma_init": 0.0}),
    ]:
        with pytest.raises(ValueError):
            make_attack(name, **bad)
    with pytest.raises(ValueError, match="has no parameter"):
        make_attack("label-flip", scale=2.0)


def test_omniscient_and_flipped_need_their_data() -> None:
    rule = make_rule("sgd")
    ctx = make_ctx(rule, [[0]], [[1]])
    bare = AttackContext(
        server=ctx.server, t=ctx.t, rule=rule, client_ids=ctx.client_ids, n_examples=ctx.n_examples,
        ptr=ctx.ptr, rows=ctx.rows, g=ctx.g, generator=ctx.generator,
    )  # fmt: skip
    for name, cls in ATTACKS.items():
        if cls.omniscient or cls.needs_flipped:
            with pytest.raises(ValueError):
                make_attack(name)(bare)
    with pytest.raises(ValueError, match="flipped_g"):
        AttackContext(**{**vars(ctx), "flipped_g": torch.zeros(5, 3)})


# ----------------------------------------------------------------------------- hand-checked


# three honest clients, d = 1: c0 lists rows {0, 2}, c1 {2, 5}, c2 {0}; dense over the union {0, 2, 5}
HAND_ROWS = [[0, 2], [2, 5], [0]]
HAND_G = torch.tensor([[1.0], [3.0], [5.0], [2.0], [4.0]], dtype=f64)
HAND_DENSE = np.array([[1.0, 3.0, 0.0], [0.0, 5.0, 2.0], [4.0, 0.0, 0.0]])


def hand_ctx(rule_name: str = "sgd", b: int = 2) -> AttackContext:
    byz = [[1, 2], [8], [0, 3], [4], [6]][:b]
    return make_ctx(make_rule(rule_name), byz, HAND_ROWS, d=1, honest_g=HAND_G)


def reconstructed(ctx: AttackContext, up: UploadBatch) -> torch.Tensor:
    return ctx.rule.reconstruct(ctx.prev(up.rows), up_rows(up), ctx.t).double()


def test_dense_over_union_by_hand() -> None:
    ctx = hand_ctx()
    union, X = dense_over_union(ctx.honest_ptr, ctx.honest_rows, ctx.honest_g)
    assert union.tolist() == [0, 2, 5]
    assert np.array_equal(X[..., 0].numpy(), HAND_DENSE)


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("z", [1.0, 0.3, -1.0])
def test_alie_by_hand(z: float, ddof: int) -> None:
    ctx = hand_ctx()
    want = HAND_DENSE.mean(0) - z * HAND_DENSE.std(0, ddof=ddof)
    up = ALIE(z=z, ddof=ddof)(ctx)
    assert up.rows.tolist() == [0, 2, 5, 0, 2, 5] and up.ptr.tolist() == [0, 3, 6]
    assert up.n_examples.tolist() == ctx.n_examples.tolist()  # their own claims
    got = reconstructed(ctx, up)[:, 0].reshape(2, 3)
    assert np.allclose(got.numpy(), want[None, :], rtol=1e-12, atol=1e-12)


def test_baruch_z() -> None:
    # ALGORITHMS.md 7.8's table (Baruch form): s = floor(n/2 + 1) - f, z = Phi^-1((n - s) / n)
    for n, f, z in [(50, 5, 0.2019), (50, 10, 0.4677), (50, 15, 0.7722), (50, 20, 1.1750), (50, 24, 1.7507),
                    (30, 6, 0.4307)]:  # fmt: skip
        assert abs(baruch_z(n, f) - z) < 1e-4, (n, f)
    assert baruch_z(50, 24) == pytest.approx(1.7506860712521695)  # Phi^-1(48 / 50)
    assert baruch_z(4, 1) == 0.0  # s = 2, Phi^-1(1/2)
    assert math.isfinite(baruch_z(5, 4))  # Byzantine majority: s clamped to 1
    # z = None: the round's n = 3 honest + 2 Byzantine = 5, f = 2: s = 1, z = Phi^-1(0.8) = 0.8416
    ctx = hand_ctx(b=2)
    got = reconstructed(ctx, ALIE()(ctx))[:3, 0].numpy()
    assert np.allclose(got, HAND_DENSE.mean(0) - 0.8416212335729143 * HAND_DENSE.std(0), rtol=1e-12)


@pytest.mark.parametrize("eps", [0.1, 0.2, 10.0])
def test_ipm_by_hand(eps: float) -> None:
    ctx = hand_ctx(b=3)
    up = IPM(eps=eps)(ctx)
    _, _, g = IPM(eps=eps).craft(ctx)
    assert torch.equal(g[:, 0], torch.tensor(-eps * HAND_DENSE.mean(0), dtype=f64).repeat(3))
    assert np.allclose(
        reconstructed(ctx, up)[:, 0].numpy(), np.tile(-eps * HAND_DENSE.mean(0), 3), rtol=1e-12
    )


@pytest.mark.parametrize("b", [1, 2, 3, 5])
@pytest.mark.parametrize("rule_name", ["sgd", "adam"])
def test_byzmean_mean_of_all_uploads_is_g_m1(b: int, rule_name: str) -> None:
    """SignGuard eq. (8): the unweighted mean of all n = h + b uploads' gradients (the honest ones dense
    over the union, a 0 where they list nothing) is the ALIE vector g_m1, for every split m1 = b // 2."""
    ctx = hand_ctx(rule_name, b=b)
    up = ByzMean(z=1.0)(ctx)
    g_rec = reconstructed(ctx, up)[:, 0].reshape(b, 3).numpy()
    g_m1 = HAND_DENSE.mean(0) - HAND_DENSE.std(0)
    m1 = b // 2
    assert np.allclose(g_rec[:m1], g_m1[None, :], rtol=1e-9, atol=1e-12)
    total = HAND_DENSE.sum(0) + g_rec.sum(0)
    assert np.allclose(total / (3 + b), g_m1, rtol=1e-9, atol=1e-12)
    if b - m1 >= 1:
        assert not np.allclose(g_rec[m1:], g_m1[None, :])  # the m2 clients compensate


@pytest.mark.parametrize("c", [-1.0, -5.0, 2.5])
def test_sign_flip_is_c_times_own(c: float) -> None:
    ctx = make_ctx(make_rule("momentum"), *SHAPES["sparse"])
    up = SignFlip(c=c)(ctx)
    assert torch.equal(up.rows, ctx.rows) and torch.equal(up.ptr, ctx.ptr)
    assert torch.allclose(reconstructed(ctx, up), c * ctx.g, rtol=1e-9, atol=1e-12)


def test_gaussian_reproducible_and_independent_of_g() -> None:
    rule = make_rule("sgd")
    rows = [list(range(400)), list(range(100, 500))]
    ctx = make_ctx(rule, rows, [[0]], n_rows=500, d=8, seed=3)
    other = make_ctx(rule, rows, [[1, 2]], n_rows=500, d=8, seed=3, g=torch.randn(800, 8, dtype=f64) * 7)
    up = Gaussian()(ctx)
    _, _, g1 = Gaussian().craft(make_ctx(rule, rows, [[0]], n_rows=500, d=8, seed=3))
    assert torch.allclose(reconstructed(ctx, up), g1.double(), rtol=1e-9, atol=1e-12)
    ptr, r, g2 = Gaussian().craft(other)  # another gradient, other honest clients: the same draw
    assert torch.equal(g1, g2) and torch.equal(r, other.rows) and torch.equal(ptr, other.ptr)
    assert abs(float(g1.std()) - 0.5) < 0.02 and abs(float(g1.mean())) < 0.02
    seeded = make_ctx(rule, rows, [[0]], n_rows=500, d=8, seed=4)
    assert not torch.equal(Gaussian().craft(seeded)[2], g1)  # the generator decides
    big = Gaussian(sigma=100.0).craft(make_ctx(rule, rows, [[0]], n_rows=500, d=8, seed=3))[2]
    assert torch.allclose(big, 200.0 * g1)


# ----------------------------------------------------------------------------- min-max / min-sum


def gamma_oracle(X: np.ndarray, mu: np.ndarray, p: np.ndarray, kind: str) -> float:
    """The end of the feasible interval in closed form (each constraint is a quadratic in gamma)."""
    D2 = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    diff = mu[None, :] - X
    a, b, c = (diff**2).sum(1), diff @ p, p @ p
    if kind == "min-max":  # max_i (a_i + 2 gamma b_i + gamma^2 c) <= max D2: the smallest root over i
        bound = D2.max()
        return float(np.min((-b + np.sqrt(b * b - c * (a - bound))) / c))
    n, bound = X.shape[0], D2.sum(1).max()
    A, B = a.sum(), b.sum()
    return float((-B + np.sqrt(B * B - n * c * (A - bound))) / (n * c))


def spread_ok(g: np.ndarray, X: np.ndarray, kind: str, slack: float = 1e-9) -> bool:
    D2 = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    d2 = ((g[None, :] - X) ** 2).sum(1)
    if kind == "min-max":
        return bool(np.sqrt(d2.max()) <= np.sqrt(D2.max()) * (1 + slack))
    return bool(d2.sum() <= D2.sum(1).max() * (1 + slack))


@pytest.mark.parametrize("cls", [MinMax, MinSum])
@pytest.mark.parametrize("pert", ["std", "unit", "sign"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_min_max_min_sum_tight(cls, pert: str, seed: int) -> None:
    rule = make_rule("adam")
    byz, honest = SHAPES["sparse"] if seed != 2 else SHAPES["dense"]
    ctx = make_ctx(rule, byz, honest, seed=seed)
    attack = cls(perturbation=pert)
    union, g, X, gamma, fail = attack.search(ctx)
    Xn = X.reshape(X.shape[0], -1).numpy()
    mu = Xn.mean(0)
    p = perturbation(X, pert).reshape(-1).numpy()
    # the result: mean + gamma grad_p, inside the spread; gamma + tolerance is outside
    assert np.allclose(g.reshape(-1).numpy(), mu + gamma * p)
    assert spread_ok(g.reshape(-1).numpy(), Xn, attack.kind)
    assert fail > gamma >= 0 and fail - gamma <= max(gamma, attack.gamma_init) * 2.0**-attack.steps * 1.0001
    assert not spread_ok(mu + fail * p, Xn, attack.kind, slack=-1e-12)
    assert not spread_ok(mu + gamma * (1 + 1e-6) * p, Xn, attack.kind, slack=0.0)
    assert gamma == pytest.approx(gamma_oracle(Xn, mu, p, attack.kind), rel=1e-9)
    # what the upload carries (every Byzantine client the same vector on the honest union)
    up = attack(ctx)
    assert torch.equal(up.rows, union.repeat(ctx.b))
    g_rec = reconstructed(ctx, up).reshape(ctx.b, -1)
    assert torch.allclose(g_rec, g.reshape(1, -1).expand_as(g_rec), rtol=1e-9, atol=1e-12)


def test_largest_gamma_edges() -> None:
    X = torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=f64)  # no spread: p = -std = 0
    gamma, fail = largest_gamma(X, X.mean(0), perturbation(X), "min-max")
    assert gamma == 10.0 and fail == math.inf
    X = torch.randn(5, 7, dtype=f64, generator=torch.Generator().manual_seed(1))
    small = largest_gamma(X, X.mean(0), perturbation(X), "min-sum", gamma_init=1e-3)
    large = largest_gamma(X, X.mean(0), perturbation(X), "min-sum", gamma_init=1e3)
    assert small[0] == pytest.approx(large[0], rel=1e-9)  # doubling or bisecting: the same end
    with pytest.raises(ValueError):
        largest_gamma(X, X.mean(0), perturbation(X), "min-median")


def test_edge_cases_fall_back_or_degenerate() -> None:
    rule = make_rule("rmsprop")
    # no honest client: every omniscient attack sends the own gradient (documented fallback)
    ctx = make_ctx(rule, *SHAPES["no-honest"])
    for name, cls in ATTACKS.items():
        if cls.omniscient and issubclass(cls, GradientAttack):
            ptr, rows, g = make_attack(name).craft(ctx)
            assert torch.equal(ptr, ctx.ptr), name
            assert torch.equal(rows, ctx.rows) and torch.equal(g, ctx.g), name
    # one honest client: std = 0, ALIE / min-max / min-sum send its gradient (over its rows)
    ctx = make_ctx(rule, *SHAPES["one-honest"])
    for attack in (ALIE(), ALIE(ddof=1), MinMax(), MinSum()):
        _, rows, g = attack.craft(ctx)
        assert rows.tolist() == [1, 2, 7, 1, 2, 7]
        assert torch.allclose(g, ctx.honest_g.repeat(2, 1)), attack
    # stats = "all": the Byzantine clients' own gradients join the population (and the union)
    ctx = make_ctx(rule, *SHAPES["no-honest"])
    _, rows, g = ALIE(z=0.0, stats="all").craft(ctx)
    assert rows.tolist() == [0, 2, 7, 0, 2, 7]
    _, X = dense_over_union(ctx.ptr, ctx.rows, ctx.g)
    assert torch.allclose(g[:3], X.mean(0))


# ----------------------------------------------------------------------------- label-flip


def tiny_problem(model: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    n_users, n_items, d = 4, 7, 3
    train = synthetic(n_users, n_items, mean_items=3, seed=seed)
    layout = TableLayout.for_model(model, n_items)
    theta = torch.randn(layout.n_rows, d, generator=gen, dtype=f64) * 0.5
    csr = CSRTensors.from_interactions(train)
    users = torch.nonzero(csr.counts() > 0).flatten()
    batch = gather_users(csr, users)
    neg = sample_negatives(batch, n_items, 2, gen)
    u = torch.randn(users.shape[0], d, generator=gen, dtype=f64) * 0.5 if model == "mf" else None
    return layout, theta, batch, neg, u


def flipped_loss_oracle(model, layout, theta, items, negs, u, gamma, lam):
    """One user's label-flipped loss written out: sum_j sum_k -log sigmoid(y_k - y_j) + L2."""
    P = layout.view(theta, "P")
    if model == "fism":
        Q = layout.view(theta, "Q")
        n = items.shape[0]
        S = Q[items].sum(0)
        u_pos = (S[None, :] - Q[items]) * ((n - 1) ** -gamma if n > 1 else 0.0)
        y_pos = (P[items] * u_pos).sum(-1)
        y_neg = P[negs] @ (S * n**-gamma)
    else:
        y_pos, y_neg = P[items] @ u, P[negs] @ u
    loss = -F.logsigmoid(y_neg - y_pos[:, None]).sum()
    touched = torch.unique(torch.cat([layout.row("P", items), layout.row("P", negs.reshape(-1))]))
    if model == "fism":
        touched = torch.unique(torch.cat([touched, layout.row("Q", items)]))
    loss = loss + lam * (theta[touched] ** 2).sum()
    if u is not None:
        loss = loss + lam * (u * u).sum()
    return loss, touched


@pytest.mark.parametrize("model", ["fism", "mf"])
def test_label_flip_gradient_is_the_flipped_loss_gradient(model: str) -> None:
    layout, theta, batch, neg, u = tiny_problem(model)
    gamma, lam = 1.0, 0.01
    kw = {"gamma": gamma, "lam": lam, "user_vectors": u}
    honest = client_gradients(theta, layout, batch, neg, **kw)
    flipped = client_gradients(theta, layout, batch, neg, flip=True, **kw)
    assert torch.equal(flipped.rows, honest.rows) and torch.equal(flipped.ptr, honest.ptr)
    for i in range(batch.size):
        sl = slice(int(batch.ptr[i]), int(batch.ptr[i + 1]))
        th = theta.clone().requires_grad_(True)
        ui = None if u is None else u[i].clone().requires_grad_(True)
        loss, touched = flipped_loss_oracle(model, layout, th, batch.items[sl], neg[sl], ui, gamma, lam)
        grads = torch.autograd.grad(loss, [th] if ui is None else [th, ui])
        rows = flipped.rows[flipped.ptr[i] : flipped.ptr[i + 1]]
        assert torch.equal(rows, touched)
        assert torch.allclose(flipped.g[flipped.ptr[i] : flipped.ptr[i + 1]], grads[0][touched], atol=1e-12)
        if ui is not None:
            assert torch.allclose(flipped.g_user[i], grads[1], atol=1e-12)
    assert not torch.allclose(flipped.g, -honest.g)  # not gradient ascent
    # the attack uploads exactly that gradient
    rule = make_rule("adam")
    state = rule.init_state(theta)
    b = batch.size
    ctx = AttackContext(
        server=ServerState(theta, state, 0), t=1, rule=rule, client_ids=batch.users,
        n_examples=batch.counts(), ptr=flipped.ptr, rows=flipped.rows, g=honest.g,
        generator=torch.Generator(), flipped_g=flipped.g,
    )  # fmt: skip
    up = LabelFlip()(ctx)
    assert ctx.b == b and torch.allclose(reconstructed(ctx, up), flipped.g, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- simulated runs


def short_run(attack_name: str, model: str, optimizer: str, **params) -> FederatedRun:
    cfg = Config()
    cfg.model.name, cfg.model.dim = model, 4
    cfg.train.optimizer, cfg.train.lr = optimizer, 0.05
    cfg.federated.fraction, cfg.federated.rounds = 0.5, 3
    cfg.attack.name, cfg.attack.fraction, cfg.attack.seed = "gradient-ascent", 0.3, 1
    cfg.defense.name, cfg.defense.verify = "none", True  # the server runs the rule verifier
    split = split_per_user(synthetic(24, 15, mean_items=5, seed=2), seed=2)
    run = FederatedRun.create(cfg, split, torch.device("cpu"))
    run.attack = make_attack(attack_name, **params)
    return run


PAPER_ATTACKS = ["sign-flip", "gaussian", "label-flip", "alie", "ipm", "min-max", "min-sum", "byzmean"]


@pytest.mark.parametrize("model", ["fism", "mf"])
@pytest.mark.parametrize("attack_name", PAPER_ATTACKS)
def test_short_run_with_each_attack(attack_name: str, model: str) -> None:
    optimizer = {"fism": "adam", "mf": "rmsprop"}[model]
    run = short_run(attack_name, model, optimizer)
    seen: list[AttackContext] = []
    inner = run.attack

    class Spy:  # sees the context the run builds, then attacks as the real one
        name, omniscient, rule_consistent = inner.name, inner.omniscient, inner.rule_consistent
        needs_flipped = inner.needs_flipped

        def __call__(self, ctx):
            seen.append(ctx)
            return inner(ctx)

    run.attack = Spy()
    for _ in range(3):
        run.step()
    rec = run.records
    assert bool(rec["byzantine"].any())
    byz = rec["byzantine"]
    reasons = rec["reason"][byz]
    assert (reasons != REASONS.index("rule-verify")).all()  # rule-consistent: the verifier accepts them
    assert (reasons == 0).all() and rec["accepted"][byz].all()  # no defense: the server takes them all
    assert torch.isfinite(run.server.theta).all()
    assert seen and all((c.flipped_g is not None) == inner.needs_flipped for c in seen)
    assert all((c.honest_g is not None) == inner.omniscient for c in seen)
    if inner.needs_flipped:
        c = seen[0]
        assert c.flipped_g.shape == c.g.shape and not torch.allclose(c.flipped_g, -c.g)
