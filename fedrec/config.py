"""Typed run configuration: dataclasses loaded from YAML with ``key=value`` overrides.

A config file holds any subset of the sections below; ``--set train.lr=0.01`` style overrides are
parsed as YAML scalars. Unknown keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import reprlib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad configuration file or override; ``str(err)`` is one line."""


MAX_YAML_VALUES = 100_000  # a config or grid file has hundreds; an alias bomb has billions
MAX_RECORDS = 10**8  # round records (one per sampled client per round, ~50 bytes each): ~5 GB
MAX_THREADS = 1024  # torch's thread pool fails outright (a segfault) far past any machine's cores
# defense.max_weight_share is checked only in rounds with at least this many valid uploads (below it one
# honest client may well hold most of a round's examples): fedrec.federation.validate.weight_share
MIN_UPLOADS_FOR_SHARE = 5


class YamlTooLarge(yaml.YAMLError):
    """A document with more values than ``MAX_YAML_VALUES`` once its aliases are expanded."""

    def __init__(self) -> None:
        self.problem = f"more than {MAX_YAML_VALUES:,} values once its aliases are expanded"
        super().__init__(self.problem)


class YamlUnreadable(yaml.YAMLError):
    """A document the parser cannot finish: nested past Python's recursion limit, or a value Python
    refuses to convert (an integer of more than 4,300 digits)."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(problem)


MERGE = "tag:yaml.org,2002:merge"  # ``<<: *anchor``: merged keys, which a key of its own may override


def _check_nodes(root: yaml.Node | None) -> None:
    """Walk the composed document (nodes: nothing built yet) with its aliases expanded: at most
    ``MAX_YAML_VALUES`` nodes, and no key written twice in one mapping (PyYAML keeps the last one
    silently, so ``train.seed: [0]`` then ``train.seed: [1]`` ran seed 1 alone)."""
    stack, count = [root] if root is not None else [], 0
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_YAML_VALUES:
            raise YamlTooLarge()
        if isinstance(node, yaml.MappingNode):
            seen: set[tuple[str, Any]] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != MERGE:
                    if (key.tag, key.value) in seen:
                        raise yaml.MarkedYAMLError(
                            problem=f"key {shown(key.value)} appears twice in one mapping",
                            problem_mark=key.start_mark,
                        )
                    seen.add((key.tag, key.value))
                stack += [key, value]
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` (no tags that build objects), after checking the composed nodes: a key given
    twice in a mapping, or aliases that expand past ``MAX_YAML_VALUES`` values, are refused. The
    parser shares an aliased node, but anything that walks the document (validation, its hash, an
    error message) would expand it: 10^8 values from a 1 KB file. Files here are small, so parsing
    twice costs nothing that matters."""
    try:
        _check_nodes(yaml.compose(text, Loader=yaml.SafeLoader))
        return yaml.safe_load(text)
    except RecursionError:
        raise YamlUnreadable("nested too deeply to read") from None
    except ValueError as err:  # the YAML errors are not ValueErrors: this is a conversion Python refused
        raise YamlUnreadable(f"a value that cannot be read ({str(err).split(':')[0][:80]})") from None


_SHOWN = reprlib.Repr()  # keyword arguments only from Python 3.12
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxdict, _SHOWN.maxstring, _SHOWN.maxother = 3, 8, 8, 80, 80


def shown(value: Any) -> str:
    """``repr(value)`` cut to a readable length: error messages stay one short line, whatever a
    file holds."""
    return _SHOWN.repr(value)


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
    # shared: one generator draws every client's negatives and the attacker's numbers, in round order
    # (the in-process engine's own stream); per-client: draws keyed by (seed, round, client), so any
    # split of the clients over processes draws the same numbers (what the Flower deployment uses)
    client_rng: str = "shared"
    # each client's samples per round (its positives, drawn without replacement; scaled by J / b):
    # null = every positive (paper 000); fedrec.federation.saga
    local_batch: int | None = None
    # none | saga: SAGA at the clients, per (user, positive) sample, negatives fixed per positive (paper 003)
    variance_reduction: str = "none"
    # each positive keeps the negatives drawn for it once (implied by saga; alone: its control)
    fixed_negatives: bool = False


