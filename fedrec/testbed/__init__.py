"""A dense testbed in the robust-aggregation papers' own setting (RESAM, SignGuard): n workers, f of
them Byzantine, softmax regression or a small MLP on scikit-learn's digits, iid or label-sorted shards,
worker momentum, every worker at every step, vectorized across workers, with the same robust rules
(``fedrec.defenses.base.RULES``) and attacks (``fedrec.attacks.ATTACKS``) as the federated system.

Layer 4 (like ``fedrec.federation``): imports defenses, attacks, protocol and optim; only the CLI and
the experiment scripts import it.
"""

from __future__ import annotations

from fedrec.testbed.config import NO_ATTACK, TestbedConfig, apply_overrides, make_config
from fedrec.testbed.data import Digits, load_digits, make_shards
from fedrec.testbed.model import Model
from fedrec.testbed.run import Result, run_testbed, simulate, summarize, write_run

__all__ = [
    "NO_ATTACK",
    "Digits",
    "Model",
    "Result",
    "TestbedConfig",
    "apply_overrides",
    "load_digits",
    "make_config",
    "make_shards",
    "run_testbed",
    "simulate",
    "summarize",
    "write_run",
]
