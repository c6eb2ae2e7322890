"""Checkpoint I/O: the run's state, its checksum and the identity of the run, in one file.

``checkpoint.pt`` (format 1) is::

    b"fedrec-checkpoint 1\\n"
    {"sha256": ..., "identity_bytes": M, "payload_bytes": N}\\n    one line of JSON
    M bytes: the identity, JSON (dataset, model, dim, seeds, config hash, the resolved config)
    N bytes: the state dict, serialized by torch.save

``sha256`` is over the identity bytes followed by the payload, so a flipped or missing byte anywhere
after the header line is caught before anything is unpickled, and the payload is only ever read with
``torch.load(weights_only=True)`` (no code runs, whatever the file holds). Every error is one line.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from fedrec.config import Config, ConfigError
from fedrec.runs import _atomic

MAGIC = b"fedrec-checkpoint 1\n"
CHECKPOINT = "checkpoint.pt"
# keys that say where a run lives or runs, not what it computes (run.device, run.threads, run.compile and
# run.deferred change float rounding, not the algorithm): editing them must not block a resume
NOT_IDENTITY = (
    "run.out_dir", "run.name", "run.device", "run.threads", "run.compile", "run.deferred", "data.data_dir",
)  # fmt: skip
# keys added after checkpoint format 1, with the value every earlier run had: they join the identity
# only when set to something else, so a checkpoint written before they existed still resumes
LATER_KEYS: dict[str, Any] = {
    "federated.client_rng": "shared", "defense.pre": None, "federated.local_batch": None,
    "federated.variance_reduction": "none", "federated.fixed_negatives": False,
}  # fmt: skip
# test hook (the kill campaign only): seconds to pause halfway through writing checkpoint.pt.tmp, so a
# SIGKILL can be aimed at a checkpoint write
DELAY_ENV = "FEDREC_CHECKPOINT_WRITE_DELAY"
_MAX_HEADER = 4096


class CheckpointError(ConfigError):
    """A checkpoint that is corrupt, not a fedrec checkpoint, or from another run; ``str`` is one line."""


def resolved_config(cfg: Config) -> dict[str, Any]:
    """The config as a flat ``{"section.key": value}``, without the :data:`NOT_IDENTITY` keys."""
    flat = {f"{s}.{k}": v for s, section in cfg.to_dict().items() for k, v in section.items()}
    return {
        k: v
        for k, v in flat.items()
        if k not in NOT_IDENTITY and not (k in LATER_KEYS and v == LATER_KEYS[k])
    }


def run_identity(cfg: Config) -> dict[str, Any]:
    """What a checkpoint must match to be resumed under ``cfg``; ``config`` lets a mismatch name keys."""
    config = resolved_config(cfg)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    return {
        "dataset": cfg.data.dataset,
        "model": cfg.model.name,
        "dim": cfg.model.dim,
        "seeds": {"train": cfg.train.seed, "split": cfg.data.split_seed, "attack": cfg.attack.seed},
        "config_sha256": digest,
        "config": config,
    }


def save_checkpoint(path: Path, state_dict: dict[str, Any], identity: dict[str, Any]) -> None:
    """Write ``state_dict`` with its checksum and ``identity`` to ``path`` atomically (tmp + replace)."""
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    payload = buf.getvalue()
    ident = json.dumps(identity, sort_keys=True).encode()
    meta = {
        "sha256": hashlib.sha256(ident + payload).hexdigest(),
        "identity_bytes": len(ident),
        "payload_bytes": len(payload),
    }
    head = MAGIC + json.dumps(meta).encode() + b"\n" + ident
    try:
        delay = max(0.0, min(float(os.environ.get(DELAY_ENV) or 0), 5.0))  # a stray value must not stop a run
    except ValueError:
        delay = 0.0

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(head)
            fh.write(payload[: len(payload) // 2])
            if delay > 0:
                fh.flush()
                time.sleep(delay)
            fh.write(payload[len(payload) // 2 :])

    _atomic(Path(path), write)


def load_checkpoint(
    path: Path, identity: dict[str, Any] | None = None, *, legacy: bool = False
) -> dict[str, Any]:
    """The state dict in ``path``, after checking its checksum and (unless None) that it was written by
    the run ``identity`` describes; raises :class:`CheckpointError` with one line otherwise.

    ``legacy``: also read a bare torch.save file (fedrec before format 1) with weights_only=True, with
    nothing to verify: for read-only evaluation of old runs, never for a resume."""
    path = Path(path)
    data = path.read_bytes()
    if not data:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint")
    if legacy and data.startswith(b"PK\x03\x04"):  # torch.save's zip container
        return _torch_load(path, data)
    if not data.startswith(MAGIC):
        raise CheckpointError(
            f"{path}: not a fedrec checkpoint (format 1): no header; refusing to unpickle it"
        )
    end = data.find(b"\n", len(MAGIC), len(MAGIC) + _MAX_HEADER)
    try:
        meta = json.loads(data[len(MAGIC) : end]) if end > 0 else None
        n_ident, n_payload, digest = meta["identity_bytes"], meta["payload_bytes"], meta["sha256"]
        ok = isinstance(n_ident, int) and isinstance(n_payload, int) and isinstance(digest, str)
    except (ValueError, TypeError, KeyError):
        ok = False
    if not ok:
        raise CheckpointError(f"{path}: corrupt checkpoint (unreadable header)")
    body = data[end + 1 :]
    if len(body) != n_ident + n_payload:
        raise CheckpointError(
            f"{path}: corrupt checkpoint (truncated or padded: {len(body)} bytes after the header, "
            f"expected {n_ident + n_payload})"
        )
    if hashlib.sha256(body).hexdigest() != digest:
        raise CheckpointError(f"{path}: corrupt checkpoint (sha256 mismatch)")
    try:
        stored = json.loads(body[:n_ident])
    except ValueError:
        stored = None
    if not isinstance(stored, dict):
        raise CheckpointError(f"{path}: corrupt checkpoint (unreadable identity)")
    if identity is not None:
        _check_identity(path, stored, identity)
    return _torch_load(path, body[n_ident:])


def _torch_load(path: Path, blob: bytes) -> dict[str, Any]:
    try:
        return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as e:  # past a valid checksum: the file was crafted to hold this
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: checkpoint payload refused by torch.load(weights_only=True): {first}"
        ) from None


def _check_identity(path: Path, stored: dict[str, Any], identity: dict[str, Any]) -> None:
    if stored.get("config_sha256") == identity["config_sha256"]:
        return
    old, new = stored.get("config") or {}, identity["config"]
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k, "<unset>") != new.get(k, "<unset>"))
    shown = ", ".join(
        f"{k} (checkpoint {old.get(k, '<unset>')!r}, now {new.get(k, '<unset>')!r})" for k in keys
    )
    raise CheckpointError(
        f"{path}: checkpoint is from another run: config.yaml differs in {shown or 'its config hash'}; "
        "restore config.yaml or start a new run"
    )
