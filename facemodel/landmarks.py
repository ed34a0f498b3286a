"""Landmark sets on the template surface: vertices or barycentric points of triangles.

A :class:`LandmarkSet` stores every landmark as a point of a triangle, ``vertex_indices``
(K, 3) and ``barycentrics`` (K, 3); a plain vertex landmark ``i`` is the degenerate
triangle ``(i, i, i)`` with weights ``(1, 0, 0)`` (so its position is the vertex itself,
bit for bit). Sets are resolved from a spec by :func:`landmark_set`:

- ``"ibug68"``: the iBUG-68 (Multi-PIE order) landmarks stored with the model/template;
- ``"ibug51"``: its 51 inner landmarks (no jaw line, indices 17..67), robust to profile
  views where the jaw contour is not a fixed surface point;
- any name added with :func:`register_landmarks` (see :func:`available_landmarks`);
- a sequence / array / tensor of K vertex indices;
- a pair ``(triangle vertex indices (K, 3), barycentrics (K, 3))``;
- a :class:`LandmarkSet`.

Example:
    >>> lmk = landmark_set(model, "ibug68")
    >>> landmark_positions(model(z), lmk).shape          # (B, 68, 3) in mm
    >>> register_landmarks("nose_tip", [3564])
    >>> landmark_set(model, "nose_tip")
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch

from .errors import LandmarkError, UnknownLandmarksError

__all__ = [
    "LandmarkSet",
    "LandmarkError",
    "UnknownLandmarksError",
    "landmark_set",
    "landmark_positions",
    "register_landmarks",
    "unregister_landmarks",
    "available_landmarks",
]

BARYCENTRIC_ATOL = 1e-4


@dataclass(frozen=True, eq=False)
class LandmarkSet:
    """K landmarks as barycentric points of template triangles.

    Attributes:
        name: a label (``"ibug68"``, a registered name, or ``"custom"``).
        vertex_indices: (K, 3) int64 vertex indices of each landmark's triangle (a vertex
            landmark ``i`` is ``(i, i, i)``).
        barycentrics: (K, 3) float32 weights of those vertices, >= 0, summing to 1
            (a vertex landmark is ``(1, 0, 0)``).

    Construct with :meth:`from_vertices`, :meth:`from_barycentric` or :func:`landmark_set`;
    the constructor validates shapes and weights (raises :class:`LandmarkError`). The
    vertex range is checked against a mesh by :meth:`check` (done by :func:`landmark_set`).
    """

    name: str
    vertex_indices: torch.Tensor
    barycentrics: torch.Tensor

    def __post_init__(self) -> None:
        idx = _as_index_tensor(self.vertex_indices, "landmark vertex indices")
        bary = _as_float_tensor(self.barycentrics, "landmark barycentrics")
        if idx.ndim != 2 or idx.shape[1] != 3:
            raise LandmarkError(
                f"landmark vertex indices must have shape (K, 3) (three triangle corners per "
                f"landmark), got {tuple(idx.shape)}; for vertex landmarks use LandmarkSet.from_vertices"
            )
        if tuple(bary.shape) != tuple(idx.shape):
            raise LandmarkError(
                f"barycentrics must have the shape of the vertex indices {tuple(idx.shape)}, got {tuple(bary.shape)}"
            )
        if idx.shape[0] == 0:
            raise LandmarkError("a landmark set needs at least one landmark, got K = 0")
        if not bool(torch.isfinite(bary).all()):
            raise LandmarkError("barycentrics contain NaN or inf; give finite weights summing to 1")
        if bool((bary < -BARYCENTRIC_ATOL).any()):
            k = int((bary < -BARYCENTRIC_ATOL).any(1).nonzero()[0])
            raise LandmarkError(
                f"barycentrics of landmark {k} are negative ({bary[k].tolist()}): the point lies outside "
                "its triangle; use the triangle that contains it"
            )
        sums = bary.double().sum(1)
        bad = (sums - 1).abs() > BARYCENTRIC_ATOL
        if bool(bad.any()):
            k = int(bad.nonzero()[0])
            raise LandmarkError(
                f"barycentrics of landmark {k} sum to {float(sums[k]):.6g}, not 1; "
                "normalise them (b / b.sum(-1, keepdim=True))"
            )
        if bool((idx < 0).any()):
            k = int((idx < 0).any(1).nonzero()[0])
            raise LandmarkError(f"landmark {k} has a negative vertex index {idx[k].tolist()}; indices start at 0")
        object.__setattr__(self, "vertex_indices", idx.cpu().contiguous())
        object.__setattr__(self, "barycentrics", bary.to("cpu", torch.float32).contiguous())

    # ---- constructors -----------------------------------------------------------------
    @classmethod
    def from_vertices(cls, indices: Any, name: str = "custom") -> "LandmarkSet":
        """Landmarks at K mesh vertices (``(K,)`` indices)."""
        idx = _as_index_tensor(indices, "landmark vertex indices")
        if idx.ndim != 1:
            raise LandmarkError(
                f"vertex landmarks must be a 1-D sequence of K vertex indices, got shape {tuple(idx.shape)}; "
                "for points inside triangles pass (vertex_indices (K, 3), barycentrics (K, 3))"
            )
        bary = torch.zeros(len(idx), 3)
        bary[:, 0] = 1.0
        return cls(name, idx[:, None].expand(-1, 3).contiguous(), bary)

    @classmethod
    def from_barycentric(cls, vertex_indices: Any, barycentrics: Any, name: str = "custom") -> "LandmarkSet":
        """Landmarks at barycentric points of triangles (``(K, 3)`` indices and weights)."""
        idx = _as_index_tensor(vertex_indices, "landmark vertex indices")
        return cls(name, idx, _as_float_tensor(barycentrics, "landmark barycentrics"))

    # ---- properties -------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.vertex_indices.shape[0])

    @property
    def num_landmarks(self) -> int:
        return len(self)

    @property
    def is_vertex_set(self) -> bool:
        """True when every landmark is a plain vertex (weights ``(1, 0, 0)``)."""
        return bool((self.barycentrics[:, 0] == 1).all())

    def check(self, num_vertices: int) -> "LandmarkSet":
        """Raise :class:`LandmarkError` unless every index is < ``num_vertices``; returns self."""
        hi = int(self.vertex_indices.max())
        if hi >= num_vertices:
            k = int((self.vertex_indices >= num_vertices).any(1).nonzero()[0])
            raise LandmarkError(
                f"landmark set {self.name!r}: landmark {k} uses vertex {hi} but the mesh has {num_vertices} "
                f"vertices (valid indices 0..{num_vertices - 1}); use indices of this template's topology"
            )
        return self

    def subset(self, index: Any, name: str | None = None) -> "LandmarkSet":
        """The landmarks ``index`` (a slice, indices or a boolean mask) of this set.

        Rows of a validated set are valid, so only the count is checked (a 2D fit's contour
        rounds take two subsets per face)."""
        if not isinstance(index, slice):
            arr = np.asarray(index)
            if arr.size and arr.dtype.kind not in "biu":
                raise LandmarkError(f"a landmark subset takes a slice, integer indices or a boolean mask, got dtype {arr.dtype}")
            index = torch.as_tensor(arr.astype(np.int64) if arr.size == 0 else arr)
        idx, bary = self.vertex_indices[index], self.barycentrics[index]
        if idx.ndim != 2 or idx.shape[0] == 0:
            raise LandmarkError(f"a landmark subset needs at least one landmark, got {tuple(idx.shape)} rows")
        out = object.__new__(LandmarkSet)
        for key, value in (("name", name or f"{self.name}[subset]"), ("vertex_indices", idx.contiguous()),
                           ("barycentrics", bary.contiguous())):  # fmt: skip
            object.__setattr__(out, key, value)
        return out

    def positions(self, vertices: torch.Tensor) -> torch.Tensor:
        """Same as :func:`landmark_positions` ``(vertices, self)``."""
        return landmark_positions(vertices, self)

    def __repr__(self) -> str:
        kind = "vertices" if self.is_vertex_set else "barycentric"
        return f"LandmarkSet(name={self.name!r}, K={len(self)}, {kind})"


LandmarkSpec = Union[str, LandmarkSet, Sequence[int], np.ndarray, torch.Tensor, tuple]
_Factory = Callable[[Any], Union[LandmarkSet, Any]]

_lock = threading.Lock()
_REGISTRY: dict[str, _Factory | LandmarkSet] = {}
_BUILTIN = ("ibug68", "ibug51")


def _ibug68(model_or_template: Any) -> LandmarkSet:
    lm = getattr(model_or_template, "landmarks", None)
    if lm is None or len(lm) == 0:
        raise LandmarkError(
            "this model/template stores no iBUG-68 landmarks (empty 'landmarks'); build it from a "
            "template with landmarks, or pass explicit vertex indices as landmarks=[...]"
        )
    if len(lm) != 68:
        raise LandmarkError(f"'ibug68' needs 68 stored landmarks, the model/template has {len(lm)}")
    return LandmarkSet.from_vertices(lm, name="ibug68")


def _ibug51(model_or_template: Any) -> LandmarkSet:
    return _ibug68(model_or_template).subset(slice(17, 68), name="ibug51")


def register_landmarks(name: str, landmarks: _Factory | LandmarkSet | Any, *, overwrite: bool = False) -> None:
    """Register a landmark set under ``name`` for :func:`landmark_set` / ``landmarks=name``.

    Args:
        name: the name (not ``"ibug68"``/``"ibug51"``, which are built in).
        landmarks: a :class:`LandmarkSet`, anything :func:`landmark_set` accepts except a
            name (vertex indices, an ``(indices, barycentrics)`` pair), or a function
            ``fn(model_or_template) -> LandmarkSet | spec`` called at resolution time.
        overwrite: replace an existing registration of ``name``.

    Raises:
        LandmarkError: empty / built-in / already registered name, or an invalid set.
    """
    if not isinstance(name, str) or not name.strip():
        raise LandmarkError(f"landmark set names must be non-empty strings, got {name!r}")
    if name in _BUILTIN:
        raise LandmarkError(f"{name!r} is built in and cannot be re-registered; choose another name")
    if not callable(landmarks):
        if isinstance(landmarks, str):
            raise LandmarkError("register a LandmarkSet, indices or a function, not another name")
        landmarks = _coerce(landmarks, name)  # validate now
        landmarks = LandmarkSet(name, landmarks.vertex_indices, landmarks.barycentrics)
    with _lock:
        if name in _REGISTRY and not overwrite:
            raise LandmarkError(f"landmark set {name!r} is already registered; pass overwrite=True to replace it")
        _REGISTRY[name] = landmarks


def unregister_landmarks(name: str) -> None:
    """Remove a registration made by :func:`register_landmarks` (built-ins stay)."""
    if name in _BUILTIN:
        raise LandmarkError(f"{name!r} is built in and cannot be removed")
    with _lock:
        if _REGISTRY.pop(name, None) is None:
            raise UnknownLandmarksError(f"no landmark set {name!r} is registered; see available_landmarks()")


def available_landmarks() -> list[str]:
    """Names accepted by :func:`landmark_set` (built-ins first, then registered, sorted)."""
    with _lock:
        return list(_BUILTIN) + sorted(_REGISTRY)


def landmark_set(model_or_template: Any, spec: LandmarkSpec = "ibug68") -> LandmarkSet:
    """Resolve a landmark spec against a :class:`~facemodel.model.FaceModel` or
    :class:`~facemodel.geometry.Template` (anything with ``num_vertices`` and, for
    ``"ibug68"``, ``landmarks``).

    Args:
        model_or_template: the mesh whose vertices the landmarks index.
        spec: ``"ibug68"``, ``"ibug51"``, a registered name, K vertex indices, a pair
            ``(vertex_indices (K, 3), barycentrics (K, 3))``, or a :class:`LandmarkSet`.

    Returns:
        a validated :class:`LandmarkSet` (indices checked against the mesh's vertex count).

    Raises:
        UnknownLandmarksError: an unregistered name.
        LandmarkError: malformed spec or indices outside the mesh.
    """
    nv = _num_vertices(model_or_template)
    if isinstance(spec, str):
        if spec == "ibug68":
            lmk = _ibug68(model_or_template)
        elif spec == "ibug51":
            lmk = _ibug51(model_or_template)
        else:
            with _lock:
                entry = _REGISTRY.get(spec)
            if entry is None:
                raise UnknownLandmarksError(
                    f"unknown landmark set {spec!r}; available: {available_landmarks()} "
                    "(add one with facemodel.landmarks.register_landmarks, or pass vertex indices)"
                )
            if isinstance(entry, LandmarkSet):
                lmk = entry
            else:
                out = entry(model_or_template)
                if isinstance(out, str):
                    raise LandmarkError(f"the factory registered as {spec!r} returned a name, not landmarks")
                lmk = _coerce(out, spec)
    else:
        lmk = _coerce(spec, "custom")
    return lmk.check(nv) if nv is not None else lmk


def landmark_positions(vertices: torch.Tensor | np.ndarray, landmarks: LandmarkSet | Any) -> torch.Tensor:
    """Positions of landmarks on meshes.

    Args:
        vertices: (B, V, 3) or (V, 3) vertices (any units; a numpy array is converted).
        landmarks: a :class:`LandmarkSet` or a spec :func:`landmark_set` accepts other than
            a name (indices are checked against V).

    Returns:
        (B, K, 3) (or (K, 3)) tensor: ``sum_j barycentrics[k, j] * vertices[idx[k, j]]``;
        exactly the vertex for vertex landmarks.
    """
    v = torch.as_tensor(vertices) if not isinstance(vertices, torch.Tensor) else vertices
    if v.ndim not in (2, 3) or v.shape[-1] != 3:
        raise LandmarkError(f"vertices must have shape (B, V, 3) or (V, 3), got {tuple(v.shape)}")
    if isinstance(landmarks, str):
        raise LandmarkError(
            f"landmark_positions needs a LandmarkSet or vertex indices, got the name {landmarks!r}; "
            "resolve it first with landmark_set(model, name)"
        )
    lmk = landmarks if isinstance(landmarks, LandmarkSet) else _coerce(landmarks, "custom")
    lmk.check(v.shape[-2])
    idx = lmk.vertex_indices.to(v.device)
    if lmk.is_vertex_set:
        return v[..., idx[:, 0], :]
    bary = lmk.barycentrics.to(device=v.device, dtype=v.dtype if v.is_floating_point() else torch.float32)
    return (v[..., idx, :] * bary[..., None]).sum(-2)


# ---- helpers ------------------------------------------------------------------------------
def _num_vertices(obj: Any) -> int | None:
    n = getattr(obj, "num_vertices", None)
    if n is not None:
        return int(n)
    tmpl = getattr(obj, "template", None)
    if tmpl is not None and hasattr(tmpl, "shape"):
        return int(tmpl.shape[0])
    verts = getattr(obj, "vertices", None)
    if verts is not None and hasattr(verts, "shape"):
        return int(verts.shape[0])
    return None


def _coerce(spec: Any, name: str) -> LandmarkSet:
    if isinstance(spec, LandmarkSet):
        return spec
    if isinstance(spec, tuple) and len(spec) == 2 and not _is_scalar(spec[0]):
        return LandmarkSet.from_barycentric(spec[0], spec[1], name=name)
    try:
        arr = torch.as_tensor(np.asarray(spec)) if not isinstance(spec, torch.Tensor) else spec
    except Exception as exc:
        raise LandmarkError(
            f"cannot read landmarks from {type(spec).__name__}: give a name, vertex indices or "
            "(vertex_indices (K, 3), barycentrics (K, 3))"
        ) from exc
    return LandmarkSet.from_vertices(arr, name=name)


def _is_scalar(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) or (isinstance(x, (np.ndarray, torch.Tensor)) and x.ndim == 0)


def _as_index_tensor(x: Any, what: str) -> torch.Tensor:
    try:
        t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    except Exception as exc:
        raise LandmarkError(f"{what} must be integers, got {type(x).__name__}") from exc
    if t.dtype == torch.bool or t.is_complex():
        raise LandmarkError(f"{what} must be integers, got dtype {t.dtype}")
    if t.is_floating_point():
        if t.numel() and not bool(torch.isfinite(t).all() and (t == t.round()).all()):
            raise LandmarkError(f"{what} must be whole numbers, got non-integer values")
    return t.detach().to("cpu", torch.long)


def _as_float_tensor(x: Any, what: str) -> torch.Tensor:
    try:
        t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float64))
    except Exception as exc:
        raise LandmarkError(f"{what} must be real numbers, got {type(x).__name__}") from exc
    if t.is_complex():
        raise LandmarkError(f"{what} must be real numbers")
    return t.detach().to("cpu", torch.float64 if t.dtype == torch.float64 else torch.float32)
