"""The posterior-mean shape of a landmark fit under a Gaussian approximation of the model's faces.

A MAP fit (:mod:`facemodel.fitting`) returns the most probable *code*; with noisy points the
mesh of that code is not the mean of the meshes that explain the points: the generator is
nonlinear, and the MAP code trades the face's size and proportions against the pose. The
posterior *mean* shape is closer to the truth on average. It is computed here under a Gaussian
approximation of the model's own faces: ``N`` codes drawn from the fit's prior
(:func:`facemodel.prior.code_prior`) are decoded at the landmarks and at a subset of the
vertices, and their mean and covariance give the conditional mean

    E[v_S | landmarks = q] = mu_S + C_SL (C_LL + lam I)^-1 (q - mu_L)

for landmark noise of variance ``lam`` (mm^2 per coordinate), alternated with the pose that
takes the points onto the current landmark estimate (started from the mean face). No training
data is involved: the Gaussian is the model's, estimated once per model and landmark set
(~0.5 s, cached while the weights stay the same).

:func:`blend_weight` says how much of this estimate a fit takes beside the MAP mesh, by the
points' noise; :mod:`facemodel.fitting` re-fits the codes to the blended subset so that the
result stays a face of the model (codes and vertices agree).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

__all__ = ["ShapePosterior", "shape_posterior", "blend_weight", "BLEND_MIN_SHARE", "SUBSET_STEP", "SAMPLES"]

#: prior draws behind the Gaussian (its mean and covariance over 3 (K + |S|) coordinates); on
#: validation faces at 0.5 / 1 / 2 mm: 2,000 draws 2.254 / 2.575 / 2.980 mm, 4,000 2.254 / 2.571 /
#: 2.980, 12,000 2.253 / 2.566 / 2.967, 30,000 2.253 / 2.565 / 2.969 (built in 0.1 / 0.3 / 0.5 / 2.4 s)
SAMPLES = 12000
#: every how many-th vertex the blended target holds (9,409 face vertices -> 157); on validation
#: faces at 1 mm every 30th / 60th / 90th gave 2.571 / 2.573 / 2.577 mm at 11.5 / 8.7 / 8.2 ms a face
SUBSET_STEP = 60
#: the posterior mean's share below which a fit keeps its MAP mesh unchanged (exact points)
BLEND_MIN_SHARE = 0.1
#: noise variance floor of the conditional mean (mm^2): the model's own mismatch to real faces
_LAM_FLOOR = 0.25
#: pose / shape alternations of the conditional mean
_ROUNDS = 6


def blend_weight(noise_mm: np.ndarray) -> np.ndarray:
    """(B,) landmark noise per coordinate (mm) -> (B,) share of the posterior mean in the fit's
    mesh, ``1 - 1 / (1 + 2 noise^2)``: 0 for exact points, 0.33 at 0.5 mm, 0.67 at 1 mm, 0.89 at
    2 mm. Chosen on validation faces (upstream ICT, seed 2027) among five rules by
    ``benchmarks/bench_fit_unseen.py --select-blend`` (docs/benchmarks.md): the MAP mesh is better
    for exact points, the posterior mean for noisy ones."""
    s = np.asarray(noise_mm, np.float64)
    return 1.0 - 1.0 / (1.0 + 2.0 * s * s)


@dataclass(frozen=True, eq=False)
class ShapePosterior:
    """A Gaussian over the landmarks and a vertex subset of a model's faces (float64, mm).

    Attributes:
        subset: (S,) vertex indices the conditional mean is computed at.
        mean_l: (3K,) mean landmark coordinates; mean_s: (3S,) mean subset coordinates.
        eigval, eigvec: (3K,), (3K, 3K): the landmark covariance ``C_LL = Q diag(e) Q^T``.
        gain_l: (3K, 3K) ``C_LL Q``; gain_s: (3S, 3K) ``C_SL Q`` (conditional means in one product).
    """

    subset: np.ndarray
    mean_l: np.ndarray
    mean_s: np.ndarray
    eigval: np.ndarray
    eigvec: np.ndarray
    gain_l: np.ndarray
    gain_s: np.ndarray

    def conditional_mean(self, align: Callable[[np.ndarray], np.ndarray], lam: np.ndarray) -> np.ndarray:
        """Posterior-mean subset vertices (B, S, 3) (mm, model space).

        Args:
            align: (B, K, 3) current landmark estimate -> (B, K, 3) the points mapped into model
                space by the pose that takes them onto it (mm).
            lam: (B,) landmark noise variance per coordinate (mm^2).
        """
        lam = np.maximum(np.asarray(lam, np.float64), _LAM_FLOOR)
        B = lam.shape[0]
        m = np.repeat(self.mean_l.reshape(1, -1, 3), B, 0)
        for _ in range(_ROUNDS):
            q = align(m).reshape(B, -1).astype(np.float64)
            coef = ((q - self.mean_l) @ self.eigvec) / (self.eigval + lam[:, None])  # (B, 3K)
            m = (self.mean_l + coef @ self.gain_l.T).reshape(B, -1, 3)
        return (self.mean_s + coef @ self.gain_s.T).reshape(B, -1, 3)


_CACHE: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def shape_posterior(model: torch.nn.Module, key: tuple, decode_rows: Callable[[np.ndarray], np.ndarray],
                    n_landmarks: int, subset: np.ndarray, prior) -> ShapePosterior:  # fmt: skip
    """The :class:`ShapePosterior` of ``model`` for a landmark set (cached under ``key``, which
    must change with the weights and the landmark set).

    Args:
        decode_rows: (N, D) codes -> (N, 3 (K + S)) the K landmarks then the S subset vertices (mm).
        n_landmarks: K.
        subset: (S,) the subset's vertex indices (kept for reference).
        prior: the :class:`facemodel.prior.CodePrior` the codes are drawn from.
    """
    try:
        cache = _CACHE.setdefault(model, {})
    except TypeError:  # not weak-referenceable
        cache = {}
    hit = cache.get(key)
    if hit is not None:
        return hit
    z = prior.sample(SAMPLES, seed=5)
    X = np.concatenate([decode_rows(z[i : i + 500]) for i in range(0, SAMPLES, 500)]).astype(np.float64)
    mean = X.mean(0)
    X -= mean
    k = 3 * n_landmarks
    L = X[:, :k]
    C_LL = L.T @ L / (SAMPLES - 1)
    C_SL = X[:, k:].T @ L / (SAMPLES - 1)
    e, Q = np.linalg.eigh(C_LL)
    e = np.maximum(e, 0.0)
    post = ShapePosterior(np.asarray(subset), mean[:k], mean[k:], e, Q, C_LL @ Q, C_SL @ Q)
    if len(cache) >= 4:
        cache.clear()
    cache[key] = post
    return post