@dataclass
class AttackConfig:
    """Byzantine clients (paper 000 Section 4.1 and 5; DESIGN.md section 7)."""

    name: str = "none"  # none | gradient-ascent | noise | camouflage (see `fedrec attacks`)
    fraction: float = 0.0  # share of the clients that are Byzantine (paper: 0.2 / 0.3 / 0.4)
    mode: str = "own"  # own: a seeded subset of the users, keeping their own data; inject: fake users
    seed: int = 0  # which users are Byzantine, and the attacker's own RNG
    # the attack's own parameters, passed straight through (`fedrec attacks` lists them):
    # --set attack.params.scale=3, --set attack.params.all_rows=true
    params: dict[str, Any] = field(default_factory=dict)


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
    # the rule's parameters over the preset's, passed straight through (`fedrec defenses` lists them):
    # --set defense.params.c=3
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0  # the server's generator for rules that draw random numbers (SignGuard's sample)
    # a pre-aggregation step over the preset's (resample | bucket, paper 003); its s in params
    pre: str | None = None


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
    threads: str | None = None  # torch threads: unset -> $OMP_NUM_THREADS or 1; N; auto (fedrec/threads.py)
    # the server's rule check (and Adam's default pass) compiled (fedrec/optim/fused.py): unset -> for runs of
    # at least COMPILE_ROUNDS rounds where a C++ compiler is found; true / false force it
    compile: bool | None = None
    # the server's default pass deferred (fedrec/federation/deferred.py): a round costs the rows it
    # touches, not the catalog; rows are caught up when read (every row before an evaluation). Unset ->
    # deferred where the tables are large (DEFER_BYTES) and the result is the dense pass's bit for bit
    # (Adam's C pass on the CPU, run.compile resolved on); true / false force it
    deferred: bool | None = None


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
        sections = {f.name for f in dataclasses.fields(self)}  # not getattr: '__class__' is no section
        target = getattr(self, section) if key and section in sections else None
        if target is None or not dataclasses.is_dataclass(target):
            raise ConfigError(f"unknown config key {dotted!r}: expected one of {', '.join(_all_keys(self))}")
        fields = {f.name: f for f in dataclasses.fields(target)}
        head, _, sub = key.partition(".")
        if sub and head == "params" and head in fields:  # section.params.name: one parameter
            if not isinstance(target.params, dict):
                target.params = {}
            target.params[sub] = _number_text(value)
            return
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


