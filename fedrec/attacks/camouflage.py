"""The camouflage attack on Adam (paper 000 Section 4.1, Eq. 8; Appendix F, Eq. 106-113, Figure 5).

Adam's update of one coordinate (paper 000 Eq. 2-6, epsilon inside the square root) is

    theta = theta_bar - eta_t u(g),   u(g) = (b1 m_bar + (1-b1) g) / sqrt(b2 v_bar + (1-b2) g^2 + eps).

``u`` is not one-to-one: a Byzantine client can upload, per coordinate, the moments of another
gradient ``g~`` with ``u(g~) = u(g)``, so its parameters equal its honest ones (any defense that looks
at parameters sees an honest client) while the gradient the server reconstructs from ``m`` (and the
moments it aggregates) are forged. The upload is a genuine Adam step for ``g~``: the rule verifier
cannot flag it either (paper 000 footnote 2).

Epsilon. Appendix F drops eps. Put it back with ``V = v_bar + eps / b2``: then

    b2 V + (1-b2) g^2 = b2 v_bar + eps + (1-b2) g^2 = v + eps,

so ``u(g) = (b1 m_bar + (1-b1) g) / sqrt(b2 V + (1-b2) g^2)`` is the paper's eps-free expression with
``v_bar`` replaced by ``V``. Eq. (106)-(113) use ``v_bar`` only through ``b2 v_bar`` (and ``V > 0``
always, as eps > 0), so Eq. (113) holds verbatim with ``v_bar -> V``. ``V`` is only a device for solving:
the uploaded moment is still the honest formula ``v~ = b2 v_bar + (1-b2) g~^2``.

The other root. With ``A = b1 m_bar``, ``c1 = 1-b1``, ``c2 = 1-b2``, ``B = b2 V = b2 v_bar + eps``,
Eq. (113) reads ``g~ = N / D`` with

    N = 2 A c1 B + (c1^2 B - c2 A^2) g,      D = c2 A^2 + 2 c1 c2 A g - c1^2 B = c2 m^2 - c1^2 (v + eps),

``m``, ``v`` the honest moments. ``g`` and ``g~`` are the two roots of the squared equation
``u(x)^2 = u(g)^2`` (Eq. 107), so ``u(g~) = +-u(g)``, and the sign of ``D`` tells which:

* ``D > 0`` (``|u(g)| > c1 / sqrt(c2)``, about 3.16 for the defaults): ``u(g~) = u(g)``, a camouflage
  (points A and B of Figure 5). ``g~ = g`` only at the top of the curve (a double root).
* ``D < 0``: ``u(g~) = -u(g)``: the squared equation's other root flips the update (point C of Figure 5:
  ``u(g)`` is attained by ``g`` alone). The coordinate keeps the honest gradient.
* ``D = 0`` (``|u(g)| = c1 / sqrt(c2)``, the asymptote of ``u`` at infinity): no finite other root;
  the coordinate keeps the honest gradient.

(Geometrically: with ``x = sqrt(B / c2) tan(phi)``, ``u = R cos(phi - alpha) / sqrt(B)`` where
``R cos(alpha) = A``, ``R sin(alpha) = c1 sqrt(B / c2)``; the other root is ``tan(2 alpha - phi)``, a
camouflage iff ``2 alpha - phi`` lies in ``(-pi/2, pi/2)`` modulo ``2 pi``; modulo ``pi`` only, it flips
the sign of the cosine: point C. The tests use this form as an independent oracle.) For ``m_bar = 0`` (a row never touched), ``g~ = -g``
with the opposite update: nothing to camouflage. How much can be camouflaged depends on the round:
with the raw (uncorrected) moments and a steady gradient, ``|u| = (1 - b1^t) / sqrt(1 - b2^t)``, which
exceeds ``c1 / sqrt(c2)`` from t = 2 to about t = 105 for the defaults and tends to 1 afterwards; later,
``D > 0`` needs a gradient that agrees in sign with, and is large against, the row's history.

Untouched rows (``g = 0``, the default value of every row an upload does not list):

    g~_0 = 2 b1 c1 m_bar (b2 v_bar + eps) / (b1^2 c2 m_bar^2 - c1^2 (b2 v_bar + eps)),

a camouflage iff ``b1^2 (1-b2) m_bar^2 > (1-b1)^2 (b2 v_bar + eps)``; with ``all_rows`` the client lists
every row of the table and forges these too.

Numerics: all roots are computed in float64 from the state's values; a root whose square would
overflow the state's dtype (``|g~| > sqrt(max) / 16``) keeps the honest gradient; the crafted gradient
is returned in the state's dtype and passed through ``Adam.client_step``, exactly as an honest client
with that gradient would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedrec.attacks.base import (
    AttackBase,
    AttackContext,
    dense_upload_from_gradient,
    register,
    upload_from_gradient,
)
from fedrec.optim import Adam, Rule
from fedrec.protocol import UploadBatch

Tensor = torch.Tensor

SELECT = ("farthest", "random")


def adam_of(rule: Rule) -> Adam:
    """``rule`` if it is Adam, else a ``ValueError``: the camouflage attack is defined for Adam."""
    if not isinstance(rule, Adam):
        raise ValueError(
            f"the camouflage attack is defined for Adam (paper 000 Eq. 8 / Appendix F); "
            f"the optimizer rule is {getattr(rule, 'name', type(rule).__name__)!r}"
        )
    return rule


def other_root(
    m_bar: Tensor, v_bar: Tensor, g: Tensor, *, b1: float, b2: float, eps: float
) -> tuple[Tensor, Tensor]:
    """Paper 000 Eq. (113) with ``v_bar -> V = v_bar + eps / b2``, element-wise, in float64.

    Returns ``(g~, ok)``: ``ok`` where ``g~`` is a genuine camouflage (``D > 0``, finite, and the same
    sign of ``m`` so that ``u(g~) = +u(g)``); elsewhere ``g~ = g`` (point C, or no finite root)."""
    m_bar, v_bar, g = (x.to(torch.float64) for x in (m_bar, v_bar, g))
    c1, c2 = 1.0 - b1, 1.0 - b2
    V = v_bar + eps / b2
    num = 2 * b1 * b2 * c1 * m_bar * V + b2 * c1**2 * V * g - b1**2 * c2 * m_bar**2 * g
    den = b1**2 * c2 * m_bar**2 + 2 * b1 * c1 * c2 * m_bar * g - b2 * c1**2 * V
    ok = den > 0
    g_t = num / torch.where(ok, den, 1.0)
    m, m_t = b1 * m_bar + c1 * g, b1 * m_bar + c1 * g_t
    # D > 0 already implies the same sign; the check guards against a rounded D near the asymptote.
    ok = ok & torch.isfinite(g_t) & (torch.sign(m_t) == torch.sign(m))
    return torch.where(ok, g_t, g), ok


def untouched_root(
    m_bar: Tensor, v_bar: Tensor, *, b1: float, b2: float, eps: float
) -> tuple[Tensor, Tensor]:
    """``other_root`` at ``g = 0`` in closed form, float64: ``(g~_0, ok)`` with

    ``g~_0 = 2 b1 c1 m_bar (b2 v_bar + eps) / (b1^2 c2 m_bar^2 - c1^2 (b2 v_bar + eps))``, ``ok`` iff the
    denominator is > 0 (then ``m~`` has the sign of ``b1 m_bar``: same update); ``g~_0 = 0`` elsewhere."""
    m_bar, v_bar = m_bar.to(torch.float64), v_bar.to(torch.float64)
    c1, c2 = 1.0 - b1, 1.0 - b2
    B = b2 * v_bar + eps
    den = b1**2 * c2 * m_bar**2 - c1**2 * B
    ok = den > 0
    g_t = 2 * b1 * c1 * m_bar * B / torch.where(ok, den, 1.0)
    ok = ok & torch.isfinite(g_t)
    return torch.where(ok, g_t, 0.0), ok


def camouflage_gradient(
    rule: Adam, m_bar: Tensor, v_bar: Tensor, g: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The crafted gradient in the dtype of ``m_bar`` and the mask of forged coordinates.

    ``g`` is the honest gradient at the same coordinates (``None``: untouched rows, ``g = 0``). A
    forged coordinate has ``u(g~) = u(g)`` and ``g~ != g``; the others keep ``g`` exactly."""
    dtype = m_bar.dtype
    kw = {"b1": rule.b1, "b2": rule.b2, "eps": rule.eps}
    if g is None:
        g_t, ok = untouched_root(m_bar, v_bar, **kw)
        honest = torch.zeros_like(m_bar)
    else:
        g_t, ok = other_root(m_bar, v_bar, g, **kw)
        honest = g.to(dtype)
    limit = torch.finfo(dtype).max ** 0.5 / 16  # (1-b2) g~^2 stays finite in the state's dtype
    ok = ok & (g_t.abs() <= limit)
    crafted = g_t.to(dtype)
    ok = ok & (crafted != honest)
    return torch.where(ok, crafted, honest), ok


