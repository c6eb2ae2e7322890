"""The BPR objective's gradient in closed form (paper 000 Eq. 7 with FISM Eq. 1 or MF), for a batch of
clients each holding its own copy of its touched rows.

``bpr_objective`` + autograd is the definition; this computes the same derivatives by hand, about
twice as fast on a round's small tensors (no graph to record and replay). Per positive ``h`` of user
``u`` (item ``j``) and negative ``s`` (item ``k``), with ``x = y_uj - y_uk`` and ``a = sigmoid(-x)``
(``d/dx -log sigmoid(x) = -a``):

    dL/dy_uj = -sum_s a_hs,     dL/dy_uk = a_hs              (signs swapped under ``flip``)

FISM (Eq. 1): ``y_uj = p_j . c+ (S_u - q_j)``, ``y_uk = p_k . c- S_u`` with ``S_u`` the sum of the user's
Q rows, ``c+ = (n_u - 1)^-gamma`` (0 for a one-item user), ``c- = n_u^-gamma``. Then

    dL/dp_j += dL/dy_uj * c+ (S_u - q_j)          dL/dp_k += dL/dy_uk * c- S_u
    dL/dq_j  = G_u - c+ dL/dy_uj p_j,   G_u = sum_h (c+ dL/dy_uj p_j + c- sum_s dL/dy_uk p_k)

(every Q row of the history feeds ``S_u``; its own positive's score leaves it out). MF: ``y = u . p``.
The lambda term adds ``2 lambda w`` to every touched row (and to MF's user vector).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedrec.models.batch import UserBatch
from fedrec.models.bpr_native import bpr_row_gradients_native
from fedrec.models.layout import TableLayout

Tensor = torch.Tensor


LANES = 64
"""Element-wise transcendental ops (sigmoid, softplus, pow) run on inputs padded to a multiple of this:
torch's CPU kernels compute whole SIMD vectors with one implementation and a tensor's last partial
vector with the scalar one, which can differ in the last bit, so unpadded a client's values would
depend on where its entries sit in the batch (a stack of runs, fedrec.federation.stacked, must give
each client what it gets alone). 64 covers every vector width torch uses."""


def lanewise(fn, x: Tensor) -> Tensor:
    """``fn(x)`` for an element-wise ``fn``, every element on the vectorized path (``LANES``)."""
    n = x.numel()
    pad = -n % LANES
    if pad == 0:
        return fn(x)
    flat = torch.cat([x.reshape(-1), x.new_ones(pad)])
    return fn(flat)[:n].reshape(x.shape)


def bpr_row_gradients(
    W: Tensor,
    keys: Tensor,
    layout: TableLayout,
    batch: UserBatch,
    neg: Tensor,
    *,
    gamma: float,
    lam: float,
    user_vectors: Tensor | None = None,
    flip: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """``(dL/dW [K, d], dL/du [B, d] or None, L [B])``: the gradient of each client's loss
    (``bpr_objective``) w.r.t. its own copies ``W`` of its touched rows, listed by the sorted keys
    ``owner * n_rows + row`` (``touched_rows``), w.r.t. MF's user vectors, and the loss itself.
    Float32 rows on the CPU take one C loop (fedrec.models.bpr_native: the same formulas, to float32
    rounding, ~5x faster)."""
    fast = bpr_row_gradients_native(
        W, keys, layout, batch, neg, gamma=gamma, lam=lam, user_vectors=user_vectors, flip=flip
    )
    if fast is not None:
        return fast
    terms = sample_terms(W, keys, layout, batch, neg, gamma=gamma, user_vectors=user_vectors, flip=flip)
    gW, g_user = assemble_row_gradients(terms, W, batch.size, lam=lam, user_vectors=user_vectors)
    return gW, g_user, with_l2(terms.client_loss(batch.size), W, keys, layout, lam, user_vectors)


def with_l2(loss: Tensor, W: Tensor, keys: Tensor, layout: TableLayout, lam: float, user_vectors=None):
    """``loss [B]`` plus each client's ``lam * ||w||^2`` over its rows of ``W`` (and its MF user vector)."""
    if lam:
        loss = loss + lam * torch.zeros_like(loss).index_add(0, keys // layout.n_rows, (W * W).sum(-1))
        if user_vectors is not None:
            loss = loss + lam * (user_vectors * user_vectors).sum(-1)
    return loss


@dataclass
class SampleTerms:
    """Each positive's own share of its client's BPR gradient (its sample: the positive and its
    negatives), in factored form: entry ``h`` of a batch contributes

        ``pos[h]`` to the P row of its positive, ``neg[h, s]`` to the P row of its negative ``s``,
        ``user[h]`` to every Q row of its user's history (FISM) or to the user vector (MF),
        ``-own[h]`` to the Q row of its own positive (FISM: the positive leaves its own history).

    Linear in the shares, so any weighting or mix of two sets of terms (SAGA's correction,
    ``fedrec.federation.saga``) assembles to that weighting of the gradients. The index arrays say
    where each share goes in the flat ``[K, d]`` gradient of ``touched_rows``."""

    pos: Tensor  # [H, d]
    neg: Tensor  # [H, n_neg, d]
    user: Tensor  # [H, d]
    own: Tensor | None  # [H, d] (FISM)
    loss: Tensor  # [H] each sample's BPR loss (no L2 term)
    owner: Tensor  # [H] batch position of each entry's client
    i_pos: Tensor  # [H] flat index of each positive's P row
    i_neg: Tensor  # [H * n_neg]
    i_q: Tensor | None  # [H] (FISM) flat index of each positive's Q row

    SHARES = ("pos", "neg", "user", "own")

    def shares(self) -> dict[str, Tensor]:
        """The per-sample shares by name (``own`` only for FISM): what a SAGA table stores."""
        return {k: getattr(self, k) for k in self.SHARES if getattr(self, k) is not None}

    def with_shares(self, shares: dict[str, Tensor]) -> SampleTerms:
        return dataclasses.replace(self, **shares)

    def client_loss(self, n_clients: int) -> Tensor:
        """``[B]``: each client's BPR loss summed over its samples."""
        return torch.zeros(n_clients, dtype=self.loss.dtype, device=self.loss.device).index_add(
            0, self.owner, self.loss
        )


def sample_terms(
    W: Tensor,
    keys: Tensor,
    layout: TableLayout,
    batch: UserBatch,
    neg: Tensor,
    *,
    gamma: float,
    user_vectors: Tensor | None = None,
    flip: bool = False,
) -> SampleTerms:
    """Every entry's share of the BPR gradient at ``W`` (the module docstring's formulas, L2 excluded)."""
    B, H, n_neg = batch.size, batch.items.shape[0], neg.shape[1]
    d = W.shape[1]
    owner = batch.owner
    owner_neg = owner.repeat_interleave(n_neg, output_size=H * n_neg)

    def at(o: Tensor, rows: Tensor) -> Tensor:
        return torch.searchsorted(keys, o * layout.n_rows + rows)

    i_pos = at(owner, layout.row("P", batch.items))
    i_neg = at(owner_neg, layout.row("P", neg.reshape(-1)))
    p_pos = W.index_select(0, i_pos)
    p_neg = W.index_select(0, i_neg).reshape(H, n_neg, d)
    i_q = None
    if layout.model == "fism":
        i_q = at(owner, layout.row("Q", batch.items))
        q_hist = W.index_select(0, i_q)
        S = torch.zeros(B, d, dtype=W.dtype, device=W.device).index_add(0, owner, q_hist)
        n = batch.counts().to(W.dtype)  # = bincount(owner), without bincount's host sync on a GPU
        c_pos = torch.where(n > 1, lanewise(lambda x: x**-gamma, (n - 1).clamp(min=1)), torch.zeros_like(n))
        c_pos = c_pos[owner, None]
        c_neg = lanewise(lambda x: x**-gamma, n.clamp(min=1))[owner, None]
        S_h = S.index_select(0, owner)
        u_pos = (S_h - q_hist) * c_pos
        u_neg = S_h * c_neg
    else:
        if user_vectors is None:
            raise ValueError("MF needs the batch's user vectors")
        u_pos = u_neg = user_vectors.index_select(0, owner)
    y_pos = (p_pos * u_pos).sum(-1)
    y_neg = torch.einsum("hsd,hd->hs", p_neg, u_neg)
    sign = -1.0 if flip else 1.0
    x = sign * (y_pos[:, None] - y_neg)
    a = lanewise(torch.sigmoid, -x)
    d_pos = (-sign) * a.sum(1)  # dL/dy_pos [H]
    d_neg = sign * a  # dL/dy_neg [H, n_neg]
    du_pos = d_pos[:, None] * p_pos  # dL/du_pos [H, d]
    du_neg = torch.einsum("hs,hsd->hd", d_neg, p_neg)  # dL/du_neg [H, d]
    if layout.model == "fism":
        own = c_pos * du_pos
        user = own + c_neg * du_neg
    else:
        own, user = None, du_pos + du_neg
    return SampleTerms(
        pos=d_pos[:, None] * u_pos, neg=d_neg[:, :, None] * u_neg[:, None, :], user=user, own=own,
        loss=lanewise(F.softplus, -x).sum(1),  # -log sigmoid(x), summed over the negatives
        owner=owner, i_pos=i_pos, i_neg=i_neg, i_q=i_q,
    )  # fmt: skip


def assemble_row_gradients(
    terms: SampleTerms,
    W: Tensor,
    n_clients: int,
    *,
    lam: float,
    user_vectors: Tensor | None = None,
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """``(dL/dW [K, d], dL/du [B, d] or None)`` from the samples' shares, each weighted by ``weights [H]``
    (None: 1), plus the L2 term's ``2 lam w`` on every row of ``W`` (and on MF's user vectors)."""
    pos, neg, user, own = terms.pos, terms.neg, terms.user, terms.own
    if weights is not None:
        w = weights[:, None]
        pos, neg, user = pos * w, neg * w[:, :, None], user * w
        own = None if own is None else own * w
    d = pos.shape[1]
    gW = torch.zeros_like(W)
    gW.index_add_(0, terms.i_pos, pos)
    gW.index_add_(0, terms.i_neg, neg.reshape(-1, d))
    G = torch.zeros(n_clients, d, dtype=W.dtype, device=W.device).index_add(0, terms.owner, user)
    g_user = None
    if own is not None:  # FISM: every Q row of the history, less the positive's own share
        gW.index_add_(0, terms.i_q, G.index_select(0, terms.owner) - own)
    else:
        g_user = G
    if lam:
        gW.add_(W, alpha=2 * lam)
        if user_vectors is not None:
            g_user = g_user + 2 * lam * user_vectors
    return gW, g_user
