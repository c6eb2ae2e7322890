"""Server hardening: every bad upload kind is rejected with its reason, the round goes on, and the
global state is exactly what the accepted uploads give."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from fedrec.data import split_per_user, synthetic
from fedrec.defenses import make_defense
from fedrec.federation.clients import client_gradients, honest_uploads
from fedrec.federation.pipeline import ServerLimits, server_round
from fedrec.federation.server import aggregate, aggregation_weights
from fedrec.federation.simulation import FederatedRun
from fedrec.models import CSRTensors, TableLayout, gather_users, sample_negatives
from fedrec.optim import make_rule
from fedrec.protocol import REASONS, ServerState, Upload

D = 4


def _honest_round():
    inter = synthetic(20, 30, mean_items=5, seed=2)
    layout = TableLayout.for_model("fism", inter.n_items)
    rule = make_rule("adam", eta=0.01)
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(layout.n_rows, D, generator=g)
    server = ServerState(theta, {k: torch.rand(theta.shape, generator=g) * 1e-2 for k in rule.state_names}, 4)
    batch = gather_users(CSRTensors.from_interactions(inter), torch.arange(6))
    neg = sample_negatives(batch, inter.n_items, 1, g)
    grads = client_gradients(theta, layout, batch, neg, gamma=1.0, lam=1e-4)
    return server, rule, layout, honest_uploads(server, rule, grads, batch, 5)


class Hostile(torch.Tensor):
    """A tensor subclass whose every operation raises: it must be refused before the server touches it."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.__repr__,):
            return "Hostile"
        raise RuntimeError("hostile tensor")


class Liar(int):
    """An int whose ``int()`` says 5 while it holds 2**70 (past int64)."""

    def __int__(self) -> int:
        return 5

    __index__ = __int__


def _corrupt(up: Upload, kind: str, n_rows: int) -> Upload:
    up = dataclasses.replace(up, state=dict(up.state))
    if kind == "nan-theta":
        up.theta = up.theta.clone()
        up.theta[0, 0] = float("nan")
    elif kind == "inf-moment":
        up.state["v"] = up.state["v"].clone()
        up.state["v"][-1, 1] = math.inf
    elif kind == "wrong-shape":
        up.theta = torch.zeros(up.theta.shape[0], D + 1)
    elif kind == "missing-state":
        del up.state["m"]
    elif kind == "float-rows":
        up.rows = up.rows.double()
    elif kind == "row-out-of-range":
        up.rows = up.rows.clone()
        up.rows[-1] = n_rows
    elif kind == "negative-row":
        up.rows = up.rows.clone()
        up.rows[0] = -1
    elif kind == "unsorted":
        up.rows = up.rows.flip(0)
    elif kind == "duplicated":
        up.rows = up.rows.clone()
        up.rows[1] = up.rows[0]
    elif kind == "zero-examples":
        up.n_examples = 0
    elif kind == "negative-examples":
        up.n_examples = -3
    elif kind == "absurd-examples":
        up.n_examples = 10**9
    elif kind == "tensor-subclass":
        up.theta = up.theta.clone().as_subclass(Hostile)
    elif kind == "lying-examples":
        up.n_examples = Liar(2**70)
    elif kind == "weight-share":
        up.n_examples = up.rows.shape[0]  # <= its listed rows, but more than 0.35 of this round's weight
    return up


EXPECTED = {
    "nan-theta": "non-finite", "inf-moment": "non-finite", "wrong-shape": "shape", "missing-state": "shape",
    "float-rows": "shape", "row-out-of-range": "row-out-of-range", "negative-row": "row-out-of-range",
    "unsorted": "rows-unsorted-or-duplicated", "duplicated": "rows-unsorted-or-duplicated",
    "zero-examples": "n-examples-invalid", "negative-examples": "n-examples-invalid",
    "absurd-examples": "n-examples-absurd", "weight-share": "weight-share", "tensor-subclass": "shape",
    "lying-examples": "shape",
}  # fmt: skip


