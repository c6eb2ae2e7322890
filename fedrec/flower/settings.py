"""Flower's run config -> fedrec's ``Config`` and the deployment's own knobs.

A Flower app's run config is flat (``[tool.flwr.app.config]`` nested tables join with dots), so every
fedrec config key is a run-config key of the same name (``federated.rounds``, ``attack.params.scale``,
``defense.name``); ``flower.config`` names a fedrec YAML file read first; the ``flower.*`` keys are the
deployment's (round timeout, how many nodes to wait for, a run directory to resume).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedrec.config import Config, ConfigError, load_config, load_yaml, validate

SECTIONS = tuple(f.name for f in dataclasses.fields(Config))


@dataclass(frozen=True)
class FlowerOptions:
    """``round_timeout``: seconds the server waits for a round's replies; the clients of the nodes that
    did not reply are recorded ``no-reply`` and the round goes on with the replies that came.
    ``min_nodes``: SuperNodes to wait for before round 1 (at most ``node_wait`` seconds).
    ``resume``: a run directory to continue from its checkpoint ("" starts a new run).
    ``num_partitions``: the SuperNodes' ``num-partitions`` (0: ``min_nodes``); the server accepts a
    node's claim only for a partition of this many, so no node can declare itself everyone's."""

    round_timeout: float = 120.0
    min_nodes: int = 1
    node_wait: float = 120.0
    resume: str = ""
    num_partitions: int = 0

    @property
    def partitions(self) -> int:
        return self.num_partitions or self.min_nodes

    def __post_init__(self) -> None:
        for name in ("round_timeout", "node_wait"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not (0 < v < math.inf):
                raise ConfigError(f"flower.{name.replace('_', '-')}={v!r}: must be a finite number > 0")
        if isinstance(self.min_nodes, bool) or not isinstance(self.min_nodes, int) or self.min_nodes < 1:
            raise ConfigError(f"flower.min-nodes={self.min_nodes!r}: must be a positive integer")
        n = self.num_partitions
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"flower.num-partitions={n!r}: must be an integer >= 0 (0: flower.min-nodes)")


def from_run_config(run_config: dict[str, Any]) -> tuple[Config, FlowerOptions]:
    """The fedrec config and the deployment options a run config describes (``ConfigError``, one line,
    on an unknown key or a bad value). The run is federated and draws per client: a SuperNode holds only
    its own clients, so nothing may depend on who else was sampled (``federated.client_rng``)."""
    opts: dict[str, Any] = {}
    fedrec_keys: dict[str, Any] = {}
    path = None
    for key, value in run_config.items():
        head, _, rest = key.partition(".")
        if head == "flower":
            if rest == "config":
                path = value or None
            elif rest.replace("-", "_") in {f.name for f in dataclasses.fields(FlowerOptions)}:
                opts[rest.replace("-", "_")] = value
            else:
                raise ConfigError(f"unknown run-config key {key!r}")
        elif head in SECTIONS:
            fedrec_keys[key] = value
        else:
            raise ConfigError(f"unknown run-config key {key!r}: expected flower.* or a fedrec config key")
    cfg = load_config(Path(path)) if path else Config()
    for key, value in fedrec_keys.items():
        cfg.set(key, value)
    cfg.train.mode = "federated"
    cfg.federated.client_rng = "per-client"
    return validate(cfg, mode="federated"), FlowerOptions(**opts)


def config_from_yaml(text: str, local: dict[str, Any] | None = None) -> Config:
    """The config the server sent (its resolved ``config.yaml``), validated: a SuperNode computes with
    exactly the server's config, whatever its own run config says. ``local``: the node's own values of
    keys that say where things are, not what is computed (``data.data_dir``, ``run.device``; the
    node writes no run directory, so ``run.out_dir`` is its temporary folder)."""
    doc = load_yaml(text)
    if not isinstance(doc, dict):
        raise ConfigError("the server's config is not a mapping of sections")
    cfg = Config()
    for section, values in doc.items():
        if not isinstance(values, dict):
            raise ConfigError(f"the server's config: section {section!r} is not a mapping")
        for key, value in values.items():
            cfg.set(f"{section}.{key}", value)
    import tempfile

    from fedrec.federation.checkpoint import NOT_IDENTITY

    cfg.run.out_dir = tempfile.gettempdir()
    for key, value in (local or {}).items():
        if key not in NOT_IDENTITY:
            raise ConfigError(f"{key}: a node may set only {', '.join(NOT_IDENTITY)}")
        cfg.set(key, value)
    return validate(cfg, mode="federated")
