"""Identity anchoring (our deviation, docs/training.md "Session 9";
:mod:`facemodel.training.anchoring`): every training identity a fixed code (whitened principal
components of its most neutral mesh), and ``pairs`` training meshes a step reproduced whole
from [its identity's code, A(its weights), random noise] (mm^2 per vertex)."""

from __future__ import annotations

import logging

import numpy as np
import torch
from pydantic import Field

from ..anchoring import anchor_loss, fit_identity_anchor
from .base import Contribution, GeneratorContext, Setup, Term, TermConfig
from .expression_anchor import fitted_anchor

log = logging.getLogger(__name__)


class IdentityAnchorConfig(TermConfig):
    """``weight``: lambda_identity_anchor."""

    pairs: int = Field(32, ge=1, description="training meshes reproduced a step")


def fitted_identity_codes(s: Setup) -> tuple[torch.Tensor, slice]:
    """((N, identity code_dim) anchor code of every training mesh's identity, on the training
    device; the identity code's columns in the full code), fitted once per setup."""
    fit = fitted_anchor(s)
    name = s.config.require_role("identity", "identity anchoring")

    def make() -> tuple[torch.Tensor, slice]:
        ident = s.gen_config.factor(name)
        id_classes, id_codes, stats = fit_identity_anchor(s.data, ident.code_dim)
        lookup = np.full(int(id_classes.max()) + 1, -1, dtype=np.int64)
        lookup[id_classes] = np.arange(len(id_classes))
        log.info("identity anchor: %d identities, %d codes hold %.1f%% of their shape variance (%.3f mm RMS)",
                 int(stats["identities"]), ident.code_dim, 100 * stats["kept"], stats["shape_mm"])  # fmt: skip
        codes = torch.from_numpy(id_codes[lookup[fit.classes]]).to(s.device)
        return codes, s.gen_config.code_slices()[name]

    return s.shared("identity_anchor", make)


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
