"""Auxiliary classification of the factors' labels (paper Eq. 6-9, lambda_2 and lambda_c)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..losses import class_weights, classification_loss
from .base import Contribution, CriticContext, GeneratorContext, Setup, Term, TermConfig


class ClassificationConfig(TermConfig):
    weight: float = Field(1.0, ge=0, description="lambda_2: the generator's classification term")
    critic_weight: float = Field(0.1, ge=0, description="lambda_c: the critic's classification term")
    factors: Literal["all", "identity"] = Field(
        "all", description="factors with a classifier, and whose labels the steps alternate over (paper Table 1)")
    label_codes: Literal["random", "anchored"] = Field(
        "random", description="the labels' fixed codes: 'random' N(0, I) draws (the paper), or 'anchored' (our "
        "deviation, model 0.4): an identity label's code is its identity anchor code, an expression label's the "
        "mean expression-anchor code of its labelled training meshes (needs both anchor terms on)")


class Classification(Term):
    """Critic: class-weighted cross-entropy of real meshes' labels; generator: cross-entropy of
    the labelled factor's labels on its meshes."""

    name = "classification"
    Config = ClassificationConfig
    logs = ("g_cls",)
    always_logged = True

    @property
    def on(self) -> bool:
        return self.config.weight > 0 or self.config.critic_weight > 0

    def setup(self, s: Setup) -> None:
        self.weights = {k: class_weights(s.labels[k], s.gen_config.factor(k).num_labels).to(s.device)
                        for k in s.classified}  # fmt: skip

    def critic(self, ctx: CriticContext) -> Contribution:
        out = ctx.out_real
        cls = sum(classification_loss(out.logits[k].float(), ctx.labels[k], self.weights[k]) for k in self.weights)
        return self.config.critic_weight * cls, {"d_cls": float(cls.detach())}

    def generator(self, ctx: GeneratorContext) -> Contribution:
        b = ctx.batch
        cls = classification_loss(ctx.out.logits[b.labelled].float(), b.labels[b.labelled]) if b.labelled else ctx.zero()
        return self.config.weight * cls, {"g_cls": float(cls.detach())}
