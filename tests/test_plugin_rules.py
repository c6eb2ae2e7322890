"""Plug-in rules (issue 10, Build item 2): one registry helper, one rule signature, presets in one
catalogue, ``Defense.decide`` dispatching on what a rule returns. Contract tests loop over the
registries; none lists them."""

from __future__ import annotations

import inspect

import pytest
import torch

from fedrec.attacks import ATTACKS
from fedrec.config import Config, load_config
from fedrec.data import split_per_user, synthetic
from fedrec.defenses import DEFENSES, RULES, ClientVectors, Defense, RuleResult, RuleSpec
from fedrec.federation.pipeline import rule_generator
from fedrec.federation.reference import reference_defended_round
from fedrec.federation.simulation import FederatedRun
from fedrec.optim import RULES as OPTIMIZERS
from fedrec.protocol import REASONS
from fedrec.registry import Registry

FILTERED = REASONS.index("filtered")


def _run(optimizer: str, defense: Defense, attack: str = "sign-flip", seed: int = 3) -> FederatedRun:
    cfg = Config()
    cfg.model.dim = 4
    cfg.train.optimizer, cfg.train.lr, cfg.train.seed = optimizer, 0.05, seed
    cfg.federated.fraction, cfg.federated.rounds = 0.3, 10
    cfg.attack.name, cfg.attack.fraction, cfg.attack.seed = attack, 0.3, seed
    cfg.defense.max_weight_share = 1.0
    split = split_per_user(synthetic(30, 20, mean_items=6, seed=seed), seed=seed)
    run = FederatedRun.create(cfg, split, torch.device("cpu"))
    run.server.theta = run.server.theta.double()
    run.server.state = {k: v.double() for k, v in run.server.state.items()}
    object.__setattr__(run, "defense", defense)
    return run


def test_registry_refuses_a_name_twice_and_names_the_known_ones():
    reg: Registry[int] = Registry("widget")
    reg.register(1, name="a")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register(2, name="a")
    with pytest.raises(ValueError, match=r"unknown widget 'b'; known: a"):
        reg.lookup("b")
    for registry in (RULES, ATTACKS, OPTIMIZERS):  # the one helper serves all three
        assert isinstance(registry, Registry)


