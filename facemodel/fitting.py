"""Fitting the model to sparse landmarks (paper §5, "Reconstruction of Sparse Data", Eq. 13).

The paper fits a code ``z`` to ``p`` 3D key points by

    argmin_z  sum_i ||v~_i(z) - v_i||^2 + lambda ||z||^2                      (13)

with Adam from a random code. Here the points may come in any scale and pose, so a
similarity (or rigid) transform is estimated with ``z``; the objective minimised is Eq. 13
in **model space**::

    E(z, S) = sum_i w_i ||v~_i(z) - S(p_i)||^2 + reg * ||z||^2

where ``S`` maps the input points into the model's frame, so the data term is in **mm^2**
(whatever the input units) and ``reg`` is the paper's lambda on the raw code (codes are
~N(0, I) under the generator's prior). Residuals and RMSE in :class:`FitResult` are
reported in the **input's units**.

Solvers:

- ``"gauss-newton"`` (default, fast): Levenberg-Marquardt on ``z`` and the pose together,
  with the analytic Jacobian ``J = W2[rows] diag(lrelu'(h)) W1`` of the landmark rows
  only (the full 3V output is never evaluated in the loop; the Jacobian is updated
  incrementally for hidden units whose LeakyReLU branch changed), the pose re-solved in
  closed form (weighted Umeyama) at every trial point (variable projection). Batched over
  faces with per-face damping and stopping: a batch gives the per-face results.
- ``"lbfgs"``: :class:`torch.optim.LBFGS` on ``z``, alternated with the closed-form pose.
- ``"adam"``: the paper's protocol, Adam from a random code (default 1000 steps,
  lr 0.01), pose re-solved every 10 steps. Kept as the comparison baseline.

:func:`fit_landmarks_2d` fits 2D landmarks under a scaled-orthographic camera
``x = s R[:2] v + t`` solved jointly with ``z`` (data term divided by ``s^2``, i.e. again
in model-space mm^2).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import FaceModelError
from .landmarks import LandmarkSet, landmark_set

__all__ = ["FitResult", "FittingError", "fit_landmarks", "fit_landmarks_2d", "SOLVERS", "ALIGNMENTS"]

SOLVERS = ("gauss-newton", "lbfgs", "adam")
ALIGNMENTS = ("similarity", "rigid", "none")
CAMERAS = ("scaled_orthographic",)
DEFAULT_MAX_ITERS = {"gauss-newton": 50, "lbfgs": 20, "adam": 1000}
_CHUNK = 256  # faces per batched Gauss-Newton chunk (bounds memory: ~40 MB of Jacobians)
_MAX_REJECTS = 6  # consecutive rejected LM steps before stopping


class FittingError(FaceModelError, ValueError):
    """Invalid input to a fit: shapes, non-finite values, missing landmarks, devices,
    dtypes, or an unknown solver / alignment / init."""


# ---- result ---------------------------------------------------------------------------------
@dataclass(eq=False)
class FitResult:
    """Result of :func:`fit_landmarks` / :func:`fit_landmarks_2d` (batched, B faces).

    Attributes:
        vertices: (B, V, 3) fitted meshes in model space (mm); ``None`` with ``decode=False``.
        codes: (B, D) fitted codes.
        scale, rotation, translation: (B,), (B, 3, 3), (B, 3) similarity mapping model
            space to the points' space, ``p ~ scale * rotation @ v + translation``. For 2D
            fits the camera: ``x ~ scale * rotation[:2] @ v + translation`` with
            translation (B, 2).
        residuals: (B, K) distance of each fitted landmark to its point, in the input's
            units (NaN for missing points).
        rmse: (B,) root mean square of the residuals over the points with weight > 0.
        iterations: (B,) int64 iterations each face took (outer iterations of the solver).
        converged: (B,) bool, the relative change of the objective fell below ``tol``.
        landmarks: (B, K, 3) fitted landmark positions in model space (mm).
        objective: (B,) final value of the objective (model-space mm^2, Eq. 13 with weights).
        solver, align: what was used (``align`` is the camera name for 2D fits).
    """

    vertices: torch.Tensor | None
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
    extras: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    @property
    def transform(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(scale, rotation, translation)``."""
        return self.scale, self.rotation, self.translation

    def transform_points(self, x: torch.Tensor | None = None) -> torch.Tensor:
        """Map model-space points (B, N, 3) (default: the fitted vertices) into the input's
        space: ``scale R x + t`` (3D) or the camera projection (B, N, 2) (2D fits)."""
        if x is None:
            if self.vertices is None:
                raise FittingError("this result holds no vertices (fit with decode=True) ; pass points to map")
            x = self.vertices
        x = torch.as_tensor(x, dtype=self.rotation.dtype, device=self.rotation.device)
        y = torch.einsum("bij,bnj->bni", self.rotation, x)
        if self.translation.shape[-1] == 2:
            y = y[..., :2]
        return self.scale[:, None, None] * y + self.translation[:, None, :]


