"""Motion subspace (our deviation, docs/training.md "Session 7"): pairs sharing the identity
code may differ only inside the data's expression-motion subspace
(:mod:`facemodel.training.subspace`), in mm^2 per vertex."""

from __future__ import annotations

import logging

from pydantic import Field

from ..subspace import fit_motion_subspace
from .base import Contribution, GeneratorContext, Setup, Term, TermConfig

log = logging.getLogger(__name__)


class MotionSubspaceConfig(TermConfig):
    """``weight``: lambda_motion_subspace."""

    components: int = Field(128, ge=1, description="PCA modes of same-identity mesh differences kept")


class MotionSubspace(Term):
    name = "motion_subspace"
    Config = MotionSubspaceConfig
    logs = ("g_msub",)

    def setup(self, s: Setup) -> None:
        subspace, stats = fit_motion_subspace(s.data, components=self.config.components, seed=s.seed)
        self.subspace = subspace.to(s.device)
        log.info("motion subspace: %d modes; data pairs move %.3f mm, %.4f mm of it outside (RMS per vertex)",
                 self.config.components, stats["motion_mm"], stats["residual_mm"])  # fmt: skip

    def generator(self, ctx: GeneratorContext) -> Contribution:
        msub = self.subspace.residual(ctx.d[ctx.a], ctx.d[ctx.b]).mean() if ctx.shares("identity") else ctx.zero()
        return self.config.weight * msub, {"g_msub": float(msub.detach())}
