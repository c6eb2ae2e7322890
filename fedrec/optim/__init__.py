"""Optimizer rules as pure functions over row tensors (DESIGN.md section 4): the client step of paper
000 (Adam Eq. 2-6, SGD with momentum Eq. 44, AdaGrad Eq. 50, RMSProp Eq. 78, plain SGD), the value of
unlisted rows, gradient reconstruction from an upload and its consistency check."""

from __future__ import annotations

import dataclasses

from fedrec.optim.adagrad import AdaGrad
from fedrec.optim.adam import Adam
from fedrec.optim.base import SLACK, Rows, Rule, RuleBase
from fedrec.optim.momentum import Momentum
from fedrec.optim.rmsprop import RMSProp
from fedrec.optim.sgd import SGD
from fedrec.registry import Registry, check_params

RULES: Registry[type[RuleBase]] = Registry("optimizer")
for _cls in (Adam, SGD, Momentum, AdaGrad, RMSProp):
    RULES.register(_cls)


def make_rule(name: str, **hyper: float) -> Rule:
    """The rule called ``name`` (a key of ``RULES``) with the given hyper-parameters (the rest default).

    Raises ``ValueError`` for an unknown name, an unknown hyper-parameter or an invalid value."""
    cls = RULES.lookup(name)
    check_params(f"optimizer {name!r}", hyper, [f.name for f in dataclasses.fields(cls)])
    return cls(**hyper)


__all__ = [
    "RULES",
    "SGD",
    "SLACK",
    "AdaGrad",
    "Adam",
    "Momentum",
    "RMSProp",
    "Rows",
    "Rule",
    "RuleBase",
    "make_rule",
]