def _limits(layout, **kw) -> ServerLimits:
    return ServerLimits(n_rows=layout.n_rows, d=D, max_examples=layout.n_items, **kw)


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_bad_upload_is_rejected_and_state_equals_the_good_uploads(kind):
    server, rule, layout, batch = _honest_round()
    before = server.clone()
    ups = [batch.upload(i) for i in range(batch.n)]
    bad = 2
    ups[bad] = _corrupt(ups[bad], kind, layout.n_rows)
    out = server_round(
        server, ups, sampled=batch.client_ids, rule=rule, defense=make_defense("none"), t=5, f=0,
        limits=_limits(layout, max_weight_share=0.35 if kind == "weight-share" else 0.5, weighting="claimed"),
    )  # fmt: skip
    decision, new = out.decision, out.state

    names = decision.reason_names()
    assert names[bad] == EXPECTED[kind]
    assert [n for i, n in enumerate(names) if i != bad] == [""] * (batch.n - 1)
    assert not bool(decision.accepted[bad]) and bool(decision.accepted.sum() == batch.n - 1)
    # exactly the aggregate of the good uploads; the old state is untouched
    good = torch.ones(batch.n, dtype=torch.bool)
    good[bad] = False
    want = aggregate(
        server, batch.select(good), aggregation_weights(batch.n_examples[good], good[good]), rule, 5
    )
    torch.testing.assert_close(new.theta, want.theta, rtol=0, atol=0)
    for k in rule.state_names:
        torch.testing.assert_close(new.state[k], want.state[k], rtol=0, atol=0)
        assert torch.equal(server.state[k], before.state[k])
    assert torch.equal(server.theta, before.theta) and torch.isfinite(new.theta).all()


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.float16, torch.float64])
def test_an_upload_in_another_float_dtype_is_read_in_the_servers(dtype):
    """Every float dtype is converted before the uploads are concatenated (float8 cannot be promoted,
    so concatenating first crashed the round): a float8 upload loses precision and fails the rule
    check (so does float16's rounding); a float64 one is what it was."""
    server, rule, layout, batch = _honest_round()
    ups = [batch.upload(i) for i in range(batch.n)]
    bad = 1
    ups[bad] = dataclasses.replace(
        ups[bad], theta=ups[bad].theta.to(dtype), state={k: v.to(dtype) for k, v in ups[bad].state.items()}
    )
    out = server_round(
        server, ups, sampled=batch.client_ids, rule=rule, defense=make_defense("none"), t=5, f=0,
        limits=_limits(layout),
    )  # fmt: skip
    names = out.decision.reason_names()
    assert [n for i, n in enumerate(names) if i != bad] == [""] * (batch.n - 1)
    if dtype == torch.float64:
        assert names[bad] == ""  # every float32 value comes back from float64
    else:
        assert names[bad] not in ("", "shape")  # read, and refused on its rounded values
    assert torch.isfinite(out.state.theta).all()


def test_an_int_subclass_client_id_is_read_by_the_value_it_holds():
    """A client id holding 2**70 whose ``int()`` says a sampled id: the batch would store 2**70 (past
    int64: the round crashed), so it is read as what it holds and refused as unattributable."""
    server, rule, layout, batch = _honest_round()
    ups = [batch.upload(i) for i in range(batch.n)]
    ups[3] = dataclasses.replace(ups[3], client_id=Liar(2**70))
    out = server_round(
        server, ups, sampled=batch.client_ids, rule=rule, defense=make_defense("none"), t=5, f=0,
        limits=_limits(layout),
    )  # fmt: skip
    assert out.decision.accepted.sum() == batch.n - 1 and torch.isfinite(out.state.theta).all()


def test_an_upload_subclass_or_a_dict_subclass_state_is_malformed():
    """A subclass could answer each read of a field differently (a checked tensor, then another)."""

    @dataclasses.dataclass
    class Sly(Upload):
        pass

    class SlyDict(dict):
        pass

    server, rule, layout, batch = _honest_round()
    ups = [batch.upload(i) for i in range(batch.n)]
    ups[1] = Sly(**{f.name: getattr(ups[1], f.name) for f in dataclasses.fields(Upload)})
    ups[2] = dataclasses.replace(ups[2], state=SlyDict(ups[2].state))
    out = server_round(
        server, ups, sampled=batch.client_ids, rule=rule, defense=make_defense("none"), t=5, f=0,
        limits=_limits(layout),
    )  # fmt: skip
    names = out.decision.reason_names()
    assert names[1] == names[2] == "shape" and names.count("") == batch.n - 2


def test_all_rejected_keeps_the_state():
    server, rule, layout, batch = _honest_round()
    ups = [_corrupt(batch.upload(i), "nan-theta", layout.n_rows) for i in range(batch.n)]
    out = server_round(
        server, ups, sampled=batch.client_ids, rule=rule, defense=make_defense("a-rfrs"), t=5, f=1,
        limits=_limits(layout),
    )  # fmt: skip
    assert torch.equal(out.state.theta, server.theta) and out.state.t == 5


def _attacked_run(attack, rounds: int, deferred: bool = False) -> FederatedRun:
    """A small run (40 users, 30 % Byzantine) whose Byzantine clients run the test attacker ``attack``
    (``deferred``: the server's default pass deferred, fedrec.federation.deferred)."""
    from fedrec.config import Config

    cfg = Config()
    cfg.run.deferred = deferred
    cfg.model.dim = D
    cfg.federated.fraction, cfg.federated.rounds, cfg.federated.eval_every = 0.3, rounds, 4
    cfg.attack.name, cfg.attack.fraction = "gradient-ascent", 0.3
    run = FederatedRun.create(cfg, split_per_user(synthetic(40, 30, seed=1), seed=0), torch.device("cpu"))
    object.__setattr__(run, "attack", attack)
    return run


class _Attacker:
    """What the run asks of an attack besides calling it; ``honest`` is the upload of the clients' own step."""

    omniscient = False
    rule_consistent = False

    @staticmethod
    def honest(ctx):
        from fedrec.attacks import upload_from_gradient

        return upload_from_gradient(ctx, ctx.rows, ctx.ptr, ctx.g)


