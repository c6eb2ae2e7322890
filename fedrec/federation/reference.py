"""The literal dense reference of paper 000 Algorithms 1-2 (and their other-optimizer variants).

One client at a time, dense tensors everywhere: each client differentiates its loss w.r.t. the whole
table, applies the optimizer rule to every row, and the server takes the n_i-weighted mean of the
dense messages. Slow by design; used only by tests and benchmarks to check the fast sparse engine.
"""

from __future__ import annotations

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
