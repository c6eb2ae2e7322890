"""Honest clients of a round, all at once (paper 000 Algorithm 2, batched).

Each sampled client differentiates its own BPR loss (Eq. 7) at the global parameters, on the rows it
touches only, and takes one optimizer step from the global state on those rows. The clients' row
copies are stacked into one leaf tensor ``W [K, d]`` (one row per (client, row) pair), so a single
backward pass yields every client's gradient without a Python loop over clients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedrec.federation.saga import LocalSamples, SagaTable, fixed_negatives_key, local_samples
from fedrec.models import (
    CSRTensors,
    TableLayout,
    UserBatch,
    gather_users,
    sample_negatives,
    sample_negatives_keyed,
    touched_rows,
)
from fedrec.models.gradients import assemble_row_gradients, bpr_row_gradients, sample_terms, with_l2
from fedrec.optim import adam_step
from fedrec.protocol import ServerState, UploadBatch


@dataclass
class PrivateState:
    """MF's private user vectors and their optimizer state, one row per client; ``steps`` counts each
    client's own local steps (its private optimizer's t). Never uploaded."""

    u: torch.Tensor  # [n_clients, d]
    state: dict[str, torch.Tensor]  # name -> [n_clients, d]
    steps: torch.Tensor  # int64 [n_clients]


@dataclass
class ClientGradients:
    """Every sampled client's gradient on its touched rows (flat, aligned with ``rows``)."""

    owner: torch.Tensor  # [K] batch position of each (client, row) pair
    rows: torch.Tensor  # [K] stacked-table row ids, sorted within each client
    ptr: torch.Tensor  # [B + 1]
    g: torch.Tensor  # [K, d]
    g_user: torch.Tensor | None  # [B, d] gradient of the private user vectors (MF)
    loss: torch.Tensor  # [B] each client's loss at the global parameters


