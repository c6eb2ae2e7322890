"""Server aggregation, exact and sparse (DESIGN.md section 5; paper 000 Algorithm 1).

With accepted set F and weights ``w_i = n_i / sum_F n_j``, every global quantity X (theta and each
optimizer state) becomes the weighted mean of the uploaded dense tensors. Unlisted rows of an upload
equal the default ``D = default_rows(state, t)``, so

    X_new = D + sum_{i in F} w_i * scatter(rows_i, X_i - D[rows_i])

which is one dense pass over the table plus O(sum_i k_i d) work, for any upload, honest or not.
"""

from __future__ import annotations

import torch

from fedrec.federation.scatter import scatter_terms
from fedrec.optim.fused import default_pass
from fedrec.protocol import ServerState, UploadBatch


def aggregation_weights(n_examples: torch.Tensor, accepted: torch.Tensor) -> torch.Tensor:
    """``w_i = n_i / sum_{j in F} n_j`` for accepted uploads, 0 for the rest (Algorithm 1)."""
    zero = torch.zeros((), dtype=torch.float64, device=n_examples.device)
    n = torch.where(accepted, n_examples.to(torch.float64), zero)
    total = n.sum()
    return torch.where(total > 0, n / total.clamp(min=1e-300), n)


def aggregate(
    server: ServerState, uploads: UploadBatch, weights: torch.Tensor, rule, t: int, fused: bool = False
) -> ServerState:
    """The round-``t`` global state from the uploads with the given weights (zero weight = ignored).

    ``weights`` must sum to 1 over the accepted uploads; when all are 0 the caller keeps the old state.
    ``fused``: as ``apply_decision``'s.
    """
    return _aggregated(server, [(uploads, weights, 0)], rule, t, server.n_rows, fused=fused)


def apply_decision(
    server: ServerState, uploads: UploadBatch, decision, rule, t: int, fused: bool = False
) -> ServerState:
    """The round-``t`` state a defense's decision gives: the weighted mean over its accepted uploads,
    or the coordinate-wise aggregate it computed; with nothing accepted the state stays as it was
    (only the round counter moves), so rejected uploads can never touch it. ``fused``: the default
    pass compiled (``run.compile``; fedrec.optim.fused.DefaultPass)."""
    if decision.aggregate is None and not bool(decision.accepted.any()):  # a host sync, defended path only
        return server.advanced(t)
    if decision.aggregate is None:
        # the accepted uploads' terms folded into the C default pass, read in place (no selection copy);
        # deferred: the listed rows alone, in place
        folded = (
            _folded(server, uploads, decision.weights, rule, t, fused, decision.accepted)
            if server.deferred is None
            else _written_deferred(server, uploads, decision.weights, t, decision.accepted)
        )
        if folded is not None:
            return folded
    return apply_decisions(server, [(uploads, decision)], rule, t, server.n_rows, fused)


def _folded(
    server: ServerState, uploads: UploadBatch, weights: torch.Tensor, rule, t: int, fused: bool,
    keep: torch.Tensor | None = None,
) -> ServerState | None:  # fmt: skip
    """``X_new = D + scatter(...)`` for one run's weighted uploads (those of ``keep``, all where None) in one
    C loop (``DefaultPass.with_terms``: the default pass with the terms added at each listed row); None
    where that loop does not apply."""
    prev = {"theta": server.theta, **server.state}
    X = {"theta": uploads.theta, **uploads.state}
    # outside the round's inference mode: the new tables are ordinary tensors (see _aggregated)
    with torch.inference_mode(False):
        new = default_pass(rule, fused).with_terms(
            prev, t, uploads.rows, uploads.owner(), weights.to(server.dtype), X, keep
        )
    if new is None:
        return None
    theta = new.pop("theta")
    return ServerState(theta=theta, state=new, t=t)


def _written_deferred(
    server: ServerState, uploads: UploadBatch, weights: torch.Tensor, t: int, keep: torch.Tensor | None = None
) -> ServerState | None:
    """``_aggregated_deferred`` for one run's weighted uploads (those of ``keep``, all where None) in one C
    loop in place (``DeferredStore.write_terms``); None where that loop does not apply."""
    server.require_current()  # the round writes in place: a what-if round must step a clone()
    store = server.deferred
    X = {"theta": uploads.theta, **uploads.state}
    if not store.write_terms(t, uploads.rows, uploads.owner(), weights.to(server.dtype), X, keep):
        return None
    return store.state(t)


def apply_decisions(
    server: ServerState, parts, rule, t: int, n_rows: int, fused: bool = False
) -> ServerState:
    """``apply_decision`` for a stack of runs (fedrec.federation.stacked): run ``r``'s tables are rows
    ``r * n_rows ..`` of ``server``'s, ``parts[r] = (uploads, decision)`` in its own rows. One dense
    default pass over the stacked tables and one scatter; a run that accepted nothing keeps its old
    block. Each block is what ``apply_decision`` gives its run alone: the same element-wise pass, and
    ``index_add_`` adds each row's terms in the run's own upload order."""
    pieces, keep_old = [], []
    for r, (uploads, decision) in enumerate(parts):
        if decision.aggregate is not None:
            if len(parts) > 1:  # alone, index_add_ refuses a row past the table; stacked it is another run's
                for rows, _ in decision.aggregate.values():
                    if rows.numel() and not (int(rows.min()) >= 0 and int(rows.max()) < n_rows):
                        raise IndexError(f"a coordinate-wise aggregate lists a row outside [0, {n_rows})")
            pieces.append((None, decision.aggregate, r * n_rows))
        elif bool(decision.accepted.any()):  # a host sync, as apply_decision's
            keep = decision.accepted
            pieces.append((uploads.select(keep), decision.weights[keep], r * n_rows))
        else:
            keep_old.append(r)
    return _aggregated(server, pieces, rule, t, n_rows, keep_old, fused)


