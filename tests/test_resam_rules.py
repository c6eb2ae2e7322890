"""RESAM's rules that fedrec adds as plug-ins (ALGORITHMS.md sections 4.8, 4.11, 4.12): MDA, centered
clipping and CGE. The sparse ``fast`` rule equals the dense ``literal`` one on sparse problems (clients
listing a few rows next to clients listing every row); MDA equals a brute-force minimum-diameter oracle
and ByzFL's ``MDA``, breaks ties towards the lexicographically smallest subset and refuses past its
subset cap; CC equals ByzFL's ``CenteredClipping`` (both start at v_0 = 0) and is the mean for
c_tau = inf, L = 1; CGE fails RESAM's counter-example and is registered as not resilient."""

from __future__ import annotations

import doctest
import itertools
import math
import types

import numpy as np
import pytest
import torch
from byzfl_oracle import BYZFL, needs_byzfl
from hypothesis import given, settings
from hypothesis import strategies as st

import fedrec.defenses.cge as cge_mod
import fedrec.defenses.clipping as cc_mod
import fedrec.defenses.mda as mda_mod
from fedrec.defenses.base import RULES, RuleResult
from fedrec.defenses.cge import cge
from fedrec.defenses.clipping import centered_clipping
from fedrec.defenses.mda import mda, mda_literal
from fedrec.defenses.vectors import ClientVectors

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
F64 = torch.float64


# ----------------------------------------------------------------------------------------------- helpers


def sparse_table(seed: int, n: int, n_rows: int, d: int, *, density: float, dense: int) -> torch.Tensor:
    """``[n, n_rows, d]`` float64: each client nonzero on a random ~density share of rows, the first
    ``dense`` clients (after a random permutation) on every row, with their own offset and scale."""
    gen = torch.Generator().manual_seed(seed)
    listed = torch.rand(n, n_rows, generator=gen) < density
    listed[torch.randperm(n, generator=gen)[:dense]] = True
    scale = torch.exp(torch.randn(n, 1, 1, generator=gen, dtype=F64))
    offset = torch.randn(n, 1, d, generator=gen, dtype=F64)
    return (torch.randn(n, n_rows, d, generator=gen, dtype=F64) * scale + offset) * listed[..., None]


def dense_output(res: RuleResult, x: torch.Tensor) -> torch.Tensor:
    """A rule's output F(x) as a dense ``[n_rows * d]`` float64 vector (selector: mean of the accepted,
    weights: weighted sum, aggregate: the scattered aggregate)."""
    n = x.shape[0]
    flat = x.reshape(n, -1).to(F64).cpu()
    if res.aggregate is not None:
        rows, values = res.aggregate
        out = torch.zeros(x.shape[1], x.shape[2], dtype=F64)
        out[rows.cpu()] = values.to(F64).cpu()
        return out.reshape(-1)
    if res.weights is not None:
        return res.weights.to(F64).cpu() @ flat
    return flat[res.accepted.cpu()].mean(0)


def problems(draw_seed: int, n: int, rule: str) -> tuple[torch.Tensor, int]:
    """A sparse problem and a valid f for ``rule``."""
    rng = np.random.default_rng(draw_seed)
    f_max = (n - 1) // 2 if rule == "mda" else n - 1
    f = int(rng.integers(0, f_max + 1))
    x = sparse_table(
        draw_seed, n, int(rng.integers(1, 9)), int(rng.integers(1, 4)),
        density=float(rng.uniform(0.05, 0.6)), dense=int(rng.integers(0, n + 1)),
    )  # fmt: skip
    return x, f


