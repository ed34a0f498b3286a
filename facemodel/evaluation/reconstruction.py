"""Reconstruction of sparse data (paper §5.5, Table 2, Eq. 13).

Held-out meshes (the ICT 4D test split: identities never trained on, and for the kind
``novel`` expression combinations and intensities the training generator never produces)
are reduced to their landmark vertices; every model is fitted to those points by

    argmin_z  sum_i ||v~_i(z) - v_i||^2 + lambda ||z||^2                      (13)

(mm^2; ``z`` = identity, expression and noise codes, all N(0, I) a priori), and the fitted
mesh is compared with the whole ground-truth mesh: per-mesh RMSE over all vertices, mm.
All models share the template's frame, so the points are used as they are (no alignment).

Solvers:

- ``"adam"``: the paper's protocol, identical for every model: codes initialised from the
  model's prior with a fixed seed (the same draw for every lambda), Adam (lr 0.05,
  1,000 iterations by default, constant rate), decoding only the landmark rows. The
  meshes are fitted in batches; the objective is a sum of per-mesh terms and Adam's update
  is element-wise, so a batch gives exactly the per-mesh fits. Convergence: with
  lambda = 10 the objective is flat after 1,000 steps (change < 1e-6 of it over the last
  100); with lambda <= 0.01 the 68 landmarks (204 numbers) constrain some directions of
  our GAN's 85 codes only weakly, and Adam keeps lowering the landmark error slowly by
  inflating the code along them (about 2% of the objective per 100 steps at step 1,000,
  with a *worse* surface), which is the ill-posedness Table 2 measures;
  ``objective_decrease`` reports it. The result of lambda = 0 therefore depends on the
  iteration budget, which is why it is fixed.
- ``"fast"``: the model's own solver, :meth:`ShapeModel.fit_landmarks_fast` (Gauss-Newton
  for our GAN); models without one give ``None``.

:func:`load_test_meshes` reads the test meshes (per kind) from a dataset and
:func:`face_region_vertices` gives the vertices inside the landmarks' outline, for an RMSE
restricted to the face (the ICT face area also holds the scalp, ears and neck, which
landmarks do not constrain).

Measured (the cpu-v1 GAN, 410 test meshes: 120 each of ``emotion``, ``free``, ``novel``
and the 50 ``static``; one loaded CPU core): Adam 1,000 steps, 8-11 s per lambda for
all of them (~25 ms per mesh); the Gauss-Newton fast solver 1-1.4 s per lambda.
"""

from __future__ import annotations

import math
import numbers
import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..data.dataset import FaceDataset
from .protocol import Codes, EvaluationError, ShapeModel

__all__ = ["TestMeshes", "load_test_meshes", "face_region_vertices", "sparse_reconstruction", "SOLVERS",
           "DEFAULT_LAMBDAS", "ADAM_LR", "ADAM_ITERATIONS"]  # fmt: skip

SOLVERS = ("adam", "fast")
DEFAULT_LAMBDAS = (0.0, 0.01, 10.0)
ADAM_LR = 0.05
ADAM_ITERATIONS = 1000


@dataclass
class TestMeshes:
    """Held-out meshes for the sparse-reconstruction benchmark.

    Attributes:
        vertices: (T, V, 3) float32 ground-truth meshes, mm.
        kinds: (T,) str kind of each mesh (``static``, ``emotion``, ``free``, ``novel``).
        rows: (T,) int64 row of each mesh in the dataset split.
        identity: (T,) int64 identity index (global) of each mesh.
        landmarks: (L,) int64 landmark vertices of the dataset's template (iBUG-68).
        template: (V, 3) float32 template vertices of the dataset, mm.
    """

    __test__ = False  # not a pytest class

    vertices: torch.Tensor
    kinds: np.ndarray
    rows: np.ndarray
    identity: np.ndarray
    landmarks: np.ndarray
    template: np.ndarray

    def __len__(self) -> int:
        return int(self.vertices.shape[0])


