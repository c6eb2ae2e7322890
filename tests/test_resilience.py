"""RESAM Definition 2 for every registered rule that claims it (ALGORITHMS.md section 8.1): a rule F with
``lam`` is (f, lambda)-resilient averaging, i.e. for any x_1..x_n and EVERY S with |S| = n - f,

    |F(x) - mean(x_S)| <= lambda(n, f, D) * max_{i, j in S} |x_i - x_j|     (Euclidean norms, D = dim)

The test loops over ``RULES`` (every module of ``fedrec.defenses`` is imported first, so each rule has
registered itself): a rule that registers ``lam`` is checked here without being named. F(x) is what the
server would aggregate: a selector's unweighted mean of its accepted vectors, a weight rule's weighted
sum, an aggregator's aggregate. Inputs are small (n in 5..9, f < n/2, D <= 6): an honest cluster plus f
adversarial vectors (far outliers, ALIE-like shifts, vectors on one side of the cluster, colluding
copies, look-alikes inside the cluster), n - f identical inputs (the sanity check) and Proposition 2's
witness (n - f zeros and f ones), in random client order, listed sparsely or densely. The tolerance
covers float64 round-off only; the bound is tight for some rules (CWTM, MDA), so it must be exact.
"""

from __future__ import annotations

import importlib
import itertools
import pkgutil

import numpy as np
import pytest
import torch

import fedrec.defenses
from fedrec.defenses.base import RULES, RuleResult, RuleSpec
from fedrec.defenses.vectors import ClientVectors

for _mod in pkgutil.iter_modules(fedrec.defenses.__path__):
    importlib.import_module(f"fedrec.defenses.{_mod.name}")  # every rule module registers itself

RESILIENT = sorted(name for name, spec in RULES.items() if spec.resilient)
MODES = ("far", "alie", "side", "collude", "inside", "mixed", "sanity", "witness")
CASES = 64
"""Random inputs per rule (8 per mode)."""


def output(spec: RuleSpec, res: RuleResult, x: torch.Tensor) -> np.ndarray:
    """F(x) as a dense ``[D]`` float64 vector, per the rule's kind."""
    n = x.shape[0]
    flat = x.reshape(n, -1).to(torch.float64)
    if spec.kind == "select":
        assert res.accepted is not None and bool(res.accepted.any()), f"{spec.name} accepted nobody"
        return flat[res.accepted.cpu()].mean(0).numpy()
    if spec.kind == "weight":
        assert res.weights is not None
        return (res.weights.to(torch.float64).cpu() @ flat).numpy()
    assert res.aggregate is not None
    rows, values = res.aggregate
    out = torch.zeros(x.shape[1], x.shape[2], dtype=torch.float64)
    out[rows.cpu()] = values.to(torch.float64).cpu()
    return out.reshape(-1).numpy()


def adversarial(rng: np.random.Generator, mode: str, n: int, f: int, dim: int) -> np.ndarray:
    """``[n, dim]``: n - f honest vectors around a random centre and f adversarial ones (``mode``),
    rows in random order."""
    if mode == "witness":  # Proposition 2: n - f zeros and f ones (along a random axis)
        pts = np.zeros((n, dim))
        pts[n - f :, rng.integers(dim)] = 1.0
        return pts[rng.permutation(n)]
    centre = rng.normal(size=dim) * rng.choice([0.0, 1.0, 10.0])
    spread = rng.uniform(0.05, 2.0)
    honest = centre + spread * rng.normal(size=(n - f, dim)) * rng.uniform(0.2, 1.0, size=dim)
    mu, sd = honest.mean(0), honest.std(0)
    unit = rng.normal(size=dim)
    unit /= np.linalg.norm(unit)
    if mode == "sanity":  # n - f identical inputs
        honest[:] = honest[0]
        mode = rng.choice(["far", "alie", "side", "inside"])
    if mode == "far":
        dirs = rng.normal(size=(f, dim))
        byz = mu + rng.choice([10.0, 1e3]) * spread * dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    elif mode == "alie":  # mean - z * std, all equal (a little: z around 1)
        byz = np.tile(mu - rng.uniform(0.3, 2.0) * sd, (f, 1))
    elif mode == "side":  # all on one side of the cluster, at different distances
        byz = mu + np.outer(rng.uniform(0.5, 3.0, size=f) * spread, unit)
    elif mode == "collude":
        byz = np.tile(mu + rng.uniform(0.5, 5.0) * spread * unit, (f, 1))
    elif mode == "inside":  # look-alikes: drawn from the honest cluster's box
        byz = honest.min(0) + rng.uniform(size=(f, dim)) * (honest.max(0) - honest.min(0))
    else:  # mixed: one of each
        kinds = [
            mu + 1e3 * spread * unit,
            mu - sd,
            mu + 2 * spread * unit,
            honest[rng.integers(n - f)],
        ]
        byz = np.array([kinds[i % len(kinds)] for i in range(f)]).reshape(f, dim)
    return np.concatenate([honest, byz])[rng.permutation(n)]


