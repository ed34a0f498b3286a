"""The pieces of :mod:`facemodel.fitting` that make fits plausible: the code prior in the
solver's coordinates, the default weights and the robust (IRLS) landmark loss.

Fitting under the prior :func:`facemodel.prior.code_prior` ``N(mean, L L^T)`` is done in
whitened coordinates ``u`` with ``z = mean + L u``: the generator's first layer becomes
``W1 L`` with bias ``b1 + W1 mean``, and the regulariser ``reg ||u||^2`` is the squared
Mahalanobis norm. The Gauss-Newton solver is unchanged; the codes are mapped back at the end.

Default weights (``reg`` when neither ``reg`` nor ``prior`` is given) were chosen on
validation faces the model never saw (upstream ICT faces, ``benchmarks/bench_fit_unseen.py
--select``, see docs/benchmarks.md): for 3D points, :func:`reg_for_noise` of the points'
expected noise (``noise_mm``, 1 mm per coordinate by default: ``DEFAULT_REG["3d"]``);
``DEFAULT_REG["2d"]`` for 2D detector points (~2 px on a face ~150 px wide, residuals
measured in model-space mm).
"""

from __future__ import annotations

import copy
import weakref

import numpy as np

from .prior import CodePrior

__all__ = ["PRIORS", "LOSSES", "DEFAULT_REG", "DEFAULT_NOISE_MM", "reg_for_noise", "AUTO", "AUTO_LANDMARKS",
           "AUTO_MIN_POINTS", "NOISE_CALIBRATION", "residual_level", "noise_from_level", "PRIOR_MAX_ITERS_GN", "PRIOR_TOL", "DEFAULT_LOSS_SCALE_MM", "resolve_prior", "whitened_head",
           "irls_weights", "NOISE_CALIBRATION_2D", "AUTO_MIN_INNER_POINTS_2D", "noise_from_level_2d", "reg_for_noise_2d",
           "off_frontal_deg"]  # fmt: skip

PRIORS = ("model", "l2")
LOSSES = ("l2", "huber")
#: the prior weight per landmark noise level, fitted on the 0.4.0 weights: the best weight on
#: validation faces at 0 / 0.5 / 1 / 2 mm of noise per coordinate was 0.05 (the smallest tried) /
#: 0.2-0.5 / 2 / 16 (of 0.05-32); ``0.05 + 2 noise^3`` gives 0.05 / 0.30 / 2.05 / 16.05, within
#: 0.01 mm of the best at each level (benchmarks/bench_fit_unseen.py --select, docs/benchmarks.md).
#: An empirical rule: no MAP-form ``a (noise^2 + c)`` is that close at every level. 0.3.1's rule
#: was 3.5 (noise^2 + 0.57). Checked on 0.5.0 and 0.6.0: within 0.05 mm of the best MAP weight
#: at each level (the best of both: 0.02 / 0.5 / 4 / 16), so kept.
_REG_FLOOR, _REG_PER_MM3 = 0.05, 2.0
#: the noise the default 3D weight assumes (mm per coordinate)
DEFAULT_NOISE_MM = 1.0


def reg_for_noise(noise_mm: float | np.ndarray) -> float | np.ndarray:
    """The weight of the Mahalanobis prior for 3D landmarks with ``noise_mm`` of Gaussian noise
    per coordinate (model-space mm): ``0.05 + 2 noise_mm^3``, fitted on validation faces with
    the 0.4.0 weights (0.05 for exact points, 0.30 at 0.5 mm, 2.05 at 1 mm, 16 at 2 mm). A
    number gives a float, an array (B,) per-face weights (float64)."""
    if np.ndim(noise_mm):
        return _REG_FLOOR + _REG_PER_MM3 * np.asarray(noise_mm, np.float64) ** 3
    return _REG_FLOOR + _REG_PER_MM3 * float(noise_mm) ** 3


#: ``noise_mm="auto"``: each face's landmark noise is estimated from the residuals of a first fit
#: at the 1 mm weight, then the face is fitted again (from the landmark regression at its weight, or
#: warm-started from the first fit when ``init`` codes were given) at ``reg_for_noise`` of the estimate
AUTO = "auto"
#: the landmark set the estimate is calibrated for, and the fewest usable points it needs
AUTO_LANDMARKS = "ibug68"
AUTO_MIN_POINTS = 60
#: (noise per coordinate in mm, the mean :func:`residual_level` of the first fit at that noise):
#: measured on 200 validation faces (upstream ICT, seed 2027) with the 0.7.0 weights and the
#: session-27 prior (half realistic expression block), ``benchmarks/bench_fit_unseen.py
#: --calibrate-noise`` (docs/benchmarks.md); re-measure when the weights or the prior change
#: (tests/test_fitting_auto_noise.py checks the estimate on other faces)
NOISE_CALIBRATION = (
    (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0),
    (0.6956, 0.7685, 0.9376, 1.1571, 1.3804, 1.7955, 2.1161, 2.5323, 2.7240),
)
#: the estimate's upper bound (mm): beyond it the first fit's residuals stop growing with the noise
AUTO_MAX_NOISE_MM = 5.0
#: the share of each face's landmarks the level keeps (the smallest residuals: a few detector
#: outliers do not raise the estimate)
_LEVEL_KEEP = 0.9


