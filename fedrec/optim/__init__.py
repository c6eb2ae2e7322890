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

RULES: dict[str, type[RuleBase]] = {cls.name: cls for cls in (Adam, SGD, Momentum, AdaGrad, RMSProp)}


def make_rule(name: str, **hyper: float) -> Rule:
    """The rule called ``name`` (a key of ``RULES``) with the given hyper-parameters (the rest default).

    Raises ``ValueError`` for an unknown name, an unknown hyper-parameter or an invalid value."""
    try:
        cls = RULES[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(sorted(RULES))}") from None
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(hyper) - set(known))
    if unknown:
        raise ValueError(
            f"optimizer {name!r} has no hyper-parameter {', '.join(unknown)}; it takes {', '.join(known)}"
        )
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