def client_gradients(
    theta: torch.Tensor,
    layout: TableLayout,
    batch: UserBatch,
    neg: torch.Tensor,
    *,
    gamma: float,
    lam: float,
    user_vectors: torch.Tensor | None = None,
    flip: bool = False,
    local: LocalSamples | None = None,
    saga: SagaTable | None = None,
    row_offset: torch.Tensor | None = None,
    touched: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> ClientGradients:
    """The gradient of each client's loss w.r.t. its own copy of its touched rows (and user vector).

    ``flip``: the loss with every BPR pair inverted (``bpr_objective(..., flip=True)``: label-flip).
    ``local``: a local mini-batch (``fedrec.federation.saga``): the chosen samples' gradient scaled by
    ``J / b``, on every positive's rows and the chosen samples' negatives; with ``saga``, the SAGA message over every row of the client's
    fixed samples (the table is refreshed). ``loss`` stays the full loss at the global parameters.
    ``row_offset [B]``: where each client's table starts in ``theta`` (runs stacked in one table,
    ``fedrec.federation.stacked``); the returned rows are then rows of the stacked table. ``touched``:
    ``touched_rows(batch, neg, layout)`` where the caller has it."""
    owner, rows = touched if touched is not None else touched_rows(batch, neg, layout)
    keys = owner * layout.n_rows + rows  # sorted: touched_rows returns sorted unique pairs
    if row_offset is not None:
        rows = rows + row_offset.index_select(0, owner)
    W = theta.detach().index_select(0, rows)
    u = None if user_vectors is None else user_vectors.detach()
    if local is None:
        # the closed form of autograd on bpr_objective (tests/test_gradients.py), ~2x faster on a round
        g, g_user, loss = bpr_row_gradients(
            W, keys, layout, batch, neg, gamma=gamma, lam=lam, user_vectors=u, flip=flip
        )
    else:
        terms = sample_terms(W, keys, layout, batch, neg, gamma=gamma, user_vectors=u, flip=flip)
        loss = with_l2(terms.client_loss(batch.size), W, keys, layout, lam, u)
        if saga is not None:
            g, g_user = assemble_row_gradients(
                saga.mix(batch, local, terms), W, batch.size, lam=lam, user_vectors=u
            )
        else:
            w = local.weight.to(W.dtype)
            g, g_user = assemble_row_gradients(terms, W, batch.size, lam=lam, user_vectors=u, weights=w)
            # listed: every positive's P row (its own rows say how many examples a client may claim,
            # validate.py; unchosen ones carry the L2 term only), the chosen samples' negatives and
            # FISM's whole history (every Q row feeds the chosen samples' scores)
            used = torch.zeros(rows.shape[0], dtype=torch.bool, device=rows.device)
            used[terms.i_pos] = True
            used[terms.i_neg.reshape(local.chosen.shape[0], -1)[local.chosen].reshape(-1)] = True
            if terms.i_q is not None:
                used[terms.i_q] = True
            owner, rows, g = owner[used], rows[used], g[used]
    ptr = torch.zeros(batch.size + 1, dtype=torch.int64, device=rows.device)
    # a scatter-add rather than bincount, whose output size is a host sync on a GPU
    counts = torch.zeros(batch.size, dtype=torch.int64, device=rows.device).index_add_(
        0, owner, torch.ones_like(owner)
    )
    torch.cumsum(counts, 0, out=ptr[1:])
    return ClientGradients(
        owner=owner,
        rows=rows,
        ptr=ptr,
        g=g,
        g_user=g_user,
        loss=loss,
    )


def honest_uploads(
    server: ServerState, rule, grads: ClientGradients, batch: UserBatch, t: int
) -> UploadBatch:
    """One optimizer step per client from the global state at its rows (Eq. 2-6 for Adam; Adam's float32
    step on the CPU as one C loop that gathers the rows too, torch's values bit for bit:
    fedrec.optim.adam_step)."""
    rows = grads.rows
    tables, at = server.tables_for(rows)  # a deferred state catches the rows up first
    if adam_step.applies(rule, tables, at, grads.g):
        new = adam_step.adam_client_step(rule, tables, at, grads.g, t)
    else:
        prev = {k: x.index_select(0, at) for k, x in tables.items()}
        new = rule.client_step(prev, grads.g, t)
    return UploadBatch(
        client_ids=batch.users,
        ptr=grads.ptr,
        rows=grads.rows,
        theta=new["theta"],
        state={k: new[k] for k in rule.state_names},
        n_examples=batch.counts(),
    )


def private_step(private: PrivateState, rule, users: torch.Tensor, g_user: torch.Tensor) -> None:
    """Each MF client updates its own user vector with its own optimizer state (kept on the client)."""
    private.steps[users] += 1
    t = private.steps[users].to(g_user.dtype)[:, None]
    prev = {"theta": private.u[users], **{k: s[users] for k, s in private.state.items()}}
    new = rule.client_step(prev, g_user, t)
    private.u[users] = new["theta"]
    for k in private.state:
        private.state[k][users] = new[k]


def sample_clients(active: torch.Tensor, per_round: int, gen: torch.Generator, device) -> torch.Tensor:
    """The round's clients: ``per_round`` of the ``active`` ids drawn without replacement from the
    server's generator (Algorithm 1, |S^t| = e |S|), sorted, on ``device``."""
    pick = torch.randperm(active.shape[0], generator=gen)[:per_round]
    return active[pick].sort().values.to(device)


def draw_negatives(
    batch: UserBatch, layout: TableLayout, neg_gen: torch.Generator | int, negatives: int,
    keyed_by: int | None = None,
) -> torch.Tensor:  # fmt: skip
    """The batch's negatives ``[H, negatives]``: from the shared generator ``neg_gen``, keyed draws
    when it is an int key, or each positive's fixed negatives keyed by the run's seed ``keyed_by``
    (SAGA's fixed samples, ``federated.fixed_negatives``)."""
    if keyed_by is not None:
        return sample_negatives_keyed(batch, layout.n_items, negatives, fixed_negatives_key(keyed_by))
    if isinstance(neg_gen, torch.Generator):
        return sample_negatives(batch, layout.n_items, negatives, neg_gen)
    return sample_negatives_keyed(batch, layout.n_items, negatives, neg_gen)


@dataclass
class ClientRound:
    """What the sampled clients computed in a round: their data, negatives, gradients and the honest
    upload each would send (the Byzantine ones too: it is what they attack from)."""

    clients: torch.Tensor  # [B] sorted client ids
    batch: UserBatch
    neg: torch.Tensor
    grads: ClientGradients
    uploads: UploadBatch  # one honest upload per client, in ``clients`` order
    local: LocalSamples | None = None  # the round's local mini-batch (fedrec.federation.saga)


def client_round(
    server: ServerState,
    rule,
    layout: TableLayout,
    train: CSRTensors,
    clients: torch.Tensor,
    t: int,
    neg_gen: torch.Generator | int,
    *,
    negatives: int,
    gamma: float,
    lam: float,
    user_vectors: torch.Tensor | None = None,
    local_batch: int | None = None,
    batch_key: int = 0,
    saga: SagaTable | None = None,
    seed: int = 0,
    fixed_negatives: bool = False,
) -> ClientRound:
    """The client side of round ``t`` (paper 000 Algorithm 2, batched): gather each client's items, draw
    its negatives, differentiate its BPR loss at the global parameters and take one optimizer step from
    the global state. The simulation, the demos, the Flower ClientApp and the tests call this; nothing
    else assembles it. ``neg_gen``: a generator shared by the batch, or an int key for keyed draws
    (``sample_negatives_keyed``: each client's negatives independent of the rest of the batch).
    ``local_batch``: each client's ``b`` samples of the round (keyed by ``batch_key``); ``saga``: the
    clients' SAGA table, which implies ``fixed_negatives``: each positive keeps the negatives drawn for
    it once, keyed by ``seed`` (fedrec.federation.saga)."""
    batch = gather_users(train, clients)
    neg = draw_negatives(
        batch, layout, neg_gen, negatives, keyed_by=seed if saga is not None or fixed_negatives else None
    )
    local = None
    if local_batch is not None or saga is not None:
        local = local_samples(train, batch, local_batch, batch_key)
    touched = touched_rows(batch, neg, layout)
    # a deferred state catches up the rows the clients read and no others
    theta = server.current_tables(touched[1] if server.deferred else None)["theta"]
    grads = client_gradients(
        theta, layout, batch, neg, gamma=gamma, lam=lam, user_vectors=user_vectors, local=local, saga=saga,
        touched=touched,
    )  # fmt: skip
    return ClientRound(clients, batch, neg, grads, honest_uploads(server, rule, grads, batch, t), local)
