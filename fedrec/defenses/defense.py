"""A defense: a preset ``(space, rule, scope, verify, params)`` and the verdict it takes on a round's
uploads (DESIGN.md section 6). ``decide`` dispatches on what the rule returns, never on its name:

- ``accepted`` (selectors): the n_i-weighted mean of the accepted uploads (paper 000 Algorithm 1,
  Option II);
- ``weights`` (RFA's geometric median): that convex combination of the uploads, for theta and every
  moment alike, so the global state stays one weighted mean of uploads;
- ``aggregate`` (coordinate-wise rules, centered clipping, SignGuard): the new global values themselves,
  per uploaded quantity in parameter space, or as a robust gradient the server steps the optimizer
  rule with from the global state (gradient space).

Scope ``item`` runs a rule's per-row form over the clients that listed each row (issue 16; selectors
such as Krum keep per row a set of the row's listers and average it, ``fedrec.defenses.itemwise``): honest
uploads list a few hundred of ~35k rows, so no row is listed by half of a round's clients and a flat
coordinate-wise median is exactly the default. Flat coordinate-wise runs record how sparse the rounds
were (``Decision.info["rows_below_half"]``).

Momentum space and aggregators: under Adam and SGD with momentum every client's first moment is
``m_i = b m_bar + c g_i`` with the same global ``m_bar`` (paper 000 Algorithm 2), an affine map of its
gradient shared by all clients. Distance-based selectors therefore select the same uploads in either
space, and coordinate-wise aggregators give the same step; so aggregators run in gradient space only
(docs/RESULTS.md, RESAM).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from fedrec.defenses.base import RULES, RuleResult, RuleSpec
from fedrec.defenses.preagg import compose
from fedrec.defenses.spaces import SPACES, delta_vectors, listed_only, rows_of, space_vectors
from fedrec.defenses.vectors import ClientVectors
from fedrec.protocol import REASONS, Decision, ServerState, UploadBatch

CODE = {name: i for i, name in enumerate(REASONS)}
SCOPES = ("flat", "item")
FEWEST_LIMIT = 2**20  # Defense.fewest: the largest round size tried (no round of this engine is larger)
_FEWEST: dict[tuple, int] = {}  # (preset, params, f) -> Defense.fewest


@dataclass(frozen=True)
class Defense:
    """A defense preset: which ``space`` the rule looks at, which registered ``rule`` decides (with
    ``params``), over which ``scope`` (``flat``: the whole table as one vector; ``item``: per row over
    the clients that listed it), and whether the optimizer-rule verifier (paper 000 footnote 2) must
    run first even when ``defense.verify`` is off."""

    name: str
    rule: str = "mean"
    space: str = "gradient"
    scope: str = "flat"
    verify: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    pre: str | None = None  # a pre-aggregation step (``PRE_STEPS``: resample, bucket); its s in params

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise ValueError(f"defense {self.name}: space {self.space!r} not in {SPACES}")
        if self.scope not in SCOPES:
            raise ValueError(f"defense {self.name}: scope {self.scope!r} not in {SCOPES}")
        RULES.lookup(self.rule)
        if self.pre is not None and self.scope == "item":
            raise ValueError(f"defense {self.name}: a pre-aggregation step mixes whole uploads (scope flat)")
        spec = self.spec
        spec.check(self.params)
        if self.scope == "item" and spec.item is None:
            raise ValueError(f"defense {self.name}: scope 'item' needs a rule with a per-row form")
        if spec.kind == "aggregate" and self.space not in ("gradient", "theta"):
            raise ValueError(
                f"defense {self.name}: aggregating rule {self.rule!r} runs in gradient or theta space"
            )

    @property
    def spec(self) -> RuleSpec:
        """The registered rule, or the rule after the pre-aggregation step (``preagg.compose``)."""
        if self.pre is None:
            return RULES[self.rule]
        return compose(self.pre, self.rule, self.params.get("s", 2))

    def fewest(self, f: int) -> int:
        """The fewest valid uploads the rule runs on at this ``f`` with its ``params``: the rule's
        ``min_n(f)``, or more where a parameter asks for more (a trim of ``trim`` values per side needs
        ``2 trim + 1``, Multi-Krum's ``m`` and Krum*'s ``q`` need as many, a MixTailor pool its
        smallest member's). Config validation tries the parameters at the full round size, but a
        round's invalid uploads, which Byzantine clients choose, shrink the set the rule sees: a round
        with fewer than this many is refused (``too-few-uploads``), never a crash.

        Found once per preset and ``f`` (``check_round_size`` asks first, before round 1) by trying
        the rule on tiny problems (``try_params``): sizes doubling from ``min_n(f)`` until one runs,
        then halving the gap (what a parameter needs grows with n: ~2 log2 tries). Where none runs up
        to ``FEWEST_LIMIT``, every round is refused rather than crashed."""
        key = (*self._preset_key, f)
        if key not in _FEWEST:
            _FEWEST[key] = self._search_fewest(f)
        return _FEWEST[key]

    @functools.cached_property
    def _preset_key(self) -> tuple:
        """The preset as a hashable key (``params`` is a dict): built once, not every round."""
        return (self.name, self.rule, self.space, self.scope, self.pre, repr(sorted(self.params.items())))

    def _search_fewest(self, f: int) -> int:
        def runs(n: int) -> bool:
            try:
                self.try_params(n, f)
            except ValueError:
                return False
            return True

        good = max(1, self.spec.min_n(f))
        bad = good - 1  # the largest size known to fail (min_n - 1 by the rule's own count)
        while not runs(good):
            if good > FEWEST_LIMIT:
                return FEWEST_LIMIT + 1
            bad, good = good, 2 * good
        while good - bad > 1:
            mid = (bad + good) // 2
            bad, good = (bad, mid) if runs(mid) else (mid, good)
        return good

    def try_params(self, n: int | None = None, f: int = 1) -> None:
        """Run the rule once on a small random problem of ``n`` clients (default: a tiny one) with
        ``params``: a bad value (a negative ``c``, an ``m`` of 0) or a round the rule cannot take (MDA's
        C(n, f) past its limit) fails here, in config validation, instead of in a round. Raises
        ``ValueError``."""
        spec = self.spec
        gen = torch.Generator().manual_seed(0)
        n = max(spec.min_n(f), 5) if n is None else n
        if n < spec.min_n(f):
            return  # too few uploads: the round is refused with a reason, never a crash
        v = ClientVectors.from_dense(torch.randn(n, 3, 2, generator=gen, dtype=torch.float64), all_rows=True)
        try:
            if self.scope == "item":
                spec.item(v, f, **self.params)
            else:
                self._call(spec, v, f, torch.ones(n, dtype=torch.float64), gen)
        except (TypeError, ValueError, OverflowError) as err:  # Overflow: an integer past int64 (tau=10^20)
            raise ValueError(f"{err} (tried on a round of n = {n}, f = {f})") from None

    @property
    def coordinatewise(self) -> bool:
        """An aggregating rule with a per-row form (coordinate-wise median, trimmed mean): the flat
        form counts unlisted rows as zeros. Selectors with a per-row form (Krum) are not: flat, they
        compare whole uploads."""
        spec = self.spec
        return spec.item is not None and spec.kind == "aggregate"

    def decide(
        self,
        server: ServerState,
        uploads: UploadBatch,
        opt_rule,
        t: int,
        codes: torch.Tensor,
        f: int,
        rng: torch.Generator | None = None,
        grads: torch.Tensor | None = None,
    ) -> Decision:
        """The verdict on ``uploads`` (reason ``codes`` from validation; ``f`` the assumed number of
        Byzantine uploads this round; ``rng`` the server's generator for rules that draw numbers;
        ``grads`` the gradients the rule check reconstructed, aligned with ``uploads.rows`` and exact
        at every valid upload; without them a rule that needs gradients reconstructs them)."""
        n, device = uploads.n, uploads.rows.device
        codes = codes.clone()
        keep = codes == 0
        sub = uploads.select(keep)
        if grads is not None and grads.shape[0] != sub.rows.shape[0]:
            grads = grads[keep[uploads.owner()]]  # the valid uploads' rows, in sub's order
        spec = self.spec
        scores = torch.full((n,), float("nan"), dtype=torch.float64, device=device)
        weights_sub = sub.n_examples.to(torch.float64)
        accepted_sub = torch.ones(sub.n, dtype=torch.bool, device=device)
        aggregate, info = None, {}
        if sub.n > 0 and sub.n < self.fewest(f):
            accepted_sub = torch.zeros_like(accepted_sub)
            codes[keep] = CODE["too-few-uploads"]
        elif sub.n > 0:
            res, aggregate = self._run(spec, server, sub, opt_rule, t, f, rng, grads)
            if res is not None:
                scores[keep] = res.scores.to(device=device, dtype=torch.float64)
                accepted_sub = accepted_sub if res.accepted is None else res.accepted.to(device)
                weights_sub = weights_sub if res.weights is None else res.weights.to(device, torch.float64)
                info.update({k: v for k, v in res.info.items() if isinstance(v, torch.Tensor)})
            if self.coordinatewise and self.scope == "flat":
                info["rows_below_half"] = rows_below_half(sub)
        accepted = torch.zeros(n, dtype=torch.bool, device=device)
        accepted[keep] = accepted_sub
        codes = torch.where(keep & ~accepted & (codes == 0), torch.full_like(codes, CODE["filtered"]), codes)
        w = torch.zeros(n, dtype=torch.float64, device=device)
        w[keep] = torch.where(accepted_sub, weights_sub, torch.zeros_like(weights_sub))
        w = w / w.sum().clamp(min=1e-300)
        return Decision(
            weights=w, accepted=accepted, scores=scores, reasons=codes, aggregate=aggregate, info=info
        )

    def _call(self, spec: RuleSpec, v: ClientVectors, f: int, weights, rng) -> RuleResult:
        extra = {"weights": weights} if spec.uses_weights else {}
        return spec(v, f, rng=rng, **extra, **self.params)

    def _run(self, spec: RuleSpec, server, sub: UploadBatch, opt_rule, t: int, f: int, rng, grads=None):
        """The rule's result on the valid uploads and, for aggregating rules, the new values of every
        uploaded quantity as ``{key: (rows, delta from the default)}``."""
        weights = sub.n_examples.to(torch.float64)
        if self.scope == "item":
            robust = lambda v: spec.item(v, f, **self.params)  # noqa: E731
            return None, self._aggregate(robust, server, sub, opt_rule, t, grads)
        if spec.kind != "aggregate":
            v = (
                space_vectors(self.space, server, sub, opt_rule, t, grads)
                if spec.reads_values
                else listed_only(sub, server.n_rows)
            )
            return self._call(spec, v, f, weights, rng), None
        first: list[RuleResult] = []
        start = None if rng is None else rng.get_state()

        def robust(v: ClientVectors):
            if start is not None:  # a generator-drawing rule sees the same draws for every quantity
                rng.set_state(start)
            res = self._call(spec, v, f, weights, rng)
            first.append(res)
            return res.aggregate

        aggregate = self._aggregate(robust, server, sub, opt_rule, t, grads)
        return first[0], aggregate

    def _aggregate(self, robust, server, sub: UploadBatch, opt_rule, t: int, grads=None):
        if self.space == "gradient":
            # a robust gradient, then one server-side step of the optimizer rule from the global state
            rows, g = robust(space_vectors("gradient", server, sub, opt_rule, t, grads))
            prev = rows_of(server, rows)
            new, default = opt_rule.client_step(prev, g, t), opt_rule.default_rows(prev, t)
            return {k: (rows, new[k] - default[k]) for k in opt_rule.keys}
        return {k: robust(delta_vectors(k, server, sub, opt_rule, t)) for k in opt_rule.keys}


def rows_below_half(uploads: UploadBatch) -> torch.Tensor:
    """The share (0-d float64 tensor, no host sync) of the listed rows that fewer than half of the
    uploads list: where a flat coordinate-wise median is forced to the default by absent clients."""
    _, counts = torch.unique(uploads.rows, return_counts=True)
    if counts.numel() == 0:
        return torch.zeros((), dtype=torch.float64, device=uploads.rows.device)
    return (2 * counts < uploads.n).to(torch.float64).mean()


def assumed_f(n: int, fraction: float, f: int | None = None) -> int:
    """f per round = ceil(assumed Byzantine fraction * n) unless set (DESIGN.md section 6)."""
    return int(f) if f is not None else math.ceil(fraction * n - 1e-9)