def check_bound(name: str, x: np.ndarray, f: int, shape: tuple[int, int], dense: bool, seed: int) -> float:
    """Run the rule on ``x [n, D]`` (as ``[n, rows, d]`` sparse vectors) and assert Definition 2 for every
    (n - f)-subset; returns the largest ratio ``|F - mean_S| / (lambda diam S)`` seen (0/0 as 0)."""
    spec = RULES[name]
    n, dim = x.shape
    xt = torch.tensor(x, dtype=torch.float64).reshape(n, *shape)
    v = ClientVectors.from_dense(xt, all_rows=dense)
    res = spec(v, f, rng=torch.Generator().manual_seed(seed))
    out = output(spec, res, xt)
    lam = spec.lam(n, f, dim)
    dist = np.linalg.norm(x[:, None, :] - x[None, :, :], axis=-1)
    subsets = np.array(list(itertools.combinations(range(n), n - f)))
    means = x[subsets].mean(1)
    diam = dist[subsets[:, :, None], subsets[:, None, :]].max((1, 2))
    err = np.linalg.norm(out - means, axis=1)
    tol = 1e-9 * (1.0 + np.abs(x).max())
    bad = err > lam * diam + tol
    if bad.any():
        i = int(np.argmax(bad))
        raise AssertionError(
            f"{name} violates (f, lambda)-resilient averaging: n={n}, f={f}, D={dim}, lambda={lam:.6g}, "
            f"S={subsets[i].tolist()}: |F - mean_S| = {err[i]:.6g} > lambda * diam(S) = {lam * diam[i]:.6g}"
            f"\nx = {x.tolist()}\nF = {out.tolist()}"
        )
    scale = lam * diam
    return float(np.max(err[scale > 0] / scale[scale > 0], initial=0.0))


def test_the_registry_has_resilient_rules() -> None:
    assert "mda" in RESILIENT  # the loop below is not vacuous
    for name, spec in RULES.items():
        assert spec.resilient == (spec.lam is not None), name


@pytest.mark.parametrize("name", RESILIENT)
def test_lambda_is_at_least_the_lower_bound(name: str) -> None:
    """Proposition 2: no rule is (f, lambda)-resilient with lambda < f / (n - f); a registered lambda
    below it is a transcription error."""
    spec = RULES[name]
    for n in range(3, 26):
        for f in range((n + 1) // 2):
            if n >= spec.min_n(f):
                for dim in (1, 2, 10, 10_000):
                    assert spec.lam(n, f, dim) >= f / (n - f) - 1e-12, (n, f, dim)


@pytest.mark.parametrize("name", RESILIENT)
def test_resilient_averaging_bound(name: str) -> None:
    spec = RULES[name]
    rng = np.random.default_rng(sum(map(ord, name)))  # a fixed stream per rule
    ran = 0
    for case in range(CASES):
        mode = MODES[case % len(MODES)]
        n = int(rng.integers(5, 10))
        fs = [f for f in range((n + 1) // 2) if n >= spec.min_n(f)]
        if not fs:
            continue
        f = int(rng.choice(fs)) if mode != "witness" else max(fs)
        rows, d = [(1, 1), (1, 2), (2, 1), (3, 1), (1, 3), (2, 2), (3, 2), (2, 3)][int(rng.integers(8))]
        x = adversarial(rng, mode, n, f, rows * d)
        check_bound(name, x, f, (rows, d), dense=bool(rng.integers(2)), seed=case)
        ran += 1
    assert ran >= CASES // 2


@pytest.mark.parametrize("name", RESILIENT)
def test_sanity_and_witness(name: str) -> None:
    """Definition 2's two corner cases, exactly: n - f identical inputs force F = x (diam S = 0), and
    on Proposition 2's witness F = 0, so S_1 = {the ones plus n - 2f zeros} has ratio f / (n - f)."""
    spec = RULES[name]
    for n in range(5, 10):
        for f in range(1, (n + 1) // 2):
            if n < spec.min_n(f):
                continue
            x = np.zeros((n, 1))
            x[n - f :] = 1.0
            xt = torch.tensor(x).reshape(n, 1, 1)
            for dense in (False, True):
                res = spec(
                    ClientVectors.from_dense(xt, all_rows=dense), f, rng=torch.Generator().manual_seed(0)
                )
                assert np.abs(output(spec, res, xt)).max() <= 1e-12, (name, n, f, dense)
            x = np.full((n, 2), 0.25)
            x[:f] = [[1e6, -3.0]] * f if f % 2 else np.random.default_rng(n).normal(size=(f, 2)) * 1e3
            xt = torch.tensor(x).reshape(n, 2, 1)
            res = spec(ClientVectors.from_dense(xt), f, rng=torch.Generator().manual_seed(0))
            np.testing.assert_allclose(output(spec, res, xt), [0.25, 0.25], rtol=0, atol=1e-9)


TIGHT = ([1.0, 2.0, 2.0, 0.0, 0.0], [2.0, 0.0, 1.0, 1.0, 1.0, 1.0, 2.0], [0.0, 0.0, 0.0, 1.0, 5.0, 5.0])
"""1-D inputs where MDA, MeaMed and an upper coordinate median reach their bound exactly (ALGORITHMS.md
section 8.1, correction note): a rule registered with a lambda below its true coefficient fails here."""


@pytest.mark.parametrize("name", RESILIENT)
def test_known_tight_inputs(name: str) -> None:
    spec = RULES[name]
    for values in TIGHT:
        n = len(values)
        for f in range((n + 1) // 2):
            if n >= spec.min_n(f):
                for order in (values, values[::-1]):
                    check_bound(name, np.array(order)[:, None], f, (1, 1), dense=False, seed=0)


def test_mda_is_tight_on_a_known_input() -> None:
    """RESAM's lambda = 2f / (n - f) for MDA cannot be lowered: {1, 2, 2, 0, 0} with f = 2 reaches it."""
    ratio = check_bound("mda", np.array([[1.0], [2.0], [2.0], [0.0], [0.0]]), 2, (1, 1), dense=False, seed=0)
    assert ratio == pytest.approx(1.0, rel=1e-12)
