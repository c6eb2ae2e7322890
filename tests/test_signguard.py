"""SignGuard (fedrec.defenses.signguard; ALGORITHMS.md section 5): the sparse rule against its literal
form, the deterministic properties of section 5.7 (median norm in the honest range, output norm <= M,
x100 / x0.01 never trusted, sign features under scaling and sign flips), planted honest clusters against
sign flips, ALIE and scaled outliers, every fallback, the union support versus the whole table, and
reproducibility from the rng."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import pytest
import sklearn.cluster
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.defenses.base import RULES
from fedrec.defenses.signguard import (
    cluster,
    draw_subset,
    sign_fractions,
    signguard,
    signguard_dist,
    signguard_dist_literal,
    signguard_literal,
    signguard_sim,
    signguard_sim_literal,
)
from fedrec.defenses.vectors import ClientVectors, sq_norms

F64 = torch.float64
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
RULE_PAIRS = {
    "signguard": (signguard, signguard_literal),
    "signguard-sim": (signguard_sim, signguard_sim_literal),
    "signguard-dist": (signguard_dist, signguard_dist_literal),
}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sparse_problem(seed: int, n: int = 12, n_rows: int = 30, d: int = 4) -> torch.Tensor:
    """Clients listing ~30 % of the rows, one attacker (the last) listing all of them, values with a
    positive drift so that signs carry information."""
    g = gen(seed)
    listed = torch.rand(n, n_rows, generator=g) < 0.3
    listed[-1] = True
    return (0.3 + torch.randn(n, n_rows, d, generator=g, dtype=F64)) * listed[..., None]


def planted(
    seed: int,
    attack: str,
    *,
    n_h: int = 14,
    m: int = 6,
    n_rows: int = 100,
    d: int = 10,
    lo: float = 0.3,
    hi: float = 1.0,
    z: float = 1.0,
) -> torch.Tensor:
    """``n_h`` honest vectors ``mu + N(0, 1)`` over every row, ``|mu_k|`` uniform in ``[lo, hi]`` and
    positive on ~80 % of the coordinates, then ``m`` Byzantine ones: sign-flipped honest copies
    (``flip``), ALIE ``mean - z std`` (``alie``, ddof 1, all n_h honest), or honest copies scaled x100 /
    x0.01 (``scale``)."""
    g = gen(seed)
    sign = torch.where(torch.rand(n_rows, d, generator=g) < 0.8, 1.0, -1.0).to(F64)
    mu = sign * (lo + (hi - lo) * torch.rand(n_rows, d, generator=g, dtype=F64))
    h = mu + torch.randn(n_h, n_rows, d, generator=g, dtype=F64)
    if attack == "flip":
        b = -h[:m]
    elif attack == "alie":
        b = (h.mean(0) - z * h.std(0)).expand(m, n_rows, d)
    else:
        b = torch.cat([100.0 * h[: m // 2], 0.01 * h[m // 2 : m]])
    return torch.cat([h, b])


def dense_aggregate(res, n_rows: int, d: int) -> torch.Tensor:
    rows, values = res.aggregate
    out = torch.zeros(n_rows, d, dtype=F64, device=values.device)
    out[rows] = values.to(F64)
    return out


# -------------------------------------------------------------------------------------- fast == literal


@pytest.mark.parametrize("name", list(RULE_PAIRS))
@pytest.mark.parametrize("sample", ["block", "random"])
@pytest.mark.parametrize("support", ["union", "all"])
@pytest.mark.parametrize("device", DEVICES)
def test_fast_equals_literal(name: str, sample: str, support: str, device: str) -> None:
    fast, literal = RULE_PAIRS[name]
    for seed in range(3):
        x = sparse_problem(seed).to(device)
        v = ClientVectors.from_dense(x)
        a = fast(v, 0, rng=gen(seed), sample=sample, support=support)
        b = literal(x, 0, rng=gen(seed), sample=sample, support=support)
        assert torch.equal(a.info["subset"].cpu(), b.info["subset"].cpu())
        torch.testing.assert_close(a.info["features"], b.info["features"], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(a.scores, b.scores, rtol=1e-12, atol=0, equal_nan=True)
        assert torch.equal(a.accepted, b.accepted)
        assert a.info["fallback"] == b.info["fallback"]
        assert a.accepted.any()  # a non-trivial round
        torch.testing.assert_close(dense_aggregate(a, 30, 4), b.aggregate[1], rtol=1e-10, atol=1e-12)
        assert a.accepted.device == a.aggregate[1].device == x.device


def test_registered() -> None:
    for name, (fast, literal) in RULE_PAIRS.items():
        spec = RULES.lookup(name)
        assert spec.kind == "aggregate" and spec.needs_rng and spec.fast is fast and spec.literal is literal
        assert spec.params == {
            "lower": 0.1,
            "upper": 3.0,
            "coords": 0.1,
            "sample": "block",
            "support": "union",
        }
        x = sparse_problem(0)
        a = spec(ClientVectors.from_dense(x), 2, rng=gen(5))
        b = spec.run_literal(x, 2, rng=gen(5))
        assert torch.equal(a.accepted, b.accepted)
        assert a.info["rule"] == name


def test_union_support_is_the_paper_on_dense_vectors() -> None:
    """Every row listed: the union support is the whole flat vector, so both supports draw the same
    coordinates and give the same result."""
    x = planted(0, "flip")
    v = ClientVectors.from_dense(x, all_rows=True)
    a = signguard(v, 0, rng=gen(1), support="union")
    b = signguard(v, 0, rng=gen(1), support="all")
    assert torch.equal(a.info["subset"], b.info["subset"])
    assert torch.equal(a.accepted, b.accepted)
    assert torch.equal(a.aggregate[1], b.aggregate[1])


def test_whole_table_support_sees_zeros_on_sparse_uploads() -> None:
    """ALGORITHMS.md 5.6: on a big table where everyone lists the same few rows, a block of the whole
    table misses them and every feature is (0, 1, 0) (the bandwidth-zero fallback: no sign filter); the
    union support samples the listed rows and still separates sign-flipped uploads."""
    n_rows, d, listed = 2000, 10, 40
    x = torch.zeros(20, n_rows, d, dtype=F64)
    x[:, :listed] = planted(3, "flip", n_rows=listed, d=d)
    v = ClientVectors.from_dense(x)
    missed = 0
    for seed in range(5):
        whole = signguard(v, 0, rng=gen(seed), support="all")
        if int(whole.info["subset"].min()) >= listed * d:
            missed += 1
            assert "bandwidth-zero" in whole.info["fallback"]
            assert whole.accepted[14:].all()  # the flipped uploads get through
        union = signguard(v, 0, rng=gen(seed), support="union")
        assert union.info["fallback"] == ()
        assert not union.accepted[14:].any()
    assert missed >= 3


# ---------------------------------------------------------------------------------- 5.7 properties


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n_h=st.integers(1, 9),
    extra=st.integers(0, 8),
    scale=st.sampled_from([0.0, 1e-6, 1.0, 1e6]),
)
def test_median_norm_in_honest_range_and_output_bounded(
    seed: int, n_h: int, extra: int, scale: float
) -> None:
    """5.7 (1)-(2): with fewer Byzantine than honest vectors, min honest norm <= M <= max honest norm
    whatever the Byzantine vectors are, and the output norm is <= M."""
    m = min(extra, n_h - 1)
    g = gen(seed)
    honest = torch.randn(n_h, 6, 3, generator=g, dtype=F64) * torch.rand(n_h, 1, 1, generator=g, dtype=F64)
    byz = scale * torch.randn(m, 6, 3, generator=g, dtype=F64) * torch.rand(m, 1, 1, generator=g, dtype=F64)
    x = torch.cat([honest, byz])[torch.randperm(n_h + m, generator=g)]
    honest_norms = flat_norms(honest)
    res = signguard(ClientVectors.from_dense(x, all_rows=True), 0, rng=gen(seed + 1))
    med = float(res.info["median_norm"])
    tol = 1e-12  # the rule's norms are sparse sums: rounding apart from torch.linalg.vector_norm
    assert float(honest_norms.min()) * (1 - tol) <= med <= float(honest_norms.max()) * (1 + tol)
    out = float(torch.linalg.vector_norm(res.aggregate[1]))
    assert out <= med * (1 + 1e-12)
    assert math.isfinite(out)


def flat_norms(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x.reshape(x.shape[0], -1), dim=1)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), name=st.sampled_from(list(RULE_PAIRS)))
def test_scaled_uploads_never_trusted(seed: int, name: str) -> None:
    """5.7 (3): an upload scaled x100 or x0.01 fails the norm filter (honest norms within a factor 33)."""
    g = gen(seed)
    h = 0.5 + torch.randn(10, 20, 5, generator=g, dtype=F64)
    x = torch.cat([h, 100.0 * h[:2], 0.01 * h[2:4]])
    res = RULE_PAIRS[name][0](ClientVectors.from_dense(x), 0, rng=gen(seed))
    assert not res.accepted[10:].any()
    assert not res.info["norm_ok"][10:].any()


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), sample=st.sampled_from(["block", "random"]))
def test_sign_features_under_scaling_and_flips(seed: int, sample: str) -> None:
    """5.7 (4): positive scaling leaves the fractions unchanged; a sign flip swaps positive and
    negative. Also at the rule level (the normalised features)."""
    x = sparse_problem(seed)
    v = ClientVectors.from_dense(x)
    subset = draw_subset(v.union_rows().shape[0] * v.d, 0.1, sample, gen(seed))
    frac = sign_fractions(v, subset)
    c = 0.01 + 10 * torch.rand(x.shape[0], 1, 1, generator=gen(seed + 1), dtype=F64)
    assert torch.equal(sign_fractions(ClientVectors.from_dense(c * x), subset), frac)
    assert torch.equal(sign_fractions(ClientVectors.from_dense(-x), subset), frac[:, [2, 1, 0]])
    torch.testing.assert_close(frac.sum(1), torch.ones(x.shape[0], dtype=F64))
    a = signguard(v, 0, rng=gen(seed), sample=sample)
    b = signguard(ClientVectors.from_dense(c * x), 0, rng=gen(seed), sample=sample)
    assert torch.equal(a.info["features"], b.info["features"])
    assert torch.equal(a.info["sign_ok"], b.info["sign_ok"])  # the norms, and S1, do change


# ----------------------------------------------------------------------------------- planted clusters


@pytest.mark.parametrize("name", list(RULE_PAIRS))
@pytest.mark.parametrize(
    ("attack", "kw", "min_honest"),
    [
        ("flip", {}, 0.9),
        ("alie", {"z": 1.0}, 0.9),  # |mu| in [0.3, 1]: z = 1 flips the signs where mu < sigma
        ("alie", {"z": 0.3, "lo": 0.05, "hi": 0.25}, 0.9),  # the paper's z with |mu| < 0.3 sigma
        ("scale", {}, 0.5),  # one honest-looking cloud: Mean-Shift splits it (5.3: honest drops)
    ],
)
def test_planted_cluster(name: str, attack: str, kw: dict, min_honest: float) -> None:
    """14 honest around a clear per-coordinate mean, 6 Byzantine: over 4 seeds the Byzantine uploads
    are never trusted and the honest acceptance rate stays above the threshold (measured: flip and ALIE
    0.98-1.0, scale 0.62-0.82)."""
    rate = []
    for seed in range(4):
        x = planted(seed, attack, **kw)
        res = RULE_PAIRS[name][0](ClientVectors.from_dense(x), 0, rng=gen(100 + seed))
        assert not res.accepted[14:].any(), (seed, res.accepted.tolist())
        rate.append(float(res.accepted[:14].double().mean()))
    assert sum(rate) / len(rate) >= min_honest, rate


def test_alie_small_z_high_snr_passes_norms_but_stays_bounded() -> None:
    """Where the sign statistics do not see ALIE: z = 0.3 with |mu| in [0.3, 1] changes the sign of
    almost no coordinate (eq. 3 needs mu < z sigma), so its sign features sit inside the honest cloud
    (measured: 80-90 % of the ALIE uploads trusted at n = 20). What still holds: every ALIE upload passes
    the norm filter, and the output is clipped (norm <= M <= the largest honest norm)."""
    x = planted(0, "alie", z=0.3)
    res = signguard(ClientVectors.from_dense(x), 0, rng=gen(100))
    assert res.info["norm_ok"][14:].all()
    honest = flat_norms(x[:14])
    med = float(res.info["median_norm"])
    assert (
        float(torch.linalg.vector_norm(res.aggregate[1])) <= med * (1 + 1e-12) <= float(honest.max()) * 1.01
    )


# ------------------------------------------------------------------------------------------ fallbacks


@pytest.mark.parametrize("name", list(RULE_PAIRS))
def test_fallback_identical_features(name: str) -> None:
    """All uploads identical: estimate_bandwidth is 0 (MeanShift would raise); S2 = everyone and the
    output is the common vector."""
    fast, literal = RULE_PAIRS[name]
    x = (1.0 + torch.rand(1, 8, 3, generator=gen(0), dtype=F64)).expand(7, 8, 3).clone()
    for res in (fast(ClientVectors.from_dense(x), 0, rng=gen(0)), literal(x, 0, rng=gen(0))):
        assert res.info["fallback"] == ("bandwidth-zero",)
        assert res.accepted.all()
        torch.testing.assert_close(dense_aggregate(res, 8, 3), x[0])


@pytest.mark.parametrize("name", list(RULE_PAIRS))
@pytest.mark.parametrize("all_rows", [False, True])
def test_fallback_all_zero(name: str, all_rows: bool) -> None:
    """All uploads 0: M = 0, so S1 is empty (0/0 fails the strict bounds): nobody is trusted and the
    aggregate is 0 over no rows, without a NaN. Nothing listed: no coordinate to sample either."""
    fast, literal = RULE_PAIRS[name]
    x = torch.zeros(5, 4, 2, dtype=F64)
    res = fast(ClientVectors.from_dense(x, all_rows=all_rows), 0, rng=gen(0))
    first = "empty-support"  # rows listed only with zeros carry no sign: not in the support
    assert res.info["fallback"] == (first, "no-trusted")
    assert not res.accepted.any()
    assert res.aggregate[0].numel() == 0 and res.aggregate[1].shape == (0, 2)
    lit = literal(x, 0, rng=gen(0))
    assert lit.info["fallback"] == ("empty-support", "no-trusted")
    assert not lit.accepted.any() and torch.equal(lit.aggregate[1], torch.zeros(4, 2, dtype=F64))


def test_zero_vector_among_others_gives_no_nan() -> None:
    """A zero upload fails the norm filter (ratio 0 is not > L) and its clip weight is 1, not NaN."""
    x = planted(0, "flip")
    x[3] = 0.0
    for lower in (0.1, 0.0):
        res = signguard(ClientVectors.from_dense(x, all_rows=True), 0, rng=gen(0), lower=lower)
        assert not res.accepted[3]
        assert torch.isfinite(res.aggregate[1]).all()


class _FakeMeanShift:
    labels: ClassVar[list[int]] = []

    def __init__(self, **kwargs) -> None:
        pass

    def fit(self, x):
        self.labels_ = np.array(self.labels)
        return self


def test_fallback_no_cluster_and_ties(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every point an orphan: S2 = everyone (``no-cluster``); two largest clusters of equal size: the one
    holding the lowest index."""
    monkeypatch.setattr(sklearn.cluster, "MeanShift", _FakeMeanShift)
    feats = torch.rand(5, 3, generator=gen(0), dtype=F64)
    monkeypatch.setattr(_FakeMeanShift, "labels", [-1] * 5)
    s2, bw, fallback, _ = cluster(feats, 50)
    assert s2.all() and bw > 0 and fallback == ("no-cluster",)
    monkeypatch.setattr(_FakeMeanShift, "labels", [-1, 1, 0, 0, 1])
    s2, _, fallback, _ = cluster(feats, 50)
    assert s2.tolist() == [False, True, False, False, True] and fallback == ()
    x = planted(0, "flip", n_h=3, m=2, n_rows=5, d=2)
    res = signguard(ClientVectors.from_dense(x), 0, rng=gen(0), coords=1.0)
    assert res.info["fallback"] == ()
    assert res.info["sign_ok"].tolist() == [False, True, False, False, True]


