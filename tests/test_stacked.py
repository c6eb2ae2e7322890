"""Runs stepped together (fedrec.federation.stacked) end bit-identical to the same runs stepped alone:
tables, optimizer states, every round record, losses and evaluations, for every registered attack,
defense and optimizer rule, both models; a stacked run's checkpoint resumes alone to the same end."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedrec.attacks import ATTACKS, make_attack
from fedrec.config import Config
from fedrec.data import split_per_user, synthetic
from fedrec.defenses import DEFENSES
from fedrec.federation.checkpoint import CHECKPOINT, load_checkpoint, run_identity
from fedrec.federation.clients import client_gradients
from fedrec.federation.simulation import FederatedRun
from fedrec.federation.stacked import RunStack, stack_error
from fedrec.models.gradients import LANES, lanewise
from fedrec.optim import RULES, adam_pass
from fedrec.optim.fused import compiler_available, default_pass
from fedrec.protocol import REASONS

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


def stacked_equals_alone(cfgs: list[Config], prepare=None) -> list[FederatedRun]:
    """Runs ``cfgs`` one by one and stacked (``prepare(run)`` first, on each), asserts that every run
    ends the same both ways, returns the stacked runs."""
    alone, together = _runs(cfgs), _runs(cfgs)
    if prepare is not None:
        for run in alone + together:
            prepare(run)
    for run in alone:
        run.run()
    RunStack.of(together).run()
    for a, b in zip(alone, together, strict=True):
        assert_identical(a, b)
    return together


def check(attack: str, defense: str, model: str = "fism", optimizer: str = "adam") -> None:
    cfgs = [_cfg(attack, defense, s, f, model, optimizer) for s, f in VARIANTS]
    if attack == "mixtailor-adaptive":  # it optimises against the whole pool: 5 s a round here
        for c in cfgs:
            c.federated.rounds = 2
    stacked_equals_alone(cfgs)


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
        _cfg("noise", "krum", 5, 0.3),
    ]  # fmt: skip
    for c in cfgs[:3]:
        c.defense.verify = False  # the fourth verifies through its defense, the last two by default
    stacked_equals_alone(cfgs)


def test_per_run_settings_stay_per_run():
    """Settings a stack does not share reach their own run only: the negatives' source (shared
    generator, per-client keys, fixed negatives keyed by the run's seed), the defense's seed (MixTailor's
    draw) and its weighting; FISM's gamma off the values 1 and 0.5 that round alike either way."""
    cfgs = [
        _cfg("gradient-ascent", "grad-mixtailor", s, f) for s, f in [(0, 0.2), (1, 0.4), (2, 0.3), (3, 0.2)]
    ]
    cfgs[1].federated.client_rng = "per-client"
    cfgs[2].federated.fixed_negatives = True
    cfgs[3].defense.weighting = "uniform"
    for i, c in enumerate(cfgs):
        c.defense.seed = 10 + i
        c.model.gamma = 0.3
    stacked_equals_alone(cfgs)


class _OtherRunsRows:
    """Gradient ascent sent at the next run's rows (``rows + n_rows``): a stacked table's neighbour."""

    omniscient = False

    def __init__(self, n_rows: int):
        self.inner, self.n_rows = make_attack("gradient-ascent"), n_rows

    def __call__(self, ctx):
        up = self.inner(ctx)
        return dataclasses.replace(up, rows=up.rows + self.n_rows)


def test_an_upload_cannot_reach_another_runs_block():
    cfgs = [_cfg("gradient-ascent", "none", s, 0.4) for s in (0, 1)]
    together = stacked_equals_alone(
        cfgs, lambda run: setattr(run, "attack", _OtherRunsRows(run.layout.n_rows))
    )
    out_of_range = REASONS.index("row-out-of-range")
    assert bool((together[0].records["reason"] == out_of_range).any())


def test_the_loop_writes_each_runs_directory_and_progress(tmp_path):
    cfgs = [_cfg("gradient-ascent", "a-rfrs", s, f) for s, f in VARIANTS]
    for c in cfgs:
        c.federated.checkpoint_every = 2
    runs = _runs(cfgs)
    events: list[list[dict]] = [[] for _ in runs]
    dirs = [tmp_path / str(r) for r in range(len(runs))]
    for d in dirs:
        d.mkdir()
    RunStack.of(runs).run(dirs, [ev.append for ev in events])
    for cfg, run, d, ev in zip(cfgs, runs, dirs, events, strict=True):
        ckpt = load_checkpoint(d / CHECKPOINT, run_identity(cfg))
        assert ckpt["t"] == 4 and torch.equal(ckpt["theta"], run.server.theta)
        assert ckpt["theta"].untyped_storage().nbytes() == ckpt["theta"].nbytes  # its block, not the stack
        assert [e["t"] for e in ev if "P@5" in e] == [2, 4]  # eval_every = 2
        assert all(e["loss"] == float(run.losses[e["t"] - 1]) for e in ev)
        assert 0 < ckpt["seconds"] <= ev[-1]["elapsed"] <= run.seconds  # each its share, then its own I/O


