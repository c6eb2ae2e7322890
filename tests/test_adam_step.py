"""Adam's client step as one C loop (fedrec.optim.adam_step) gives torch's ``Adam.client_step`` bit for bit
(float32 bit patterns) at the listed rows: any Adam hyper-parameters, rounds, rows listed several times,
gradients and moments from subnormal to huge, zeros of both signs, infinities and NaN; a zero gradient
still gives ``default_rows``; rows outside the table are refused; other rules and dtypes keep torch."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.optim import adam_step, make_rule
from fedrec.optim.adam import Adam

pytestmark = pytest.mark.skipif(adam_step.native() is None, reason="no C compiler for the Adam step loop")


def bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int32)


def tables_of(seed: int, n: int, d: int, scale: float) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(n, d, generator=gen) * scale
    m = torch.randn(n, d, generator=gen) * scale * 1e-2
    v = torch.rand(n, d, generator=gen) * scale * 1e-3
    m.view(-1)[:3] = torch.tensor([0.0, -0.0, 1e-42])[: m.numel()]  # zeros of both signs, a subnormal
    v.view(-1)[:3] = torch.tensor([0.0, 0.0, 1e-43])[: v.numel()]
    return {"theta": theta, "m": m, "v": v}


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**20),
    n=st.integers(1, 30),
    d=st.sampled_from([1, 7, 16, 64, 67]),
    K=st.integers(0, 40),
    t=st.integers(1, 5000),
    scale=st.sampled_from([1e-20, 1e-3, 1.0, 1e15]),
    eta=st.sampled_from([1e-3, 0.01, 0.37]),
    b1=st.sampled_from([0.9, 0.5, 0.0]),
    b2=st.sampled_from([0.999, 0.9]),
    eps=st.sampled_from([1e-8, 1e-3]),
    special=st.booleans(),
)
def test_the_c_step_is_torchs_client_step_bit_for_bit(seed, n, d, K, t, scale, eta, b1, b2, eps, special):
    rule = Adam(eta=eta, b1=b1, b2=b2, eps=eps)
    tables = tables_of(seed, n, d, scale)
    gen = torch.Generator().manual_seed(seed + 1)
    rows = torch.randint(0, n, (K,), generator=gen)
    g = torch.randn(K, d, generator=gen) * scale
    if special and K:
        g[0, 0], g[-1, -1] = float("inf"), float("nan")
        g[K // 2, 0] = -0.0
    assert adam_step.applies(rule, tables, rows, g)
    got = adam_step.adam_client_step(rule, tables, rows, g, t)
    want = rule.client_step({k: x.index_select(0, rows) for k, x in tables.items()}, g, t)
    for k in ("theta", "m", "v"):
        assert torch.equal(bits(got[k]), bits(want[k])), k


def test_a_zero_gradient_step_is_the_default_rows():
    rule = make_rule("adam")
    tables = tables_of(3, 20, 64, 1.0)
    rows = torch.arange(20)
    got = adam_step.adam_client_step(rule, tables, rows, torch.zeros(20, 64), 7)
    want = rule.default_rows(tables, 7)
    # equal values; a -0 moment comes back +0 (b1 m + 0), as from torch's client step
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_rows_outside_and_other_rules_or_dtypes():
    rule = make_rule("adam")
    tables = tables_of(0, 5, 4, 1.0)
    g = torch.zeros(2, 4)
    with pytest.raises(IndexError, match="outside"):
        adam_step.adam_client_step(rule, tables, torch.tensor([0, 5]), g, 1)
    with pytest.raises(IndexError, match="outside"):
        adam_step.adam_client_step(rule, tables, torch.tensor([-1, 0]), g, 1)

    @dataclass(frozen=True)
    class Other(Adam):
        pass

    rows = torch.tensor([0, 1])
    assert not adam_step.applies(Other(eta=0.01), tables, rows, g)
    assert not adam_step.applies(make_rule("momentum"), tables, rows, g)
    assert not adam_step.applies(rule, {k: x.double() for k, x in tables.items()}, rows, g.double())
    assert not adam_step.applies(rule, tables, rows, g[:1])
    assert not adam_step.applies(rule, tables, rows.int(), g)


@pytest.mark.parametrize("deferred", [False, True])
def test_an_attacks_rule_consistent_upload_is_the_eager_step_bit_for_bit(deferred, monkeypatch):
    """``upload_from_gradient`` (every gradient attack's upload) takes the C client step on Adam's
    float32 tables, reading the rows in place (a deferred state catches them up first): the eager
    ``client_step`` on the gathered rows, bit for bit; a float64 gradient takes the eager step itself."""
    from fedrec.attacks import AttackContext, upload_from_gradient
    from fedrec.federation.deferred import server_state

    if adam_step.native() is None:
        pytest.skip("no C compiler")
    rule = make_rule("adam", eta=0.01)
    gen = torch.Generator().manual_seed(4)
    n, d = 30, 8
    theta = torch.randn(n, d, generator=gen)
    state = {"m": torch.randn(n, d, generator=gen) * 1e-2, "v": torch.rand(n, d, generator=gen) * 1e-4}
    server = server_state(theta.clone(), {k: x.clone() for k, x in state.items()}, 5, rule, deferred)
    rows = torch.tensor([1, 4, 9, 2, 4, 29])
    ptr = torch.tensor([0, 3, 6])
    g = torch.randn(6, d, generator=gen)
    ctx = AttackContext(
        server=server, t=6, rule=rule, client_ids=torch.tensor([7, 8]), n_examples=torch.tensor([3, 3]),
        ptr=ptr, rows=rows, g=g, generator=gen,
    )  # fmt: skip
    want = rule.client_step({"theta": theta[rows], **{k: x[rows] for k, x in state.items()}}, g, 6)
    calls = []
    c_step = adam_step.adam_client_step
    monkeypatch.setattr(adam_step, "adam_client_step", lambda *a: calls.append(1) or c_step(*a))
    for grad in (g, g.double()):
        up = upload_from_gradient(ctx, rows, ptr, grad)
        assert torch.equal(up.theta, want["theta"]) or grad.dtype == torch.float64
        assert torch.equal(up.state["m"], want["m"]) or grad.dtype == torch.float64
        assert torch.equal(up.state["v"], want["v"]) or grad.dtype == torch.float64
        torch.testing.assert_close(up.theta, want["theta"])
    assert calls == [1]  # the float32 gradient took the C step, the float64 one the eager step
