"""The loss terms of training, one module each (see docs/training.md "How to add a loss term").

:data:`TERMS` is the order in which the loop sets them up and sums them (the order of the
critic and generator losses, and of their random draws).
"""

from __future__ import annotations

from .adversarial import Adversarial
from .base import Contribution, CriticContext, GeneratorContext, Setup, Term, TermConfig
from .blendshape_consistency import BlendshapeConsistency
from .classification import Classification
from .consistency import Consistency
from .expression_anchor import ExpressionAnchorTerm
from .expression_spread import ExpressionSpread
from .feature import Feature
from .identity_anchor import IdentityAnchorTerm
from .laplacian import Laplacian
from .motion_spread import MotionSpread
from .motion_subspace import MotionSubspace
from .regression import Regression
from .rigidity import Rigidity

__all__ = ["TERMS", "Term", "TermConfig", "Setup", "CriticContext", "GeneratorContext", "Contribution"]

#: every term, in loss order: the paper's (Eq. 2, 6-12), then our deviations (docs/training.md)
TERMS: tuple[type[Term], ...] = (
    Adversarial,
    Classification,
    Feature,
    Regression,
    Consistency,
    Rigidity,
    MotionSpread,
    BlendshapeConsistency,
    ExpressionSpread,
    MotionSubspace,
    ExpressionAnchorTerm,
    IdentityAnchorTerm,
    Laplacian,
)
