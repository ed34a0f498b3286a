"""``Faces``: a batch of generated or fitted faces (vertices, codes, topology)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .errors import FaceModelError, MeshFormatError

__all__ = ["Faces", "export_paths"]


@dataclass(frozen=True)
class Faces:
    """N faces of one topology with the codes that generated them.

    Attributes:
        vertices: (N, V, 3) float tensor, millimetres (+y up, +z towards the viewer).
        codes: (N, D) latent codes ``[z_identity, z_expression, ..., z_noise]``.
        faces: (F, 3) long triangle indices (counter-clockwise seen from the front).
        code_slices: factor name (and ``"noise"``) -> slice of ``codes``.

    Works as a sequence: ``len(faces)``, ``faces[i]`` / ``faces[1:3]`` (a Faces of
    those rows), iteration; ``faces.identity`` / ``faces.expression`` give factor codes.
    """

    vertices: torch.Tensor
    codes: torch.Tensor
    faces: torch.Tensor
    code_slices: dict[str, slice]

    def __len__(self) -> int:
        return int(self.vertices.shape[0])

    def __getitem__(self, index) -> "Faces":
        if isinstance(index, (int, np.integer)):
            if not -len(self) <= int(index) < len(self):
                raise IndexError(f"index {index} out of range for {len(self)} faces")
            index = slice(int(index), int(index) + 1 if int(index) != -1 else None)
        return Faces(self.vertices[index], self.codes[index], self.faces, self.code_slices)

    def __iter__(self) -> Iterator["Faces"]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"Faces(n={len(self)}, vertices={self.num_vertices}, device={self.vertices.device}, dtype={self.vertices.dtype})"

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[1])

    def code(self, factor: str) -> torch.Tensor:
        """(N, d) codes of one factor (``"identity"``, ``"expression"``, ``"noise"``, ...)."""
        if factor not in self.code_slices:
            raise FaceModelError(f"no factor {factor!r}; this model has {sorted(self.code_slices)}")
        return self.codes[:, self.code_slices[factor]]

    @property
    def identity(self) -> torch.Tensor:
        return self.code("identity")

    @property
    def expression(self) -> torch.Tensor:
        return self.code("expression")

    @property
    def noise(self) -> torch.Tensor:
        return self.code("noise")

    def numpy(self) -> np.ndarray:
        """(N, V, 3) float32 vertices in mm as a numpy array."""
        return self.vertices.detach().cpu().float().numpy()

    def to(self, device: torch.device | str) -> "Faces":
        return Faces(self.vertices.to(device), self.codes.to(device), self.faces.to(device), self.code_slices)

    def to_trimesh(self, index: int | None = None):
        """A ``trimesh.Trimesh`` (one face: ``index`` or N == 1) or a list of them; vertex order kept."""
        import trimesh

        f = self.faces.cpu().numpy()
        v = self.numpy()
        if index is None and len(self) != 1:
            return [trimesh.Trimesh(x, f, process=False) for x in v]
        return trimesh.Trimesh(v[0 if index is None else index], f, process=False)

    def export_paths(self, path: str | os.PathLike, format: str | None = None) -> list[Path]:
        """The files :meth:`export` would write for ``path``, without writing anything
        (:func:`export_paths` for ``len(self)`` faces)."""
        return export_paths(path, len(self), format)

    def export(self, path: str | os.PathLike, format: str | None = None) -> list[Path]:
        """Write the faces as OBJ, PLY or GLB (atomically), in mm.

        One face is written to ``path``. Several faces go to ``path`` with the index
        appended to the stem (``faces.obj`` -> ``faces_000.obj``, ``faces_001.obj``, ...; no
        ``faces.obj`` itself), or, for ``path`` containing ``{i}``, to ``path.format(i=...)``;
        GLB writes one file (a scene with one node per face). :meth:`export_paths` tells the
        names beforehand.

        Returns:
            the written paths, in face order.

        Example:
            >>> model.sample(4, seed=0).export("faces.obj")
            [PosixPath('faces_000.obj'), PosixPath('faces_001.obj'), PosixPath('faces_002.obj'), PosixPath('faces_003.obj')]
        """
        from .geometry.mesh_io import save_mesh

        paths = self.export_paths(path, format)
        path = Path(path)
        fmt = paths[0].suffix.lstrip(".").lower()
        if path.suffix.lower() != f".{fmt}":
            path = path.with_name(path.name + f".{fmt}") if "{i}" not in path.name else path
        f = self.faces.cpu().numpy()
        v = self.numpy()
        if fmt == "glb" and len(self) > 1:
            import trimesh

            from ._fs import atomic_file

            scene = trimesh.Scene()
            for i, x in enumerate(v):
                scene.add_geometry(trimesh.Trimesh(x, f, process=False), node_name=f"face_{i:03d}")
            with atomic_file(path, "wb") as fh:
                fh.write(scene.export(file_type="glb"))
            return [path]
        if len(self) == 1 and "{i}" not in str(path):
            return [save_mesh(path, v[0], f)]
        return [save_mesh(p, x, f) for p, x in zip(paths, v)]


def export_paths(path: str | os.PathLike, n: int, format: str | None = None) -> list[Path]:
    """The files :meth:`Faces.export` writes for ``n`` faces at ``path``, without writing anything
    (for checking outputs before the faces exist, e.g. before a fit).

    Raises:
        MeshFormatError: a format other than obj, ply or glb.
        ArgumentTypeError: ``path`` is not a str or path-like.
    """
    from ._validate import check_path

    path = Path(check_path("path", path))
    if format is not None and not isinstance(format, str):
        raise MeshFormatError(f"format must be 'obj', 'ply', 'glb' or None, got {type(format).__name__} {format!r}")
    fmt = (format or path.suffix.lstrip(".")).lower()
    if fmt not in {"obj", "ply", "glb"}:
        raise MeshFormatError(f"unknown export format {fmt!r} of {str(path)!r}; use a .obj, .ply or .glb path")
    if path.suffix.lower() != f".{fmt}":
        path = path.with_name(path.name + f".{fmt}") if "{i}" not in path.name else path
    if (fmt == "glb" and n > 1) or (n == 1 and "{i}" not in str(path)):
        return [path]
    if "{i}" in str(path):
        return [Path(str(path).format(i=i)) for i in range(n)]
    return [path.with_name(f"{path.stem}_{i:03d}{path.suffix}") for i in range(n)]
