"""Robust rules over sparse client vectors (fedrec.defenses): the sparse Gram algebra against dense
torch.cdist, Krum / Multi-Krum / Krum* on planted honest clusters and a hand case that pins the neighbour
count (ANCHORS.md section 7.2), the smoothed-Weiszfeld geometric median against a high-precision
reference and its robustness bounds (ALGORITHMS.md section 4.9), RESAM's (f, lambda)-resilient averaging
bound for the coordinate-wise rules (ALGORITHMS.md section 8.1, Table 1), agreement with ByzFL where it
has the rule, and sparse == dense for every rule."""

from __future__ import annotations

import itertools
import math
from unittest import mock

import numpy as np
import pytest
import torch
from byzfl_oracle import BYZFL, needs_byzfl
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from fedrec.defenses import (
    ClientVectors,
    coordinate_median,
    dense_blocks,
    geometric_median,
    gram,
    krum,
    krum_scores,
    krum_star,
    krum_star_scores,
    meamed,
    multi_krum,
    multi_krum_star,
    norm_trim,
    select_lowest,
    sq_distances,
    sq_norms,
    trimmed_mean,
    vectors,
    weighted_sum,
    weiszfeld_gram,
)
from fedrec.defenses.vectors import sq_linf_distances, sq_lp_distances

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
F64 = torch.float64


# ----------------------------------------------------------------------------------------------- helpers


def sparse_table(
    seed: int,
    n: int,
    n_rows: int,
    d: int,
    *,
    density: float = 0.2,
    dense: tuple[int, ...] = (),
    dtype: torch.dtype = F64,
) -> torch.Tensor:
    """``[n, n_rows, d]`` with each client nonzero on a random ~density share of rows; ``dense`` clients
    on every row (an attacker listing the whole table)."""
    gen = torch.Generator().manual_seed(seed)
    listed = torch.rand(n, n_rows, generator=gen) < density
    listed[list(dense)] = True
    return (torch.randn(n, n_rows, d, generator=gen, dtype=F64) * listed[..., None]).to(dtype)


def flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def scatter(v: ClientVectors, rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """A sparse aggregate as a dense ``[n_rows, d]`` table."""
    out = torch.zeros(v.n_rows, v.d, dtype=values.dtype, device=values.device)
    out[rows] = values
    return out


def dense_krum_scores(x: torch.Tensor, k: int) -> torch.Tensor:
    """Reference: sum of the k smallest squared distances to the other vectors, from torch.cdist."""
    d2 = torch.cdist(flat(x).to(F64), flat(x).to(F64)) ** 2
    d2.fill_diagonal_(float("inf"))
    return d2.sort(dim=1).values[:, :k].sum(1)


def mean_of(x: torch.Tensor, accepted: torch.Tensor) -> torch.Tensor:
    return x[accepted].to(F64).mean(0)


def diam(points: np.ndarray) -> float:
    return (
        max(np.linalg.norm(a - b) for a, b in itertools.combinations(points, 2)) if len(points) > 1 else 0.0
    )


def resilience_ratio(out: np.ndarray, pts: np.ndarray, f: int) -> float:
    """The largest ``|F(x) - mean_S| / diam(S)`` over every S with ``|S| = n - f`` (RESAM Definition 2
    holds with lambda iff this is <= lambda); inf where ``diam(S) = 0`` but ``F(x) != mean_S``."""
    n = len(pts)
    worst = 0.0
    for s in itertools.combinations(range(n), n - f):
        sub = pts[list(s)]
        err = float(np.linalg.norm(out - sub.mean(0)))
        dm = diam(sub)
        if dm == 0.0:
            worst = max(worst, 0.0 if err <= 1e-12 * (1 + np.abs(sub).max()) else math.inf)
        else:
            worst = max(worst, err / dm)
    return worst


def lam_cwtm(n: int, f: int, dim: int) -> float:
    return f / (n - f) * min(2 * math.sqrt(n - f), math.sqrt(dim))


def lam_cwmed(n: int, f: int, dim: int) -> float:
    return n / (2 * (n - f)) * min(2 * math.sqrt(n - f), math.sqrt(dim))


def lam_meamed(n: int, f: int, dim: int) -> float:
    return 2 * f / (n - f) * min(2 * math.sqrt(n - f), math.sqrt(dim))


def lam_gm(n: int, f: int) -> float:
    return 1 + (n - f) / math.sqrt((n - 2 * f) * n)


def gm_point(v: ClientVectors, beta: torch.Tensor) -> torch.Tensor:
    rows, values = weighted_sum(v, beta)
    return scatter(v, rows, values)


# ----------------------------------------------------------------------------------------------- vectors


def test_from_dense_roundtrip_and_layout() -> None:
    x = sparse_table(0, 5, 30, 3, density=0.3, dense=(4,))
    x[2] = 0.0  # a client that lists nothing
    v = ClientVectors.from_dense(x)
    v.check()
    assert v.n == 5 and v.d == 3 and v.n_rows == 30
    assert torch.equal(v.to_dense(), x)
    assert torch.equal(v.counts(), (x != 0).any(-1).sum(1))
    assert int(v.counts()[2]) == 0 and int(v.counts()[4]) == 30
    assert torch.equal(v.owner(), torch.repeat_interleave(torch.arange(5), v.counts()))
    assert torch.equal(v.union_rows(), torch.arange(30))  # the dense client lists every row
    full = ClientVectors.from_dense(x, all_rows=True)
    full.check()
    assert full.rows.shape[0] == 5 * 30 and torch.equal(full.to_dense(), x)


def test_check_rejects_bad_layouts() -> None:
    ptr = torch.tensor([0, 2])
    with pytest.raises(ValueError, match="sorted and unique"):
        ClientVectors(ptr, torch.tensor([3, 1]), torch.ones(2, 1), 5).check()
    with pytest.raises(ValueError, match="sorted and unique"):
        ClientVectors(ptr, torch.tensor([1, 1]), torch.ones(2, 1), 5).check()
    with pytest.raises(ValueError, match="rows must lie"):
        ClientVectors(ptr, torch.tensor([1, 5]), torch.ones(2, 1), 5).check()
    with pytest.raises(ValueError, match="values must be"):
        ClientVectors(ptr, torch.tensor([1, 2]), torch.ones(3, 1), 5)
    # two clients may list the same row
    ClientVectors(torch.tensor([0, 1, 2]), torch.tensor([1, 1]), torch.ones(2, 1), 5).check()


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 8),
    n_rows=st.integers(1, 40),
    d=st.integers(1, 4),
    density=st.floats(0.0, 0.6),
    block_rows=st.integers(1, 50),
    dtype=st.sampled_from([torch.float32, F64]),
)
def test_sq_distances_match_cdist(
    seed: int, n: int, n_rows: int, d: int, density: float, block_rows: int, dtype: torch.dtype
) -> None:
    x = sparse_table(seed, n, n_rows, d, density=density, dense=(n - 1,), dtype=dtype)
    v = ClientVectors.from_dense(x)
    d2 = sq_distances(v, block_rows=block_rows)
    assert d2.dtype == F64 and d2.shape == (n, n)
    ref = torch.cdist(flat(x).to(F64), flat(x).to(F64)) ** 2
    scale = 1e-12 * (1.0 + flat(x).to(F64).pow(2).sum(1).max())
    assert torch.allclose(d2, ref, rtol=1e-12, atol=float(scale))
    assert torch.equal(d2.diagonal(), torch.zeros(n, dtype=F64))
    assert bool((d2 >= 0).all()) and torch.equal(d2, d2.T)
    # the block size changes only the float64 summation order; one block and the default agree
    for other in (sq_distances(v), sq_distances(v, block_rows=10**6)):
        assert torch.allclose(d2, other, rtol=1e-12, atol=float(scale))
    # a dense listing of the same vectors (zeros listed explicitly) gives the same distances
    assert torch.allclose(d2, sq_distances(ClientVectors.from_dense(x, all_rows=True)), atol=float(scale))
    assert torch.allclose(sq_norms(v), flat(x).to(F64).pow(2).sum(1), rtol=1e-12, atol=1e-300)
    assert torch.allclose(gram(v, block_rows), flat(x).to(F64) @ flat(x).to(F64).T, atol=float(scale))


