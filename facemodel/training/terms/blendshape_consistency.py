"""Read-out consistency (our deviation, docs/training.md "Session 7"): pairs sharing the
expression code must read the same blendshape weights through a frozen linear read-out
fitted on the training meshes (:mod:`facemodel.training.expression_meter`)."""

from __future__ import annotations

import logging

import torch
from pydantic import Field

from ..expression_meter import BlendshapeMeter, fit_blendshape_meter
from .base import Contribution, GeneratorContext, Setup, Term, TermConfig

log = logging.getLogger(__name__)


class BlendshapeConsistencyConfig(TermConfig):
    """``weight``: lambda_blendshape_consistency."""

    components: int = Field(300, ge=1, description="PCA modes of the frozen read-out (fewer: better conditioned)")


def fitted_meter(s: Setup, components: int) -> BlendshapeMeter:
    """The frozen blendshape read-out (CPU), fitted once per setup and ``components``."""

    def fit() -> BlendshapeMeter:
        meter, mae = fit_blendshape_meter(s.data, components=components, seed=s.seed)
        log.info("blendshape meter: %d modes, validation MAE %.4f", components, mae)
        return meter

    return s.shared(("blendshape_meter", components), fit)


def read_gap(meter: BlendshapeMeter, ctx: GeneratorContext) -> torch.Tensor:
    """(P,) squared read-out difference of each pair of the generated batch."""
    read = meter(ctx.d + ctx.template)
    return (read[ctx.a] - read[ctx.b]).square().sum(1)


class BlendshapeConsistency(Term):
    name = "blendshape_consistency"
    Config = BlendshapeConsistencyConfig
    logs = ("g_bcons",)

    def setup(self, s: Setup) -> None:
        self.meter = fitted_meter(s, self.config.components).to(s.device)

    def generator(self, ctx: GeneratorContext) -> Contribution:
        bcons = read_gap(self.meter, ctx).mean() if ctx.shares("expression") else ctx.zero()
        return self.config.weight * bcons, {"g_bcons": float(bcons.detach())}
