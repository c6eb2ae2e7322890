"""What an attack forged and how detection is read against it (fedrec.federation.forged, the detection
summary), and A-RFRS with an adaptive number of kept uploads (``outlier_keep``): hand cases, a dense
oracle, and a run whose Byzantine clients ascend."""

from __future__ import annotations

import statistics

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.attacks import AttackContext, dense_upload_from_gradient, upload_from_gradient
from fedrec.config import Config
from fedrec.data import split_per_user, synthetic
from fedrec.defenses.krum import multi_krum, multi_krum_outliers, outlier_keep
from fedrec.defenses.vectors import ClientVectors, select_lowest, sq_linf_distances
from fedrec.federation.detection import detection_summary, forged_rates
from fedrec.federation.forged import forged_distance, segment_sq_norms
from fedrec.federation.simulation import FederatedRun
from fedrec.optim import Adam
from fedrec.protocol import ServerState

# ----------------------------------------------------------------------------- outlier_keep


def test_outlier_keep_hand_cases() -> None:
    s = torch.tensor([1.0, 1.1, 0.9, 5.0, 1.2], dtype=torch.float64)  # median 1.1
    assert outlier_keep(s, 2, 2.0).tolist() == [True, True, True, False, True]
    assert outlier_keep(s, 2, 5.0).all()  # 5.0 <= 5.5
    assert outlier_keep(s, 0, 1.0).all()  # f = 0 rejects nothing
    # even n: the lower median (2), so 10 > 2 * 2 goes; at c = 5 it stays (10 <= 10)
    s = torch.tensor([1.0, 2.0, 3.0, 10.0], dtype=torch.float64)
    assert outlier_keep(s, 1, 2.0).tolist() == [True, True, True, False]
    assert outlier_keep(s, 1, 5.0).all()
    # only the f worst can go, however far the others are
    s = torch.tensor([1.0, 1.0, 1.0, 9.0, 8.0], dtype=torch.float64)
    assert outlier_keep(s, 1, 2.0).tolist() == [True, True, True, False, True]


