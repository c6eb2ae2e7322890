"""A defended round (validate -> reconstruct -> verify -> defense -> aggregate) equals the literal dense
reference, for every registered rule, defense preset and attack, on random problems."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedrec.attacks import ATTACKS, make_attack
from fedrec.config import Config
from fedrec.data import split_per_user, synthetic
from fedrec.defenses import DEFENSES, RULES, Defense
from fedrec.defenses.preagg import PRE_STEPS
from fedrec.federation.pipeline import rule_generator
from fedrec.federation.reference import reference_defended_round
from fedrec.federation.simulation import FederatedRun
from fedrec.optim.fused import compiler_available
from fedrec.protocol import REASONS

ATTACK_PARAMS = {"noise": {"sigma": 0.05}}  # small problems: keep the noise in the table's range


def _run(
    attack: str,
    defense: str,
    seed: int,
    all_rows: bool = False,
    optimizer: str = "adam",
    device: str = "cpu",
    compile: bool = False,
) -> FederatedRun:
    cfg = Config()
    cfg.model.dim = 4
    cfg.train.optimizer = optimizer
    cfg.train.lr = 0.05
    cfg.federated.fraction, cfg.federated.rounds = 0.3, 10
    cfg.attack.name, cfg.attack.fraction, cfg.attack.seed = attack, 0.3, seed
    cfg.attack.params = dict(ATTACK_PARAMS.get(attack, {}), **({"all_rows": True} if all_rows else {}))
    cfg.defense.name = defense
    cfg.defense.max_weight_share = 1.0
    cfg.defense.verify = False  # the rules themselves see rule-breaking uploads (presets may still verify)
    cfg.train.seed = seed
    cfg.run.compile = compile
    split = split_per_user(synthetic(30, 20, mean_items=6, seed=seed), seed=seed)
    run = FederatedRun.create(cfg, split, torch.device(device))
    run.server.theta = run.server.theta.double()
    run.server.state = {k: v.double() for k, v in run.server.state.items()}
    return run


def _round(run: FederatedRun):
    """The next round as the server saw it, observed through the run's ``on_round`` hook."""
    captured = {"server": run.server}
    run.on_round = lambda _run, out: captured.update(out=out, t=out.state.t)
    run.step()
    run.on_round = None
    return captured


CASES = [(a, d) for a in ("none", "camouflage") for d in DEFENSES] + [
    (a, d)
    for a in ("gradient-ascent", "noise")
    for d in (
        "a-rfrs",
        "krum",
        "rfa",
        "trmean",
        "cw-median",
        "item-median",
        "grad-item-trmean",
        "verify+a-rfrs",
    )
]


@pytest.mark.parametrize(("attack", "defense"), CASES)
def test_defended_round_equals_dense_reference(attack, defense):
    _check_against_reference(_run(attack, defense, seed=7))


def _rule_defenses(rule: str) -> list[Defense]:
    """The rule on reconstructed gradients, on parameters (aggregators: per quantity) and item-wise (in
    both spaces: theta space runs the per-row rule on every uploaded quantity)."""
    out = [Defense(f"contract-{rule}", rule, "gradient"), Defense(f"contract-{rule}-theta", rule, "theta")]
    if RULES[rule].item is not None:
        out.append(Defense(f"contract-{rule}-item", rule, "gradient", "item"))
        out.append(Defense(f"contract-{rule}-theta-item", rule, "theta", "item"))
    return out


# the contract: every registered rule x every registered attack (and none), on a random small problem
RULE_CASES = [(r, a) for r in RULES for a in ("none", *ATTACKS)]


@pytest.mark.parametrize(("rule", "attack"), RULE_CASES)
def test_every_rule_under_every_attack_equals_dense_reference(rule, attack):
    for i, defense in enumerate(_rule_defenses(rule)):
        run = _run(attack, "none", seed=5 + i)
        object.__setattr__(run, "defense", defense)
        _check_against_reference(run)


# Spattack's popularity-sampled rows (the simulation fills ctx.row_popularity) under item-wise and flat rules
SAMPLED_CASES = [
    (a, d)
    for a in ("spattack-o", "spattack-l")
    for d in ("grad-item-krum", "grad-item-multi-krum", "grad-item-mean", "item-median", "a-rfrs")
]


@pytest.mark.parametrize(("attack", "defense"), SAMPLED_CASES)
def test_popularity_sampled_spattack_equals_dense_reference(attack, defense):
    run = _run(attack, defense, seed=17)
    run.attack = make_attack(attack, items="popular", n_items=8)
    _check_against_reference(run)


# The same filters on the other optimizers' reconstructions (paper 000 Appendices C-E: S-RFRS with
# SGD-momentum, AG-RFRS with AdaGrad, R-RFRS with RMSProp; plain SGD: g = (theta_bar - theta) / eta).
OPTIMIZER_CASES = [
    (o, a, d)
    for o in ("sgd", "momentum", "adagrad", "rmsprop")
    for a in ("none", "gradient-ascent", "noise")
    for d in ("a-rfrs", "a-rfrs-linf", "krum", "trmean", "verify+a-rfrs")
]


@pytest.mark.parametrize(("optimizer", "attack", "defense"), OPTIMIZER_CASES)
def test_defended_round_equals_dense_reference_other_optimizers(optimizer, attack, defense):
    _check_against_reference(_run(attack, defense, seed=11, optimizer=optimizer))


