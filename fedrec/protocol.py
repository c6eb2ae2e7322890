"""The wire and round types (DESIGN.md section 3). Pure data: no fedrec imports, no behaviour beyond
shape bookkeeping, so every layer above can speak them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch


@dataclass
class ServerState:
    """The global model after round ``t``: the stacked table ``theta [n_rows, d]`` and the optimizer
    state tensors of the same shape (Adam ``m``, ``v``; SGD-momentum ``m``; AdaGrad / RMSProp ``r``)."""

    theta: torch.Tensor
    state: dict[str, torch.Tensor]
    t: int = 0

    # the store of a state whose default pass is deferred (fedrec.federation.deferred); None here
    deferred = None

    def clone(self) -> ServerState:
        return ServerState(self.theta.clone(), {k: v.clone() for k, v in self.state.items()}, self.t)

    @property
    def device(self) -> torch.device:
        return self.theta.device

    @property
    def n_rows(self) -> int:
        return int(self.theta.shape[0])

    @property
    def dim(self) -> int:
        return int(self.theta.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.theta.dtype

    def rows_at(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """``theta`` and every state tensor at ``rows`` (copies): the ``prev`` of the optimizer rule.
        What the round's stages read instead of the whole tables, so that a deferred state need only
        catch those rows up."""
        return {
            "theta": self.theta.index_select(0, rows),
            **{k: v.index_select(0, rows) for k, v in self.state.items()},
        }

    def current_tables(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """The whole tables, of which the caller reads ``rows`` only (a gather of its own)."""
        return {"theta": self.theta, **self.state}

    def tables_for(self, rows: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Tables holding ``rows``' current values and where they are in them: ``current_tables(rows)``
        and ``rows`` (the caller gathers), or, where the state cannot lend its tables (a deferred state a
        later round moved), ``rows_at(rows)`` and ``0 .. len - 1``."""
        return self.current_tables(rows), rows

    def advanced(self, t: int) -> ServerState:
        """The same tables at round ``t`` (a round that changed nothing)."""
        return ServerState(theta=self.theta, state=self.state, t=t)


@dataclass
class Upload:
    """One client's message: its values at the listed rows of the stacked table.

    ``rows`` are sorted unique row ids; every unlisted row holds, by definition, the value an honest
    client with a zero gradient on that row would send (the optimizer rule's ``default_rows``). So an
    upload of ``k`` rows is exactly the dense message of paper 000 Algorithm 1 at O(k d) size.
    """

    client_id: int
    rows: torch.Tensor  # int64 [k]
    theta: torch.Tensor  # [k, d]
    state: dict[str, torch.Tensor]  # name -> [k, d]
    n_examples: int


