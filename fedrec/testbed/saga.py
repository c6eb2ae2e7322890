"""SAGA variance reduction at the workers (Byrd-SAGA, Wu et al. 2020; paper 003, BRVR eqs. 8-10 and
Algorithm 2; ALGORITHMS.md section 6.3), vectorized across the n workers.

Each worker w keeps a table of the last gradient of each of its J samples, ``table[w, j]``, and its mean
``gbar[w] = (1/J) sum_j table[w, j]``. At step k with the mini-batch ``I_w`` (b distinct samples) the
message is

    v_w = (1/b) sum_{i in I_w} (f'_{w,i}(x^k) - table[w, i]) + gbar[w]            (eq. 9, mini-batch)

and the table is refreshed at the batch, ``table[w, i] = f'_{w,i}(x^k)`` for ``i in I_w`` (eq. 8), the
mean incrementally, ``gbar[w] += (1/J) sum_{i in I_w} (new_i - old_i)`` (Byrd-SAGA's code; O(b P)
instead of O(J P)). BRVR writes the algorithm per sample and runs it with batch 32: a per-sample table
with b entries refreshed per step (ALGORITHMS.md 6.3). Initialisation as in Algorithm 2: the full table
at x^0. ``E_I[v_w] = f'_w(x^k)`` for any table (the correction has mean zero over uniform batches), and
once every entry has been refreshed at the current x, ``v_w = f'_w(x)`` exactly.

Example::

    >>> import torch
    >>> t = SagaTables(torch.tensor([[[1.0], [3.0]]], dtype=torch.float64))  # one worker, J = 2, P = 1
    >>> v = t.step(torch.tensor([[0]]), torch.tensor([[[5.0]]], dtype=torch.float64))  # 5 - 1 + 2
    >>> v.tolist(), t.table[0, :, 0].tolist(), t.gbar.tolist()
    ([[6.0]], [5.0, 3.0], [[4.0]])
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


class SagaTables:
    """The n workers' per-sample gradient tables ``table [n, J, P]`` and their means ``gbar [n, P]``."""

    def __init__(self, table: Tensor) -> None:
        if table.ndim != 3:
            raise ValueError(f"table must be [n, J, P], got shape {tuple(table.shape)}")
        self.table = table.clone()
        self.gbar = self.table.mean(1)

    @property
    def J(self) -> int:
        return self.table.shape[1]

    def step(self, idx: Tensor, grads: Tensor) -> Tensor:
        """Worker w's message for its batch ``idx[w] [b]`` (distinct sample positions in its shard) with
        the per-sample gradients ``grads [n, b, P]`` at the current x; refreshes the table there.
        Returns ``v [n, P]``."""
        n, b = idx.shape
        if grads.shape[:2] != (n, b) or len(set(idx[0].tolist())) != b:
            raise ValueError(
                f"grads must be [n, b, P] for idx [n, b] of distinct samples, got {tuple(grads.shape)}"
            )
        old = self.table.gather(1, idx[:, :, None].expand(n, b, self.table.shape[2]))
        v = (grads - old).mean(1) + self.gbar
        self.gbar = self.gbar + (grads - old).sum(1) / self.J
        self.table.scatter_(1, idx[:, :, None].expand_as(grads), grads)
        return v


def literal_saga_step(
    table: list[list[Tensor]], gbar: list[Tensor], idx: list[list[int]], grads: list[list[Tensor]]
) -> list[Tensor]:
    """``SagaTables.step`` written out, one worker and one sample at a time (tests only): ``table[w][j]``
    and ``gbar[w]`` are updated in place (``gbar`` recomputed as the table's mean)."""
    out = []
    for w, batch in enumerate(idx):
        corr = [grads[w][k] - table[w][i] for k, i in enumerate(batch)]
        out.append(sum(corr) / len(batch) + gbar[w])
        for k, i in enumerate(batch):
            table[w][i] = grads[w][k].clone()
        gbar[w] = sum(table[w]) / len(table[w])
    return out