# ---- the landmark head: z -> landmark positions with only the landmark rows ------------------
class _Head:
    """Landmark rows of the generator: ``m(z) = A lrelu(W1 z + b1) + c`` (3K outputs, mm)."""

    def __init__(self, model: torch.nn.Module, lmk: LandmarkSet, device: torch.device, dtype: torch.dtype) -> None:
        g = model.generator
        with torch.no_grad():
            idx = lmk.vertex_indices.to(g.fc2.weight.device)
            bary = lmk.barycentrics.to(g.fc2.weight.device, torch.float64)
            flat = idx.reshape(-1)
            W, b = g.last_layer_rows(flat)  # (3*3K, H), (3*3K,) scaled to mm
            K, H = idx.shape[0], W.shape[1]
            tmpl = model.template[flat].reshape(-1)  # (3K*3,) corner positions
            W = W.double().view(K, 3, 3, H)  # (landmark, corner, xyz, H)
            b = (b.double() + tmpl.double()).view(K, 3, 3)
            if lmk.is_vertex_set:  # bit-exact rows of the vertex
                A, c = W[:, 0], b[:, 0]
            else:
                A = (W * bary[:, :, None, None]).sum(1)
                c = (b * bary[:, :, None]).sum(1)
            self.A = A.reshape(3 * K, H).to(device, dtype).contiguous()
            self.At = self.A.t().contiguous()  # (H, 3K)
            self.c = c.reshape(3 * K).to(device, dtype).contiguous()
            self.W1 = g.fc1.weight.detach().to(device, dtype).contiguous()  # (H, D)
            self.W1t = self.W1.t().contiguous()
            self.b1 = g.fc1.bias.detach().to(device, dtype).contiguous()
        self.slope = float(g.act.negative_slope)
        self.K, self.H, self.D = K, H, self.W1.shape[1]
        self.device, self.dtype = device, dtype
        self._J0: torch.Tensor | None = None

    def pre(self, z: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.b1, z, self.W1t)

    def landmarks_from_pre(self, pre: torch.Tensor) -> torch.Tensor:
        """(n, H) pre-activations -> (n, 3K) landmark coordinates (mm)."""
        return torch.addmm(self.c, F.leaky_relu(pre, self.slope), self.At)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.landmarks_from_pre(self.pre(z))

    def jacobian(self, mask: torch.Tensor) -> torch.Tensor:
        """(n, H) bool active units -> (n, 3K, D) Jacobian ``A diag(lrelu') W1``."""
        a = torch.where(mask, 1.0, self.slope).to(self.dtype)
        return torch.matmul(self.A, a[:, :, None] * self.W1)

    def jacobian_at_zero(self, n: int) -> torch.Tensor:
        if self._J0 is None:
            self._J0 = self.jacobian(self.b1[None] > 0)[0]
        return self._J0.expand(n, -1, -1).clone()

    def update_jacobian(self, J: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """Jacobian at mask ``new`` from the one at ``old``: only flipped units are added."""
        flips = old != new
        nf = int(flips.sum(1).max()) if flips.numel() else 0
        if nf == 0:
            return J
        if nf * 3 > self.H:
            return self.jacobian(new)
        _, idx = torch.topk(flips.to(self.dtype), nf, dim=1)  # flipped units first, padding after
        sign = (new.gather(1, idx).to(self.dtype) - old.gather(1, idx).to(self.dtype)) * (1.0 - self.slope)
        Ag = self.At[idx] * sign[..., None]  # (n, nf, 3K); padded units have sign 0
        return torch.baddbmm(J, Ag.transpose(1, 2), self.W1[idx])


_HEADS: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def _head(model: torch.nn.Module, lmk: LandmarkSet, device: torch.device, dtype: torch.dtype) -> _Head:
    g = model.generator
    tensors = (g.fc1.weight, g.fc1.bias, g.fc2.weight, g.fc2.bias, model.template)
    key = (
        lmk.vertex_indices.numpy().tobytes(),
        lmk.barycentrics.numpy().tobytes(),
        str(device),
        dtype,
        float(g.scale),
        float(g.act.negative_slope),
        tuple((t.data_ptr(), t._version, t.dtype, str(t.device)) for t in tensors),
    )
    try:
        cache = _HEADS.setdefault(model, {})
    except TypeError:  # not weak-referenceable
        return _Head(model, lmk, device, dtype)
    head = cache.get(key)
    if head is None:
        if len(cache) >= 8:
            cache.clear()
        head = cache[key] = _Head(model, lmk, device, dtype)
    return head


# ---- input checks ---------------------------------------------------------------------------
def _model_dtype_device(model: torch.nn.Module) -> tuple[torch.dtype, torch.device]:
    if not hasattr(model, "generator") or not hasattr(model.generator, "last_layer_rows"):
        raise FittingError(f"expected a FaceModel (with a generator), got {type(model).__name__}")
    w = model.generator.fc1.weight
    dtype = torch.float64 if w.dtype == torch.float64 else torch.float32
    return dtype, w.device


def _to_tensor(x: Any, what: str, dtype: torch.dtype, device: torch.device, explicit_device: bool) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        if x.device != device and not explicit_device:
            raise FittingError(
                f"{what} are on {x.device} but the model is on {device}: move them with .to({str(device)!r}) "
                "or pass device=..."
            )
        if x.is_complex() or not (x.is_floating_point() or x.dtype in (torch.bool, torch.int32, torch.int64)):
            raise FittingError(f"{what} must be real numbers, got dtype {x.dtype}")
        if x.is_floating_point() and x.dtype != dtype and what in ("points", "init codes"):
            raise FittingError(
                f"{what} are {x.dtype} but the model computes in {dtype}: pass {what.split()[0]}.to({dtype}) "
                "(numpy arrays and lists are converted automatically)"
            )
        if not x.is_floating_point() and what in ("points", "init codes"):
            raise FittingError(f"{what} must be floating point, got {x.dtype}; pass {what.split()[0]}.to({dtype})")
        return x.detach().to(device=device, dtype=dtype)
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise FittingError(f"{what} must be an array of numbers, got {type(x).__name__}: {exc}") from exc
    return torch.as_tensor(arr).to(device=device, dtype=dtype)


def _check_points(points, weights, lmk, dim, dtype, device, explicit_device):
    """-> P (B, K, dim) with missing rows zeroed, w (B, K), present (B, K) bool, squeeze."""
    what = "2D points" if dim == 2 else "points"
    P = _to_tensor(points, "points", dtype, device, explicit_device)
    squeeze = P.ndim == 2
    if squeeze:
        P = P[None]
    K = len(lmk)
    if P.ndim != 3 or P.shape[-1] != dim:
        other = "fit_landmarks_2d for (K, 2) image points" if dim == 3 else "fit_landmarks for (K, 3) points"
        raise FittingError(f"{what} must have shape (K, {dim}) or (B, K, {dim}), got {tuple(points.shape if hasattr(points, 'shape') else P.shape)}; use {other}")
    if P.shape[0] == 0:
        raise FittingError("empty batch: points have shape (0, K, %d); pass at least one face" % dim)
    if P.shape[1] != K:
        raise FittingError(
            f"got {P.shape[1]} points per face but landmark set {lmk.name!r} has {K} landmarks; "
            "pass landmarks= matching your points (names, vertex indices or (triangles, barycentrics)), "
            "with missing points as NaN rows"
        )
    if bool(torch.isinf(P).any()):
        b, k = (int(i) for i in torch.isinf(P).any(-1).nonzero()[0])
        raise FittingError(f"points contain inf (face {b}, landmark {k}); mark missing landmarks with NaN rows or weight 0")
    present = ~torch.isnan(P).any(-1)
    B = P.shape[0]
    if weights is None:
        w = torch.ones(B, K, dtype=dtype, device=device)
    else:
        w = _to_tensor(weights, "weights", dtype, device, explicit_device)
        if w.ndim == 1 and w.shape[0] == K:
            w = w[None].expand(B, K)
        if tuple(w.shape) != (B, K):
            raise FittingError(f"weights must have shape ({K},) or ({B}, {K}), got {tuple(w.shape)}")
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise FittingError("weights must be finite and >= 0 (use 0, or NaN points, for missing landmarks)")
    w = torch.where(present, w, torch.zeros((), dtype=dtype, device=device))
    P = torch.where(present[..., None], P, torch.zeros((), dtype=dtype, device=device))
    return P, w, present, squeeze


def _check_common(model, reg, tol, max_iters, solver, init, generator):
    if solver not in SOLVERS:
        raise FittingError(f"unknown solver {solver!r}; choose one of {list(SOLVERS)}")
    if isinstance(reg, bool) or not isinstance(reg, (int, float)) or not math.isfinite(reg) or reg < 0:
        raise FittingError(f"reg must be a finite number >= 0 (the lambda of Eq. 13), got {reg!r}")
    if not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
        raise FittingError(f"tol must be a finite number >= 0, got {tol!r}")
    if max_iters is None:
        max_iters = DEFAULT_MAX_ITERS[solver]
    if isinstance(max_iters, bool) or not isinstance(max_iters, (int, np.integer)) or max_iters < 1:
        raise FittingError(f"max_iters must be a positive integer, got {max_iters!r}")
    if generator is not None and not isinstance(generator, (torch.Generator, int)):
        raise FittingError(f"generator must be a torch.Generator or an int seed, got {type(generator).__name__}")
    return int(max_iters)


def _initial_codes(init, solver, B, D, dtype, device, explicit_device, generator) -> torch.Tensor:
    if init is None:
        init = "random" if solver == "adam" else "mean"
    if isinstance(init, str):
        if init == "mean":
            return torch.zeros(B, D, dtype=dtype, device=device)
        if init == "random":
            if isinstance(generator, int):
                generator = torch.Generator().manual_seed(generator)
            if generator is None:
                generator = torch.Generator().manual_seed(0)
            return torch.randn(B, D, generator=generator, dtype=torch.float64).to(device, dtype)
        raise FittingError(f"unknown init {init!r}; use 'mean', 'random' or a tensor of codes ({D},) / (B, {D})")
    z = _to_tensor(init, "init codes", dtype, device, explicit_device)
    if z.ndim == 1:
        z = z[None]
    if z.ndim != 2 or z.shape[1] != D or z.shape[0] not in (1, B):
        raise FittingError(f"init codes must have shape ({D},) or ({B}, {D}), got {tuple(z.shape)}")
    if not bool(torch.isfinite(z).all()):
        raise FittingError("init codes contain NaN or inf")
    return z.expand(B, D).clone()


def _options(solver_options: Mapping | None, allowed: dict) -> dict:
    opts = dict(allowed)
    for k, v in (solver_options or {}).items():
        if k not in allowed:
            raise FittingError(f"unknown solver option {k!r} for this solver; known: {sorted(allowed)}")
        opts[k] = v
    return opts


# ---- closed-form alignment --------------------------------------------------------------------
def _umeyama(src: torch.Tensor, dst: torch.Tensor, w: torch.Tensor, with_scale: bool):
    """Weighted similarity ``s R src + t ~ dst`` (least squares). (n,K,3) x2, (n,K) -> s, R, t."""
    wn = w / w.sum(1, keepdim=True)
    ms = torch.einsum("nk,nki->ni", wn, src)
    md = torch.einsum("nk,nki->ni", wn, dst)
    sc, dc = src - ms[:, None], dst - md[:, None]
    C = torch.einsum("nk,nki,nkj->nij", wn, dc, sc).double()
    U, S, Vh = torch.linalg.svd(C)
    d = torch.sign(torch.linalg.det(U) * torch.linalg.det(Vh))
    d = torch.where(d == 0, torch.ones_like(d), d)
    sg = torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1)
    R = (U * sg[:, None, :]) @ Vh
    if with_scale:
        var = torch.einsum("nk,nk->n", wn, sc.pow(2).sum(-1)).double()
        s = (S * sg).sum(-1) / var.clamp_min(torch.finfo(torch.float64).tiny)
    else:
        s = torch.ones_like(d)
    R = R.to(src.dtype)
    s = s.to(src.dtype)
    t = md - s[:, None] * torch.einsum("nij,nj->ni", R, ms)
    return s, R, t