# YAML 1.1 (PyYAML) reads 1e300 or 5e-324 as text (it wants a dot: 1.0e+300); typed keys convert it, but
# a rule's or an attack's parameter passes straight through, so it is read as the number it spells here
_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _number_text(value: Any) -> Any:
    """``value`` with numbers in exponent form written as text (YAML 1.1's ``1e300``) read as floats."""
    if isinstance(value, list):
        return [_number_text(v) for v in value]
    return float(value) if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()) else value


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint)
    elif value is None and origin is not dict:  # str(None) is "None": run.out_dir=null made a folder "None"
        raise ConfigError(f"{key}: cannot be null (expected {getattr(hint, '__name__', hint)})")
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{key}: expected a mapping of parameter names to values, got {shown(value)}")
        return {k: _number_text(v) for k, v in value.items()}
    try:
        if origin is list:
            (inner,) = typing.get_args(hint)
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split()]
            if not isinstance(value, list):
                value = [value]
            if inner in (int, float) and any(isinstance(v, bool) for v in value):
                raise ValueError(value)
            if inner is int and any(isinstance(v, float) and not v.is_integer() for v in value):
                raise ValueError(value)  # eval.ks=[1.5, 2.7] read as [1, 2]
            return [inner(v) for v in value]
        if hint is bool:  # a typo must not read as False
            if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
                return value.strip().lower() in TRUE_WORDS
            if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
                return bool(value)
            raise ValueError(value)
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        if hint in (int, float) and isinstance(value, bool):  # YAML's true is not the number 1
            raise ValueError(value)
        return hint(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: cannot read {shown(value)} as {getattr(hint, '__name__', hint)}") from None


# what a run of the most-popular baseline reads: it counts the training interactions, nothing else
POP_READS = ("data.", "eval.", "run.", "train.mode", "model.name")


def unread_key(cfg: Config, keys: Iterable[str]) -> str | None:
    """The first of ``keys`` (dotted, as given on the command line or in a grid) that the run ``cfg``
    describes never reads, or None: a value it ignores would make two different-looking runs the same."""
    if cfg.train.mode == "centralized" and cfg.model.name == "pop":
        return next((k for k in keys if not k.startswith(POP_READS)), None)
    return None


def parse_override(text: str) -> tuple[str, Any]:
    """``'train.lr=0.01'`` -> ``('train.lr', 0.01)`` (the value is read as a YAML scalar)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # kept as text: the key's domain check names it
    return key.strip(), value


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    values: Mapping[str, Any] | None = None,
) -> Config:
    """Defaults, then the YAML file (if any), then ``values`` (dotted key -> typed value, as a grid cell
    gives them), then the ``key=value`` overrides, in that order; validated once, at the end."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"{p}: config file not found")
        if not p.is_file():
            raise ConfigError(f"{p}: not a regular file")
        try:
            doc = load_yaml(p.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{p}{line}: invalid YAML ({getattr(err, 'problem', err)})") from None
        except UnicodeDecodeError as err:
            raise ConfigError(f"{p}: not UTF-8 text (byte {err.start})") from None
        except OSError as err:
            raise ConfigError(f"{p}: unreadable ({err.strerror or err})") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"{p}: expected a mapping of sections")
        for section, entries in doc.items():
            if not isinstance(entries, dict):
                raise ConfigError(f"{p}: section {section!r} must be a mapping")
            for key, value in entries.items():
                try:
                    cfg.set(f"{section}.{key}", value)
                except ConfigError as err:
                    raise ConfigError(f"{p}: {err}") from None
    for key, value in (values or {}).items():
        cfg.set(key, value)
    for text in overrides:
        cfg.set(*parse_override(text))
    return validate(cfg)


# ---------------------------------------------------------------- validation
# Every key is checked before any data loads or any run directory exists: a bad value must fail at
# once with one line naming the key, not crash mid-run or (worse) run to a silently wrong result.


@dataclass(frozen=True)
class Domain:
    """The values a numeric key may take: ``ok(value)`` and the phrase that describes them."""

    ok: Callable[[Any], bool]
    text: str


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def interval(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = True) -> Domain:
    def ok(v: Any) -> bool:
        return _is_num(v) and (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)

    return Domain(ok, f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}")


# below 2^62, as seeds: past int64 torch, numpy and Parquet refuse an integer (a traceback mid-run, or a
# grid whose results table cannot be written); sizes that would not fit in memory are checked once the
# data is loaded (check_memory)
INT_LIMIT = 2**62
POSITIVE_INT = Domain(lambda v: _is_int(v) and 0 < v < INT_LIMIT, "a positive integer below 2^62")
NON_NEGATIVE_INT = Domain(lambda v: _is_int(v) and 0 <= v < INT_LIMIT, "an integer in [0, 2^62)")
POSITIVE = Domain(lambda v: _is_num(v) and v > 0, "a finite number > 0")
NON_NEGATIVE = Domain(lambda v: _is_num(v) and v >= 0, "a finite number >= 0")
FINITE = Domain(_is_num, "a finite number")
# numpy's PCG64 wants seeds >= 0, and the run derives a few generators as seed + small offsets
SEED = Domain(lambda v: _is_int(v) and 0 <= v < INT_LIMIT, "an integer in [0, 2^62)")
# a step size past this only diverges (BPR's gradients are O(1)); 1e300 overflowed torch's Adam in a traceback
LR = Domain(lambda v: _is_num(v) and 0 < v <= 1e3, "a number in (0, 1e3]")
# an initial scale past this only saturates BPR's sigmoid (scores ~ d std^2), and past ~1e18 the scores
# overflow float32: every honest upload non-finite, P@K of a NaN model reported as if trained
INIT_STD = Domain(lambda v: _is_num(v) and 0 < v <= 1e3, "a number in (0, 1e3]")
KS = Domain(
    lambda v: isinstance(v, list) and len(v) > 0 and all(POSITIVE_INT.ok(k) for k in v),
    "a non-empty list of positive integers",
)
PROBABILITY_BELOW_1 = interval(0, 1)  # [0, 1)

# Every numeric key of Config (None is allowed where the field is optional; tests/
# test_config_validation.py fails when a numeric key is added without a domain here).
DOMAINS: dict[str, Domain] = {
    "data.test_fraction": interval(0, 1, lo_open=True),
    "data.split_seed": SEED,
    "data.rating_threshold": FINITE,
    "model.dim": POSITIVE_INT,
    "model.gamma": NON_NEGATIVE,
    "model.init_std": INIT_STD,  # 0 would start every user and item at the same point: nothing to learn
    "train.lr": LR,
    "train.beta1": PROBABILITY_BELOW_1,
    "train.beta2": PROBABILITY_BELOW_1,
    "train.eps": POSITIVE,
    "train.weight_decay": NON_NEGATIVE,
    "train.negatives": POSITIVE_INT,
    "train.seed": SEED,
    "federated.fraction": interval(0, 1, lo_open=True, hi_open=False),
    "federated.rounds": POSITIVE_INT,
    "federated.epochs": POSITIVE,
    "federated.eval_every": POSITIVE_INT,
    "federated.checkpoint_every": POSITIVE_INT,
    "federated.momentum": PROBABILITY_BELOW_1,
    "federated.rho": PROBABILITY_BELOW_1,
    "federated.local_batch": POSITIVE_INT,
    "attack.fraction": PROBABILITY_BELOW_1,
    "attack.seed": SEED,
    "defense.assumed_fraction": PROBABILITY_BELOW_1,
    "defense.f": NON_NEGATIVE_INT,
    "defense.seed": SEED,
    # 0 rejects every honest upload; above 1 the check never fires
    "defense.max_weight_share": interval(0, 1, lo_open=True, hi_open=False),
    # every honest coordinate measured so far is below 6 (docs/RESULTS.md section 8); 0 rejects them all;
    # above ~1e19 a gradient the check lets through overflows g^2 in float32 (the second moment)
    "defense.max_grad": Domain(lambda v: _is_num(v) and 0 < v <= 1e15, "a number in (0, 1e15]"),
    # below 1 the clip would cut honest claims under the round's median
    "defense.weight_clip": Domain(lambda v: _is_num(v) and v >= 1, "a finite number >= 1"),
    "centralized.lr": LR,
    "centralized.init_std": INIT_STD,
    "centralized.epochs": POSITIVE_INT,
    "centralized.batch_users": POSITIVE_INT,
    "centralized.eval_every": POSITIVE_INT,
    "centralized.implicit_iterations": POSITIVE_INT,
    "centralized.implicit_lr": LR,
    "centralized.implicit_reg": NON_NEGATIVE,
    "centralized.recbole_epochs": POSITIVE_INT,
    "centralized.recbole_lr": LR,
    "eval.ks": KS,
    "eval.batch_size": POSITIVE_INT,
}

MODES = ("centralized", "federated")
CLIENT_RNGS = ("shared", "per-client")  # fedrec.federation.simulation.FederatedRun
VARIANCE_REDUCTIONS = ("none", "saga")  # fedrec.federation.saga
ATTACK_MODES = ("own", "inject")  # fedrec.federation.simulation.with_byzantine
EVAL_PROTOCOLS = ("full", "loo")  # fedrec.eval.full_ranking, fedrec.eval.leave_one_out
FEDERATED_MODELS = ("fism", "mf")  # fedrec.federation.runner
CENTRALIZED_MODELS = ("fism", "mf", "implicit-bpr", "recbole-bpr", "pop")  # fedrec.baselines.runner
WEIGHTINGS = ("claimed", "clipped", "uniform")  # fedrec.federation.validate.effective_examples
# Sections only one mode reads: the other mode ignores them (the CLI's --epochs writes both lengths).
MODE_SECTIONS = {"centralized": ("centralized",), "federated": ("federated", "attack", "defense")}


def _names(mode: str) -> dict[str, tuple[str, ...]]:
    """The allowed names of every name-valued key, read from the registries (imported here: they pull
    in torch, which loading a config does not need)."""
    from fedrec.attacks import ATTACKS
    from fedrec.defenses import DEFENSES
    from fedrec.optim import RULES

    models = FEDERATED_MODELS if mode == "federated" else CENTRALIZED_MODELS
    return {
        "model.name": tuple(models),
        "train.optimizer": tuple(RULES),
        "attack.name": ("none", *ATTACKS),
        "attack.mode": ATTACK_MODES,
        "federated.client_rng": CLIENT_RNGS,
        "federated.variance_reduction": VARIANCE_REDUCTIONS,
        "defense.name": tuple(DEFENSES),
        "defense.weighting": WEIGHTINGS,
        "eval.protocol": EVAL_PROTOCOLS,
    }


def _value(cfg: Config, key: str) -> Any:
    section, _, name = key.partition(".")
    return getattr(getattr(cfg, section), name)


def _skipped(mode: str, key: str) -> bool:
    section = key.partition(".")[0]
    return any(section in secs for m, secs in MODE_SECTIONS.items() if m != mode)


def validate(cfg: Config, mode: str | None = None) -> Config:
    """Check every key against its domain and the keys against each other; raise ``ConfigError`` (one
    line naming the key) on the first problem. ``mode`` (default ``train.mode``): the engine that will
    read ``cfg``. Returns ``cfg``."""
    mode = cfg.train.mode if mode is None else mode
    if mode not in MODES:
        raise ConfigError(f"train.mode={mode!r}: expected 'federated' or 'centralized'")
    for key, dom in DOMAINS.items():
        v = _value(cfg, key)
        if _skipped(mode, key) or (v is None and _optional(key)):
            continue
        if not dom.ok(v):
            hint = ""
            if key == "attack.fraction" and _is_num(v) and v >= 1:
                hint = ": no benign clients to evaluate"
            raise ConfigError(f"{key}={shown(v)}: must be {dom.text}{hint}")
    for key, names in _names(mode).items():
        if not _skipped(mode, key) and _value(cfg, key) not in names:
            raise ConfigError(f"{key}={shown(_value(cfg, key))}: expected one of {', '.join(names)}")
    if mode == "centralized" and cfg.model.name == "recbole-bpr" and cfg.train.seed >= 2**32:
        raise ConfigError(
            f"train.seed={cfg.train.seed}: recbole-bpr seeds numpy's legacy generator, which takes seeds below 2^32"
        )
    _check_dataset(cfg)
    _check_run(cfg)
    if mode == "federated":
        _check_attack(cfg)
        _check_params(cfg)
        _check_defense_fraction(cfg)
    return cfg


def _optional(key: str) -> bool:
    section, _, name = key.partition(".")
    cls = type(getattr(Config(), section))
    hint = typing.get_type_hints(cls)[name]
    return type(None) in typing.get_args(hint)


def _check_dataset(cfg: Config) -> None:
    from fedrec.data import DATASETS
    from fedrec.data.registry import is_inter_path

    name = cfg.data.dataset
    if not isinstance(name, str) or not (name in DATASETS or is_inter_path(name)):
        raise ConfigError(
            f"data.dataset={name!r}: expected one of {', '.join(DATASETS)} or a path to a RecBole .inter file"
        )


def _check_run(cfg: Config) -> None:
    from fedrec.runs import run_name_problem

    if not cfg.run.out_dir:
        raise ConfigError("run.out_dir is empty: expected the folder for run directories")
    out = Path(cfg.run.out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"run.out_dir={cfg.run.out_dir!r}: exists and is not a folder")
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"run.out_dir={cfg.run.out_dir!r}: {existing} is not writable")
    if cfg.run.name is not None and (why := run_name_problem(cfg.run.name)):
        raise ConfigError(f"run.name={cfg.run.name!r}: {why}")
    th = cfg.run.threads
    if th is not None and th != "auto" and not (th.isascii() and th.isdigit() and 0 < int(th) <= MAX_THREADS):
        raise ConfigError(
            f"run.threads={th!r}: expected an integer in [1, {MAX_THREADS}] or auto (unset: one thread)"
        )
    dev = cfg.run.device
    if dev != "auto":
        import torch

        try:
            ok = torch.device(dev).type in ("cpu", "cuda")
        except (RuntimeError, TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"run.device={dev!r}: expected auto, cpu, cuda or cuda:N")


