"""Paper 003 (BRVR) pre-aggregation: resampling with s-replacement and bucketing preserve the mean and
shrink the heterogeneity as Lemma 5 (eqs. 29-30) states; the sparse mix equals the dense one; a
pre-step composes with any rule; the sample-duplicating attack."""

from __future__ import annotations

import math

import pytest
import torch
from test_attacks_papers import make_ctx

from fedrec.attacks import make_attack
from fedrec.config import load_config
from fedrec.data import split_per_user, synthetic
from fedrec.defenses import RULES, ClientVectors, Defense, make_defense
from fedrec.defenses.preagg import PRE_STEPS, compose, mix, mixing
from fedrec.federation.simulation import FederatedRun
from fedrec.optim import make_rule

f64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _x(n: int, D: int = 6, seed: int = 0) -> torch.Tensor:
    """Heterogeneous inputs: every client its own offset (outer variation) plus noise."""
    g = _gen(seed)
    return 3.0 * torch.randn(n, 1, generator=g, dtype=f64) + torch.randn(n, D, generator=g, dtype=f64)


# ----------------------------------------------------------------------------- deterministic


@pytest.mark.parametrize(("n", "s"), [(10, 2), (9, 3), (7, 1), (30, 2)])
def test_resampling_uses_every_input_s_times_in_n_means_of_s(n: int, s: int) -> None:
    for seed in range(20):
        B = mixing("resample", n, _gen(seed), s)
        uses = torch.round(s * B).to(torch.int64)  # how often input j sits in average w
        assert torch.equal(uses.to(f64), s * B) and B.shape == (n, n)
        assert uses.sum(1).eq(s).all() and uses.sum(0).eq(s).all()


@pytest.mark.parametrize(("n", "s"), [(10, 2), (10, 3), (7, 7), (5, 1)])
def test_bucketing_uses_every_input_once(n: int, s: int) -> None:
    B = mixing("bucket", n, _gen(1), s)
    assert B.shape == (math.ceil(n / s), n)
    assert (B > 0).sum(0).eq(1).all() and torch.allclose(B.sum(1), torch.ones(B.shape[0], dtype=f64))
    sizes = (B > 0).sum(1)
    assert sizes[:-1].eq(s).all() and int(sizes.sum()) == n


@pytest.mark.parametrize("pre", ["resample", "bucket"])
def test_the_mean_is_preserved_exactly_by_the_averages(pre: str) -> None:
    """Every input is used equally often, so the averages' size-weighted mean is the inputs' mean
    (resampling: the plain mean of the n averages; bucketing: weighted by bucket size)."""
    n, s = 11, 3
    x = _x(n)
    for seed in range(10):
        B = mixing(pre, n, _gen(seed), s)
        y = B @ x
        share = (B > 0).sum(1).to(f64) if pre == "bucket" else torch.ones(B.shape[0], dtype=f64)
        torch.testing.assert_close((share[:, None] * y).sum(0) / share.sum(), x.mean(0))


@pytest.mark.parametrize(("pre", "s", "bound"), [("resample", 2, 2), ("resample", 3, 3), ("bucket", 3, 1)])
def test_a_byzantine_input_reaches_at_most_s_averages(pre: str, s: int, bound: int) -> None:
    """Lemma 5: at least W - sB averages are clean (bucketing: W - B)."""
    n, byz = 20, torch.arange(4)
    for seed in range(50):
        B = mixing(pre, n, _gen(seed), s)
        dirty = (B[:, byz] > 0).any(1).sum()
        assert int(dirty) <= bound * byz.shape[0]
        assert int(dirty) >= 1


def test_the_sparse_mix_equals_the_dense_one() -> None:
    g = _gen(3)
    x = torch.randn(9, 7, 2, generator=g, dtype=f64)
    x[torch.rand(9, 7, generator=g) < 0.6] = 0.0
    x[4] = 0.0  # a client that lists nothing
    v = ClientVectors.from_dense(x)
    for pre, s in (("resample", 2), ("resample", 3), ("bucket", 2), ("bucket", 4)):
        B = mixing(pre, 9, _gen(s), s)
        y = mix(v, B)
        y.check()
        torch.testing.assert_close(y.to_dense(), torch.einsum("wn,nrd->wrd", B, x))