def residual_level(norms: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(B, K) landmark residual distances (model-space mm) and (B, K) bool usable points ->
    (B,) the root mean square of the smallest 90 % of each face's residuals (mm)."""
    d = np.where(valid, np.asarray(norms, np.float64), np.inf)
    d = np.sort(d, axis=1)
    keep = np.maximum(1, np.ceil(_LEVEL_KEEP * valid.sum(1))).astype(np.int64)
    take = np.arange(d.shape[1])[None, :] < keep[:, None]
    return np.sqrt((np.where(take, d, 0.0) ** 2).sum(1) / keep)


def noise_from_level(level: np.ndarray, calibration: tuple = NOISE_CALIBRATION) -> np.ndarray:
    """(B,) :func:`residual_level` of a first fit at the 1 mm weight -> (B,) estimated landmark
    noise per coordinate (mm): :data:`NOISE_CALIBRATION` (or ``calibration``) inverted (linear
    between its points, its last segment extended upwards), clipped to [0, 5] mm."""
    sig, lev = (np.asarray(a, np.float64) for a in calibration)
    level = np.asarray(level, np.float64)
    out = np.interp(level, lev, sig)
    slope = (sig[-1] - sig[-2]) / (lev[-1] - lev[-2])
    out = np.where(level > lev[-1], sig[-1] + (level - lev[-1]) * slope, out)
    return np.clip(out, 0.0, AUTO_MAX_NOISE_MM)


#: 2D fits (``fit_landmarks_2d(noise_px="auto")``, an option of contour-aware iBUG-68 fits): the
#: same estimate from the first, jaw-free fit (the 51 inner points at ``DEFAULT_REG["2d"]``, residuals
#: divided by the camera scale: model-space mm per image coordinate). (noise in model-space mm, mean
#: level): measured on 60 validation faces (upstream ICT, seed 2027) at yaw 0-60 degrees, 1.5 px/mm
#: (0 / 0.5 / 1 / 2 / 3 / 4 / 6 px), 0.7.0 weights, the session-27 prior (docs/benchmarks.md
#: "Choosing the 2D weight")
NOISE_CALIBRATION_2D = (
    (0.0, 0.3333, 0.6667, 1.3333, 2.0, 2.6667, 4.0),
    (0.919, 0.985, 1.154, 1.639, 2.112, 2.580, 3.347),
)
#: the fewest usable inner (non-jaw) points of the 51 for the 2D estimate
AUTO_MIN_INNER_POINTS_2D = 45
#: the 2D weight per noise ``s`` (model-space mm) and off-frontal angle ``a`` (degrees):
#: ``max(_REG2D_MIN, _REG2D_FLOOR + _REG2D_PER_MM2 s^2, _REG2D_SIDE (1 + _REG2D_SIDE_PER_MM2 s^2) ramp(a))``,
#: ``ramp`` rising linearly from 0 at ``_SIDE_FROM_DEG`` to 1 at ``_SIDE_FULL_DEG``
_REG2D_MIN, _REG2D_FLOOR, _REG2D_PER_MM2 = 1.0, 0.1, 4.5
_REG2D_SIDE, _REG2D_SIDE_PER_MM2, _SIDE_FROM_DEG, _SIDE_FULL_DEG = 4.0, 0.5, 5.0, 25.0


def noise_from_level_2d(level: np.ndarray) -> np.ndarray:
    """(B,) :func:`residual_level` of the jaw-free first 2D fit (model-space mm) -> (B,) estimated
    image noise per coordinate in model-space mm (pixels / camera scale), via
    :data:`NOISE_CALIBRATION_2D`, clipped to [0, 5] mm."""
    return noise_from_level(level, NOISE_CALIBRATION_2D)


def off_frontal_deg(rotation: np.ndarray) -> np.ndarray:
    """(B, 3, 3) rotations taking model space to the camera (model +z: out of the face) -> (B,)
    angle in degrees between the face's forward axis and the viewing axis (0: frontal, 90:
    profile), whatever the image's y convention."""
    c = np.abs(np.asarray(rotation, np.float64)[:, 2, 2])
    return np.degrees(np.arccos(np.clip(c, 0.0, 1.0)))


def reg_for_noise_2d(noise_mm: np.ndarray, angle_deg: np.ndarray) -> np.ndarray:
    """(B,) image noise in model-space mm (pixels / camera scale) and (B,) off-frontal angle
    (degrees, :func:`off_frontal_deg`) -> (B,) weight of the Mahalanobis prior for a
    contour-aware 2D fit: ``max(1, 0.1 + 4.5 noise^2)`` for frontal faces (1 up to 0.44 mm,
    4.6 at 1 mm, 18.1 at 2 mm), and for faces turned 25 degrees or more at least
    ``4 (1 + 0.5 noise^2)`` (rising from nothing at 5 degrees): with the jaw on the silhouette a
    turned face's depth is less constrained, and on validation faces weights below ~4 lost up to
    2 mm there even for exact points. Chosen on 60 validation faces at 46 views and noise levels
    (``benchmarks/bench_fit_unseen.py --select-2d``, docs/benchmarks.md "Choosing the 2D weight")."""
    s = np.asarray(noise_mm, np.float64)
    ramp = np.clip((np.asarray(angle_deg, np.float64) - _SIDE_FROM_DEG) / (_SIDE_FULL_DEG - _SIDE_FROM_DEG), 0.0, 1.0)
    frontal = np.maximum(_REG2D_MIN, _REG2D_FLOOR + _REG2D_PER_MM2 * s * s)
    return np.maximum(frontal, _REG2D_SIDE * (1.0 + _REG2D_SIDE_PER_MM2 * s * s) * ramp)


#: default weight of the Mahalanobis prior, per kind of fit (see the module docstring)
DEFAULT_REG = {"3d": reg_for_noise(DEFAULT_NOISE_MM), "2d": 8.0}  # 2d: the best of 0.5-32 at 2 px (0.4.0)
#: the old default: the paper's lambda on ||z||^2
L2_DEFAULT_REG = 0.01
#: Huber threshold on a landmark's residual (model-space mm; 2D: image residual / camera scale)
DEFAULT_LOSS_SCALE_MM = 3.0
#: Gauss-Newton defaults under the model prior. tol: on validation faces (3D at 0-2 mm noise, 2D at
#: yaw 0-60 deg; benchmarks/bench_fit_unseen.py --select --tols) stopping at a relative decrease of
#: 3e-2 instead of 1e-5 gives the same or a lower 3D dense error (within 0.02 mm; the MAP optimum is
#: no closer to the true face than the early stop from the linear start) and a 2D one within 0.01 mm,
#: in 2.2 iterations instead of 9 (3D; 7-8 instead of 26 for a contour-aware 2D fit)
PRIOR_MAX_ITERS_GN = 20
PRIOR_TOL = 3e-2
ROBUST_ROUNDS = 1  # IRLS re-solves after the first fit (warm-started)


def resolve_prior(prior: str | None, reg: float | None, kind: str, noise_mm: float | None = None) -> tuple[str, float | None]:
    """(prior, reg) from the user's arguments: neither given -> the model prior at its default
    weight (3D: :func:`reg_for_noise` of ``noise_mm`` when given); only ``reg`` -> the old
    ``reg ||z||^2`` (``"l2"``); ``prior`` without ``reg`` -> that prior's default weight. ``reg``
    is returned unchecked (None stays None for the checks); ``noise_mm`` is checked by the caller
    (``"auto"``: the 1 mm weight, that of the first of the two fits)."""
    if prior is None:
        prior = "l2" if reg is not None else "model"
    if reg is None and prior in PRIORS:
        if prior == "model":
            reg = DEFAULT_REG[kind] if noise_mm is None or noise_mm == AUTO else reg_for_noise(noise_mm)
        else:
            reg = L2_DEFAULT_REG
    return prior, reg


_WHITE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def whitened_head(head, prior: CodePrior):
    """A copy of a landmark head taking whitened codes ``u`` (``z = mean + L u``), cached per head
    and prior. The landmark rows (``A``, ``c``) are shared; the first layer is re-expressed."""
    try:
        hit = _WHITE.get(head)
    except TypeError:
        hit = None
    if hit is not None and hit[0] is prior:
        return hit[1]
    out = copy.copy(head)
    if not hasattr(head, "W1"):  # any generator of the interface: whiten at the generator's input
        out._whiten = (np.asarray(prior.mean, np.float64), np.asarray(prior.chol, np.float64))
        out._m0, out._reg = None, None
        try:
            _WHITE[head] = (prior, out)
        except TypeError:
            pass
        return out
    W1 = head.W1.astype(np.float64)
    out.W1 = np.ascontiguousarray((W1 @ prior.chol).astype(head.dtype))
    out.W1t = np.ascontiguousarray(out.W1.T)
    out.b1 = (head.b1.astype(np.float64) + W1 @ prior.mean).astype(head.dtype)
    out._bases, out._m0, out._reg = None, None, None  # caches that depend on the first layer
    out._parent = out._rows = None  # (a row head's Jacobians come from its own rows from now on)
    try:
        _WHITE[head] = (prior, out)
    except TypeError:
        pass
    return out


def irls_weights(residual_norms: np.ndarray, scale: float) -> np.ndarray:
    """Huber IRLS factors ``min(1, scale / r)`` for (B, K) residual norms (model-space mm)."""
    r = np.asarray(residual_norms, np.float64)
    return np.where(r > scale, scale / np.maximum(r, 1e-300), 1.0)
