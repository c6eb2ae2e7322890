"""Every defense by config name: one preset a line (``Defense(name, rule, space, scope, verify,
params)``). A new rule is one module registering a ``RuleSpec`` plus a line here.

The item-wise presets come first (coordinate-wise rules, then selectors per row): on sparse uploads they are the coordinate-wise rules
to use (issue 16); the flat ones keep their names and warn (DESIGN.md section 6).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any

import fedrec.defenses as _package
from fedrec.defenses.defense import Defense

# every module of the package registers its rules on import; load them all before the presets name them
for _m in pkgutil.iter_modules(_package.__path__):
    importlib.import_module(f"{_package.__name__}.{_m.name}")

DEFENSES: dict[str, Defense] = {
    d.name: d
    for d in [
        Defense("none", rule="mean", description="no filtering (A-FRS, Algorithm 1 Option I)"),
        Defense("item-median", "cw-median", "theta", "item",
                description="item-wise coordinate median of every uploaded quantity, per row over its listers"),
        Defense("item-trmean", "cw-trmean", "theta", "item",
                description="item-wise coordinate trimmed mean, min(f, (c_r - 1) // 2) per side of each row"),
        Defense("grad-item-median", "cw-median", "gradient", "item",
                description="item-wise coordinate median of reconstructed gradients, then a server-side step"),
        Defense("grad-item-trmean", "cw-trmean", "gradient", "item",
                description="item-wise coordinate trimmed mean of reconstructed gradients, then a server-side step"),
        Defense("grad-item-mean", "mean", "gradient", "item",
                description="item-wise mean of reconstructed gradients (Spattack's Mean: 1 / c_r over each row's listers)"),
        Defense("grad-item-krum", "krum", "gradient", "item",
                description="item-wise Krum: per row the lister of lowest Krum score (f_r capped; c_r <= 2: the mean)"),
        Defense("grad-item-multi-krum", "multi-krum", "gradient", "item",
                description="item-wise Multi-Krum: per row the mean of the c_r - f_r listers of lowest Krum score"),
        Defense("a-rfrs", "multi-krum", "gradient",
                description="A-RFRS: Multi-Krum on reconstructed gradients, keeps n - f (paper 000)"),
        Defense("a-rfrs-outliers", "multi-krum-outliers", "gradient", params={"c": 2.0},
                description="A-RFRS rejecting, of the f worst Krum scores, only those > c x the median score"),
        Defense("a-rfrs-linf", "multi-krum-outliers", "gradient", params={"c": 5.0, "distance": "linf"},
                description="a-rfrs-outliers on squared l-infinity distances (MixTailor's p = inf Krum), c = 5"),
        Defense("grad-krum", "krum", "gradient", description="Krum (one client) on reconstructed gradients"),
        Defense("verify+a-rfrs", "multi-krum", "gradient", verify=True,
                description="the optimizer-rule verifier, then A-RFRS"),
        Defense("krum", "multi-krum", "theta",
                description="paper 000's Krum baseline: Multi-Krum on parameters, keeps n - f"),
        Defense("theta-krum", "krum", "theta", description="Krum (one client) on parameters: what Flower's Krum does"),
        Defense("rfa", "geomed", "theta", params={"nu": 1e-6, "tol": 1e-6, "max_iter": 100},
                description="RFA: geometric median (smoothed Weiszfeld) of the parameters"),
        Defense("trmean", "norm-trim", "theta",
                description="paper 000's Trmean: drops the f largest- and f smallest-norm parameter uploads"),
        Defense("cw-median", "cw-median", "theta",
                description="flat coordinate-wise median of every uploaded quantity (absent = 0: degenerate on sparse uploads)"),
        Defense("cw-trmean", "cw-trmean", "theta",
                description="flat coordinate-wise trimmed mean (f per side) of every uploaded quantity (absent = 0)"),
        Defense("grad-median", "cw-median", "gradient",
                description="flat coordinate-wise median of reconstructed gradients (absent = 0), then a server-side step"),
        Defense("momentum-krum", "multi-krum", "momentum",
                description="Multi-Krum on the first moment (RESAM's space), keeps n - f"),
        Defense("verify", "mean", verify=True, description="the optimizer-rule verifier alone"),
        # RESAM (paper 001): resilient averaging rules on reconstructed gradients, then a server-side step
        Defense("grad-geomed", "geomed", "gradient",
                description="RESAM's GM: geometric median weights of the reconstructed gradients"),
        Defense("grad-meamed", "meamed", "gradient",
                description="RESAM's MeaMed of reconstructed gradients, then a server-side step"),
        Defense("grad-trmean", "cw-trmean", "gradient",
                description="RESAM's CWTM of reconstructed gradients (flat, f per side), then a server-side step"),
        Defense("krum-star", "multi-krum-star", "gradient",
                description="RESAM's Multi-Krum*_(n-f) on reconstructed gradients"),
        Defense("momentum-krum-star", "multi-krum-star", "momentum",
                description="RESAM's Multi-Krum*_(n-f) on the uploaded first moments (distributed momentum)"),
        Defense("grad-mda", "mda", "gradient",
                description="RESAM's MDA: the n - f reconstructed gradients of least diameter (exact, C(n, f) subsets)"),
        Defense("grad-cc", "cc", "gradient",
                description="centered clipping of reconstructed gradients from 0 (tau, iters), then a server-side step"),
        Defense("grad-cge", "cge", "gradient",
                description="CGE: the n - f reconstructed gradients of smallest norm (not resilient averaging)"),
        # SignGuard (paper 002) on reconstructed gradients: its clipped mean is the server-side step
        Defense("signguard", "signguard", "gradient",
                description="SignGuard: median-norm filter and sign-statistics clustering, clipped mean"),
        Defense("signguard-sim", "signguard-sim", "gradient",
                description="SignGuard-Sim: SignGuard plus a cosine-similarity feature"),
        Defense("signguard-dist", "signguard-dist", "gradient",
                description="SignGuard-Dist: SignGuard plus a Euclidean-distance feature"),
        # MixTailor (paper 004) and its pool's Bulyan, on reconstructed gradients, then a server-side step
        Defense("grad-mixtailor", "mixtailor", "gradient",
                description="MixTailor: per round a rule drawn from comed / l_p-Krum / GM / l_p-Bulyan (64)"),
        # paper 003 (BRVR): resampling with s-replacement / bucketing, then the geometric median
        Defense("grad-rs-geomed", "geomed", "gradient", params={"s": 2}, pre="resample",
                description="BRVR: resampling (s = 2, every gradient used s times), then the geometric median"),
        Defense("grad-bucket-geomed", "geomed", "gradient", params={"s": 2}, pre="bucket",
                description="bucketing (ceil(n / s) means of s), then the geometric median"),
        Defense("grad-bulyan", "bulyan", "gradient",
                description="Bulyan: n - 2f rounds of Krum, then MeaMed over them (needs n >= 4f + 3)"),
    ]
}  # fmt: skip


def make_defense(name: str, params: dict[str, Any] | None = None, pre: str | None = None) -> Defense:
    """The preset called ``name`` with ``params`` over its own (``defense.params``) and, when given, the
    pre-aggregation step ``pre`` over the preset's (``defense.pre``: resample, bucket)."""
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; known: {', '.join(DEFENSES)}")
    d = DEFENSES[name]
    if not params and pre is None:
        return d
    return dataclasses.replace(
        d, params={**d.params, **(params or {})}, pre=pre if pre is not None else d.pre
    )
