"""MixTailor (paper 004): l_p distances and generalised Krum, Bulyan, the uniform per-round draw from
the server's generator (reproducible, unseen by attacks), and the random-eps attack."""

from __future__ import annotations

import logging
import math

import pytest
import scipy.stats
import torch
from test_attacks_papers import make_ctx

from fedrec.attacks import make_attack
from fedrec.config import Config
from fedrec.data import split_per_user, synthetic
from fedrec.defenses import RULES, ClientVectors
from fedrec.defenses.bulyan import _fast_bulyan, _literal_bulyan, bulyan_select
from fedrec.defenses.krum import krum_scores
from fedrec.defenses.mixtailor import CLASSES, PS, _fast_mixtailor, active, draw, member_params, pool
from fedrec.defenses.vectors import distance_fn, sq_distances, sq_lp_distances
from fedrec.federation.pipeline import rule_generator
from fedrec.federation.simulation import FederatedRun
from fedrec.optim import make_rule

f64 = torch.float64


def _dense(n: int, rows: int = 4, d: int = 3, seed: int = 0, sparse: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, rows, d, generator=g, dtype=f64)
    if sparse:
        x[torch.rand(n, rows, generator=g) < 0.5] = 0.0
    return x


# ----------------------------------------------------------------------------- l_p distances, eq. (3)


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, 3.0, 16.0])
@pytest.mark.parametrize("block_rows", [1, 3, None])
def test_lp_distances_match_a_dense_oracle(p: float, block_rows) -> None:
    x = _dense(7, seed=int(p * 10), sparse=True)
    v = ClientVectors.from_dense(x)
    flat = x.reshape(7, -1)
    want = torch.tensor(
        [[float(((a - b).abs() ** p).sum()) ** (2 / p) for b in flat] for a in flat], dtype=f64
    )
    torch.testing.assert_close(sq_lp_distances(v, p, block_rows), want)
    torch.testing.assert_close(distance_fn(f"l{p:g}")(v), want)


def test_l2_is_the_euclidean_krum_and_names_are_checked() -> None:
    v = ClientVectors.from_dense(_dense(9, seed=1))
    torch.testing.assert_close(sq_lp_distances(v, 2.0), sq_distances(v))
    assert torch.equal(krum_scores(distance_fn("l2")(v), 2), krum_scores(sq_distances(v), 2))
    for bad in ("l0.5", "p2", "l", "linfinity"):
        with pytest.raises(ValueError, match="distance"):
            distance_fn(bad)


def test_norm_lemma_holds_on_random_vectors() -> None:
    """MixTailor Appendix A.5 Lemma 1: for p < q, |x|_q <= |x|_p <= D^(1/p - 1/q) |x|_q."""
    x = _dense(6, rows=5, d=4, seed=3)
    x[0] = 0.0  # distances to client 0 are the norms of the others
    v = ClientVectors.from_dense(x, all_rows=True)
    D = 20
    for p, q in [(1.0, 2.0), (2.0, 3.0), (1.5, 16.0)]:
        norm_p = sq_lp_distances(v, p)[0, 1:].sqrt()
        norm_q = sq_lp_distances(v, q)[0, 1:].sqrt()
        assert bool((norm_q <= norm_p * (1 + 1e-12)).all())
        assert bool((norm_p <= D ** (1 / p - 1 / q) * norm_q * (1 + 1e-12)).all())


def test_generalised_krum_fast_equals_literal_for_every_p() -> None:
    for p in (1, 3, 7):
        x = _dense(10, seed=p, sparse=True)
        spec = RULES["krum"]
        fast = spec(ClientVectors.from_dense(x), 2, distance=f"l{p}")
        lit = spec.run_literal(x, 2, distance=f"l{p}")
        assert torch.equal(fast.accepted, lit.accepted)
        torch.testing.assert_close(fast.scores, lit.scores)


def test_krum_lemma_2_neighbour_counts() -> None:
    """MixTailor Lemma 2 (p = 2): with f Byzantine inputs, every N(i) holds between n - 2f - 2 and
    n - f - 2 good inputs and at most f Byzantine ones."""
    n, f = 12, 3
    x = _dense(n, seed=5)
    x[:f] += 4.0  # Byzantine inputs far from the rest
    d2 = sq_distances(ClientVectors.from_dense(x, all_rows=True)).clone()
    d2.fill_diagonal_(float("inf"))
    neigh = torch.topk(d2, n - f - 2, largest=False).indices
    byz = (neigh < f).sum(1)
    assert bool((byz <= f).all()) and bool(((n - f - 2 - byz) >= n - 2 * f - 2).all())


# ----------------------------------------------------------------------------- Bulyan


@pytest.mark.parametrize(("n", "f", "distance"), [(7, 1, "l2"), (11, 2, "l1"), (12, 2, "l3"), (3, 0, "l2"),
                                                   (15, 3, "linf")])  # fmt: skip