def load_test_meshes(
    dataset: FaceDataset | str | os.PathLike,
    *,
    kinds: Sequence[str] | None = None,
    max_per_kind: int | None = None,
    seed: int = 0,
) -> TestMeshes:
    """Meshes of a dataset's test split, optionally a fixed random subset of each kind.

    Args:
        dataset: a :class:`FaceDataset` (its rows are used as they are: pass
            ``split="test"``) or a dataset folder (its test split is opened).
        kinds: keep only these kinds (default: all of the split's kinds).
        max_per_kind: at most this many meshes of each kind (drawn with ``seed``, kept in
            row order); default all.

    Raises:
        EvaluationError: unknown kinds, nothing selected, or a bad ``max_per_kind``.
    """
    ds = dataset if isinstance(dataset, FaceDataset) else FaceDataset(dataset, split="test")
    names = list(ds.manifest.kinds)
    kind = np.asarray(names, dtype=object)[ds.meta("kind").astype(np.int64)] if len(ds) else np.zeros(0, object)
    wanted = names if kinds is None else list(kinds)
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        raise EvaluationError(f"unknown kinds {unknown}; this dataset has {names}")
    if max_per_kind is not None and (isinstance(max_per_kind, bool) or not isinstance(max_per_kind, (int, np.integer))
                                     or max_per_kind < 1):  # fmt: skip
        raise EvaluationError(f"max_per_kind must be a positive integer or None, got {max_per_kind!r}")
    rng = np.random.default_rng(seed)
    rows = []
    for k in wanted:
        r = np.flatnonzero(kind == k)
        if max_per_kind is not None and len(r) > max_per_kind:
            r = np.sort(rng.choice(r, size=max_per_kind, replace=False))
        rows.append(r)
    rows = np.sort(np.concatenate(rows)).astype(np.int64) if rows else np.zeros(0, np.int64)
    if len(rows) == 0:
        raise EvaluationError(f"no test meshes of kinds {wanted} in {str(ds.root)!r} (split {ds.split!r})")
    return TestMeshes(
        vertices=torch.from_numpy(ds.vertices(rows)),
        kinds=np.asarray(kind[rows], dtype=str),
        rows=rows,
        identity=ds.meta("identity")[rows].astype(np.int64),
        landmarks=np.asarray(ds.template.landmarks, np.int64),
        template=np.asarray(ds.template.vertices, np.float32),
    )


def face_region_vertices(vertices: np.ndarray, landmarks: np.ndarray, *, behind_mm: float = 15.0) -> np.ndarray:
    """Vertices inside the landmarks' outline: the face proper (brows to chin, jaw to jaw).

    A vertex belongs to the face when its frontal projection (x, y) lies inside the convex
    hull of the landmarks' projections and it is at most ``behind_mm`` behind the rearmost
    landmark (which excludes the back of the head, whose projection also falls inside).

    Args:
        vertices: (V, 3) template vertices, mm (+y up, +z towards the viewer).
        landmarks: (L,) landmark vertex indices (L >= 3), e.g. the iBUG-68 set.

    Returns:
        (K,) int64 sorted vertex indices.
    """
    from scipy.spatial import Delaunay

    v = np.asarray(vertices, np.float64)
    lm = np.asarray(landmarks, np.int64).reshape(-1)
    if v.ndim != 2 or v.shape[1] != 3 or len(lm) < 3 or lm.min() < 0 or lm.max() >= len(v):
        raise EvaluationError("face_region_vertices needs (V, 3) vertices and at least 3 landmark indices inside them")
    p = v[lm]
    inside = Delaunay(p[:, :2]).find_simplex(v[:, :2]) >= 0
    inside &= v[:, 2] >= p[:, 2].min() - behind_mm
    return np.flatnonzero(inside).astype(np.int64)


def _model_modules(model: ShapeModel) -> list[torch.nn.Module]:
    return [m for m in vars(model).values() if isinstance(m, torch.nn.Module)]


class _FrozenWeights:
    """Turn off gradients of a model's weights while codes are optimised (they are not
    trained; this only saves the weight-gradient work), restored afterwards."""

    def __init__(self, model: ShapeModel) -> None:
        self.params = [p for m in _model_modules(model) for p in m.parameters() if p.requires_grad]

    def __enter__(self) -> None:
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc) -> None:
        for p in self.params:
            p.requires_grad_(True)


def _objective(model: ShapeModel, z: list[torch.Tensor], points: torch.Tensor, idx: torch.Tensor, lam: float):
    """(n,) Eq. 13 per mesh: squared landmark errors (mm^2) + lam * ||z||^2."""
    pred = model.decode(Codes(*z), vertices=idx)
    return ((pred - points) ** 2).sum((1, 2)) + lam * sum((p**2).sum(1) for p in z)