def _skew_cols(q: torch.Tensor) -> torch.Tensor:
    """(n,K,3) -> (n,K,3,3) cross-product matrices [q]x."""
    z = torch.zeros_like(q[..., 0])
    x, y, w = q.unbind(-1)
    return torch.stack([torch.stack([z, -w, y], -1), torch.stack([w, z, -x], -1), torch.stack([-y, x, z], -1)], -2)


def _so3_exp(omega: torch.Tensor) -> torch.Tensor:
    """Rodrigues: (n, 3) axis-angle -> (n, 3, 3) rotations."""
    theta2 = (omega * omega).sum(-1)
    theta = theta2.sqrt()
    small = theta2 < 1e-12
    ts = torch.where(small, torch.ones_like(theta), theta)
    a = torch.where(small, 1 - theta2 / 6, torch.sin(ts) / ts)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(ts)) / (ts * ts))
    Kx = _skew_cols(omega[:, None])[:, 0]
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device)
    return eye + a[:, None, None] * Kx + b[:, None, None] * (Kx @ Kx)


# ---- pose models (3D similarity / rigid / none; 2D scaled orthographic) ------------------------
class _Pose3D:
    """Points -> model space: q = s R p + t; residual r = m - q (model-space mm)."""

    dim = 3

    def __init__(self, align: str) -> None:
        self.align = align
        self.n_params = {"similarity": 7, "rigid": 6, "none": 0}[align]

    def init(self, P, w, m):
        return self.solve(P, w, m)

    def solve(self, P, w, m):
        n = P.shape[0]
        if self.align == "none":
            eye = torch.eye(3, dtype=P.dtype, device=P.device).expand(n, 3, 3).contiguous()
            return {"s": P.new_ones(n), "R": eye, "t": P.new_zeros(n, 3)}
        s, R, t = _umeyama(P, m.view(n, -1, 3), w, self.align == "similarity")
        return {"s": s, "R": R, "t": t}

    def mapped(self, P, pose):
        return pose["s"][:, None, None] * torch.einsum("nij,nkj->nki", pose["R"], P) + pose["t"][:, None]

    def residual(self, P, m, pose):
        return m - self.mapped(P, pose).reshape(m.shape)

    def jacobian(self, P, m, pose, Jz):
        if self.n_params == 0:
            return Jz
        n, M, _ = Jz.shape
        q = self.mapped(P, pose)  # (n, K, 3)
        K = q.shape[1]
        cols = [_skew_cols(q)]  # d r / d omega = [q]x
        if self.align == "similarity":
            cols.insert(0, -q[..., None])  # d r / d log s
        eye = -torch.eye(3, dtype=q.dtype, device=q.device).expand(n, K, 3, 3)
        cols.append(eye)
        Jp = torch.cat(cols, -1).reshape(n, M, self.n_params)
        return torch.cat([Jz, Jp], -1)

    def trial(self, P, w, m_new, pose, dp):
        return self.solve(P, w, m_new)  # variable projection: the optimal pose for the new z

    def to_input(self, pose):
        """Model -> input: (scale, rotation, translation) and the per-landmark distance factor."""
        s, R, t = pose["s"], pose["R"], pose["t"]
        Rt = R.transpose(1, 2)
        return 1.0 / s, Rt, -torch.einsum("nij,nj->ni", Rt, t) / s[:, None], 1.0 / s