def _f_rule(defense: str) -> str | None:
    """The rule of ``defense`` when it drops uploads (or values) by f, else None."""
    from fedrec.defenses import DEFENSES

    spec = DEFENSES[defense].spec
    return spec.name if spec.min_n(8) > spec.min_n(0) else None


def _check_attack(cfg: Config) -> None:
    """An attack needs Byzantine clients and Byzantine clients need an attack: either alone used to run
    attack-free without a word (and print "Byzantine rejected nan%")."""
    a = cfg.attack
    if a.name != "none" and a.fraction <= 0:
        raise ConfigError(
            f"attack.name={a.name!r} with attack.fraction={a.fraction!r}: no client is Byzantine; "
            "set the share (--byzantine 0.2) or drop the attack"
        )
    if a.name == "none" and a.fraction > 0:
        raise ConfigError(
            f"attack.fraction={a.fraction!r} with attack.name='none': name the attack (--attack, see "
            "`fedrec attacks`); to make a defense assume Byzantine clients, set defense.assumed_fraction"
        )


def _check_params(cfg: Config) -> None:
    """``defense.params`` and ``attack.params``: every name must be one the rule / attack takes, and the
    values must build it (the attack's own checks; the rule is tried once on a tiny problem)."""
    from fedrec.attacks import make_attack
    from fedrec.defenses import make_defense

    a, d = cfg.attack, cfg.defense
    for section, params in (("attack", a.params), ("defense", d.params)):
        if not isinstance(params, dict):
            raise ConfigError(f"{section}.params: expected a mapping of parameter names to values")
        for name, value in params.items():  # torch refuses them mid-run: a traceback at round 1
            values = value if isinstance(value, list) else [value]
            if any(_is_int(v) and not -INT_LIMIT < v < INT_LIMIT for v in values):
                raise ConfigError(f"{section}.params.{name}={shown(value)}: integers must lie within +-2^62")
    if a.name != "none":
        try:
            attack = make_attack(a.name, **a.params)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"attack.params ({a.name}): {err}") from None
        rules = getattr(attack, "optimizers", None)
        if rules is not None and cfg.train.optimizer not in rules:  # it raised in round 1
            raise ConfigError(
                f"attack.name={a.name!r}: defined for train.optimizer {' or '.join(rules)}, "
                f"not {cfg.train.optimizer!r}"
            )
    elif a.params:
        raise ConfigError(
            f"attack.params={shown(a.params)}: attack.name is 'none', which takes no parameters"
        )
    try:
        make_defense(d.name, d.params, d.pre).try_params()
    except (TypeError, ValueError, RuntimeError) as err:
        raise ConfigError(f"defense.params ({d.name}): {err}") from None


