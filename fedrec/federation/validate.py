"""Server hardening: every upload is checked before it can touch the global state.

Shape and dtype checks run on single ``Upload`` messages as they arrive (metadata only); the value
checks run on the concatenated ``UploadBatch`` with segment operations (no loop over clients). A
rejected upload gets a reason code (``fedrec.protocol.REASONS``) and is dropped from the batch, so the
global state is exactly what the accepted uploads give.
"""

from __future__ import annotations

import torch

from fedrec.protocol import REASONS, Upload, UploadBatch

CODE = {name: i for i, name in enumerate(REASONS)}


def shape_error(up: Upload, n_rows: int, d: int, state_names: tuple[str, ...]) -> str:
    """Why a single upload is malformed, or "" (checked before batching: O(1) per upload)."""
    rows = up.rows
    if not isinstance(rows, torch.Tensor) or rows.dim() != 1 or rows.dtype != torch.int64:
        return "rows must be a 1-D int64 tensor"
    k = rows.shape[0]
    tensors = {"theta": up.theta, **(up.state or {})}
    if set(tensors) != {"theta", *state_names}:
        return f"expected state {sorted(state_names)}, got {sorted(up.state or {})}"
    for name, x in tensors.items():
        if not isinstance(x, torch.Tensor) or x.shape != (k, d) or not x.is_floating_point():
            return f"{name} must be a float tensor of shape ({k}, {d})"
    if not isinstance(up.n_examples, int) or isinstance(up.n_examples, bool):
        return "n_examples must be an int"
    del n_rows  # row ranges are value checks, done on the batch
    return ""


def collect(
    uploads: list[Upload], n_rows: int, d: int, state_names: tuple[str, ...], device: torch.device, dtype
) -> tuple[UploadBatch, torch.Tensor]:
    """Batch single uploads, replacing malformed ones by empty placeholders so positions still match
    the sampled clients; returns the batch and the per-upload reason codes (shape errors only)."""
    ok, codes = [], []
    for up in uploads:
        bad = shape_error(up, n_rows, d, state_names)
        codes.append(CODE["shape"] if bad else 0)
        if bad:
            empty = torch.zeros(0, d, dtype=dtype, device=device)
            up = Upload(
                up.client_id if isinstance(up.client_id, int) else -1,
                torch.zeros(0, dtype=torch.int64, device=device),
                empty,
                {k: empty for k in state_names},
                0,
            )
        ok.append(up)
    batch = UploadBatch.from_uploads(ok, d, state_names, device=device)
    batch.theta = batch.theta.to(dtype)
    batch.state = {k: v.to(dtype) for k, v in batch.state.items()}
    return batch, torch.tensor(codes, dtype=torch.int64, device=device)


def _per_upload_any(flags: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.int64, device=flags.device).index_add_(0, owner, flags.long()) > 0


def validate(
    uploads: UploadBatch,
    *,
    n_rows: int,
    max_examples: int,
    max_weight_share: float = 0.9,
    min_uploads_for_share: int = 5,
    codes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reason codes ``[n]`` (0 = valid) for every upload of the batch, first failing check wins:
    non-finite values, rows out of ``[0, n_rows)``, rows not strictly increasing within an upload,
    ``n_examples < 1``, ``n_examples > max_examples`` (a client cannot hold more positives than the
    catalog has items), and a share of the valid uploads' total ``n_examples`` above
    ``max_weight_share`` (checked only in rounds with at least ``min_uploads_for_share`` uploads, so a
    small honest round is not penalised for one heavy user)."""
    n = uploads.n
    device = uploads.rows.device
    owner = uploads.owner()
    code = torch.zeros(n, dtype=torch.int64, device=device) if codes is None else codes.clone()

    def mark(flag: torch.Tensor, name: str) -> None:
        code.copy_(torch.where((code == 0) & flag, CODE[name], code))

    finite = torch.isfinite(uploads.theta).all(1)
    for x in uploads.state.values():
        finite &= torch.isfinite(x).all(1)
    mark(_per_upload_any(~finite, owner, n), "non-finite")
    mark(_per_upload_any((uploads.rows < 0) | (uploads.rows >= n_rows), owner, n), "row-out-of-range")
    same = owner[1:] == owner[:-1]
    mark(
        _per_upload_any(same & (uploads.rows[1:] <= uploads.rows[:-1]), owner[1:], n),
        "rows-unsorted-or-duplicated",
    )
    ne = uploads.n_examples
    mark(ne < 1, "n-examples-invalid")
    mark(ne > max_examples, "n-examples-absurd")
    valid = code == 0
    total = torch.where(valid, ne, torch.zeros_like(ne)).sum()
    share = ne.double() / total.clamp(min=1).double()
    enough = valid.sum() >= min_uploads_for_share
    mark(enough & (share > max_weight_share), "weight-share")
    return code