def test_client_gradients_do_not_depend_on_the_batch():
    """A client's gradient is the same bit for bit wherever it sits in a batch (``lanewise``): the
    clients ``lo .. lo + 17`` of a 40-client batch against the same clients alone, same negatives."""
    run = _runs([_cfg("none", "none", 0, 0.0)])[0]
    whole = run.client_round(run.active[:40], 1)
    lam = run.cfg.train.weight_decay
    full = client_gradients(run.server.theta, run.layout, whole.batch, whole.neg, gamma=0.3, lam=lam)
    for lo in (1, 7, 13):
        part = run.client_round(run.active[lo : lo + 17], 1)
        mine = (whole.batch.owner >= lo) & (whole.batch.owner < lo + 17)
        g = client_gradients(run.server.theta, run.layout, part.batch, whole.neg[mine], gamma=0.3, lam=lam)
        keep = (full.owner >= lo) & (full.owner < lo + 17)
        assert torch.equal(g.rows, full.rows[keep])
        assert torch.equal(g.g, full.g[keep])
        assert torch.equal(g.loss, full.loss[lo : lo + 17])


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
        ("model.dim", 16), ("train.lr", 0.1), ("train.optimizer", "sgd"), ("federated.rounds", 5),
        ("model.name", "mf"), ("model.gamma", 0.5), ("train.negatives", 2), ("run.threads", 2),
        ("federated.variance_reduction", "saga"), ("federated.local_batch", 4), ("defense.max_grad", 10.0),
    ],
)  # fmt: skip
def test_runs_that_cannot_share_tables_are_refused_by_key(key, value):
    cfgs = [_cfg("none", "none", 0, 0.0), _cfg("none", "none", 1, 0.0)]
    section, name = key.split(".")
    setattr(getattr(cfgs[1], section), name, value)
    runs = _runs(cfgs)
    why = {"federated.variance_reduction": "variance_reduction", "federated.local_batch": "local_batch",
           "defense.max_grad": "max_grad"}.get(key, key)  # fmt: skip
    assert why in stack_error(runs)
    with pytest.raises(ValueError, match=why.replace(".", r"\.")):
        RunStack.of(runs)


def test_runs_that_cannot_step_together_are_refused():
    runs = _runs([_cfg("none", "none", 0, 0.0), _cfg("none", "none", 1, 0.0)])
    assert "twice" in stack_error([runs[0], runs[0]])
    runs[1].collector = lambda *a: None
    assert "Flower" in stack_error(runs)
    runs[1].collector = None
    runs[1].step()
    assert "rounds 0 and 1" in stack_error(runs)
    stack = RunStack.of(_runs([_cfg("none", "none", 0, 0.0), _cfg("none", "none", 1, 0.0)]))
    stack.runs[0].step()  # stepped on its own: its table is no longer the stack's block
    with pytest.raises(RuntimeError, match="on its own"):
        stack.step()
    done = RunStack.of(_runs([_cfg("none", "none", 0, 0.0), _cfg("none", "none", 1, 0.0)]))
    done.run()
    with pytest.raises(RuntimeError, match=r"past the run.s \d+ rounds"):
        done.step()
    assert all(run.server.t == run.total_rounds for run in done.runs)


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


@pytest.mark.skipif(not compiler_available(), reason="no C++ compiler for torch.compile")
@pytest.mark.parametrize("optimizer", ["adam", "momentum"])
def test_compiled_runs_stack_bit_identical(optimizer):
    """With ``run.compile`` the stack's rule check and default pass are compiled kernels of their own
    shape (the stacked tables), yet every run ends as it does alone with its own compiled kernels."""
    cfgs = [_cfg("gradient-ascent", "a-rfrs", s, f, optimizer=optimizer) for s, f in VARIANTS]
    for c in cfgs:
        c.run.compile = True
    runs = stacked_equals_alone(cfgs)
    adam = "native" if adam_pass.native() is not None else "compiled"  # fedrec.optim.adam_pass
    assert default_pass(runs[0].rule, True).mode == (
        adam if optimizer == "adam" else "eager (a copy or one pass: nothing to fuse)"
    )