def _check_defense_fraction(cfg: Config) -> None:
    """Krum-type rules assume f < n/2 Byzantine uploads; at a fraction >= 0.5 they reject every upload
    of every round (too few to choose from), which used to run to the end without a word."""
    d = cfg.defense
    from fedrec.defenses import DEFENSES
    from fedrec.optim import RULES

    momentum_space = d.name in DEFENSES and DEFENSES[d.name].space == "momentum"
    if momentum_space and cfg.train.optimizer in RULES and not RULES[cfg.train.optimizer].state_names:
        raise ConfigError(
            f"defense.name={d.name!r}: looks at the optimizer's first moment, and "
            f"train.optimizer={cfg.train.optimizer!r} keeps none"
        )
    if _f_rule(d.name) is None or d.f is not None:  # an explicit f is checked once n is known
        return
    key, fraction = (
        ("defense.assumed_fraction", d.assumed_fraction)
        if d.assumed_fraction is not None
        else ("attack.fraction", cfg.attack.fraction)
    )
    if fraction >= 0.5:
        raise ConfigError(
            f"{key}={fraction!r}: defense {d.name!r} assumes fewer than half of the uploads are "
            "Byzantine (f < n/2) and would reject every upload; set defense.assumed_fraction below 0.5 "
            "or use a defense without f (e.g. cw-median, rfa)"
        )


