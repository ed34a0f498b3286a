"""The Laplacian smoothness term (paper Eq. 12, lambda_4)."""

from __future__ import annotations

from pydantic import Field

from ..losses import laplacian_loss
from .base import Contribution, GeneratorContext, Setup, Term, TermConfig


class LaplacianConfig(TermConfig):
    weight: float = Field(100.0, ge=0, description="lambda_4 (0: the paper's ablation without it)")


class Laplacian(Term):
    """``||L d||^2`` of the generated displacements with the template's cotangent Laplacian."""

    name = "laplacian"
    Config = LaplacianConfig
    logs = ("g_reg",)
    always_logged = True

    def setup(self, s: Setup) -> None:
        self.laplacian = s.template.laplacian().to(s.device)  # (V, V) sparse

    def generator(self, ctx: GeneratorContext) -> Contribution:
        reg = laplacian_loss(self.laplacian, ctx.d, scale=ctx.config.displacement_scale_mm)
        return self.config.weight * reg, {"g_reg": float(reg.detach())}