@dataclass
class UploadBatch:
    """The uploads of a round concatenated: client ``i`` owns ``rows[ptr[i]:ptr[i+1]]`` and the same
    slice of ``theta`` and every state tensor. What the server consumes, with no per-client loop."""

    client_ids: torch.Tensor  # int64 [n]
    ptr: torch.Tensor  # int64 [n + 1]
    rows: torch.Tensor  # int64 [K]
    theta: torch.Tensor  # [K, d]
    state: dict[str, torch.Tensor]  # name -> [K, d]
    n_examples: torch.Tensor  # [n]

    @property
    def n(self) -> int:
        return int(self.client_ids.shape[0])

    def counts(self) -> torch.Tensor:
        return torch.diff(self.ptr)  # ptr[1:] - ptr[:-1] in one operation (a round asks ~10 times)

    def owner(self) -> torch.Tensor:
        """The upload index of every listed row: ``[K]``."""
        # output_size: K is known, so a CUDA device need not sync to size the result
        return torch.repeat_interleave(
            torch.arange(self.n, device=self.rows.device), self.counts(), output_size=self.rows.shape[0]
        )

    def upload(self, i: int) -> Upload:
        lo, hi = int(self.ptr[i]), int(self.ptr[i + 1])
        return Upload(
            client_id=int(self.client_ids[i]),
            rows=self.rows[lo:hi],
            theta=self.theta[lo:hi],
            state={k: v[lo:hi] for k, v in self.state.items()},
            n_examples=int(self.n_examples[i]),
        )

    def select(self, keep: torch.Tensor) -> UploadBatch:
        """The uploads with ``keep[i]`` true, as a new batch (a segment gather, no loop over clients).
        On the CPU a mask that keeps every upload gives a new batch over the same tensors (no copy; the
        batch's tensors are never written in place); on an accelerator the check would be a host sync,
        so the gather runs."""
        if (
            keep.device.type == "cpu"
            and keep.dtype == torch.bool
            and keep.shape == (self.n,)
            and bool(keep.all())
        ):
            return dataclasses.replace(self, state=dict(self.state))
        if keep.dtype != torch.bool or keep.shape != (self.n,):  # metadata only: no sync
            raise ValueError(
                f"select takes a bool mask of shape ({self.n},), got {keep.dtype} {tuple(keep.shape)}"
            )
        # one nonzero per mask, then gathers: every boolean-mask index is a host sync on an accelerator
        row_idx = keep[self.owner()].nonzero().squeeze(1)
        keep = keep.nonzero().squeeze(1)
        counts = self.counts().index_select(0, keep)
        ptr = torch.zeros(counts.shape[0] + 1, dtype=torch.int64, device=counts.device)
        torch.cumsum(counts, 0, out=ptr[1:])
        return UploadBatch(
            client_ids=self.client_ids.index_select(0, keep),
            ptr=ptr,
            rows=self.rows.index_select(0, row_idx),
            theta=self.theta.index_select(0, row_idx),
            state={k: v.index_select(0, row_idx) for k, v in self.state.items()},
            n_examples=self.n_examples.index_select(0, keep),
        )

    def take(self, index: torch.Tensor) -> UploadBatch:
        """The uploads ``index[j]`` in that order (repeats allowed), as a new batch: a segment gather,
        no loop over clients. On the CPU ``index = 0, 1, ..., n - 1`` shares the tensors (``select``)."""
        if (
            index.device.type == "cpu"
            and index.dtype == torch.int64
            and index.shape == (self.n,)
            and torch.equal(index, torch.arange(self.n, device=index.device))
        ):
            return dataclasses.replace(self, state=dict(self.state))
        # index_select, not x[index]: the same copies, ~2x faster on a round's [K, d] tensors; an index
        # outside [0, n) raises IndexError either way (take is never given negative ones)
        counts = self.counts().index_select(0, index)
        ptr = torch.zeros(counts.shape[0] + 1, dtype=torch.int64, device=counts.device)
        torch.cumsum(counts, 0, out=ptr[1:])
        total = int(ptr[-1])
        # entry e of upload j sits at self.ptr[index[j]] + (e - ptr[j])
        owner = torch.repeat_interleave(
            torch.arange(index.shape[0], device=counts.device), counts, output_size=total
        )
        start = self.ptr.index_select(0, index) - ptr[:-1]
        src = start.index_select(0, owner) + torch.arange(total, device=counts.device)
        return UploadBatch(
            client_ids=self.client_ids.index_select(0, index),
            ptr=ptr,
            rows=self.rows.index_select(0, src),
            theta=self.theta.index_select(0, src),
            state={k: v.index_select(0, src) for k, v in self.state.items()},
            n_examples=self.n_examples.index_select(0, index),
        )

    def cat(self, other: UploadBatch) -> UploadBatch:
        """This batch's uploads followed by ``other``'s (in this batch's dtypes)."""
        return UploadBatch(
            client_ids=torch.cat([self.client_ids, other.client_ids]),
            ptr=torch.cat([self.ptr, other.ptr[1:] + self.ptr[-1]]),
            rows=torch.cat([self.rows, other.rows]),
            theta=torch.cat([self.theta, other.theta.to(self.theta.dtype)]),
            state={k: torch.cat([v, other.state[k].to(v.dtype)]) for k, v in self.state.items()},
            n_examples=torch.cat([self.n_examples, other.n_examples]),
        )

    @classmethod
    def from_uploads(
        cls, uploads: list[Upload], d: int, state_names: tuple[str, ...], device=None
    ) -> UploadBatch:
        """Concatenate single uploads (tests, attacks and the Flower adapter; not the hot path)."""
        device = device if device is not None else (uploads[0].rows.device if uploads else "cpu")
        counts = torch.tensor([u.rows.shape[0] for u in uploads], dtype=torch.int64, device=device)
        ptr = torch.zeros(len(uploads) + 1, dtype=torch.int64, device=device)
        torch.cumsum(counts, 0, out=ptr[1:])

        def cat(xs, shape):
            return torch.cat(xs).to(device) if xs else torch.zeros(shape, device=device)

        return cls(
            client_ids=torch.tensor([u.client_id for u in uploads], dtype=torch.int64, device=device),
            ptr=ptr,
            rows=cat([u.rows for u in uploads], (0,)).long(),
            theta=cat([u.theta for u in uploads], (0, d)),
            state={k: cat([u.state[k] for u in uploads], (0, d)) for k in state_names},
            n_examples=torch.tensor([u.n_examples for u in uploads], dtype=torch.int64, device=device),
        )


