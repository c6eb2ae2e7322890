"""How far each upload's gradient is from the one its client honestly computed: the size of an attack.

A Byzantine upload is only as harmful (and as detectable) as the gradient it makes the server
reconstruct differs from the client's own honest gradient. Gradient ascent moves it by ``2 |g|``; the
camouflage attack (paper 000 Eq. 8) only on the coordinates where Adam's update has a second root, so
late in a run many camouflage uploads equal the honest ones. The detection records carry this
distance so that detection rates can be read against what there was to detect.
"""

from __future__ import annotations

import torch

from fedrec.defenses.spaces import rows_of, uploaded
from fedrec.federation import forged_native
from fedrec.protocol import ServerState, UploadBatch

Tensor = torch.Tensor


def segment_sq_norms(owner: Tensor, values: Tensor, n: int) -> Tensor:
    """``[n]`` float64: per client the squared norm of its rows (``owner[k]`` owns ``values[k]``); one C
    loop on the CPU (``forged_native.sq_norms``, equal to this torch way to float64 round-off)."""
    out = forged_native.sq_norms(owner, values, n)
    if out is not None:
        return out
    sq = values.to(torch.float64).pow(2).sum(1)
    return torch.zeros(n, dtype=torch.float64, device=values.device).index_add_(0, owner, sq)


def forged_distance(
    server: ServerState, rule, t: int, uploads: UploadBatch, ptr: Tensor, rows: Tensor, g: Tensor,
    rec: Tensor | None = None, pick: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """``[b]`` float64 ``|g~_i - g_i|``: ``g~_i`` the gradient the server reconstructs from upload ``i``
    (paper 000 Eq. 2 for Adam; zero at unlisted rows), ``g_i`` client ``i``'s own honest gradient
    (``rows[ptr[i]:ptr[i+1]]``, zero elsewhere). Both row lists are sorted within each client.
    ``pick``: the uploads of ``uploads`` to measure, in order (``uploads.take(pick)``, without the copy
    where the C pass applies).

    One C pass where it applies (fedrec.federation.forged_native: the rows merged, float64 sums in fixed
    lanes), else ``torch_distance``: ``|g~|^2`` in total, less ``|g~|^2`` at the client's own rows,
    plus ``|g~ - g|^2`` there; the two agree to float64 round-off.
    ``rec``: ``g~`` at ``uploads.rows`` when the server already reconstructed it (its rule check)."""
    if rec is None:
        if pick is not None:
            uploads, pick = uploads.take(pick), None
        rec = rule.reconstruct(rows_of(server, uploads.rows), uploaded(uploads), t)
    made = forged_native.distances(uploads.ptr, uploads.rows, rec, ptr, rows, g, pick)
    if made is not None:  # one C pass (fedrec.federation.forged_native)
        return made
    if pick is not None:
        with_rec = UploadBatch(uploads.client_ids, uploads.ptr, uploads.rows, rec, {}, uploads.n_examples)
        with_rec = with_rec.take(pick)
        uploads, rec = with_rec, with_rec.theta
    return torch_distance(uploads.n, server.n_rows, uploads.owner(), uploads.rows, rec, ptr, rows, g)


def torch_distance(
    b: int, n_rows: int, up_owner: Tensor, up_rows: Tensor, rec: Tensor, ptr: Tensor, rows: Tensor, g: Tensor
) -> Tensor:
    """``forged_distance``'s sums in torch operations (where the C pass does not apply)."""
    rec = rec.to(torch.float64)
    own_owner = torch.repeat_interleave(
        torch.arange(b, device=rows.device), ptr.diff(), output_size=rows.shape[0]
    )
    g = g.to(torch.float64)
    total = segment_sq_norms(up_owner, rec, b)
    if rec.shape[0] == 0:
        return (total + segment_sq_norms(own_owner, g, b)).sqrt()
    key_up = up_owner * n_rows + up_rows
    key_own = own_owner * n_rows + rows
    pos = torch.searchsorted(key_up, key_own).clamp(max=key_up.shape[0] - 1)
    hit = (key_up[pos] == key_own)[:, None]
    at_own = torch.where(hit, rec[pos], 0.0)
    total = total - segment_sq_norms(own_owner, at_own, b) + segment_sq_norms(own_owner, at_own - g, b)
    return total.clamp(min=0).sqrt()
