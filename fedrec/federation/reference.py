"""The literal dense reference of paper 000 Algorithms 1-2 (and their other-optimizer variants).

One client at a time, dense tensors everywhere: each client differentiates its loss w.r.t. the whole
table, applies the optimizer rule to every row, and the server takes the n_i-weighted mean of the
dense messages. Slow by design; used only by tests and benchmarks to check the fast sparse engine.
"""

from __future__ import annotations

import statistics

import torch

from fedrec.models import CSRTensors, TableLayout, bpr_objective, gather_users
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
    prev = {"theta": server.theta, **server.state}
    default = rule.default_rows(prev, t)
    if space == "gradient":
        return [rule.reconstruct(prev, msg, t).flatten() for msg in messages]
    keys = {"theta": ["theta"], "momentum": list(rule.state_names[:1]), "upload": list(rule.keys)}[space]
    return [torch.cat([(msg[k] - default[k]) for k in keys], dim=1).flatten() for msg in messages]


def _literal_krum_scores(X: torch.Tensor, f: int, distance: str = "l2") -> torch.Tensor:
    n = X.shape[0]
    dist = (lambda a: float((a**2).sum())) if distance == "l2" else (lambda a: float(a.abs().max()) ** 2)
    scores = []
    for i in range(n):
        d = sorted(dist(X[i] - X[j]) for j in range(n) if j != i)
        scores.append(sum(d[: n - f - 2]))
    return torch.tensor(scores, dtype=torch.float64)


def _literal_robust(values: torch.Tensor, rule: str, f: int) -> torch.Tensor:
    """The median (even count: mean of the two middle values) or the trimmed mean with
    ``min(f, (c - 1) // 2)`` per side, over the ``c`` rows of ``values [c, d]``, column by column."""
    c = values.shape[0]
    s = values.to(torch.float64).sort(0).values
    if rule == "cw-median":
        return 0.5 * (s[(c - 1) // 2] + s[c // 2])
    trim = min(f, (c - 1) // 2)
    return s[trim : c - trim].mean(0)


def _item_wise(server: ServerState, rule, uploads: UploadBatch, idx, messages, defense, t: int, f: int):
    """Item scope literally: a Python loop over the rows; each listed row is aggregated over the valid
    uploads that list it (theta space: their deltas from the default; gradient space: their
    reconstructed gradients, then one step of the rule from the global state). Unlisted rows keep the
    default (gradient space: the step with g = 0, which is the default)."""
    prev = {"theta": server.theta, **server.state}
    default = rule.default_rows(prev, t)
    listed = [set(uploads.rows[int(uploads.ptr[i]) : int(uploads.ptr[i + 1])].tolist()) for i in idx]
    keys = ("theta", *rule.state_names)
    if defense.space == "gradient":
        grads = [rule.reconstruct(prev, msg, t) for msg in messages]
        g = torch.zeros_like(server.theta)
        for r in range(server.theta.shape[0]):
            who = [p for p in range(len(idx)) if r in listed[p]]
            if who:
                g[r] = _literal_robust(torch.stack([grads[p][r] for p in who]), defense.rule, f).to(g.dtype)
        return rule.client_step(prev, g, t)
    new = {k: default[k].clone() for k in keys}
    for r in range(server.theta.shape[0]):
        who = [p for p in range(len(idx)) if r in listed[p]]
        if not who:
            continue
        for k in keys:
            deltas = torch.stack([messages[p][k][r] - default[k][r] for p in who])
            new[k][r] = default[k][r] + _literal_robust(deltas, defense.rule, f).to(new[k].dtype)
    return new


def reference_defended_round(
    server: ServerState, rule, uploads: UploadBatch, defense, t: int, f: int, valid: torch.Tensor
) -> tuple[ServerState, torch.Tensor]:
    """Algorithm 1 Option II literally: dense messages, the defense's rule written out on dense
    vectors, then the n_i-weighted mean of the accepted messages (or the coordinate-wise aggregate).
    ``valid`` marks the uploads that passed validation (and the verifier, when the defense has it)."""
    idx = [i for i in range(uploads.n) if bool(valid[i])]
    messages = [densify(server, rule, uploads, i, t) for i in idx]
    n_ex = [int(uploads.n_examples[i]) for i in idx]
    prev = {"theta": server.theta, **server.state}
    default = rule.default_rows(prev, t)
    accepted = [True] * len(idx)
    weights = [float(n) for n in n_ex]
    if defense.rule in ("krum", "multi-krum", "norm-trim", "rfa"):
        X = torch.stack(_dense_space(defense.space, server, rule, messages, t)).to(torch.float64)
        n = X.shape[0]
        if defense.rule == "norm-trim":
            order = sorted(range(n), key=lambda i: (float(X[i].norm()), i))
            kept = set(order[f : n - f])
            accepted = [i in kept for i in range(n)]
        elif defense.rule == "rfa":
            alpha = torch.tensor(weights, dtype=torch.float64) / sum(weights)
            beta = alpha.clone()
            for _ in range(defense.params.get("max_iter", 100)):
                z = (beta[:, None] * X).sum(0)
                dist = ((X - z) ** 2).sum(1).sqrt().clamp(min=defense.params.get("nu", 1e-6))
                beta = alpha / dist
                beta = beta / beta.sum()
            weights = beta.tolist()
        else:
            scores = _literal_krum_scores(X, f, defense.params.get("distance", "l2"))
            m = 1 if defense.rule == "krum" else n - f
            order = sorted(range(n), key=lambda i: (float(scores[i]), i))
            kept = set(order[:m])
            if defense.keep == "outliers":  # also keep every score within c x the (lower) median
                med = statistics.median_low(float(s) for s in scores)
                kept |= {i for i in range(n) if float(scores[i]) <= defense.params["c"] * med}
            accepted = [i in kept for i in range(n)]
    keys = ("theta", *rule.state_names)
    if defense.rule in ("cw-median", "cw-trimmed-mean") and getattr(defense, "scope", "flat") == "item":
        new = _item_wise(server, rule, uploads, idx, messages, defense, t, f)
    elif defense.rule in ("cw-median", "cw-trimmed-mean") and defense.space == "gradient":
        G = torch.stack([rule.reconstruct(prev, msg, t) for msg in messages])
        g = (
            G.quantile(0.5, dim=0)
            if defense.rule == "cw-median"
            else G.sort(0).values[f : G.shape[0] - f].mean(0)
        )
        new = rule.client_step(prev, g, t)
    elif defense.rule in ("cw-median", "cw-trimmed-mean"):
        new = {}
        for k in keys:
            deltas = torch.stack([msg[k] - default[k] for msg in messages])
            if defense.rule == "cw-median":
                agg = (
                    deltas.quantile(0.5, dim=0) if deltas.dtype == torch.float64 else deltas.median(0).values
                )
            else:
                agg = deltas.sort(0).values[f : deltas.shape[0] - f].mean(0)
            new[k] = default[k] + agg
    else:
        w = [wi if a else 0.0 for wi, a in zip(weights, accepted, strict=True)]
        total = sum(w)
        if total == 0:
            return ServerState(server.theta, server.state, t), torch.zeros(uploads.n, dtype=torch.bool)
        new = {k: sum((wi / total) * msg[k] for wi, msg in zip(w, messages, strict=True)) for k in keys}
    acc = torch.zeros(uploads.n, dtype=torch.bool)
    for pos, i in enumerate(idx):
        acc[i] = accepted[pos]
    theta = new.pop("theta")
    return ServerState(theta=theta, state=new, t=t), acc
