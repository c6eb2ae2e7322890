"""The literal dense reference of paper 000 Algorithms 1-2 (and their other-optimizer variants).

One client at a time, dense tensors everywhere: each client differentiates its loss w.r.t. the whole
table, applies the optimizer rule to every row, and the server takes the n_i-weighted mean of the
dense messages. Slow by design; used only by tests and benchmarks to check the fast sparse engine.
"""

from __future__ import annotations

import torch

from fedrec.models import CSRTensors, TableLayout, bpr_objective, gather_users
from fedrec.models.fism import fism_pair_scores
from fedrec.models.mf import mf_pair_scores
from fedrec.protocol import ServerState, UploadBatch


def reference_client(
    server: ServerState,
    rule,
    layout: TableLayout,
    train: CSRTensors,
    client: int,
    neg: torch.Tensor,
    t: int,
    *,
    gamma: float,
    lam: float,
    user_vector: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, int]:
    """Algorithm 2 for one client: g = grad of its loss at theta_bar (dense), then the rule on every
    row. Returns the dense message, the private user-vector gradient (MF) and n_i."""
    theta = server.theta.detach().clone().requires_grad_(True)
    batch = gather_users(train, torch.tensor([client], device=server.theta.device))
    u = None if user_vector is None else user_vector.detach().clone()[None].requires_grad_(True)
    loss = bpr_objective(lambda o, r: theta[r], layout, batch, neg, gamma=gamma, lam=lam, user_vectors=u)
    grads = torch.autograd.grad(loss.sum(), [theta] if u is None else [theta, u])
    dense = rule.client_step({"theta": server.theta, **server.state}, grads[0], t)
    return dense, None if u is None else grads[1][0], int(batch.counts()[0])


def reference_sample_gradient(
    theta: torch.Tensor,
    layout: TableLayout,
    train: CSRTensors,
    client: int,
    neg: torch.Tensor,
    h: int,
    *,
    gamma: float,
    user_vector: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The gradient of one sample's BPR loss (client ``client``'s ``h``-th positive with its negatives
    ``neg[h]``, Eq. 7 without L2) w.r.t. the dense table and MF's user vector, by autograd: FISM's user
    vector still sums the client's whole history (Eq. 1)."""
    th = theta.detach().clone().requires_grad_(True)
    batch = gather_users(train, torch.tensor([client], device=theta.device))
    p_pos = th[layout.row("P", batch.items)]
    p_neg = th[layout.row("P", neg.reshape(-1))].reshape(*neg.shape, -1)
    u = None if user_vector is None else user_vector.detach().clone()[None].requires_grad_(True)
    if layout.model == "fism":
        y_pos, y_neg = fism_pair_scores(p_pos, th[layout.row("Q", batch.items)], p_neg, batch.owner, 1, gamma)
    else:
        y_pos, y_neg = mf_pair_scores(u, p_pos, p_neg, batch.owner)
    loss = torch.nn.functional.softplus(-(y_pos[h] - y_neg[h])).sum()
    grads = torch.autograd.grad(loss, [th] if u is None else [th, u])
    return grads[0], None if u is None else grads[1][0]


