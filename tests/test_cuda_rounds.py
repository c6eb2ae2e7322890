"""The fast round on a CUDA GPU (``run.device=cuda``) equals the literal dense reference, computed on the
CPU from copies of the same round: every registered defense preset (without and under the camouflage
attack), the flat and item-wise rules under poisoning attacks, and the other optimizers. Rules that draw
random numbers are left out: a CUDA generator's stream differs from the CPU one the reference would draw
from. Skipped where torch sees no CUDA GPU (CI has none; see docs/RESULTS.md for the GPU runs)."""

from __future__ import annotations

import pytest
import torch
from test_defended_rounds import CASES, COMPILED_CASES, OPTIMIZER_CASES, _check_against_reference, _run

from fedrec.defenses import DEFENSES

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU")

DETERMINISTIC = [(a, d) for a, d in CASES if not DEFENSES[d].spec.needs_rng]


@pytest.mark.parametrize(("attack", "defense"), DETERMINISTIC)
def test_defended_round_on_cuda_equals_dense_reference(attack, defense):
    _check_against_reference(_run(attack, defense, seed=7, device="cuda"))


@pytest.mark.parametrize(("optimizer", "attack", "defense"), OPTIMIZER_CASES)
def test_other_optimizers_on_cuda_equal_dense_reference(optimizer, attack, defense):
    _check_against_reference(_run(attack, defense, seed=11, optimizer=optimizer, device="cuda"))


def test_the_round_stays_on_the_gpu():
    """A federated run on cuda keeps its tables, optimizer state and round records on the GPU."""
    run = _run("gradient-ascent", "a-rfrs", seed=3, device="cuda")
    run.step()
    assert run.server.theta.is_cuda
    assert all(v.is_cuda for v in run.server.state.values())


@pytest.mark.parametrize(("optimizer", "attack", "defense"), COMPILED_CASES)
def test_compiled_round_on_cuda_equals_dense_reference(optimizer, attack, defense):
    """``run.compile`` on a GPU: the rule check and Adam's default pass as Triton kernels."""
    _check_against_reference(_run(attack, defense, seed=19, optimizer=optimizer, device="cuda", compile=True))