def _adam_fit(
    model: ShapeModel,
    points: torch.Tensor,
    idx: torch.Tensor,
    init: Codes,
    lam: float,
    iterations: int,
    lr: float,
) -> tuple[Codes, torch.Tensor, torch.Tensor]:
    """Adam on Eq. 13 for a batch; returns codes, final per-mesh objective and the objective
    at 90% of the iterations (to judge convergence)."""
    z = [init.identity.clone(), init.expression.clone(), init.noise.clone()]
    params = [p.requires_grad_(True) for p in z if p.numel()]
    opt = torch.optim.Adam(params, lr=lr)
    checkpoint = max(0, int(0.9 * iterations) - 1)
    at90 = None
    for it in range(iterations):
        opt.zero_grad(set_to_none=True)
        per = _objective(model, z, points, idx, lam)
        if it == checkpoint:
            at90 = per.detach().clone()
        per.sum().backward()
        opt.step()
    with torch.no_grad():
        final = _objective(model, z, points, idx, lam)
    return Codes(*(p.detach() for p in z)), final, at90 if at90 is not None else final


def _rmse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n,) root mean square vertex distance of (n, K, 3) pairs."""
    return ((a - b) ** 2).sum(-1).mean(-1).sqrt()


def _check_lambdas(lambdas: Sequence[float]) -> tuple[float, ...]:
    try:
        out = tuple(float(x) for x in lambdas)
    except (TypeError, ValueError):
        raise EvaluationError(f"lambdas must be a sequence of numbers, got {lambdas!r}") from None
    if not out or any(not math.isfinite(x) or x < 0 for x in out):
        raise EvaluationError(f"lambdas must be finite numbers >= 0 (paper: 0, 0.01, 10), got {lambdas!r}")
    return out


def sparse_reconstruction(
    model: ShapeModel,
    meshes: torch.Tensor | np.ndarray | TestMeshes,
    landmarks: np.ndarray | torch.Tensor | None = None,
    *,
    lambdas: Sequence[float] = DEFAULT_LAMBDAS,
    solver: str = "adam",
    iterations: int = ADAM_ITERATIONS,
    lr: float = ADAM_LR,
    seed: int = 0,
    chunk: int = 1024,
    region: np.ndarray | None = None,
    groups: np.ndarray | None = None,
) -> dict[str, Any] | None:
    """Fit a model to the landmarks of ground-truth meshes and measure the surface error.

    Args:
        model: any :class:`ShapeModel`.
        meshes: (T, V, 3) ground truth in mm (model frame), or :class:`TestMeshes` (then
            ``landmarks`` and ``groups`` default to its landmarks and kinds).
        landmarks: (K,) int64 vertex indices of the points that are fitted.
        lambdas: the weights of ``||z||^2`` (Eq. 13; paper: 0, 0.01, 10).
        solver: ``"adam"`` (the paper's protocol) or ``"fast"`` (the model's own solver).
        iterations, lr: Adam's settings (``"adam"`` only).
        seed: seed of the initial codes (``"adam"``): the same for every model and lambda.
        chunk: meshes fitted together.
        region: optional (R,) vertex indices for a second RMSE (default:
            :func:`face_region_vertices` of the landmarks on the template of
            :class:`TestMeshes`, or on the mean ground-truth mesh for array input).
        groups: optional (T,) labels (e.g. kinds): RMSE per label as well.

    Returns:
        ``None`` for ``solver="fast"`` when the model has no fast solver; else
        ``{"model", "solver", "meshes": T, "landmarks": K, "region_vertices": R,
        "settings": {...}, "lambdas": {lam: {"rmse_mm", "rmse_face_mm",
        "landmark_rmse_mm", "code_norm", "objective", "objective_decrease",
        "seconds", "seconds_per_mesh", "by_group": {label: {"rmse_mm", "rmse_face_mm",
        "meshes"}}, "per_mesh_rmse_mm": (T,) ndarray, "per_mesh_face_rmse_mm": (T,),
        "codes": Codes}}}``. ``rmse_mm`` is the mean over meshes of the per-mesh RMSE over
        all V vertices; ``objective`` (Adam) is the mean final value of Eq. 13 (mm^2) and
        ``objective_decrease`` its mean decrease over the last 10% of the iterations
        (mm^2; small compared with ``objective`` = converged).

    Raises:
        EvaluationError: bad meshes (shape, NaNs, vertex count), landmark indices, lambdas,
            solver or Adam settings.
    """
    from .metrics import _as_meshes, _check_count, _decode_checked

    if solver not in SOLVERS:
        raise EvaluationError(f"unknown solver {solver!r}; use one of {SOLVERS}")
    shape_for_region = None
    if isinstance(meshes, TestMeshes):
        landmarks = meshes.landmarks if landmarks is None else landmarks
        groups = meshes.kinds if groups is None else groups
        shape_for_region = meshes.template
        meshes = meshes.vertices
    gt = _as_meshes(meshes, "meshes", model.num_vertices)
    T = gt.shape[0]
    if T == 0:
        raise EvaluationError("no meshes to reconstruct")
    if landmarks is None:
        raise EvaluationError("landmarks is required: pass the (K,) landmark vertices, e.g. dataset.template.landmarks")
    idx = torch.as_tensor(np.asarray(landmarks), dtype=torch.int64).reshape(-1)
    if len(idx) == 0 or int(idx.min()) < 0 or int(idx.max()) >= model.num_vertices:
        raise EvaluationError(f"landmarks must be 1 or more vertex indices in 0..{model.num_vertices - 1}")
    lambdas = _check_lambdas(lambdas)
    iterations = _check_count(iterations, "iterations")
    chunk = _check_count(chunk, "chunk")
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr) or lr <= 0:
        raise EvaluationError(f"lr must be a positive number, got {lr!r}")
    if groups is not None:
        groups = np.asarray(groups)
        if len(groups) != T:
            raise EvaluationError(f"groups has {len(groups)} labels for {T} meshes")
    if region is None:
        shape = gt.mean(0).numpy() if shape_for_region is None else shape_for_region
        try:
            region = face_region_vertices(shape, idx.numpy())
        except Exception:  # fewer than 3 landmarks, or all on a line: no face outline
            region = np.arange(model.num_vertices)
    region_t = torch.as_tensor(np.asarray(region), dtype=torch.int64).reshape(-1)
    if len(region_t) == 0 or int(region_t.min()) < 0 or int(region_t.max()) >= model.num_vertices:
        raise EvaluationError("region must be 1 or more vertex indices inside the mesh")

    points = gt[:, idx]
    init = model.sample_codes(T, generator=torch.Generator().manual_seed(seed)) if solver == "adam" else None
    out_l: dict[float, dict[str, Any]] = {}
    for lam in lambdas:
        t0 = time.perf_counter()
        codes_parts, obj, change = [], [], []
        for s in range(0, T, chunk):
            pts = points[s : s + chunk]
            if solver == "adam":
                with _FrozenWeights(model):
                    codes, final, at90 = _adam_fit(model, pts, idx, init[s : s + chunk], lam, iterations, lr)
                obj.append(final)
                change.append(at90 - final)
            else:
                codes = model.fit_landmarks_fast(pts, idx, lam)
                if codes is None:
                    return None
                codes = Codes(*(c.detach().to("cpu", torch.float32)
                                for c in (codes.identity, codes.expression, codes.noise)))  # fmt: skip
            codes_parts.append(codes)
        fit_seconds = time.perf_counter() - t0
        codes = Codes.cat(codes_parts)
        rmse, face, lmk = [], [], []
        for s in range(0, T, 256):
            fit = _decode_checked(model, codes[s : s + 256])
            g = gt[s : s + 256]
            rmse.append(_rmse(fit, g))
            face.append(_rmse(fit[:, region_t], g[:, region_t]))
            lmk.append(_rmse(fit[:, idx], g[:, idx]))
        rmse, face, lmk = torch.cat(rmse).double(), torch.cat(face).double(), torch.cat(lmk).double()
        norm = torch.cat([codes.identity, codes.expression, codes.noise], 1).double().norm(dim=1)
        entry: dict[str, Any] = {
            "rmse_mm": float(rmse.mean()),
            "rmse_face_mm": float(face.mean()),
            "landmark_rmse_mm": float(lmk.mean()),
            "code_norm": float(norm.mean()),
            "seconds": fit_seconds,
            "seconds_per_mesh": fit_seconds / T,
            "per_mesh_rmse_mm": rmse.numpy(),
            "per_mesh_face_rmse_mm": face.numpy(),
            "codes": codes,
        }
        if solver == "adam":
            entry["objective"] = float(torch.cat(obj).double().mean())
            entry["objective_decrease"] = float(torch.cat(change).double().mean())
        if groups is not None:
            entry["by_group"] = {
                str(label): {"rmse_mm": float(rmse[torch.from_numpy(groups == label)].mean()),
                             "rmse_face_mm": float(face[torch.from_numpy(groups == label)].mean()),
                             "meshes": int((groups == label).sum())}
                for label in np.unique(groups)
            }  # fmt: skip
        out_l[lam] = entry
    settings: dict[str, Any] = {"lambdas": list(lambdas)}
    if solver == "adam":
        settings.update(iterations=iterations, lr=lr, seed=seed, init="prior sample (model.sample_codes)",
                        optimizer="torch.optim.Adam, constant lr")  # fmt: skip
    return {
        "model": model.name,
        "solver": solver,
        "meshes": T,
        "landmarks": int(len(idx)),
        "region_vertices": int(len(region_t)),
        "settings": settings,
        "lambdas": out_l,
    }