class _Camera2D:
    """Scaled orthographic camera x = s R[:2] m + t; residual r = R[:2] m - (p - t) / s (mm)."""

    dim = 2
    n_params = 6  # log s, omega (3, right-multiplied: model frame), t (2, in units of s)
    align = "scaled_orthographic"

    def init(self, P, w, m):
        """Weighted affine fit p ~ A m + t, then A's nearest scaled 2x3 row-orthonormal."""
        n = P.shape[0]
        m3 = m.view(n, -1, 3)
        wn = w / w.sum(1, keepdim=True)
        mm_ = torch.einsum("nk,nki->ni", wn, m3)
        mp = torch.einsum("nk,nki->ni", wn, P)
        mc, pc = (m3 - mm_[:, None]).double(), (P - mp[:, None]).double()
        wd = wn.double()
        Cmm = torch.einsum("nk,nki,nkj->nij", wd, mc, mc)
        Cpm = torch.einsum("nk,nki,nkj->nij", wd, pc, mc)  # (n, 2, 3)
        eye = torch.eye(3, dtype=torch.float64, device=P.device)
        A = torch.linalg.solve(Cmm + 1e-9 * Cmm.diagonal(0, 1, 2).sum(-1)[:, None, None] * eye, Cpm.transpose(1, 2)).transpose(1, 2)
        U, S, Vh = torch.linalg.svd(A, full_matrices=False)  # (n,2,2), (n,2), (n,2,3)
        R2 = U @ Vh
        r3 = torch.linalg.cross(R2[:, 0], R2[:, 1])
        R = torch.cat([R2, r3[:, None]], 1).to(P.dtype)
        s = S.mean(-1).to(P.dtype)
        t = mp - s[:, None] * torch.einsum("nij,nj->ni", R[:, :2], mm_)
        return {"s": s, "R": R, "t": t}

    def solve(self, P, w, m):
        return self.init(P, w, m)

    def residual(self, P, m, pose):
        n = P.shape[0]
        proj = torch.einsum("nij,nkj->nki", pose["R"][:, :2], m.view(n, -1, 3))
        u = (P - pose["t"][:, None]) / pose["s"][:, None, None]
        return (proj - u).reshape(n, -1)

    def jacobian(self, P, m, pose, Jz):
        n = P.shape[0]
        D = Jz.shape[-1]
        K = P.shape[1]
        R2 = pose["R"][:, :2]
        Jzp = torch.einsum("nij,nkjd->nkid", R2, Jz.view(n, K, 3, D))  # (n, K, 2, D)
        m3 = m.view(n, K, 3)
        u = (P - pose["t"][:, None]) / pose["s"][:, None, None]
        # d r / d omega (R <- R Exp(omega)): row i = (m x r_i)^T
        Jw = torch.stack([torch.linalg.cross(m3, R2[:, i, None].expand_as(m3)) for i in range(2)], 2)  # (n,K,2,3)
        eye = torch.eye(2, dtype=P.dtype, device=P.device).expand(n, K, 2, 2)
        Jp = torch.cat([u[..., None], Jw, eye], -1)  # d log s, omega, t/s
        return torch.cat([Jzp, Jp], -1).reshape(n, 2 * K, D + 6)

    def trial(self, P, w, m_new, pose, dp):
        ds, om, dt = dp[:, 0], dp[:, 1:4], dp[:, 4:6]
        s = pose["s"]
        return {"s": s * torch.exp(ds), "R": pose["R"] @ _so3_exp(om), "t": pose["t"] + s[:, None] * dt}

    def to_input(self, pose):
        return pose["s"], pose["R"], pose["t"], pose["s"]