# ------------------------------------------------------------------------------------ fast == literal


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 9))
def test_mda_fast_equals_literal(seed: int, n: int) -> None:
    x, f = problems(seed, n, "mda")
    for device in DEVICES:
        fast = RULES["mda"](ClientVectors.from_dense(x.to(device)), f)
        lit = RULES["mda"].run_literal(x, f)
        assert torch.equal(fast.accepted.cpu(), lit.accepted)
        assert int(fast.accepted.sum()) == n - f
        torch.testing.assert_close(fast.scores.cpu(), lit.scores, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(fast.info["diameter"].cpu(), lit.info["diameter"], rtol=1e-9, atol=1e-9)
        assert fast.weights is None and fast.aggregate is None


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 9))
def test_cge_fast_equals_literal(seed: int, n: int) -> None:
    x, f = problems(seed, n, "cge")
    for device in DEVICES:
        fast = RULES["cge"](ClientVectors.from_dense(x.to(device)), f)
        lit = RULES["cge"].run_literal(x, f)
        assert torch.equal(fast.accepted.cpu(), lit.accepted)
        torch.testing.assert_close(fast.scores.cpu(), lit.scores, rtol=1e-12, atol=0.0)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 9),
    tau=st.sampled_from([0.0, 0.3, 1.0, 3.0, 100.0, math.inf]),
    iters=st.integers(1, 4),
)
def test_cc_fast_equals_literal(seed: int, n: int, tau: float, iters: int) -> None:
    x, f = problems(seed, n, "cc")
    for device in DEVICES:
        fast = RULES["cc"](ClientVectors.from_dense(x.to(device)), f, tau=tau, iters=iters)
        lit = RULES["cc"].run_literal(x, f, tau=tau, iters=iters)
        torch.testing.assert_close(dense_output(fast, x), dense_output(lit, x), rtol=1e-10, atol=1e-12)
        # a distance near 0 carries the off-row mass's cancellation, ~sqrt(eps) |v| (module doc)
        scale = 1.0 + float(dense_output(lit, x).norm())
        torch.testing.assert_close(fast.scores.cpu(), lit.scores, rtol=1e-9, atol=1e-7 * scale)
        assert fast.accepted is None and fast.weights is None
        # rows nobody lists are not in the aggregate: the rule never densifies the table
        assert torch.equal(fast.aggregate[0].cpu(), torch.unique((x != 0).any(-1).nonzero()[:, 1]))


def test_fast_keeps_dtype_and_device() -> None:
    x = sparse_table(3, 6, 10, 2, density=0.3, dense=1).float()
    for device in DEVICES:
        v = ClientVectors.from_dense(x.to(device))
        rows, values = centered_clipping(v, 1, tau=1.0, iters=2).aggregate
        assert values.dtype == torch.float32 and values.device.type == device and rows.dtype == torch.int64
        for res in (mda(v, 2), cge(v, 2)):
            assert res.accepted.device.type == device and res.scores.dtype == F64


# ----------------------------------------------------------------------------------------------- MDA


def brute_force_min_diameter(pts: np.ndarray, f: int) -> float:
    n = len(pts)
    return min(
        max((np.linalg.norm(pts[i] - pts[j]) for i, j in itertools.combinations(s, 2)), default=0.0)
        for s in itertools.combinations(range(n), n - f)
    )


