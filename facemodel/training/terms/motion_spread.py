"""Motion spread (our deviation, docs/training.md): pairs sharing only the identity code must
differ where expressions move the face at least as much as two meshes of one person in the
data (a hinge)."""

from __future__ import annotations

import torch
from pydantic import Field

from ..rigidity import rigidity_loss, same_identity_motion
from .base import Contribution, GeneratorContext, Setup, Term, TermConfig
from .rigidity import still_weights


class MotionSpreadConfig(TermConfig):
    """``weight``: lambda_motion_spread."""

    scale_mm: float = Field(0.5, gt=0, description="the rigidity weights' scale (the mobile vertices: 1 - weights)")


class MotionSpread(Term):
    name = "motion_spread"
    Config = MotionSpreadConfig
    logs = ("g_mspread",)

    def setup(self, s: Setup) -> None:
        w = still_weights(s, self.config.scale_mm)
        self.mobility = 1.0 - torch.from_numpy(w).to(s.device)  # (V,) where the data's expressions move the face
        #: the hinge's target, in the units of :func:`rigidity_loss`
        self.target = same_identity_motion(s.data, w, scale=s.config.displacement_scale_mm, seed=s.seed)

    def generator(self, ctx: GeneratorContext) -> Contribution:
        spread = ctx.zero()
        if ctx.shares("identity"):
            moved = rigidity_loss(ctx.d[ctx.a], ctx.d[ctx.b], self.mobility, scale=ctx.config.displacement_scale_mm)
            spread = torch.relu(self.target - moved)
        return self.config.weight * spread, {"g_mspread": float(spread.detach())}