@pytest.mark.parametrize("name", list(RULES))
def test_every_rule_builds_from_its_name_alone_and_runs_on_a_small_round(name):
    """Presets name rules: every parameter has a default, and ``fast`` answers in the RuleResult form
    its kind promises."""
    spec = RULES[name]
    assert all(v is not inspect.Parameter.empty for v in spec.params.values()), spec.params
    f = 1
    n = max(spec.min_n(f), 6)
    x = torch.randn(n, 5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = spec(ClientVectors.from_dense(x), f, rng=torch.Generator().manual_seed(1))
    assert isinstance(res, RuleResult) and res.scores.shape == (n,)
    if spec.kind == "select":
        assert res.accepted is not None and res.accepted.dtype == torch.bool and res.aggregate is None
    elif spec.kind == "weight":
        assert res.weights is not None and abs(float(res.weights.sum()) - 1) < 1e-9
    else:
        assert res.aggregate is not None


# the contract over optimizers: every registered rule, on reconstructed gradients, under every optimizer
# rule (the momentum-space and theta-space forms are covered with Adam in test_defended_rounds.py)
OPT_CASES = [(r, o) for r in RULES for o in OPTIMIZERS]


@pytest.mark.parametrize(("rule", "optimizer"), OPT_CASES)
def test_every_rule_under_every_optimizer_equals_dense_reference(rule, optimizer):
    spec = RULES[rule]  # the geometric median (or MixTailor's): the same Weiszfeld steps both sides
    iterative = "max_iter" in spec.params
    params = {"tol": 0.0, "max_iter": 200} if iterative else {}
    run = _run(optimizer, Defense(f"contract-{rule}", rule, "gradient", params=params))
    for _ in range(3):
        run.step()
    captured = {"server": run.server}
    run.on_round = lambda _r, out: captured.update(out=out)
    run.step()
    out, d, t = captured["out"], run.defense, run.server.t
    valid = (out.decision.reasons == 0) | (out.decision.reasons == FILTERED)
    rng = rule_generator(run.cfg.defense.seed, t) if d.spec.needs_rng else None
    ref, accepted = reference_defended_round(
        captured["server"], run.rule, out.uploads, d, t, run.f, valid, rng
    )
    tol = {"rtol": 1e-7, "atol": 1e-10} if iterative else {"rtol": 1e-9, "atol": 1e-11}
    if not iterative:
        assert torch.equal(out.decision.accepted, accepted | (out.decision.accepted & ~valid))
    torch.testing.assert_close(out.state.theta, ref.theta, **tol)
    for k in run.rule.state_names:
        torch.testing.assert_close(out.state.state[k], ref.state[k], **tol)


@pytest.mark.parametrize("optimizer", ["adam", "momentum"])
@pytest.mark.parametrize("rule", [r for r, s in RULES.items() if s.kind == "select"])
def test_momentum_space_selects_what_gradient_space_selects(rule, optimizer):
    """Under Adam and SGD with momentum every client's first moment is ``b m_bar + c g_i`` with the same
    global ``m_bar`` (paper 000 Algorithm 2): an affine map shared by all clients, so a selector that
    is invariant to translation and scale picks the same uploads on moments as on reconstructed
    gradients (why fedrec runs aggregators in gradient space only; docs/RESULTS.md)."""
    picks = {}
    for space in ("gradient", "momentum"):
        run = _run(optimizer, Defense(f"{rule}-{space}", rule, space), attack="gradient-ascent", seed=9)
        for _ in range(4):
            run.step()
        picks[space] = run.records["accepted"][: run.server.t].clone()
    assert torch.equal(picks["gradient"], picks["momentum"])


def test_a_new_rule_is_one_registration_and_decide_needs_no_branch():
    """A rule registered at run time (keep the clients of even index) works through the generic
    ``decide`` and the generic literal reference, with no edit anywhere else."""

    def fast(v: ClientVectors, f: int, *, every: int = 2) -> RuleResult:
        keep = torch.arange(v.n, device=v.device) % every == 0
        return RuleResult(scores=keep.to(torch.float64), accepted=keep)

    def literal(x: torch.Tensor, f: int, *, every: int = 2) -> RuleResult:
        keep = torch.tensor([i % every == 0 for i in range(x.shape[0])])
        return RuleResult(scores=keep.to(torch.float64), accepted=keep)

    RULES.register(RuleSpec("test-every-other", "select", fast, literal))
    try:
        run = _run("adam", Defense("every-third", "test-every-other", params={"every": 3}))
        run.step()
        captured = {"server": run.server}
        run.on_round = lambda _r, out: captured.update(out=out)
        run.step()
        out = captured["out"]
        valid = out.decision.reasons == 0
        valid |= out.decision.reasons == FILTERED
        positions = torch.nonzero(valid).flatten()
        want = torch.zeros_like(valid)
        want[positions[::3]] = True  # every third valid upload
        assert torch.equal(out.decision.accepted, want)
        ref, _ = reference_defended_round(
            captured["server"], run.rule, out.uploads, run.defense, 2, run.f, valid
        )
        torch.testing.assert_close(out.state.theta, ref.theta, rtol=1e-9, atol=1e-11)
    finally:
        del RULES["test-every-other"]


def test_defense_params_from_the_config_reach_the_rule():
    """``--set defense.params.m=2``: A-RFRS keeps exactly 2 uploads a round."""
    cfg = load_config(None, ["train.mode=federated", "defense.name=a-rfrs", "defense.params.m=2",
                             "attack.name=sign-flip", "attack.fraction=0.3"])  # fmt: skip
    cfg.model.dim, cfg.federated.fraction, cfg.federated.rounds = 4, 0.3, 3
    split = split_per_user(synthetic(30, 20, mean_items=6, seed=0), seed=0)
    run = FederatedRun.create(cfg, split, torch.device("cpu"))
    for _ in range(3):
        run.step()
    assert run.records["accepted"][:3].sum(1).tolist() == [2, 2, 2]


def test_every_preset_names_a_registered_rule_and_valid_params():
    for d in DEFENSES.values():
        assert d.rule in RULES
        d.try_params()


def test_a_round_the_rule_cannot_take_is_refused_before_round_1():
    """MDA enumerates C(n, f) subsets: a round size past its limit would raise in every round; it is
    one line naming the key once n is known, and a round it can take passes."""
    from fedrec.config import ConfigError, check_round_size

    cfg = load_config(None, ["train.mode=federated", "defense.name=grad-mda", "attack.name=alie",
                             "attack.fraction=0.4"])  # fmt: skip
    check_round_size(cfg, 19, 8)  # Last.fm at e = 0.01: C(19, 8) = 75,582 subsets
    with pytest.raises(ConfigError, match=r"^defense.name='grad-mda': MDA .* exceeds max_subsets"):
        check_round_size(cfg, 56, 23)  # Citeulike-a: C(56, 23) ~ 3e15