def test_bulyan_fast_equals_literal(n: int, f: int, distance: str) -> None:
    x = _dense(n, seed=n + f, sparse=True)
    fast = _fast_bulyan(ClientVectors.from_dense(x), f, distance=distance)
    lit = _literal_bulyan(x, f, distance=distance)
    assert torch.equal(fast.accepted, lit.accepted) and int(fast.accepted.sum()) == n - 2 * f
    full = torch.zeros(x.shape[1], x.shape[2], dtype=f64)
    full[fast.aggregate[0]] = fast.aggregate[1]
    torch.testing.assert_close(full, lit.aggregate[1])


def test_bulyan_hand_case_and_conditions() -> None:
    # n = 7, f = 1: Krum keeps peeling the central values; Sel = {0..4}; beta = 3 closest to median 2
    x = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 100.0], dtype=f64).reshape(7, 1, 1)
    res = _fast_bulyan(ClientVectors.from_dense(x, all_rows=True), 1)
    assert res.accepted.tolist() == [True] * 5 + [False, False]
    assert res.aggregate[1].item() == 2.0
    with pytest.raises(ValueError, match="4f \\+ 3"):
        bulyan_select(torch.zeros(10, 10, dtype=f64), 2)
    assert RULES["bulyan"].min_n(2) == 11
    # sanity: n - f identical inputs -> exactly them, whatever the f others send
    x = torch.ones(11, 2, 3, dtype=f64)
    x[:2] = 1e6 * _dense(2, 2, 3)
    res = _fast_bulyan(ClientVectors.from_dense(x, all_rows=True), 2)
    torch.testing.assert_close(res.aggregate[1], torch.ones(2, 3, dtype=f64))


# ----------------------------------------------------------------------------- the pool and the draw


def test_pool_is_the_papers_64_and_members_take_their_p() -> None:
    members = pool(CLASSES, PS)
    assert len(members) == 64 and members[16] == ("krum", 1.0) and members[63] == ("bulyan", 16.0)
    assert member_params("krum", 3.0) == {"distance": "l3"}
    assert member_params("cw-median", 3.0) == {}
    assert member_params("geomed", 5.0, {"tol": 0.0, "nu": 1e-6}) == {"tol": 0.0, "nu": 1e-6}
    with pytest.raises(ValueError):
        pool(("mixtailor",), PS)
    with pytest.raises(ValueError):
        pool(CLASSES, (0.5,))


def test_bulyan_leaves_the_pool_where_n_is_below_4f_plus_3(caplog) -> None:
    """Paper 004: "Bulyan was removed when f = 4" of n = 12; with f = 2 it stays."""
    with caplog.at_level(logging.INFO, logger="fedrec.defenses.mixtailor"):
        kept = active(CLASSES, PS, 12, 4)
    names = {pool(CLASSES, PS)[i][0] for i in kept}
    assert names == {"cw-median", "krum", "geomed"} and len(kept) == 48
    assert "bulyan leaves the pool" in caplog.text
    assert len(active(CLASSES, PS, 12, 2)) == 64


def test_the_draw_is_uniform_over_the_pool() -> None:
    """Chi-square over 6,400 rounds of the server's per-round generator (defense.seed = 0): each of
    the 64 members about 100 times."""
    T, M = 6400, 64
    counts = torch.zeros(M)
    for t in range(1, T + 1):
        counts[draw(rule_generator(0, t), CLASSES, PS, 12, 2)] += 1
    p = scipy.stats.chisquare(counts.numpy()).pvalue
    assert p > 1e-3, (p, counts)
    # and it fails on a biased draw: the same counts with one member doubled
    biased = counts.clone()
    biased[0] += 100
    assert scipy.stats.chisquare(biased.numpy()).pvalue < 1e-3


def test_mixtailor_gives_the_drawn_members_result() -> None:
    x = _dense(12, seed=8)
    v = ClientVectors.from_dense(x, all_rows=True)
    for seed in range(12):
        res = _fast_mixtailor(v, 2, rng=torch.Generator().manual_seed(seed))
        rule, p = pool(CLASSES, PS)[int(res.info["drawn"])]
        want = RULES[rule](v, 2, **member_params(rule, p))
        if want.aggregate is not None:
            torch.testing.assert_close(res.aggregate[1], want.aggregate[1])
        elif want.weights is not None:
            torch.testing.assert_close(res.aggregate[1], torch.einsum("i,ird->rd", want.weights, x))
        else:
            torch.testing.assert_close(res.aggregate[1], x[want.accepted].mean(0))


def test_tailored_eps_attack_breaks_krum_not_the_mixture() -> None:
    """ALGORITHMS.md 7.6 / Proposition 1: high-variance honest gradients, f = 2 of 12 sending
    -0.1 * honest mean: Krum picks a Byzantine vector (negative inner product with the honest mean),
    the median and GM stay positive, and the mixture's expected step (the average over the 64 members)
    keeps a positive inner product."""
    n, f = 12, 2
    g = torch.Generator().manual_seed(0)
    honest = 1.0 + 3.0 * torch.randn(n - f, 1, 50, generator=g, dtype=f64)
    mean = honest.mean(0)
    x = torch.cat([(-0.1 * mean).expand(f, 1, 50), honest])
    v = ClientVectors.from_dense(x, all_rows=True)
    krum = RULES["krum"](v, f)
    assert bool(krum.accepted[:f].any()) and float((x[krum.accepted].mean(0) * mean).sum()) < 0
    for rule in ("cw-median", "geomed"):
        res = RULES[rule](v, f)
        agg = res.aggregate[1] if res.aggregate is not None else torch.einsum("i,ird->rd", res.weights, x)
        assert float((agg * mean).sum()) > 0, rule
    steps = []
    for rule, p in pool(CLASSES, PS):
        out = RULES[rule](v, f, **member_params(rule, p))
        if out.aggregate is not None:
            steps.append(out.aggregate[1])
        elif out.weights is not None:
            steps.append(torch.einsum("i,ird->rd", out.weights, x))
        else:
            steps.append(x[out.accepted].mean(0))
    assert float((torch.stack(steps).mean(0) * mean).sum()) > 0


