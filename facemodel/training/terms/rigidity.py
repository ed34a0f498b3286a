"""Rigidity (our deviation, docs/training.md): pairs sharing the identity code must not differ
where the data's expressions leave the face still (:mod:`facemodel.training.rigidity`)."""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from ..rigidity import expression_motion_mm, rigidity_loss, rigidity_weights
from .base import Contribution, GeneratorContext, Setup, Term, TermConfig


class RigidityConfig(TermConfig):
    """``weight``: lambda_rigidity."""

    scale_mm: float = Field(0.5, gt=0, description="motion (mm) at which a vertex's weight is 1/2")


def still_weights(s: Setup, scale_mm: float) -> np.ndarray:
    """(V,) :func:`rigidity_weights` of the training data's expression motion (fitted once)."""
    motion = s.shared("expression_motion", lambda: expression_motion_mm(s.data, seed=s.seed))
    return rigidity_weights(motion, scale_mm)


class Rigidity(Term):
    """Weighted squared difference of pairs sharing the identity code, weights ~1 where the
    data's expressions never move a vertex."""

    name = "rigidity"
    Config = RigidityConfig
    logs = ("g_rigid",)

    def setup(self, s: Setup) -> None:
        self.weights = torch.from_numpy(still_weights(s, self.config.scale_mm)).to(s.device)  # (V,)

    def generator(self, ctx: GeneratorContext) -> Contribution:
        rigid = ctx.zero()
        if ctx.shares("identity"):
            rigid = rigidity_loss(ctx.d[ctx.a], ctx.d[ctx.b], self.weights, scale=ctx.config.displacement_scale_mm)
        return self.config.weight * rigid, {"g_rigid": float(rigid.detach())}