def test_weighted_sum_matches_dense() -> None:
    x = sparse_table(3, 6, 25, 4, dense=(5,))
    v = ClientVectors.from_dense(x)
    w = torch.tensor([0.5, -1.0, 0.0, 2.0, 0.25, 1e-3], dtype=F64)
    rows, values = weighted_sum(v, w)
    assert torch.equal(rows, v.union_rows())
    assert torch.allclose(scatter(v, rows, values), torch.einsum("i,ird->rd", w, x), rtol=1e-14, atol=1e-15)
    with pytest.raises(ValueError, match="shape"):
        weighted_sum(v, w[:3])


def test_huge_table_with_few_listed_rows() -> None:
    """Work is over the union of listed rows: a 10^9-row table with a handful listed is instant."""
    n_rows = 10**9
    rows = torch.tensor([5, 999_999_999, 5, 7, 123_456_789])
    values = torch.arange(10, dtype=F64).reshape(5, 2) + 1
    v = ClientVectors(torch.tensor([0, 2, 4, 5]), rows, values, n_rows)
    v.check()
    assert torch.equal(v.union_rows(), torch.tensor([5, 7, 123_456_789, 999_999_999]))
    blocks = list(dense_blocks(v, block_rows=3))
    assert [b.shape for _, b in blocks] == [(3, 3, 2), (3, 1, 2)]
    d2 = sq_distances(v)
    xs = [{5: values[0], 999_999_999: values[1]}, {5: values[2], 7: values[3]}, {123_456_789: values[4]}]

    def dist2(a: dict, b: dict) -> float:
        keys = set(a) | set(b)
        zero = torch.zeros(2, dtype=F64)
        return float(sum(((a.get(k, zero) - b.get(k, zero)) ** 2).sum() for k in keys))

    ref = torch.tensor([[dist2(a, b) for b in xs] for a in xs], dtype=F64)
    assert torch.allclose(d2, ref, rtol=1e-14)
    med_rows, med = coordinate_median(v)
    assert torch.equal(med_rows, v.union_rows())
    # row 5: median of (1, 5, 0) and (2, 6, 0); every other row is 0 for 2 of the 3 clients
    assert med.tolist() == [[1.0, 2.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]


def test_select_lowest_breaks_ties_towards_lower_index() -> None:
    s = torch.tensor([3.0, 1.0, 2.0, 1.0, 1.0], dtype=F64)
    assert select_lowest(s, 1).tolist() == [False, True, False, False, False]
    assert select_lowest(s, 2).tolist() == [False, True, False, True, False]
    assert select_lowest(s, 4).tolist() == [False, True, True, True, True]
    for bad in (0, 6):
        with pytest.raises(ValueError, match="m must be"):
            select_lowest(s, bad)


# ----------------------------------------------------------------------------------------------- Krum


def line(*xs: float) -> ClientVectors:
    """Points on the real line as 1-row, 1-column client vectors."""
    return ClientVectors.from_dense(torch.tensor(xs, dtype=F64).reshape(-1, 1, 1))


def test_krum_neighbour_count_is_pinned() -> None:
    """n = 5, f = 1: Krum sums n - f - 2 = 2 neighbours and picks 11; Krum* (and ByzFL's Krum) sum
    n - f - 1 = 3 and pick 10. Scores by hand: Krum 11 -> 1 + 1 = 2, 10 -> 1 + 4 = 5; Krum* 10 ->
    1 + 4 + 9.9^2 = 103.01, 11 -> 1 + 1 + 10.9^2 = 120.81."""
    v = line(0.0, 0.1, 10.0, 11.0, 12.0)
    d2 = sq_distances(v)
    expect = torch.tensor([100.01, 98.02, 5.0, 2.0, 5.0], dtype=F64)
    assert torch.allclose(krum_scores(d2, 1), expect, rtol=1e-12)
    expect_star = torch.tensor([221.01, 216.83, 103.01, 120.81, 146.61], dtype=F64)
    assert torch.allclose(krum_star_scores(d2, 1), expect_star, rtol=1e-12)
    assert krum(v, 1).accepted.nonzero().flatten().tolist() == [3]
    assert krum_star(v, 1).accepted.nonzero().flatten().tolist() == [2]
    sel = krum(v, 1)
    assert sel.info == {"rule": "krum", "f": 1, "m": 1, "neighbours": 2}
    assert torch.equal(sel.scores, krum_scores(d2, 1))


def test_krum_rejects_too_few_neighbours() -> None:
    d2 = sq_distances(line(0.0, 1.0, 2.0, 3.0))
    krum_scores(d2, 1)  # n - f - 2 = 1: runs (below 2f + 3 the caller only warns)
    with pytest.raises(ValueError, match=r"n - f - 2 >= 1.*n=4, f=2"):
        krum_scores(d2, 2)
    krum_star_scores(d2, 2)
    with pytest.raises(ValueError, match=r"n - f - 1 >= 1.*n=4, f=3"):
        krum_star_scores(d2, 3)
    with pytest.raises(ValueError, match="f must be >= 0"):
        krum_scores(d2, -1)
    with pytest.raises(ValueError, match="m must be"):
        multi_krum(line(0.0, 1.0, 2.0, 3.0), 1, 5)


def test_krum_ties_go_to_lower_index() -> None:
    v = line(1.0, 1.0, 1.0, 1.0, 1.0, 50.0)
    assert krum(v, 1).accepted.nonzero().flatten().tolist() == [0]
    assert multi_krum(v, 1, 3).accepted.nonzero().flatten().tolist() == [0, 1, 2]


def planted(seed: int, n: int, f: int, attack: str, n_rows: int = 60, d: int = 3) -> torch.Tensor:
    """n - f honest clients near a common centre (sparse: the centre's rows plus a few rows of their
    own with small values), f Byzantine clients listing every row: far apart, or a tight distant clump."""
    gen = torch.Generator().manual_seed(seed)
    centre = torch.zeros(n_rows, d, dtype=F64)
    centre[:10] = torch.randn(10, d, generator=gen, dtype=F64)
    x = centre.expand(n, n_rows, d).clone()
    own = torch.rand(n, n_rows, generator=gen) < 0.1
    x += 0.05 * torch.randn(n, n_rows, d, generator=gen, dtype=F64) * (own[..., None] | (centre != 0))
    far = 100.0 * torch.randn(n_rows, d, generator=gen, dtype=F64)
    for j in range(n - f, n):
        x[j] = far + (1e-3 if attack == "clump" else 50.0) * torch.randn(n_rows, d, generator=gen, dtype=F64)
    return x


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(3, 16),
    data=st.data(),
    attack=st.sampled_from(["far", "clump"]),
)
def test_krum_selects_planted_honest_cluster(seed: int, n: int, data: st.DataObject, attack: str) -> None:
    f = data.draw(st.integers(0, (n - 3) // 2), label="f")  # n >= 2f + 3
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    x = planted(seed, n, f, attack)[perm]
    honest = perm < n - f
    v = ClientVectors.from_dense(x)
    for m in sorted({1, max(1, (n - f) // 2), n - f}):
        sel = multi_krum(v, f, m)
        assert int(sel.accepted.sum()) == m
        assert bool(honest[sel.accepted].all()), (m, sel.scores)
        star = multi_krum_star(v, f, m)
        assert bool(honest[star.accepted].all()), (m, star.scores)
    assert torch.equal(multi_krum(v, f, n - f).accepted, honest)
    # MixTailor Lemma 2 / the Krum argument: every honest score is below every Byzantine score
    scores = krum_scores(sq_distances(v), f)
    if f:
        assert float(scores[honest].max()) < float(scores[~honest].min())


def test_krum_output_is_order_invariant_and_sane() -> None:
    x = planted(7, 9, 3, "far")
    v = ClientVectors.from_dense(x)
    chosen = x[krum(v, 3).accepted][0]
    for seed in range(5):
        perm = torch.randperm(9, generator=torch.Generator().manual_seed(seed))
        vp = ClientVectors.from_dense(x[perm])
        assert torch.equal(x[perm][krum(vp, 3).accepted][0], chosen)
        assert torch.allclose(  # the same vectors, summed in another order
            mean_of(x[perm], multi_krum(vp, 3, 4).accepted), mean_of(x, multi_krum(v, 3, 4).accepted)
        )
    # sanity check: n - f identical inputs and n >= 2f + 3 -> the output is that input
    y = x.clone()
    y[: 9 - 3] = x[0]
    assert torch.equal(y[krum(ClientVectors.from_dense(y), 3).accepted][0], x[0])
    # Multi-Krum with m = n is the mean; Multi-Krum*_1 is Krum*
    assert bool(multi_krum(v, 3, 9).accepted.all())
    assert torch.equal(multi_krum_star(v, 3, 1).accepted, krum_star(v, 3).accepted)


# ----------------------------------------------------------------------------------------------- geometric median


def reference_gm_objective(pts: np.ndarray, w: np.ndarray) -> float:
    """High-precision min of sum_i w_i |z - x_i|: 3000 plain Weiszfeld steps in data space, polished by
    Nelder-Mead from there and from the coordinate median."""
    w = w / w.sum()
    z = w @ pts
    for _ in range(3000):
        r = np.maximum(np.linalg.norm(pts - z, axis=1), 1e-300)
        z = (w / r) @ pts / (w / r).sum()

    def obj(y: np.ndarray) -> float:
        return float(w @ np.linalg.norm(pts - y, axis=1))

    opts = {"xatol": 1e-13, "fatol": 1e-16, "maxiter": 4000}
    best = min(
        obj(z), *(minimize(obj, s, method="Nelder-Mead", options=opts).fun for s in (z, np.median(pts, 0)))
    )
    return best


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 10),
    dim=st.integers(1, 5),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    outliers=st.booleans(),
    weighted=st.booleans(),
)
def test_geometric_median_matches_high_precision_reference(
    seed: int, n: int, dim: int, scale: float, outliers: bool, weighted: bool
) -> None:
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(n, dim)) * scale
    if outliers:
        f = (n - 1) // 2
        pts[:f] += 1e4 * scale * rng.normal(size=(f, dim))
    w = rng.uniform(0.1, 2.0, size=n) if weighted else np.ones(n)
    v = ClientVectors.from_dense(torch.tensor(pts).reshape(n, dim, 1))  # dim rows of 1 column
    nu, tol = 1e-6, 1e-6
    beta, info = geometric_median(v, torch.tensor(w) if weighted else None, nu=nu, tol=tol)
    # a convex combination: inside the convex hull (RESAM Lemma 8)
    assert beta.dtype == F64 and bool((beta >= 0).all())
    assert abs(float(beta.sum()) - 1.0) < 1e-12
    assert 0 <= info["iterations"] <= 100  # 0: Vardi and Zhang's test found the medoid optimal
    z = beta.numpy() @ pts
    obj = float((w / w.sum()) @ np.linalg.norm(pts - z, axis=1))
    # distances from the Gram identity resolve about sqrt(eps) * |x| (geomed module docstring)
    rounding = 1e-7 * float(np.abs(pts).max())
    assert abs(float(info["objective"]) - obj) <= 1e-9 * obj + rounding
    best = reference_gm_objective(pts, w)
    gap = obj - best
    # the certificate holds (it is a proof), and the solver is within a tol-scaled distance of the
    # optimum (observed worst relative gap ~8e-5 at tol = 1e-6 over thousands of draws: Weiszfeld is
    # slow where the optimum is near an input point) plus the smoothing's nu / 2
    assert gap <= float(info["gap_bound"]) + rounding
    if info["converged"]:  # 99 % of random draws; Weiszfeld is slow near an input point
        assert gap <= 200 * tol * best + nu / 2 + rounding
    else:  # stopped by the iteration cap: only the certified gap above is promised
        assert info["iterations"] == 100


def test_weiszfeld_objective_is_non_increasing() -> None:
    rng = np.random.default_rng(1)
    stepped = 0
    for case in range(40):
        n, dim = int(rng.integers(2, 12)), int(rng.integers(1, 6))
        pts = rng.normal(size=(n, dim))
        if case % 2:
            pts[: (n - 1) // 2] *= 1e3 if case % 4 == 1 else 3.0
        g = torch.tensor(pts @ pts.T)
        smoothed, plain = [], []
        for k in range(0, 30):  # the iterate after k steps (the sequence does not depend on max_iter)
            _, info = weiszfeld_gram(g, nu=1e-6, tol=0.0, max_iter=k)
            if info["iterations"] < k:  # converged: the steps reached the rounding floor, or the medoid
                break  # passed Vardi and Zhang's optimality test (no step taken)
            smoothed.append(float(info["smoothed_objective"]))
            plain.append(float(info["objective"]))
        assert len(smoothed) >= 2 or weiszfeld_gram(g, nu=1e-6, max_iter=5)[1]["iterations"] == 0
        stepped += len(smoothed) >= 2
        for a, b in itertools.pairwise(smoothed):  # up to the rounding of Gram-space distances
            assert b <= a * (1 + 1e-9)
        for a, b in itertools.pairwise(plain):  # distances >> nu here, so the plain objective too
            assert b <= a * (1 + 1e-9) + 1e-6
    assert stepped >= 20  # most cases take steps (the rest start at an optimal medoid)


def c_alpha(n: int, b: int) -> float:
    alpha = b / n
    return (2 - 2 * alpha) / (1 - 2 * alpha)


@pytest.mark.parametrize("case", range(30))
def test_weiszfeld_c_loop_equals_the_torch_loop(case: int) -> None:
    """fedrec.defenses.weiszfeld_native against the torch steps it replaces, from the same start: the
    weights and distances to float64 round-off and, with tol > 0, the same step count and verdict,
    on spread inputs, a far outlier cluster (1e3), a scaled attack (1e8), equal inputs
    and a NaN Gram entry (NaN everywhere after it, as in torch)."""
    from fedrec.defenses.geomed import _EPS64, _distances, _steps_torch
    from fedrec.defenses.weiszfeld_native import native, weiszfeld_steps

    if native() is None:
        pytest.skip("no C compiler: the torch loop is the only one")
    rng = np.random.default_rng(case)
    n, dim = int(rng.integers(2, 60)), int(rng.integers(1, 70))
    pts = rng.normal(size=(n, dim))
    if case % 3 == 1:
        pts[: (n - 1) // 2] *= 1e3 if case % 2 else 1e8
    if case % 10 == 5:
        pts[1:] = pts[0]
    g = torch.tensor(pts @ pts.T)
    if case == 29:
        g[0, 1] = g[1, 0] = math.nan
    alpha = torch.tensor(rng.random(n) + 0.1)
    alpha = alpha / alpha.sum()
    diag = g.diagonal()
    root = diag.clamp_min(0.0).sqrt()
    beta = alpha.clone()
    r = _distances(g, diag, beta)
    tol = [0.0, 1e-6, 1e-3][case % 3]
    args = (g, alpha, diag, root, beta, r, 1e-6, tol**2 * float(r.median()) ** 2, 64 * _EPS64 * (n + 1), 40)
    b_c, r_c, it_c, conv_c = weiszfeld_steps(*args)
    b_t, r_t, it_t, conv_t = _steps_torch(*args)
    assert torch.equal(beta, alpha)  # the start is the caller's, not written
    if tol > 0:  # tol 0 stops at the rounding floor, which two summation orders reach a step or two apart
        assert (it_c, conv_c) == (it_t, conv_t)
    if case == 29:
        assert b_c.isnan().all() and b_t.isnan().all()
        return
    assert torch.allclose(b_c, b_t, rtol=1e-9, atol=1e-15)
    scale = float(r_t.abs().max()) + float(root.max())
    assert torch.allclose(r_c, r_t, rtol=1e-9, atol=1e-7 * scale)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(3, 11),
    data=st.data(),
    far=st.sampled_from([1e3, 1e6]),
    clump=st.booleans(),
)
def test_geometric_median_is_robust_to_outliers(
    seed: int, n: int, data: st.DataObject, far: float, clump: bool
) -> None:
    """B < n/2 points moved far away: the median stays within BRVR's deterministic bound
    ``|GM - c| <= C_alpha * mean_R |x_r - c|`` around the honest mean c (ALGORITHMS.md section 4.9),
    and within RESAM's (f, lambda) bound with lambda_GM for every honest subset."""
    b = data.draw(st.integers(1, (n - 1) // 2), label="B")
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(n, 3))
    direction = rng.normal(size=3)
    if clump:
        pts[n - b :] = far * direction + 1e-3 * rng.normal(size=(b, 3))
    else:
        pts[n - b :] = far * rng.normal(size=(b, 3))
    v = ClientVectors.from_dense(torch.tensor(pts).reshape(n, 1, 3))
    beta, info = geometric_median(v)
    z = beta.numpy() @ pts
    honest = pts[: n - b]
    c = honest.mean(0)
    bound = c_alpha(n, b) * np.linalg.norm(honest - c, axis=1).mean()
    assert np.linalg.norm(z - c) <= bound + float(info["gap_bound"]) * n / (n - 2 * b) + 1e-9
    assert resilience_ratio(z, pts, b) <= lam_gm(n, b) + 1e-6


def test_equal_inputs_whose_gram_entries_round_apart_still_reach_the_median() -> None:
    """BLAS may round <x_i, x_i> and <x_i, x_j> of equal inputs differently (MKL's AVX-512 dgemm did):
    their distance from the Gram identity is then ~1e-8 |x|, not 0. With a smoothing nu below that, the
    solver took them for distinct inputs a hair apart, stepped onto them and stopped there, 7-8 %
    above the minimum objective (a contract round on this machine; this case without the fix). Equal inputs within the rounding floor now count as one point."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(9, 40, generator=gen, dtype=F64)
    x[[6, 8]] = x[0].clone()  # three equal inputs, a third of the weight: not the median by themselves
    alpha = torch.tensor([2.0, 2.0, 3.0, 4.0, 3.0, 3.0, 3.0, 3.0, 4.0], dtype=F64)
    g = x @ x.T
    for i, j in ((0, 6), (0, 8), (6, 8)):  # the cross products a few ulps off the squared norms
        g[i, j] = g[j, i] = g[i, j] * (1 - 4 * torch.finfo(F64).eps)
    beta, info = weiszfeld_gram(g, alpha, nu=1e-10, tol=0.0, max_iter=3000)
    w = alpha / alpha.sum()
    z = w.clone()  # the literal smoothed Weiszfeld on the points themselves, from the weighted mean
    for _ in range(3000):
        r = (x - z @ x).norm(dim=1).clamp_min(1e-10)
        z = (w / r) / (w / r).sum()
    best = float(w @ (x - z @ x).norm(dim=1))
    assert float(w @ (x - beta @ x).norm(dim=1)) == pytest.approx(best, rel=1e-9)
    assert info["iterations"] > 1


def test_geometric_median_hand_cases() -> None:
    # collinear points, odd n: the 1-D median
    v = line(-3.0, 0.5, 2.0, 7.0, 100.0)
    beta, info = geometric_median(v, tol=1e-12, max_iter=1000)
    assert abs(float(gm_point(v, beta)[0, 0]) - 2.0) < 1e-5
    # n - f identical inputs and f huge ones: the output is that input, up to the smoothing nu
    x = torch.tensor([[1.0, -2.0]] * 4 + [[1e9, 3e8], [-5e8, 7e8], [2e9, -1e9]], dtype=F64).reshape(7, 1, 2)
    v = ClientVectors.from_dense(x)
    beta, info = geometric_median(v)
    assert info["converged"]
    assert float((gm_point(v, beta)[0] - x[0, 0]).norm()) <= 1e-6
    # integer weights = duplicated points
    pts = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 3.0], [5.0, 5.0]], dtype=F64)
    w = torch.tensor([1.0, 3.0, 2.0, 1.0], dtype=F64)
    dup = pts.repeat_interleave(w.long(), dim=0)
    bw, _ = geometric_median(ClientVectors.from_dense(pts[:, None]), w, tol=1e-14, max_iter=2000)
    bd, _ = geometric_median(ClientVectors.from_dense(dup[:, None]), tol=1e-14, max_iter=2000)
    assert torch.allclose(bw @ pts, bd @ dup, atol=1e-6)
    # max_iter = 0 returns the start: the medoid, here (4, 0) with F = (4 + 2 * 5 + 26^0.5) / 7, moved
    # off it by Vardi and Zhang's step (|R| > eta here), which lowers the objective
    b0, i0 = geometric_median(ClientVectors.from_dense(pts[:, None]), w, max_iter=0)
    assert i0["iterations"] == 0 and not i0["converged"] and int(i0["medoid"]) == 1
    objective = torch.cdist(pts, pts)[1] @ (w / w.sum())
    assert float(i0["objective"]) < float(objective) and bool((b0 >= 0).all())
    # translation equivariance
    shift = torch.tensor([3.0, -7.0], dtype=F64)
    bs, _ = geometric_median(ClientVectors.from_dense((pts + shift)[:, None]), w, tol=1e-14, max_iter=2000)
    assert torch.allclose(bs @ (pts + shift), bw @ pts + shift, atol=1e-6)
    # a single client; every input equal
    b1, i1 = geometric_median(line(4.0))
    assert b1.tolist() == [1.0] and i1["converged"]
    be, ie = geometric_median(line(2.0, 2.0, 2.0))
    assert torch.allclose(be, torch.full((3,), 1 / 3, dtype=F64)) and ie["converged"]
    with pytest.raises(ValueError, match="nu must be > 0"):
        geometric_median(v, nu=0.0)


# ----------------------------------------------------------------------------------------------- trimming rules


def coordinatewise(rule: str, v: ClientVectors, f: int) -> torch.Tensor:
    if rule == "cwtm":
        rows, values = trimmed_mean(v, f)
    elif rule == "cwmed":
        rows, values = coordinate_median(v)
    else:
        rows, values = meamed(v, f)
    return scatter(v, rows, values)


LAMBDA = {"cwtm": lam_cwtm, "cwmed": lam_cwmed, "meamed": lam_meamed}


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(3, 8),
    data=st.data(),
    n_rows=st.integers(1, 3),
    d=st.integers(1, 2),
    attack=st.sampled_from(["far", "clump", "shift", "none"]),
)
def test_coordinatewise_rules_are_resilient_averaging(
    seed: int, n: int, data: st.DataObject, n_rows: int, d: int, attack: str
) -> None:
    """RESAM Definition 2 with Table 1's lambda: |F(x) - mean_S| <= lambda diam(S) for all |S| = n - f."""
    f = data.draw(st.integers(1, (n - 1) // 2), label="f")
    x = sparse_table(seed, n, n_rows, d, density=0.7)
    rng = np.random.default_rng(seed)
    if attack == "far":
        x[n - f :] = torch.tensor(rng.normal(size=(f, n_rows, d)) * 1e4)
    elif attack == "clump":
        x[n - f :] = torch.tensor(rng.normal(size=(n_rows, d)) * 1e3)
    elif attack == "shift":  # ALIE-like: just outside the honest spread
        h = x[: n - f]
        x[n - f :] = h.mean(0) - 1.5 * h.std(0, unbiased=False)
    v = ClientVectors.from_dense(x)
    pts = flat(x).numpy()
    for rule, lam in LAMBDA.items():
        out = coordinatewise(rule, v, f).reshape(-1).numpy()
        assert resilience_ratio(out, pts, f) <= lam(n, f, n_rows * d) + 1e-9, rule


def test_coordinatewise_rules_hand_cases() -> None:
    # even n: the median is the mean of the two middle values; odd n: the middle one
    assert coordinatewise("cwmed", line(4.0, -1.0, 10.0, 2.0), 0).item() == 3.0
    assert coordinatewise("cwmed", line(4.0, -1.0, 10.0), 0).item() == 4.0
    # trimmed mean drops exactly f per side; f = 0 is the mean
    assert coordinatewise("cwtm", line(1.0, 2.0, 3.0, 4.0, 100.0, -50.0), 2).item() == 2.5
    assert coordinatewise("cwtm", line(1.0, 2.0, 6.0), 0).item() == 3.0
    # MeaMed: the n - f values closest to the median (3.0 here: 2 and 4 at distance 1, then 1 and 5
    # tie at 2 and the lower index wins)
    assert coordinatewise("meamed", line(1.0, 2.0, 4.0, 5.0, 100.0, -100.0), 3).item() == pytest.approx(7 / 3)
    assert coordinatewise("meamed", line(5.0, 2.0, 4.0, 1.0, 100.0, -100.0), 3).item() == pytest.approx(
        11 / 3
    )
    # unlisted rows count as 0: one client lists row 0 only, the others nothing
    x = torch.zeros(3, 2, 1, dtype=F64)
    x[0, 0] = 9.0
    v = ClientVectors.from_dense(x)
    assert coordinate_median(v)[1].tolist() == [[0.0]]
    assert trimmed_mean(v, 0)[1].tolist() == [[3.0]]
    # Proposition 2 witness: n - f zeros and f ones -> 0, so CWTM's bound is tight for S = {f+1..n}
    n, f = 7, 2
    w = line(*([0.0] * (n - f) + [1.0] * f))
    for rule in LAMBDA:
        assert coordinatewise(rule, w, f).item() == 0.0
    assert resilience_ratio(np.zeros(1), flat(w.to_dense()).numpy(), f) == pytest.approx(f / (n - f))
    with pytest.raises(ValueError, match="n - 2f >= 1"):
        trimmed_mean(line(1.0, 2.0, 3.0, 4.0), 2)
    with pytest.raises(ValueError, match="n - f >= 1"):
        meamed(line(1.0), 1)


@pytest.mark.parametrize("device", DEVICES)
def test_sanity_identical_inputs_give_that_input_exactly(device: str) -> None:
    """RESAM's sanity check: n - f identical inputs (f arbitrary, huge) -> exactly that input."""
    gen = torch.Generator().manual_seed(5)
    n, f = 7, 3
    honest = torch.randn(1, 20, 3, generator=gen, dtype=F64) * (torch.rand(1, 20, 1, generator=gen) < 0.5)
    x = torch.cat([honest.expand(n - f, 20, 3), 1e12 * torch.randn(f, 20, 3, generator=gen, dtype=F64)])
    x = x[torch.randperm(n, generator=gen)].to(device)
    v = ClientVectors.from_dense(x)
    for rule in LAMBDA:
        assert torch.equal(coordinatewise(rule, v, f), honest[0].to(device)), rule
    assert torch.equal(x[krum(v, 2).accepted][0], honest[0].to(device))  # n >= 2f + 3 with f = 2
    beta, _ = geometric_median(v)
    assert beta.device.type == torch.device(device).type
    assert float((gm_point(v, beta) - honest[0].to(device)).norm()) <= 1e-6


def test_norm_trim_hand_cases() -> None:
    # norms 3, 1, 5, 1, 100, 2: trim 1 per side drops index 1 (smallest, lower index of the tie) and 4
    v = line(3.0, 1.0, -5.0, -1.0, 100.0, 2.0)
    sel = norm_trim(v, 1)
    assert sel.accepted.tolist() == [True, False, True, True, False, True]
    assert sel.scores.tolist() == [3.0, 1.0, 5.0, 1.0, 100.0, 2.0]
    assert sel.info == {"rule": "norm_trim", "f": 1, "trim": 1}
    assert norm_trim(v, 2).accepted.tolist() == [True, False, False, False, False, True]
    assert norm_trim(v, 3, trim=1).accepted.tolist() == sel.accepted.tolist()
    assert bool(norm_trim(v, 0).accepted.all())
    # ties at the large end: the higher index counts as larger and is cut first
    assert norm_trim(line(1.0, 7.0, 2.0, 7.0), 0, trim=1).accepted.tolist() == [False, True, True, False]
    with pytest.raises(ValueError, match=r"leaves none of n=4.*smaller trim"):
        norm_trim(line(1.0, 2.0, 3.0, 4.0), 2)
    assert norm_trim(line(1.0, 2.0, 3.0), 1).accepted.tolist() == [False, True, False]


# ----------------------------------------------------------------------------------------------- sparse == dense


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(5, 9),
    n_rows=st.integers(1, 30),
    d=st.integers(1, 3),
    density=st.floats(0.05, 0.5),
    block_rows=st.integers(1, 8),
)
def test_sparse_equals_dense(seed: int, n: int, n_rows: int, d: int, density: float, block_rows: int) -> None:
    """Every rule gives the same result on the sparse listing, on an all-rows listing of the same
    vectors, and as a dense reference computed from ``[n, n_rows * d]`` with torch / numpy."""
    x = sparse_table(seed, n, n_rows, d, density=density, dense=(0,))
    sparse, full = ClientVectors.from_dense(x), ClientVectors.from_dense(x, all_rows=True)
    f = (n - 3) // 2
    pts = flat(x).numpy()
    for k, select, star in ((n - f - 2, multi_krum, False), (n - f - 1, multi_krum_star, True)):
        ref_scores = dense_krum_scores(x, k)
        ref_accepted = select_lowest(ref_scores, n - f)
        for v in (sparse, full):
            sel = select(v, f, n - f, block_rows=block_rows)
            assert torch.allclose(sel.scores, ref_scores, rtol=1e-10, atol=1e-12)
            assert torch.equal(sel.accepted, ref_accepted), star
    norms = torch.linalg.vector_norm(flat(x), dim=1)
    for v in (sparse, full):
        expect = select_lowest(norms, n - f) & ~select_lowest(norms, f)  # ranks f .. n - f - 1
        assert torch.equal(norm_trim(v, f).accepted, expect)
    refs = {
        "cwmed": np.median(pts, axis=0),
        "cwtm": np.sort(pts, axis=0)[f : n - f].mean(0),
        "meamed": np.array(
            [c[np.argsort(np.abs(c - np.median(c)), kind="stable")[: n - f]].mean() for c in pts.T]
        ),
    }
    for v in (sparse, full):
        for rule, ref in refs.items():
            rows, values = {
                "cwmed": lambda v: coordinate_median(v, block_rows=block_rows),
                "cwtm": lambda v: trimmed_mean(v, f, block_rows=block_rows),
                "meamed": lambda v: meamed(v, f, block_rows=block_rows),
            }[rule](v)
            assert np.allclose(scatter(v, rows, values).reshape(-1).numpy(), ref, rtol=1e-12, atol=1e-14), (
                rule
            )
    bs, _ = geometric_median(sparse, block_rows=block_rows)
    bf, _ = geometric_median(full)
    bd, _ = weiszfeld_gram(torch.tensor(pts @ pts.T))
    assert torch.allclose(bs, bf, rtol=1e-9, atol=1e-12) and torch.allclose(bs, bd, rtol=1e-9, atol=1e-12)


def test_float32_values_keep_their_dtype() -> None:
    x = sparse_table(11, 6, 12, 2, dense=(5,), dtype=torch.float32)
    v = ClientVectors.from_dense(x)
    for rows, values in (
        coordinate_median(v),
        trimmed_mean(v, 1),
        meamed(v, 1),
        weighted_sum(v, torch.ones(6)),
    ):
        assert values.dtype == torch.float32 and rows.dtype == torch.int64
    assert sq_distances(v).dtype == F64 and krum(v, 1).scores.dtype == F64


# ----------------------------------------------------------------------------------------------- ByzFL


@needs_byzfl
def test_byzfl_krum_uses_n_minus_f_minus_1_neighbours() -> None:
    """The documented difference (ANCHORS.md section 4.1): ByzFL's Krum ranks on the mean of the n - f - 1
    nearest squared distances, i.e. Krum*; on the pinned hand case it picks 10 where Krum picks 11."""
    pts = np.array([[0.0], [0.1], [10.0], [11.0], [12.0]])
    assert BYZFL.Krum(f=1)(pts).tolist() == [10.0]
    v = line(0.0, 0.1, 10.0, 11.0, 12.0)
    assert pts[krum_star(v, 1).accepted.numpy()].tolist() == [[10.0]]
    assert pts[krum(v, 1).accepted.numpy()].tolist() == [[11.0]]


@needs_byzfl
@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_byzfl(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 7 + seed  # odd and even n
    f = (n - 1) // 2 - (seed % 2)
    pts = rng.normal(size=(n, 12))
    pts[n - f :] += rng.normal(size=(f, 12)) * 30  # outliers
    v = ClientVectors.from_dense(torch.tensor(pts).reshape(n, 4, 3))

    def agg(rows_values: tuple[torch.Tensor, torch.Tensor]) -> np.ndarray:
        return scatter(v, *rows_values).reshape(-1).numpy()

    assert np.array_equal(BYZFL.Krum(f=f)(pts), pts[krum_star(v, f).accepted.numpy()][0])
    assert np.allclose(BYZFL.MultiKrum(f=f)(pts), pts[multi_krum_star(v, f, n - f).accepted.numpy()].mean(0))
    assert np.allclose(BYZFL.TrMean(f=f)(pts), agg(trimmed_mean(v, f)), rtol=1e-12)
    assert np.allclose(BYZFL.Median()(pts), agg(coordinate_median(v)), rtol=1e-12)
    assert np.allclose(BYZFL.Meamed(f=f)(pts), agg(meamed(v, f)), rtol=1e-12)
    # ByzFL's smoothed Weiszfeld starts at 0; with enough iterations both reach the same median
    theirs = BYZFL.GeometricMedian(nu=1e-9, T=3000)(pts)
    beta, _ = geometric_median(v, nu=1e-9, tol=1e-15, max_iter=3000)
    ours = beta.numpy() @ pts
    assert np.linalg.norm(ours - theirs) <= 1e-6 * np.linalg.norm(theirs) + 1e-8


# sparse listings with shared rows, clients listing nothing and (attacker) a client listing every row
LISTINGS = {
    "seed": st.integers(0, 10_000),
    "n": st.integers(1, 9),
    "n_rows": st.integers(1, 40),
    "d": st.integers(1, 5),
    "density": st.sampled_from([0.02, 0.2, 0.7, 1.0]),
    "attacker": st.booleans(),
}


@settings(max_examples=40, deadline=None)
@given(**LISTINGS)
def test_gram_by_pairs_and_by_blocks_equal_the_dense_product(seed, n, n_rows, d, density, attacker) -> None:
    """Both ways of the Gram matrix (pairs of listers per row; dense blocks) equal X X^T, symmetric, on
    sparse listings with shared rows, clients listing nothing and a client listing every row."""
    x = sparse_table(seed, n, n_rows, d, density=density, dense=(0,) if attacker else ())
    v = ClientVectors.from_dense(x)
    ref = flat(x).to(F64) @ flat(x).to(F64).T
    scale = 1e-12 * (1.0 + flat(x).to(F64).pow(2).sum(1).max())
    for method in ("pairs", "blocks", "auto"):
        g = gram(v, block_rows=3, method=method)
        assert torch.allclose(g, ref, rtol=1e-12, atol=float(scale)), method
        assert torch.equal(g, g.T), method
    with pytest.raises(ValueError, match="method"):
        gram(v, method="dense")


@settings(max_examples=40, deadline=None)
@given(**LISTINGS, double=st.booleans())
def test_the_c_gram_is_the_torch_pairs_way_and_makes_its_choice(
    seed, n, n_rows, d, density, attacker, double
):
    """fedrec.defenses.gram_native: the torch pairs way's matrix to float64 round-off, exactly symmetric,
    for float32 and float64 values; with ``auto`` it leaves the matrix to the blocks way exactly where
    the torch way would (``_use_pairs``); a row or owner outside raises before anything is written."""
    from fedrec.defenses import gram_native
    from fedrec.defenses.vectors import _by_row, _gram_pairs_torch, _use_pairs

    if gram_native.native() is None:
        pytest.skip("no C compiler for the C Gram matrix")
    x = sparse_table(seed, n, n_rows, d, density=density, dense=(0,) if attacker else ())
    v = ClientVectors.from_dense(x.to(F64 if double else torch.float32))
    by_row = _by_row(v)
    want = _gram_pairs_torch(v, by_row)
    got = gram_native.gram_pairs(v.rows, v.owner(), v.values, v.n, v.n_rows, auto=False)
    scale = 1e-13 * (1.0 + float(want.diagonal().abs().max())) if n else 0.0
    assert got is not None and torch.allclose(got, want, rtol=1e-13, atol=scale)
    assert torch.equal(got, got.T)
    auto = gram_native.gram_pairs(v.rows, v.owner(), v.values, v.n, v.n_rows, auto=True)
    assert (auto is not None) == _use_pairs(v, by_row, "auto", "gram", 8)
    if v.rows.numel():  # gram() itself takes the C pass for the pairs way
        calls = []
        plain = gram_native.gram_pairs
        gram_native.gram_pairs = lambda *a, **k: calls.append(1) or plain(*a, **k)
        try:
            assert torch.equal(gram(v, method="pairs"), got)
        finally:
            gram_native.gram_pairs = plain
        assert calls
    if v.rows.numel():
        with pytest.raises(IndexError):
            gram_native.gram_pairs(v.rows, v.owner(), v.values, v.n, int(v.rows.max()), auto=False)
        with pytest.raises(IndexError):
            gram_native.gram_pairs(v.rows, v.owner() + v.n, v.values, v.n, v.n_rows, auto=False)


@settings(max_examples=40, deadline=None)
@given(**LISTINGS, p=st.sampled_from([1.0, 1.5, 3.0, math.inf]))
def test_lp_distances_by_pairs_and_by_blocks_equal_the_literal_ones(
    seed, n, n_rows, d, density, attacker, p
) -> None:
    """MixTailor's l_p and l-infinity Krum distances by pairs of listers per row (plus the rows only one
    of the two lists) equal the literal dense ``|x_i - x_j|_p^2``, and the l-infinity ones equal the
    dense-block way bit for bit; rows listed with zero values (``all_rows``) change nothing."""
    x = sparse_table(seed, n, n_rows, d, density=density, dense=(0,) if attacker else ())
    diff = (flat(x)[:, None, :] - flat(x)[None, :, :]).abs()
    ref = diff.amax(2).pow(2) if p == math.inf else diff.pow(p).sum(2).pow(2 / p)
    for all_rows in (False, True):
        v = ClientVectors.from_dense(x, all_rows=all_rows)
        got = {}
        for method in ("pairs", "blocks", "auto"):
            if p == math.inf:
                got[method] = sq_linf_distances(v, block_rows=3, method=method)
            else:
                got[method] = sq_lp_distances(v, p, block_rows=3, method=method)
            torch.testing.assert_close(got[method], ref, rtol=1e-10, atol=1e-12, msg=method)
        assert torch.equal(got["pairs"], got["pairs"].T)  # (cdist's l_p is symmetric only to rounding)
        if p == math.inf:
            assert torch.equal(got["pairs"], got["blocks"])
        with mock.patch.object(vectors, "BLOCK_ELEMENTS", 7):  # pair and entry chunks of a few elements
            small = (
                sq_linf_distances(v, method="pairs")
                if p == math.inf
                else sq_lp_distances(v, p, method="pairs")
            )
        torch.testing.assert_close(small, got["pairs"], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="method"):
        sq_linf_distances(v, method="dense")
    with pytest.raises(ValueError, match="method"):
        sq_lp_distances(v, 1.0, method="dense")