# ----------------------------------------------------------------------------- reproducible, unseen


def _run(
    attack: str = "ipm",
    attack_seed: int = 1,
    defense_seed: int = 0,
    rounds: int = 12,
    steps: int | None = None,
) -> FederatedRun:
    cfg = Config()
    cfg.model.dim = 4
    cfg.train.lr, cfg.train.seed = 0.05, 3
    cfg.federated.fraction, cfg.federated.rounds = 0.4, rounds
    cfg.attack.name, cfg.attack.fraction, cfg.attack.seed = attack, 0.2, attack_seed
    cfg.defense.name, cfg.defense.seed, cfg.defense.max_weight_share = "grad-mixtailor", defense_seed, 1.0
    split = split_per_user(synthetic(30, 20, mean_items=6, seed=3), seed=3)
    run = FederatedRun.create(cfg, split, torch.device("cpu"))
    for _ in range(rounds if steps is None else steps):
        run.step()
    return run


def test_the_draw_is_recorded_reproducible_and_unseen_by_attacks() -> None:
    base = _run()
    drawn = base.records["drawn"].tolist()
    assert all(0 <= m < 64 for m in drawn) and len(set(drawn)) > 3
    assert base.rounds_frame().groupby("t")["drawn"].first().tolist() == drawn
    # the attack's seed and the attack itself change what the server receives, never what it draws
    assert _run(attack_seed=99).records["drawn"].tolist() == drawn
    assert _run(attack="random-eps").records["drawn"].tolist() == drawn
    assert _run(attack="sign-flip").records["drawn"].tolist() == drawn
    # the server seed does
    assert _run(defense_seed=1).records["drawn"].tolist() != drawn
    # and it is the server's generator of the round: draw() on rule_generator(defense.seed, t)
    n, f = base.per_round, base.f
    assert drawn == [draw(rule_generator(0, t), CLASSES, PS, n, f) for t in range(1, 13)]


def test_an_attack_context_holds_no_generator_but_the_attackers() -> None:
    """Everything an attack reads: the only generator in its context is the attacker's own, seeded by
    attack.seed, so nothing in it carries the server's draw."""
    run = _run(rounds=4, steps=1)
    seen = []
    attack = run.attack

    class Spy:
        omniscient, rule_consistent, needs_flipped, name = True, True, False, "spy"

        def __call__(self, ctx):
            seen.append(ctx)
            return attack(ctx)

    object.__setattr__(run, "attack", Spy())
    for _ in range(3):
        run.step()
    assert seen
    for ctx in seen:
        gens = [v for v in vars(ctx).values() if isinstance(v, torch.Generator)]
        assert gens == [run.attack_gen]
        assert not any(isinstance(v, torch.Generator) for v in vars(ctx.server).values())


# ----------------------------------------------------------------------------- random-eps


def test_random_eps_draws_small_or_large_per_round_from_the_attackers_generator() -> None:
    rule = make_rule("sgd", eta=0.1)
    honest = [[0, 1], [1, 2, 3]]
    epss = []
    for seed in range(40):
        ctx = make_ctx(rule, [[0], [2]], honest, seed=seed)
        _, rows, g = make_attack("random-eps").craft(ctx)
        _, _, want = make_attack("ipm", eps=1.0).craft(ctx)
        ratio = (g / want)[torch.isfinite(g / want)]
        eps = float(ratio[0])
        assert torch.allclose(ratio, torch.full_like(ratio, eps)) and rows.tolist() == [0, 1, 2, 3] * 2
        epss.append(round(eps, 9))
    assert set(epss) == {0.1, 10.0}
    assert 10 <= epss.count(0.1) <= 30  # about half of 40 (binomial: 4.4 sigma either side)
    assert math.isclose(make_attack("random-eps", small=0.2, large=5.0).large, 5.0)


def test_mda_leaves_the_pool_where_it_would_enumerate_too_many_subsets():
    """Config validation tries one drawn member: a pool with MDA passed at n = 47, f = 15 (C(47, 15) =
    7.5e11 subsets), then raised the round the draw picked MDA."""
    assert active(("mda", "cw-median"), (2.0,), 47, 15) == [1]  # the members: [mda, cw-median]
    assert active(("mda", "cw-median"), (2.0,), 12, 3) == [0, 1]  # C(12, 3) = 220: MDA stays
