"""The adaptive attack on MixTailor (issue 11, Build item 2; paper 004 Appendix A.4, P3): the pool's
dense models equal the registered rules, the layering holds (no attack imports a defense), and the
attack's choice breaks a Krum-only pool and minimises the pool's worst case over its grid."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from test_attacks_papers import make_ctx

import fedrec.attacks
from fedrec import mixpool
from fedrec.attacks import MixTailorAdaptive, make_attack
from fedrec.attacks.adaptive import pool_objective
from fedrec.attacks.honest import own
from fedrec.defenses import RULES, ClientVectors
from fedrec.defenses.mixtailor import CLASSES, PS, member_params
from fedrec.optim import make_rule

f64 = torch.float64


def _registered(rule: str, p: float, x: torch.Tensor, f: int) -> torch.Tensor:
    """The registered rule's aggregate of dense ``x [n, rows, d]`` (unit weights), flat ``[D]``."""
    spec = RULES[rule]
    n = x.shape[0]
    extra = {"weights": torch.ones(n, dtype=f64)} if spec.uses_weights else {}
    params = member_params(rule, p, {"nu": 1e-10, "tol": 0.0, "max_iter": 2000})
    res = spec(ClientVectors.from_dense(x, all_rows=True), f, **extra, **params)
    X = x.reshape(n, -1)
    if res.aggregate is not None:
        return res.aggregate[1].reshape(-1)
    if res.weights is not None:
        return res.weights @ X
    return X[res.accepted].mean(0)


@pytest.mark.parametrize("seed", range(3))
def test_dense_models_equal_the_registered_pool_members(seed):
    gen = torch.Generator().manual_seed(seed)
    n, f = 11, 2
    x = torch.randn(n, 4, 2, generator=gen, dtype=f64)
    x[:f] = x[:f] * 8 + 3  # two outliers
    X = x.reshape(1, n, -1)
    for rule in CLASSES:
        for p in (1.0, 2.0, 3.0, 16.0) if mixpool.USES_P[rule] else (2.0,):
            model = mixpool.member(rule, p, X, f)[0]
            tol = 1e-6 if rule == "geomed" else 1e-12  # the attacker's Weiszfeld: 100 steps from the mean
            torch.testing.assert_close(model, _registered(rule, p, x, f), rtol=tol, atol=tol)


def test_pool_description_matches_the_registry():
    assert CLASSES == mixpool.CLASSES and PS == mixpool.PS
    for rule in CLASSES:
        assert mixpool.USES_P[rule] == ("distance" in RULES[rule].params)
        assert all(mixpool.MIN_N[rule](f) == RULES[rule].min_n(f) for f in range(6))
    # copies merged: comed and GM once with weight 16, Krum and Bulyan once per p
    members = mixpool.distinct_members(CLASSES, PS, n=20, f=3)
    assert [(c, k) for c, _, k in members if not mixpool.USES_P[c]] == [("cw-median", 16), ("geomed", 16)]
    assert len(members) == 2 + 2 * 16
    assert all(c != "bulyan" for c, _, _ in mixpool.distinct_members(CLASSES, PS, n=14, f=3))  # n < 4f + 3


def test_no_attack_imports_a_defense():
    """DESIGN.md section 11: attacks and defenses are one layer; neither imports the other."""
    for path in Path(fedrec.attacks.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert not name.startswith(("fedrec.defenses", "fedrec.federation")), (path.name, name)


def _ctx(h: int = 9, b: int = 3, mean: float = 0.2, seed: int = 0):
    """Honest gradients with a small mean next to their spread (where Xie et al.'s attack beats Krum),
    every client listing all 9 rows (d = 3)."""
    gen = torch.Generator().manual_seed(seed)
    honest_g = mean + torch.randn(h * 9, 3, generator=gen, dtype=f64)
    return make_ctx(make_rule("sgd"), [list(range(9))] * b, [list(range(9))] * h, honest_g=honest_g)


def test_against_a_krum_only_pool_the_choice_is_selected_and_reverses_the_mean():
    ctx = _ctx()
    attack = MixTailorAdaptive(classes=("krum",), ps=(2.0,))
    _, mu, eps, obj = attack.choose(ctx)
    assert float(obj.min()) < 0  # a successful attack (paper 004 Definition 2) on the model
    # the registered Krum, on the round the attack makes, picks a Byzantine vector
    _, _, g = attack.craft(ctx)
    V = ctx.honest_g.reshape(9, 9, 3)
    x = torch.cat([V, g.reshape(3, 9, 3)])
    res = RULES["krum"](ClientVectors.from_dense(x, all_rows=True), 3)
    assert bool(res.accepted[9:].any()) and not bool(res.accepted[:9].any())
    assert torch.allclose(g.reshape(3, 9, 3)[0], -eps * mu)


def test_the_choice_minimises_the_worst_member_over_the_grid():
    ctx = _ctx(h=12, b=3)
    attack = make_attack("mixtailor-adaptive")
    _, _, eps, obj = attack.choose(ctx)
    grid = torch.tensor(attack.eps_grid, dtype=f64)
    assert obj[grid == eps].item() == obj.min().item()
    V = ctx.honest_g.reshape(12, -1)
    # the worst case of the chosen eps is no worse than Xie et al.'s eps = 0.1 and 10 (in the grid)
    fixed = pool_objective(V, torch.tensor([0.1, 10.0], dtype=f64), 3, 3, CLASSES, PS, "max")
    assert float(obj.min()) <= float(fixed.min())
    # the median alone is not broken by 3 of 15 (its objective stays positive for every eps)
    comed = pool_objective(V, grid, 3, 3, ("cw-median",), PS, "max")
    assert bool((comed > 0).all())
    mean = make_attack("mixtailor-adaptive", objective="mean").choose(ctx)[3]
    assert mean.shape == obj.shape and bool((mean <= obj + 1e-12).all())  # the mean is below the max


def test_parameters_are_checked():
    for bad in (
        {"objective": "min"},
        {"eps_grid": ()},
        {"eps_grid": (0.1, -1.0)},
        {"f": -1},
        {"classes": ("mda",)},
        {"ps": (0.5,)},
        {"eps_grid": tuple(range(1, 20_001))},  # a round held [20000, n, D] float64: 73 GB
        {"ps": tuple(range(1, 2_001))},  # every member for each p: the first round hung
    ):
        with pytest.raises(ValueError):
            make_attack("mixtailor-adaptive", **bad)


def test_a_round_no_pool_member_runs_on_sends_the_clients_own_updates():
    """f defaults to the round's Byzantine count, which varies: a round where it leaves no member of
    the pool a valid n (Krum needs n >= f + 3) raised and ended the run after its earlier rounds."""
    ctx = _ctx(h=2, b=7)  # n = 9, f = 7: Krum needs 10
    attack = make_attack("mixtailor-adaptive", classes=("krum",), ps=(2.0,))
    assert attack.choose(ctx) is None
    assert all(torch.equal(a, b) for a, b in zip(attack.craft(ctx), own(ctx), strict=True))
