"""Issue 9 items 2-4: what one Byzantine client can send, run through the whole simulation.

Each test drives ``FederatedRun`` with a test attacker that returns a crafted reply; on main at
4bd84a9 each of them failed (NaN/Inf state, honest training stopped, a crashed round, or weight
bought by a claimed ``n_examples``)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from fedrec.attacks import make_attack, upload_from_gradient
from fedrec.attacks.poison import KINDS as POISON_KINDS
from fedrec.config import Config
from fedrec.data import split_per_user, synthetic
from fedrec.federation.simulation import FederatedRun
from fedrec.federation.validate import effective_examples

D = 8


def _run(defense: str, attack, rounds: int = 12, **defense_kw) -> FederatedRun:
    cfg = Config()
    cfg.model.dim = D
    cfg.train.lr = 0.01
    cfg.federated.fraction, cfg.federated.rounds, cfg.federated.eval_every = 0.3, rounds, rounds
    cfg.attack.name, cfg.attack.fraction = "gradient-ascent", 0.2
    cfg.defense.name = defense
    for k, v in defense_kw.items():
        setattr(cfg.defense, k, v)
    run = FederatedRun.create(
        cfg, split_per_user(synthetic(60, 40, mean_items=6, seed=3), seed=0), torch.device("cpu")
    )
    object.__setattr__(run, "attack", attack)
    return run


KINDS = [k for k in POISON_KINDS if not k.startswith("inflate")]


@pytest.mark.parametrize("defense", ["none", "a-rfrs", "krum", "rfa", "trmean"])
@pytest.mark.parametrize("kind", KINDS)
def test_one_well_formed_poison_neither_corrupts_the_state_nor_stops_honest_training(defense, kind):
    run = _run(defense, make_attack("poison", kind=kind))
    run.run()
    df = run.rounds_frame()
    assert torch.isfinite(run.server.theta).all() and all(
        torch.isfinite(s).all() for s in run.server.state.values()
    )
    honest, byz = df[~df.byzantine], df[df.byzantine]
    assert len(byz) > 0 and not byz.accepted.any()
    assert set(byz.reason.astype(str)) <= {"state-domain", "rule-verify", "magnitude"}
    # honest training goes on: validation never rejects an honest upload, every round accepts some
    assert set(honest.reason.astype(str)) <= {"", "filtered"}
    assert honest.groupby("t").accepted.any().all()


@dataclasses.dataclass(frozen=True)
class Identity:
    """Replies under other clients' ids: ``copies`` of one upload, another client's id, an unsampled id."""

    kind: str
    name = "identity"
    omniscient = False
    rule_consistent = True

    def __call__(self, ctx):
        up = upload_from_gradient(ctx, ctx.rows, ctx.ptr, -ctx.g)
        if self.kind == "ten-copies":
            one = up.take(torch.zeros(10, dtype=torch.int64))
            return one
        if self.kind == "unsampled":
            return dataclasses.replace(up, client_ids=up.client_ids + 10_000)
        if self.kind == "impersonate":  # every Byzantine reply claims the first client id of the table
            return dataclasses.replace(up, client_ids=torch.zeros_like(up.client_ids))
        raise ValueError(self.kind)


@pytest.mark.parametrize("kind", ["ten-copies", "unsampled", "impersonate"])
def test_exactly_one_upload_per_sampled_client(kind):
    run = _run("none", Identity(kind))
    run.run()
    df = run.rounds_frame()
    # one record per sampled client, ids as sampled, the weights of a round summing to 1
    assert (df.groupby("t").client_id.nunique() == run.per_round).all()
    assert df.groupby("t").weight.sum().sub(1).abs().max() < 1e-9
    byz = df[df.byzantine]
    refused = run.refused_counts()
    if kind == "ten-copies":  # the first copy fills the first Byzantine slot, the rest are refused
        assert refused.get("duplicate-client", 0) > 0
        share = df[df.byzantine].groupby("t").weight.sum()
        assert (share < 0.5).all()
    else:  # nobody can speak for a client that was not sampled, or for one that already spoke
        assert (byz.reason.astype(str) == "missing").all() and not byz.accepted.any()
        assert sum(refused.values()) == len(byz)


def _byzantine_weight(run: FederatedRun) -> float:
    df = run.rounds_frame()
    return float(df[df.byzantine].weight.sum() / df.weight.sum())


@pytest.mark.parametrize("defense", ["none", "rfa", "a-rfrs"])
def test_a_claimed_n_examples_buys_bounded_weight(defense):
    honest_claims = _byzantine_weight(_honest_run(defense))
    catalog = _run(defense, make_attack("poison", kind="inflate-catalog"))
    catalog.run()
    df = catalog.rounds_frame()
    # a claim of the whole catalog is more positives than the rows it lists: rejected
    assert (df[df.byzantine].reason.astype(str) == "n-examples-absurd").all()
    rows = _run(defense, make_attack("poison", kind="inflate-rows"))
    rows.run()
    # claiming as many positives as it lists rows (the most validation lets through) at most doubles
    # the Byzantine share of the weight here (FISM lists >= 2 rows per positive, and the median clip)
    assert _byzantine_weight(rows) <= 2.5 * honest_claims


def _honest_run(defense: str) -> FederatedRun:
    run = _run(defense, make_attack("gradient-ascent"))
    run.run()
    return run


def test_clipped_weights_bound_each_claim_by_the_honest_median():
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        n, f = 15, 7
        honest = torch.randint(1, 50, (n - f,), generator=gen)
        byz = torch.randint(1, 10**9, (f,), generator=gen)
        ne = torch.cat([honest, byz])
        eff = effective_examples(ne, torch.ones(n, dtype=torch.bool), "clipped", 20.0)
        # f < n / 2: the median lies within the honest claims, so no claim weighs more than 20 x the
        # largest honest one, and honest claims within 20 x the smallest honest one are untouched
        assert int(eff.max()) <= math.ceil(20 * int(honest.max()))
        small = honest <= 20 * int(honest.min())
        assert torch.equal(eff[: n - f][small], honest[small])


@dataclasses.dataclass(frozen=True)
class BadTensors:
    """A reply whose tensors are of a kind the server cannot aggregate (sparse, meta, autograd)."""

    kind: str
    name = "bad-tensors"
    omniscient = False
    rule_consistent = False

    def __call__(self, ctx):
        up = upload_from_gradient(ctx, ctx.rows, ctx.ptr, -ctx.g)
        if self.kind == "requires-grad":
            return dataclasses.replace(up, theta=up.theta.clone().requires_grad_(True))
        if self.kind == "sparse":
            return dataclasses.replace(up, theta=up.theta.to_sparse())
        if self.kind == "meta":
            return dataclasses.replace(
                up, state={**up.state, "m": torch.empty(up.state["m"].shape, device="meta")}
            )
        if self.kind == "float-ids":
            return dataclasses.replace(up, client_ids=up.client_ids.double())
        raise ValueError(self.kind)


@pytest.mark.parametrize("kind", ["requires-grad", "sparse", "meta", "float-ids"])
def test_a_reply_of_unusable_tensors_is_rejected_and_the_run_goes_on(kind):
    run = _run("a-rfrs", BadTensors(kind))
    run.run()
    df = run.rounds_frame()
    byz = df[df.byzantine]
    assert run.server.t == 12 and torch.isfinite(run.server.theta).all() and not byz.accepted.any()
    want = "missing" if kind == "float-ids" else "shape"  # unreadable ids: the reply speaks for nobody
    assert (byz.reason.astype(str) == want).all()
    assert not run.server.theta.requires_grad and df[~df.byzantine].groupby("t").accepted.any().all()


def _one_round():
    from fedrec.defenses import make_defense
    from fedrec.federation.clients import client_gradients, honest_uploads
    from fedrec.federation.pipeline import ServerLimits, server_round
    from fedrec.models import CSRTensors, TableLayout, gather_users, sample_negatives
    from fedrec.optim import make_rule
    from fedrec.protocol import ServerState

    inter = synthetic(20, 30, mean_items=5, seed=2)
    layout = TableLayout.for_model("fism", inter.n_items)
    rule = make_rule("adam", eta=0.01)
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(layout.n_rows, 4, generator=g)
    server = ServerState(theta, {k: torch.rand(theta.shape, generator=g) * 1e-2 for k in rule.state_names}, 4)
    batch = gather_users(CSRTensors.from_interactions(inter), torch.arange(6))
    grads = client_gradients(
        theta, layout, batch, sample_negatives(batch, inter.n_items, 1, g), gamma=1.0, lam=1e-4
    )
    honest = honest_uploads(server, rule, grads, batch, 5)
    limits = ServerLimits(n_rows=layout.n_rows, d=4, max_examples=layout.n_items)

    def go(ups):
        return server_round(
            server,
            ups,
            sampled=honest.client_ids,
            rule=rule,
            defense=make_defense("none"),
            t=5,
            f=1,
            limits=limits,
        )

    return honest, go


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("n_examples", 2**63, "shape"), ("n_examples", 2**80, "shape"), ("n_examples", 3.5, "shape"),
        ("n_examples", None, "shape"), ("client_id", None, "client-id"), ("client_id", "abc", "client-id"),
        ("client_id", 3.5, "client-id"), ("client_id", 2**64, "client-id"),
    ],
)  # fmt: skip
def test_uploads_that_crashed_the_round_are_rejected_with_a_reason(field, value, reason):
    honest, go = _one_round()
    ups = [honest.upload(i) for i in range(honest.n)]
    ups[2] = dataclasses.replace(ups[2], **{field: value})
    out = go(ups)
    names = out.decision.reason_names()
    if reason == "client-id":  # it speaks for nobody: client 2's slot is empty, the upload refused
        assert names[2] == "missing" and int(out.refused[out.refused.nonzero()].sum()) == 1
    else:
        assert names[2] == reason
    assert [n for i, n in enumerate(names) if i != 2] == [""] * 5 and torch.isfinite(out.state.theta).all()


def test_rounds_without_byzantine_clients_run_under_a_dense_attack():
    """A dense camouflage run whose rounds sample no Byzantine client crashed in
    dense_upload_from_gradient (a reshape of 0 rows) on 4bd84a9; the attack is not called then, and
    the dense builder handles b = 0 anyway."""
    from fedrec.attacks import AttackContext, dense_upload_from_gradient
    from fedrec.optim import make_rule
    from fedrec.protocol import ServerState

    run = _run("a-rfrs", make_attack("camouflage", all_rows=True), rounds=12)
    object.__setattr__(run, "byzantine", torch.zeros_like(run.byzantine))
    run.byzantine[:1] = True  # one Byzantine client of 60: most rounds sample none
    run.run()
    df = run.rounds_frame()
    assert run.server.t == 12 and (df.groupby("t").byzantine.sum() == 0).any()
    rule = make_rule("adam")
    server = ServerState(torch.zeros(5, 3), rule.init_state(torch.zeros(5, 3)), 0)
    ctx = AttackContext(
        server=server, t=1, rule=rule, client_ids=torch.zeros(0, dtype=torch.int64),
        n_examples=torch.zeros(0, dtype=torch.int64), ptr=torch.zeros(1, dtype=torch.int64),
        rows=torch.zeros(0, dtype=torch.int64), g=torch.zeros(0, 3), generator=torch.Generator(),
    )  # fmt: skip
    assert dense_upload_from_gradient(ctx, torch.zeros(0, 5, 3)).n == 0


@pytest.mark.parametrize("seed", range(40))
def test_admit_takes_its_short_way_only_where_it_is_the_general_one(seed: int) -> None:
    """``admit``'s way for a round where each sampled client sent one upload (ids a permutation of the
    slots) gives what the general way (``_admit_any``) gives on the same batch, and batches with a
    duplicate, an unsampled id, a missing client or a ``client-id`` code take the general way."""
    from fedrec.federation.validate import CODE, REASONS, _admit_any, admit
    from fedrec.protocol import UploadBatch

    gen = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 7, (1,), generator=gen))
    sampled = torch.randperm(20, generator=gen)[:n].sort().values
    kind = seed % 5
    ids = sampled[torch.randperm(n, generator=gen)]
    if kind == 1:  # a duplicate in place of one client
        ids = ids.clone()
        ids[-1] = ids[0]
    elif kind == 2:  # an unsampled id
        ids = ids.clone()
        ids[0] = 99
    elif kind == 3:  # a missing client, or one more upload
        ids = ids[:-1] if n > 1 else torch.cat([ids, ids])
    N = ids.shape[0]
    counts = torch.randint(0, 4, (N,), generator=gen)
    ptr = torch.zeros(N + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=ptr[1:])
    K = int(ptr[-1])
    batch = UploadBatch(
        client_ids=ids, ptr=ptr, rows=torch.arange(K), theta=torch.randn(K, 3, generator=gen),
        state={"m": torch.randn(K, 3, generator=gen)}, n_examples=counts + 1,
    )  # fmt: skip
    codes = torch.randint(0, 3, (N,), generator=gen) * (seed % 2)
    if kind == 4:
        codes = codes.clone()
        codes[0] = CODE["client-id"]
    import fedrec.federation.validate as validate_mod

    general = []

    def counted(*args):
        general.append(1)
        return _admit_any(*args)

    validate_mod._admit_any = counted
    try:
        got = admit(batch, codes, sampled)
    finally:
        validate_mod._admit_any = _admit_any
    # the short way exactly where each sampled client sent one upload and none has a client-id code
    assert bool(general) == (kind != 0)
    want = _admit_any(batch, codes, sampled, torch.zeros(len(REASONS), dtype=torch.int64))
    for a, b in ((got[0], want[0]),):
        for f in ("client_ids", "ptr", "rows", "theta", "n_examples"):
            assert torch.equal(getattr(a, f), getattr(b, f)), f
        assert torch.equal(a.state["m"], b.state["m"])
    assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])


@pytest.mark.parametrize("fused", [False, True])
def test_the_rule_check_names_the_first_check_an_upload_fails(fused: bool) -> None:
    """``check_rule``: of the state domain, the rule's equations and the gradient bound, an upload's code
    is the first it fails, whichever of its rows fail which (the C check of Adam and the torch one)."""
    from fedrec.federation.validate import CODE, check_rule
    from fedrec.optim import make_rule
    from fedrec.protocol import ServerState, UploadBatch

    rule = make_rule("adam")
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(6, 4, generator=gen)
    server = ServerState(theta, rule.init_state(theta), 3)
    rows = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1])  # five uploads: rows 0-1, 2, 3, 4-5, 0-1
    ptr = torch.tensor([0, 2, 3, 4, 6, 8])
    g = torch.randn(8, 4, generator=gen)
    g[1] = 1e6  # upload 0, its second row: past the bound
    g[3] = 1e6  # upload 2: past the bound
    g[4] = 1e6  # upload 3, first row: past the bound
    prev = {"theta": theta[rows], **{k: x[rows] for k, x in server.state.items()}}
    up = rule.client_step(prev, g, 4)
    up["v"][0, 0] = -1.0  # upload 0, first row: outside the state domain (and past the bound on row 1)
    up["theta"][2, 1] += 1.0  # upload 1: breaks the rule's equations only
    up["theta"][5, 0] += 1.0  # upload 3, second row: breaks the equations (first row past the bound)
    batch = UploadBatch(
        torch.arange(5), ptr, rows, up["theta"], {"m": up["m"], "v": up["v"]}, torch.full((5,), 2)
    )
    codes, _ = check_rule(
        server, batch, rule, 4, torch.zeros(5, dtype=torch.int64), max_grad=1e4, verify=True, fused=fused
    )
    want = ["state-domain", "rule-verify", "magnitude", "rule-verify", None]
    assert codes.tolist() == [0 if w is None else CODE[w] for w in want]
