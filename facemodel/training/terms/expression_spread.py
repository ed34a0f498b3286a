"""Expression spread (our deviation, docs/training.md): pairs sharing only the identity code
must read blendshape weights at least as different as two meshes of one person in the data
(a hinge on the frozen read-out of term ``blendshape_consistency``)."""

from __future__ import annotations

import logging

import torch
from pydantic import Field

from ..expression_meter import same_identity_spread
from .base import Contribution, GeneratorContext, Setup, Term, TermConfig
from .blendshape_consistency import fitted_meter, read_gap

log = logging.getLogger(__name__)


class ExpressionSpreadConfig(TermConfig):
    """``weight``: lambda_expression_spread."""

    components: int = Field(300, ge=1, description="PCA modes of the frozen read-out")


class ExpressionSpread(Term):
    name = "expression_spread"
    Config = ExpressionSpreadConfig
    logs = ("g_spread",)

    def setup(self, s: Setup) -> None:
        meter = fitted_meter(s, self.config.components)
        #: the hinge's target: mean squared read-out difference of same-person data pairs
        self.target = same_identity_spread(s.data, meter, seed=s.seed)
        log.info("expression spread: same-identity read-out spread %.4f", self.target)
        self.meter = meter.to(s.device)

    def generator(self, ctx: GeneratorContext) -> Contribution:
        spread = ctx.zero() if ctx.shares("expression") else torch.relu(self.target - read_gap(self.meter, ctx).mean())
        return self.config.weight * spread, {"g_spread": float(spread.detach())}