# ---- Gauss-Newton / Levenberg-Marquardt ---------------------------------------------------------
def _energy(r: torch.Tensor, w_rows: torch.Tensor, z: torch.Tensor, reg: float) -> torch.Tensor:
    rd = r.double()
    return (w_rows * rd * rd).sum(1) + reg * (z.double() ** 2).sum(1)


def _gn_chunk(head: _Head, pm, P, w, z0, reg, max_iters, tol, damping):
    n, K, _ = P.shape
    D = head.D
    dr = pm.dim
    w_rows = w.double().repeat_interleave(dr, 1)  # (n, K*dr) weights per residual coordinate
    sw = w_rows.sqrt().to(P.dtype)
    wsum = w.double().sum(1)
    eps = torch.finfo(P.dtype).eps

    z = z0.clone()
    pre = head.pre(z)
    mask = pre > 0
    m = head.landmarks_from_pre(pre)
    Jz = head.jacobian_at_zero(n) if not bool(z.any()) else head.jacobian(mask)
    pose = pm.init(P, w, m)
    r = pm.residual(P, m, pose)
    E = _energy(r, w_rows, z, reg)
    # a floor under which the fit is exact to float precision (noise-free data)
    floor = wsum * (16 * eps * m.abs().amax(1).double()).pow(2)

    mu = torch.full((n,), float(damping), dtype=torch.float64, device=P.device)
    iters = torch.zeros(n, dtype=torch.long, device=P.device)
    rejects = torch.zeros(n, dtype=torch.long, device=P.device)
    converged = E <= floor
    ids = torch.arange(n, device=P.device)
    out = {"z": z.clone(), "m": m.clone(), "E": E.clone(), "iters": iters.clone(), "conv": converged.clone(),
           "pose": {k: v.clone() for k, v in pose.items()}}  # fmt: skip
    active = ~converged
    if not bool(active.all()):
        sel = active.nonzero()[:, 0]
        ids, P, w, w_rows, sw, z, pre, mask, m, Jz, E, mu, iters, rejects, floor = (
            t[sel] for t in (ids, P, w, w_rows, sw, z, pre, mask, m, Jz, E, mu, iters, rejects, floor)
        )
        pose = {k: v[sel] for k, v in pose.items()}
        r = r[sel]
    P_total = D + pm.n_params
    reg_diag = torch.zeros(P_total, dtype=torch.float64, device=P.device)
    reg_diag[:D] = reg

    while ids.numel():
        J = pm.jacobian(P, m, pose, Jz)
        Jw = J * sw[..., None]
        N = (Jw.transpose(1, 2) @ Jw).double()
        g = (Jw.transpose(1, 2) @ (r * sw)[..., None])[..., 0].double()
        g[:, :D] += reg * z.double()
        N = N + torch.diag(reg_diag)
        diag = N.diagonal(0, 1, 2)
        Nd = N + torch.diag_embed(mu[:, None] * diag + 1e-12 * diag.amax(1, keepdim=True))
        delta = torch.linalg.solve(Nd, -g)
        pred = -(2 * (g * delta).sum(1) + (delta * (N @ delta[..., None])[..., 0]).sum(1))
        dz = delta[:, :D].to(z.dtype)
        z_new = z + dz
        pre_new = head.pre(z_new)
        m_new = head.landmarks_from_pre(pre_new)
        pose_new = pm.trial(P, w, m_new, pose, delta[:, D:].to(z.dtype))
        r_new = pm.residual(P, m_new, pose_new)
        E_new = _energy(r_new, w_rows, z_new, reg)
        ok = torch.isfinite(E_new)
        accept = ok & (E_new < E)
        decrease = torch.where(accept, E - E_new, torch.zeros_like(E))
        rejects = torch.where(accept, torch.zeros_like(rejects), rejects + 1)
        iters = iters + 1
        E_next = torch.where(accept, E_new, E)
        conv = (accept & (decrease <= tol * E)) | (pred <= tol * E) | (E_next <= floor) | (rejects >= _MAX_REJECTS)
        # accept
        a2 = accept[:, None]
        z = torch.where(a2, z_new, z)
        pre = torch.where(a2, pre_new, pre)
        m = torch.where(a2, m_new, m)
        pose = {k: torch.where(accept.view(-1, *([1] * (v.ndim - 1))), pose_new[k], v) for k, v in pose.items()}
        r = torch.where(a2, r_new, r)
        E = E_next
        mu = torch.where(accept, (mu * 0.2).clamp_min(1e-12), (mu * 10).clamp_min(1e-6))
        done = conv | (iters >= max_iters)
        new_mask = pre > 0
        if bool(done.all()):
            mask = new_mask
        else:
            Jz = head.update_jacobian(Jz, mask, new_mask)
            mask = new_mask
        if bool(done.any()):
            sel = done.nonzero()[:, 0]
            tgt = ids[sel]
            out["z"][tgt], out["m"][tgt], out["E"][tgt] = z[sel], m[sel], E[sel]
            out["iters"][tgt] = iters[sel]
            out["conv"][tgt] = conv[sel]
            for k, v in pose.items():
                out["pose"][k][tgt] = v[sel]
            keep = (~done).nonzero()[:, 0]
            ids, P, w, w_rows, sw, z, pre, mask, m, Jz, E, mu, iters, rejects, floor, r = (
                t[keep] for t in (ids, P, w, w_rows, sw, z, pre, mask, m, Jz, E, mu, iters, rejects, floor, r)
            )
            pose = {k: v[keep] for k, v in pose.items()}
    return out