def _aggregated(
    server: ServerState, pieces, rule, t: int, n_rows: int, keep_old=(), fused: bool = False
) -> ServerState:
    """``X_new = D + scatter(...)`` (the module docstring) for pieces ``(uploads, weights, offset)``
    (the weighted mean of accepted uploads) or ``(None, {key: (rows, delta)}, offset)`` (a
    coordinate-wise aggregate), their rows moved by ``offset``; blocks ``keep_old`` keep the old state."""
    if server.deferred is not None:
        if keep_old or n_rows != server.n_rows:
            raise ValueError("a deferred state aggregates one run (runs stacked in one table are dense)")
        return _aggregated_deferred(server, pieces, rule, t)
    if len(pieces) == 1 and pieces[0][0] is not None and pieces[0][2] == 0 and not keep_old:
        # one run's weighted uploads: the default pass and the scatter in one C loop, where it applies
        folded = _folded(server, pieces[0][0], pieces[0][1], rule, t, fused)
        if folded is not None:
            return folded
    prev = {"theta": server.theta, **server.state}
    # outside the round's inference mode (a few large operations: nothing to save), so the new tables
    # are ordinary tensors: torch counts writes into them (run_attack refuses an attack that wrote) and
    # a user may differentiate through them
    with torch.inference_mode(False):
        default = default_pass(rule, fused)(prev, t)
        new = {}
        for key, D in default.items():
            # a rule may return the global tensor itself (e.g. AdaGrad's r); never write into it
            if D.data_ptr() == prev[key].data_ptr() or D.is_inference():
                D = D.clone()
            _add_terms(D, pieces, key, server.dtype, lambda idx, offset: idx + offset if offset else idx)
            for r in keep_old:
                D[r * n_rows : (r + 1) * n_rows] = prev[key][r * n_rows : (r + 1) * n_rows]
            new[key] = D
    theta = new.pop("theta")
    return ServerState(theta=theta, state=new, t=t)


def _aggregated_deferred(server: ServerState, pieces, rule, t: int) -> ServerState:
    """``_aggregated`` on a deferred state (fedrec.federation.deferred): the default ``D`` and the
    scatter at the listed rows only, written in place; every other row takes round ``t``'s default
    pass when it is next read. The same terms added in the same order as the dense way."""
    if len(pieces) == 1 and pieces[0][0] is not None:
        written = _written_deferred(server, pieces[0][0], pieces[0][1], t)
        if written is not None:
            return written
    server.require_current()  # the round writes in place: a what-if round must step a clone()
    store = server.deferred
    listed = []
    for uploads, weights, _ in pieces:
        if uploads is None:
            listed.extend(idx for idx, _ in weights.values())
        else:
            listed.append(uploads.rows)
    rows = torch.unique(torch.cat(listed))
    default = store.gather_for_round(rows, t)
    for key, D in default.items():  # D holds the listed rows only: a table row's place is its rank
        _add_terms(D, pieces, key, server.dtype, lambda idx, _: torch.searchsorted(rows, idx))
    store.write(rows, default, t)
    return store.state(t)


def _add_terms(D: torch.Tensor, pieces, key: str, dtype: torch.dtype, place) -> None:
    """``D += scatter(...)`` for one key (the module docstring): each piece's terms, a weighted upload's
    ``w_i (X_i - D)`` or a coordinate-wise aggregate's deltas, added at ``place(rows, offset)``, the
    rows of ``D`` its table rows are (one ``index_add_``: the terms of a row in piece order)."""
    if len(pieces) == 1 and pieces[0][0] is not None:  # one weighted piece: one C loop where it applies
        uploads, weights, offset = pieces[0]
        X = uploads.theta if key == "theta" else uploads.state[key]
        idx = place(uploads.rows, offset)
        if X.dtype == D.dtype and scatter_terms(D, idx, uploads.owner(), weights.to(dtype), X):
            return
    rows, deltas = [], []
    for uploads, weights, offset in pieces:
        if uploads is None:  # a coordinate-wise aggregate: rows and deltas per key
            idx, delta = weights[key]
            idx, delta = place(idx, offset), delta.to(D.dtype)
        else:
            idx = place(uploads.rows, offset)
            w = weights.to(dtype)[uploads.owner()][:, None]
            X = uploads.theta if key == "theta" else uploads.state[key]
            delta = (X.to(D.dtype) - D.index_select(0, idx)) * w
        rows.append(idx)
        deltas.append(delta)
    if len(rows) == 1:
        D.index_add_(0, rows[0], deltas[0])
    elif rows:
        D.index_add_(0, torch.cat(rows), torch.cat(deltas))
