"""Pre-aggregation before a robust rule (paper 003, BRVR Algorithm 1 and eqs. 12-13, after He,
Karimireddy, Jaggi 2020; ALGORITHMS.md sections 6.2, 8.4): the n uploads are mixed into W averages
``y_w = sum_j B[w, j] x_j`` (each a mean of s inputs) and the rule runs on the averages:

    x~ = resampling(x, s),   U = AGG(x~_1, ..., x~_W)          (BRVR eqs. 12-13: AGG = geomed)

Averaging s inputs shrinks both the inner and the outer variation of the honest inputs by about
``d = (W - 1) / (sW - 1) ~ 1/s`` (Lemma 5, eq. 30), which lets a median-type rule approach the mean on
non-iid data; the price is that one Byzantine input now reaches up to s averages, so the rule is told
``s f`` (resampling) and the tolerance drops from ``f < n/2`` to ``f < n/(2s)``.

Steps (registry ``PRE_STEPS``; a defense names one with ``pre``, its ``s`` sits in ``defense.params``):

- ``resample`` (s-replacement): W = n averages; the multiset holding every index s times is permuted
  uniformly and cut into n consecutive groups of s (an index may repeat inside a group). Every input is
  used exactly s times, each average is a mean of s inputs, at most ``s f`` averages hold a Byzantine
  input, ``E[y_w] = mean(x)`` for every w (eq. 29) and the variance identity eq. (30) holds exactly:
  ``E|y_w - mean(x)|^2 = d / n sum_j |x_j - mean(x)|^2``. (BRVR Algorithm 1 draws each member
  uniformly among the indices still used fewer than s times, which is not a uniform permutation and
  satisfies (30) only approximately, ALGORITHMS.md 6.2; the permutation form is the one the lemma
  proves.) The rule gets ``s f``.
- ``bucket`` (Karimireddy, He, Jaggi, ICLR 2022, which MixTailor cites for its non-iid runs): one
  uniform permutation of the n inputs cut into ``ceil(n / s)`` buckets of s (the last may be smaller),
  each input used once; a Byzantine input reaches one bucket, so the rule gets f.

The rule's answer on the averages becomes an answer on the uploads through B: a selecting rule's
accepted averages (their plain mean) and a weighting rule's convex weights ``beta`` give the convex
weights ``B^T a`` over the uploads (so ``geomed`` + ``resample`` is a ``weight`` rule, and the server
still aggregates every uploaded quantity with one set of weights); an aggregating rule's vector is
kept as it is. Averages are plain means and the inner rule sees no n_i weights (BRVR's workers are
equal). An upload counts as accepted when it has a positive weight (aggregating rules: when one of its
averages is accepted).

Randomness: one ``randperm`` on the server's generator of the round (``rng``), the same in the fast and
the literal form; a pre-step always needs it. The fast form mixes the sparse vectors without a loop
over clients: every (average, member) pair repeats the member's entries, and equal (average, row) keys
are summed (``torch.unique`` + ``index_add``).

Example::

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> B = mixing("resample", 4, g, 2)
    >>> B.sum(1).tolist(), (B > 0).sum(0).le(2).all().item(), (2 * B).sum(0).tolist()  # rows: means of 2
    ([1.0, 1.0, 1.0, 1.0], True, [2.0, 2.0, 2.0, 2.0])
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch

from fedrec.defenses.base import RULES, RuleResult, RuleSpec, nan_scores
from fedrec.defenses.vectors import ClientVectors
from fedrec.registry import Registry

Tensor = torch.Tensor


@dataclass(frozen=True)
class PreStep:
    """A pre-aggregation step: ``name``, how many inputs an average holds (``s``), how a Byzantine input
    spreads (``f_out``: the f the rule is told), the fewest uploads for a rule needing ``m`` inputs."""

    name: str
    f_out: Any  # (f, s) -> int
    min_n: Any  # (m, s) -> int: uploads needed so that the rule gets at least m averages
    description: str = ""


PRE_STEPS: Registry[PreStep] = Registry("pre-aggregation step")
PRE_STEPS.register(
    PreStep("resample", lambda f, s: s * f, lambda m, s: m,
            "s-replacement: n averages of s, every input used s times (rule told s f)")
)  # fmt: skip
PRE_STEPS.register(
    PreStep("bucket", lambda f, s: f, lambda m, s: s * (m - 1) + 1,
            "bucketing: ceil(n / s) averages of s, every input used once (rule told f)")
)  # fmt: skip


MAX_S = 1024  # a round draws n s indices: s = 10^8 allocated gigabytes before any check (paper 003: s = 2)


def _check_s(s: int) -> None:
    if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= MAX_S:
        raise ValueError(f"s must be an integer in [1, {MAX_S}] (inputs per average), got {s!r}")


def mixing(pre: str, n: int, rng: torch.Generator | None, s: int) -> Tensor:
    """``B [W, n]`` float64 on ``rng``'s device: row w holds the share of every input in average w
    (``1/s`` per use; a bucket of size b: ``1/b``). One ``randperm`` on ``rng``."""
    _check_s(s)
    if rng is None:
        raise ValueError(f"pre-aggregation {pre!r} draws from the server's generator: rng must be given")
    device = rng.device
    if pre == "resample":
        members = torch.arange(n, device=device).repeat(s)[
            torch.randperm(n * s, generator=rng, device=device)
        ]
        B = torch.zeros(n, n, dtype=torch.float64, device=device)
        B.index_put_((torch.arange(n, device=device).repeat_interleave(s), members),
                     torch.full((n * s,), 1.0 / s, dtype=torch.float64, device=device), accumulate=True)  # fmt: skip
        return B
    if pre == "bucket":
        perm = torch.randperm(n, generator=rng, device=device)
        W = math.ceil(n / s)
        bucket = torch.arange(n, device=device) // s
        size = torch.bincount(bucket, minlength=W).to(torch.float64)
        B = torch.zeros(W, n, dtype=torch.float64, device=device)
        B[bucket, perm] = 1.0 / size[bucket]
        return B
    raise ValueError(f"unknown pre-aggregation step {pre!r}; known: {', '.join(PRE_STEPS)}")


def mix(v: ClientVectors, B: Tensor) -> ClientVectors:
    """The averages ``y_w = sum_j B[w, j] x_j`` as sparse vectors: average w lists the union of its
    members' rows (sorted), accumulated in float64, returned in the values' dtype."""
    w_idx, j_idx = B.nonzero(as_tuple=True)  # pairs, by average then member
    counts = v.counts()[j_idx]
    pair = torch.repeat_interleave(torch.arange(w_idx.shape[0], device=v.device), counts)
    first = v.ptr[:-1][j_idx]
    start = torch.cumsum(counts, 0) - counts
    entry = first[pair] + torch.arange(pair.shape[0], device=v.device) - start[pair]
    owner = w_idx[pair]
    key = owner * v.n_rows + v.rows[entry]
    keys, where = torch.unique(key, sorted=True, return_inverse=True)
    vals = torch.zeros(keys.shape[0], v.d, dtype=torch.float64, device=v.device)
    vals.index_add_(0, where, v.values[entry].to(torch.float64) * B[w_idx, j_idx][pair][:, None])
    W = B.shape[0]
    ptr = torch.zeros(W + 1, dtype=torch.int64, device=v.device)
    torch.cumsum(torch.bincount(keys // v.n_rows, minlength=W), 0, out=ptr[1:])
    return ClientVectors(ptr=ptr, rows=keys % v.n_rows, values=vals.to(v.values.dtype), n_rows=v.n_rows)


def _back(res: RuleResult, B: Tensor, kind: str, n: int) -> RuleResult:
    """The rule's answer on the W averages as an answer on the n uploads (module docstring)."""
    if kind == "aggregate":
        acc = None if res.accepted is None else (B.T @ res.accepted.to(B.dtype).to(B.device)) > 0
        return RuleResult(
            scores=nan_scores(n, B.device), accepted=acc, aggregate=res.aggregate, info=res.info
        )
    if kind == "select":
        a = res.accepted.to(B.dtype).to(B.device)
        a = a / a.sum()
    else:
        a = res.weights.to(B.device, B.dtype)
    w = B.T @ a
    return RuleResult(scores=w, accepted=w > 0, weights=w, info=res.info)