# the compiled rule check and default pass (run.compile; fedrec.optim.fused) against the same reference
COMPILED_CASES = [
    ("adam", "none", "a-rfrs"), ("adam", "gradient-ascent", "krum"), ("adam", "noise", "trmean"),
    ("adam", "camouflage", "verify+a-rfrs"), ("adam", "gradient-ascent", "cw-median"),
    ("momentum", "noise", "a-rfrs"), ("rmsprop", "gradient-ascent", "a-rfrs-linf"),
]  # fmt: skip


@pytest.mark.skipif(not compiler_available(), reason="no C++ compiler for torch.compile")
@pytest.mark.parametrize(("optimizer", "attack", "defense"), COMPILED_CASES)
def test_compiled_round_equals_dense_reference(optimizer, attack, defense):
    run = _run(attack, defense, seed=19, optimizer=optimizer, compile=True)
    assert run.limits.fused
    _check_against_reference(run)


# pre-aggregation (paper 003): every pre-step before every rule, with and without an attack
PRE_CASES = [(p, r, a) for p in PRE_STEPS for r in RULES for a in ("none", "sign-flip", "ipm")]


@pytest.mark.parametrize(("pre", "rule", "attack"), PRE_CASES)
def test_every_pre_step_before_every_rule_equals_dense_reference(pre, rule, attack):
    run = _run(attack, "none", seed=13)
    object.__setattr__(run, "defense", Defense(f"contract-{pre}-{rule}", rule, "gradient", pre=pre))
    _check_against_reference(run)


NU = 1e-10
"""Weiszfeld smoothing in the contract: where several uploads coincide (sample-duplicate) the fast
solver stops exactly at the medoid (Vardi and Zhang's test) and the literal one within ~nu of it."""


def iterative_rule(spec) -> bool:
    """A rule that runs the Weiszfeld solver (geomed, MixTailor's GM members, a pre-step before them):
    compared with the same steps on both sides and a float tolerance."""
    return "max_iter" in spec.params


def _upload_key(uploads, i: int) -> tuple:
    """What the rule sees of upload ``i`` (its rows and values; the tables compared after the decision
    check what the claimed example counts weigh)."""
    u = uploads.upload(i)
    return (u.rows.tolist(), u.theta.tolist(), *(u.state[k].tolist() for k in sorted(u.state)))


def _same_choice(uploads, fast: torch.Tensor, ref: torch.Tensor) -> None:
    """The same accepted uploads, where exactly equal uploads (ALIE's, random-eps's copies) are one
    choice: their selection scores tie exactly in the literal rule (which takes the lowest index) and
    to round-off in the Gram-based fast one (BLAS need not round equal inputs' products alike)."""
    if torch.equal(fast, ref):
        return
    keys = [_upload_key(uploads, i) for i in range(uploads.n)]
    chosen = [sorted(map(repr, (keys[i] for i in m.nonzero().flatten().tolist()))) for m in (fast, ref)]
    assert chosen[0] == chosen[1], (
        f"different uploads accepted: fast {fast.tolist()}, reference {ref.tolist()}"
    )


def _cpu(obj):
    """A copy of a round's dataclass (server state, uploads, decision) with every tensor on the CPU."""
    fields = {}
    for field in dataclasses.fields(obj):
        v = getattr(obj, field.name)
        if isinstance(v, torch.Tensor):
            v = v.cpu()
        elif isinstance(v, dict):
            v = {k: x.cpu() if isinstance(x, torch.Tensor) else x for k, x in v.items() if k != "aggregate"}
        fields[field.name] = v
    return dataclasses.replace(obj, **fields)


def _check_against_reference(run: FederatedRun) -> None:
    for _ in range(3):  # a few rounds in, so moments and momentum are not zero
        run.step()
    d = run.defense
    iterative = iterative_rule(d.spec)  # the same Weiszfeld steps on both sides
    if iterative:
        object.__setattr__(
            run,
            "defense",
            dataclasses.replace(d, params={**d.params, "tol": 0.0, "max_iter": 2000, "nu": NU}),
        )
        d = run.defense
    c = _round(run)
    server, out, t, f = c["server"], c["out"], c["t"], run.f
    uploads, decision, fast = out.uploads, out.decision, out.state
    if server.theta.device.type != "cpu":  # the literal reference runs on the CPU, on copies of the round
        assert not d.spec.needs_rng, "a rule's random draws differ between a CUDA and a CPU generator"
        server, uploads, decision, fast = (_cpu(x) for x in (server, uploads, decision, fast))
    # passed validation and the verifier: accepted, or filtered by the rule itself
    valid = (decision.reasons == 0) | (decision.reasons == REASONS.index("filtered"))
    rng = rule_generator(run.cfg.defense.seed, t) if d.spec.needs_rng else None
    ref, ref_accepted = reference_defended_round(server, run.rule, uploads, d, t, f, valid, rng)
    if not iterative:
        _same_choice(uploads, decision.accepted, ref_accepted | (decision.accepted & ~valid))
    tol = {"rtol": 1e-7, "atol": 1e-10} if iterative else {"rtol": 1e-9, "atol": 1e-11}
    torch.testing.assert_close(fast.theta, ref.theta, **tol)
    for k in run.rule.state_names:
        torch.testing.assert_close(fast.state[k], ref.state[k], **tol)


def test_camouflage_dense_uploads_keep_theta_and_are_caught_in_gradient_space():
    """On a dense camouflage round theta-space scores cannot separate; gradient-space scores can."""
    run = _run("camouflage", "a-rfrs", seed=3, all_rows=True)
    for _ in range(2):
        run.step()
    rec = run.rounds_frame()
    last = rec[rec.t == rec.t.max()]
    assert last.byzantine.any()