def check_eval_ks(cfg: Config, n_items: int, dataset: str, most_seen: int = 0) -> None:
    """``eval.ks`` against the catalog (known once the data is loaded), said before any run directory
    is made, not when the first evaluation fails: full ranking cannot cut a list longer than the
    catalog; leave-one-out ranks each held-out item among 99 sampled ones (K at most 100), drawn from
    the items a user has not seen (``most_seen``: the most train + test items of one user)."""
    ks = cfg.eval.ks or [0]
    if cfg.eval.protocol == "full" and max(ks) > n_items:
        raise ConfigError(
            f"eval.ks: K = {max(ks)} exceeds the {n_items} items of {dataset} (set smaller --ks)"
        )
    if cfg.eval.protocol == "loo":
        from fedrec.eval import LOO_NEGATIVES

        if max(ks) > LOO_NEGATIVES + 1:
            raise ConfigError(
                f"eval.ks: K = {max(ks)} with eval.protocol='loo', which ranks {LOO_NEGATIVES + 1} candidates"
            )
        if n_items - most_seen < LOO_NEGATIVES:
            raise ConfigError(
                f"eval.protocol='loo': a user of {dataset} has seen {most_seen} of its {n_items} items, "
                f"leaving fewer than the {LOO_NEGATIVES} to sample"
            )


