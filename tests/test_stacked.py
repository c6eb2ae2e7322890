"""Runs stepped together (fedrec.federation.stacked) end bit-identical to the same runs stepped alone:
tables, optimizer states, every round record, losses and evaluations, for every registered attack,
defense and optimizer rule, both models; a stacked run's checkpoint resumes alone to the same end."""

from __future__ import annotations

import pytest
import torch

from fedrec.attacks import ATTACKS
from fedrec.config import Config
from fedrec.data import split_per_user, synthetic
from fedrec.defenses import DEFENSES
from fedrec.federation.checkpoint import CHECKPOINT, load_checkpoint, run_identity
from fedrec.federation.simulation import FederatedRun
from fedrec.federation.stacked import RunStack, stack_error
from fedrec.models.gradients import LANES, lanewise
from fedrec.optim import RULES

SPLIT = split_per_user(synthetic(60, 40, mean_items=8, seed=0), seed=0)
ATTACK_PARAMS = {"noise": {"sigma": 0.05}}
VARIANTS = [(0, 0.2), (1, 0.4), (2, 0.3)]  # (seed, Byzantine fraction) of the stacked runs


def _cfg(attack: str, defense: str, seed: int, fraction: float, model="fism", optimizer="adam") -> Config:
    cfg = Config()
    cfg.model.name, cfg.model.dim = model, 8
    cfg.train.optimizer, cfg.train.lr, cfg.train.seed = optimizer, 0.05, seed
    cfg.federated.fraction, cfg.federated.rounds, cfg.federated.eval_every = 0.3, 4, 2
    cfg.attack.name, cfg.attack.fraction, cfg.attack.seed = attack, fraction, seed
    cfg.attack.params = dict(ATTACK_PARAMS.get(attack, {}))
    cfg.defense.name = defense
    return cfg


def _runs(cfgs: list[Config]) -> list[FederatedRun]:
    return [FederatedRun.create(c, SPLIT, torch.device("cpu")) for c in cfgs]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.is_floating_point():  # NaN where a record has no value (a score a rule does not give)
        return torch.equal(a.nan_to_num(-7.0), b.nan_to_num(-7.0))
    return torch.equal(a, b)


def assert_identical(alone: FederatedRun, stacked: FederatedRun) -> None:
    assert alone.server.t == stacked.server.t
    assert torch.equal(alone.server.theta, stacked.server.theta)
    for k, v in alone.server.state.items():
        assert torch.equal(v, stacked.server.state[k]), k
    for k, v in alone.records.items():
        assert _same(v, stacked.records[k]), k
    assert torch.equal(alone.losses, stacked.losses)
    assert alone.metric_rows == stacked.metric_rows
    if alone.private is not None:
        assert torch.equal(alone.private.u, stacked.private.u)


def check(attack: str, defense: str, model: str = "fism", optimizer: str = "adam") -> None:
    cfgs = [_cfg(attack, defense, s, f, model, optimizer) for s, f in VARIANTS]
    if attack == "mixtailor-adaptive":  # it optimises against the whole pool: 5 s a round here
        for c in cfgs:
            c.federated.rounds = 2
    alone = _runs(cfgs)
    for run in alone:
        run.run()
    together = _runs(cfgs)
    RunStack.of(together).run()
    for a, b in zip(alone, together, strict=True):
        assert_identical(a, b)


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_every_attack(attack):
    check(attack, "a-rfrs")


@pytest.mark.parametrize("defense", sorted(DEFENSES))
def test_every_defense(defense):
    check("gradient-ascent", defense)


@pytest.mark.parametrize("model", ["fism", "mf"])
@pytest.mark.parametrize("optimizer", sorted(RULES))
def test_every_rule_and_model(model, optimizer):
    check("alie", "krum", model, optimizer)


def test_mixed_attacks_and_defenses_in_one_stack():
    """Different attacks and defenses side by side, one of them verifying the optimizer rule (two rule
    checks a round: the noise attack's uploads break the rule, which only a verifying check rejects)
    and one without Byzantine clients."""
    cfgs = [
        _cfg("gradient-ascent", "none", 0, 0.2), _cfg("alie", "trmean", 1, 0.4), _cfg("noise", "krum", 2, 0.3),
        _cfg("camouflage", "verify+a-rfrs", 3, 0.4), _cfg("none", "none", 4, 0.0),
    ]  # fmt: skip
    for c in cfgs[:3]:
        c.defense.verify = False  # the fourth verifies through its defense, the fifth by default
    alone = _runs(cfgs)
    for run in alone:
        run.run()
    together = _runs(cfgs)
    RunStack.of(together).run()
    for a, b in zip(alone, together, strict=True):
        assert_identical(a, b)


def test_a_stacked_checkpoint_resumes_alone(tmp_path):
    cfgs = [_cfg("gradient-ascent", "a-rfrs", s, f) for s, f in VARIANTS]
    for c in cfgs:
        c.federated.checkpoint_every = 2
    alone = _runs(cfgs)
    for run in alone:
        run.run()
    together = _runs(cfgs)
    stack = RunStack.of(together)
    for _ in range(2):
        stack.step()
    for r, run in enumerate(together):
        (tmp_path / str(r)).mkdir()
        run.save(tmp_path / str(r))
    for r, (cfg, a) in enumerate(zip(cfgs, alone, strict=True)):
        ckpt = load_checkpoint(tmp_path / str(r) / CHECKPOINT, run_identity(cfg))
        assert ckpt["theta"].untyped_storage().nbytes() == ckpt["theta"].nbytes  # its block, not the stack
        resumed = _runs([cfg])[0]
        resumed.load_state_dict(ckpt)
        resumed.run()
        assert torch.equal(resumed.server.theta, a.server.theta)
        assert _same(resumed.records["score"], a.records["score"])


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("model.dim", 16),
        ("train.lr", 0.1),
        ("train.optimizer", "sgd"),
        ("federated.rounds", 5),
        ("model.name", "mf"),
    ],
)
def test_runs_that_cannot_share_tables_are_refused_by_key(key, value):
    cfgs = [_cfg("none", "none", 0, 0.0), _cfg("none", "none", 1, 0.0)]
    section, name = key.split(".")
    setattr(getattr(cfgs[1], section), name, value)
    runs = _runs(cfgs)
    assert key in stack_error(runs)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        RunStack.of(runs)


def test_lanewise_gives_each_element_what_it_gets_alone():
    """The padding that makes a client's values independent of its place in a batch: an element's
    sigmoid / softplus / pow is the same at every offset of a batch of any length (unpadded, torch's
    scalar path for a tensor's last partial vector may round differently)."""
    x = torch.randn(5 * LANES + 7, generator=torch.Generator().manual_seed(0)) * 8
    for fn in (torch.sigmoid, torch.nn.functional.softplus, lambda y: y.abs().clamp(min=1) ** -0.37):
        whole = lanewise(fn, x)
        for lo in range(0, 40):
            part = lanewise(fn, x[lo : lo + 2 * LANES + 3])
            assert torch.equal(part, whole[lo : lo + 2 * LANES + 3])
