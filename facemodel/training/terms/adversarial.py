"""The Wasserstein GAN term with gradient penalty (paper Eq. 2, lambda_1; Gulrajani et al. 2017)."""

from __future__ import annotations

from pydantic import Field

from ..losses import gradient_penalty
from .base import Contribution, CriticContext, GeneratorContext, Term, TermConfig


class AdversarialConfig(TermConfig):
    weight: float = Field(1.0, ge=0, description="lambda_1: the generator's adversarial term")
    gradient_penalty: float = Field(10.0, ge=0, description="weight of the critic's gradient penalty")


class Adversarial(Term):
    """Critic: ``-W + gp * penalty`` (W = mean real score - mean generated score); generator:
    ``-mean score`` of its meshes. The critic's part always runs: every other term is read
    through this critic."""

    name = "adversarial"
    Config = AdversarialConfig
    logs = ("g_gan",)
    always_logged = True

    @property
    def on(self) -> bool:
        return True

    def critic(self, ctx: CriticContext) -> Contribution:
        D = ctx.critic
        wdist = ctx.out_real.score.float().mean() - ctx.out_fake.score.float().mean()
        gp = gradient_penalty(lambda x: D.from_image(x).score, D.image(ctx.real), D.image(ctx.fake))
        return -wdist + self.config.gradient_penalty * gp, {"wdist": wdist.item(), "gp": gp.item()}

    def generator(self, ctx: GeneratorContext) -> Contribution:
        gan = -ctx.out.score.float().mean()
        return self.config.weight * gan, {"g_gan": gan.item()}
