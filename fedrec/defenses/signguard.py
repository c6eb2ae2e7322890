"""SignGuard (Xu, Huang, Wang, Shi, Kang, Lam, "Byzantine-robust Federated Learning through Collaborative
Malicious Gradient Filtering", paper 002, Algorithm 2; ALGORITHMS.md section 5): a norm filter and a
sign-statistics clustering filter run side by side, and the mean of the trusted vectors, each clipped to
the median norm. Registered as the ``aggregate`` rules ``signguard``, ``signguard-sim`` and
``signguard-dist`` (the stateless -Sim / -Dist variants of section 5.5).

Algorithm 2, as implemented here (x_i the client vectors, n of them; f is not used: SignGuard does not
need the number of Byzantine clients):

1. Norm filter. ``M = median_i |x_i|`` (NumPy's median: the mean of the two middle norms for even n),
   ``S1 = {i : L < |x_i| / M < R}`` with ``L = lower = 0.1``, ``R = upper = 3.0``. The inequalities are
   strict, as in the authors' code (the paper writes ``<=``).
2. Sign clustering. A subset of ``floor(coords * D)`` coordinates (``coords = 0.1``, at least one) of
   the support (below) is drawn from ``rng``; client i's features are the fractions of positive, zero
   and negative entries of x_i on it, each column divided by its maximum over clients + 1e-8 (authors'
   code). The features are clustered with scikit-learn's Mean-Shift, ``bandwidth =
   estimate_bandwidth(features, quantile=0.5, n_samples=50)`` (-Dist: ``n_samples = n``),
   ``MeanShift(bandwidth, bin_seeding=True, cluster_all=False)``; ``S2`` is the largest cluster
   (orphans, label -1, belong to none).
3. ``S' = S1 & S2``; the output is ``(1/|S'|) sum_{i in S'} x_i min(1, M / |x_i|)`` (``weighted_sum``
   over the union of listed rows).

Authors'-code choices followed (ALGORITHMS.md section 5.4): strict norm bounds; NumPy's median for M;
``sample="block"`` (default) is their "random 10 %": one contiguous block of ``floor(coords * D)``
coordinates, start uniform in ``[0, D - len)`` (``torch.randint(0, D - len)``; start 0 when ``len = D``),
one draw per round; ``sample="random"`` draws the coordinates without replacement instead
(``randperm(D)[:len]``, the paper's wording); the feature normalisation; the Mean-Shift settings.

Where this deviates:

- **Support** (``support="union"``, default). fedrec's vectors are sparse over a huge ``[n_rows, d]``
  table (ALGORITHMS.md section 5.6): a block of the flat table is mostly zero for every client, and
  the zero fraction then measures activity, not maliciousness. The subset is therefore drawn from the
  ``D = |U| * d`` coordinates of the union ``U`` of listed rows (sorted by row, then column), which on a
  dense upload (every row listed) is the paper's flat vector exactly. ``support="all"`` uses the whole
  table, ``D = n_rows * d`` (the paper's literal reading). ``literal`` sees dense vectors only, so its
  ``U`` is the rows where some client is nonzero: the rows ``ClientVectors.from_dense(x)`` lists.
- **One median.** The authors' code clips to torch's (lower) median norm and filters with NumPy's;
  here M is NumPy's median for both (Algorithm 2's single M).
- **Zero norms.** ``min(1, M / |x_i|)`` is 1 for ``|x_i| = 0`` (no NaN; the code divides by 0).
- **Fallbacks** (the code has none), each named in ``info["fallback"]`` (a tuple, empty when none):
  ``"empty-support"``: no coordinate to sample (nobody lists a row), ``S2`` = everyone;
  ``"bandwidth-zero"``: ``estimate_bandwidth`` returns 0 (all features identical; MeanShift would
  raise), ``S2`` = everyone; ``"no-cluster"``: every point is an orphan (or MeanShift finds none),
  ``S2`` = everyone; ``"no-trusted"``: ``S'`` is empty, nobody is accepted and the aggregate is 0 over
  no rows (``literal``: 0 over every row). A zero median norm (more than half of the vectors are 0)
  leaves ``S1`` empty (``0/0`` and ``x/0`` fail both strict bounds), hence ``"no-trusted"``: the
  clipped mean would be 0 anyway.
- **Ties** between equally large clusters go to the one holding the lowest client index (the code
  takes the first label in scikit-learn's order).
- **-Sim / -Dist** are the stateless forms (no previous aggregate; the server cannot trace uploads
  across rounds in the paper's model, and a rule here is a pure function of one round). -Sim:
  ``sim_i = median_j cos(x_i, x_j)`` over the full row of the cosine matrix with its diagonal set to 0
  (included, as in the authors' code; cos = 0 when a norm is 0), feature ``clamp(sim_i, 0, m) / (5 m +
  1e-8)`` with ``m = max(median_i sim_i, 0)`` (capped at 0.2; all 0 when the median similarity is not
  positive). -Dist: ``dist_i`` = the sum of the ``n // 2`` smallest entries of row i of the distance
  matrix (its zero diagonal included, likewise), feature 0.2 if ``dist_i >= 1.1 median_i dist_i`` else
  0. Both extra features are appended unnormalised to the three normalised sign features; pairwise
  quantities come from the sparse Gram matrix (``gram``).

Randomness: the rule needs ``rng`` (``needs_rng=True``); ``draw_subset`` makes the only draws, once, up
front, so ``fast`` and ``literal`` consume the same numbers. ``estimate_bandwidth`` subsamples with its
own fixed ``random_state=0`` when n > n_samples. The features ([n, 3] or [n, 4]) go to the host for
Mean-Shift: the rule's one device-to-host transfer of values (besides the size of ``S'``).

Example::

    >>> import torch
    >>> from fedrec.defenses.vectors import ClientVectors
    >>> g = torch.Generator().manual_seed(0)
    >>> honest = 1.0 + torch.randn(8, 20, 4, generator=g, dtype=torch.float64)
    >>> x = torch.cat([honest, -honest[:2], 100 * honest[2:3]])  # 2 sign-flipped, 1 scaled x100
    >>> res = signguard(ClientVectors.from_dense(x), 0, rng=torch.Generator().manual_seed(1))
    >>> res.accepted.tolist()[8:]
    [False, False, False]
"""

