"""Local mini-batches and SAGA variance reduction at the recommender's clients (paper 003, BRVR
eqs. 8-10 and Algorithm 2, from Byrd-SAGA; ALGORITHMS.md 6.3), per (user, positive item) sample,
vectorized across the round's clients.

A client's loss is a sum over its ``J`` positives (paper 000 Eq. 7), one sample each. With
``federated.local_batch = b`` a client differentiates ``b`` of them, drawn uniformly without
replacement (``local_samples``), and scales by ``J / b``: an unbiased estimate of its full gradient.
SAGA (``federated.variance_reduction: saga``) keeps each sample's last gradient ``phi_h`` and sends

    v = (J / b) sum_{h in I} (f'_h(theta) - phi_h) + sum_h phi_h            (eq. 9, for the sum of J losses)

then sets ``phi_h = f'_h(theta)`` for ``h in I`` (eq. 8). SAGA needs a fixed finite sum: BPR draws fresh
negatives every step, so under SAGA each positive keeps the negatives drawn for it once
(``fixed_negatives``; ALGORITHMS.md 6.3 names both choices, this one keeps eq. 9 exact). A sample's
gradient is then a function of theta alone, and a client's rows are the same every round: its
positives' and their negatives' P rows and its history's Q rows (FISM), all of them listed in every
upload because ``sum_h phi_h`` touches them all.

Stored per sample are the shares of its gradient (``SampleTerms.shares``: ``(3 + n_neg) d`` numbers for
FISM, ``(2 + n_neg) d`` for MF) rather than its ``J x d`` Q block; ``assemble_row_gradients`` is linear in
the shares, so mixing shares per sample, ``w_h f'_h + (1 - w_h) phi_h`` with ``w_h = J / b`` on the batch
and 0 off it, assembles to ``v`` exactly. A client's table is filled at its first round, at that
round's global parameters (Algorithm 2 fills it at ``x^0``; a client that never takes part needs none),
and that round sends its full gradient. The L2 term (``lam ||w||^2`` over the listed rows) is not a sum
over samples: it is added exactly, every round. ``E_I[v] = f'(theta)`` for any table
(tests/test_saga_rec.py enumerates the batches), and ``reference.reference_local_client`` is the
literal per-sample loop it is checked against.

Cost: a round still differentiates every sample of its clients (the table's refresh needs only the
batch's, the full loss is recorded); the table holds ``nnz x (3 + n_neg) x d`` numbers on the run's
device and in every checkpoint: 82 MB in float32 for ML-100K at d = 64. ``federated.fixed_negatives``
fixes the negatives without SAGA: the control that separates the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedrec.models import CSRTensors, TableLayout, UserBatch
from fedrec.models.batch import keyed_below, mix64, round_key
from fedrec.models.gradients import SampleTerms

Tensor = torch.Tensor


def entry_positions(train: CSRTensors, batch: UserBatch) -> Tensor:
    """``[H]``: each batch entry's position in the training CSR (the sample's id)."""
    j = torch.arange(batch.items.shape[0], device=batch.items.device) - batch.ptr[:-1][batch.owner]
    return train.indptr.index_select(0, batch.users).index_select(0, batch.owner) + j


@dataclass
class LocalSamples:
    """A round's local mini-batch: which entries each client differentiates and with what weight."""

    entries: Tensor  # [H] CSR positions of the batch's entries
    chosen: Tensor  # bool [H]
    weight: Tensor  # [H] J / b on the chosen entries, 0 elsewhere (float64)

    def subset(self, keep: Tensor) -> LocalSamples:
        return LocalSamples(self.entries[keep], self.chosen[keep], self.weight[keep])


