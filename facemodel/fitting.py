"""Fitting the model to sparse landmarks (paper §5, "Reconstruction of Sparse Data", Eq. 13).

The paper fits a code ``z`` to ``p`` 3D key points by

    argmin_z  sum_i ||v~_i(z) - v_i||^2 + lambda ||z||^2                      (13)

with Adam from a random code. Here the points may come in any units and pose, so a
similarity (or rigid) transform ``S`` is estimated with ``z``, and Eq. 13 is minimised in
**model space**::

    E(z, S) = sum_i w_i ||v~_i(z) - S(p_i)||^2 + reg * ||z||^2

``S`` maps the input points into the model's frame, so the data term is in **mm^2**
whatever the input units. By default the regulariser is the model's code prior,
``reg ||L^-1 (z - mean)||^2`` (:mod:`facemodel.prior`, :mod:`facemodel.fitting_prior`: the
solve runs in whitened codes), at a weight chosen on validation faces; an explicit ``reg``
alone is the paper's lambda on the raw code (``prior="l2"``; the paper uses 0, 0.01 and 10).
Residuals and RMSE in :class:`FitResult` are reported in the **input's units**.

Solvers:

- ``"gauss-newton"`` (default, fast): from a linear-regression guess of the code,
  Levenberg-Marquardt on the code and the pose together. Only the landmark rows of the
  generator's last layer are evaluated (``m(z) = A lrelu(W1 z + b1) + c``, 3K numbers;
  the full 3V output is decoded once, when ``FitResult.vertices`` is read). The Jacobian
  ``J = A diag(lrelu'(h)) W1`` is exact, updated for the hidden units whose LeakyReLU
  branch changed. The landmarks are piecewise linear in ``z``, so each step is followed by
  an exact line search over the pieces of the ray; the pose is then re-solved in closed
  form (weighted Umeyama) at the new code (variable projection). Faces are batched with
  per-face damping and stopping: a batch returns the per-face results (up to rounding).
  This exact path needs the paper's one-hidden-layer generator
  (:meth:`~facemodel.networks.Generator.affine_hidden`); any other generator of the interface
  (:class:`~facemodel.networks.GeneratorInterface`, e.g. ``hidden_layers=2``) gets the same
  Levenberg-Marquardt with its Jacobian ``A dh/dz`` from ``hidden_jacobian`` at every
  iteration and a search of each step on a grid of lengths.
  This solver runs on the CPU in NumPy (a few hundred numbers per face); results come
  back on ``device``.
- ``"lbfgs"``: :class:`torch.optim.LBFGS` on ``z``, alternated with the closed-form pose.
- ``"adam"``: the paper's protocol, Adam from a random code (default 1000 steps,
  lr 0.01), pose re-solved every 10 steps. A baseline, ~70x slower than Gauss-Newton.

Near a LeakyReLU kink the objective of a noisy fit keeps decreasing by ~1e-4 per
iteration for a while with no visible effect on the fit; such fits stop at ``max_iters``
with ``converged`` False. Under the default prior (20 iterations, tol 1e-5) ~96 % of fits
meet the stopping rule, after 8-14 iterations.

:func:`fit_landmarks_2d` fits 2D landmarks under a scaled-orthographic camera
``x = s R[:2] v + t`` solved jointly with ``z`` (image residuals divided by ``s``: model-space
mm^2 again), or a pinhole camera ``x = f (R v + t)_xy / (R v + t)_z + c`` (``camera="pinhole"``,
known or fitted ``f``; image residuals divided by ``f / t_z``).
"""

from __future__ import annotations

import contextlib
import copy
import math
import threading
import weakref
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy.linalg import lapack as _lapack

from .errors import FaceModelError, FittingError, NumericalError
from .fitting_prior import (AUTO, AUTO_LANDMARKS, AUTO_MIN_INNER_POINTS_2D, AUTO_MIN_POINTS, DEFAULT_LOSS_SCALE_MM,
                            DEFAULT_NOISE_MM, LOSSES, PRIOR_MAX_ITERS_GN, PRIOR_TOL, PRIORS, ROBUST_ROUNDS,
                            irls_weights, noise_from_level, noise_from_level_2d, off_frontal_deg, reg_for_noise,
                            reg_for_noise_2d, residual_level, resolve_prior, whitened_head)  # fmt: skip
from .fitting_posterior import BLEND_MIN_SHARE, SUBSET_STEP, blend_weight, shape_posterior
from .landmarks import LandmarkSet, landmark_set
from .networks.interface import GeneratorInterface
from .prior import code_prior

__all__ = ["FitResult", "Transform", "FittingError", "fit_landmarks", "fit_landmarks_2d", "SOLVERS", "ALIGNMENTS", "CAMERAS"]

SOLVERS = ("gauss-newton", "lbfgs", "adam")
ALIGNMENTS = ("similarity", "rigid", "none")
CAMERAS = ("scaled_orthographic", "pinhole")
DEFAULT_MAX_ITERS = {"gauss-newton": 6, "lbfgs": 20, "adam": 1000}
_CHUNK = 128  # faces per Gauss-Newton chunk (bounds memory: ~10 MB of Jacobians per thread)
_DECODE_CHUNK = 256
_MAX_REJECTS = 6  # consecutive rejected steps before stopping
_GRID = (1.0, 0.8, 0.6, 0.45, 0.3, 0.2, 0.1, 0.04)
_EXACT_MAX_BREAKS = 64  # rays crossing more kinks are searched on _GRID (early, long steps)
_REGRESSION_SAMPLES = 4096
#: Gauss-Newton iterations of the re-fit to the posterior blend (from the MAP codes; most faces
#: took 3-4 at the prior's tolerance): on 100 validation faces 2 give the same dense error within
#: 0.001 mm at 0.5 / 1 / 2 mm of noise (2.2533 / 2.5673 / 2.9665 against 2.2527 / 2.5664 / 2.9667), 1 up to 0.033 mm more
_REFIT_MAX_ITERS = 2
_CONTOUR_ITERS = 6  # Gauss-Newton iterations of the rounds that only place a 2D fit's jaw points
#: Gauss-Newton iterations of the middle contour round (it moves the jaw points to the silhouette for
#: the last round, which converges): on 60 validation faces at yaw 0 / 30 / 60 and 1 / 3 px, 1 instead
#: of up to 6 (2.1 on average) gave the same dense error and NLE within 0.02 mm / 0.0003, 13 % faster
_MIDDLE_ITERS = 1
_MAX_COORD = 1e12  # |points| above this overflow float32 sums of squares (and are a unit error)
_TRI = np.tril(np.ones((_EXACT_MAX_BREAKS, _EXACT_MAX_BREAKS), np.float32))


# ---- result ---------------------------------------------------------------------------------
class Transform(NamedTuple):
    """Model space -> the points' space: ``p ~ scale * rotation @ v + translation`` (3D), or
    the camera ``x ~ scale * rotation[:2] @ v + translation`` (2D fits)."""

    scale: torch.Tensor  # (B,)
    rotation: torch.Tensor  # (B, 3, 3)
    translation: torch.Tensor  # (B, 3), (B, 2) for cameras


@dataclass(eq=False)
class FitResult:
    """Result of :func:`fit_landmarks` / :func:`fit_landmarks_2d` (batched: B faces, also
    for a single (K, 3) input).

    Attributes:
        vertices: (B, V, 3) fitted meshes in model space (mm), decoded from ``codes`` on
            first access (once; a full decode streams the whole output layer, ~58 MB for the
            paper's sizes); ``None`` for fits with ``decode=False``.
        codes: (B, D) fitted codes.
        scale, rotation, translation: (B,), (B, 3, 3), (B, 3): the similarity mapping
            model space to the points' space, ``p ~ scale * rotation @ v + translation``.
            For 2D fits, the camera: ``x ~ scale * rotation[:2] @ v + translation`` with
            translation (B, 2).
        residuals: (B, K) distance of each fitted landmark to its point in the input's
            units (NaN where the point is missing).
        rmse: (B,) root mean square of the residuals over the points with weight > 0.
        iterations: (B,) int64 (outer) iterations each face took.
        converged: (B,) bool: the relative decrease of the objective fell below ``tol``
            (False: stopped at ``max_iters``).
        landmarks: (B, K, 3) fitted landmark positions in model space (mm).
        objective: (B,) final objective, model-space mm^2 (Eq. 13 with weights).
        solver, align: what was used (``align`` holds the camera name for 2D fits).
        landmark_set: the :class:`~facemodel.landmarks.LandmarkSet` fitted.
        plausibility: (B,) the codes' Mahalanobis norm against the model's code prior
            (:func:`facemodel.prior.code_prior`), whatever prior was fitted with.
        typical_range: (lo, median, hi) of that norm over codes drawn from the prior (1st,
            50th, 99th percentile): a fit above ``hi`` is less typical than 99 % of them.
        prior: ``"model"`` (Mahalanobis prior) or ``"l2"`` (``reg ||z||^2``); ``reg``: its weight,
            a float, or (B,) float64 per face when it followed each face's noise (3D
            ``noise_mm="auto"``, 2D ``noise_px``).
        noise_mm: (B,) float64, 3D fits under the model prior: the landmark noise per coordinate
            (model-space mm) whose weight the fit used: estimated from each face's residuals
            for ``noise_mm="auto"`` (the default for ``"ibug68"`` points), else the given one;
            2D fits with ``noise_px``: the image noise divided by the first (jaw-free) fit's
            camera scale (model-space mm; times ``scale``: the pixels to within a few %);
            ``None`` for explicit ``reg`` and 2D fits without ``noise_px``.
        posterior_share: (B,) float64 in [0, 1): the share of the posterior-mean shape in the
            fitted mesh (``posterior``; 0: the MAP fit alone, e.g. for exact points); ``None``
            where no posterior mean was blended in.
        loss_weights: (B, K) the robust loss's final per-landmark factors in [0, 1]
            (all 1 for ``loss="l2"``).
        focal_length: (B,) pinhole fits (``camera="pinhole"``): the focal length in pixels
            (the given one, or the fitted one); ``None`` for other fits.
        principal_point: (B, 2) pinhole fits: the principal point (px) the fit used;
            ``None`` for other fits.

    Pinhole fits (``align == "pinhole"``): ``rotation`` (B, 3, 3) and ``translation`` (B, 3, mm)
    take model space to the camera frame (OpenCV convention: camera at the origin looking
    down +z, image x right, y down), ``x = f (R v + t)_xy / (R v + t)_z + c``; ``scale`` (B,)
    is ``f / t_z``, the pixels per mm at the depth of the model's origin.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    rotation: torch.Tensor
    translation: torch.Tensor
    residuals: torch.Tensor
    rmse: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    landmarks: torch.Tensor
    objective: torch.Tensor
    solver: str = "gauss-newton"
    align: str = "similarity"
    landmark_set: LandmarkSet | None = field(default=None, repr=False)
    plausibility: torch.Tensor | None = None
    typical_range: tuple[float, float, float] | None = None
    prior: str = "l2"
    reg: float | torch.Tensor = 0.01
    noise_mm: torch.Tensor | None = None
    posterior_share: torch.Tensor | None = None
    loss_weights: torch.Tensor | None = field(default=None, repr=False)
    focal_length: torch.Tensor | None = None
    principal_point: torch.Tensor | None = field(default=None, repr=False)
    _decoder: Any = field(default=None, repr=False)
    _vertices: torch.Tensor | None = field(default=None, repr=False)

    @property
    def vertices(self) -> torch.Tensor | None:
        if self._vertices is None and self._decoder is not None:
            self._vertices = self._decoder()
            self._decoder = None
        return self._vertices

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    @property
    def transform(self) -> "Transform":
        """``(scale, rotation, translation)`` as a named tuple (``.scale`` etc.)."""
        return Transform(self.scale, self.rotation, self.translation)

    def transform_points(self, x: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        """Map model-space points (B, N, 3) (default: the fitted vertices) into the input's
        space: ``scale R x + t``, or the camera projection (B, N, 2) for 2D fits (for a
        pinhole: ``f (R x + t)_xy / (R x + t)_z + c``)."""
        if x is None:
            if self.vertices is None:
                raise FittingError("this result holds no vertices (it was fitted with decode=False); pass points")
            x = self.vertices
        x = torch.as_tensor(x, dtype=self.rotation.dtype, device=self.rotation.device)
        y = x @ self.rotation.transpose(-1, -2)
        if self.focal_length is not None:
            y = y + self.translation[:, None, :]
            f = self.focal_length.to(y.dtype)[:, None, None]
            return f * y[..., :2] / y[..., 2:3] + self.principal_point.to(y.dtype)[:, None, :]
        if self.translation.shape[-1] == 2:
            y = y[..., :2]
        return self.scale[:, None, None] * y + self.translation[:, None, :]


# ---- the landmark head: z -> landmark positions from the landmark rows only ------------------
class _Head:
    """``m(z) = A h(z) + c``: the 3K landmark coordinates (mm) from the generator's hidden
    features ``h`` (:class:`~facemodel.networks.GeneratorInterface`) and the landmark rows of
    its output layer (``A`` (3K, H), ``c`` (3K,)), NumPy, CPU."""

    def __init__(self, model: torch.nn.Module, lmk: LandmarkSet, dtype: np.dtype) -> None:
        g = model.generator
        with torch.no_grad():
            idx = lmk.vertex_indices.to(g.device)
            flat = idx.reshape(-1)
            W, b = g.output_rows(flat)  # (3 * 3K, H), scaled to mm
            K, H = idx.shape[0], W.shape[1]
            W = W.detach().double().view(K, 3, 3, H)  # (landmark, corner, xyz, H)
            b = (b.detach().double() + model.template[flat].double().reshape(-1)).view(K, 3, 3)
            if lmk.is_vertex_set:  # the vertex rows themselves
                A, c = W[:, 0], b[:, 0]
            else:
                bary = lmk.barycentrics.to(W.device, torch.float64)
                A, c = (W * bary[:, :, None, None]).sum(1), (b * bary[:, :, None]).sum(1)
            self.A = np.ascontiguousarray(A.reshape(3 * K, H).cpu().numpy().astype(dtype))
            self.c = c.reshape(3 * K).cpu().numpy().astype(dtype)
            self._init_hidden(g, dtype)
        self.At = np.ascontiguousarray(self.A.T)
        self.K, self.H = K, H
        self.dtype = np.dtype(dtype)
        self._m0: np.ndarray | None = None
        self._reg: tuple | None = None  # the regression's mean, eigen-decomposed scatter and products

    def _init_hidden(self, g, dtype) -> None:
        raise NotImplementedError

    def forward(self, z: np.ndarray) -> np.ndarray:
        """(n, D) codes -> (n, 3K) landmark coordinates (mm)."""
        raise NotImplementedError

    def torch_forward(self, tt: dict):
        """A differentiable torch function (n, D) -> (n, 3K) of :meth:`forward` (``tt``: the
        dtype and device to compute in), for the first-order solvers."""
        raise NotImplementedError

    def frozen(self):
        """A context during which gradients do not flow into the generator's weights."""
        return contextlib.nullcontext()

    def regress(self, q: np.ndarray, reg: float | np.ndarray = 0.0) -> np.ndarray:
        """(B, 3K) landmark coordinates (model space, mm) -> (B, D) codes: ridge regression of
        codes on landmark coordinates over codes drawn from the prior N(0, I), a one-shot
        approximate inverse used to start the 3D fits (its sums computed once per head,
        deterministic). The ridge is the fit's prior weight ``reg`` per sample (a float, or (B,)
        per face; the linear estimate of the same MAP problem: with landmark noise of variance
        ``reg`` it is the best linear one), at least 1 % of the mean eigenvalue (``reg = 0``: the
        codes outnumber what 68 points fix). Solved through the eigenvectors of the landmarks'
        scatter, so any weight costs two small products. On validation faces this start saves
        0.3-0.6 of ~3 iterations at the same dense error."""
        if self._reg is None:
            z = np.random.default_rng(0).standard_normal((_REGRESSION_SAMPLES, self.D)).astype(self.dtype)
            X = self.forward(z).astype(np.float64)
            mean = X.mean(0)
            X -= mean
            XtX = X.T @ X
            e, Q = np.linalg.eigh(XtX)
            self._reg = (mean, e, Q, Q.T @ (X.T @ z.astype(np.float64)), 1e-2 * np.trace(XtX) / len(XtX))
        mean, e, Q, QtXtz, floor = self._reg
        ridge = np.maximum(np.asarray(reg, np.float64) * _REGRESSION_SAMPLES, floor)
        c = ((np.asarray(q, np.float64) - mean) @ Q) / (e + (ridge[:, None] if np.ndim(ridge) else ridge))
        return (c @ QtXtz).astype(self.dtype)

    def mean_face(self) -> np.ndarray:
        """(3K,) landmark coordinates at z = 0 (cached)."""
        if self._m0 is None:
            self._m0 = self.forward(np.zeros((1, self.D), self.dtype))[0]
        return self._m0


