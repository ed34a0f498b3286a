"""The feature loss (paper Eq. 10-11, lambda_3): pairs sharing a factor's code get alike
classifier features for that factor."""

from __future__ import annotations

from pydantic import Field

from ..losses import feature_loss
from .base import Contribution, GeneratorContext, Term, TermConfig


class FeatureConfig(TermConfig):
    weight: float = Field(0.5, ge=0, description="lambda_3 (0: the paper's ablation without it)")


class Feature(Term):
    """``1 - cos`` of the critic's branch features of each pair, for every factor whose code the
    pairs share."""

    name = "feature"
    Config = FeatureConfig
    logs = ("g_feat",)
    always_logged = True

    def generator(self, ctx: GeneratorContext) -> Contribution:
        feat = ctx.zero()
        for f in ctx.config.factors:
            if f.name != ctx.batch.labelled:
                feats = ctx.out.features[f.name]
                feat = feat + feature_loss(feats[ctx.a].float(), feats[ctx.b].float())
        return self.config.weight * feat, {"g_feat": float(feat.detach())}