@register
@dataclass(frozen=True)
class Camouflage(AttackBase):
    """Keep theta honest, forge the gradient (paper 000 Section 4.1, Eq. 8; derivation in the module
    docstring): per coordinate the other root ``g~`` of ``u(g~) = u(g)`` (Eq. 113 with ``v_bar + eps /
    b2``), the honest gradient where there is none (point C of Figure 5, or the asymptote).

    ``all_rows``: also forge every row the client did not touch (``g = 0`` there, the closed form
    ``g~_0``): the upload lists every row of the table (a dense attack, ``n_rows d`` per client).
    False (the default, ``attack.params.all_rows``): only the client's own touched rows.

    ``select``: "farthest" (default) takes ``g~`` at every coordinate where it exists. Each coordinate
    has exactly two roots, ``g`` and ``g~``, so this is the choice, among the ``2^k`` camouflaged
    gradients, with the largest Euclidean distance from the honest one: the setting of paper 000
    Figure 2. "random" takes ``g~`` at each such coordinate with probability 1/2 (the attacker's
    generator): one of the exponentially many camouflages of Section 4.1.

    Defined for Adam only (``ValueError`` otherwise). Rule-consistent: the upload is ``Adam.client_step``
    with ``g~``.
    """

    name = "camouflage"
    omniscient = False
    rule_consistent = True
    optimizers = ("adam",)

    all_rows: bool = False
    select: str = "farthest"

    def __post_init__(self) -> None:
        if not isinstance(self.all_rows, bool):
            raise ValueError(f"Camouflage: all_rows must be a bool, got {self.all_rows!r}")
        if self.select not in SELECT:
            raise ValueError(f"Camouflage: select must be one of {', '.join(SELECT)}, got {self.select!r}")

    def _pick(self, ctx: AttackContext, crafted: Tensor, honest: Tensor) -> Tensor:
        if self.select == "farthest":
            return crafted
        gen = ctx.generator
        coin = torch.rand(crafted.shape, generator=gen, device=gen.device).to(crafted.device) < 0.5
        return torch.where(coin, crafted, honest)

    def __call__(self, ctx: AttackContext) -> UploadBatch:
        self.check(ctx)
        rule = adam_of(ctx.rule)
        prev = ctx.prev(ctx.rows)
        g = ctx.g.to(prev["m"].dtype)
        crafted, _ = camouflage_gradient(rule, prev["m"], prev["v"], g)
        crafted = self._pick(ctx, crafted, g)
        if not self.all_rows:
            return upload_from_gradient(ctx, ctx.rows, ctx.ptr, crafted)
        g0, _ = camouflage_gradient(rule, ctx.server.state["m"], ctx.server.state["v"])
        dense = g0.unsqueeze(0).expand(ctx.b, *g0.shape)
        dense = self._pick(ctx, dense, torch.zeros_like(dense)) if self.select == "random" else dense.clone()
        dense[ctx.owner(), ctx.rows] = crafted
        return dense_upload_from_gradient(ctx, dense)