def _solve_gn(head, pm, P, w, z0, reg, max_iters, tol, opts):
    B = P.shape[0]
    parts = [
        _gn_chunk(head, pm, P[i : i + _CHUNK], w[i : i + _CHUNK], z0[i : i + _CHUNK], reg, max_iters, tol, opts["damping"])
        for i in range(0, B, _CHUNK)
    ]
    if len(parts) == 1:
        return parts[0]
    out = {k: torch.cat([p[k] for p in parts]) for k in ("z", "m", "E", "iters", "conv")}
    out["pose"] = {k: torch.cat([p["pose"][k] for p in parts]) for k in parts[0]["pose"]}
    return out


# ---- first-order solvers (autograd on the landmark rows) ----------------------------------------
def _solve_first_order(head, pm, P, w, z0, reg, max_iters, tol, solver, opts):
    B, K, dr = P.shape
    w_rows = w.double().repeat_interleave(dr, 1).to(P.dtype)
    z = z0.clone().requires_grad_(True)
    with torch.no_grad():
        pose = pm.init(P, w, head.forward(z))
    joint = pm.dim == 2  # the camera has no closed form: optimise it with z
    cam = torch.zeros(B, pm.n_params, dtype=P.dtype, device=P.device, requires_grad=True) if joint else None
    params = [z] + ([cam] if joint else [])

    def energy(pose_now):
        m = head.forward(z)
        if joint:
            pose_now = pm.trial(P, w, m, pose, cam)
        r = pm.residual(P, m, pose_now)
        return (w_rows * r * r).sum(1) + reg * (z * z).sum(1)

    iters = torch.zeros(B, dtype=torch.long, device=P.device)
    conv = torch.zeros(B, dtype=torch.bool, device=P.device)
    with torch.no_grad():
        E_prev = energy(pose).double()
    with torch.enable_grad():
        if solver == "adam":
            opt = torch.optim.Adam(params, lr=float(opts["lr"]))
            every = max(1, int(opts["align_every"]))
            for step in range(max_iters):
                if not joint and step and step % every == 0:
                    with torch.no_grad():
                        pose = pm.solve(P, w, head.forward(z))
                        E_now = energy(pose).double()
                        conv = (E_prev - E_now).abs() <= tol * E_prev
                        E_prev = E_now
                opt.zero_grad(set_to_none=True)
                energy(pose).sum().backward()
                opt.step()
            iters[:] = max_iters
        else:
            inner = int(opts["inner_iters"])
            for outer in range(max_iters):
                opt = torch.optim.LBFGS(params, lr=1.0, max_iter=inner, history_size=int(opts["history_size"]),
                                        line_search_fn="strong_wolfe", tolerance_grad=1e-10, tolerance_change=1e-14)  # fmt: skip

                def closure():
                    opt.zero_grad(set_to_none=True)
                    e = energy(pose).sum()
                    e.backward()
                    return e

                opt.step(closure)
                iters[:] = outer + 1
                with torch.no_grad():
                    if not joint:
                        pose = pm.solve(P, w, head.forward(z))
                    E_now = energy(pose).double()
                    conv = (E_prev - E_now).abs() <= tol * E_prev.clamp_min(1e-300)
                    E_prev = E_now
                if bool(conv.all()):
                    break
    with torch.no_grad():
        m = head.forward(z)
        if joint:
            pose = pm.trial(P, w, m, pose, cam)
        else:
            pose = pm.solve(P, w, m)
        E = energy(pose).double()
    return {"z": z.detach(), "m": m, "E": E, "iters": iters, "conv": conv, "pose": {k: v.detach() for k, v in pose.items()}}