def test_outlier_keep_rejects_bad_parameters() -> None:
    s = torch.ones(5, dtype=torch.float64)
    with pytest.raises(ValueError, match="c must be >= 1"):
        outlier_keep(s, 1, 0.5)
    with pytest.raises(ValueError, match="f must be in"):
        outlier_keep(s, 5, 2.0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0, 1e6, allow_nan=False), min_size=3, max_size=30),
    st.floats(1, 10),
    st.data(),
)
def test_outlier_keep_is_multi_krum_with_m_between_n_minus_f_and_n(scores, c, data) -> None:
    n = len(scores)
    f = data.draw(st.integers(0, (n - 1) // 2))
    s = torch.tensor(scores, dtype=torch.float64)
    keep = outlier_keep(s, f, c)
    assert (keep | ~select_lowest(s, n - f)).all()  # keeps Multi-Krum's n - f
    assert int((~keep).sum()) <= f
    med = statistics.median_low(scores)
    for i in range(n):
        if not keep[i]:
            assert scores[i] > c * med
        elif not select_lowest(s, n - f)[i]:
            assert scores[i] <= c * med


def test_fixed_n_minus_f_has_a_false_rejection_floor_outliers_do_not() -> None:
    """One Byzantine upload among 11 with f = 4: Multi-Krum keeping n - f must drop 3 honest ones; the
    outlier rule drops the Byzantine one alone."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(11, 6, 4, generator=gen, dtype=torch.float64) * 0.1
    x[7] += 50.0
    v = ClientVectors.from_dense(x, all_rows=True)
    fixed = multi_krum(v, 4, 11 - 4).accepted
    adaptive = multi_krum_outliers(v, 4, 2.0).accepted
    assert not fixed[7] and int((~fixed).sum()) == 4
    assert (~adaptive).nonzero().flatten().tolist() == [7]


# ----------------------------------------------------------------------------- forged_distance


def _adam_state(n_rows: int, d: int, seed: int) -> tuple[Adam, ServerState]:
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(n_rows, d, generator=gen, dtype=torch.float64)
    m = torch.randn(n_rows, d, generator=gen, dtype=torch.float64) * 0.1
    v = torch.rand(n_rows, d, generator=gen, dtype=torch.float64) * 0.01
    return Adam(eta=0.01), ServerState(theta, {"m": m, "v": v}, 6)


def _ctx(rule, server, client_rows, g) -> AttackContext:
    counts = torch.tensor([len(r) for r in client_rows], dtype=torch.int64)
    ptr = torch.zeros(len(client_rows) + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=ptr[1:])
    rows = torch.tensor([r for rs in client_rows for r in rs], dtype=torch.int64)
    return AttackContext(
        server=server, t=server.t + 1, rule=rule, client_ids=torch.arange(len(client_rows)),
        n_examples=counts + 1, ptr=ptr, rows=rows, g=g, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 4))
def test_forged_distance_matches_a_dense_oracle(seed: int, b: int) -> None:
    n_rows, d = 12, 3
    rule, server = _adam_state(n_rows, d, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    client_rows = [sorted(torch.randperm(n_rows, generator=gen)[: 1 + i % 5].tolist()) for i in range(b)]
    g = torch.randn(sum(map(len, client_rows)), d, generator=gen, dtype=torch.float64)
    ctx = _ctx(rule, server, client_rows, g)
    owner = ctx.owner()
    honest_dense = torch.zeros(b, n_rows, d, dtype=torch.float64)
    honest_dense[owner, ctx.rows] = g

    # sparse: same rows, another gradient; the honest gradient itself forges nothing
    h = torch.randn_like(g)
    got = forged_distance(
        server, rule, ctx.t, upload_from_gradient(ctx, ctx.rows, ctx.ptr, h), ctx.ptr, ctx.rows, g
    )
    want = torch.zeros(b, dtype=torch.float64).index_add_(0, owner, ((h - g) ** 2).sum(1)).sqrt()
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)
    same = forged_distance(
        server, rule, ctx.t, upload_from_gradient(ctx, ctx.rows, ctx.ptr, g), ctx.ptr, ctx.rows, g
    )
    assert (same <= 1e-9 * (1 + want)).all()
    ascent = upload_from_gradient(ctx, ctx.rows, ctx.ptr, -g)
    norms = honest_dense.flatten(1).norm(dim=1)
    torch.testing.assert_close(forged_distance(server, rule, ctx.t, ascent, ctx.ptr, ctx.rows, g), 2 * norms)

    # dense: every row listed, the client's own rows included
    H = torch.randn(b, n_rows, d, generator=gen, dtype=torch.float64)
    got = forged_distance(server, rule, ctx.t, dense_upload_from_gradient(ctx, H), ctx.ptr, ctx.rows, g)
    torch.testing.assert_close(got, (H - honest_dense).flatten(1).norm(dim=1), rtol=1e-7, atol=1e-9)


# ----------------------------------------------------------------------------- detection summary


def test_forged_rates_hand_case() -> None:
    rounds = pd.DataFrame(
        {
            "t": [1, 1, 1, 2, 2, 2],
            "byzantine": [True, True, False, True, False, False],
            "accepted": [False, True, False, True, True, True],
            "forged": [3.0, 1.0, 0.0, 0.0, 0.0, 0.0],
            "grad_norm": [1.0, 2.0, 5.0, 1.0, 1.0, 1.0],
        }
    )
    r = forged_rates(rounds)
    assert r["forged_share_rejected"] == pytest.approx(9 / 10)
    assert r["substantial_byzantine"] == 1 and r["substantial_recall"] == 1.0
    s = detection_summary(rounds, f=1)
    # round 1 has 2 > f Byzantine: only round 2 counts "within", where nothing was forged
    assert s["rounds_with_at_most_f_byzantine"]["rounds"] == 1
    assert s["all_rounds"]["forged_share_rejected"] == pytest.approx(0.9)
    assert s["all_rounds"]["false_rejection_rate"] == pytest.approx(1 / 3)  # 1 of 3 honest


def test_a_run_records_what_gradient_ascent_forged(tmp_path) -> None:
    cfg = Config()
    cfg.model.dim = 8
    cfg.train.lr = 0.01
    cfg.federated.fraction, cfg.federated.rounds, cfg.federated.eval_every = 0.3, 6, 6
    cfg.attack.name, cfg.attack.fraction = "gradient-ascent", 0.3
    cfg.defense.name = "a-rfrs-outliers"
    run = FederatedRun.create(cfg, split_per_user(synthetic(40, 30, seed=1), seed=0), torch.device("cpu"))
    run.run()
    df = run.rounds_frame()
    byz, honest = df[df.byzantine], df[~df.byzantine]
    assert len(byz) > 0 and (honest.forged == 0).all() and (honest.grad_norm > 0).all()
    pd.testing.assert_series_equal(byz.forged, 2 * byz.grad_norm, rtol=1e-4, check_names=False)


# ----------------------------------------------------------------------------- l-infinity Krum


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 7), st.integers(1, 5))
def test_sq_linf_distances_match_a_dense_oracle(seed: int, n: int, block_rows: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 9, 3, generator=gen, dtype=torch.float64)
    x[torch.rand(n, 9, generator=gen) < 0.6] = 0.0  # sparse: unlisted rows
    v = ClientVectors.from_dense(x)
    want = torch.tensor([[float((x[i] - x[j]).abs().max()) ** 2 for j in range(n)] for i in range(n)])
    torch.testing.assert_close(sq_linf_distances(v, block_rows), want.to(torch.float64))
    torch.testing.assert_close(sq_linf_distances(v), want.to(torch.float64))


def test_linf_krum_sees_one_extreme_coordinate_that_l2_krum_does_not() -> None:
    """Honest gradients on disjoint rows with norms 1..2; a Byzantine one with the norm of the largest
    honest one packed into a single coordinate. Squared distances of near-orthogonal vectors are sums of
    squared norms, so l2 Krum cannot tell it from the large honest ones; its l-infinity is 4x the others'."""
    n, d = 9, 4
    x = torch.zeros(n, n, d, dtype=torch.float64)
    for i in range(n):
        x[i, i] = torch.full((d,), (1 + i / (n - 1)) / d**0.5)  # norm 1 .. 2 spread over d coordinates
    x[8] = 0.0
    x[8, 8, 0] = 2.0  # same norm as the largest honest (client 7: norm 1.875) up to 7 %, one coordinate
    v = ClientVectors.from_dense(x)
    assert bool(multi_krum_outliers(v, 2, 3.0, distance="l2").accepted[8])
    linf = multi_krum_outliers(v, 2, 3.0, distance="linf").accepted
    assert (~linf).nonzero().flatten().tolist() == [8]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    b=st.integers(0, 6),
    d=st.sampled_from([1, 3, 8, 17, 64]),
    double=st.booleans(),
    specials=st.booleans(),
)
def test_the_c_distances_are_the_torch_ones(seed: int, b: int, d: int, double: bool, specials: bool) -> None:
    """fedrec.federation.forged_native against ``torch_distance``: uploads listing rows the client has,
    rows it has not, none at all; float32 and float64; to float64 round-off (other summation order). An
    infinite reconstructed value gives an infinite distance, a NaN gives NaN."""
    from fedrec.federation import forged_native
    from fedrec.federation.forged import torch_distance

    if forged_native.native() is None:
        pytest.skip("no C compiler for the C distances")
    dtype = torch.float64 if double else torch.float32
    n_rows = 15
    gen = torch.Generator().manual_seed(seed)

    def segments():
        rows = [
            sorted(
                torch.randperm(n_rows, generator=gen)[
                    : int(torch.randint(0, 6, (1,), generator=gen))
                ].tolist()
            )
            for _ in range(b)
        ]
        counts = torch.tensor([len(r) for r in rows], dtype=torch.int64)
        ptr = torch.zeros(b + 1, dtype=torch.int64)
        torch.cumsum(counts, 0, out=ptr[1:])
        flat = torch.tensor([r for rs in rows for r in rs], dtype=torch.int64)
        owner = torch.repeat_interleave(torch.arange(b), counts)
        return ptr, flat, owner

    uptr, urows, uowner = segments()
    optr, orows, _ = segments()
    rec = (torch.randn(urows.shape[0], d, generator=gen, dtype=torch.float64) * 10).to(dtype)
    g = torch.randn(orows.shape[0], d, generator=gen, dtype=torch.float64).to(dtype)
    got = forged_native.distances(uptr, urows, rec, optr, orows, g)
    want = torch_distance(b, n_rows, uowner, urows, rec, optr, orows, g)
    assert got is not None and got.dtype == torch.float64 and got.shape == (b,)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    if specials and urows.numel():
        i = int(uowner[0])
        rec[0, 0] = float("inf")
        assert torch.isinf(forged_native.distances(uptr, urows, rec, optr, orows, g)[i])
        rec[0, 0] = float("nan")
        assert torch.isnan(forged_native.distances(uptr, urows, rec, optr, orows, g)[i])


def test_the_c_distances_leave_unsorted_or_malformed_rows_to_torch() -> None:
    """Rows not strictly increasing within an upload, or a ptr that does not end at the row count: None
    (the torch way runs); nothing else is read."""
    from fedrec.federation import forged_native

    if forged_native.native() is None:
        pytest.skip("no C compiler for the C distances")
    ptr, rec, g = torch.tensor([0, 2]), torch.ones(2, 3), torch.ones(2, 3)
    assert forged_native.distances(ptr, torch.tensor([0, 1]), rec, ptr, torch.tensor([1, 2]), g) is not None
    assert forged_native.distances(ptr, torch.tensor([1, 0]), rec, ptr, torch.tensor([1, 2]), g) is None
    assert forged_native.distances(ptr, torch.tensor([1, 1]), rec, ptr, torch.tensor([1, 2]), g) is None
    assert (
        forged_native.distances(ptr, torch.tensor([0, 1]), rec, torch.tensor([0, 3]), torch.tensor([1, 2]), g)
        is None
    )
    assert (
        forged_native.distances(torch.tensor([0, 1]), torch.tensor([0, 1]), rec, ptr, torch.tensor([1, 2]), g)
        is None
    )
    # an interior offset past the rows (ptr reaches K only at its end): refused before any row is read
    wide, two = torch.tensor([0, 1000, 2]), torch.tensor([0, 1, 2])
    assert forged_native.distances(wide, torch.tensor([0, 1]), rec, two, torch.tensor([1, 2]), g) is None
    assert forged_native.distances(two, torch.tensor([0, 1]), rec, wide, torch.tensor([1, 2]), g) is None


@pytest.mark.parametrize("seed", range(10))
def test_forged_distance_of_picked_uploads_is_that_of_the_taken_batch(seed: int) -> None:
    """``pick`` measures ``uploads.take(pick)`` without the copy: the same distances bit for bit, with
    the gradients given or reconstructed; a pick outside the batch is left to the torch way (IndexError)."""
    from fedrec.federation import forged_native
    from fedrec.protocol import UploadBatch

    n_rows, d = 12, 3
    rule, server = _adam_state(n_rows, d, seed)
    gen = torch.Generator().manual_seed(seed + 7)
    client_rows = [sorted(torch.randperm(n_rows, generator=gen)[: 1 + i % 4].tolist()) for i in range(5)]
    g = torch.randn(sum(map(len, client_rows)), d, generator=gen, dtype=torch.float64)
    ctx = _ctx(rule, server, client_rows, g)
    uploads = upload_from_gradient(ctx, ctx.rows, ctx.ptr, torch.randn_like(g))
    rec = torch.randn(uploads.rows.shape[0], d, generator=gen, dtype=torch.float64)
    pick = torch.tensor([3, 0, 3])
    own = UploadBatch(ctx.client_ids, ctx.ptr, ctx.rows, g, {}, ctx.n_examples).take(pick)
    with_rec = UploadBatch(uploads.client_ids, uploads.ptr, uploads.rows, rec, {}, uploads.n_examples).take(
        pick
    )
    for known in (rec, None):
        got = forged_distance(
            server, rule, ctx.t, uploads, own.ptr, own.rows, own.theta, rec=known, pick=pick
        )
        taken = uploads.take(pick)
        want = forged_distance(
            server,
            rule,
            ctx.t,
            taken,
            own.ptr,
            own.rows,
            own.theta,
            rec=None if known is None else with_rec.theta,
        )
        assert torch.equal(got, want)
    if forged_native.native() is not None:
        assert (
            forged_native.distances(
                uploads.ptr, uploads.rows, rec, own.ptr, own.rows, own.theta, torch.tensor([0, 5, 1])
            )
            is None
        )
    with pytest.raises(IndexError):
        forged_distance(
            server, rule, ctx.t, uploads, own.ptr, own.rows, own.theta, rec=rec, pick=torch.tensor([0, 5, 1])
        )


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 7), K=st.integers(0, 40), d=st.integers(1, 70))
def test_the_c_segment_norms_are_the_torch_ones(seed: int, n: int, K: int, d: int) -> None:
    """``segment_sq_norms`` (the round record's gradient norms, the torch forged distances) from the C
    loop equals the torch way (float64 squares summed per row, added per owner) to float64 round-off,
    for float32 and float64 rows; an owner outside raises; other inputs take the torch way."""
    from fedrec.federation import forged_native

    if forged_native.native() is None:
        pytest.skip("no C compiler")
    gen = torch.Generator().manual_seed(seed)
    owner = torch.randint(0, n, (K,), generator=gen)
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(K, d, generator=gen, dtype=dtype) * 10
        got = forged_native.sq_norms(owner, x, n)
        want = torch.zeros(n, dtype=torch.float64).index_add_(0, owner, x.double().pow(2).sum(1))
        torch.testing.assert_close(got, want, rtol=1e-13, atol=0)
        assert torch.equal(segment_sq_norms(owner, x, n), got)
    assert forged_native.sq_norms(owner, torch.zeros(K, d, dtype=torch.float16), n) is None
    if K:
        with pytest.raises(IndexError):
            forged_native.sq_norms(torch.full((K,), n), torch.zeros(K, d), n)
    hand = forged_native.sq_norms(
        torch.tensor([1, 0, 1]), torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]]), 3
    )
    assert hand.tolist() == [1.0, 29.0, 0.0]


def test_the_forged_share_with_an_upload_forged_past_float64():
    """An attack at eps = 1e308 forges an infinite norm: inf / inf was NaN (and numpy warned on stderr)
    although every such upload was rejected; infinite forgeries outweigh every finite one."""
    import warnings

    rounds = pd.DataFrame({
        "byzantine": [True, True, True, False], "accepted": [False, False, True, True],
        "forged": [float("inf"), float("inf"), 3.0, 0.0], "grad_norm": [1.0, 1.0, 1.0, 1.0],
    })  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert forged_rates(rounds)["forged_share_rejected"] == 1.0
        rounds.loc[1, "accepted"] = True
        assert forged_rates(rounds)["forged_share_rejected"] == 0.5
        finite = rounds.assign(forged=[2.0, 1.0, 1.0, 0.0])
        assert forged_rates(finite)["forged_share_rejected"] == 4 / 6
