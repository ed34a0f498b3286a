"""Expression anchoring (our deviation, docs/training.md "Session 8";
:mod:`facemodel.training.anchoring`): a fixed linear map A from the data's blendshape weights
to expression codes, and for ``pairs`` same-person training pairs a step,
``G(z, A(w_i)) - G(z, A(w_j))`` must equal ``x_i - x_j`` (mm^2 per face-area vertex). The
identity part of ``z`` is a random prior code (``identity: random``, 0.4.0: the pair's motion
taught on any face, which pulls the motion towards the same on every face) or the pair's own
identity anchor code (``identity: anchored``: each person's motion on that person's code)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from ..anchoring import FACE_VERTICES, ExpressionAnchor, anchor_loss, fit_expression_anchor, fit_identity_anchor
from .base import Contribution, GeneratorContext, Setup, Term, TermConfig

log = logging.getLogger(__name__)


class ExpressionAnchorConfig(TermConfig):
    """``weight``: lambda_expression_anchor."""

    pairs: int = Field(32, ge=1, description="same-person training pairs a step")
    identity: Literal["random", "anchored"] = Field(
        "random", description="the pairs' identity code: a random prior draw, or the pair's identity anchor code")


@dataclass
class AnchorFit:
    """The fitted expression anchor and the data the anchoring terms draw from."""

    anchor: ExpressionAnchor  # on the training device
    expression: slice  # the expression code's columns in the full code
    classes: np.ndarray  # (N,) identity class of each training row
    rows_of: dict[int, np.ndarray]  # identity class -> its training rows
    weights: torch.Tensor  # (N, 53) blendshape weights of each training row, CPU

    def codes(self, rows: np.ndarray, device: torch.device) -> torch.Tensor:
        """(M, code_dim of the expression) anchor codes of training rows' weights."""
        return self.anchor(self.weights[rows].to(device))


def fitted_anchor(s: Setup) -> AnchorFit:
    """The expression anchor of the role "expression" (fitted once per setup)."""
    name = s.config.require_role("expression", "expression and identity anchoring")

    def fit() -> AnchorFit:
        exp = s.gen_config.factor(name)
        anchor, stats = fit_expression_anchor(s.data, exp.code_dim, seed=s.seed)
        log.info("expression anchor: %d codes hold %.1f%% of the weights' displacement (%.3f mm RMS); the linear "
                 "model misses same-person pairs by %.3f mm", exp.code_dim, 100 * stats["kept"], stats["motion_mm"],
                 stats["fit_residual_mm"])  # fmt: skip
        classes = s.data.identity_classes()
        return AnchorFit(anchor=anchor.to(s.device), expression=s.gen_config.code_slices()[name], classes=classes,
                         rows_of={int(k): np.flatnonzero(classes == k) for k in np.unique(classes)},
                         weights=torch.from_numpy(np.asarray(s.data.meta("blendshapes"), dtype=np.float32)))  # fmt: skip

    return s.shared("expression_anchor", fit)


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


class ExpressionAnchorTerm(Term):
    name = "expression_anchor"
    Config = ExpressionAnchorConfig
    logs = ("g_anchor",)

    def setup(self, s: Setup) -> None:
        self.fit = fitted_anchor(s)
        self.identity_codes = None
        if self.config.identity == "anchored":
            self.identity_codes = fitted_identity_codes(s)

    def generator(self, ctx: GeneratorContext) -> Contribution:
        """``pairs`` same-person training pairs (seeded by the step), their weights' anchor codes
        on random prior noise codes and random prior identity codes (or the pair's own)."""
        P, fit = self.config.pairs, self.fit
        rng = ctx.rng(11)
        a = rng.integers(0, len(ctx.data), P)
        b = np.array([rng.choice(fit.rows_of[int(fit.classes[r])]) for r in a], dtype=np.int64)
        rows = np.concatenate([a, b])
        x = torch.from_numpy(ctx.data.offsets(rows)[:, :FACE_VERTICES].astype(np.float32)).to(ctx.device)
        z = torch.randn(P, ctx.code_dim, device=ctx.device).repeat(2, 1)
        if self.identity_codes is not None:
            codes, identity = self.identity_codes
            z[:, identity] = codes[torch.from_numpy(rows).to(codes.device)]
        z[:, fit.expression] = fit.codes(rows, ctx.device)
        g = ctx.generate(z)[:, :FACE_VERTICES]
        anchor = anchor_loss(g[:P] - g[P:], x[:P] - x[P:])
        return self.config.weight * anchor, {"g_anchor": float(anchor.detach())}