# ----------------------------------------------------------------------------- statistical (Lemma 5)


def test_resampling_is_unbiased_and_shrinks_the_spread_by_d() -> None:
    """Lemma 5 (eqs. 29-30) over R = 4000 draws: every average has expectation mean(x), and
    E|y_w - mean(x)|^2 = d * pop with pop = (1/n) sum_j |x_j - mean(x)|^2 and d = (n-1)/(sn-1).
    Tolerances from the variance: a coordinate of the average over R draws is within 5 standard
    errors sqrt(d pop_k / R) of the mean; the spread within 5 standard errors of its own estimate."""
    n, s, R = 12, 2, 4000
    x = _x(n, seed=4)
    mu, pop_k = x.mean(0), x.var(0, correction=0)
    d = (n - 1) / (s * n - 1)
    ys = torch.stack([mixing("resample", n, _gen(seed), s) @ x for seed in range(R)])  # [R, n, D]
    for w in (0, n - 1):  # the first and the last average
        err = (ys[:, w].mean(0) - mu).abs()
        assert bool((err <= 5 * (d * pop_k / R).sqrt()).all()), (w, err)
    sq = ((ys - mu) ** 2).sum(-1)  # [R, n]
    per_draw = sq.mean(1)
    est, se = float(per_draw.mean()), float(per_draw.std() / math.sqrt(R))
    want = d * float(pop_k.sum())
    assert abs(est - want) <= 5 * se, (est, want, se)
    assert want < 0.55 * float(pop_k.sum())  # the heterogeneity shrinks by about 1/s


def test_bucketing_spread_is_sampling_without_replacement() -> None:
    """A bucket of s drawn without replacement: E|y_b - mean|^2 = pop (n - s) / (s (n - 1))."""
    n, s, R = 12, 3, 4000
    x = _x(n, seed=5)
    mu, pop = x.mean(0), float(x.var(0, correction=0).sum())
    sq = torch.stack([((mixing("bucket", n, _gen(seed), s) @ x - mu) ** 2).sum(-1) for seed in range(R)])
    per_draw = sq.mean(1)
    est, se = float(per_draw.mean()), float(per_draw.std() / math.sqrt(R))
    want = pop * (n - s) / (s * (n - 1))
    assert abs(est - want) <= 5 * se, (est, want, se)


def test_resampling_pulls_the_geometric_median_towards_the_mean_within_lemma_7() -> None:
    """BRVR Lemma 7 with B = 0 and fixed inputs (no inner variation; C_{s alpha} = 2):
    E|GM(resampled) - mean|^2 <= d C^2 (1/n) sum_j |x_j - mean|^2; and on heterogeneous inputs the
    resampled GM is closer to the mean than the GM of the inputs themselves (BRVR's point on non-iid
    data), averaged over 30 input sets x 10 draws."""
    n, s, draws = 15, 2, 10
    d = (n - 1) / (s * n - 1)
    gm = rs = 0.0
    for seed in range(30):
        x = _x(n, D=4, seed=100 + seed)
        v = ClientVectors.from_dense(x[:, None, :], all_rows=True)
        mu, pop = x.mean(0), float(x.var(0, correction=0).sum())
        gm += float(((RULES["geomed"](v, 0).weights @ x - mu) ** 2).sum())
        err = [
            ((compose("resample", "geomed", s)(v, 0, rng=_gen(k)).weights @ x - mu) ** 2).sum()
            for k in range(draws)
        ]
        mean_err = float(sum(err)) / draws
        assert mean_err <= d * 4 * pop
        rs += mean_err
    assert rs < 0.85 * gm, (rs, gm)


# ----------------------------------------------------------------------------- composition