# ---- public API ------------------------------------------------------------------------------
def _fit(model, points, pm, *, landmarks, weights, reg, init, solver, max_iters, tol, generator, device,
         solver_options, decode):  # fmt: skip
    max_iters = _check_common(model, reg, tol, max_iters, solver, init, generator)
    dtype, model_device = _model_dtype_device(model)
    explicit = device is not None
    dev = torch.device(device) if explicit else model_device
    lmk = landmark_set(model, landmarks)
    P, w, present, squeeze = _check_points(points, weights, lmk, pm.dim, dtype, dev, explicit)
    B, K = w.shape
    n_valid = (w > 0).sum(1)
    need = {"similarity": 3, "rigid": 3, "none": 1, "scaled_orthographic": 4}[pm.align]
    if bool((n_valid < need).any()):
        b = int((n_valid < need).nonzero()[0])
        if int(n_valid[b]) == 0:
            raise FittingError(f"all landmarks of face {b} are missing (NaN rows or weight 0); give at least {need} points")
        raise FittingError(
            f"face {b} has {int(n_valid[b])} usable landmarks but {pm.align!r} alignment needs at least {need}; "
            "give more points" + (" or use align='none' for points already in model space" if pm.dim == 3 else "")
        )
    head = _head(model, lmk, dev, dtype)
    z0 = _initial_codes(init, solver, B, head.D, dtype, dev, explicit, generator)
    with torch.no_grad():
        if solver == "gauss-newton":
            opts = _options(solver_options, {"damping": 1e-4})
            out = _solve_gn(head, pm, P, w, z0, float(reg), max_iters, float(tol), opts)
        elif solver == "lbfgs":
            opts = _options(solver_options, {"inner_iters": 20, "history_size": 10})
            out = _solve_first_order(head, pm, P, w, z0, float(reg), max_iters, float(tol), solver, opts)
        else:
            opts = _options(solver_options, {"lr": 0.01, "align_every": 10})
            out = _solve_first_order(head, pm, P, w, z0, float(reg), max_iters, float(tol), solver, opts)
        z, m, pose = out["z"], out["m"], out["pose"]
        r = pm.residual(P, m, pose).view(B, K, pm.dim)
        scale, rot, trans, factor = pm.to_input(pose)
        res = r.norm(dim=-1) * factor[:, None]
        res = torch.where(present, res, torch.full_like(res, float("nan")))
        valid = w > 0
        rmse = (torch.where(valid, res, torch.zeros_like(res)).pow(2).sum(1) / valid.sum(1)).sqrt()
        vertices = None
        if decode:
            mdev = model_device
            zz = z.to(mdev, model.generator.fc1.weight.dtype)
            vertices = torch.cat([model(zz[i : i + _CHUNK]) for i in range(0, B, _CHUNK)]).to(dev, dtype)
    result = FitResult(
        vertices=vertices,
        codes=z,
        scale=scale,
        rotation=rot,
        translation=trans,
        residuals=res,
        rmse=rmse,
        iterations=out["iters"],
        converged=out["conv"],
        landmarks=m.view(B, K, 3),
        objective=out["E"],
        solver=solver,
        align=pm.align,
        extras={"landmark_set": lmk, "squeezed_input": squeeze},
    )
    return result


