"""Byzantine attacks (DESIGN.md section 7), one module each, and who the Byzantine clients are.

``make_attack(name, **params)`` builds a registered attack; ``attack(ctx)`` maps an ``AttackContext``
(global state, round, optimizer rule, the Byzantine clients' own honest gradients) to their uploads.
"""

from __future__ import annotations

from fedrec.attacks.adaptive import MixTailorAdaptive
from fedrec.attacks.alie import ALIE, alie_vector, baruch_z
from fedrec.attacks.base import (
    ATTACKS,
    Attack,
    AttackBase,
    AttackContext,
    GradientAttack,
    dense_upload_from_gradient,
    make_attack,
    register,
    upload_from_gradient,
)
from fedrec.attacks.byzmean import ByzMean
from fedrec.attacks.camouflage import Camouflage, camouflage_gradient, other_root, untouched_root
from fedrec.attacks.gaussian import Gaussian
from fedrec.attacks.gradient_ascent import GradientAscent
from fedrec.attacks.honest import dense_over_union
from fedrec.attacks.ipm import IPM
from fedrec.attacks.label_flip import LabelFlip
from fedrec.attacks.minmax import MinMax, MinSum, largest_gamma, perturbation
from fedrec.attacks.noise import AdditiveNoise
from fedrec.attacks.poison import Poison
from fedrec.attacks.population import (
    byzantine_count,
    byzantine_mask,
    extend_users,
    fake_user_count,
    inject_fake_users,
    typical_size,
)
from fedrec.attacks.random_eps import RandomEps
from fedrec.attacks.sample_duplicate import SampleDuplicate
from fedrec.attacks.sign_flip import SignFlip
from fedrec.attacks.spattack import SpattackL, SpattackO, popular_rows

__all__ = [
    "ALIE",
    "ATTACKS",
    "IPM",
    "AdditiveNoise",
    "Attack",
    "AttackBase",
    "AttackContext",
    "ByzMean",
    "Camouflage",
    "Gaussian",
    "GradientAscent",
    "GradientAttack",
    "LabelFlip",
    "MinMax",
    "MinSum",
    "MixTailorAdaptive",
    "Poison",
    "RandomEps",
    "SampleDuplicate",
    "SignFlip",
    "SpattackL",
    "SpattackO",
    "alie_vector",
    "baruch_z",
    "byzantine_count",
    "byzantine_mask",
    "camouflage_gradient",
    "dense_over_union",
    "dense_upload_from_gradient",
    "extend_users",
    "fake_user_count",
    "inject_fake_users",
    "largest_gamma",
    "make_attack",
    "other_root",
    "perturbation",
    "popular_rows",
    "register",
    "typical_size",
    "untouched_root",
    "upload_from_gradient",
]
