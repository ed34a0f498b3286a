"""The template mesh: topology, rest shape in millimetres, landmarks and UV map."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from ..errors import InvalidGeometryError, TopologyMismatchError
from .laplacian import cotangent_laplacian, scipy_to_torch_sparse
from .uv import UVMap, harmonic_uv

__all__ = ["Template", "check_vertices"]


def check_vertices(vertices: np.ndarray | torch.Tensor, num_vertices: int, *, name: str = "vertices") -> None:
    """Raise a clear error unless ``vertices`` is (..., num_vertices, 3) and finite.

    Raises:
        TopologyMismatchError: wrong vertex count (the mesh is not in the template's topology).
        InvalidGeometryError: wrong trailing dimension, or NaN / inf coordinates.
    """
    shape = tuple(vertices.shape)
    if len(shape) < 2 or shape[-1] != 3:
        raise InvalidGeometryError(f"{name} must have shape (..., {num_vertices}, 3), got {shape}")
    if shape[-2] != num_vertices:
        raise TopologyMismatchError(
            f"{name} has {shape[-2]} vertices but the template has {num_vertices}; "
            "meshes must be registered to the template topology (same vertex count and order)"
        )
    finite = torch.isfinite(vertices).all() if isinstance(vertices, torch.Tensor) else np.isfinite(vertices).all()
    if not bool(finite):
        raise InvalidGeometryError(f"{name} contains NaN or infinite coordinates")


@dataclass(frozen=True, eq=False)
class Template:
    """A fixed-topology template mesh.

    Attributes:
        vertices: (V, 3) float32 rest shape in millimetres (+y up, +z towards the viewer).
        faces: (F, 3) int64 triangles, counter-clockwise seen from the front.
        landmarks: (68,) int64 vertex indices of the iBUG-68 landmarks (Multi-PIE order).
        name: a short identifier, e.g. ``"ict-face"``.
    """

    vertices: np.ndarray
    faces: np.ndarray
    landmarks: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    name: str = "template"

    def __post_init__(self) -> None:
        check_vertices(self.vertices, len(self.vertices), name="template vertices")
        if self.faces.ndim != 2 or self.faces.shape[1] != 3:
            raise InvalidGeometryError(f"faces must have shape (F, 3), got {self.faces.shape}")
        if self.faces.min() < 0 or self.faces.max() >= len(self.vertices):
            raise InvalidGeometryError("faces index vertices outside the template")
        if len(self.landmarks) and (self.landmarks.min() < 0 or self.landmarks.max() >= len(self.vertices)):
            raise InvalidGeometryError("landmark indices lie outside the template's vertices")

    @property
    def num_vertices(self) -> int:
        return int(len(self.vertices))

    @property
    def num_faces(self) -> int:
        return int(len(self.faces))

    @cached_property
    def uv_map(self) -> UVMap:
        """Harmonic UV map onto the unit square (computed once, ~0.1 s)."""
        return harmonic_uv(self.vertices, self.faces)

    @property
    def uv(self) -> np.ndarray:
        """(V, 2) float64 UV coordinates in [0, 1]^2."""
        return self.uv_map.uv

    def laplacian(self, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Cotangent Laplacian of the rest shape as a sparse (V, V) torch tensor (NSD)."""
        return scipy_to_torch_sparse(cotangent_laplacian(self.vertices, self.faces), dtype=dtype)

    def check(self, vertices: np.ndarray | torch.Tensor, *, name: str = "vertices") -> None:
        """Validate (..., V, 3) finite vertices in this topology (see :func:`check_vertices`)."""
        check_vertices(vertices, self.num_vertices, name=name)

    def vertex_normals(self, vertices: np.ndarray | None = None) -> np.ndarray:
        """Area-weighted unit vertex normals (V, 3) of ``vertices`` (default: the rest shape)."""
        from .render import vertex_normals

        return vertex_normals(self.vertices if vertices is None else vertices, self.faces)