@dataclass(frozen=True)
class ComposedSpec(RuleSpec):
    """``pre`` then ``inner`` with ``s`` inputs per average: a ``RuleSpec`` whose parameters are the
    inner rule's plus ``s``."""

    inner: RuleSpec | None = None
    pre: PreStep | None = None
    s: int = 2

    @property
    def params(self) -> dict[str, Any]:
        return {**self.inner.params, "s": self.s}


@functools.cache
def compose(pre: str, rule: str, s: int = 2) -> ComposedSpec:
    """The rule ``rule`` after the pre-aggregation step ``pre`` with ``s`` inputs per average (``fast``
    and ``literal`` both mix with the same draw ``mixing(pre, n, rng, s)``; ``min_n`` counts with this
    s, so a defense composes with the ``s`` of its parameters)."""
    _check_s(s)
    step, inner = PRE_STEPS.lookup(pre), RULES.lookup(rule)
    if isinstance(inner, ComposedSpec):
        raise ValueError(f"rule {rule!r} already has a pre-aggregation step")
    kind = "aggregate" if inner.kind == "aggregate" else "weight"
    s_default = s

    def fast(v: ClientVectors, f: int, *, rng: torch.Generator | None = None, s: int = s_default,
             **params: Any) -> RuleResult:  # fmt: skip
        B = mixing(pre, v.n, rng, s)
        res = inner(mix(v, B), step.f_out(f, s), rng=rng, **params)
        return _back(res, B, inner.kind, v.n)

    def literal(x: Tensor, f: int, *, rng: torch.Generator | None = None, s: int = s_default,
                **params: Any) -> RuleResult:  # fmt: skip
        n = x.shape[0]
        B = mixing(pre, n, rng, s).cpu()
        X = x.reshape(n, -1).to(torch.float64)
        y = torch.stack([sum(float(B[w, j]) * X[j] for j in range(n)) for w in range(B.shape[0])])
        res = inner.run_literal(y.reshape(B.shape[0], *x.shape[1:]), step.f_out(f, s), rng=rng, **params)
        return _back(res, B, inner.kind, n)

    return ComposedSpec(
        name=f"{pre}+{rule}", kind=kind, fast=fast, literal=literal,
        min_n=lambda f: step.min_n(inner.min_n(step.f_out(f, s_default)), s_default),
        needs_rng=True, description=f"{step.description}, then {rule}", inner=inner, pre=step, s=s,
    )  # fmt: skip
