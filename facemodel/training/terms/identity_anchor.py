"""Identity anchoring (our deviation, docs/training.md "Session 9";
:mod:`facemodel.training.anchoring`): every training identity a fixed code (whitened principal
components of its most neutral mesh), and ``pairs`` training meshes a step reproduced whole
from [its identity's code, A(its weights), random noise] (mm^2 per vertex)."""

from __future__ import annotations

import logging

import numpy as np
import torch
from pydantic import Field

from ..anchoring import anchor_loss
from .base import Contribution, GeneratorContext, Setup, Term, TermConfig
from .expression_anchor import fitted_anchor, fitted_identity_codes  # (one-way: that module holds both fits)

log = logging.getLogger(__name__)


class IdentityAnchorConfig(TermConfig):
    """``weight``: lambda_identity_anchor."""

    pairs: int = Field(32, ge=1, description="training meshes reproduced a step")


class IdentityAnchorTerm(Term):
    name = "identity_anchor"
    Config = IdentityAnchorConfig
    logs = ("g_ianchor",)

    def setup(self, s: Setup) -> None:
        self.fit = fitted_anchor(s)
        self.codes, self.identity = fitted_identity_codes(s)  # (N, code_dim) per mesh

    def generator(self, ctx: GeneratorContext) -> Contribution:
        """``pairs`` training meshes (seeded by the step) from their identity's anchor code, their
        weights' expression anchor code and random noise."""
        rows = ctx.rng(13).integers(0, len(ctx.data), self.config.pairs)
        x = torch.from_numpy(ctx.data.offsets(rows).astype(np.float32)).to(ctx.device)
        z = torch.randn(len(rows), ctx.code_dim, device=ctx.device)
        z[:, self.identity] = self.codes[torch.from_numpy(rows).to(ctx.device)]
        z[:, self.fit.expression] = self.fit.codes(rows, ctx.device)
        ianchor = anchor_loss(ctx.generate(z), x)
        return self.config.weight * ianchor, {"g_ianchor": float(ianchor.detach())}