@dataclasses.dataclass(frozen=True)
class PoisonNaN(_Attacker):
    """A test attacker whose uploads are all NaN."""

    name = "nan"

    def __call__(self, ctx):
        up = self.honest(ctx)
        up.theta = torch.full_like(up.theta, float("nan"))
        return up


def test_a_run_with_poisoned_uploads_goes_on(tmp_path):
    run = _attacked_run(PoisonNaN(), rounds=8)
    run.run()
    df = run.rounds_frame()
    assert run.server.t == 8 and torch.isfinite(run.server.theta).all()
    byz = df[df.byzantine]
    assert len(byz) > 0 and (byz.reason == "non-finite").all() and not byz.accepted.any()
    assert df[~df.byzantine].accepted.all()
    assert set(REASONS) >= set(df.reason.astype(str))


@dataclasses.dataclass(frozen=True)
class Scribbler(_Attacker):
    """A test attacker that writes into the state it was given to read (``how``: through a row view,
    the whole table, or a moment), then uploads what an honest client would."""

    how: str
    name = "scribbler"

    def __call__(self, ctx):
        if self.how == "row-view":
            ctx.prev(slice(0, 1))["theta"].fill_(float("nan"))
        elif self.how == "table":
            ctx.server.theta.mul_(-1.0)
        else:
            ctx.server.state["v"].neg_()
        return self.honest(ctx)


@dataclasses.dataclass(frozen=True)
class LateScribbler(Scribbler):
    """``Scribbler`` from round 3 on (tables a round made, not the run's first), and, ``sneaky``, inside an
    inference mode of its own (where torch does not refuse in-place writes into inference tensors)."""

    sneaky: bool = False

    def __call__(self, ctx):
        if ctx.t < 3:
            return self.honest(ctx)
        if self.sneaky:
            with torch.inference_mode():
                return super().__call__(ctx)
        return super().__call__(ctx)


@pytest.mark.parametrize("sneaky", [False, True])
@pytest.mark.parametrize("how", ["row-view", "table", "moment"])
def test_a_write_into_tables_a_round_made_is_stopped_too(how, sneaky):
    """Rounds run under torch.inference_mode; the tables they make stay ordinary tensors (their writes
    counted), so a later round's write is refused as the first round's is, even one made under the
    attack's own inference mode."""
    run = _attacked_run(LateScribbler(how, sneaky), rounds=5)
    with pytest.raises(RuntimeError, match="attack 'scribbler' wrote into the global state"):
        run.run()
    assert run.server.t == 2  # the round that wrote changed nothing the run kept


def test_an_attack_may_write_into_and_differentiate_its_own_context():
    """The context's own tensors are the attack's (copies outside the round's inference mode): writing
    into its gradient in place is no write into the state, and autograd works against them and against
    the tables it reads; so does a user's autograd through the run's tables after the run."""

    @dataclasses.dataclass(frozen=True)
    class OwnWriter(_Attacker):
        name = "own-writer"

        def __call__(self, ctx):
            from fedrec.attacks import upload_from_gradient

            g = ctx.g
            g.mul_(-1.0)
            x = torch.ones_like(g, requires_grad=True)
            (x * g).sum().backward()
            w = torch.ones(ctx.server.dim, requires_grad=True)
            (ctx.server.theta @ w).sum().backward()
            assert x.grad is not None and w.grad is not None
            return upload_from_gradient(ctx, ctx.rows, ctx.ptr, g)

    run = _attacked_run(OwnWriter(), rounds=5)
    run.run()
    assert run.server.t == 5 and not run.server.theta.is_inference()
    w = torch.ones(run.server.dim, requires_grad=True)
    (run.server.theta @ w).sum().backward()
    torch.testing.assert_close(w.grad, run.server.theta.sum(0))


def test_an_attack_that_rebinds_the_contexts_tables_leaves_the_run_alone():
    """Rebinding ``ctx.server.theta`` (no in-place write to count) changes the attack's own copy of the
    state object, never the run's."""

    @dataclasses.dataclass(frozen=True)
    class Rebinder(_Attacker):
        name = "rebinder"

        def __call__(self, ctx):
            up = self.honest(ctx)
            ctx.server.theta = torch.full_like(ctx.server.theta, 3e8)
            ctx.server.state["v"] = torch.full_like(ctx.server.state["v"], -1.0)
            return up

    run = _attacked_run(Rebinder(), rounds=4)
    run.run()
    assert run.server.theta.abs().max() < 1e3 and bool((run.server.state["v"] >= 0).all())
    assert run.rounds_frame().query("not byzantine").accepted.all()


@pytest.mark.parametrize("deferred", [False, True])
@pytest.mark.parametrize("how", ["row-view", "table", "moment"])
def test_an_attack_that_writes_into_the_global_state_is_stopped_by_name(how, deferred):
    """The context holds the server's own tensors (no copy a round); an in-place write is caught by
    torch's version counters and stops the round with the attack's name instead of going unseen (a
    deferred store's tables too, whose own catch-ups write them in place)."""

    run = _attacked_run(Scribbler(how), rounds=4, deferred=deferred)
    with pytest.raises(RuntimeError, match="attack 'scribbler' wrote into the global state"):
        run.run()