from __future__ import annotations

import functools
import math
import statistics
import warnings
from typing import Any

import numpy as np
import torch

from fedrec.defenses.base import RuleResult, RuleSpec, dense_rows, register_rule
from fedrec.defenses.vectors import ClientVectors, gram, sq_distances_from_gram, sq_norms, weighted_sum

Tensor = torch.Tensor

VARIANTS = ("plain", "sim", "dist")
SAMPLES = ("block", "random")
SUPPORTS = ("union", "all")
EPS = 1e-8
"""Added to each feature column's maximum (authors' code) and to the -Sim denominator."""


# ------------------------------------------------------------------------------------- shared helpers


def _check(lower: float, upper: float, coords: float, sample: str, support: str) -> None:
    if not 0.0 <= lower < upper:
        raise ValueError(f"signguard needs 0 <= lower < upper, got lower={lower}, upper={upper}")
    if not 0.0 < coords <= 1.0:
        raise ValueError(f"signguard coords is a fraction in (0, 1], got {coords}")
    if sample not in SAMPLES:
        raise ValueError(f"signguard sample must be one of {SAMPLES}, got {sample!r}")
    if support not in SUPPORTS:
        raise ValueError(f"signguard support must be one of {SUPPORTS}, got {support!r}")


def draw_subset(size: int, coords: float, sample: str, rng: torch.Generator | None) -> Tensor:
    """The coordinate subset: sorted flat indices in ``[0, size)`` (int64, on ``rng``'s device).

    ``block``: ``floor(coords * size)`` (at least 1) contiguous coordinates from a start drawn by
    ``torch.randint(0, max(1, size - len))``; ``random``: ``randperm(size)[:len]``. Nothing is drawn when
    ``size == 0`` (an empty subset). The only draws of the rule, shared by ``fast`` and ``literal``."""
    if rng is None:
        raise ValueError("signguard draws its coordinate subset from rng: pass a torch.Generator")
    dev = rng.device
    if size == 0:
        return torch.zeros(0, dtype=torch.int64, device=dev)
    m = max(1, math.floor(coords * size))
    if sample == "block":
        start = torch.randint(0, max(1, size - m), (1,), generator=rng, device=dev)
        return start + torch.arange(m, device=dev)
    return torch.sort(torch.randperm(size, generator=rng, device=dev)[:m]).values