def reference_local_client(
    server: ServerState,
    rule,
    layout: TableLayout,
    train: CSRTensors,
    client: int,
    neg: torch.Tensor,
    t: int,
    chosen: list[int],
    table: dict[int, tuple[torch.Tensor, torch.Tensor | None]] | None,
    *,
    gamma: float,
    lam: float,
    user_vector: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Algorithm 2 with a local mini-batch ``chosen`` (positions among the client's ``J`` positives),
    one sample at a time (fedrec.federation.saga): ``table is None``: ``(J / b) sum_{h in chosen} f'_h``;
    else SAGA (BRVR eq. 9), ``(J / b) sum_{h in chosen} (f'_h - phi_h) + sum_h phi_h`` with ``table``
    (sample -> its stored gradients; empty: the client's first round, every sample fresh, ``v = f'``),
    refreshed in place (eq. 8). Plus the L2 gradient on the listed rows (every positive's P row, the
    chosen samples' negatives; under SAGA every sample's; FISM's history). Returns the dense message
    and MF's user-vector gradient."""
    J = int(train.indptr[client + 1] - train.indptr[client])
    items = train.indices[int(train.indptr[client]) : int(train.indptr[client + 1])]

    def sample(h: int):
        return reference_sample_gradient(
            server.theta, layout, train, client, neg, h, gamma=gamma, user_vector=user_vector
        )

    zero_u = None if user_vector is None else torch.zeros_like(user_vector)
    g, g_u = torch.zeros_like(server.theta), zero_u
    saga = table is not None
    if saga and not table:  # first round: the table is filled, v is the full gradient
        for h in range(J):
            table[h] = sample(h)
        chosen = list(range(J))
    for h in chosen:
        fresh = sample(h)
        scale = J / len(chosen)
        g = g + scale * (fresh[0] - (table[h][0] if saga else 0))
        if g_u is not None:
            g_u = g_u + scale * (fresh[1] - (table[h][1] if saga else 0))
    if saga:
        for h in range(J):
            g = g + table[h][0]
            if g_u is not None:
                g_u = g_u + table[h][1]
        for h in chosen:
            table[h] = sample(h)
    listed = set(layout.row("P", items).tolist())
    listed |= set(layout.row("P", neg[list(range(J)) if saga else chosen].reshape(-1)).tolist())
    if layout.model == "fism":
        listed |= set(layout.row("Q", items).tolist())
    rows = sorted(listed)
    g[rows] = g[rows] + 2 * lam * server.theta[rows]
    if g_u is not None:
        g_u = g_u + 2 * lam * user_vector
    return rule.client_step({"theta": server.theta, **server.state}, g, t), g_u


def reference_aggregate(
    messages: list[dict[str, torch.Tensor]], n_examples: list[int]
) -> dict[str, torch.Tensor]:
    """Algorithm 1: every quantity is the n_i / N weighted sum of the dense messages."""
    N = float(sum(n_examples))
    return {
        k: sum((n / N) * msg[k] for msg, n in zip(messages, n_examples, strict=True)) for k in messages[0]
    }


def densify(server: ServerState, rule, uploads: UploadBatch, i: int, t: int) -> dict[str, torch.Tensor]:
    """Upload ``i`` as the dense message it stands for: the rule's default everywhere, its values at
    its listed rows (DESIGN.md section 3)."""
    dense = {k: v.clone() for k, v in rule.default_rows({"theta": server.theta, **server.state}, t).items()}
    lo, hi = int(uploads.ptr[i]), int(uploads.ptr[i + 1])
    rows = uploads.rows[lo:hi]
    dense["theta"][rows] = uploads.theta[lo:hi].to(dense["theta"].dtype)
    for k in rule.state_names:
        dense[k][rows] = uploads.state[k][lo:hi].to(dense[k].dtype)
    return dense


def reference_round(
    server: ServerState,
    rule,
    layout: TableLayout,
    train: CSRTensors,
    clients: list[int],
    negatives: list[torch.Tensor],
    t: int,
    *,
    gamma: float,
    lam: float,
    user_vectors: torch.Tensor | None = None,
) -> tuple[ServerState, list[torch.Tensor | None]]:
    """One round of Algorithm 1 (Option I) with a Python loop over the clients."""
    messages, grads_u, ns = [], [], []
    for i, c in enumerate(clients):
        u = None if user_vectors is None else user_vectors[i]
        msg, gu, n = reference_client(
            server, rule, layout, train, c, negatives[i], t, gamma=gamma, lam=lam, user_vector=u
        )
        messages.append(msg)
        grads_u.append(gu)
        ns.append(n)
    new = reference_aggregate(messages, ns)
    theta = new.pop("theta")
    return ServerState(theta=theta, state=new, t=t), grads_u


# -- defended rounds: the literal dense version of every defense (tests only) ----------------------


def _dense_space(space: str, server: ServerState, rule, messages: list[dict[str, torch.Tensor]], t: int):
    """The dense messages as the defense sees them: ``[n, n_rows, width]`` float64."""
    prev = {"theta": server.theta, **server.state}
    default = rule.default_rows(prev, t)
    if space == "gradient":
        return torch.stack([rule.reconstruct(prev, msg, t) for msg in messages]).to(torch.float64)
    keys = {"theta": ["theta"], "momentum": list(rule.state_names[:1]), "upload": list(rule.keys)}[space]
    return torch.stack([torch.cat([msg[k] - default[k] for k in keys], dim=1) for msg in messages]).to(
        torch.float64
    )


def _literal(defense, x: torch.Tensor, f: int, weights: list[float], rng):
    spec = defense.spec
    extra = {"weights": torch.tensor(weights, dtype=torch.float64)} if spec.uses_weights else {}
    return spec.run_literal(x, f, rng=rng, **extra, **defense.params)


def literal_row(spec, values: list[torch.Tensor], f: int, params: dict) -> torch.Tensor:
    """One row of item scope, written out: the rule's literal form on the row's ``c`` listers
    ``values`` (each ``[d]``), one vote each, with the largest ``f_r <= min(f, (c - 1) // 2)`` the rule
    can take on ``c`` vectors (``min_n(f_r) <= c``); an aggregate is the row's value, a selection gives
    the plain mean of the kept listers, convex weights their combination. A row too small for the rule
    even at ``f_r = 0`` is the plain mean of its listers (``fedrec.defenses.itemwise``)."""
    c = len(values)
    x = torch.stack(values).to(torch.float64)[:, None, :]
    fits = [g for g in range(min(f, (c - 1) // 2) + 1) if spec.min_n(g) <= c]
    if not fits:
        return sum(values[i].to(torch.float64) for i in range(c)) / c
    extra = {"weights": torch.ones(c, dtype=torch.float64)} if spec.uses_weights else {}
    res = spec.run_literal(x, max(fits), **extra, **params)
    if res.aggregate is not None:
        return res.aggregate[1][0]
    if res.weights is not None:
        return sum(float(res.weights[i]) * x[i, 0] for i in range(c))
    kept = [i for i in range(c) if bool(res.accepted[i])]
    return sum(x[i, 0] for i in kept) / len(kept)


def _item_wise(server: ServerState, rule, uploads: UploadBatch, idx, messages, defense, t: int, f: int):
    """Item scope literally: a Python loop over the rows; each listed row is aggregated by
    ``literal_row`` over the valid uploads that list it (theta space: their deltas from the default;
    gradient space: their reconstructed gradients, then one step of the rule from the global state).
    Unlisted rows keep the default (gradient space: the step with g = 0, which is the default)."""
    prev = {"theta": server.theta, **server.state}
    default = rule.default_rows(prev, t)
    listed = [set(uploads.rows[int(uploads.ptr[i]) : int(uploads.ptr[i + 1])].tolist()) for i in idx]
    keys = ("theta", *rule.state_names)

    def robust(values: list[torch.Tensor]) -> torch.Tensor:
        return literal_row(defense.spec, values, f, defense.params)

    if defense.space == "gradient":
        grads = [rule.reconstruct(prev, msg, t) for msg in messages]
        g = torch.zeros_like(server.theta)
        for r in range(server.theta.shape[0]):
            who = [p for p in range(len(idx)) if r in listed[p]]
            if who:
                g[r] = robust([grads[p][r] for p in who]).to(g.dtype)
        return rule.client_step(prev, g, t)
    new = {k: default[k].clone() for k in keys}
    for r in range(server.theta.shape[0]):
        who = [p for p in range(len(idx)) if r in listed[p]]
        if not who:
            continue
        for k in keys:
            new[k][r] = default[k][r] + robust([messages[p][k][r] - default[k][r] for p in who]).to(
                new[k].dtype
            )
    return new


def reference_defended_round(
    server: ServerState,
    rule,
    uploads: UploadBatch,
    defense,
    t: int,
    f: int,
    valid: torch.Tensor,
    rng: torch.Generator | None = None,
) -> tuple[ServerState, torch.Tensor]:
    """Algorithm 1 Option II literally: dense messages, the defense's rule in its literal dense form,
    then the n_i-weighted mean of the accepted messages (or the rule's convex weights, or its
    aggregate: per quantity in parameter space, a server-side step in gradient space). ``valid`` marks
    the uploads that passed validation (and the verifier); ``rng`` is the generator state the fast
    round's rule started from."""
    idx = [i for i in range(uploads.n) if bool(valid[i])]
    messages = [densify(server, rule, uploads, i, t) for i in idx]
    n_ex = [float(uploads.n_examples[i]) for i in idx]
    prev = {"theta": server.theta, **server.state}
    default = rule.default_rows(prev, t)
    keys = ("theta", *rule.state_names)
    spec = defense.spec
    unchanged = ServerState(server.theta, server.state, t), torch.zeros(uploads.n, dtype=torch.bool)
    if not idx or len(idx) < defense.fewest(f):  # what the rule's parameters need (Defense.fewest)
        return unchanged
    accepted, weights = [True] * len(idx), list(n_ex)
    start = None if rng is None else rng.get_state()
    if defense.scope == "item":
        new = _item_wise(server, rule, uploads, idx, messages, defense, t, f)
    elif spec.kind == "aggregate" and defense.space == "gradient":
        res = _literal(defense, _dense_space("gradient", server, rule, messages, t), f, n_ex, rng)
        accepted = res.accepted.tolist() if res.accepted is not None else accepted
        new = rule.client_step(prev, res.aggregate[1].to(server.theta.dtype), t)
    elif spec.kind == "aggregate":
        new = {}
        for k in keys:
            if start is not None:
                rng.set_state(start)
            deltas = torch.stack([msg[k] - default[k] for msg in messages]).to(torch.float64)
            res = _literal(defense, deltas, f, n_ex, rng)
            accepted = res.accepted.tolist() if (k == "theta" and res.accepted is not None) else accepted
            new[k] = default[k] + res.aggregate[1].to(default[k].dtype)
    else:
        res = _literal(defense, _dense_space(defense.space, server, rule, messages, t), f, n_ex, rng)
        accepted = res.accepted.tolist() if res.accepted is not None else accepted
        weights = res.weights.tolist() if res.weights is not None else weights
        w = [wi if a else 0.0 for wi, a in zip(weights, accepted, strict=True)]
        total = sum(w)
        if total == 0:
            return unchanged
        new = {k: sum((wi / total) * msg[k] for wi, msg in zip(w, messages, strict=True)) for k in keys}
    acc = torch.zeros(uploads.n, dtype=torch.bool)
    for pos, i in enumerate(idx):
        acc[i] = bool(accepted[pos])
    theta = new.pop("theta")
    return ServerState(theta=theta, state=new, t=t), acc
