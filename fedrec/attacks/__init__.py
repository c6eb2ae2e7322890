"""Byzantine attacks (DESIGN.md section 7), one module each, and who the Byzantine clients are.

``make_attack(name, **params)`` builds a registered attack; ``attack(ctx)`` maps an ``AttackContext``
(global state, round, optimizer rule, the Byzantine clients' own honest gradients) to their uploads.
"""

from __future__ import annotations

from fedrec.attacks.base import (
    ATTACKS,
    Attack,
    AttackBase,
    AttackContext,
    dense_upload_from_gradient,
    make_attack,
    register,
    upload_from_gradient,
)
from fedrec.attacks.camouflage import Camouflage, camouflage_gradient, other_root, untouched_root
from fedrec.attacks.gradient_ascent import GradientAscent
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

__all__ = [
    "ATTACKS",
    "AdditiveNoise",
    "Attack",
    "AttackBase",
    "AttackContext",
    "Camouflage",
    "GradientAscent",
    "Poison",
    "byzantine_count",
    "byzantine_mask",
    "camouflage_gradient",
    "dense_upload_from_gradient",
    "extend_users",
    "fake_user_count",
    "inject_fake_users",
    "make_attack",
    "other_root",
    "register",
    "typical_size",
    "untouched_root",
    "upload_from_gradient",
]
