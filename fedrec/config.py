"""Typed run configuration: dataclasses loaded from YAML with ``key=value`` overrides.

A config file holds any subset of the sections below; ``--set train.lr=0.01`` style overrides are
parsed as YAML scalars. Unknown keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad configuration file or override; ``str(err)`` is one line."""


@dataclass
class DataConfig:
    dataset: str = "ml100k"
    data_dir: str | None = None
    test_fraction: float = 0.2
    split_seed: int = 0
    rating_threshold: float | None = None


@dataclass
class ModelConfig:
    name: str = (
        "fism"  # fism | mf (federated and centralized); implicit-bpr | recbole-bpr | pop (centralized)
    )
    dim: int = 64  # d, paper 000 Appendix G
    gamma: float = 1.0  # FISM normalisation exponent, Appendix G
    init_std: float = 1.0  # theta^0 ~ N(0, 1), paper 000 Section 2


@dataclass
class TrainConfig:
    mode: str = "centralized"  # centralized | federated (the federated engine: issue 3)
    optimizer: str = "adam"
    lr: float = 1e-3  # eta, Appendix G
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 1e-4  # lambda of Eq. (7), Appendix G
    negatives: int = 1  # uniform negatives per positive, redrawn every step
    seed: int = 0


@dataclass
class FederatedConfig:
    """Paper 000 Algorithm 1: a fraction ``e`` of the clients per round, one local step each."""

    fraction: float = 0.01  # e, Appendix G
    rounds: int | None = None  # length in rounds; when unset, ``epochs / fraction`` rounds
    epochs: float = 10.0  # one epoch = 1 / e rounds
    eval_every: int = 500  # rounds
    checkpoint_every: int = 500  # rounds
    momentum: float = 0.9  # beta3 of SGD with momentum (Appendix C; not given by the paper)
    rho: float = 0.9  # beta4 of RMSProp (Appendix E; not given by the paper)


@dataclass
class AttackConfig:
    """Byzantine clients (paper 000 Section 4.1 and 5; DESIGN.md section 7)."""

    name: str = "none"  # none | gradient-ascent | noise | camouflage (see `fedrec attacks`)
    fraction: float = 0.0  # share of the clients that are Byzantine (paper: 0.2 / 0.3 / 0.4)
    mode: str = "own"  # own: a seeded subset of the users, keeping their own data; inject: fake users
    seed: int = 0  # which users are Byzantine, and the attacker's own RNG
    scale: float = 1.0  # gradient ascent: -scale * g
    sigma: float = 0.5  # additive noise on parameters
    all_rows: bool = False  # camouflage: also poison every row it did not touch (dense uploads: slow)
    select: str = "farthest"  # camouflage: which root where two exist


@dataclass
class DefenseConfig:
    """The server's filter (DESIGN.md section 6; see `fedrec defenses`)."""

    name: str = "none"
    assumed_fraction: float | None = None  # the Byzantine fraction the rule assumes; default attack.fraction
    f: int | None = None  # a fixed f per round instead of ceil(assumed_fraction * n)
    max_weight_share: float = 0.9  # validation: no upload may claim more of a round's weight
    verify: bool = True  # validation: reject uploads that break the optimizer rule (paper 000 footnote 2)
    max_grad: float = 1e4  # validation: bound on every coordinate of a reconstructed gradient
    weighting: str = "clipped"  # claimed | clipped | uniform: what n_examples weighs in the aggregate
    weight_clip: float = 20.0  # clipped: each n_i at most this many times the round's median claim


@dataclass
class CentralizedConfig:
    """The centralized upper bound and external baselines (not paper settings: tuned to converge)."""

    lr: float = 1e-2
    init_std: float = 0.1
    epochs: int = 40
    batch_users: int = 64  # mini-batch, in users
    eval_every: int = 10  # epochs
    implicit_iterations: int = 100
    implicit_lr: float = 0.01
    implicit_reg: float = 0.01
    recbole_epochs: int = 100
    recbole_lr: float = 1e-3


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 10, 20])
    batch_size: int = 1024
    protocol: str = "full"  # full | loo


@dataclass
class RunConfig:
    out_dir: str = "runs"
    name: str | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federated: FederatedConfig = field(default_factory=FederatedConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    defense: DefenseConfig = field(default_factory=DefenseConfig)
    centralized: CentralizedConfig = field(default_factory=CentralizedConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def set(self, dotted: str, value: Any) -> None:
        """Set ``section.key`` to ``value`` (coerced to the field's type)."""
        section, _, key = dotted.partition(".")
        target = getattr(self, section, None) if key else None
        if target is None or not dataclasses.is_dataclass(target):
            raise ConfigError(f"unknown config key {dotted!r}: expected one of {', '.join(_all_keys(self))}")
        fields = {f.name: f for f in dataclasses.fields(target)}
        if key not in fields:
            raise ConfigError(f"unknown config key {dotted!r}: {section} has {', '.join(fields)}")
        hint = typing.get_type_hints(type(target))[key]
        setattr(target, key, _coerce(value, hint, dotted))


def _all_keys(cfg: Config) -> list[str]:
    return [
        f"{s.name}.{f.name}"
        for s in dataclasses.fields(cfg)
        for f in dataclasses.fields(getattr(cfg, s.name))
    ]


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint)
    try:
        if origin is list:
            (inner,) = typing.get_args(hint)
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split()]
            if not isinstance(value, list):
                value = [value]
            return [inner(v) for v in value]
        if hint is bool:
            if isinstance(value, str):
                return value.lower() in ("1", "true", "yes", "on")
            return bool(value)
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return hint(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: cannot read {value!r} as {getattr(hint, '__name__', hint)}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """``'train.lr=0.01'`` -> ``('train.lr', 0.01)`` (the value is read as a YAML scalar)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file (if any), then the ``key=value`` overrides, in that order."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            doc = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{p}{line}: invalid YAML ({getattr(err, 'problem', err)})") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"{p}: expected a mapping of sections")
        for section, values in doc.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{p}: section {section!r} must be a mapping")
            for key, value in values.items():
                try:
                    cfg.set(f"{section}.{key}", value)
                except ConfigError as err:
                    raise ConfigError(f"{p}: {err}") from None
    for text in overrides:
        cfg.set(*parse_override(text))
    return cfg