def physical_memory() -> int | None:
    """This machine's physical memory in bytes, or None where the system does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_population(cfg: Config, n_users: int, dataset: str) -> int:
    """The Byzantine clients ``attack.fraction`` gives on this data (known once it is loaded): a positive
    fraction that rounds to none ran attack-free without a word (the check of ``_check_attack``, at the
    count), and one that makes every user Byzantine trained to its first evaluation and failed there.
    Returns the number of users the run will have (real ones plus injected fakes)."""
    from fedrec.attacks.population import byzantine_count, fake_user_count

    a = cfg.attack
    if a.name == "none":
        return n_users
    k = fake_user_count(n_users, a.fraction) if a.mode == "inject" else byzantine_count(n_users, a.fraction)
    if k == 0:
        least = 0.5 / (n_users + 0.5) if a.mode == "inject" else 0.5 / n_users  # where the count rounds to 1
        scale = 10 ** (math.floor(math.log10(least)) - 1)
        raise ConfigError(
            f"attack.fraction={a.fraction!r}: of the {n_users} users of {dataset} that is no Byzantine "
            f"client (at least {math.ceil(least / scale) * scale:.2g} makes one)"
        )
    if a.mode == "own" and k >= n_users:
        raise ConfigError(
            f"attack.fraction={a.fraction!r}: all {n_users} users of {dataset} would be Byzantine, "
            "leaving no benign user to evaluate"
        )
    return n_users + k if a.mode == "inject" else n_users


def check_memory(
    cfg: Config, mode: str, *, n_users: int, n_items: int, n_train: int, round_entries: int, n_fake: int = 0
) -> None:
    """What the run will allocate, from the data's shape (known once it is loaded), against this
    machine's physical memory, before any of it is allocated: ``model.dim=10^8`` asked torch for 1.3 TB
    in a traceback, ``train.negatives=10^9`` did so at round 1 with the run directory already made.
    Counted in float32 / int64: the item tables with the optimizer's states (and MF's user vectors), a
    round's positives ``round_entries`` with their negatives and gradients, SAGA's stored gradients
    (``n_train x (3 + negatives) x dim``), ``n_fake`` injected users' interactions (of a typical size,
    among ``n_users``), and an evaluation batch of scores over the catalog. A rough bound (temporaries
    add a small multiple), meant to refuse what could never fit."""
    from fedrec.optim import RULES

    memory = physical_memory()
    if memory is None:
        return
    dim, neg = cfg.model.dim, cfg.train.negatives
    states = len(RULES[cfg.train.optimizer].state_names) if cfg.train.optimizer in RULES else 2
    rows = 2 * n_items if cfg.model.name == "fism" else n_items + n_users
    parts = {"model.dim": 4 * dim * rows * (1 + states)}
    if mode == "federated":
        parts["train.negatives"] = round_entries * (neg * (8 + 4 * dim) + 16 * dim)
        if cfg.federated.variance_reduction == "saga" or cfg.federated.fixed_negatives:
            parts["federated.variance_reduction"] = n_train * (
                8 * neg + (4 * dim * (3 + neg) if cfg.federated.variance_reduction == "saga" else 0)
            )
    else:
        parts["centralized.batch_users"] = 4 * min(cfg.centralized.batch_users, n_users) * n_items
    if n_fake:
        parts["attack.fraction"] = n_fake * (16 + 8 * max(1, n_train // max(1, n_users - n_fake)))
    parts["eval.batch_size"] = 4 * min(cfg.eval.batch_size, n_users) * n_items
    need = sum(parts.values())
    if need > memory:
        top = max(parts, key=parts.__getitem__)
        keys = [top] if top == "attack.fraction" else list(dict.fromkeys(["model.dim", top]))  # d scales them
        said = ", ".join(f"{k}={_value(cfg, k)!r}" for k in keys)
        raise ConfigError(
            f"{said}: the run would need ~{need / 1e9:.3g} GB of memory ({n_users} users, {n_items} items), "
            f"more than this machine's {memory / 1e9:.3g} GB"
        )


def check_round_size(cfg: Config, n: int, f: int) -> None:
    """The defense's f against the run's ``n`` clients per round (known once the data is loaded):
    Krum needs ``n - f - 2 >= 1``, trimming ``n - 2f >= 1``; otherwise every round rejects every upload.
    Also the run's length: its round record (~50 bytes per sampled client per round, kept in memory)
    must fit ``MAX_RECORDS``."""
    fed = cfg.federated
    rounds = fed.rounds if fed.rounds is not None else fed.epochs / fed.fraction  # may overflow to inf
    if rounds * n > MAX_RECORDS:
        key = "federated.rounds" if fed.rounds is not None else "federated.epochs"
        value = fed.rounds if fed.rounds is not None else fed.epochs
        raise ConfigError(
            f"{key}={value!r}: {rounds:.3g} rounds of {n} clients need {rounds * n:.3g} round records "
            f"(~{rounds * n * 50 / 1e9:.3g} GB of memory); at most {MAX_RECORDS:.0e}"
        )
    d = cfg.defense
    if n >= MIN_UPLOADS_FOR_SHARE and d.max_weight_share < 1 / n:
        raise ConfigError(
            f"defense.max_weight_share={d.max_weight_share!r}: below 1/n = 1/{n}, the share the largest claim "
            f"of a round of {n} clients always reaches: every round would reject it (all of them, when equal)"
        )
    from fedrec.defenses import DEFENSES, make_defense

    defense = make_defense(d.name, d.params, d.pre)
    try:  # the rule once at this n and f: what no tiny test problem shows (MDA's C(n, f) subsets)
        defense.try_params(n=n, f=min(f, max(0, (n - 1) // 2)))
    except ValueError as err:
        raise ConfigError(f"defense.name={d.name!r}: {err}") from None
    defense.fewest(f)  # found now (cached per process), not in round 1
    rule = _f_rule(d.name)
    if rule is None:
        return
    least = DEFENSES[d.name].spec.min_n(f)
    need = f"n >= {least}"
    if n >= least and 2 * f < n:
        return
    if d.f is not None:
        where = f"defense.f={d.f}"
    else:
        key = "defense.assumed_fraction" if d.assumed_fraction is not None else "attack.fraction"
        fraction = d.assumed_fraction if d.assumed_fraction is not None else cfg.attack.fraction
        where = f"{key}={fraction!r} (f = {f})"
    raise ConfigError(
        f"{where}: defense {d.name!r} needs f < n/2 and {need}, but a round has n = {n} clients "
        "(federated.fraction of the clients), so every upload would be rejected"
    )
