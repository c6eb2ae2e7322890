"""A seeded upload fuzzer: random malformed and adversarial-but-well-formed uploads mixed with honest
ones, through ``server_round``, under every registered defense and attack.

Per round it checks what issue 9 of the project asks: nothing raises; every upload either fills its
client's slot, with a reason when it is rejected, or is counted as refused; the new state equals the
literal dense reference (``reference_defended_round``) run on the uploads that passed validation; the
state stays finite; and honest uploads are never rejected by validation, so honest training goes on.

``python tests/test_fuzz_uploads.py [ROUNDS] [SEED]`` prints the full report (the figures in
docs/RESULTS.md, Reliability); the test runs a smaller campaign.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
import torch

from fedrec.attacks import ATTACKS, AttackContext, make_attack
from fedrec.data import synthetic
from fedrec.defenses import DEFENSES, assumed_f, make_defense
from fedrec.federation.clients import client_gradients, honest_uploads
from fedrec.federation.pipeline import ServerLimits, rule_generator, server_round
from fedrec.federation.reference import densify, reference_defended_round
from fedrec.models import CSRTensors, TableLayout, gather_users, sample_negatives
from fedrec.optim import make_rule
from fedrec.protocol import REASONS, THETA_MAX, ServerState, Upload, UploadBatch

D, N_USERS, N_ITEMS, PER_ROUND = 4, 24, 30, 8
FILTERED, TOO_FEW = REASONS.index("filtered"), REASONS.index("too-few-uploads")
RULE_REASONS = {0, FILTERED, TOO_FEW}  # what the defense's own rule may say of an honest upload


class World:
    """A small FISM federation in float64 (so the dense reference compares to round-off)."""

    def __init__(self, seed: int, optimizer: str = "adam") -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        inter = synthetic(N_USERS, N_ITEMS, mean_items=5, seed=seed)
        self.layout = TableLayout.for_model("fism", inter.n_items)
        self.train = CSRTensors.from_interactions(inter)
        self.rule = make_rule(optimizer, eta=0.01)
        theta = torch.randn(self.layout.n_rows, D, generator=self.gen, dtype=torch.float64)
        state = {
            k: torch.rand(theta.shape, generator=self.gen, dtype=torch.float64) * 1e-2
            for k in self.rule.state_names
        }
        self.server = ServerState(theta, state, 0)
        self.limits = ServerLimits(n_rows=self.layout.n_rows, d=D, max_examples=N_ITEMS)

    def honest(self, t: int):
        clients = torch.from_numpy(np.sort(self.rng.choice(N_USERS, PER_ROUND, replace=False)))
        batch = gather_users(self.train, clients)
        neg = sample_negatives(batch, N_ITEMS, 1, self.gen)
        grads = client_gradients(self.server.theta, self.layout, batch, neg, gamma=1.0, lam=1e-4)
        # what a label-flipping client trains on: the same rows, the pairs inverted
        self.flipped = client_gradients(
            self.server.theta, self.layout, batch, neg, gamma=1.0, lam=1e-4, flip=True
        )
        return clients, grads, honest_uploads(self.server, self.rule, grads, batch, t)

    def consistent(self, up: Upload, g: torch.Tensor, t: int) -> Upload:
        """The upload an honest client with gradient ``g`` at ``up.rows`` would send."""
        prev = {"theta": self.server.theta[up.rows], **{k: v[up.rows] for k, v in self.server.state.items()}}
        new = self.rule.client_step(prev, g, t)
        return Upload(
            up.client_id, up.rows, new["theta"], {k: new[k] for k in self.rule.state_names}, up.n_examples
        )


def _with(up: Upload, **kw) -> Upload:
    kw.setdefault("state", dict(up.state))
    return dataclasses.replace(up, **kw)


def _set(up: Upload, key: str, value: torch.Tensor) -> Upload:
    up = _with(up)
    if key == "theta":
        up.theta = value
    else:
        up.state[key] = value
    return up


def _state_key(w: World, i: int) -> str:
    return w.rule.state_names[i % len(w.rule.state_names)] if w.rule.state_names else "theta"


# every generator: (world, the client's honest upload, its gradient rows, t, other sampled ids) -> messages
Gen = Callable[[World, Upload, torch.Tensor, int, list[int]], list]


def _malformed() -> dict[str, Gen]:
    def k_d(up: Upload) -> tuple[int, int]:
        return up.rows.shape[0], D

    return {
        "nan-theta": lambda w, up, g, t, o: [_set(up, "theta", up.theta.clone().fill_(math.nan))],
        "inf-state": lambda w, up, g, t, o: [_set(up, _state_key(w, 1), torch.full_like(up.theta, math.inf))],
        "wrong-d": lambda w, up, g, t, o: [
            _set(up, "theta", torch.zeros(k_d(up)[0], D + 1, dtype=torch.float64))
        ],
        "3d-theta": lambda w, up, g, t, o: [_set(up, "theta", up.theta[None])],
        "2d-rows": lambda w, up, g, t, o: [_with(up, rows=up.rows[None])],
        "float-rows": lambda w, up, g, t, o: [_with(up, rows=up.rows.double())],
        "int32-rows": lambda w, up, g, t, o: [_with(up, rows=up.rows.int())],
        "int-theta": lambda w, up, g, t, o: [_set(up, "theta", up.theta.long())],
        "complex-theta": lambda w, up, g, t, o: [_set(up, "theta", up.theta.to(torch.complex128))],
        "missing-state": lambda w, up, g, t, o: [_with(up, state={})],
        "extra-state": lambda w, up, g, t, o: [_with(up, state={**up.state, "evil": up.theta})],
        "state-not-dict": lambda w, up, g, t, o: [_with(up, state=[up.theta])],
        "sparse-theta": lambda w, up, g, t, o: [_set(up, "theta", up.theta.to_sparse())],
        "meta-theta": lambda w, up, g, t, o: [_set(up, "theta", torch.empty(k_d(up), device="meta"))],
        "requires-grad": lambda w, up, g, t, o: [_set(up, "theta", up.theta.clone().requires_grad_(True))],
        "numpy-theta": lambda w, up, g, t, o: [_set(up, "theta", up.theta.numpy())],
        "row-n-rows": lambda w, up, g, t, o: [
            _with(up, rows=up.rows.clone().index_fill_(0, torch.tensor([0]), w.layout.n_rows))
        ],
        "row-negative": lambda w, up, g, t, o: [
            _with(up, rows=up.rows.clone().index_fill_(0, torch.tensor([0]), -1))
        ],
        "row-2^62": lambda w, up, g, t, o: [
            _with(up, rows=up.rows.clone().index_fill_(0, torch.tensor([0]), 2**62))
        ],
        "rows-unsorted": lambda w, up, g, t, o: [_with(up, rows=up.rows.flip(0))],
        "rows-duplicated": lambda w, up, g, t, o: [_with(up, rows=torch.cat([up.rows[:1], up.rows[:-1]]))],
        "n-zero": lambda w, up, g, t, o: [_with(up, n_examples=0)],
        "n-negative": lambda w, up, g, t, o: [_with(up, n_examples=-5)],
        "n-2^63": lambda w, up, g, t, o: [_with(up, n_examples=2**63)],
        "n-2^70": lambda w, up, g, t, o: [_with(up, n_examples=2**70)],
        "n-float": lambda w, up, g, t, o: [_with(up, n_examples=3.5)],
        "n-none": lambda w, up, g, t, o: [_with(up, n_examples=None)],
        "n-str": lambda w, up, g, t, o: [_with(up, n_examples="12")],
        "n-bool": lambda w, up, g, t, o: [_with(up, n_examples=True)],
        "n-catalog": lambda w, up, g, t, o: [_with(up, n_examples=N_ITEMS + 1)],
        "id-none": lambda w, up, g, t, o: [_with(up, client_id=None)],
        "id-str": lambda w, up, g, t, o: [_with(up, client_id="abc")],
        "id-float": lambda w, up, g, t, o: [_with(up, client_id=3.5)],
        "id-2^64": lambda w, up, g, t, o: [_with(up, client_id=2**64)],
        "not-an-upload": lambda w, up, g, t, o: [None, {"theta": up.theta}, "upload"],
        "batch-bad-ptr": lambda w, up, g, t, o: [_batch(w, up, ptr=torch.tensor([0, up.rows.shape[0] + 3]))],
        "batch-float-ids": lambda w, up, g, t, o: [
            _batch(w, up, client_ids=torch.tensor([float(up.client_id)]))
        ],
        "batch-short-theta": lambda w, up, g, t, o: [_batch(w, up, theta=up.theta[:-1])],
        "batch-no-state": lambda w, up, g, t, o: [_batch(w, up, state={})],
    }


def _batch(w: World, up: Upload, **kw) -> UploadBatch:
    b = UploadBatch.from_uploads([up], D, w.rule.state_names)
    return dataclasses.replace(b, **kw)


def _adversarial() -> dict[str, Gen]:
    """Well-formed uploads an attacker could send: they pass the type checks, and some pass everything."""

    def scaled(s: float) -> Gen:
        return lambda w, up, g, t, o: [w.consistent(up, -s * g, t)]

    def at_bound(frac: float) -> Gen:
        return lambda w, up, g, t, o: [w.consistent(up, torch.full_like(g, w.limits.max_grad * frac), t)]

    def dense(w: World, up: Upload, g: torch.Tensor, t: int, o: list[int]) -> list:
        rows = torch.arange(w.layout.n_rows)
        gd = torch.randn(rows.shape[0], D, generator=w.gen, dtype=torch.float64) * 50
        return [w.consistent(_with(up, rows=rows, theta=w.server.theta, state=dict(w.server.state)), gd, t)]

    return {
        "ascent-x1": scaled(1.0),
        "ascent-x1000": scaled(1e3),
        "zero-gradient": scaled(0.0),
        "grad-at-bound": at_bound(0.99),
        "grad-past-bound": at_bound(1.01),
        "dense-random": dense,
        "empty-upload": lambda w, up, g, t, o: [
            _with(up, rows=up.rows[:0], theta=up.theta[:0], state={k: v[:0] for k, v in up.state.items()})
        ],
        "theta-1e30": lambda w, up, g, t, o: [_set(up, "theta", torch.full_like(up.theta, 1e30))],
        "theta-max": lambda w, up, g, t, o: [
            _set(up, "theta", torch.full_like(up.theta, 3.4e38) * torch.sign(torch.randn_like(up.theta)))
        ],
        "theta-nudged": lambda w, up, g, t, o: [_set(up, "theta", up.theta + 1e-3)],
        "state-negative": lambda w, up, g, t, o: [
            _set(up, _state_key(w, 1), -up.state[_state_key(w, 1)] - 1) if up.state else up
        ],
        "m-max-v-zero": lambda w, up, g, t, o: [
            _with(
                up,
                state={
                    k: (torch.full_like(v, 3.4e38) if i == 0 else torch.zeros_like(v))
                    for i, (k, v) in enumerate(up.state.items())
                },
            )
        ],
        "m-1e30-consistent-theta": lambda w, up, g, t, o: [_m_huge(w, up, t)],
        "n-inflated-to-rows": lambda w, up, g, t, o: [_with(up, n_examples=int(up.rows.shape[0]))],
        "impersonate": lambda w, up, g, t, o: [_with(w.consistent(up, -g, t), client_id=o[0])] if o else [up],
        "unsampled-id": lambda w, up, g, t, o: [up, _with(up, client_id=N_USERS + 7)],
        "ten-copies": lambda w, up, g, t, o: [w.consistent(up, -g, t)] * 10,
        "numpy-int-n": lambda w, up, g, t, o: [_with(up, n_examples=np.int64(up.n_examples))],
    }


def _m_huge(w: World, up: Upload, t: int) -> Upload:
    """m = 1e30 with the theta the rule gives for it and the honest v: breaks Eq. 3."""
    up = _with(up)
    m = torch.full_like(up.theta, 1e30)
    prev = w.server.theta[up.rows]
    if "v" in up.state:
        up.state["m"] = m
        up.theta = prev - w.rule.step_size(t) * m / torch.sqrt(up.state["v"] + w.rule.eps)
    return up


GENERATORS = {**_malformed(), **_adversarial()}


def fuzz(rounds: int, seed: int, defenses=None, optimizers=("adam",)) -> dict[str, object]:
    """The campaign; returns its counts (see the module docstring)."""
    stats: Counter = Counter()
    kinds: Counter = Counter()
    reasons: Counter = Counter()
    problems: list[str] = []
    for optimizer in optimizers:
        # camouflage is defined for Adam only (paper 000 Eq. 8); it says so with a ValueError elsewhere
        attack_names = [a for a in ATTACKS if a != "camouflage" or optimizer == "adam"]
        for di, name in enumerate(defenses or DEFENSES):
            defense = DEFENSES[name]
            if "max_iter" in defense.spec.params:
                # Weiszfeld (geomed, MixTailor's GM members): the same steps on both sides, converged
                # far below the comparison's tolerance (as in tests/test_defended_rounds.py)
                params = {**defense.params, "tol": 0.0, "max_iter": 2000, "nu": 1e-10}
                defense = dataclasses.replace(defense, params=params)
            if defense.space in ("momentum", "upload") and optimizer == "sgd":
                continue  # no state to look at: a config error before round 1, not a round to fuzz
            w = World(seed * 1000 + di, optimizer)
            for t in range(1, rounds + 1):
                clients, grads, honest = w.honest(t)
                f = assumed_f(PER_ROUND, 0.25)
                # a rule that needs more uploads (Bulyan: 4f + 3) is fuzzed at the largest f it runs on
                while f > 0 and defense.spec.min_n(f) > PER_ROUND - 1:
                    f -= 1
                n_adv = int(w.rng.integers(0, f + 2))  # sometimes more than f
                adv = set(w.rng.choice(PER_ROUND, n_adv, replace=False).tolist())
                messages: list = []
                ids = clients.tolist()
                use_attack = bool(w.rng.random() < 0.3) and n_adv > 0
                for i in range(PER_ROUND):
                    up = honest.upload(i)
                    if i not in adv:
                        messages.append(up)
                        continue
                    if use_attack:
                        continue  # a registered attack speaks for these clients below
                    kind = list(GENERATORS)[int(w.rng.integers(len(GENERATORS)))]
                    kinds[kind] += 1
                    g = grads.g[grads.ptr[i] : grads.ptr[i + 1]]
                    others = [c for c in ids if c != ids[i]]
                    messages.extend(GENERATORS[kind](w, up, g, t, others))
                if use_attack:
                    messages.append(_attack_batch(w, attack_names, grads, honest, sorted(adv), t, kinds))
                tried = sum(m.n if isinstance(m, UploadBatch) else 1 for m in messages)
                stats["tried"] += tried
                before = w.server
                try:
                    out = server_round(
                        w.server,
                        messages,
                        sampled=clients,
                        rule=w.rule,
                        defense=defense,
                        t=t,
                        f=f,
                        limits=w.limits,
                    )
                except Exception as err:
                    stats["crashed"] += 1
                    problems.append(f"{optimizer}/{name} t={t}: {type(err).__name__}: {err}")
                    continue
                codes = out.decision.reasons
                reasons.update(REASONS[c] for c in codes.tolist())
                reasons.update({REASONS[i]: c for i, c in enumerate(out.refused.tolist()) if c})
                missing = int((codes == REASONS.index("missing")).sum())
                stats["accepted"] += int(out.decision.accepted.sum())
                stats["rejected"] += int((~out.decision.accepted).sum()) - missing + int(out.refused.sum())
                stats["missing_slots"] += missing
                honest_slot = torch.tensor([i not in adv for i in range(PER_ROUND)])
                bad_honest = [REASONS[c] for c in codes[honest_slot].tolist() if c not in RULE_REASONS]
                if bad_honest:
                    stats["honest_rejected_by_validation"] += len(bad_honest)
                    problems.append(f"{optimizer}/{name} t={t}: honest upload rejected: {bad_honest}")
                if bool(honest_slot.any()) and not bool(out.decision.accepted[honest_slot].any()):
                    if bool((codes == TOO_FEW).any()):  # the rule cannot run: the round leaves the state
                        stats["rounds_too_few_for_the_rule"] += 1
                    elif _keeps_one(defense, out.decision):  # by design: it may be a forged one
                        stats["rounds_krum1_kept_a_forged_upload"] += 1
                    else:
                        stats["rounds_all_honest_rejected"] += 1
                        problems.append(f"{optimizer}/{name} t={t}: every honest upload rejected")
                if not all(
                    bool(torch.isfinite(x).all()) for x in (out.state.theta, *out.state.state.values())
                ):
                    stats["rounds_non_finite"] += 1
                    problems.append(f"{optimizer}/{name} t={t}: non-finite state")
                if not _equals_reference(before, w.rule, out, defense, t, f):
                    stats["rounds_state_differs"] += 1
                    problems.append(
                        f"{optimizer}/{name} t={t}: state differs from the accepted uploads' aggregate"
                    )
                w.server = out.state
                stats["rounds"] += 1
    stats["rejected_with_reason"] = stats["rejected"]
    return {"stats": dict(stats), "kinds": dict(kinds), "reasons": dict(reasons), "problems": problems}


def _attack_batch(w: World, names, grads, honest: UploadBatch, adv: list[int], t: int, kinds: Counter):
    name = names[int(w.rng.integers(len(names)))]
    kinds[f"attack:{name}"] += len(adv)
    mask = torch.zeros(PER_ROUND, dtype=torch.bool)
    mask[adv] = True

    def part(m: torch.Tensor) -> dict[str, torch.Tensor]:
        counts = grads.ptr[1:] - grads.ptr[:-1]
        ptr = torch.zeros(int(m.sum()) + 1, dtype=torch.int64)
        torch.cumsum(counts[m], 0, out=ptr[1:])
        keep = m[grads.owner]
        return {"client_ids": honest.client_ids[m], "n_examples": honest.n_examples[m], "ptr": ptr,
                "rows": grads.rows[keep], "g": grads.g[keep]}  # fmt: skip

    params = {}
    if name == "poison":  # every kind of it, not only the default
        from fedrec.attacks.poison import KINDS

        params["kind"] = KINDS[int(w.rng.integers(len(KINDS)))]
    attack = make_attack(name, **params)
    extra = {f"honest_{k}": v for k, v in part(~mask).items()} if attack.omniscient else {}
    if attack.needs_flipped:
        extra["flipped_g"] = w.flipped.g[mask[grads.owner]]
    ctx = AttackContext(server=w.server, t=t, rule=w.rule, generator=w.gen, **part(mask), **extra)
    return attack(ctx)


def _keeps_one(defense, decision) -> bool:
    """Krum keeps one upload, also when MixTailor drew it."""
    if defense.rule == "mixtailor" and "drawn" in decision.info:
        from fedrec.defenses.mixtailor import CLASSES, PS, pool

        return pool(CLASSES, PS)[int(decision.info["drawn"])][0] == "krum"
    return defense.rule == "krum"


def _equals_reference(before: ServerState, rule, out, defense, t: int, f: int) -> bool:
    reasons = out.decision.reasons
    valid = (reasons == 0) | (reasons == FILTERED)
    if bool((reasons == TOO_FEW).any()) or not bool(valid.any()):
        same = torch.equal(out.state.theta, before.theta)
        return same and all(torch.equal(out.state.state[k], before.state[k]) for k in before.state)
    if defense.spec.kind == "weight":
        # RFA's state is the mean of the valid uploads under its Weiszfeld weights, exactly; the
        # iterates themselves match the literal reference in tests/test_defended_rounds.py, but an
        # unconverged iterate near one upload (the median at a data point) amplifies summation order
        rejected_weight = float(out.decision.weights[~valid].abs().sum())
        return rejected_weight == 0.0 and _is_weighted_mean(before, rule, out, t)
    rng = rule_generator(0, t) if defense.spec.needs_rng else None  # server_round's default seed
    ref, ref_accepted = reference_defended_round(before, rule, out.uploads, defense, t, f, valid, rng)
    if not torch.equal(out.decision.accepted, ref_accepted):
        return False
    iterative = "max_iter" in defense.spec.params
    tol = {"rtol": 1e-7, "atol": 1e-10} if iterative else {"rtol": 1e-9, "atol": 1e-11}
    try:
        torch.testing.assert_close(out.state.theta, ref.theta, **tol)
        for k in rule.state_names:
            torch.testing.assert_close(out.state.state[k], ref.state[k], **tol)
    except AssertionError:
        return False
    return True


def _is_weighted_mean(before: ServerState, rule, out, t: int) -> bool:
    """The state is the decision-weighted mean of the dense messages (Algorithm 1 with RFA's weights)."""
    w = out.decision.weights
    msgs = [densify(before, rule, out.uploads, i, t) for i in range(out.uploads.n) if float(w[i]) > 0]
    ws = [float(x) for x in w if float(x) > 0]
    want = {k: sum(wi * m[k] for wi, m in zip(ws, msgs, strict=True)) for k in rule.keys}
    got = {"theta": out.state.theta, **out.state.state}
    return all(torch.allclose(got[k], want[k], rtol=1e-9, atol=1e-11) for k in rule.keys)


def test_fuzzer_finds_no_crash_no_corruption_and_no_honest_rejection():
    report = fuzz(rounds=25, seed=0)
    s = report["stats"]
    assert s["rounds"] == 25 * len(DEFENSES) and s["tried"] > 2000
    assert not report["problems"], "\n".join(report["problems"][:20])
    assert s.get("crashed", 0) == s.get("rounds_state_differs", 0) == s.get("rounds_non_finite", 0) == 0
    # every generator and attack was exercised, and each rejection carries a reason
    assert set(GENERATORS) <= set(report["kinds"]) and all(f"attack:{a}" in report["kinds"] for a in ATTACKS)
    # every upload tried is accounted for: accepted, or rejected with a reason (in its slot or refused)
    assert s["accepted"] + s["rejected_with_reason"] == s["tried"]


def test_fuzzer_other_optimizers():
    report = fuzz(rounds=6, seed=1, defenses=("none", "a-rfrs", "krum", "cw-median", "rfa"),
                  optimizers=("sgd", "momentum", "adagrad", "rmsprop"))  # fmt: skip
    assert not report["problems"], "\n".join(report["problems"][:20])


# (defense, params, f, the fewest valid uploads it runs on): 2 trim + 1, Multi-Krum's m, Krum*'s q,
# Bulyan's 4 f + 3 as MixTailor's only member
NEEDS_MORE = [
    ("trmean", {"trim": 3}, 1, 7),
    ("a-rfrs", {"m": 7}, 1, 7),
    ("krum-star", {"q": 7}, 0, 7),
    ("momentum-krum", {"m": 6}, 1, 6),
    ("grad-mixtailor", {"classes": ["bulyan"]}, 1, 7),
]


@pytest.mark.parametrize(("name", "params", "f", "fewest"), NEEDS_MORE)
def test_invalid_uploads_below_what_the_rule_parameters_need_refuse_the_round(name, params, f, fewest):
    """Parameters that pass at the full round (config validation tries them at n = 8) raised in the
    round once Byzantine clients made enough uploads invalid (NaN): the rule saw fewer than its
    parameters need. Now the round refuses them as too few, and runs the rule from that many up."""
    defense = make_defense(name, params)
    defense.try_params(PER_ROUND, f)  # what config validation checks
    assert defense.fewest(f) == fewest
    assert make_defense("trmean", {"trim": 2100}).fewest(f) == 4201  # far above min_n: found, not given up
    for invalid in range(PER_ROUND):
        world = World(seed=invalid)
        _, _, batch = world.honest(1)
        ups = [batch.upload(i) for i in range(batch.n)]
        ups = [
            _with(u, theta=torch.full_like(u.theta, float("nan"))) if i < invalid else u
            for i, u in enumerate(ups)
        ]
        out = server_round(
            world.server, ups, sampled=torch.tensor([u.client_id for u in ups]), rule=world.rule,
            defense=defense, t=1, f=f, limits=world.limits,
        )  # fmt: skip
        valid = PER_ROUND - invalid
        reasons = out.decision.reasons[invalid:]
        assert bool((reasons == TOO_FEW).all()) == (valid < fewest)
        assert bool(torch.isfinite(out.state.theta).all())


def test_unverified_theta_past_its_bound_is_rejected_and_the_state_stays_finite():
    """With ``defense.verify`` off only the reconstructed gradient was bounded: uploads of theta at
    -3.4e38 (round 1) then +3.4e38 (round 2), with rule-consistent moments, were accepted and the
    aggregate's difference from the default overflowed to inf in the global theta."""
    world = World(seed=3)
    limits = dataclasses.replace(world.limits, verify=False)
    server = world.server
    for t, value in ((1, -3.4e38), (2, 3.4e38), (3, 0.5e15)):
        _, _, batch = world.honest(t)
        ups = [batch.upload(i) for i in range(batch.n)]
        forged = [_with(u, theta=torch.full_like(u.theta, value)) for u in ups[:3]]
        out = server_round(
            server, forged + ups[3:], sampled=torch.tensor([u.client_id for u in ups]), rule=world.rule,
            defense=DEFENSES["none"], t=t, f=0, limits=limits,
        )  # fmt: skip
        rejected = out.decision.reasons[:3] == REASONS.index("magnitude")
        assert bool(rejected.all()) == (abs(value) > THETA_MAX)  # below the bound: accepted, unverified
        server = world.server = out.state
        assert all(bool(torch.isfinite(x).all()) for x in (server.theta, *server.state.values()))


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    rep = fuzz(rounds, seed, optimizers=("adam", "sgd", "momentum", "adagrad", "rmsprop"))
    for k, v in sorted(rep["stats"].items()):
        print(f"{k:32s} {v}")
    print("reasons:", dict(sorted(rep["reasons"].items(), key=lambda kv: -kv[1])))
    print("problems:", len(rep["problems"]))
    for p in rep["problems"][:30]:
        print("  ", p)