# The largest |theta| an upload or a checkpoint may hold: honest values stay within a few units (theta^0 ~
# N(0, init_std^2), init_std <= 1e3), and below it the squares a defense sums over a round's coordinates
# (1e30 each, ~1e7 of them) and the model's scores stay finite in float32.
THETA_MAX = 1e15

REASONS: tuple[str, ...] = (
    "",  # accepted
    "shape",  # wrong shapes or dtypes, missing state
    "non-finite",  # NaN or Inf anywhere in the upload
    "row-out-of-range",
    "rows-unsorted-or-duplicated",
    "n-examples-invalid",  # zero or negative
    "n-examples-absurd",  # more examples than the catalog has items
    "weight-share",  # one upload claiming most of the round's weight
    "rule-verify",  # breaks the optimizer rule's equations (paper 000 footnote 2)
    "filtered",  # rejected by the defense's selection rule
    "too-few-uploads",  # the rule cannot run on so few valid uploads
    # appended (stored rounds.parquet files keep their codes)
    "client-id",  # the declared client id is not an int64, or not a client sampled this round
    "duplicate-client",  # a second upload for a sampled client (the first one counts)
    "missing",  # a sampled client sent no upload
    "state-domain",  # a state no honest client can hold (Adam's v, AdaGrad / RMSProp's r below 0)
    "magnitude",  # a reconstructed gradient beyond defense.max_grad (or, unverified, |theta| past THETA_MAX)
    # a transport's reasons (the Flower deployment): why a sampled client's upload never came
    "no-reply",  # its node did not reply before the round's deadline, or no node holds the client
    "node-error",  # its node replied with an error (the ClientApp raised, or the node went away)
    "undecodable",  # its node's reply does not decode as an upload batch
)
"""Why an upload was rejected; ``Decision.reasons`` holds indices into this tuple."""


@dataclass
class Decision:
    """The server's verdict on a round's uploads: per upload a weight (0 = rejected), a score and
    the reason (an index into ``REASONS``: 0 = accepted). ``aggregate`` is set by coordinate-wise
    rules, which produce the new global values themselves: ``{key: (rows, values)}`` replacing the
    weighted mean at ``rows`` (defaults elsewhere)."""

    weights: torch.Tensor  # [n] aggregation weights, summing to 1 over accepted uploads
    accepted: torch.Tensor  # bool [n]
    scores: torch.Tensor  # [n] the rule's score (nan where it has none)
    reasons: torch.Tensor  # int64 [n] indices into REASONS
    aggregate: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
    info: dict[str, torch.Tensor] = field(default_factory=dict)

    def reason_names(self) -> list[str]:
        return [REASONS[int(i)] for i in self.reasons.tolist()]


@dataclass
class RoundRecord:
    """What happened in round ``t`` (one row per sampled client in rounds.parquet)."""

    t: int
    client_ids: torch.Tensor
    byzantine: torch.Tensor  # bool [n]
    accepted: torch.Tensor  # bool [n]
    scores: torch.Tensor  # [n]
    reasons: torch.Tensor  # int64 [n] indices into REASONS
    loss: torch.Tensor  # 0-d: the honest clients' summed loss (a tensor: no host sync in the loop)