# ---------------------------------------------------------------------------------------- randomness


def test_reproducible_from_rng() -> None:
    x = sparse_problem(4)
    v = ClientVectors.from_dense(x)
    a = signguard(v, 0, rng=gen(9))
    b = signguard(v, 0, rng=gen(9))
    assert torch.equal(a.info["subset"], b.info["subset"]) and torch.equal(a.accepted, b.accepted)
    assert torch.equal(a.aggregate[1], b.aggregate[1])
    starts = {int(signguard(v, 0, rng=gen(s)).info["subset"][0]) for s in range(8)}
    assert len(starts) > 1  # a different rng can draw a different block
    size = v.union_rows().shape[0] * v.d
    block = draw_subset(size, 0.1, "block", gen(3))
    assert block.shape[0] == size // 10 and torch.equal(block, block[0] + torch.arange(size // 10))
    rand = draw_subset(size, 0.1, "random", gen(3))
    assert rand.shape[0] == size // 10 and rand.unique().shape[0] == size // 10
    with pytest.raises(ValueError, match="rng"):
        signguard(v, 0)


@pytest.mark.parametrize(
    "bad",
    [{"lower": 3.0}, {"lower": -0.1}, {"coords": 0.0}, {"coords": 1.5}, {"sample": "x"}, {"support": "x"}],
)
def test_bad_params(bad: dict) -> None:
    with pytest.raises(ValueError):
        signguard(ClientVectors.from_dense(sparse_problem(0)), 0, rng=gen(0), **bad)


def test_norms_match_sq_norms() -> None:
    """scores = |x_i| / M with the sparse norms."""
    x = sparse_problem(1)
    v = ClientVectors.from_dense(x)
    res = signguard(v, 0, rng=gen(0))
    torch.testing.assert_close(res.scores * res.info["median_norm"], sq_norms(v).sqrt())
