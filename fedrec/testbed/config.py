"""The testbed's configuration: one dataclass, validated with one clear line per bad value, and the
``key=value`` overrides of the CLI's ``--set`` (``rule_params.x=1``, ``lr=0.1``)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import yaml

from fedrec.config import INT_LIMIT, load_yaml, physical_memory
from fedrec.defenses.preagg import PRE_STEPS
from fedrec.testbed.data import SHARDS
from fedrec.testbed.model import MODELS

NO_ATTACK = "none"
"""The attack name under which the Byzantine workers send their honest messages."""

PLACEMENTS = ("first", "random")
ESTIMATORS = ("sgd", "saga")
DIGITS = 1797  # scikit-learn's digits: the most training samples a SAGA table can hold


@dataclass
class TestbedConfig:
    """One testbed run (defaults: RESAM's MNIST setting, section 9.1, on digits).

    Attributes:
        n: workers. f: Byzantine workers among them (also the f the rule is given, unless ``rule_f``).
        rule: a registered robust rule (``fedrec.defenses.base.RULES``); ``rule_params`` its parameters.
        attack: a registered attack (``fedrec.attacks.ATTACKS``) or ``none``; ``attack_params`` its
            parameters.
        momentum: the workers' momentum beta (RESAM Algorithm 1: m = beta m + (1 - beta) g at the worker).
        lr: the server's step gamma (theta <- theta - lr F(m_1..m_n)). batch: each worker's mini-batch.
        weight_decay: l2 coefficient added to every worker's gradient (RESAM 1e-4, SignGuard 5e-4).
        clip: worker-side gradient-norm clipping C (RESAM's C = 2), None for none.
        steps: server steps. model: softmax | mlp; hidden: the MLP's width.
        shards: iid | sorted. byzantine: which workers are Byzantine: the ``first`` f or a seeded
            ``random`` f. seed: every random draw derives from it. eval_every: test accuracy every k steps
            (and after the last step). rule_f: the f the rule assumes (None: f).
        estimator: what a worker's gradient is: ``sgd`` (its mini-batch gradient) or ``saga`` (SAGA
            with a per-sample table, paper 003 / Byrd-SAGA; ``fedrec.testbed.saga``).
        pre: a pre-aggregation step before the rule (``resample`` | ``bucket``, paper 003; its ``s`` in
            ``rule_params``), None for none.
    """

    __test__ = False  # not a pytest class

    n: int = 15
    f: int = 0
    rule: str = "mean"
    rule_params: dict[str, Any] = field(default_factory=dict)
    attack: str = NO_ATTACK
    attack_params: dict[str, Any] = field(default_factory=dict)
    momentum: float = 0.0
    lr: float = 0.5
    batch: int = 25
    weight_decay: float = 1e-4
    clip: float | None = None
    steps: int = 300
    model: str = "softmax"
    hidden: int = 64
    shards: str = "iid"
    byzantine: str = "first"
    seed: int = 0
    eval_every: int = 50
    rule_f: int | None = None
    estimator: str = "sgd"
    pre: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` (one line) for the first bad value."""

        def integer(name: str, lo: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v < INT_LIMIT:
                raise ValueError(f"{name}={v!r}: must be an integer in [{lo}, 2^62)")

        def number(name: str, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> None:
            v = getattr(self, name)
            ok = not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)
            ok = ok and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
            if not ok:
                lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
                raise ValueError(f"{name}={v!r}: must be a number in {lb}{lo}, {hi}{rb}")

        for name, lo in (("n", 1), ("f", 0), ("batch", 1), ("steps", 1), ("hidden", 1), ("eval_every", 1)):
            integer(name, lo)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < INT_LIMIT:
            raise ValueError(f"seed={self.seed!r}: must be an integer in [0, 2^62)")
        self._check_memory()
        if self.f >= self.n:
            raise ValueError(f"f={self.f}: must be below n={self.n} (at least one honest worker)")
        if self.rule_f is not None:
            integer("rule_f", 0)
            if self.rule_f >= self.n:
                raise ValueError(f"rule_f={self.rule_f}: must be below n={self.n}")
        number("momentum", 0.0, 1.0, hi_open=True)
        number("lr", 0.0, math.inf, lo_open=True, hi_open=True)
        number("weight_decay", 0.0, math.inf, hi_open=True)
        if self.clip is not None:
            number("clip", 0.0, math.inf, lo_open=True, hi_open=True)
        if self.pre is not None and self.pre not in PRE_STEPS:
            raise ValueError(f"pre={self.pre!r}: expected one of {', '.join(PRE_STEPS)} or null")
        for name, options in (
            ("model", MODELS), ("shards", SHARDS), ("byzantine", PLACEMENTS), ("estimator", ESTIMATORS)
        ):  # fmt: skip
            if getattr(self, name) not in options:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected one of {', '.join(options)}")
        for name in ("rule", "attack"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name}={getattr(self, name)!r}: must be a name")
        for name in ("rule_params", "attack_params"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name}={getattr(self, name)!r}: must be a mapping")
        if self.attack != NO_ATTACK and self.f == 0:
            raise ValueError(f"attack={self.attack!r} needs f >= 1 Byzantine workers (--byzantine)")

    def _check_memory(self) -> None:
        """The float64 vectors of P parameters the run keeps (per worker: its momentum, message and
        gradient; SAGA: one per training sample of digits' 1,797), against this machine's memory:
        ``hidden=10^11`` asked torch for 51 TB in a traceback."""
        memory = physical_memory()
        params = (64 + 1) * self.hidden + (self.hidden + 1) * 10 if self.model == "mlp" else 65 * 10
        vectors = 4 * self.n + 8 + (DIGITS if self.estimator == "saga" else 0)
        if memory is not None and 8 * params * vectors > memory:
            raise ValueError(
                f"hidden={self.hidden}, n={self.n}, estimator={self.estimator}: {vectors} vectors of {params} "
                f"parameters need ~{8 * params * vectors / 1e9:.3g} GB, more than this machine's {memory / 1e9:.3g} GB"
            )

    @property
    def assumed_f(self) -> int:
        return self.f if self.rule_f is None else self.rule_f

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


FIELDS = {f.name for f in dataclasses.fields(TestbedConfig)}


def apply_overrides(base: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``base`` with ``key=value`` items applied; a value is read as YAML (``1`` int, ``0.5`` float,
    ``null``, ``[1, 2]``); ``rule_params.x=1`` / ``attack_params.x=1`` set one parameter."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected key=value")
        try:
            value = load_yaml(raw)  # fedrec.config's: nesting and unconvertible values are YAMLErrors
        except yaml.YAMLError:
            raise ValueError(f"--set {item!r}: the value is not valid YAML") from None
        if isinstance(value, str):
            value = _number(value)
        head, dot, sub = key.partition(".")
        if head not in FIELDS:
            raise ValueError(f"--set {item!r}: unknown key {head!r}; known: {', '.join(sorted(FIELDS))}")
        if dot:
            if head not in ("rule_params", "attack_params") or not sub:
                raise ValueError(f"--set {item!r}: only rule_params.<name> and attack_params.<name> nest")
            out.setdefault(head, {})[sub] = value
        else:
            out[head] = value
    return out


def _number(text: str) -> Any:
    """``1e-3`` as a float: YAML 1.1 reads an exponent without a dot or sign as a string."""
    try:
        return float(text) if text.strip().lower() not in ("nan", "inf", "-inf", "infinity") else text
    except ValueError:
        return text


def make_config(overrides: list[str] | None = None, **values: Any) -> TestbedConfig:
    """A validated config from keyword values, then ``--set`` overrides (ValueError on a bad one)."""
    unknown = sorted(set(values) - FIELDS)
    if unknown:
        raise ValueError(f"unknown testbed option {', '.join(unknown)}")
    merged = apply_overrides(dict(values), overrides or [])
    return TestbedConfig(**merged)