def test_the_rule_is_told_s_f_after_resampling_and_f_after_bucketing() -> None:
    assert compose("resample", "krum", 2).min_n(2) == RULES["krum"].min_n(4) == 7
    assert compose("bucket", "krum", 2).min_n(2) == 2 * (RULES["krum"].min_n(2) - 1) + 1 == 9
    assert compose("resample", "geomed", 3).params == {**RULES["geomed"].params, "s": 3}
    seen = {}

    def spy(v, f, **kw):
        seen.update(n=v.n, f=f)
        return RULES["mean"].fast(v, f)

    RULES.register(RULES["mean"].__class__("spy-mean", "select", spy, RULES["mean"].literal))
    try:
        x = ClientVectors.from_dense(_x(10)[:, None, :], all_rows=True)
        compose("resample", "spy-mean", 2)(x, 3, rng=_gen(0))
        assert seen == {"n": 10, "f": 6}
        compose("bucket", "spy-mean", 3)(x, 3, rng=_gen(0))
        assert seen == {"n": 4, "f": 3}
    finally:
        del RULES["spy-mean"]


def test_a_selection_after_resampling_is_a_convex_weighting_of_the_uploads() -> None:
    x = _x(12, seed=6)
    x[:2] = 50.0  # two outliers
    v = ClientVectors.from_dense(x[:, None, :], all_rows=True)
    res = compose("resample", "multi-krum", 2)(v, 2, rng=_gen(2))  # told 2 s = 4: keeps 8 of 12
    assert res.weights is not None and abs(float(res.weights.sum()) - 1) < 1e-12
    assert bool((res.weights >= 0).all()) and torch.equal(res.accepted, res.weights > 0)
    assert float(res.weights[:2].sum()) == 0.0  # averages holding an outlier are the ones dropped


def test_defense_pre_from_the_config_and_its_checks() -> None:
    d = make_defense("grad-geomed", pre="bucket", params={"s": 3})
    assert d.pre == "bucket" and d.spec.name == "bucket+geomed" and d.spec.needs_rng
    assert make_defense("grad-rs-geomed").spec.name == "resample+geomed"
    with pytest.raises(ValueError, match="pre-aggregation step"):
        make_defense("grad-geomed", pre="shuffle")
    with pytest.raises(ValueError, match="scope flat"):
        Defense("x", "cw-median", "gradient", "item", pre="resample")
    with pytest.raises(ValueError, match="s must be"):
        make_defense("grad-rs-geomed", params={"s": 0})
    cfg = load_config(None, ["train.mode=federated", "defense.name=grad-geomed", "defense.pre=resample",
                             "defense.params.s=2", "attack.name=sample-duplicate", "attack.fraction=0.2"])  # fmt: skip
    cfg.model.dim, cfg.federated.fraction, cfg.federated.rounds = 4, 0.4, 3
    run = FederatedRun.create(
        cfg, split_per_user(synthetic(30, 20, mean_items=6, seed=0), seed=0), torch.device("cpu")
    )
    for _ in range(3):
        run.step()
    assert run.defense.spec.name == "resample+geomed" and torch.isfinite(run.server.theta).all()
    assert sorted(PRE_STEPS) == ["bucket", "resample"]


# ----------------------------------------------------------------------------- sample-duplicating


@pytest.mark.parametrize("choose", ["first", "random"])
def test_sample_duplicating_sends_b_plus_1_identical_messages(choose: str) -> None:
    rule = make_rule("adam")
    honest = [[0, 1], [1, 2, 3], [5]]
    ctx = make_ctx(rule, [[0], [2], [4, 6]], honest)
    ptr, rows, g = make_attack("sample-duplicate", choose=choose).craft(ctx)
    c = 0 if choose == "first" else None
    k = int(ptr[1])
    for i in range(3):
        assert torch.equal(rows[i * k : (i + 1) * k], rows[:k]) and torch.equal(g[i * k : (i + 1) * k], g[:k])
    hp = ctx.honest_ptr.tolist()
    copies = [j for j in range(3) if torch.equal(ctx.honest_rows[hp[j] : hp[j + 1]], rows[:k])
              and torch.equal(ctx.honest_g[hp[j] : hp[j + 1]], g[:k])]  # fmt: skip
    assert copies and (c is None or copies == [c])
    with pytest.raises(ValueError, match="choose"):
        make_attack("sample-duplicate", choose="last")


@pytest.mark.parametrize("s", [0, 1025, 10**8])
def test_the_resampling_size_is_bounded(s):
    """s = 10^8 passed (an integer >= 1) and a round drew n s indices: gigabytes before any check."""
    with pytest.raises(ValueError, match=r"s must be an integer in \[1, 1024\]"):
        mixing("resample", 5, torch.Generator().manual_seed(0), s)
