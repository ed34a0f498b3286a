"""Critic regression heads (our deviation, docs/training.md): the critic's factor branches also
regress every real mesh's identity coefficients and blendshape weights
(:func:`facemodel.training.labels.factor_targets`, standardised per column)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..labels import factor_targets
from .base import Contribution, CriticContext, Setup, Term, TermConfig


class RegressionConfig(TermConfig):
    """``weight``: lambda_regress, the critic's standardised MSE on real meshes."""


class Regression(Term):
    name = "regression"
    Config = RegressionConfig

    def setup(self, s: Setup) -> None:
        self.targets: dict[str, torch.Tensor] = {}  # {factor: (N, T)} per training row, CPU
        for f in s.config.factors:  # standardised per column, so every target weighs alike
            t = factor_targets(s.data, f.labels)
            self.targets[f.name] = torch.from_numpy((t - t.mean(0)) / (t.std(0) + 1e-6))
        self.critic_targets = {k: int(v.shape[1]) for k, v in self.targets.items()}

    def critic(self, ctx: CriticContext) -> Contribution:
        targets = {k: t[ctx.rows].to(ctx.device) for k, t in self.targets.items()}
        reg = sum(F.mse_loss(ctx.out_real.regression[k].float(), t) for k, t in targets.items())
        return self.config.weight * reg, {"d_regress": float(reg.detach())}