class _GeneralHead(_Head):
    """Any generator of the interface: ``h`` and its Jacobian come from the generator
    (``hidden`` / ``hidden_jacobian``, torch on its device), the rest is NumPy."""

    #: (mean (D,), L (D, D)) when the head takes whitened codes u, z = mean + L u
    #: (:func:`facemodel.fitting_prior.whitened_head`); None: plain codes
    _whiten: tuple[np.ndarray, np.ndarray] | None = None

    def _init_hidden(self, g, dtype) -> None:
        self.g = g
        self.D = int(g.config.code_dim)

    def _hidden_in(self, z: np.ndarray) -> torch.Tensor:
        if self._whiten is not None:
            mean, chol = self._whiten
            z = mean + np.asarray(z, np.float64) @ chol.T
        return torch.as_tensor(np.ascontiguousarray(z)).to(self.g.device, self.g.dtype)

    def forward(self, z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            h = self.g.hidden(self._hidden_in(z)).cpu().numpy().astype(self.dtype)
        return h @ self.At + self.c

    def forward_jacobian(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, D) codes -> landmarks (n, 3K) and their Jacobian (n, 3K, D) ``A dh/dz`` (times
        ``L`` for whitened codes)."""
        with torch.no_grad():
            h, Jh = self.g.hidden_jacobian(self._hidden_in(z))
            h, Jh = h.cpu().numpy().astype(self.dtype), Jh.cpu().numpy().astype(self.dtype)
        if self._whiten is not None:
            Jh = (Jh @ self._whiten[1]).astype(self.dtype)
        return h @ self.At + self.c, self.A @ Jh

    def torch_forward(self, tt: dict):
        At, c = torch.as_tensor(self.At, **tt), torch.as_tensor(self.c, **tt)
        g = self.g
        white = None if self._whiten is None else tuple(torch.as_tensor(x, **tt) for x in self._whiten)

        def forward(zt):
            if white is not None:
                zt = white[0] + zt @ white[1].T
            return g.hidden(zt.to(g.device, g.dtype)).to(**tt) @ At + c

        return forward

    @contextlib.contextmanager
    def frozen(self):
        params = list(self.g.parameters())
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p, f in zip(params, flags):
                p.requires_grad_(f)


class _LReLUHead(_Head):
    """``m(z) = A lrelu(W1 z + b1) + c`` (one hidden layer, :meth:`Generator.affine_hidden`):
    piecewise linear in ``z``, with the exact Jacobian updates and ray search of the fast path."""

    def _init_hidden(self, g, dtype) -> None:
        layer = g.affine_hidden()
        self.W1 = np.ascontiguousarray(layer.weight.detach().cpu().numpy().astype(dtype))  # (H, D)
        self.b1 = layer.bias.detach().cpu().numpy().astype(dtype)
        self.W1t = np.ascontiguousarray(self.W1.T)
        self.slope = float(layer.negative_slope)
        self.D = self.W1.shape[1]
        self._bases: tuple[np.ndarray, np.ndarray] | None = None
        self._parent: _LReLUHead | None = None  # a row head's full head, and the rows it keeps
        self._rows: np.ndarray | None = None

    def pre(self, z: np.ndarray) -> np.ndarray:
        return z @ self.W1t + self.b1

    def from_pre(self, pre: np.ndarray) -> np.ndarray:
        """(n, H) pre-activations -> (n, 3K) landmark coordinates (mm)."""
        return np.maximum(pre, self.slope * pre) @ self.At + self.c

    def forward(self, z: np.ndarray) -> np.ndarray:
        return self.from_pre(self.pre(z))

    def torch_forward(self, tt: dict):
        At, c = torch.as_tensor(self.At, **tt), torch.as_tensor(self.c, **tt)
        W1t, b1 = torch.as_tensor(self.W1t, **tt), torch.as_tensor(self.b1, **tt)
        slope = self.slope

        def forward(zt):
            pre = zt @ W1t + b1
            return torch.maximum(pre, slope * pre) @ At + c

        return forward

    def jacobian(self, mask: np.ndarray) -> np.ndarray:
        """(n, H) bool positive units -> (n, 3K, D) Jacobian ``A diag(lrelu') W1``."""
        a = np.where(mask, 1.0, self.slope).astype(self.dtype)
        return self.A @ (a[:, :, None] * self.W1)

    def dense_jacobian(self, mask: np.ndarray) -> np.ndarray:
        """(n, H) bool positive units -> (n, 3K, D) Jacobians ``A diag(a) W1`` of all faces as one
        (3K, H) x (H, n D) matrix product (one large BLAS call instead of n small ones)."""
        n, (H, D) = mask.shape[0], self.W1.shape
        a = np.where(mask, 1.0, self.slope).astype(self.dtype)
        M = (a.T[:, :, None] * self.W1[:, None, :]).reshape(H, n * D)
        return np.ascontiguousarray((self.A @ M).reshape(-1, n, D).transpose(1, 0, 2))

    def jacobian_at_zero(self, n: int) -> np.ndarray:
        return self.jacobian_init(np.repeat((self.b1 > 0)[None], n, 0))

    def bases(self) -> tuple[np.ndarray, np.ndarray]:
        """The cached Jacobians of :meth:`jacobian_init`: masks (3, H), Jacobians (3, 3K, D)."""
        if self._bases is None and self._parent is not None:  # a row head: its parent's rows
            masks, Js = self._parent.bases()
            self._bases = (masks, np.ascontiguousarray(Js[:, self._rows]))
        if self._bases is None:
            A64, W64 = self.A.astype(np.float64), self.W1.astype(np.float64)
            P = A64 @ W64
            m0 = self.b1 > 0
            J0 = (A64 * np.where(m0, 1.0, self.slope)) @ W64
            self._bases = (np.stack([np.ones(self.H, bool), np.zeros(self.H, bool), m0]),
                           np.stack([P, self.slope * P, J0]).astype(self.dtype))  # fmt: skip
        return self._bases

    def jacobian_init(self, mask: np.ndarray) -> np.ndarray:
        """(n, H) bool positive units -> (n, 3K, D) Jacobian: several faces by
        :meth:`dense_jacobian`, one face from the cheapest of three cached Jacobians (all units positive ``A W1``, all negative ``slope A W1``,
        the mean face's ``z = 0``) plus a rank-1 term per unit whose branch differs: at most
        H / 2 terms instead of H."""
        if mask.shape[0] > 1:  # several faces: one matrix product for all (faster than their rank-1 terms)
            return self.dense_jacobian(mask)
        masks = self.basis_masks()
        k = int((mask[0] != masks).sum(1).argmin())
        return self.update_jacobian(self.basis(k)[None], masks[k : k + 1], mask)

    def basis_masks(self) -> np.ndarray:
        """(3, H) bool unit signs of the cached Jacobians of :meth:`bases`."""
        if self._parent is not None:
            return self._parent.basis_masks()
        return self.bases()[0]

    def basis(self, k: int) -> np.ndarray:
        """A copy of the ``k``-th cached Jacobian (3K, D) of :meth:`bases` (a row head reads
        only that one of its parent's three: its rows)."""
        if self._parent is not None:
            return self._parent.basis(k)[self._rows]
        return self.bases()[1][k].copy()

    def update_jacobian(self, J, old, new, rows=None):
        """The Jacobian at mask ``new`` from the one at ``old`` (rows scaled by ``rows``
        (n, 3K)), in place: only the units that flipped are added, one rank-1 term
        ``(a_new - a_old) A[:, j] W1[j]`` each (a full rebuild when most flipped)."""
        flips = old != new
        counts = flips.sum(1)
        nf = int(counts.max())
        if nf == 0:
            return J
        if 5 * nf > 4 * self.H:
            J = self.jacobian_init(new)
            return J if rows is None else J * rows[..., None]
        n = J.shape[0]
        if n == 1:  # one face: no padding
            idx = np.flatnonzero(flips[0])
            sign = (new[0, idx].astype(self.dtype) - old[0, idx]) * (1.0 - self.slope)
            Ag = self.At[idx] * sign[:, None]
            if rows is not None:
                Ag *= rows[0]
            J[0] += Ag.T @ self.W1[idx]
            return J
        order = np.argsort(~flips, axis=1, kind="stable")  # flipped units first
        # faces in groups of similar flip counts, each padded to its own maximum
        groups = [np.arange(n)] if n < 64 else np.array_split(np.argsort(counts, kind="stable"), max(1, n // 64))
        for grp in groups:
            k = int(counts[grp].max())
            if k == 0:
                continue
            idx = order[grp, :k]
            rr = grp[:, None]
            sign = new[rr, idx].astype(self.dtype) - old[rr, idx]
            Ag = self.At[idx] * (sign * (1.0 - self.slope))[..., None]  # padding has sign 0
            if rows is not None:
                Ag *= rows[grp][:, None]
            J[grp] += Ag.transpose(0, 2, 1) @ self.W1[idx]
        return J


_HEADS: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def _head(model: torch.nn.Module, lmk: LandmarkSet, dtype: np.dtype) -> _Head:
    """The cached head of (model weights, landmark set); rebuilt when a weight changes."""
    g = model.generator
    t = model.template
    key = (
        lmk.vertex_indices.numpy().tobytes(),
        lmk.barycentrics.numpy().tobytes(),
        np.dtype(dtype).str,
        g.weights_stamp(),
        (t.data_ptr(), t._version, t.dtype, str(t.device)),
    )
    make = _LReLUHead if g.affine_hidden() is not None else _GeneralHead
    try:
        cache = _HEADS.setdefault(model, {})
    except TypeError:  # not weak-referenceable
        return make(model, lmk, dtype)
    head = cache.get(key)
    if head is None:
        if len(cache) >= 8:
            cache.clear()
        head = cache[key] = make(model, lmk, dtype)
    return head


_ROW_HEADS: "weakref.WeakKeyDictionary[_Head, dict]" = weakref.WeakKeyDictionary()


def _row_head(head: _Head, idx: np.ndarray) -> _Head:
    """The head of landmarks ``idx`` (K',) of ``head``'s set: its rows, and the cached Jacobians'
    rows (the same numbers a head built for those landmarks would have). The last few per head
    are cached (a face's contour rounds often choose the same jaw points)."""
    idx = np.asarray(idx, np.int64)
    try:
        cache = _ROW_HEADS.setdefault(head, {})
    except TypeError:
        cache = {}
    key = idx.tobytes()
    hit = cache.get(key)
    if hit is not None:
        return hit
    out = _build_row_head(head, idx)
    if len(cache) >= 16:
        cache.pop(next(iter(cache)))
    cache[key] = out
    return out


def _build_row_head(head: _Head, idx: np.ndarray) -> _Head:
    rows = (3 * idx[:, None] + np.arange(3)).reshape(-1)
    out = copy.copy(head)
    out.A = np.ascontiguousarray(head.A[rows])
    out.At = np.ascontiguousarray(out.A.T)
    out.c = head.c[rows]
    out.K = len(idx)
    out._m0, out._reg = None, None
    if isinstance(head, _LReLUHead):  # the cached Jacobians' rows, read when needed
        out._bases, out._parent, out._rows = None, head, rows
    return out


_UNION: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _contour_union(model: torch.nn.Module) -> LandmarkSet:
    """iBUG-68 followed by every jaw contour candidate (:func:`facemodel.contour.contour_candidates`),
    cached per model while its template and landmarks stay the same."""
    from .contour import contour_candidates

    key = (model.template.data_ptr(), model.template._version, model.landmarks.data_ptr(), model.landmarks._version)
    hit = _UNION.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    base = _landmarks(model, "ibug68")
    flat = contour_candidates(model)
    tri = np.concatenate([base.vertex_indices.numpy().astype(np.int64), np.repeat(flat[:, None], 3, 1)])
    bar = np.concatenate([base.barycentrics.numpy().astype(np.float64), np.tile([1.0, 0.0, 0.0], (len(flat), 1))])
    union = LandmarkSet.from_barycentric(tri, bar, name="ibug68+contour")
    _UNION[model] = (key, union)
    return union


_LMKS: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def _landmarks(model: torch.nn.Module, spec: Any) -> LandmarkSet:
    """:func:`landmark_set`, cached for the built-in names (``"ibug68"``, ``"ibug51"``), NumPy
    vertex-index arrays (the posterior re-fit's subset) and NumPy (triangles, barycentrics) pairs
    (the contour rounds' sets) while the model's stored landmarks and vertex count stay the same."""
    lm = getattr(model, "landmarks", None)
    named = isinstance(spec, str) and spec in ("ibug68", "ibug51")
    indices = isinstance(spec, np.ndarray) and spec.ndim == 1 and spec.dtype.kind == "i"
    # (triangles, barycentrics) NumPy pairs: a 2D fit's contour rounds (facemodel.contour.contour_specs)
    bary = isinstance(spec, tuple) and len(spec) == 2 and all(isinstance(a, np.ndarray) for a in spec)
    if not ((named or indices or bary) and isinstance(lm, torch.Tensor)):
        return landmark_set(model, spec)
    tmpl = getattr(model, "template", None)
    if named:
        name = spec
    elif indices:
        name = ("indices", spec.dtype.str, spec.tobytes())
    else:
        name = ("bary",) + tuple((a.dtype.str, a.shape, a.tobytes()) for a in spec)
    key = (name, lm.data_ptr(), lm._version, tuple(lm.shape), lm.dtype, str(lm.device),
           getattr(model, "num_vertices", None), None if tmpl is None else tuple(tmpl.shape))  # fmt: skip
    try:
        cache = _LMKS.setdefault(model, {})
    except TypeError:  # not weak-referenceable
        return landmark_set(model, spec)
    lmk = cache.get(key)
    if lmk is None:
        lmk = landmark_set(model, spec)  # errors are raised here, never cached
        if len(cache) >= 32:
            cache.pop(next(iter(cache)))  # the oldest
        cache[key] = lmk
    return lmk


# ---- input checks ---------------------------------------------------------------------------
_INTERFACE_TYPES: "weakref.WeakSet[type]" = weakref.WeakSet()  # generator classes already checked


def _model_dtype_device(model: torch.nn.Module) -> tuple[torch.dtype, torch.device]:
    g = getattr(model, "generator", None)
    # the protocol check walks every member: done once per generator class
    ok = g is not None and (type(g) in _INTERFACE_TYPES or isinstance(g, GeneratorInterface))
    if not ok or not hasattr(model, "template"):
        raise FittingError(f"expected a FaceModel (generator + template), got {type(model).__name__}")
    _INTERFACE_TYPES.add(type(g))
    return (torch.float64 if g.dtype == torch.float64 else torch.float32), g.device


def _to_numpy(x: Any, what: str, dtype: torch.dtype, device: torch.device, explicit_device: bool, *, strict: bool):
    """A float array of ``x``; tensors must be on ``device`` (unless one was given) and, with
    ``strict``, of the model's dtype (numpy arrays and lists are converted)."""
    npdt = np.float64 if dtype == torch.float64 else np.float32
    if isinstance(x, torch.Tensor):
        if x.device != device and not explicit_device:
            raise FittingError(
                f"{what} are on {x.device} but the model is on {device}: move them with .to({str(device)!r}) "
                "or pass device=..."
            )
        if x.is_complex():
            raise FittingError(f"{what} must be real numbers, got dtype {x.dtype}")
        if strict and x.dtype != dtype:
            kind = "floating point " if not x.is_floating_point() else ""
            raise FittingError(
                f"{what} are {x.dtype} but the model computes in {dtype}: pass {kind}{what.split()[0]}.to({dtype}) "
                "(numpy arrays and lists are converted automatically)"
            )
        return x.detach().cpu().numpy().astype(npdt, copy=False)
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise FittingError(f"{what} must be an array of numbers, got {type(x).__name__}: {exc}") from exc
    return arr.astype(npdt, copy=False)


def _check_points(points, weights, lmk, dim, dtype, device, explicit_device):
    """-> P (B, K, dim) with missing rows zeroed, w (B, K), present (B, K) bool, squeeze."""
    P = _to_numpy(points, "points", dtype, device, explicit_device, strict=True)
    squeeze = P.ndim == 2
    if squeeze:
        P = P[None]
    K = len(lmk)
    if P.ndim != 3 or P.shape[-1] != dim:
        other = "fit_landmarks_2d for (K, 2) image points" if dim == 3 else "fit_landmarks for (K, 3) points"
        shape = tuple(getattr(points, "shape", P.shape))
        raise FittingError(f"points must have shape (K, {dim}) or (B, K, {dim}), got {shape}; use {other}")
    if P.shape[0] == 0:
        raise FittingError(f"empty batch: points have shape {tuple(P.shape)}; pass at least one face")
    if P.shape[1] != K:
        raise FittingError(
            f"got {P.shape[1]} points per face but landmark set {lmk.name!r} has {K} landmarks; pass landmarks= "
            "matching your points (a name, vertex indices or (triangles, barycentrics)); "
            "mark missing points as NaN rows"
        )
    inf = np.isinf(P)
    if inf.any():
        b, k = np.argwhere(inf.any(-1))[0]
        raise FittingError(
            f"points contain inf (face {b}, landmark {k}); mark missing landmarks with NaN rows or weight 0"
        )
    big = np.nanmax(np.abs(P)) if P.size and not np.isnan(P).all() else 0.0
    if big > _MAX_COORD:
        raise FittingError(f"points reach |p| = {big:.3g}; coordinates must stay below {_MAX_COORD:g} in magnitude "
                           "(their squares overflow): express them in other units (metres, millimetres, pixels)")  # fmt: skip
    present = ~np.isnan(P).any(-1)
    B = P.shape[0]
    if weights is None:
        w = np.ones((B, K), P.dtype)
    else:
        w = _to_numpy(weights, "weights", dtype, device, explicit_device, strict=False)
        if w.ndim == 1 and w.shape[0] == K:
            w = np.broadcast_to(w[None], (B, K))
        if w.shape != (B, K):
            raise FittingError(f"weights must have shape ({K},) or ({B}, {K}), got {tuple(w.shape)}")
        if not np.isfinite(w).all() or (w < 0).any():
            raise FittingError("weights must be finite and >= 0 (use 0, or NaN points, for missing landmarks)")
    if not present.all():
        w = np.where(present, w, 0).astype(P.dtype)
        P = np.where(present[..., None], P, 0).astype(P.dtype)
    return np.ascontiguousarray(P), np.ascontiguousarray(w), present, squeeze


def _check_common(reg, tol, max_iters, solver, generator):
    if not isinstance(solver, str) or solver not in SOLVERS:
        raise FittingError(f"unknown solver {solver!r}; choose one of {list(SOLVERS)}")
    if isinstance(reg, bool) or not isinstance(reg, (int, float)) or not math.isfinite(reg) or reg < 0:
        raise FittingError(f"reg must be a finite number >= 0 (the lambda of Eq. 13), got {reg!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
        raise FittingError(f"tol must be a finite number >= 0, got {tol!r}")
    if max_iters is None:
        max_iters = DEFAULT_MAX_ITERS[solver]
    if isinstance(max_iters, bool) or not isinstance(max_iters, (int, np.integer)) or max_iters < 1:
        raise FittingError(f"max_iters must be a positive integer, got {max_iters!r}")
    if generator is not None and (isinstance(generator, bool) or not isinstance(generator, (torch.Generator, int))):
        raise FittingError(f"generator must be a torch.Generator or an int seed, got {type(generator).__name__}")
    return int(max_iters)


def _initial_codes(init, solver, dim, B, D, dtype, device, explicit_device, generator) -> np.ndarray | str:
    """Initial codes (B, D), or ``"linear"`` (resolved against the points by the caller)."""
    npdt = np.float64 if dtype == torch.float64 else np.float32
    if init is None:
        init = {"adam": "random", "lbfgs": "mean"}.get(solver, "linear" if dim == 3 else "mean")
    if isinstance(init, str):
        if init == "mean":
            return np.zeros((B, D), npdt)
        if init == "linear":
            if dim != 3:
                raise FittingError("init='linear' needs 3D points; 2D fits start from 'mean' (or give codes)")
            return init
        if init == "random":
            if generator is None or isinstance(generator, int):
                generator = torch.Generator().manual_seed(0 if generator is None else generator)
            return torch.randn(B, D, generator=generator, dtype=torch.float64).numpy().astype(npdt)
        raise FittingError(f"unknown init {init!r}; use 'linear', 'mean', 'random' or codes of shape ({D},) / (B, {D})")
    z = _to_numpy(init, "init codes", dtype, device, explicit_device, strict=True)
    if z.ndim == 1:
        z = z[None]
    if z.ndim != 2 or z.shape[1] != D or z.shape[0] not in (1, B):
        raise FittingError(f"init codes must have shape ({D},) or ({B}, {D}), got {tuple(z.shape)}")
    if not np.isfinite(z).all():
        raise FittingError("init codes contain NaN or inf")
    return np.ascontiguousarray(np.broadcast_to(z, (B, D)), dtype=npdt)


def _linear_init(head: _Head, pm: "_Pose3D", P, w, rounds: int = 2, reg: float = 0.0) -> np.ndarray:
    """Codes from the landmark regression of :meth:`_Head.regress`, alternated with the
    closed-form pose (from the mean face first); missing points take the current fit's place."""
    B = P.shape[0]
    ctx = pm.prepare(P, w)
    m = np.repeat(head.mean_face()[None], B, 0)
    miss = np.repeat(w <= 0, 3, 1)
    for _ in range(rounds):
        q = pm.mapped(P, pm.solve(ctx, P, w, m)).reshape(B, -1)
        if miss.any():
            q = np.where(miss, m, q)
        z = head.regress(q, reg)
        m = head.forward(z)
    return z


def _options(solver_options: Mapping | None, allowed: dict, solver: str) -> dict:
    if solver_options is not None and not isinstance(solver_options, Mapping):
        raise FittingError(f"solver_options must be a dict, got {type(solver_options).__name__}")
    opts = dict(allowed)
    for k, v in (solver_options or {}).items():
        if k not in allowed:
            raise FittingError(f"unknown option {k!r} for solver {solver!r}; known: {sorted(allowed)}")
        opts[k] = v
    return opts


# ---- rotations ---------------------------------------------------------------------------------
def _skew(q):
    """(..., 3) -> (..., 3, 3) cross-product matrices [q]x (NumPy or torch)."""
    if isinstance(q, torch.Tensor):
        z = torch.zeros_like(q[..., 0])
        x, y, w = q.unbind(-1)
        return torch.stack([z, -w, y, w, z, -x, -y, x, z], -1).view(*q.shape, 3)
    out = np.zeros(q.shape + (3,), q.dtype)
    x, y, w = q[..., 0], q[..., 1], q[..., 2]
    out[..., 0, 1], out[..., 0, 2], out[..., 1, 0] = -w, y, w
    out[..., 1, 2], out[..., 2, 0], out[..., 2, 1] = -x, -y, x
    return out


def _so3_exp(omega):
    """Rodrigues: (n, 3) axis-angle -> (n, 3, 3) rotations (NumPy or torch, differentiable)."""
    xp = torch if isinstance(omega, torch.Tensor) else np
    theta2 = (omega * omega).sum(-1)
    small = theta2 < 1e-12
    ts = xp.sqrt(xp.where(small, xp.ones_like(theta2), theta2))
    a = xp.where(small, 1 - theta2 / 6, xp.sin(ts) / ts)
    b = xp.where(small, 0.5 - theta2 / 24, (1 - xp.cos(ts)) / (ts * ts))
    Kx = _skew(omega)
    return xp.eye(3, dtype=omega.dtype)[None] + a[:, None, None] * Kx + b[:, None, None] * (Kx @ Kx)


def _pose_basis(align: str, dtype) -> np.ndarray:
    """(4, 3 * n_params): [q, 1] @ basis = d r / d (log s, omega, t) rows of one landmark,
    for r = m - q and the update q <- e^ds Exp(omega) q + dt."""
    cols = (["s"] if align == "similarity" else []) + ["w0", "w1", "w2", "t0", "t1", "t2"]
    j = {c: i for i, c in enumerate(cols)}
    B = np.zeros((4, 3, len(cols)), dtype)
    for i in range(3):
        if "s" in j:
            B[i, i, j["s"]] = -1.0  # -q
        B[3, i, j[f"t{i}"]] = -1.0  # -I
    # [q]x rows: (0, -q2, q1), (q2, 0, -q0), (-q1, q0, 0)
    B[2, 0, j["w1"]], B[1, 0, j["w2"]] = -1.0, 1.0
    B[2, 1, j["w0"]], B[0, 1, j["w2"]] = 1.0, -1.0
    B[1, 2, j["w0"]], B[0, 2, j["w1"]] = -1.0, 1.0
    return B.reshape(4, -1)


# ---- pose models (NumPy). A pose is packed in one (n, size) array X ---------------------------
class _Pose3D:
    """Points -> model space ``q = s R p + t``, X = [s, R (9), t (3)]; residual r = m - q (mm)."""

    dim = 3
    size = 13

    def __init__(self, align: str) -> None:
        self.align = align
        self.n_params = {"similarity": 7, "rigid": 6, "none": 0}[align]
        self._basis: dict = {}

    def prepare(self, P, w):
        """Per-face constants of the weighted Umeyama fit (the points do not change)."""
        wn = w / w.sum(1, keepdims=True)
        ms = wn[:, None] @ P  # (n, 1, 3)
        sc = P - ms
        scw = sc * wn[..., None]
        return (wn, ms, scw, (scw * sc).sum((1, 2)))

    def solve(self, ctx, P, w, m):
        """Weighted least-squares similarity (rigid) taking the points onto m (Umeyama)."""
        n = P.shape[0]
        if self.align == "none":
            X = np.zeros((n, 13), P.dtype)
            X[:, 0], X[:, 1:10] = 1.0, np.eye(3, dtype=P.dtype).reshape(9)
            return X
        wn, ms, scw, var = ctx
        m3 = m.reshape(n, -1, 3)
        md = wn[:, None] @ m3
        C = (m3 - md).transpose(0, 2, 1) @ scw  # sum_k w_k (m_k - md)(p_k - ms)^T
        if n == 1:  # one face: one 3x3 SVD (LAPACK directly, cheaper to call), the determinant in plain Python
            U, S, Vh, info = _lapack.dgesvd(C[0].astype(np.float64))
            if info != 0:
                U, S, Vh = np.linalg.svd(C[0].astype(np.float64))
            (a, b, c), (d, e, f), (g, h, i) = C[0].tolist()
            neg = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g) < 0
            if neg:
                Vh = Vh.copy()
                Vh[2] *= -1.0
            R = U @ Vh
            ssum = float(S[0] + S[1] - S[2]) if neg else float(S.sum())
            s = ssum / max(float(var[0]), 1e-300) if self.align == "similarity" else 1.0
            X = np.empty((1, 13), C.dtype)
            X[0, 0] = s
            X[0, 1:10] = R.ravel()
            X[0, 10:] = md[0, 0] - s * (R @ ms[0, 0])
            return X.astype(P.dtype, copy=False)
        U, S, Vh = np.linalg.svd(C)
        sg = np.ones((n, 3), C.dtype)
        sg[:, 2] = np.where(np.linalg.det(C) < 0, -1.0, 1.0)  # no reflections
        R = U @ (Vh * sg[:, :, None])
        s = (S * sg).sum(1) / np.maximum(var, 1e-300) if self.align == "similarity" else np.ones(n, C.dtype)
        t = md[:, 0] - s[:, None] * (ms @ R.transpose(0, 2, 1))[:, 0]
        return np.concatenate([s[:, None], R.reshape(n, 9), t], 1).astype(P.dtype, copy=False)

    init = solve

    def mapped(self, P, X):
        n = X.shape[0]
        return X[:, 0, None, None] * (P @ X[:, 1:10].reshape(n, 3, 3).transpose(0, 2, 1)) + X[:, None, 10:13]

    def residual(self, P, m, X):
        return m - self.mapped(P, X).reshape(m.shape)

    def pose_jac(self, P, m, X):
        q = self.mapped(P, X)
        B = self._basis.get(q.dtype)
        if B is None:
            B = self._basis[q.dtype] = _pose_basis(self.align, q.dtype)
        return (q @ B[:3] + B[3]).reshape(q.shape[0], -1, self.n_params)

    def z_jac(self, Jz, X, m=None):
        return Jz

    def z_apply(self, v, X, m=None):
        return v

    def ray_vectors(self, V, X, m=None):
        return V

    def trial(self, ctx, P, w, m_new, X, dp):
        return self.solve(ctx, P, w, m_new)  # variable projection: the optimal pose of the new code

    def to_input(self, X):
        """Model -> input: scale, rotation, translation, and input units per model mm."""
        n = X.shape[0]
        s, Rt = X[:, 0], X[:, 1:10].reshape(n, 3, 3).transpose(0, 2, 1)
        return 1.0 / s, Rt, -(Rt @ X[:, 10:13, None])[..., 0] / s[:, None], 1.0 / s


class _Camera2D:
    """Scaled orthographic camera ``x = s R[:2] v + t``, X = [s, R (9), t (2)];
    residual r = R[:2] m - (p - t) / s (model-space mm)."""

    dim = 2
    size = 12
    n_params = 6  # log s, omega (3, R <- R Exp(omega)), t (2, in units of s)
    align = "scaled_orthographic"

    def prepare(self, P, w):
        return (w / w.sum(1, keepdims=True),)

    def init(self, ctx, P, w, m):
        """Weighted affine fit p ~ A m + t, then A's nearest scaled row-orthonormal 2x3."""
        (wn,) = ctx
        n = P.shape[0]
        m3 = m.reshape(n, -1, 3).astype(np.float64)
        wd = wn.astype(np.float64)[..., None]
        mm_ = (wd * m3).sum(1, keepdims=True)
        mp = (wd * P).sum(1, keepdims=True)
        mc, pc = m3 - mm_, P - mp
        Cmm = mc.transpose(0, 2, 1) @ (mc * wd)
        Cmp = mc.transpose(0, 2, 1) @ (pc * wd)  # (n, 3, 2)
        Cmm += 1e-9 * np.trace(Cmm, axis1=1, axis2=2)[:, None, None] * np.eye(3)
        A = np.linalg.solve(Cmm, Cmp).transpose(0, 2, 1)
        U, S, Vh = np.linalg.svd(A, full_matrices=False)  # (n,2,2), (n,2), (n,2,3)
        R2 = U @ Vh
        R = np.concatenate([R2, np.cross(R2[:, 0], R2[:, 1])[:, None]], 1)
        s = S.mean(-1)
        t = mp[:, 0] - s[:, None] * (mm_ @ R2.transpose(0, 2, 1))[:, 0]
        return np.concatenate([s[:, None], R.reshape(n, 9), t], 1).astype(P.dtype)

    solve = init

    def residual(self, P, m, X):
        n = X.shape[0]
        proj = m.reshape(n, -1, 3) @ X[:, 1:7].reshape(n, 2, 3).transpose(0, 2, 1)
        return (proj - (P - X[:, None, 10:12]) / X[:, 0, None, None]).reshape(n, -1)

    def pose_jac(self, P, m, X):
        n, K = P.shape[:2]
        R2 = X[:, 1:7].reshape(n, 2, 3)
        u = (P - X[:, None, 10:12]) / X[:, 0, None, None]
        # d r_i / d omega = (m x R_i)^T = m^T [R_i]x
        Jw = (m.reshape(n, K, 3) @ _skew(R2).transpose(0, 2, 1, 3).reshape(n, 3, 6)).reshape(n, K, 2, 3)
        eye = np.broadcast_to(np.eye(2, dtype=P.dtype), (n, K, 2, 2))
        return np.concatenate([u[..., None], Jw, eye], -1).reshape(n, 2 * K, 6)

    def z_jac(self, Jz, X, m=None):
        n, M3, D = Jz.shape
        return (X[:, None, 1:7].reshape(n, 1, 2, 3) @ Jz.reshape(n, M3 // 3, 3, D)).reshape(n, -1, D)

    def z_apply(self, v, X, m=None):
        n = v.shape[0]
        return (v.reshape(n, -1, 3) @ X[:, 1:7].reshape(n, 2, 3).transpose(0, 2, 1)).reshape(n, -1)

    def ray_vectors(self, V, X, m=None):
        n, F, M3 = V.shape
        R2t = X[:, 1:7].reshape(n, 1, 2, 3).transpose(0, 1, 3, 2)
        return (V.reshape(n, F, M3 // 3, 3) @ R2t).reshape(n, F, -1)

    def trial(self, ctx, P, w, m_new, X, dp):
        n = X.shape[0]
        s = X[:, 0]
        R = X[:, 1:10].reshape(n, 3, 3) @ _so3_exp(dp[:, 1:4])
        t = X[:, 10:12] + s[:, None] * dp[:, 4:6]
        return np.concatenate([(s * np.exp(dp[:, 0]))[:, None], R.reshape(n, 9), t], 1)

    def to_input(self, X):
        n = X.shape[0]
        return X[:, 0], X[:, 1:10].reshape(n, 3, 3), X[:, 10:12], X[:, 0]


class _Camera2DFrom(_Camera2D):
    """:class:`_Camera2D` started from a known camera ``X`` (12,) (a contour round: the round
    before's) instead of the affine fit at the initial code."""

    def __init__(self, start: np.ndarray) -> None:
        self._start = np.asarray(start, np.float64)

    def init(self, ctx, P, w, m):
        return np.broadcast_to(self._start, (P.shape[0], self.size)).astype(P.dtype)


class _Pinhole2D(_Camera2D):
    """Pinhole camera ``x = f (R v + t)_xy / (R v + t)_z + c`` (OpenCV convention: camera at the
    origin looking down +z, image x right, y down), X = [s, R (9), t (3, mm), f] with the
    scale ``s = f / t_z`` (px per mm at the depth ``t_z``). The principal point ``c`` is
    subtracted from the points before the fit (:meth:`centre`), so ``u = p - c``.

    Residual (model-space mm, divided by ``s`` as the orthographic camera divides by its
    scale): ``r = t_z q_xy / q_z - u / s`` with ``q = R m + t``. Far away (``t_z -> inf``)
    this is the orthographic residual ``R[:2] m + t_xy - u / s``.

    Pose steps: log s, omega (3, R <- R Exp(omega)), t_xy (2, mm) and, when the focal length
    is fitted, the inverse distance ``gamma = 1 / t_z`` (s fixed, so ``f = s t_z`` changes;
    with ``q_z = t_z + b`` the residual is ``q_xy / (1 + gamma b) - u / s``, smooth through the
    orthographic limit gamma = 0, so a weakly observed distance takes bounded steps; gamma is
    kept >= ``1 / MAX_DISTANCE_MM``); with a known focal length ``t_z = f / s``."""

    size = 14
    align = "pinhole"
    #: the farthest a fitted focal length puts the face (100 m: orthographic to ~0.1 %)
    MAX_DISTANCE_MM = 1e5
    #: the distances a fitted focal length starts from (the best per face at the initial code)
    INIT_DISTANCES_MM = (300.0, 600.0, 1200.0, 3000.0, MAX_DISTANCE_MM)

    def __init__(self, focal: float | None, principal: np.ndarray, distance: np.ndarray | float | None = None) -> None:
        self.focal = None if focal is None else float(focal)
        self.principal = np.asarray(principal, np.float64)  # (2,) or (B, 2)
        self.distance = distance  # None: the best of INIT_DISTANCES_MM
        self.n_params = 6 if self.focal is not None else 7

    def centre(self, P: np.ndarray, present: np.ndarray) -> np.ndarray:
        """The points relative to the principal point (missing rows stay 0)."""
        c = self.principal.astype(P.dtype)
        return np.ascontiguousarray(np.where(present[..., None], P - (c if c.ndim == 1 else c[:, None]), 0).astype(P.dtype))

    def init(self, ctx, P, w, m):
        """The scaled-orthographic camera at the code, moved to the depth ``t_z = f / s`` (known
        focal length) or, for a fitted one, to each distance of ``INIT_DISTANCES_MM`` (or the
        given ``distance``), each refined by a few Gauss-Newton steps of the pose at the code;
        the one of least residual is kept."""
        Xo = _Camera2D.init(self, ctx, P, w, m)
        n = P.shape[0]
        s = Xo[:, 0].astype(np.float64)
        txy = Xo[:, 10:12] / s[:, None]
        if self.focal is not None:
            X = np.concatenate([Xo[:, :10], txy, (self.focal / s)[:, None], np.full((n, 1), self.focal)], 1)
            return self._refine(P, w, m, X.astype(P.dtype))
        cands = self.INIT_DISTANCES_MM if self.distance is None else (self.distance,)
        best, best_E = None, None
        for d in cands:
            tz = np.broadcast_to(np.asarray(d, np.float64), (n,))
            X = np.concatenate([Xo[:, :10], txy, tz[:, None], (s * tz)[:, None]], 1).astype(P.dtype)
            X = self._refine(P, w, m, X)
            with np.errstate(all="ignore"):
                r = self.residual(P, m, X) * np.repeat(np.sqrt(w), 2, 1)
                E = np.where(np.isfinite(r).all(1), (r.astype(np.float64) ** 2).sum(1), np.inf)
            if best is None:
                best, best_E = X, E
            else:
                better = E < best_E
                best, best_E = np.where(better[:, None], X, best), np.where(better, E, best_E)
        return best

    def _refine(self, P, w, m, X, iters: int = 4):
        """A few damped Gauss-Newton steps of the camera (the distance fixed) at the landmarks m."""
        sw = np.repeat(np.sqrt(w), 2, 1)[..., None]
        for _ in range(iters):
            with np.errstate(all="ignore"):
                r = self.residual(P, m, X)[..., None] * sw
                J = self.pose_jac(P, m, X)[..., :6] * sw
                if not (np.isfinite(r).all() and np.isfinite(J).all()):
                    break
                N = (J.transpose(0, 2, 1) @ J).astype(np.float64)
                N += 1e-6 * np.trace(N, axis1=1, axis2=2)[:, None, None] * np.eye(6)
                dp = -np.linalg.solve(N, (J.transpose(0, 2, 1) @ r).astype(np.float64))[..., 0]
            full = np.zeros((X.shape[0], self.n_params))
            full[:, :6] = dp
            X_new = self.trial(None, P, w, m, X, full.astype(X.dtype))
            with np.errstate(all="ignore"):
                E0 = (r[..., 0].astype(np.float64) ** 2).sum(1)
                r1 = self.residual(P, m, X_new) * sw[..., 0]
                E1 = np.where(np.isfinite(r1).all(1), (r1.astype(np.float64) ** 2).sum(1), np.inf)
            X = np.where((E1 < E0)[:, None], X_new, X)
        return X

    solve = init

    def _camera(self, m, X):
        """q = R m + t (n, K, 3), t_z (n, 1), rho = q_xy / q_z (n, K, 2), kappa = t_z / q_z (n, K)."""
        n = X.shape[0]
        R = X[:, 1:10].reshape(n, 3, 3)
        q = m.reshape(n, -1, 3) @ R.transpose(0, 2, 1) + X[:, None, 10:13]
        tz = X[:, 12:13]
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = np.where(q[..., 2] > 0, 1.0 / q[..., 2], np.nan)  # a point behind the camera: no projection
        return R, q, tz, q[..., :2] * inv[..., None], tz * inv, inv

    def residual(self, P, m, X):
        n = X.shape[0]
        _, _, tz, rho, _, _ = self._camera(m, X)
        return (tz[:, :, None] * rho - P / X[:, 0, None, None]).reshape(n, -1)

    def _dr_dm(self, m, X):
        """(n, K, 2, 3) d r / d m = kappa (R[:2] - rho R[2]^T)."""
        R, _, _, rho, kappa, _ = self._camera(m, X)
        Jm = R[:, None, :2, :] - rho[..., None] * R[:, None, 2:3, :]
        return Jm * kappa[..., None, None], R, rho, kappa

    def pose_jac(self, P, m, X):
        n, K = P.shape[:2]
        R, q, tz, rho, kappa, _ = self._camera(m, X)
        m3 = m.reshape(n, K, 3)
        # d q_k / d omega = m x R_k
        mxR = np.cross(m3[:, :, None, :], R[:, None, :, :])  # (n, K, 3 rows, 3)
        Jw = kappa[..., None, None] * (mxR[:, :, :2] - rho[..., None] * mxR[:, :, 2:3])
        Jt = kappa[..., None, None] * np.eye(2, dtype=P.dtype)
        u = P / X[:, 0, None, None]
        dlogtz = tz[:, :, None] * rho * (1.0 - kappa[..., None])  # d r / d log t_z, s fixed
        if self.focal is not None:  # t_z = f / s: moves with s
            cols = [(u - dlogtz)[..., None], Jw, Jt]
        else:  # d r / d gamma = -t_z d r / d log t_z
            cols = [u[..., None], Jw, Jt, (-tz[:, :, None] * dlogtz)[..., None]]
        return np.concatenate(cols, -1).reshape(n, 2 * K, self.n_params).astype(P.dtype, copy=False)

    def z_jac(self, Jz, X, m=None):
        n, M3, D = Jz.shape
        Jm = self._dr_dm(m, X)[0].astype(Jz.dtype, copy=False)
        return (Jm @ Jz.reshape(n, M3 // 3, 3, D)).reshape(n, -1, D)

    def z_apply(self, v, X, m=None):
        n = v.shape[0]
        Jm = self._dr_dm(m, X)[0].astype(v.dtype, copy=False)
        return (Jm @ v.reshape(n, -1, 3, 1)).reshape(n, -1)

    def ray_vectors(self, V, X, m=None):
        n, F, M3 = V.shape
        Jm = self._dr_dm(m, X)[0].astype(V.dtype, copy=False)  # (n, K, 2, 3)
        return np.einsum("nkij,nfkj->nfki", Jm, V.reshape(n, F, M3 // 3, 3)).reshape(n, F, -1)

    #: most change of the perspective factor ``gamma b`` (b: a landmark's depth about the
    #: origin) in one Gauss-Newton step of a fitted distance (the residual is far from linear in
    #: gamma: longer steps overshoot)
    MAX_PERSPECTIVE_STEP = 0.05

    #: most change of the perspective factor ``gamma b`` (b: a landmark's depth about the
    #: origin) in one Gauss-Newton step of a fitted distance (the residual is far from linear in
    #: gamma: longer steps overshoot)
    MAX_PERSPECTIVE_STEP = 0.05

    def hold_at_bound(self, N, g, X, D):
        """In place: for faces at the farthest distance whose gradient pulls it farther, the
        gamma row and column of the normal equations decoupled and its gradient zeroed (the step
        then leaves gamma there and solves the rest consistently)."""
        j = D + 6
        hold = (1.0 / X[:, 12] <= (1.0 + 1e-4) / self.MAX_DISTANCE_MM) & (g[:, j] > 0)
        if hold.any():
            d = N[hold, j, j].copy()
            N[hold, j, :] = 0.0
            N[hold, :, j] = 0.0
            N[hold, j, j] = np.maximum(d, 1e-300)
            g[hold, j] = 0.0

    def limit_step(self, N, g, mu, delta, X, m, D):
        """The Gauss-Newton step ``delta`` (n, D + 7) of a fitted distance, kept feasible:
        faces at the farthest distance whose step would go farther are re-solved with gamma
        held there (an active set: the rest of the step stays consistent), faces short of it
        stop at it; then steps that change ``gamma b`` by more than ``MAX_PERSPECTIVE_STEP``
        are scaled down (the whole step, so it stays a descent direction)."""
        j = D + 6
        lo = 1.0 / self.MAX_DISTANCE_MM
        gamma = 1.0 / X[:, 12].astype(np.float64)
        out = gamma + delta[:, j] < lo
        held = out & (gamma <= lo * (1.0 + 1e-4))
        if held.any():
            Nh, gh = N[held], g[held]  # copies
            Nh[:, j, :] = 0.0
            Nh[:, :, j] = 0.0
            Nh[:, j, j] = 1.0
            gh[:, j] = 0.0
            delta = delta.copy()
            delta[held] = _damped_solve(np.ascontiguousarray(Nh), gh, mu[held])
        n = X.shape[0]
        b = m.reshape(n, -1, 3).astype(np.float64) @ X[:, 7:10].astype(np.float64)[:, :, None]  # R[2] m
        depth = np.abs(b[..., 0]).max(1)
        with np.errstate(all="ignore"):
            k = np.where(np.abs(delta[:, j]) * depth > self.MAX_PERSPECTIVE_STEP,
                         self.MAX_PERSPECTIVE_STEP / (np.abs(delta[:, j]) * depth), 1.0)  # fmt: skip
            short = out & ~held
            k = np.where(short, np.minimum(k, (gamma - lo) / -delta[:, j]), k)
        return delta * np.clip(k, 0.0, 1.0)[:, None]

    def trial(self, ctx, P, w, m_new, X, dp):
        n = X.shape[0]
        s = X[:, 0] * np.exp(dp[:, 0])
        R = X[:, 1:10].reshape(n, 3, 3) @ _so3_exp(dp[:, 1:4])
        txy = X[:, 10:12] + dp[:, 4:6]
        if self.focal is not None:
            f = X[:, 13]
            tz = f / s
        else:
            tz = 1.0 / np.maximum(1.0 / X[:, 12] + dp[:, 6], 1.0 / self.MAX_DISTANCE_MM)
            f = s * tz
        return np.concatenate([s[:, None], R.reshape(n, 9), txy, tz[:, None], f[:, None]], 1).astype(X.dtype, copy=False)

    def torch_residual(self, m, X, cam, Pt):
        """The residual (n, K, 2) of the pose ``trial(X, cam)`` (torch, differentiable in m and cam)."""
        n = m.shape[0]
        s = X[:, 0] * torch.exp(cam[:, 0])
        R = X[:, 1:10].view(n, 3, 3) @ _so3_exp(cam[:, 1:4])
        txy = X[:, 10:12] + cam[:, 4:6]
        tz = X[:, 13] / s if self.focal is not None else 1.0 / (1.0 / X[:, 12] + cam[:, 6]).clamp_min(1.0 / self.MAX_DISTANCE_MM)
        q = m.view(n, -1, 3) @ R.transpose(1, 2)
        qxy = q[..., :2] + txy[:, None]
        qz = q[..., 2] + tz[:, None]
        return tz[:, None, None] * qxy / qz[..., None] - Pt / s[:, None, None]

    def to_input(self, X):
        n = X.shape[0]
        return X[:, 0], X[:, 1:10].reshape(n, 3, 3), X[:, 10:13], X[:, 0]

    def focal_length(self, X):
        return X[:, 13]

# ---- Gauss-Newton / Levenberg-Marquardt (NumPy) --------------------------------------------------
def _ray_search(head: _LReLUHead, pm, P, X, pre, mask, d, rw, uz, up, sw_m, sw3, z, dz, reg, m=None):
    """Step t in [0, 1] minimising the objective along ``z + t dz`` with the pose linearised
    (``up``: slope of the residual from the pose step). The landmarks are piecewise linear in
    t with a kink where a hidden unit changes sign: exact minimisation over the pieces when
    the ray crosses few kinks, else the best step of a grid (one batched forward). The choice
    is made per face, so a face's step does not depend on the other faces of its chunk (as
    :func:`_ray_search_single` for a single fit).

    rw: weighted residual at t = 0; uz: its slope from z at t = 0+."""
    n, D = z.shape
    # units moving towards their kink (positive ones with d < 0, negative ones with d > 0)
    # reach it at tj = -pre / d; 2 marks the others
    moving = (mask ^ (d > 0)) & (d != 0)
    tj = np.divide(-pre, d, out=np.full(pre.shape, 2.0, pre.dtype), where=moving)
    nfi = (tj < 1.0).sum(1)
    nf = int(nfi.max())
    many = nfi > _EXACT_MAX_BREAKS
    if many.any() and not many.all():  # the grid for those faces, the exact search for the others
        t = np.empty(n, z.dtype)
        for sel in (np.flatnonzero(many), np.flatnonzero(~many)):
            sub = lambda a: None if a is None else a[sel]  # noqa: E731
            t[sel] = _ray_search(head, pm, P[sel], X[sel], pre[sel], mask[sel], d[sel], rw[sel], uz[sel], up[sel],
                                 sw_m[sel], sub(sw3), z[sel], dz[sel], reg if np.ndim(reg) == 0 else np.asarray(reg)[sel],
                                 sub(m))  # fmt: skip
        return t
    rc = _reg_column(reg)
    lz = rc * np.einsum("nd,nd->n", z, dz)[:, None]  # reg z.dz, (n, 1)
    ld = rc * np.einsum("nd,nd->n", dz, dz)[:, None]  # reg dz.dz
    u = uz + up
    if nf == 0:  # one quadratic on [0, 1]
        a2 = np.einsum("nm,nm->n", u, u) + ld[:, 0]
        return np.clip(-(np.einsum("nm,nm->n", rw, u) + lz[:, 0]) / np.maximum(a2, 1e-30), 0.0, 1.0)
    if nf > _EXACT_MAX_BREAKS:
        steps = np.asarray(_GRID, z.dtype)
        T = steps.size
        # the pre-activations are linear along the ray: pre + t d, no product with W1
        mc = head.from_pre((pre[:, None] + steps[:, None] * d[:, None]).reshape(n * T, -1))
        rc = pm.residual(np.repeat(P, T, 0), mc, np.repeat(X, T, 0)).reshape(n, T, -1)
        rc = rc * sw_m[:, None] + steps[:, None] * up[:, None]
        # ||z + t dz||^2 = |z|^2 + 2 t z.dz + t^2 |dz|^2 (the constant |z|^2 does not move the argmin)
        Ec = (rc * rc).sum(-1) + (2 * lz + ld * steps) * steps
        return steps[Ec.argmin(1)]
    if n == 1:
        cand = np.flatnonzero(tj[0] < 1.0)
        idx = cand[np.argsort(tj[0, cand])][None]
    else:
        idx = np.argpartition(tj, nf - 1, axis=1)[:, :nf] if nf < tj.shape[1] else np.arange(tj.shape[1])[None]
        idx = np.take_along_axis(idx, np.argsort(np.take_along_axis(tj, idx, 1), axis=1), 1)  # (n, nf) ascending
    rr = np.arange(n)[:, None]
    tv = tj[rr, idx]
    valid = tv < 1.0
    tv = np.where(valid, tv, 1.0).astype(z.dtype)
    # change of the slope of h_j at its kink: (a_after - a_before) d_j
    kappa = (np.where(mask[rr, idx], head.slope - 1.0, 1.0 - head.slope) * d[rr, idx] * valid).astype(z.dtype)
    V = head.At[idx] * kappa[..., None]  # (n, nf, 3K)
    if sw3 is not None:
        V *= sw3[:, None]
    V = pm.ray_vectors(V, X, m)  # (the pinhole's linearised at m)
    # On piece k (after the first k kinks) r(t) = a_k + t b_k with b_k = u + C1_k,
    # a_k = rw - C2_k, C1_k = sum_{i<=k} V_i, C2_k = sum_{i<=k} t_i V_i. The dot products
    # come from the Gram matrix of the V_i and prefix sums (no (n, nf, M) cumsums).
    G = V @ V.transpose(0, 2, 1)  # (n, nf, nf)
    tri = _TRI[:nf, :nf].astype(z.dtype, copy=False)  # tri[k, i] = [i <= k]
    trit = tri * tv[:, None, :]
    lin = V @ np.stack([u, rw], -1)  # (n, nf, 2): V.u, V.rw
    c = tri @ np.concatenate([lin, lin * tv[..., None]], -1)  # C1.u, C1.rw, C2.u, C2.rw
    TG = tri @ G
    q11 = (TG * tri).sum(-1)  # |C1_k|^2
    q12 = (TG * trit).sum(-1)  # C1_k . C2_k
    q22 = ((trit @ G) * trit).sum(-1)  # |C2_k|^2
    pad = np.zeros((n, 1), z.dtype)
    a2 = (u * u).sum(1)[:, None] + ld + np.concatenate([pad, 2 * c[..., 0] + q11], 1)
    a1 = (rw * u).sum(1)[:, None] + lz + np.concatenate([pad, c[..., 1] - c[..., 2] - q12], 1)
    a0 = np.concatenate([pad, q22 - 2 * c[..., 3]], 1)  # + a constant
    lo, hi = np.concatenate([pad, tv], 1), np.concatenate([tv, pad + 1], 1)  # the pieces' ends
    t = np.minimum(np.maximum(-a1 / np.maximum(a2, 1e-30), lo), hi)
    Es = (a2 * t + 2 * a1) * t + a0
    return t[np.arange(n), Es.argmin(1)]


def _reg_column(reg):
    """The prior weight as a column: a scalar -> (1, 1), per-face weights (n,) -> (n, 1)."""
    return np.reshape(np.asarray(reg, np.float64), (-1, 1))


def _energy(rw, z, reg):
    """Objective in float64: sum of squared weighted residuals + reg ||z||^2 (``reg``: a
    scalar or (n,) per face)."""
    r64, z64 = rw.astype(np.float64), z.astype(np.float64)
    return np.einsum("nm,nm->n", r64, r64) + reg * np.einsum("nd,nd->n", z64, z64)


def _diagonal(N: np.ndarray) -> np.ndarray:
    """(n, M, M) C-contiguous -> writable (n, M) view of the diagonals."""
    n, M = N.shape[:2]
    return N.reshape(n, M * M)[:, :: M + 1]


def _damped_solve(N, g, mu):
    """Solve (N + mu diag(N)) delta = -g in float64 (N symmetric positive semi-definite; a
    little more damping where a system is singular)."""
    if N.shape[0] == 1:  # one face: no bookkeeping
        return _damped_solve_single(N[0], g[0], float(mu[0]))[None]
    diag = _diagonal(N).copy()
    dmax = diag.max(1)
    out = np.zeros_like(g)
    todo = np.arange(N.shape[0])
    # LAPACK's Cholesky solve face by face (faster than the batched LU of np.linalg.solve
    # for these ~100 x 100 systems); the faces it refuses are retried with more damping
    for extra in (1e-12, 1e-8, 1e-4, 1e-1):
        Nd = N[todo]
        _diagonal(Nd)[:] += mu[todo, None] * diag[todo] + (extra * dmax[todo])[:, None] + 1e-300
        ng = -g[todo]
        failed = []
        for j, i in enumerate(todo):
            _, x, info = _lapack.dposv(Nd[j].T, ng[j], lower=True, overwrite_a=True, overwrite_b=True)
            if info == 0:
                out[i] = x
            else:
                failed.append(i)
        if not failed:
            break
        todo = np.asarray(failed)
    return out


def _gn_chunk(head: _LReLUHead, pm, P, w, z0, reg, max_iters, tol, damping):
    """Levenberg-Marquardt + exact ray search on (z, pose) for a chunk of faces."""
    n, K, _ = P.shape
    D, H = head.D, head.H
    dr, npar = pm.dim, pm.n_params
    dt = P.dtype
    uniform = bool((w == 1).all())
    swk = np.sqrt(w)
    sw_m = np.repeat(swk, dr, 1)  # per residual row
    sw3 = None if uniform else np.repeat(swk, 3, 1)  # per landmark-coordinate row (3K)
    ctx = pm.prepare(P, w)
    reg = np.broadcast_to(np.asarray(reg, np.float64), (n,)).copy()  # per face

    z = z0
    pre = head.pre(z)
    m = head.from_pre(pre)
    X = pm.init(ctx, P, w, m)
    rw = pm.residual(P, m, X) * sw_m
    E = _energy(rw, z, reg)
    mask = pre > 0
    Jz = head.jacobian_init(mask)
    if sw3 is not None:
        Jz *= sw3[..., None]
    maskJ = mask
    # the state, packed so that one where() accepts the steps: [z | pre | m | rw | X]
    cuts = np.cumsum([0, D, H, 3 * K, K * dr, pm.size]).tolist()
    S = np.concatenate([z, pre, m, rw, X], 1)
    # below this the fit is exact to float precision (noise-free data)
    floor = w.sum(1, dtype=np.float64) * (16 * np.finfo(dt).eps * np.abs(m).max(1)) ** 2
    mu = np.full(n, damping)
    iters = np.zeros(n, np.int64)
    rejects = np.zeros(n, np.int64)
    ids = np.arange(n)
    out_S, out_E, out_it, out_conv = S.copy(), E.copy(), iters.copy(), np.zeros(n, bool)

    while True:
        z, pre, m, rw, X = (S[:, cuts[i] : cuts[i + 1]] for i in range(5))
        Jz = head.update_jacobian(Jz, maskJ, mask, sw3)
        maskJ = mask
        J = pm.z_jac(Jz, X, m)
        if npar:
            J = np.concatenate([J, pm.pose_jac(P, m, X) * sw_m[..., None]], 2)
        N = (J.transpose(0, 2, 1) @ J).astype(np.float64)
        _diagonal(N)[:, :D] += reg[:, None]
        g = (rw[:, None] @ J)[:, 0].astype(np.float64)
        g[:, :D] += reg[:, None] * z
        delta = _damped_solve(N, g, mu)
        if isinstance(pm, _Pinhole2D) and pm.focal is None:  # its fitted distance: held at the far bound, a trust region
            delta = pm.limit_step(N, g, mu, delta, X, m, D)
        pred = -(2 * np.einsum("np,np->n", g, delta) + (delta[:, None] @ N @ delta[..., None])[:, 0, 0])
        dl = delta.astype(dt)
        dz = dl[:, :D]
        d = dz @ head.W1t  # (n, H) change of the pre-activations per unit step
        vz = np.where(mask, d, head.slope * d) @ head.At
        uz = pm.z_apply(vz if sw3 is None else vz * sw3, X, m)
        up = np.einsum("nmp,np->nm", J[:, :, D:], dl[:, D:]) if npar else np.zeros_like(uz)
        t = _ray_search(head, pm, P, X, pre, mask, d, rw, uz, up, sw_m, sw3, z, dz, reg, m).astype(dt)
        z_new = z + t[:, None] * dz
        pre_new = head.pre(z_new)
        m_new = head.from_pre(pre_new)
        X_new = pm.trial(ctx, P, w, m_new, X, t[:, None] * dl[:, D:])
        rw_new = pm.residual(P, m_new, X_new) * sw_m
        E_new = _energy(rw_new, z_new, reg)
        accept = E_new < E  # False for NaN
        S = np.where(accept[:, None], np.concatenate([z_new, pre_new, m_new, rw_new, X_new], 1), S)
        mask = S[:, cuts[1] : cuts[2]] > 0
        iters += 1
        rejects = np.where(accept, 0, rejects + 1)
        E_next = np.where(accept, E_new, E)
        conv = (accept & (E - E_new <= tol * E)) | (pred <= tol * E) | (E_next <= floor) | (rejects >= _MAX_REJECTS)
        E = E_next
        mu = np.where(accept, np.maximum(mu * 0.3, damping), mu * 10)
        done = conv | (iters >= max_iters)
        if done.any():
            tgt = ids[done]
            out_S[tgt], out_E[tgt], out_it[tgt], out_conv[tgt] = S[done], E[done], iters[done], conv[done]
            if done.all():
                break
            keep = ~done
            ids, P, w, sw_m, S, mask, maskJ, Jz, E, mu, iters, rejects, floor, reg = (
                a[keep] for a in (ids, P, w, sw_m, S, mask, maskJ, Jz, E, mu, iters, rejects, floor, reg)
            )
            sw3 = None if sw3 is None else sw3[keep]
            ctx = tuple(c[keep] for c in ctx)
    c = cuts
    return {"z": out_S[:, c[0] : c[1]], "m": out_S[:, c[2] : c[3]], "X": out_S[:, c[4] : c[5]], "E": out_E,
            "iters": out_it, "conv": out_conv}  # fmt: skip


def _gn_single(head: _LReLUHead, pm, P, w, z0, reg, max_iters, tol, damping):
    """:func:`_gn_chunk` for one face (``P`` (1, K, dim)): the same iterations on 1-D arrays with
    Python scalars, the per-call overhead of the batched bookkeeping left out (a single fit
    spends most of its time there)."""
    D, npar, dt = head.D, pm.n_params, P.dtype
    slope = head.slope
    W1t, At = head.W1t, head.At
    uniform = bool((w == 1).all())
    swk = np.sqrt(w)
    sw_m = np.repeat(swk, pm.dim, 1)  # (1, K dim)
    sw3 = None if uniform else np.repeat(swk[0], 3)  # (3K,)
    ctx = pm.prepare(P, w)
    z = np.array(z0[0], dtype=dt)
    pre = head.pre(z)
    m = head.from_pre(pre)
    X = pm.init(ctx, P, w, m[None])
    rw = pm.residual(P, m[None], X) * sw_m  # (1, M)
    r64 = rw.astype(np.float64)
    E = float(r64.ravel() @ r64.ravel()) + reg * float(z.astype(np.float64) @ z.astype(np.float64))
    mask = pre > 0
    Jz = head.jacobian_init(mask[None])  # (1, 3K, D)
    if sw3 is not None:
        Jz *= sw3[None, :, None]
    maskJ = mask
    floor = float(w.sum(dtype=np.float64)) * (16 * np.finfo(dt).eps * float(np.abs(m).max())) ** 2
    mu, it, rejects, conv = damping, 0, 0, False
    limit = isinstance(pm, _Pinhole2D) and pm.focal is None
    while True:
        Jz = head.update_jacobian(Jz, maskJ[None], mask[None], None if sw3 is None else sw3[None])
        maskJ = mask
        J = pm.z_jac(Jz, X, m[None])
        if npar:
            Jp = pm.pose_jac(P, m[None], X)[0] * sw_m[0, :, None]  # (M, npar)
            J = np.concatenate([J[0], Jp], 1)
        else:
            J = J[0]
        N = (J.T @ J).astype(np.float64)
        N.flat[: D * (D + npar + 1) : D + npar + 1] += reg
        rw0 = rw[0]
        g = (rw0 @ J).astype(np.float64)
        g[:D] += reg * z
        delta = _damped_solve_single(N, g, mu)
        if limit:  # a pinhole's fitted distance: held at the far bound, a trust region
            delta = pm.limit_step(N[None], g[None], np.array([mu]), delta[None], X, m[None], D)[0]
        pred = -(2.0 * float(g @ delta) + float(delta @ N @ delta))
        dl = delta.astype(dt)
        dz = dl[:D]
        d = dz @ W1t
        vz = np.where(mask, d, slope * d) @ At
        if sw3 is not None:
            vz *= sw3
        uz = pm.z_apply(vz[None], X, m[None])[0]
        up = J[:, D:] @ dl[D:] if npar else 0.0
        t = dt.type(_ray_search_single(head, pm, P, X, pre, mask, d, rw0, uz, up, sw_m, sw3, z, dz, reg, m))
        z_new = z + t * dz
        pre_new = head.pre(z_new)
        m_new = head.from_pre(pre_new)
        X_new = pm.trial(ctx, P, w, m_new[None], X, (t * dl[D:])[None])
        rw_new = pm.residual(P, m_new[None], X_new) * sw_m
        r64 = rw_new.astype(np.float64).ravel()
        z64 = z_new.astype(np.float64)
        E_new = float(r64 @ r64) + reg * float(z64 @ z64)
        accept = E_new < E  # False for NaN
        it += 1
        E_old = E
        if accept:
            z, pre, m, rw, X, E = z_new, pre_new, m_new, rw_new, X_new, E_new
            mask = pre > 0
            rejects = 0
            mu = max(mu * 0.3, damping)
        else:
            rejects += 1
            mu *= 10
        conv = ((accept and E_old - E_new <= tol * E_old) or pred <= tol * E_old or E <= floor
                or rejects >= _MAX_REJECTS)  # fmt: skip
        if conv or it >= max_iters:
            break
    return {"z": z[None], "m": m[None], "X": X, "E": np.array([E]), "iters": np.array([it], np.int64),
            "conv": np.array([conv])}  # fmt: skip


def _damped_solve_single(N, g, mu) -> np.ndarray:
    """:func:`_damped_solve` of one (M, M) system (LAPACK reads the damped copy of the symmetric
    C-ordered matrix as its Fortran transpose: no further copy)."""
    diag = N.diagonal()
    dmax = float(diag.max())
    ng = -g
    for extra in (1e-12, 1e-8, 1e-4, 1e-1):
        Nd = N.copy()
        Nd.flat[:: N.shape[0] + 1] += mu * diag + (extra * dmax + 1e-300)
        _, x, info = _lapack.dposv(Nd.T, ng, lower=True, overwrite_a=True)
        if info == 0:
            return x
    return np.zeros_like(g)


def _ray_search_single(head: _LReLUHead, pm, P, X, pre, mask, d, rw, uz, up, sw_m, sw3, z, dz, reg, m) -> float:
    """:func:`_ray_search` for one face, on 1-D arrays."""
    moving = (mask ^ (d > 0)) & (d != 0)
    tj = np.divide(-pre, d, out=np.full(pre.shape, 2.0, pre.dtype), where=moving)
    cand = np.flatnonzero(tj < 1.0)
    nf = cand.size
    lz = reg * float(z @ dz)
    ld = reg * float(dz @ dz)
    u = uz + up
    if nf == 0:
        a2 = float(u @ u) + ld
        return min(max(-(float(rw @ u) + lz) / max(a2, 1e-30), 0.0), 1.0)
    if nf > _EXACT_MAX_BREAKS:
        T = len(_GRID)
        steps = np.asarray(_GRID, z.dtype)
        mc = head.from_pre(pre[None] + steps[:, None] * d[None])
        if isinstance(pm, _Pose3D):  # r = m - q: the points' side is the same for every step
            rc = (mc - pm.mapped(P, X).reshape(1, -1)) * sw_m + steps[:, None] * up
        else:
            rc = pm.residual(np.repeat(P, T, 0), mc, np.repeat(X, T, 0)) * sw_m + steps[:, None] * up
        Ec = (rc * rc).sum(-1) + (2 * lz + ld * steps) * steps
        return float(steps[Ec.argmin()])
    idx = cand[np.argsort(tj[cand])]
    tv = tj[idx].astype(z.dtype)
    kappa = np.where(mask[idx], head.slope - 1.0, 1.0 - head.slope).astype(z.dtype) * d[idx]
    V = head.At[idx] * kappa[:, None]  # (nf, 3K)
    if sw3 is not None:
        V *= sw3
    V = pm.ray_vectors(V[None], X, m[None])[0]  # (the pinhole's linearised at m)
    G = V @ V.T
    tri = _TRI[:nf, :nf].astype(z.dtype, copy=False)
    trit = tri * tv[None, :]
    lin = V @ np.stack([u, rw], -1)  # (nf, 2)
    c = tri @ np.concatenate([lin, lin * tv[:, None]], -1)
    TG = tri @ G
    q11 = (TG * tri).sum(-1)
    q12 = (TG * trit).sum(-1)
    q22 = ((trit @ G) * trit).sum(-1)
    a2 = float(u @ u) + ld + np.concatenate([[0.0], 2 * c[:, 0] + q11])
    a1 = float(rw @ u) + lz + np.concatenate([[0.0], c[:, 1] - c[:, 2] - q12])
    a0 = np.concatenate([[0.0], q22 - 2 * c[:, 3]])
    lo, hi = np.concatenate([[0.0], tv]), np.concatenate([tv, [1.0]])
    t = np.minimum(np.maximum(-a1 / np.maximum(a2, 1e-30), lo), hi)
    Es = (a2 * t + 2 * a1) * t + a0
    return float(t[Es.argmin()])


def _gn_chunk_general(head: _GeneralHead, pm, P, w, z0, reg, max_iters, tol, damping):
    """Levenberg-Marquardt on (z, pose) for a chunk of faces, for any generator of the interface:
    the Jacobian of the landmarks comes from the generator at every iteration, and each step is
    searched on the grid ``_GRID`` of step lengths (one batched forward), the 3D pose re-solved in
    closed form at each trial code (the 2D camera follows the linearised step)."""
    n, K, _ = P.shape
    D = head.D
    dr, npar = pm.dim, pm.n_params
    dt = P.dtype
    uniform = bool((w == 1).all())
    sw_m = np.repeat(np.sqrt(w), dr, 1)  # per residual row
    sw3 = None if uniform else np.repeat(np.sqrt(w), 3, 1)  # per landmark-coordinate row (3K)
    ctx_all = pm.prepare(P, w)
    reg = np.broadcast_to(np.asarray(reg, np.float64), (n,)).copy()  # per face
    steps = np.asarray(_GRID, dt)
    T = steps.size

    z = np.array(z0, dtype=dt, order="C")  # a copy: updated in place
    m = head.forward(z)
    X = pm.init(ctx_all, P, w, m)
    E = _energy(pm.residual(P, m, X) * sw_m, z, reg)
    floor = w.sum(1, dtype=np.float64) * (16 * np.finfo(dt).eps * np.abs(m).max(1)) ** 2
    mu = np.full(n, damping)
    iters = np.zeros(n, np.int64)
    rejects = np.zeros(n, np.int64)
    conv = np.zeros(n, bool)
    active = np.arange(n)
    while active.size:
        a = active
        ctx = tuple(c[a] for c in ctx_all)
        Pa, wa, swa = P[a], w[a], sw_m[a]
        m_a, Jz = head.forward_jacobian(z[a])
        if sw3 is not None:
            Jz *= sw3[a][..., None]
        rw = pm.residual(Pa, m_a, X[a]) * swa
        J = pm.z_jac(Jz, X[a], m_a)
        if npar:
            J = np.concatenate([J, pm.pose_jac(Pa, m_a, X[a]) * swa[..., None]], 2)
        N = np.ascontiguousarray((J.transpose(0, 2, 1) @ J).astype(np.float64))
        _diagonal(N)[:, :D] += reg[a, None]
        g = (rw[:, None] @ J)[:, 0].astype(np.float64)
        g[:, :D] += reg[a, None] * z[a]
        delta = _damped_solve(N, g, mu[a])
        if isinstance(pm, _Pinhole2D) and pm.focal is None:  # its fitted distance: held at the far bound, a trust region
            delta = pm.limit_step(N, g, mu[a], delta, X[a], m_a, D)
        pred = -(2 * np.einsum("np,np->n", g, delta) + (delta[:, None] @ N @ delta[..., None])[:, 0, 0])
        dl = delta.astype(dt)
        na = a.size
        # every step length of the grid at once: (na * T) trial codes
        zt = (z[a][:, None] + steps[None, :, None] * dl[:, None, :D]).reshape(na * T, D)
        mt = head.forward(zt)
        rep = (lambda x: np.repeat(x, T, 0))  # noqa: E731
        Xt = pm.trial(tuple(rep(c) for c in ctx), rep(Pa), rep(wa), mt, rep(X[a]),
                      (steps[None, :, None] * dl[:, None, D:]).reshape(na * T, -1))  # fmt: skip
        Et = _energy(pm.residual(rep(Pa), mt, Xt) * rep(swa), zt, rep(reg[a])).reshape(na, T)
        best = np.nanargmin(np.where(np.isnan(Et), np.inf, Et), 1)
        pick = np.arange(na) * T + best
        E_new = Et[np.arange(na), best]
        accept = E_new < E[a]  # False for NaN
        ok = a[accept]
        z[ok], X[ok] = zt[pick[accept]], Xt[pick[accept]]
        iters[a] += 1
        rejects[a] = np.where(accept, 0, rejects[a] + 1)
        E_next = np.where(accept, E_new, E[a])
        c_a = ((accept & (E[a] - E_new <= tol * E[a])) | (pred <= tol * E[a]) | (E_next <= floor[a])
               | (rejects[a] >= _MAX_REJECTS))  # fmt: skip
        E[a] = E_next
        mu[a] = np.where(accept, np.maximum(mu[a] * 0.3, damping), mu[a] * 10)
        conv[a] = c_a
        active = a[~(c_a | (iters[a] >= max_iters))]
    m = head.forward(z)
    return {"z": z, "m": m, "X": X, "E": E, "iters": iters, "conv": conv}


def _solve_gn(head, pm, P, w, z0, reg, max_iters, tol, opts):
    """Gauss-Newton on chunks of ``_CHUNK`` faces, spread over ``torch.get_num_threads()``
    Python threads when there are several chunks (NumPy's BLAS and LAPACK calls release the
    GIL; BLAS is held to one thread meanwhile, process-wide, through threadpoolctl). The
    chunking is fixed, so every thread count solves the same chunks; results can differ in the
    last bits (and, for unconverged noisy fits, by more) when BLAS's own threading differs."""
    damping = float(opts["damping"])
    B = P.shape[0]
    starts = range(0, B, _CHUNK)
    workers = min(torch.get_num_threads(), len(starts))

    chunk = _gn_chunk if isinstance(head, _LReLUHead) else _gn_chunk_general
    if B == 1 and chunk is _gn_chunk:
        chunk = _gn_single

    if np.ndim(reg) and chunk is _gn_single:
        reg = float(np.asarray(reg).reshape(-1)[0])

    def run(i):
        j = i + _CHUNK
        return chunk(head, pm, P[i:j], w[i:j], z0[i:j], reg[i:j] if np.ndim(reg) else reg, max_iters, tol, damping)

    # BLAS at one thread either way: threaded BLAS inside threaded chunks oversubscribes the cores,
    # and a lone chunk's matrices (at most 204 x code_dim per face) are too small for it, its
    # hand-offs costing 20-50x the fit when another process holds a core (0.4.0, one face on a
    # busy 2-core machine: 55-70 ms with NumPy's default 2 threads, 1.6 ms with one)
    with _one_blas_thread():
        if workers > 1:
            if isinstance(head, _LReLUHead):
                head.bases()  # fill the shared caches before the threads read them
            with ThreadPoolExecutor(max_workers=workers) as pool:
                parts = list(pool.map(run, starts))
        else:
            parts = [run(i) for i in starts]
    return parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


_BLAS_CONTROLLER = None
_BLAS_HELD = threading.local()  # .depth: how many _one_blas_thread contexts this thread is inside


@contextlib.contextmanager
def _one_blas_thread():
    """A context holding NumPy's BLAS to one thread (threadpoolctl; the controller is built once,
    ~1 ms, and each limit costs ~50 us). Nested contexts of one thread reuse the outer limit (a
    2D fit's rounds run several solves inside one)."""
    global _BLAS_CONTROLLER
    depth = getattr(_BLAS_HELD, "depth", 0)
    if depth:
        _BLAS_HELD.depth = depth + 1
        try:
            yield
        finally:
            _BLAS_HELD.depth = depth
        return
    if _BLAS_CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _BLAS_CONTROLLER = ThreadpoolController()
    with _BLAS_CONTROLLER.limit(limits=1, user_api="blas"):
        _BLAS_HELD.depth = 1
        try:
            yield
        finally:
            _BLAS_HELD.depth = 0


# ---- first-order solvers (torch autograd on the landmark rows) ----------------------------------
def _solve_first_order(head, pm, P, w, z0, reg, max_iters, tol, solver, opts, device):
    """LBFGS / Adam on z (torch, on ``device``); the 3D pose is re-solved in closed form
    between runs, the 2D camera is optimised with z."""
    tt = {"dtype": torch.float64 if head.dtype == np.float64 else torch.float32, "device": device}
    forward = head.torch_forward(tt)
    Pt, sw_m = torch.as_tensor(P, **tt), torch.as_tensor(np.repeat(np.sqrt(w), pm.dim, 1), **tt)
    ctx = pm.prepare(P, w)
    B = P.shape[0]
    joint = pm.dim == 2  # the camera has no closed form: optimise it with z

    z = torch.as_tensor(z0, **tt).clone().requires_grad_(True)
    X = torch.as_tensor(pm.init(ctx, P, w, head.forward(z0)), **tt)
    cam = torch.zeros(B, pm.n_params, **tt, requires_grad=True) if joint else None
    params = [z] + ([cam] if joint else [])
    reg_t = torch.as_tensor(np.asarray(reg, np.float64), **tt)  # a scalar or (B,) per face

    def realign():
        m = head.forward(z.detach().cpu().numpy())
        return torch.as_tensor(pm.solve(ctx, P, w, m), **tt)

    def energy(X_now):
        m = forward(z)
        n = m.shape[0]
        if joint and isinstance(pm, _Pinhole2D):
            r = pm.torch_residual(m, X_now, cam, Pt)
        elif joint:
            s = X_now[:, 0] * torch.exp(cam[:, 0])
            R = X_now[:, 1:10].view(n, 3, 3) @ _so3_exp(cam[:, 1:4])
            t = X_now[:, 10:12] + X_now[:, :1] * cam[:, 4:6]
            r = m.view(n, -1, 3) @ R[:, :2].transpose(1, 2) - (Pt - t[:, None]) / s[:, None, None]
        else:
            R = X_now[:, 1:10].view(n, 3, 3)
            r = m.view(n, -1, 3) - (X_now[:, 0, None, None] * (Pt @ R.transpose(1, 2)) + X_now[:, None, 10:13])
        rw = r.reshape(n, -1) * sw_m
        return (rw * rw).sum(1) + reg_t * (z * z).sum(1)

    iters = np.zeros(B, np.int64)
    conv = np.zeros(B, bool)
    with torch.no_grad():
        E_prev = energy(X).double()
    with torch.enable_grad(), head.frozen():
        if solver == "adam":
            opt = torch.optim.Adam(params, lr=float(opts["lr"]))
            every = max(1, int(opts["align_every"]))
            for step in range(max_iters):
                if step and step % every == 0:
                    with torch.no_grad():
                        if not joint:
                            X = realign()
                        E_now = energy(X).double()
                        conv = ((E_prev - E_now).abs() <= tol * E_prev).cpu().numpy()
                        E_prev = E_now
                opt.zero_grad(set_to_none=True)
                energy(X).sum().backward()
                opt.step()
            iters[:] = max_iters
        else:
            for outer in range(max_iters):
                opt = torch.optim.LBFGS(
                    params,
                    lr=1.0,
                    max_iter=int(opts["inner_iters"]),
                    history_size=int(opts["history_size"]),
                    line_search_fn="strong_wolfe",
                    tolerance_grad=1e-12,
                    tolerance_change=1e-15,
                )

                def closure():
                    opt.zero_grad(set_to_none=True)
                    e = energy(X).sum()
                    e.backward()
                    return e

                opt.step(closure)
                iters[:] = outer + 1
                with torch.no_grad():
                    if not joint:
                        X = realign()
                    E_now = energy(X).double()
                    conv = ((E_prev - E_now).abs() <= tol * E_prev.clamp_min(1e-300)).cpu().numpy()
                    E_prev = E_now
                if conv.all():
                    break
    zn = z.detach().cpu().numpy()
    m = head.forward(zn)
    if joint:
        Xn = pm.trial(ctx, P, w, m, X.cpu().numpy(), cam.detach().cpu().numpy().astype(P.dtype))
    else:
        Xn = pm.solve(ctx, P, w, m)
    E = _energy(pm.residual(P, m, Xn) * np.repeat(np.sqrt(w), pm.dim, 1), zn, reg)
    return {"z": zn, "m": m, "X": Xn, "E": E, "iters": iters, "conv": conv}


# ---- public API ------------------------------------------------------------------------------
def _auto_noise(noise_mm, pm, prior, reg_given, solver, lmk, n_valid) -> bool:
    """Whether this fit estimates each face's landmark noise (``noise_mm="auto"``): asked for,
    or the default of a 3D Gauss-Newton fit under the model prior with nothing of the prior
    given, on the calibrated landmark set with enough points (else the default stays 1 mm).
    Outliers raise the estimate, so the prior holds the fit harder (with ``loss="huber"`` on the
    model's faces with three 43 mm outliers: 9.3 mm dense error against 33.6 at 1 mm).
    An explicit ``"auto"`` the estimate is not calibrated for is a :class:`FittingError`."""
    usable = lmk.name == AUTO_LANDMARKS and int(n_valid.min()) >= AUTO_MIN_POINTS
    if noise_mm == AUTO:
        if pm.dim != 3:
            raise FittingError("noise_mm='auto' is for 3D points; 2D fits take reg")
        if not usable:
            b = int(np.argmin(n_valid))
            raise FittingError(
                f"noise_mm='auto' is calibrated for the {AUTO_LANDMARKS!r} landmarks with at least {AUTO_MIN_POINTS} "
                f"usable points, got {lmk.name!r} with {int(n_valid[b])} (face {b}); give noise_mm in mm instead "
                "(e.g. 1.0 for hand-placed or detected points, 0.2 for scanner markers)")  # fmt: skip
        return True
    return noise_mm is None and pm.dim == 3 and not reg_given and solver == "gauss-newton" and prior == "model" \
        and usable  # fmt: skip


def _use_posterior(posterior, pm, prior, noise_known, loss, lmk, w, solver) -> bool:
    """Whether a fit blends in the posterior-mean shape (:mod:`facemodel.fitting_posterior`): by
    default for 3D Gauss-Newton fits under the model prior whose noise is known or estimated, with
    the l2 loss, on all 68 iBUG points at equal weights (what it was validated on; the first-order
    solvers keep their own result unless asked). ``posterior=True`` where that does not hold
    (solver aside) is a :class:`FittingError` naming what is missing."""
    if posterior is not None and not isinstance(posterior, bool):
        raise FittingError(f"posterior must be True, False or None (the default), got {posterior!r}")
    if posterior is False:
        return False
    needs = []
    if pm.dim != 3:
        needs.append("3D points (2D fits have no noise model)")
    if prior != "model" or not noise_known:
        needs.append("the model prior at a noise level (not an explicit reg or prior='l2')")
    if loss != "l2":
        needs.append("loss='l2' (the posterior mean is not robust to outliers)")
    if lmk.name != AUTO_LANDMARKS or not (w == 1).all():
        needs.append(f"all of the {AUTO_LANDMARKS!r} landmarks present, at equal weights")
    if posterior and needs:
        raise FittingError("posterior=True needs " + "; ".join(needs) + " (or leave posterior=None)")
    return not needs and (bool(posterior) or solver == "gauss-newton")


def _posterior_refit(model, lmk, pm, P, w, z, noise, cp, dtype):
    """Codes (n, D) whose subset vertices are the blend of the MAP codes' ``z`` (n, D) and the
    posterior-mean shape at each face's ``noise`` (n,) mm, and that blend's share (n,)."""
    share = blend_weight(noise)
    todo = np.flatnonzero(share >= BLEND_MIN_SHARE)
    if not todo.size:
        return z, share
    V = int(model.template.shape[0])
    subset = np.arange(0, V, SUBSET_STEP)
    head_l = _head(model, lmk, np.dtype(np.float64))
    subset_set = _landmarks(model, subset)  # built once: the re-fit below takes the same set
    head_s = _head(model, subset_set, np.dtype(np.float64))
    g, t = model.generator, model.template
    key = (lmk.vertex_indices.numpy().tobytes(), lmk.barycentrics.numpy().tobytes(), SUBSET_STEP, g.weights_stamp(),
           (t.data_ptr(), t._version), cp.serial)  # fmt: skip
    post = shape_posterior(model, key, lambda c: np.concatenate([head_l.forward(c), head_s.forward(c)], 1),
                           lmk.vertex_indices.shape[0], subset, cp)  # fmt: skip
    Pt, wt = P[todo], w[todo]
    ctx = pm.prepare(Pt, wt)
    v_post = post.conditional_mean(lambda m: pm.mapped(Pt, pm.solve(ctx, Pt, wt, m.reshape(len(todo), -1).astype(Pt.dtype))),
                                   np.asarray(noise, np.float64)[todo] ** 2)  # fmt: skip
    v_map = head_s.forward(z[todo].astype(np.float64)).reshape(len(todo), -1, 3)
    a = share[todo, None, None]
    target = (a * v_post + (1 - a) * v_map).astype(dtype)
    refit = _fit(model, target, _Pose3D("none"), landmarks=subset_set, weights=None, reg=None, init=z[todo].astype(dtype),
                 solver="gauss-newton", max_iters=_REFIT_MAX_ITERS, tol=None, generator=None, device=None,
                 solver_options=None, decode=False, prior="model", noise_mm=0.0, posterior=False)  # fmt: skip
    z = z.copy()
    z[todo] = refit.codes.detach().cpu().numpy().astype(z.dtype)
    return z, share


def _fit(model, points, pm, *, landmarks, weights, reg, init, solver, max_iters, tol, generator, device,
         solver_options, decode, prior=None, loss="l2", loss_scale=None, noise_mm=None, posterior=None,
         _union=None, _regs=None) -> FitResult:  # fmt: skip
    if not isinstance(solver, str) or solver not in SOLVERS:
        raise FittingError(f"unknown solver {solver!r}; choose one of {list(SOLVERS)}")
    if prior is not None and (not isinstance(prior, str) or prior not in PRIORS):
        raise FittingError(f"unknown prior {prior!r}; choose one of {list(PRIORS)} (or None: the default)")
    reg_given, reg_explicit = reg is not None or prior is not None, reg is not None
    prior, reg = resolve_prior(prior, reg, "3d" if pm.dim == 3 else "2d", noise_mm)
    if not isinstance(loss, str) or loss not in LOSSES:
        raise FittingError(f"unknown loss {loss!r}; choose one of {list(LOSSES)}")
    loss_scale = DEFAULT_LOSS_SCALE_MM if loss_scale is None else loss_scale
    if isinstance(loss_scale, bool) or not isinstance(loss_scale, (int, float)) or not loss_scale > 0 \
            or not math.isfinite(loss_scale):  # fmt: skip
        raise FittingError(f"loss_scale must be a finite number > 0 (mm), got {loss_scale!r}")
    if tol is None:  # the model prior's optimum is flatter: a looser relative tolerance, more iterations
        tol = (PRIOR_TOL if solver == "gauss-newton" else 1e-5) if prior == "model" else 1e-6
    if max_iters is None and solver == "gauss-newton" and prior == "model":
        max_iters = PRIOR_MAX_ITERS_GN
    max_iters = _check_common(reg, tol, max_iters, solver, generator)
    dtype, model_device = _model_dtype_device(model)
    explicit = device is not None
    try:
        dev = torch.device(device) if explicit else model_device
    except (RuntimeError, TypeError) as exc:
        raise FittingError(f"invalid device {device!r}: {exc}") from exc
    if solver == "gauss-newton":
        opts = _options(solver_options, {"damping": 1e-9}, solver)
    elif solver == "lbfgs":
        opts = _options(solver_options, {"inner_iters": 20, "history_size": 10}, solver)
    else:
        opts = _options(solver_options, {"lr": 0.01, "align_every": 10}, solver)
    lmk = _landmarks(model, landmarks)
    P, w, present, _ = _check_points(points, weights, lmk, pm.dim, dtype, dev, explicit)
    B, K = w.shape
    if isinstance(pm, _Pinhole2D):  # image points relative to the principal point
        if pm.principal.ndim == 2 and pm.principal.shape[0] not in (1, B):
            raise FittingError(f"principal_point must have shape (2,) or ({B}, 2), got {pm.principal.shape}")
        P = pm.centre(P, present)
    n_valid = (w > 0).sum(1)
    need = {"similarity": 3, "rigid": 3, "none": 1, "scaled_orthographic": 4, "pinhole": 4}[pm.align]
    if (n_valid < need).any():
        b = int(np.argmax(n_valid < need))
        if n_valid[b] == 0:
            raise FittingError(
                f"all landmarks of face {b} are missing (NaN rows or weight 0); give at least {need} points"
            )
        hint = " or align='none' for points already in model space (mm)" if pm.dim == 3 else ""
        raise FittingError(
            f"face {b} has {int(n_valid[b])} usable landmarks but {pm.align!r} needs at least {need}; "
            f"give more points{hint}"
        )
    if pm.align != "none":  # the pose needs points that do not all coincide
        wn = w / w.sum(1, keepdims=True)
        mean = (wn[..., None] * P).sum(1, keepdims=True)
        spread = np.sqrt((wn * ((P - mean) ** 2).sum(-1)).sum(1))
        flat = spread <= 64 * np.finfo(P.dtype).eps * np.abs(P).max((1, 2)) + 1e-30
        if flat.any():
            b = int(np.argmax(flat))
            raise FittingError(
                f"the points of face {b} all coincide: no pose can be estimated from them; give distinct points"
                + (" (or align='none' for points already in model space)" if pm.dim == 3 else "")
            )
    auto = _auto_noise(noise_mm, pm, prior, reg_given, solver, lmk, n_valid)
    # _union: (a landmark set, indices into it of ``landmarks``): the head's rows are taken from the
    # cached head of that set (the contour rounds: one head for every jaw choice)
    head = _head(model, lmk if _union is None else _union[0], P.dtype)
    cp = code_prior(model)
    z0 = _initial_codes(init, solver, pm.dim, B, head.D, dtype, dev, explicit, generator)
    if prior == "model":  # solve in whitened codes u, z = mean + L u: reg ||u||^2 is the Mahalanobis prior
        head = whitened_head(head, cp)
        if not (init is None or isinstance(init, str)):  # explicit codes; "mean" (the prior's mean) and
            z0 = cp.whiten(z0).astype(P.dtype)  # "random" (a draw from the prior) are in u already
    if _union is not None:
        head = _row_head(head, _union[1])
    if isinstance(z0, str):  # "linear"
        z0 = _linear_init(head, pm, P, w, reg=float(reg) if _regs is None else _regs)
        restart = True  # noise_mm="auto": the second fit starts from the regression at its own weights
    else:
        restart = False
    w_in, lw = w, np.ones_like(w)
    # _regs: (B,) per-face weights of the model prior (a 2D fit's noise_px), replacing reg
    reg, noise_used = float(reg) if _regs is None else np.asarray(_regs, np.float64), None
    if pm.dim == 3 and prior == "model" and not reg_explicit and not auto:  # the noise the weight assumes
        noise_used = np.full(B, DEFAULT_NOISE_MM if noise_mm is None else float(noise_mm))
    try:
        with np.errstate(all="ignore"):  # non-finite results are refused below
            rounds = ["auto"] * auto + ["fit"] + ["irls"] * (ROBUST_ROUNDS if loss == "huber" else 0)
            for rnd, kind in enumerate(rounds):
                if rnd:  # warm start from the last fit
                    z0 = out["z"]
                    rn = np.linalg.norm(pm.residual(P, out["m"], out["X"]).reshape(B, K, pm.dim), axis=-1)
                if kind == "irls":  # Huber factors of the last fit's residuals
                    lw = irls_weights(rn, float(loss_scale)).astype(P.dtype)
                    if (lw == 1).all():  # no residual past the threshold: the problem just solved again
                        continue
                    w = np.ascontiguousarray(w_in * lw)
                elif kind == "fit" and auto:  # each face at the weight of its estimated noise
                    noise_used = noise_from_level(residual_level(rn, w_in > 0))
                    reg = reg_for_noise(noise_used)
                    if restart:  # on validation faces 0.02-0.05 mm closer than a warm start from the first fit
                        z0 = _linear_init(head, pm, P, w, reg=reg)
                if solver == "gauss-newton":
                    out = _solve_gn(head, pm, P, w, z0, reg, max_iters, float(tol), opts)
                else:
                    out = _solve_first_order(head, pm, P, w, z0, reg, max_iters, float(tol), solver, opts, dev)
                if rnd:
                    out["iters"] = out["iters"] + prev_iters
                prev_iters = out["iters"]
            w = w_in
            z, m, X = out["z"], out["m"], out["X"]
            if prior == "model":
                z = cp.color(z).astype(P.dtype)
            share = None
            if _use_posterior(posterior, pm, prior, noise_used is not None, loss, lmk, w, solver):
                z, share = _posterior_refit(model, lmk, pm, P, w, z, noise_used, cp, P.dtype)
                m = _head(model, lmk, P.dtype).forward(z).astype(P.dtype)
                X = pm.solve(pm.prepare(P, w), P, w, m)
            r = pm.residual(P, m, X).reshape(B, K, pm.dim)
            scale, rot, trans, factor = pm.to_input(X)
    except np.linalg.LinAlgError as exc:  # an SVD or solve that did not converge
        raise NumericalError(f"the fit failed numerically ({exc}); check that the points are a face's landmarks in "
                             "consistent units, or try reg > 0 or init='mean'") from None  # fmt: skip
    bad = [k for k, a in (("codes", z), ("pose", X), ("scale", scale), ("translation", trans)) if not np.isfinite(a).all()]
    if bad:
        raise NumericalError(f"the fit gave non-finite {', '.join(bad)} (points of extreme scale or nearly "
                             "degenerate); rescale the points, give more distinct points, or use reg > 0")  # fmt: skip
    res = np.where(present, np.linalg.norm(r, axis=-1) * factor[:, None], np.nan)
    valid = w > 0
    with np.errstate(all="ignore"):
        rmse = np.sqrt((np.where(valid, res, 0.0).astype(np.float64) ** 2).sum(1) / valid.sum(1))
    if not (np.isfinite(rmse).all() and np.isfinite(m).all()):
        raise NumericalError("the fit's landmarks or residuals overflow (points of extreme scale, or init codes far "
                             "outside the prior); rescale the points or start from init='mean'")  # fmt: skip

    def T(a, dt=dtype):
        t = torch.from_numpy(np.ascontiguousarray(a))
        return t if t.dtype == dt and dev.type == "cpu" else t.to(device=dev, dtype=dt)

    codes = T(z)
    decoder = _decoder(model, codes, dev, dtype) if decode else None
    cam = {}
    if isinstance(pm, _Pinhole2D):
        cam = {"focal_length": T(pm.focal_length(X)),
               "principal_point": T(np.array(np.broadcast_to(pm.principal.reshape(-1, 2), (B, 2))))}  # fmt: skip
    return FitResult(
        codes=codes,
        scale=T(scale),
        rotation=T(rot),
        translation=T(trans),
        residuals=T(res),
        rmse=T(rmse),
        iterations=T(out["iters"], torch.int64),
        converged=T(out["conv"], torch.bool),
        landmarks=T(m.reshape(B, K, 3)),
        objective=T(out["E"], torch.float64),
        solver=solver,
        align=pm.align,
        landmark_set=lmk,
        plausibility=T(cp.mahalanobis(z), torch.float64),
        typical_range=cp.typical_range,
        prior=prior,
        reg=T(reg, torch.float64) if np.ndim(reg) else float(reg),
        noise_mm=None if noise_used is None else T(noise_used, torch.float64),
        posterior_share=None if share is None else T(share, torch.float64),
        loss_weights=T(lw),
        _decoder=decoder,
        **cam,
    )


def _decoder(model, codes, device, dtype):
    """A function decoding ``codes`` to vertices once, refusing if the weights changed."""
    g = model.generator

    def stamp_now():
        t = model.template
        return g.weights_stamp(), (t.data_ptr(), t._version)

    stamp = stamp_now()

    def decode() -> torch.Tensor:
        if stamp_now() != stamp:
            raise FittingError(
                "the model's weights changed after this fit, so its vertices cannot be decoded; "
                "decode result.codes with the model you want (model(codes))"
            )
        with torch.no_grad():
            zz = codes.to(g.device, g.dtype)
            out = [model(zz[i : i + _DECODE_CHUNK]) for i in range(0, len(zz), _DECODE_CHUNK)]
        return torch.cat(out).to(device=device, dtype=dtype)

    return decode


def fit_landmarks(
    model: torch.nn.Module,
    points: torch.Tensor | np.ndarray,
    *,
    landmarks: Any = "ibug68",
    weights: torch.Tensor | np.ndarray | None = None,
    reg: float | None = None,
    prior: str | None = None,
    noise_mm: float | str | None = None,
    posterior: bool | None = None,
    loss: str = "l2",
    loss_scale: float | None = None,
    align: str = "similarity",
    init: str | torch.Tensor | np.ndarray | None = None,
    solver: str = "gauss-newton",
    max_iters: int | None = None,
    tol: float | None = None,
    generator: torch.Generator | int | None = None,
    device: str | torch.device | None = None,
    solver_options: Mapping[str, Any] | None = None,
    decode: bool = True,
) -> FitResult:
    """Fit codes (and a similarity) to 3D landmarks: Eq. 13 of the paper, in model space.

    Minimises ``sum_i w_i ||v~_i(z) - S(p_i)||^2 + reg ||z||^2`` over the code ``z`` and the
    transform ``S`` taking the points into model space. The data term is in model-space
    mm^2 whatever the points' units (``S`` absorbs the scale), so ``reg`` is the paper's
    lambda and means the same for points in metres or millimetres.

    Args:
        model: a :class:`~facemodel.model.FaceModel`.
        points: (K, 3) or (B, K, 3) landmark positions, any units and pose. Missing
            landmarks: NaN rows (a row with any NaN is missing) or weight 0.
        landmarks: the landmark set the points follow (see
            :func:`facemodel.landmarks.landmark_set`): ``"ibug68"`` (default), ``"ibug51"``,
            a registered name, K vertex indices, or ``(triangles (K, 3), barycentrics (K, 3))``.
        weights: (K,) or (B, K) non-negative per-landmark weights (default 1).
        reg: weight of the code prior. Default (neither ``reg`` nor ``prior`` given): the
            model's code prior (``prior="model"``) at the weight chosen on validation faces
            (:data:`facemodel.fitting_prior.DEFAULT_REG`). An explicit ``reg`` alone keeps
            the paper's ``reg ||z||^2`` (``prior="l2"``; paper: 0, 0.01, 10); ``reg=0`` is
            the unregularised fit.
        prior: ``"model"``: ``reg ||L^-1 (z - mean)||^2`` against
            :func:`facemodel.prior.code_prior` (identity and noise N(0, I), the expression
            code's distribution under the blendshape map), or ``"l2"``: ``reg ||z||^2``.
        noise_mm: the points' expected noise per coordinate, in millimetres of the face
            (whatever the points' units), to set the model prior's weight for it
            (:func:`facemodel.fitting_prior.reg_for_noise`: 0.05 for exact points, 2.05 at
            1 mm, 16 at 2 mm): ~0.1-0.5 for scanner landmarks, 1-3 for landmarks detected on
            scans or hand-placed; or ``"auto"``: estimated per face from the residuals of a
            first fit at the 1 mm weight (:data:`facemodel.fitting_prior.NOISE_CALIBRATION`,
            within ~0.1-0.3 mm on faces the model never saw), then each face is fitted again
            at its own weight (about twice the time of one fit). Default: ``"auto"`` for a
            Gauss-Newton fit of the ``"ibug68"`` points (at least 60 usable) with neither
            ``reg`` nor ``prior`` given, else 1 mm. ``result.noise_mm`` (B,) holds the noise
            each face was fitted for. Not with ``reg`` or ``prior="l2"``.
        posterior: blend the posterior-mean shape into the fit (:mod:`facemodel.fitting_posterior`):
            the mean of the faces that explain the points under a Gaussian approximation of the
            model's own faces, which with noisy points is closer to the truth than the MAP code's
            mesh. Its share grows with the noise (``blend_weight``: none below ~0.24 mm, 0.67 at
            1 mm, 0.89 at 2 mm); the codes are then re-fitted to the blended shape at 157 vertices,
            so ``vertices`` stay the codes' mesh. ``objective`` and ``iterations`` are the MAP
            fit's. Default (``None``): on for the model prior at a known or estimated noise, the
            l2 loss and all 68 iBUG points at equal weights; ``False``: the MAP fit alone (faster);
            ``True``: required (a :class:`FittingError` where it does not apply).
        loss: ``"l2"`` (default for 3D) or ``"huber"``: iteratively reweighted (one warm-started
            re-fit) with the Huber factor ``min(1, loss_scale / r_k)`` of each landmark's
            residual ``r_k``, so outliers pull linearly, not quadratically.
        loss_scale: the Huber threshold in model-space mm (default 3).
        align: ``"similarity"`` (rotation, translation, scale), ``"rigid"`` (scale 1: points
            in mm), ``"none"`` (points already in model space, mm).
        init: ``"linear"`` (default for gauss-newton: a ridge regression of codes on the
            landmarks, fitted once per model and landmark set on codes drawn from the prior,
            alternated twice with the closed-form pose; saves ~4 iterations), ``"mean"``
            (z = 0; default for lbfgs), ``"random"`` (N(0, I) from ``generator``; default for
            adam, the paper's protocol), or codes (D,) / (B, D).
        solver: ``"gauss-newton"`` (default), ``"lbfgs"``, or ``"adam"`` (the paper's
            protocol; a slow baseline).
        max_iters: outer iterations (default: gauss-newton 20 under the model prior (most
            faces stop after 2-5), 6 with ``prior="l2"``; lbfgs 20 runs of 20
            iterations, adam 1000 steps).
        tol: stop a face when the relative decrease of its objective in an iteration (or
            the decrease the next step predicts) is below this (default under the model prior:
            3e-2 for gauss-newton, where on validation faces tighter tolerances do not lower
            the dense error, 1e-5 for lbfgs / adam; 1e-6 with ``prior="l2"``); ``converged`` is True for the faces that stopped so,
            False for those that reached ``max_iters``.
        generator: a torch.Generator or int seed for ``init="random"`` (default seed 0).
        device: where results go (default: the model's device); tensors on other devices
            than the model are an error unless this is given. The Gauss-Newton solver
            computes on the CPU; lbfgs/adam on this device.
        solver_options: gauss-newton ``damping`` (1e-9); lbfgs ``inner_iters`` (20),
            ``history_size`` (10); adam ``lr`` (0.01), ``align_every`` (10).
        decode: give ``vertices``: the full meshes are decoded once, on first access of
            ``result.vertices`` (``False``: ``vertices`` is None).

    Returns:
        :class:`FitResult`.

    Raises:
        FittingError: bad shapes, inf values, all (or too many) points missing, K not
            matching the landmark set, empty batch, tensors on another device or of another
            dtype than the model, unknown solver / align / init / option, ``noise_mm="auto"``
            for another landmark set or with fewer than 60 usable points.
        LandmarkError: an invalid landmark spec.

    Example:
        >>> res = fit_landmarks(model, points_m)            # (68, 3) in metres, any pose
        >>> res.rmse, res.scale                               # metres; ~0.001 m per mm
        >>> res.transform_points()                            # the fitted mesh over the points
    """
    if not isinstance(align, str) or align not in ALIGNMENTS:
        raise FittingError(f"unknown align {align!r}; choose one of {list(ALIGNMENTS)}")
    if noise_mm is not None:
        _check_noise("noise_mm", noise_mm, "mm", reg, prior)
    return _fit(model, points, _Pose3D(align), landmarks=landmarks, weights=weights, reg=reg, init=init,
                solver=solver, max_iters=max_iters, tol=tol, generator=generator, device=device,
                solver_options=solver_options, decode=decode, prior=prior, loss=loss, loss_scale=loss_scale,
                noise_mm=noise_mm, posterior=posterior)  # fmt: skip


def fit_landmarks_2d(
    model: torch.nn.Module,
    points2d: torch.Tensor | np.ndarray,
    *,
    landmarks: Any = "ibug68",
    weights: torch.Tensor | np.ndarray | None = None,
    reg: float | None = None,
    prior: str | None = None,
    noise_px: float | str | None = None,
    loss: str = "huber",
    loss_scale: float | None = None,
    camera: str = "scaled_orthographic",
    focal_length: float | None = None,
    principal_point: Any = None,
    contour: bool = True,
    init: str | torch.Tensor | np.ndarray | None = None,
    solver: str = "gauss-newton",
    max_iters: int | None = None,
    tol: float | None = None,
    generator: torch.Generator | int | None = None,
    device: str | torch.device | None = None,
    solver_options: Mapping[str, Any] | None = None,
    decode: bool = True,
) -> FitResult:
    """Fit codes and a camera (scaled orthographic or pinhole) to 2D landmarks.

    ``camera="scaled_orthographic"`` (default) projects model points (mm) as
    ``x = s R[:2] v + t`` (any image convention; a y-down image is another rotation) and
    minimises ``sum_i w_i ||R[:2] v~_i(z) - (x_i - t) / s||^2 + reg ||z||^2`` over the code and
    the camera jointly (the image residuals divided by the scale: model-space mm^2, as in
    :func:`fit_landmarks`), from an affine camera fitted at the initial code.

    ``camera="pinhole"`` projects ``x = f (R v + t)_xy / (R v + t)_z + c`` (OpenCV convention:
    camera at the origin looking down +z, image x right and **y down**, pixels, as photos are;
    points in a y-up frame would put the face behind its own silhouette: flip y first). The
    image residuals are divided by ``s = f / t_z`` (the pixels per mm at the face's depth), so
    the data term is again model-space mm^2 and ``reg`` means what it does for the
    orthographic camera: ``sum_i w_i ||t_z (R v~_i + t)_xy / (R v~_i + t)_z - (x_i - c) / s||^2``.
    The Gauss-Newton camera Jacobian includes the perspective division (and the focal length
    when it is fitted, through the inverse distance ``1 / t_z`` with ``f = s t_z``). The camera
    starts from the scaled-orthographic one at the initial code, at the depth ``t_z = f / s``
    (known ``f``) or, for a fitted ``f``, at the best of 0.3, 0.6, 1.2, 3 and 100 m after a few
    pose-only steps; a fitted distance stays within 100 m (there the camera is orthographic
    to ~0.1 %: a far face reports a focal length of ~1e5 s px). Use it for
    close-range photos (selfies, webcams: a face within ~1 m), where perspective changes the
    face's proportions in the image; far away it approaches the orthographic fit. A fitted
    focal length is only weakly observed (through the perspective distortion of the
    landmarks, confounded with face shape): pass the camera's when it is known.

    Depth is not observed: the default prior keeps shapes plausible. The jaw line (the first
    17 iBUG points) is a silhouette, not a fixed surface point, in non-frontal views: with
    ``contour=True`` (default, ``landmarks="ibug68"``) each face is re-fitted twice with its
    jaw points moved to the vertices of their contour lines that project outermost under
    the last camera (:mod:`facemodel.contour`, as eos does; for a pinhole the candidates are
    projected through the camera centre); ``landmarks="ibug51"`` drops them.

    Args:
        points2d: (K, 2) or (B, K, 2) image points (pixels for a pinhole); NaN rows / weight
            0 for missing ones.
        camera: ``"scaled_orthographic"`` (default) or ``"pinhole"``.
        focal_length: pinhole only: the focal length in pixels (> 0; e.g.
            ``focal_mm / sensor_width_mm * image_width_px``), the same for every face.
            ``None`` (default): fitted per face jointly with the pose and the code.
        principal_point: pinhole only: (2,) or (B, 2) pixels. Default: the centre of each
            face's landmarks' bounding box (over the non-NaN points), which makes an
            off-centre face look turned towards the centre less than it is: **pass the image
            centre** ``(width / 2, height / 2)`` when you know it
            (:func:`facemodel.photo.fit_photo` does).
        contour: slide the jaw points to the silhouette (ibug68 only; the re-fits run face
            by face).
        noise_px: the image points' noise per coordinate in pixels, to set the model prior's
            weight for it: :func:`facemodel.fitting_prior.reg_for_noise_2d` of the noise in
            model-space mm (the pixels divided by the first fit's camera scale) and of how far
            the face is turned (1 for exact points and frontal faces, 8.1 at 2 px on a face of
            1.5 px/mm, at least ~4 for faces turned 25 degrees or more); the jaw-free first fit
            is repeated at that weight (about 1.3x the time of a fit). ~0.5-1 px for hand-placed
            or high-resolution landmarks, 2-3 px for a detector on a face ~150 px wide. Or
            ``"auto"``: estimated per face from the residuals of the first fit
            (:data:`facemodel.fitting_prior.NOISE_CALIBRATION_2D`; at least 45 of the 51 inner
            points usable); on faces the model never saw this helps at 0-1 px and 3 px or more and
            loses 0.02-0.03 mm at ~2 px, where the default weight was chosen (docs/benchmarks.md
            "Choosing the 2D weight"). Default ``None``: the fixed weight ``DEFAULT_REG["2d"]`` (8,
            the best at 2 px). ``result.noise_mm`` (B,) then holds each face's noise in model-space
            mm (``* result.scale``: the pixels to within a few %) and ``result.reg`` (B,) its weight. Needs
            ``landmarks="ibug68"``, ``contour=True`` and the Gauss-Newton solver; not with ``reg``
            or ``prior="l2"``.
        loss: ``"huber"`` (default here: detector points have outliers) or ``"l2"``.
        others: as :func:`fit_landmarks`.

    Returns:
        :class:`FitResult`, residuals and rmse in image units (pixels). Orthographic: ``scale``
        (B,), ``rotation`` (B, 3, 3), ``translation`` (B, 2) px, ``focal_length`` None.
        Pinhole: ``rotation`` (B, 3, 3) and ``translation`` (B, 3, mm) map model space to the
        camera frame, ``focal_length`` (B,) px, ``principal_point`` (B, 2) px, ``scale``
        (B,) ``= f / t_z`` px per mm; ``result.transform_points()`` projects the mesh.

    Raises:
        FittingError: as :func:`fit_landmarks`, and an unknown camera, a focal length that is
            not a finite number > 0, a principal point that is not (2,) / (B, 2) finite
            numbers, either given with the orthographic camera, or a fitted focal length
            (``focal_length=None``) with ``solver="lbfgs"`` / ``"adam"``.

    Example:
        >>> res = fit_landmarks_2d(model, pts, camera="pinhole", focal_length=1000.0,
        ...                        principal_point=(320.0, 240.0))     # a 640 x 480 webcam
        >>> res.translation[0, 2], res.focal_length                     # distance (mm), px
    """
    if not isinstance(camera, str) or camera not in CAMERAS:
        raise FittingError(f"unknown camera {camera!r}; choose one of {list(CAMERAS)}")
    if camera == "pinhole":
        focal = _check_focal(focal_length)
        centre = _check_principal(principal_point, points2d)
        if focal is None and isinstance(solver, str) and solver in ("lbfgs", "adam"):
            raise FittingError(f"a fitted focal length needs solver='gauss-newton' (its distance is kept feasible "
                               f"there); pass focal_length=... to use solver={solver!r} with a pinhole")  # fmt: skip
    else:
        for name, val in (("focal_length", focal_length), ("principal_point", principal_point)):
            if val is not None:
                raise FittingError(f"{name} is a pinhole camera's: pass camera='pinhole' with it (the scaled-orthographic "
                                   "camera has neither)")  # fmt: skip
        focal = centre = None

    def make_pm(b=None, res=None):
        if camera != "pinhole":  # a contour round starts from the round before's camera (on 60 validation
            # faces at yaw 0-60 and 1 / 3 px: the same dense error and NLE within 0.013 mm / 0.0002, 14 % faster)
            if res is None:
                return _Camera2D()
            return _Camera2DFrom(np.concatenate([res.scale[b : b + 1].double().cpu().numpy(),
                                                 res.rotation[b].double().cpu().numpy().reshape(9),
                                                 res.translation[b].double().cpu().numpy()]))  # fmt: skip
        c = centre if b is None or centre.ndim == 1 else centre[b]
        dist = None if res is None or focal is not None else float(res.translation[b, 2])
        return _Pinhole2D(focal, c, dist)

    if contour not in (True, False):
        raise FittingError(f"contour must be True or False, got {contour!r}")
    noise_px = _noise_px_2d(noise_px, reg, prior, solver, landmarks, contour, weights, points2d)
    kw = dict(weights=weights, reg=reg, solver=solver, max_iters=max_iters, tol=tol, generator=generator,
              device=device, solver_options=solver_options, prior=prior, loss=loss, loss_scale=loss_scale)  # fmt: skip
    use_contour = contour and isinstance(landmarks, str) and landmarks == "ibug68"
    if not use_contour:
        return _fit(model, points2d, make_pm(), landmarks=landmarks, init=init, decode=decode, **kw)
    # the first fit leaves the jaw out (the inner 51 points fix the camera), the next ones place the
    # jaw points on the silhouette (plain least squares), the last one applies the loss
    if max_iters is not None and (isinstance(max_iters, bool) or not isinstance(max_iters, (int, np.integer))
                                  or max_iters < 1):  # fmt: skip
        raise FittingError(f"max_iters must be a positive integer, got {max_iters!r}")
    w0 = np.ones(68)
    w0[:17] = 0.0
    if weights is not None:
        try:
            wu = np.asarray(weights.detach().cpu().numpy() if isinstance(weights, torch.Tensor) else weights, np.float64)
        except (TypeError, ValueError, RuntimeError):
            wu = None
        # (68,) or (B, 68): the jaw left out; anything else goes to the first fit unchanged, which names the problem
        w0 = wu * w0 if wu is not None and wu.ndim in (1, 2) and wu.shape[-1] == 68 else weights
    res = _fit(model, points2d, make_pm(), landmarks=landmarks, init=init, decode=False,
               **{**kw, "loss": "l2", "weights": w0, "max_iters": kw["max_iters"] or _CONTOUR_ITERS})  # fmt: skip
    noise = None
    if noise_px is not None:  # each face's weight from its noise; the jaw-free fit again at it, from the start
        noise = _noise_2d(res, noise_px, w0)
        regs = reg_for_noise_2d(noise, off_frontal_deg(res.rotation.double().cpu().numpy()))
        first = res.iterations
        res = _fit(model, points2d, make_pm(), landmarks=landmarks, init=init, decode=False, _regs=regs,
                   **{**kw, "prior": "model", "loss": "l2", "weights": w0, "max_iters": kw["max_iters"] or _CONTOUR_ITERS})  # fmt: skip
        res.iterations = res.iterations + first
    with _one_blas_thread():  # one limit for every round's solves
        out = _contour_rounds(model, points2d, res, kw, decode, make_pm, None if noise is None else regs)
    if noise is not None:
        out.reg = torch.as_tensor(regs, dtype=torch.float64, device=out.codes.device)
        out.noise_mm = torch.as_tensor(noise, dtype=torch.float64, device=out.codes.device)
    return out


def _check_noise(name: str, value, unit: str, reg, prior) -> None:
    """A noise argument (``noise_mm`` / ``noise_px``): a finite number >= 0 or ``"auto"``, and
    not beside ``reg`` or ``prior="l2"``; a :class:`FittingError` naming the fix otherwise."""
    if isinstance(value, str):
        if value != AUTO:
            raise FittingError(f"{name} must be a number >= 0 ({unit} per coordinate) or {AUTO!r}, got {value!r}")
    elif isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not math.isfinite(value) or value < 0:  # fmt: skip
        raise FittingError(f"{name} must be a finite number >= 0 ({unit} per coordinate) or {AUTO!r}, got {value!r}")
    if reg is not None or prior == "l2":
        raise FittingError(f"{name} sets the model prior's weight: give either {name} or reg (and prior='l2' has no "
                           "noise model), not both")  # fmt: skip


def _noise_px_2d(noise_px, reg, prior, solver, landmarks, contour, weights, points2d):
    """``noise_px`` checked: a number (px), ``"auto"``, or None (the fixed default weight);
    refuses what cannot be honoured (see :func:`fit_landmarks_2d`)."""
    if noise_px is None:
        return None
    _check_noise("noise_px", noise_px, "pixels", reg, prior)
    needs = []
    if not (isinstance(landmarks, str) and landmarks == AUTO_LANDMARKS and contour is True):
        needs.append(f"landmarks={AUTO_LANDMARKS!r} with contour=True")
    if solver != "gauss-newton":
        needs.append("solver='gauss-newton'")
    if needs:
        raise FittingError("noise_px needs " + " and ".join(needs) + "; give reg (with prior='model') instead")
    if noise_px != AUTO:
        return float(noise_px)
    try:  # the estimate needs most inner points
        a = points2d.detach().cpu().double().numpy() if isinstance(points2d, torch.Tensor) else \
            np.asarray(points2d, np.float64)  # fmt: skip
        ok = np.isfinite(a).all(-1)
        if weights is not None:
            wa = weights.detach().cpu().double().numpy() if isinstance(weights, torch.Tensor) else \
                np.asarray(weights, np.float64)  # fmt: skip
            ok = ok & (np.broadcast_to(wa, ok.shape) > 0)
        n_inner = ok.reshape(-1, ok.shape[-1])[:, 17:].sum(1)
    except (TypeError, ValueError, RuntimeError, IndexError):
        return AUTO  # the first fit names the problem
    if n_inner.size and int(n_inner.min()) < AUTO_MIN_INNER_POINTS_2D:
        b = int(np.argmin(n_inner))
        raise FittingError(f"noise_px='auto' needs at least {AUTO_MIN_INNER_POINTS_2D} usable inner points (of the 51 "
                           f"after the jaw), got {int(n_inner[b])} (face {b}); give noise_px in pixels instead")  # fmt: skip
    return AUTO


def _noise_2d(res: FitResult, noise_px, w0) -> np.ndarray:
    """(B,) image noise in model-space mm of the faces of a jaw-free first fit: estimated from its
    residuals (``"auto"``) or the given pixels divided by each face's camera scale."""
    scale = res.scale.double().cpu().numpy()
    if noise_px != AUTO:
        return np.full(scale.shape, float(noise_px)) / scale
    d = res.residuals.double().cpu().numpy() / scale[:, None]  # model-space mm, NaN where missing
    valid = np.isfinite(d) & (np.broadcast_to(np.asarray(w0, np.float64), d.shape) > 0)
    return noise_from_level_2d(residual_level(np.where(valid, d, 0.0), valid))


def _check_focal(focal_length) -> float | None:
    """None, or the focal length (px) as a float > 0."""
    if focal_length is None:
        return None
    f = focal_length
    if isinstance(f, torch.Tensor) and f.numel() == 1 and f.is_floating_point():  # a 0-d / 1-element tensor
        f = f.item()
    elif isinstance(f, np.ndarray) and f.size == 1 and f.dtype.kind in "iuf":
        f = f.item()
    if isinstance(f, bool) or not isinstance(f, (int, float, np.integer, np.floating)) or not math.isfinite(f) or f <= 0:
        raise FittingError(f"focal_length must be a finite number of pixels > 0 (or None: fitted), got {focal_length!r}")
    return float(f)


def _check_principal(principal_point, points2d) -> np.ndarray:
    """(2,) or (B, 2) float64 principal point; default: the centre of each face's landmarks'
    bounding box (points the fit will refuse give (2,) zeros: the fit names their problem)."""
    if principal_point is None:
        try:
            a = points2d.detach().cpu().double().numpy() if isinstance(points2d, torch.Tensor) else \
                np.asarray(points2d, np.float64)  # fmt: skip
        except (TypeError, ValueError, RuntimeError):
            return np.zeros(2)
        if a.ndim not in (2, 3) or a.shape[-1] != 2 or a.size == 0:
            return np.zeros(2)
        a = a[None] if a.ndim == 2 else a
        ok = np.isfinite(a).all(-1, keepdims=True)
        with np.errstate(invalid="ignore"):
            c = 0.5 * (np.where(ok, a, np.inf).min(1) + np.where(ok, a, -np.inf).max(1))
        return np.where(np.isfinite(c), c, 0.0)
    try:
        pp = principal_point.detach().cpu().double().numpy() if isinstance(principal_point, torch.Tensor) else \
            np.asarray(principal_point, np.float64)  # fmt: skip
    except (TypeError, ValueError, RuntimeError) as exc:
        raise FittingError(f"principal_point must be (2,) or (B, 2) numbers (pixels), got {principal_point!r}") from exc
    if pp.ndim not in (1, 2) or pp.shape[-1] != 2 or pp.size == 0:
        raise FittingError(f"principal_point must have shape (2,) or (B, 2) (pixels), got {tuple(pp.shape)}")
    if not np.isfinite(pp).all():
        raise FittingError("principal_point must be finite numbers (pixels)")
    return pp


def _contour_rounds(model, points2d, res: FitResult, kw: dict, decode: bool, make_pm, regs=None) -> FitResult:
    """Re-fit each face with its jaw points moved to the silhouette of the last fit (see
    :mod:`facemodel.contour`), warm-started from its codes; ``regs`` (B,): each face's weight of
    the model prior (``noise_px``), else ``kw``'s."""
    from .contour import CONTOUR_ROUNDS, CONTOUR_SET_NAME, choose_contour

    P = points2d if isinstance(points2d, torch.Tensor) else np.asarray(points2d, np.float64)
    P = P[None] if P.ndim == 2 else P  # (checked by the first fit)
    w = kw.pop("weights")
    if w is not None and not isinstance(w, torch.Tensor):
        w = np.asarray(w, np.float64)
    iters = res.iterations.clone()
    # one landmark set (iBUG-68 and every contour candidate) and its head serve every round and face:
    # the candidates' positions come from it, and each face's head is a choice of its rows
    union = _contour_union(model)
    dtype = np.float64 if res.codes.dtype == torch.float64 else np.float32
    for rnd in range(1, CONTOUR_ROUNDS):
        z = res.codes.detach().cpu().numpy().astype(dtype)
        cand = _head(model, union, dtype).forward(z)[:, 3 * 68 :].reshape(len(z), -1, 3).astype(np.float64)
        pinhole = getattr(res, "focal_length", None) is not None
        choice = choose_contour(model, cand, res.rotation.double().cpu().numpy(),
                                res.translation.double().cpu().numpy() if pinhole else None)  # fmt: skip
        rows = np.where(choice >= 0, 68 + choice, np.arange(17))  # (B, 17) rows of the jaw points in the union
        rows = np.concatenate([rows, np.broadcast_to(np.arange(17, 68), (len(rows), 51))], 1)  # (B, 68)
        # each face's set: its rows of the validated union (the points contour_specs gives, without re-validating them)
        specs = [union.subset(r, name=CONTOUR_SET_NAME) for r in rows]
        kr = kw if rnd == CONTOUR_ROUNDS - 1 else {**kw, "loss": "l2", "max_iters": kw["max_iters"] or _MIDDLE_ITERS}
        per_face = (lambda b: kr) if regs is None else (lambda b: {**kr, "reg": float(regs[b]), "prior": "model"})
        parts = [_fit(model, P[b : b + 1], make_pm(b, res), landmarks=specs[b], init=res.codes[b : b + 1], decode=False,
                      weights=None if w is None else (w if w.ndim == 1 else w[b : b + 1]),
                      _union=(union, rows[b]), **per_face(b))
                 for b in range(P.shape[0])]  # fmt: skip
        res = _cat_results(parts)
        iters += res.iterations
    res.iterations = iters
    if decode:
        res._decoder = _decoder(model, res.codes, res.codes.device, res.codes.dtype)
    return res


def _cat_results(parts: list[FitResult]) -> FitResult:
    """One FitResult of per-face results (their landmark sets differ: the first is kept)."""
    if len(parts) == 1:
        return parts[0]
    cat = {}
    for name in ("codes", "scale", "rotation", "translation", "residuals", "rmse", "iterations", "converged",
                 "landmarks", "objective", "plausibility", "loss_weights"):  # fmt: skip
        cat[name] = torch.cat([getattr(p, name) for p in parts])
    for name in ("focal_length", "principal_point"):
        if parts[0].__dict__[name] is not None:
            cat[name] = torch.cat([getattr(p, name) for p in parts])
    p0 = parts[0]
    return FitResult(**cat, solver=p0.solver, align=p0.align, landmark_set=p0.landmark_set,
                     typical_range=p0.typical_range, prior=p0.prior, reg=p0.reg)  # fmt: skip