def local_samples(train: CSRTensors, batch: UserBatch, b: int | None, key: int) -> LocalSamples:
    """Each client's ``min(b, J)`` samples of round key ``key``, uniform without replacement: the entries
    with the smallest keyed hashes of ``(key, user, position)``, so a client's batch does not depend on
    who else was sampled (like ``sample_negatives_keyed``). ``b = None``: every sample, weight 1."""
    entries = entry_positions(train, batch)
    H = entries.shape[0]
    counts = batch.counts()
    if b is None:
        ones = torch.ones(H, dtype=torch.float64, device=entries.device)
        return LocalSamples(entries, torch.ones(H, dtype=torch.bool, device=entries.device), ones)
    score = keyed_below(mix64(mix64(batch.users.index_select(0, batch.owner) + key) ^ entries), 1 << 52)
    by_score = torch.argsort(score, stable=True)
    order = by_score[torch.argsort(batch.owner[by_score], stable=True)]  # grouped by client, by score
    rank = torch.empty(H, dtype=torch.int64, device=entries.device)
    rank[order] = torch.arange(H, device=entries.device) - batch.ptr[:-1][batch.owner[order]]
    chosen = rank < b
    take = counts.clamp(max=b).to(torch.float64)
    scale = (counts.to(torch.float64) / take.clamp(min=1)).index_select(0, batch.owner)
    return LocalSamples(entries, chosen, torch.where(chosen, scale, torch.zeros_like(scale)))


def fixed_negatives_key(seed: int) -> int:
    """The key of the negatives each positive keeps under SAGA (``sample_negatives_keyed``): a
    function of ``train.seed`` only, so every round, and a resumed run, draws the same ones."""
    return round_key(seed + 5, 0)


@dataclass
class SagaTable:
    """Every training sample's stored gradient shares (``[nnz, ...]`` per share, in CSR order) and which
    clients have filled theirs. Lives with the clients: never uploaded, saved in checkpoints."""

    shares: dict[str, Tensor]
    filled: Tensor  # bool [n_users]

    @classmethod
    def create(
        cls, train: CSRTensors, layout: TableLayout, dim: int, n_neg: int, dtype: torch.dtype, device
    ) -> SagaTable:
        nnz = train.indices.shape[0]
        shape = {"pos": (nnz, dim), "neg": (nnz, n_neg, dim), "user": (nnz, dim)}
        if layout.model == "fism":
            shape["own"] = (nnz, dim)
        shares = {k: torch.zeros(s, dtype=dtype, device=device) for k, s in shape.items()}
        return cls(shares, torch.zeros(train.n_users, dtype=torch.bool, device=device))

    def copy(self) -> SagaTable:
        return SagaTable({k: v.clone() for k, v in self.shares.items()}, self.filled.clone())

    def state(self) -> dict[str, Tensor]:
        return {"filled": self.filled, **{f"share.{k}": v for k, v in self.shares.items()}}

    def restore(self, state: dict[str, Tensor], device) -> None:
        self.filled = state["filled"].to(device)
        self.shares = {k: state[f"share.{k}"].to(device) for k in self.shares}

    def mix(self, batch: UserBatch, local: LocalSamples, fresh: SampleTerms) -> SampleTerms:
        """The shares of each client's message ``v`` (eq. 9) from this round's ``fresh`` shares and the
        stored ones; refreshes the table at the chosen samples (eq. 8), and fills it at every sample of
        a client's first round (whose ``v`` is then its full gradient)."""
        filled = self.filled.index_select(0, batch.users).index_select(0, batch.owner)  # [H]
        refresh = local.chosen | ~filled
        w = torch.where(filled, local.weight, torch.ones_like(local.weight)).to(fresh.pos.dtype)
        mixed = {}
        for k, new in fresh.shares().items():
            old = self.shares[k].index_select(0, local.entries)
            wk = w.reshape(-1, *([1] * (new.dim() - 1)))
            mixed[k] = torch.where(refresh.reshape_as(wk), wk * new + (1 - wk) * old, old)
            self.shares[k].index_copy_(0, local.entries[refresh], new[refresh])
        self.filled[batch.users] = True
        return fresh.with_shares(mixed)