@pytest.mark.parametrize("seed", range(12))
def test_mda_is_a_minimum_diameter_subset(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 10))
    f = int(rng.integers(0, (n - 1) // 2 + 1))
    pts = rng.normal(size=(n, 4))
    pts[rng.permutation(n)[:f]] += rng.normal(size=(f, 4)) * rng.choice([0.5, 3.0, 100.0])
    res = mda(ClientVectors.from_dense(torch.tensor(pts).reshape(n, 2, 2)), f)
    acc = res.accepted.numpy()
    best = brute_force_min_diameter(pts, f)
    sel = pts[acc]
    diameter = max((np.linalg.norm(a - b) for a, b in itertools.combinations(sel, 2)), default=0.0)
    assert acc.sum() == n - f
    assert diameter == pytest.approx(best, rel=1e-12, abs=1e-12)
    assert float(res.info["diameter"]) == pytest.approx(best, rel=1e-9)
    # a client's score is the least diameter of a subset containing it
    for i in range(n):
        others = [s for s in itertools.combinations(range(n), n - f) if i in s]
        want = min(
            max((np.linalg.norm(pts[a] - pts[b]) for a, b in itertools.combinations(s, 2)), default=0.0)
            for s in others
        )
        assert float(res.scores[i]) == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_mda_ties_go_to_the_lexicographically_smallest_subset() -> None:
    # {0, 1} and {1, 2} both have diameter 1 (exactly, also through the Gram identity)
    x = torch.tensor([0.0, 1.0, 2.0], dtype=F64)[:, None, None]
    assert mda(ClientVectors.from_dense(x, all_rows=True), 1).accepted.tolist() == [True, True, False]
    assert mda(ClientVectors.from_dense(x.flip(0), all_rows=True), 1).accepted.tolist() == [True, True, False]
    # five copies of a point and a far one: every 4-subset of the copies ties at diameter 0
    y = torch.tensor([3.0, 3.0, 9.0, 3.0, 3.0, 3.0], dtype=F64)[:, None, None]
    assert mda(ClientVectors.from_dense(y), 2).accepted.tolist() == [True, True, False, True, True, False]


def test_mda_chunks_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cross-chunk minimum (and its tie-break) does not depend on the chunk size."""
    x = torch.tensor([0.0, 1.0, 2.0, 50.0, 3.0, 4.0, 60.0], dtype=F64)[:, None, None]
    whole = mda(ClientVectors.from_dense(x), 3)
    for elements, kept in itertools.product((1, 9, 40), (True, False)):
        monkeypatch.setattr(mda_mod, "GATHER_ELEMENTS", elements)
        monkeypatch.setattr(
            mda_mod, "PAIRS_KEPT", 1 << 23 if kept else 0
        )  # pairs kept / built a chunk at a time
        mda_mod._subsets.cache_clear()
        part = mda(ClientVectors.from_dense(x), 3)
        assert torch.equal(part.accepted, whole.accepted) and torch.equal(part.scores, whole.scores)
    mda_mod._subsets.cache_clear()
    assert whole.accepted.tolist() == [True, True, True, False, True, False, False]  # {0, 1, 2, 3} in value


def test_mda_refuses_past_the_subset_cap() -> None:
    v = ClientVectors.from_dense(torch.randn(30, 2, 2, dtype=F64))
    with pytest.raises(ValueError, match=r"C\(n=30, f=10\) = 30045015 subsets exceeds max_subsets = 200000"):
        mda(v, 10)
    with pytest.raises(ValueError, match="30045015"):
        mda_literal(v.to_dense(), 10)
    x = torch.randn(7, 1, 2, dtype=F64)
    assert mda(ClientVectors.from_dense(x), 3, max_subsets=35).info["subsets"] == 35  # C(7, 3) = 35
    with pytest.raises(ValueError, match="max_subsets = 34"):
        mda(ClientVectors.from_dense(x), 3, max_subsets=34)
    with pytest.raises(ValueError, match="n >= 2f \\+ 1"):
        mda(ClientVectors.from_dense(x), 4)
    assert RULES["mda"].min_n(3) == 7


@needs_byzfl
@pytest.mark.parametrize("seed", range(8))
def test_mda_agrees_with_byzfl(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 5 + seed % 5
    f = (n - 1) // 2 - seed % 2
    pts = rng.normal(size=(n, 6))
    pts[rng.permutation(n)[:f]] += rng.normal(size=(f, 6)) * [0.5, 5.0, 1e3][seed % 3]
    res = mda(ClientVectors.from_dense(torch.tensor(pts).reshape(n, 3, 2)), f)
    theirs = BYZFL.MDA(f=f)(pts)  # ByzFL returns the average of its S*
    np.testing.assert_allclose(pts[res.accepted.numpy()].mean(0), theirs, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------ CC


@needs_byzfl
@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # ByzFL's tau / 0 for x_i = v
@pytest.mark.parametrize("seed", range(8))
def test_cc_agrees_with_byzfl(seed: int) -> None:
    """ByzFL's ``CenteredClipping(m=None)`` starts at 0 like ours (its constructor rejects any other
    start, ANCHORS.md section 4.1); a fresh instance per call, since it keeps its last output."""
    x = sparse_table(seed, 5 + seed, 6, 2, density=0.3, dense=seed % 3)
    pts = x.reshape(x.shape[0], -1).numpy()
    for tau, iters in ((100.0, 1), (1.0, 1), (0.5, 3), (2.0, 5)):
        theirs = BYZFL.CenteredClipping(L=iters, tau=tau)(pts)
        ours = dense_output(centered_clipping(ClientVectors.from_dense(x), 1, tau=tau, iters=iters), x)
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-10, atol=1e-12)
    assert RULES["cc"].params == {"tau": 100.0, "iters": 1}  # ByzFL's defaults
    default = BYZFL.CenteredClipping()(pts)
    np.testing.assert_allclose(
        dense_output(RULES["cc"](ClientVectors.from_dense(x), 1), x), default, rtol=1e-10
    )


@pytest.mark.parametrize("seed", range(6))
def test_cc_properties(seed: int) -> None:
    x = sparse_table(seed, 7, 5, 3, density=0.4, dense=1)
    v = ClientVectors.from_dense(x)
    # c_tau = inf, L = 1: the mean (ALGORITHMS.md 4.11, testable), unlisted rows 0 included
    mean = x.reshape(7, -1).mean(0)
    torch.testing.assert_close(dense_output(centered_clipping(v, 0, tau=math.inf), x), mean)
    # a radius above every distance to 0 clips nobody in the first step: also the mean
    big = float(x.reshape(7, -1).norm(dim=1).max()) + 1.0
    res = centered_clipping(v, 0, tau=big)
    torch.testing.assert_close(dense_output(res, x), mean)
    assert not res.info["clipped"].any()
    # each step moves the centre by at most c_tau; tau = 0 never moves from v_0 = 0
    for tau in (0.1, 0.7, 2.0):
        outs = [torch.zeros(x[0].numel(), dtype=F64)]
        outs += [dense_output(centered_clipping(v, 0, tau=tau, iters=k), x) for k in range(1, 5)]
        for a, b in itertools.pairwise(outs):
            assert float((b - a).norm()) <= tau * (1 + 1e-12)
    assert dense_output(centered_clipping(v, 0, tau=0.0, iters=3), x).abs().max() == 0.0
    # scores are the distances to the last centre; clipped where above tau
    res = centered_clipping(v, 0, tau=0.5, iters=2)
    centre = dense_output(centered_clipping(v, 0, tau=0.5, iters=1), x)
    torch.testing.assert_close(res.scores, (x.reshape(7, -1) - centre).norm(dim=1))
    assert torch.equal(res.info["clipped"], res.scores > 0.5)


def test_cc_rejects_bad_parameters() -> None:
    v = ClientVectors.from_dense(torch.ones(3, 1, 1, dtype=F64))
    for bad in ({"tau": -1.0}, {"tau": math.nan}, {"tau": "1"}, {"iters": 0}, {"iters": 1.5}):
        with pytest.raises(ValueError):
            centered_clipping(v, 0, **bad)
    with pytest.raises(ValueError, match="no parameter"):
        RULES["cc"].check({"m": 0})


# ----------------------------------------------------------------------------------------------- CGE


def test_cge_resam_counter_example() -> None:
    """RESAM Appendix C.9: n - f copies of x with |x| > 0 and f smaller inputs not summing to f x. S is
    the copies, diam(S) = 0, yet CGE(x) != x, so no lambda satisfies Definition 2."""
    n, f = 7, 3
    x = torch.tensor([1.0, 2.0], dtype=F64)
    byz = torch.tensor([[0.5, 0.0], [0.0, -1.0], [-1.0, 1.0]], dtype=F64)  # norms < |x|, sum != f x
    pts = torch.cat([x.expand(n - f, 2), byz])[torch.tensor([4, 0, 5, 1, 2, 6, 3])]
    res = cge(ClientVectors.from_dense(pts[:, None, :]), f)
    out = pts[res.accepted].mean(0)
    want = (byz.sum(0) + (n - 2 * f) * x) / (n - f)  # RESAM's closed form
    torch.testing.assert_close(out, want)
    assert float((out - x).norm()) > 0.5  # |CGE - mean_S| > 0 = lambda * diam(S)
    assert RULES["cge"].resilient is False and RULES["cge"].lam is None
    assert RULES["cc"].resilient is False and RULES["cc"].lam is None
    assert RULES["cge"].min_n(3) == 4 and RULES["cge"].params == {}


def test_cge_keeps_the_smallest_norms_ties_to_the_lower_index() -> None:
    x = torch.tensor([[3.0, 4.0], [0.0, 5.0], [1.0, 0.0], [5.0, 0.0], [0.0, 0.0]], dtype=F64)[:, None, :]
    res = cge(ClientVectors.from_dense(x), 2)
    assert res.accepted.tolist() == [True, False, True, False, True]
    assert res.scores.tolist() == [5.0, 5.0, 1.0, 5.0, 0.0]
    with pytest.raises(ValueError, match="0 <= f < n"):
        cge(ClientVectors.from_dense(x), 5)


# -------------------------------------------------------------------------------------- registry, docs


def test_registered_specs() -> None:
    assert RULES["mda"].kind == "select" and RULES["cge"].kind == "select" and RULES["cc"].kind == "aggregate"
    assert RULES["mda"].lam(15, 5, 100) == pytest.approx(1.0)  # ALGORITHMS.md 8.1 worked values
    assert RULES["mda"].lam(12, 2, 100) == pytest.approx(0.4)
    assert RULES["mda"].params == {"max_subsets": 200_000}


@pytest.mark.parametrize("module", [mda_mod, cc_mod, cge_mod])
def test_docstring_examples(module: types.ModuleType) -> None:
    result = doctest.testmod(module, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0
