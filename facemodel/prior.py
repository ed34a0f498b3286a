"""The code prior the fits regularise towards: a Gaussian ``N(mean, cov)`` over the whole code.

The generator's code ``z = [z_identity, z_expression, z_noise]`` is not equally likely
everywhere: the identity code is the whitened PCA anchor of the training identities (so it
is ~N(0, I)), the noise code is drawn N(0, I) in training, but the expression code of real
faces follows the blendshape map ``to_code`` of blendshape weights, a small, shifted,
correlated cloud (the rest pose is not z = 0). :func:`code_prior` builds

- identity and noise blocks: mean 0, identity covariance;
- the expression block: the mean and covariance of ``to_code(e)`` over random weight vectors
  ``e``, half of them sparse tracker-like ones (1-6 of the learned shapes at 0.1-1.0 each,
  one in ten at rest) and half realistic ones drawn like the training data's expressions
  (:func:`facemodel.data.random_expressions.random_expressions`, what ``FaceModel.sample``
  draws), plus a small floor (1 % of the mean variance) so that every direction stays
  reachable; N(0, I) for models without a blendshape map.

A fit regularised by ``reg * ||L^-1 (z - mean)||^2`` (``cov = L L^T``) is a MAP estimate
under this prior; the Mahalanobis norm ``||L^-1 (z - mean)||`` of a code is its
*plausibility*: codes drawn from the prior have norms of about ``sqrt(D)`` (9.2 for D = 85),
see :attr:`CodePrior.typical_range`.
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["CodePrior", "code_prior"]

_SAMPLES = 20000
_SERIALS = itertools.count()
#: the share of the expression block's weight vectors drawn by ``random_expressions`` (the rest
#: tracker-like). 0.5 since session 27: against the tracker-like block alone (0.0, before), on
#: validation faces it fits ICT 4D faces 0.03-0.05 mm closer and keeps upstream ICT faces within
#: 0.01 mm (docs/benchmarks.md "The fit prior's expression block")
REALISTIC_SHARE = 0.5
_FLOOR = 0.01  # variance floor of the expression block, relative to its mean variance


@dataclass(frozen=True, eq=False)
class CodePrior:
    """A Gaussian prior over codes (float64 NumPy).

    Attributes:
        mean: (D,) prior mean.
        chol: (D, D) lower-triangular ``L`` with ``cov = L L^T``.
        chol_inv: (D, D) ``L^-1``.
        typical_range: (lo, median, hi): the 1st, 50th and 99th percentile of the
            Mahalanobis norms of codes drawn from the prior (a fit outside ``[lo, hi]`` is
            less typical than 98 % of the prior's faces).
        source: how the expression block was obtained.
        serial: a number no other prior of this process has (caches derived from a prior key
            on it: an ``id()`` can be reused once the prior is freed).
    """

    mean: np.ndarray
    chol: np.ndarray
    chol_inv: np.ndarray
    typical_range: tuple[float, float, float]
    source: str
    serial: int = field(default_factory=lambda: next(_SERIALS))

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def whiten(self, z: np.ndarray) -> np.ndarray:
        """(B, D) codes -> (B, D) whitened codes ``u = L^-1 (z - mean)`` (~N(0, I) under the prior)."""
        return (np.asarray(z, np.float64) - self.mean) @ self.chol_inv.T

    def color(self, u: np.ndarray) -> np.ndarray:
        """(B, D) whitened codes -> codes ``z = mean + L u``."""
        return self.mean + np.asarray(u, np.float64) @ self.chol.T

    def mahalanobis(self, z: np.ndarray | torch.Tensor) -> np.ndarray:
        """(B, D) codes -> (B,) Mahalanobis norms against the prior (dimensionless)."""
        if isinstance(z, torch.Tensor):
            z = z.detach().cpu().numpy()
        return np.linalg.norm(self.whiten(np.atleast_2d(z)), axis=-1)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """(n, D) codes drawn from the prior (float64)."""
        return self.color(np.random.default_rng(seed).standard_normal((n, self.dim)))


def _tracker_weights(names: list[str], learned: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 53) random sparse weights: 1-6 learned shapes at 0.1-1.0, one face in ten at rest;
    a shape with an _L / _R partner brings it along half the time (trackers report both)."""
    W = np.zeros((n, len(names)))
    pool = np.flatnonzero(learned)
    partner = {}
    for i, name in enumerate(names):
        for a, b in (("_L", "_R"), ("_R", "_L"), ("Left", "Right"), ("Right", "Left")):
            if name.endswith(a) and name[: -len(a)] + b in names:
                partner[i] = names.index(name[: -len(a)] + b)
    m = len(pool)
    k = rng.integers(1, 7, size=n)
    rank = np.argsort(rng.random((n, m)), axis=1).argsort(axis=1)  # a random permutation per row
    on = (rank < k[:, None]) & (rng.random(n) >= 0.1)[:, None]  # one face in ten at rest
    W[:, pool] = np.where(on, rng.uniform(0.1, 1.0, (n, m)), 0.0)
    for i, j in partner.items():
        if learned[j]:
            bring = (W[:, i] > 0) & (W[:, j] == 0) & (rng.random(n) < 0.5)
            W[:, j] = np.where(bring, np.clip(W[:, i] + rng.normal(0, 0.1, n), 0.0, 1.0), W[:, j])
    return W


def _expression_weights(names: list[str], learned: np.ndarray, n: int, share: float) -> np.ndarray:
    """(n, 53) weight vectors behind the expression block: ``round(share n)`` realistic rows
    (``random_expressions``, restricted to the learned shapes) and the rest tracker-like,
    from fixed seeds (deterministic)."""
    from .blendshapes import ICT_NAMES
    from .data.random_expressions import random_expressions

    k = int(round(share * n))
    W = _tracker_weights(names, learned, n - k, np.random.default_rng(0))
    if k:
        R = random_expressions(k, np.random.default_rng(1))  # ICT order
        order = [list(ICT_NAMES).index(x) for x in names]
        W = np.concatenate([W, R[:, order] * learned], axis=0)
    return W


def _build(model: torch.nn.Module) -> CodePrior:
    cfg = model.config.generator
    D = cfg.code_dim
    mean, cov = np.zeros(D), np.eye(D)
    source = "N(0, I) (no blendshape map)"
    emap = getattr(model, "expression_map", None)
    sl = model.code_slices.get("expression") if hasattr(model, "code_slices") else None
    if emap is not None and sl is not None:
        names = list(emap.config.names)
        learned = emap.learned_mask.detach().cpu().numpy() > 0
        W = _expression_weights(names, learned, _SAMPLES, REALISTIC_SHARE)
        p = next(emap.parameters())
        with torch.no_grad():
            codes = emap.to_code(torch.as_tensor(W, dtype=p.dtype, device=p.device)).double().cpu().numpy()
        mu = codes.mean(0)
        C = np.cov(codes, rowvar=False)
        C += _FLOOR * np.trace(C) / len(C) * np.eye(len(C))
        mean[sl] = mu
        cov[sl, sl] = C
        k = int(round(REALISTIC_SHARE * _SAMPLES))
        source = (f"expression: to_code of {_SAMPLES} random weight vectors: {_SAMPLES - k} sparse tracker-like "
                  f"(seed 0), {k} realistic (random_expressions, seed 1)")
    L = np.linalg.cholesky(cov)
    Linv = np.linalg.inv(L)
    norms = np.linalg.norm(np.random.default_rng(1).standard_normal((4096, D)), axis=1)
    lo, med, hi = np.percentile(norms, [1, 50, 99])
    return CodePrior(mean, L, Linv, (float(lo), float(med), float(hi)), source)


_CACHE: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _stamp(model: torch.nn.Module) -> tuple:
    emap = getattr(model, "expression_map", None)
    ps = [] if emap is None else list(emap.parameters())
    return (id(emap), model.config.generator.code_dim, REALISTIC_SHARE) + tuple((q.data_ptr(), q._version) for q in ps)


def code_prior(model: torch.nn.Module) -> CodePrior:
    """The :class:`CodePrior` of a :class:`~facemodel.model.FaceModel` (computed once, ~0.1 s,
    cached while the blendshape map's weights stay the same; deterministic)."""
    key = _stamp(model)
    try:
        hit = _CACHE.get(model)
    except TypeError:  # not weak-referenceable
        return _build(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    prior = _build(model)
    _CACHE[model] = (key, prior)
    return prior