def fit_landmarks(
    model: torch.nn.Module,
    points: torch.Tensor | np.ndarray,
    *,
    landmarks: Any = "ibug68",
    weights: torch.Tensor | np.ndarray | None = None,
    reg: float = 0.01,
    align: str = "similarity",
    init: str | torch.Tensor | None = None,
    solver: str = "gauss-newton",
    max_iters: int | None = None,
    tol: float = 1e-6,
    generator: torch.Generator | int | None = None,
    device: str | torch.device | None = None,
    solver_options: Mapping[str, Any] | None = None,
    decode: bool = True,
) -> FitResult:
    """Fit codes (and a similarity) to 3D landmarks: Eq. 13 of the paper, in model space.

    Minimises ``sum_i w_i ||v~_i(z) - S(p_i)||^2 + reg ||z||^2`` over the code ``z`` and
    the transform ``S`` taking the points into model space (mm; so the data term is in
    mm^2 whatever the points' units and ``reg`` is the paper's lambda).

    Args:
        model: a :class:`~facemodel.model.FaceModel`.
        points: (K, 3) or (B, K, 3) landmark positions, any units / pose. Missing
            landmarks: NaN rows (a row with any NaN is missing) or weight 0.
        landmarks: the landmark set the points correspond to (see
            :func:`facemodel.landmarks.landmark_set`): ``"ibug68"`` (default), a registered
            name, K vertex indices, or ``(triangles (K, 3), barycentrics (K, 3))``.
        weights: (K,) or (B, K) non-negative per-landmark weights (default 1).
        reg: lambda of Eq. 13 on ``||z||^2`` (paper: 0, 0.01, 10).
        align: ``"similarity"`` (rotation, translation, scale), ``"rigid"`` (scale 1: points
            in mm), ``"none"`` (points already in model space, mm).
        init: ``"mean"`` (z = 0; default of gauss-newton/lbfgs), ``"random"`` (N(0, I) drawn
            with ``generator``; default of adam), or codes (D,) / (B, D).
        solver: ``"gauss-newton"`` (fast, default), ``"lbfgs"`` or ``"adam"`` (the paper's
            protocol, slow; a baseline).
        max_iters: outer iterations (default 50 gauss-newton, 20 lbfgs x 20 inner, 1000 adam).
        tol: stop when the relative decrease of the objective is below this.
        generator: torch.Generator or int seed for ``init="random"`` (default seed 0).
        device: where to compute (default: the model's device; inputs on other devices
            are an error unless this is given).
        solver_options: gauss-newton ``damping`` (1e-4); lbfgs ``inner_iters`` (20),
            ``history_size`` (10); adam ``lr`` (0.01), ``align_every`` (10).
        decode: decode the full vertices once at the end (``False`` leaves
            ``FitResult.vertices`` None, e.g. when only codes are needed).

    Returns:
        :class:`FitResult` (batched even for (K, 3) input).

    Raises:
        FittingError: bad shapes, inf values, all/too many points missing, a K that does
            not match the landmark set, empty batch, tensors on another device or of
            another dtype than the model, unknown solver / align / init.
        LandmarkError: an invalid landmark spec.
    """
    if align not in ALIGNMENTS:
        raise FittingError(f"unknown align {align!r}; choose one of {list(ALIGNMENTS)}")
    return _fit(model, points, _Pose3D(align), landmarks=landmarks, weights=weights, reg=reg, init=init,
                solver=solver, max_iters=max_iters, tol=tol, generator=generator, device=device,
                solver_options=solver_options, decode=decode)  # fmt: skip


def fit_landmarks_2d(
    model: torch.nn.Module,
    points2d: torch.Tensor | np.ndarray,
    *,
    landmarks: Any = "ibug68",
    weights: torch.Tensor | np.ndarray | None = None,
    reg: float = 0.01,
    camera: str = "scaled_orthographic",
    init: str | torch.Tensor | None = None,
    solver: str = "gauss-newton",
    max_iters: int | None = None,
    tol: float = 1e-6,
    generator: torch.Generator | int | None = None,
    device: str | torch.device | None = None,
    solver_options: Mapping[str, Any] | None = None,
    decode: bool = True,
) -> FitResult:
    """Fit codes and a scaled-orthographic camera to 2D landmarks.

    The camera projects model points as ``x = s R[:2] v + t`` (any image convention: a
    y-down image is just another rotation). Minimises
    ``sum_i w_i ||R[:2] v~_i(z) - (x_i - t) / s||^2 + reg ||z||^2`` (image residuals
    divided by the scale: model-space mm^2, as in :func:`fit_landmarks`) over ``z`` and the
    camera jointly (Levenberg-Marquardt from an affine camera fit at the initial code).
    Depth is unobserved: keep ``reg`` > 0 for plausible shapes.

    Args: as :func:`fit_landmarks`, with ``points2d`` (K, 2) or (B, K, 2) and
        ``camera="scaled_orthographic"`` (the only camera).

    Returns:
        :class:`FitResult` whose ``scale`` / ``rotation`` (B, 3, 3) / ``translation``
        (B, 2) hold the camera; residuals and rmse in image units.
    """
    if camera not in CAMERAS:
        raise FittingError(f"unknown camera {camera!r}; choose one of {list(CAMERAS)}")
    return _fit(model, points2d, _Camera2D(), landmarks=landmarks, weights=weights, reg=reg, init=init,
                solver=solver, max_iters=max_iters, tol=tol, generator=generator, device=device,
                solver_options=solver_options, decode=decode)  # fmt: skip
