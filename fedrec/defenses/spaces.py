"""What a defense looks at (DESIGN.md section 6): per client a sparse vector over the listed rows.

- ``gradient``: the gradient each upload implies, reconstructed from the uploaded moments (paper 000
  Eq. 2 for Adam: ``g = (m - b1 m_bar) / (1 - b1)``; Appendices C-E for the other rules). Unlisted rows
  carry g = 0 exactly. This is A-RFRS's space.
- ``theta``: the uploaded parameters as deltas from the default ``D`` (what a zero gradient gives):
  the space of paper 000's Krum / RFA / Trmean baselines and of Flower's Krum.
- ``momentum``: the first state tensor (Adam's m, momentum's m, AdaGrad/RMSProp's r) as deltas
  (RESAM's space).
- ``upload``: theta and every state tensor side by side, as deltas.

Deltas from a common default make every unlisted row exactly zero, and translation-invariant or
coordinate-wise rules give the same answer on deltas as on the dense uploads.
"""

from __future__ import annotations

import torch

from fedrec.defenses.vectors import ClientVectors
from fedrec.optim import adam_pass
from fedrec.protocol import ServerState, UploadBatch

SPACES = ("gradient", "theta", "momentum", "upload")


def rows_of(server: ServerState, rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """The global values at ``rows`` (the ``prev`` of the optimizer rule)."""
    return server.rows_at(rows)


def uploaded(uploads: UploadBatch) -> dict[str, torch.Tensor]:
    return {"theta": uploads.theta, **uploads.state}


def space_vectors(
    space: str, server: ServerState, uploads: UploadBatch, rule, t: int, grads: torch.Tensor | None = None
) -> ClientVectors:
    """The uploads seen in ``space``, one sparse vector per upload (same order). ``grads``: the
    gradients already reconstructed at ``uploads.rows`` (the server's rule check), else computed."""
    n_rows = server.n_rows
    if space == "gradient" and grads is not None:
        return ClientVectors(ptr=uploads.ptr, rows=uploads.rows, values=grads, n_rows=n_rows)
    if space == "theta":  # Adam on the CPU: one C loop reads the listed rows in place (adam_pass)
        tables, at = server.tables_for(uploads.rows)
        values = adam_pass.adam_theta_deltas(rule, tables, t, at, uploads.theta)
        if values is not None:
            return ClientVectors(ptr=uploads.ptr, rows=uploads.rows, values=values, n_rows=n_rows)
    prev = rows_of(server, uploads.rows)
    up = uploaded(uploads)
    if space == "gradient":
        values = rule.reconstruct(prev, up, t)
    else:
        default = rule.default_rows(prev, t)
        keys = {"theta": ["theta"], "momentum": list(rule.state_names[:1]), "upload": list(rule.keys)}.get(
            space
        )
        if not keys:
            raise ValueError(
                f"space {space!r}: expected one of {', '.join(SPACES)} (momentum needs a stateful rule)"
            )
        values = torch.cat([up[k].to(default[k].dtype) - default[k] for k in keys], dim=1)
    return ClientVectors(ptr=uploads.ptr, rows=uploads.rows, values=values, n_rows=n_rows)


def listed_only(uploads: UploadBatch, n_rows: int) -> ClientVectors:
    """The uploads' rows with zero-width values: what a rule that does not read values
    (``RuleSpec.reads_values``) is given, at no cost."""
    return ClientVectors(ptr=uploads.ptr, rows=uploads.rows, values=uploads.theta[:, :0], n_rows=n_rows)


def delta_vectors(key: str, server: ServerState, uploads: UploadBatch, rule, t: int) -> ClientVectors:
    """One uploaded quantity (``theta`` or a state name) as deltas from its default."""
    prev = rows_of(server, uploads.rows)
    default = rule.default_rows(prev, t)[key]
    values = uploaded(uploads)[key].to(default.dtype) - default
    return ClientVectors(ptr=uploads.ptr, rows=uploads.rows, values=values, n_rows=server.n_rows)