def median(t: Tensor) -> Tensor:
    """NumPy's median of a 1-D tensor (the mean of the two middle values for even length), float64."""
    s = torch.sort(t.to(torch.float64)).values
    n = s.shape[0]
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def _row_median(a: Tensor) -> Tensor:
    """NumPy's median of every row of ``a [n, k]``."""
    s = torch.sort(a, dim=1).values
    k = s.shape[1]
    return s[:, k // 2] if k % 2 else 0.5 * (s[:, k // 2 - 1] + s[:, k // 2])


def normalise(frac: Tensor) -> Tensor:
    """Each column divided by its maximum over clients plus 1e-8 (authors' code)."""
    return frac / (frac.max(0).values + EPS)


def sim_feature(sim: Tensor) -> Tensor:
    """-Sim's feature from ``sim [n]``: ``clamp(sim_i, 0, m) / (5 m + 1e-8)``, ``m = max(median sim, 0)``."""
    m = median(sim).clamp_min(0.0)
    return torch.minimum(sim.clamp_min(0.0), m) / (5.0 * m + EPS)


def dist_feature(dist: Tensor) -> Tensor:
    """-Dist's feature from ``dist [n]``: 0.2 where ``dist_i >= 1.1 median``, else 0."""
    return (dist >= 1.1 * median(dist)).to(torch.float64) * 0.2


def cluster(features: Tensor, n_samples: int) -> tuple[np.ndarray, float, tuple[str, ...], np.ndarray]:
    """Mean-Shift on the host: ``(in_S2 [n] bool, bandwidth, fallbacks, labels [n])``.

    ``S2`` is the largest non-orphan cluster, ties to the cluster holding the lowest index; everyone
    when the bandwidth is 0 (``"bandwidth-zero"``) or no cluster is found (``"no-cluster"``)."""
    from sklearn.cluster import MeanShift, estimate_bandwidth

    feats = features.detach().to("cpu", torch.float64).numpy()
    n = feats.shape[0]
    everyone = np.ones(n, dtype=bool)
    orphans = np.full(n, -1, dtype=np.int64)
    bandwidth = float(estimate_bandwidth(feats, quantile=0.5, n_samples=n_samples, random_state=0))
    if not bandwidth > 0.0:
        return everyone, bandwidth, ("bandwidth-zero",), orphans
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Binning data failed with provided bin_size": it falls back
            labels = MeanShift(bandwidth=bandwidth, bin_seeding=True, cluster_all=False).fit(feats).labels_
    except ValueError:  # "No point was within bandwidth=... of any seed"
        return everyone, bandwidth, ("no-cluster",), orphans
    labels = np.asarray(labels, dtype=np.int64)
    found = np.unique(labels[labels >= 0])
    if found.size == 0:
        return everyone, bandwidth, ("no-cluster",), labels
    sizes = np.array([(labels == c).sum() for c in found])
    tied = found[sizes == sizes.max()]
    first = min(tied, key=lambda c: int(np.flatnonzero(labels == c)[0]))
    return labels == first, bandwidth, (), labels


def _finish(
    variant: str,
    m: Tensor,
    s1: Tensor,
    features: Tensor,
    params: dict[str, Any],
    fallback: tuple[str, ...],
    n_samples: int,
) -> tuple[Tensor, int, dict[str, Any]]:
    """Step 2's clustering and S' from the norm filter's ``M`` and ``S1`` and the features: ``(accepted,
    |S'|, info)`` (shared by ``fast`` and ``literal``)."""
    dev = s1.device
    if "empty-support" in fallback:
        s2_np, bandwidth, more, labels = np.ones(s1.shape[0], dtype=bool), float("nan"), (), None
    else:
        s2_np, bandwidth, more, labels = cluster(features, n_samples)
    s2 = torch.as_tensor(s2_np, device=dev)
    accepted = s1 & s2
    count = int(accepted.sum())
    fallback = fallback + more
    if count == 0:
        fallback = (*fallback, "no-trusted")
    info = {
        "rule": "signguard" if variant == "plain" else f"signguard-{variant}",
        **params,
        "median_norm": m,
        "norm_ok": s1,
        "sign_ok": s2,
        "features": features,
        "bandwidth": bandwidth,
        "labels": labels,
        "fallback": fallback,
    }
    return accepted, count, info


# ------------------------------------------------------------------------------------------------ fast


def _support(v: ClientVectors) -> tuple[Tensor, Tensor]:
    """The union's rows that hold a nonzero value for some client (``[M]`` bool over the union; a row
    listed only with zeros carries no sign and is what the literal dense reading cannot see either),
    and each entry's position in the union."""
    union = v.union_rows()
    pos = torch.searchsorted(union, v.rows)
    nonzero = (v.values != 0).any(1).to(torch.int64)
    live = torch.zeros(union.shape[0], dtype=torch.int64, device=v.device).index_add_(0, pos, nonzero) > 0
    return live, pos


def sign_fractions(
    v: ClientVectors, subset: Tensor, support: str = "union", live: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """``[n, 3]`` float64 fractions of positive, zero and negative entries of each client on the flat
    coordinates ``subset`` of the support (``union``: position among the union's live rows * d +
    column; ``all``: row * d + column). Unlisted coordinates are zeros. No loop over clients.
    ``live``: ``_support(v)`` when the caller has it already."""
    n, d = v.n, v.d
    dev = v.device
    if support == "union":
        rows_live, upos = _support(v) if live is None else live
        size = int(rows_live.sum()) * d
        in_support = rows_live[upos]
        pos = torch.where(in_support, torch.cumsum(rows_live, 0)[upos] - 1, 0)
    else:
        pos, size = v.rows, v.n_rows * d
        in_support = torch.ones_like(v.rows, dtype=torch.bool)
    member = torch.zeros(size, dtype=torch.bool, device=dev)
    member[subset.to(dev)] = True
    inside = member[pos[:, None] * d + torch.arange(d, device=dev)] & in_support[:, None]  # [K, d]
    owner = v.owner()
    zeros = torch.zeros(n, dtype=torch.float64, device=dev)
    n_pos = zeros.index_add(0, owner, ((v.values > 0) & inside).sum(1).to(torch.float64))
    n_neg = zeros.index_add(0, owner, ((v.values < 0) & inside).sum(1).to(torch.float64))
    m = float(subset.shape[0])
    return torch.stack([n_pos / m, (m - n_pos - n_neg) / m, n_neg / m], dim=1)


def _fast(
    variant: str,
    v: ClientVectors,
    rng: torch.Generator | None,
    params: dict[str, Any],
    block_rows: int | None,
) -> RuleResult:
    _check(**params)
    n = v.n
    if n < 1:
        raise ValueError("signguard needs at least one client")
    live = _support(v) if params["support"] == "union" else None
    size = (int(live[0].sum()) if live is not None else v.n_rows) * v.d
    subset = draw_subset(size, params["coords"], params["sample"], rng)
    fallback: tuple[str, ...] = ()
    if size == 0:
        fallback = ("empty-support",)
        features = torch.zeros(n, 3, dtype=torch.float64, device=v.device)
    else:
        features = normalise(sign_fractions(v, subset, params["support"], live))
    if variant == "plain":
        norms = sq_norms(v).sqrt()
    else:
        g = gram(v, block_rows)
        norms = g.diagonal().clamp_min(0.0).sqrt()
        if variant == "sim":
            outer = norms[:, None] * norms[None, :]
            cos = torch.where(outer > 0, g / torch.where(outer > 0, outer, 1.0), 0.0)
            cos.fill_diagonal_(0.0)
            extra = sim_feature(_row_median(cos))
        else:
            dist = sq_distances_from_gram(g).sqrt()
            extra = dist_feature(torch.sort(dist, dim=1).values[:, : n // 2].sum(1))
        features = torch.cat([features, extra[:, None]], dim=1)
    m = median(norms)
    scores = norms / m  # nan for 0/0, inf for x/0: both fail the strict bounds
    s1 = (scores > params["lower"]) & (scores < params["upper"])
    n_samples = n if variant == "dist" else 50
    accepted, count, info = _finish(variant, m, s1, features, params, fallback, n_samples)
    info["subset"] = subset
    if count == 0:
        aggregate = (v.rows.new_zeros(0), v.values.new_zeros(0, v.d))
    else:
        clip = torch.where(norms > m, m / norms, torch.ones_like(norms))  # 1 at |x_i| = 0: no NaN
        aggregate = weighted_sum(v, torch.where(accepted, clip / count, torch.zeros_like(norms)))
    return RuleResult(scores=scores, accepted=accepted, aggregate=aggregate, info=info)


def _fast_entry(
    variant: str,
    v: ClientVectors,
    f: int,
    *,
    rng: torch.Generator | None = None,
    lower: float = 0.1,
    upper: float = 3.0,
    coords: float = 0.1,
    sample: str = "block",
    support: str = "union",
    block_rows: int | None = None,
) -> RuleResult:
    """SignGuard ``variant`` on sparse client vectors; see the module docstring. ``f`` is not used.

    Returns:
        ``RuleResult`` with ``accepted`` = S1 & S2, ``scores`` = ``|x_i| / M``, ``aggregate`` = the
        clipped mean over the union of listed rows (no rows when nobody is trusted), and ``info``
        (median_norm, norm_ok, sign_ok, features, bandwidth, labels, subset, fallback, parameters).
    """
    params = dict(lower=lower, upper=upper, coords=coords, sample=sample, support=support)
    return _fast(variant, v, rng, params, block_rows)


signguard = functools.partial(_fast_entry, "plain")  # sign features only
signguard_sim = functools.partial(_fast_entry, "sim")  # plus the median-cosine feature (stateless)
signguard_dist = functools.partial(_fast_entry, "dist")  # plus the distance feature (stateless)


def _literal(variant: str, x: Tensor, rng: torch.Generator | None, params: dict[str, Any]) -> RuleResult:
    """Algorithm 2 written out on dense ``x [n, n_rows, d]`` with Python loops over clients and pairs."""
    _check(**params)
    n, n_rows, d = x.shape
    if n < 1:
        raise ValueError("signguard needs at least one client")
    x = x.to(torch.float64)
    if params["support"] == "union":
        support_rows = [r for r in range(n_rows) if any(bool((x[i, r] != 0).any()) for i in range(n))]
    else:
        support_rows = list(range(n_rows))
    size = len(support_rows) * d
    subset = draw_subset(size, params["coords"], params["sample"], rng).to(x.device)
    fallback: tuple[str, ...] = ()

    feats = []
    for i in range(n):
        if size == 0:
            feats.append([0.0, 0.0, 0.0])
            continue
        on = x[i, support_rows].reshape(-1)[subset]
        m = len(on)
        n_pos = sum(1 for val in on.tolist() if val > 0)
        n_neg = sum(1 for val in on.tolist() if val < 0)
        feats.append([n_pos / m, (m - n_pos - n_neg) / m, n_neg / m])
    if size == 0:
        fallback = ("empty-support",)
    else:
        col_max = [max(feats[i][c] for i in range(n)) for c in range(3)]
        feats = [[feats[i][c] / (col_max[c] + EPS) for c in range(3)] for i in range(n)]

    norms = [math.sqrt(sum(val * val for val in x[i].reshape(-1).tolist())) for i in range(n)]
    if variant != "plain":
        flat = [x[i].reshape(-1) for i in range(n)]
        extra = []
        if variant == "sim":
            for i in range(n):
                row = []
                for j in range(n):
                    ok = i != j and norms[i] > 0 and norms[j] > 0
                    row.append(float(flat[i] @ flat[j]) / (norms[i] * norms[j]) if ok else 0.0)
                extra.append(statistics.median(row))
            med = max(statistics.median(extra), 0.0)
            extra = [min(max(s, 0.0), med) / (5.0 * med + EPS) for s in extra]
        else:
            for i in range(n):
                row = sorted(float(torch.linalg.vector_norm(flat[i] - flat[j])) for j in range(n))
                extra.append(sum(row[: n // 2]))
            med = statistics.median(extra)
            extra = [0.2 if s >= 1.1 * med else 0.0 for s in extra]
        feats = [feats[i] + [extra[i]] for i in range(n)]

    m = statistics.median(norms)
    ratio = [norms[i] / m if m > 0 else (math.nan if norms[i] == 0 else math.inf) for i in range(n)]
    s1 = [params["lower"] < ratio[i] < params["upper"] for i in range(n)]
    features = torch.tensor(feats, dtype=torch.float64, device=x.device)
    n_samples = n if variant == "dist" else 50
    m_t = torch.tensor(m, dtype=torch.float64, device=x.device)
    s1_t = torch.tensor(s1, dtype=torch.bool, device=x.device)
    accepted, _, info = _finish(variant, m_t, s1_t, features, params, fallback, n_samples)
    info["subset"] = subset
    scores = torch.tensor(ratio, dtype=torch.float64, device=x.device)
    trusted = [i for i in range(n) if bool(accepted[i])]
    total = torch.zeros(n_rows, d, dtype=torch.float64, device=x.device)
    for i in trusted:
        total += x[i] * (min(1.0, m / norms[i]) if norms[i] > 0 else 1.0)
    if trusted:
        total /= len(trusted)
    return RuleResult(scores=scores, accepted=accepted, aggregate=dense_rows(x, total), info=info)


def _literal_entry(
    variant: str,
    x: Tensor,
    f: int,
    *,
    rng: torch.Generator | None = None,
    lower: float = 0.1,
    upper: float = 3.0,
    coords: float = 0.1,
    sample: str = "block",
    support: str = "union",
    block_rows: int | None = None,
) -> RuleResult:
    """SignGuard ``variant`` on dense vectors, literally (the reference for the fast rules)."""
    params = dict(lower=lower, upper=upper, coords=coords, sample=sample, support=support)
    return _literal(variant, x, rng, params)


signguard_literal = functools.partial(_literal_entry, "plain")
signguard_sim_literal = functools.partial(_literal_entry, "sim")
signguard_dist_literal = functools.partial(_literal_entry, "dist")


for _name, _fast_fn, _literal_fn, _what in (
    ("signguard", signguard, signguard_literal, "sign statistics"),
    ("signguard-sim", signguard_sim, signguard_sim_literal, "sign statistics + median cosine"),
    ("signguard-dist", signguard_dist, signguard_dist_literal, "sign statistics + distance"),
):
    register_rule(
        RuleSpec(
            name=_name,
            kind="aggregate",
            fast=_fast_fn,
            literal=_literal_fn,
            needs_rng=True,
            description=f"SignGuard ({_what}): norm filter + Mean-Shift on sign features, clipped mean",
        )
    )
