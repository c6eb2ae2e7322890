"""Server aggregation, exact and sparse (DESIGN.md section 5; paper 000 Algorithm 1).

With accepted set F and weights ``w_i = n_i / sum_F n_j``, every global quantity X (theta and each
optimizer state) becomes the weighted mean of the uploaded dense tensors. Unlisted rows of an upload
equal the default ``D = default_rows(state, t)``, so

    X_new = D + sum_{i in F} w_i * scatter(rows_i, X_i - D[rows_i])

which is one dense pass over the table plus O(sum_i k_i d) work, for any upload, honest or not.
"""

from __future__ import annotations

import torch

from fedrec.protocol import ServerState, UploadBatch


def aggregation_weights(n_examples: torch.Tensor, accepted: torch.Tensor) -> torch.Tensor:
    """``w_i = n_i / sum_{j in F} n_j`` for accepted uploads, 0 for the rest (Algorithm 1)."""
    zero = torch.zeros((), dtype=torch.float64, device=n_examples.device)
    n = torch.where(accepted, n_examples.to(torch.float64), zero)
    total = n.sum()
    return torch.where(total > 0, n / total.clamp(min=1e-300), n)


def aggregate(server: ServerState, uploads: UploadBatch, weights: torch.Tensor, rule, t: int) -> ServerState:
    """The round-``t`` global state from the uploads with the given weights (zero weight = ignored).

    ``weights`` must sum to 1 over the accepted uploads; when all are 0 the caller keeps the old state.
    """
    prev = {"theta": server.theta, **server.state}
    default = rule.default_rows(prev, t)
    w = weights.to(server.theta.dtype)[uploads.owner()][:, None]
    new = {}
    for key, D in default.items():
        if D.data_ptr() == prev[key].data_ptr():
            D = (
                D.clone()
            )  # a rule may return the global tensor itself (e.g. AdaGrad's r); never write into it
        X = uploads.theta if key == "theta" else uploads.state[key]
        delta = (X.to(D.dtype) - D.index_select(0, uploads.rows)) * w
        new[key] = D.index_add_(0, uploads.rows, delta)
    theta = new.pop("theta")
    return ServerState(theta=theta, state=new, t=t)


def apply_decision(server: ServerState, uploads: UploadBatch, decision, rule, t: int) -> ServerState:
    """The round-``t`` state a defense's decision gives: the weighted mean over its accepted uploads,
    or the coordinate-wise aggregate it computed; with nothing accepted the state stays as it was
    (only the round counter moves), so rejected uploads can never touch it."""
    if decision.aggregate is not None:
        default = rule.default_rows({"theta": server.theta, **server.state}, t)
        new = {}
        for key, D in default.items():
            D = (
                D.clone()
                if D.data_ptr() == (server.theta if key == "theta" else server.state[key]).data_ptr()
                else D
            )
            rows, delta = decision.aggregate[key]
            new[key] = D.index_add_(0, rows, delta.to(D.dtype))
        theta = new.pop("theta")
        return ServerState(theta=theta, state=new, t=t)
    if not bool(decision.accepted.any()):  # one host sync per round, on the defended path only
        return ServerState(theta=server.theta, state=server.state, t=t)
    keep = decision.accepted
    return aggregate(server, uploads.select(keep), decision.weights[keep], rule, t)
