"""Order-preserving mesh reading and writing.

The ICT meshes share one topology through their *vertex order*: vertex ``k`` of every OBJ
is the same point of the face. Many loaders split vertices at UV seams or merge duplicates,
which silently breaks that correspondence. :func:`load_obj` reads the ``v`` lines in file
order and never reorders, splits or merges them; polygons are fan-triangulated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._fs import atomic_file
from ..errors import InvalidGeometryError, MeshFormatError

__all__ = ["Mesh", "load_obj", "read_obj_vertices", "load_mesh", "save_mesh", "save_obj"]


@dataclass(frozen=True)
class Mesh:
    """A triangle mesh read from disk.

    Attributes:
        vertices: (V, 3) float32, in the file's units, in file order.
        faces: (F, 3) int64, 0-based vertex indices, counter-clockwise as in the file.
        polygon_index: (F,) int64, for each triangle the index of the file polygon it came
            from (a quad gives two triangles with the same polygon index).
    """

    vertices: np.ndarray
    faces: np.ndarray
    polygon_index: np.ndarray


def _read_text(path: str | os.PathLike) -> list[str]:
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            return f.read().splitlines()
    except FileNotFoundError as exc:
        raise MeshFormatError(f"mesh file {str(path)!r} does not exist") from exc
    except IsADirectoryError as exc:
        raise MeshFormatError(f"{str(path)!r} is a folder, not a mesh file") from exc
    except (OSError, ValueError) as exc:  # not a folder on the way, no permission, name too long, NUL byte
        raise MeshFormatError(f"cannot read the mesh file {str(path)!r}: {exc}") from exc


def _parse_vertices(lines: list[str], path: str | os.PathLike) -> np.ndarray:
    rows = [ln[2:] for ln in lines if ln.startswith("v ")]
    if not rows:
        return np.zeros((0, 3), np.float32)
    flat = " ".join(rows).split()
    try:
        values = np.array(flat, dtype=np.float64)
    except ValueError as exc:
        raise MeshFormatError(f"{str(path)!r}: a 'v' line holds a non-numeric value ({exc})") from exc
    if values.size == 3 * len(rows):
        xyz = values.reshape(-1, 3)
    else:  # some vertices carry colours (v x y z r g b): parse line by line
        parts = [r.split() for r in rows]
        if any(len(p) < 3 for p in parts):
            raise MeshFormatError(f"{str(path)!r}: a 'v' line has fewer than 3 coordinates")
        xyz = np.array([p[:3] for p in parts], dtype=np.float64)
    with np.errstate(over="ignore"):
        return _finite(xyz.astype(np.float32), path)


def _finite(vertices: np.ndarray, path) -> np.ndarray:
    """``vertices`` (float32) if finite; NaN, inf and values beyond float32 (1e39) are refused."""
    if not np.isfinite(vertices).all():
        raise InvalidGeometryError(f"{str(path)!r}: vertex coordinates hold NaN or inf (or values beyond "
                                   "float32's 3.4e38); every coordinate must be a finite number")  # fmt: skip
    return vertices


def _parse_faces(lines: list[str], n_vertices: int, path) -> tuple[np.ndarray, np.ndarray]:
    tris: list[tuple[int, int, int]] = []
    poly: list[int] = []
    p = 0
    for ln in lines:
        if not ln.startswith("f "):
            continue
        try:
            idx = [int(tok.split("/", 1)[0]) for tok in ln[2:].split()]
        except ValueError as exc:
            raise MeshFormatError(f"{str(path)!r}: malformed face line {ln!r}") from exc
        if len(idx) < 3:
            raise MeshFormatError(f"{str(path)!r}: face line {ln!r} has fewer than 3 vertices")
        idx = [i - 1 if i > 0 else n_vertices + i for i in idx]  # OBJ is 1-based; negative = relative
        for k in range(1, len(idx) - 1):  # fan triangulation keeps the winding
            tris.append((idx[0], idx[k], idx[k + 1]))
            poly.append(p)
        p += 1
    faces = np.asarray(tris, dtype=np.int64).reshape(-1, 3)
    if faces.size and (faces.min() < 0 or faces.max() >= n_vertices):
        raise MeshFormatError(
            f"{str(path)!r}: a face refers to a vertex outside 1..{n_vertices}"
        )
    return faces, np.asarray(poly, dtype=np.int64)


def read_obj_vertices(path: str | os.PathLike) -> np.ndarray:
    """Read only the ``v`` lines of an OBJ file, in file order.

    Returns:
        (V, 3) float32 array in the file's units.
    """
    return _parse_vertices(_read_text(path), path)


def load_obj(path: str | os.PathLike) -> Mesh:
    """Read an OBJ file keeping its vertex order; polygons are fan-triangulated.

    UVs, normals and groups are ignored: vertex ``k`` of the result is the ``k``-th ``v``
    line of the file, so meshes that share a topology stay in correspondence.

    Raises:
        MeshFormatError: the file is missing or malformed.
    """
    lines = _read_text(path)
    vertices = _parse_vertices(lines, path)
    faces, poly = _parse_faces(lines, len(vertices), path)
    return Mesh(vertices=vertices, faces=faces, polygon_index=poly)


def load_mesh(path: str | os.PathLike) -> Mesh:
    """Read an OBJ (own parser) or PLY/OFF/STL/GLB (trimesh, order kept) mesh file.

    Raises:
        MeshFormatError: the file is missing, of an unknown format, or malformed.
        InvalidGeometryError: its vertex coordinates hold NaN or inf.
    """
    from .._validate import check_path

    path = Path(check_path("path", path))
    suffix = path.suffix.lower()
    if suffix == ".obj":
        return load_obj(path)
    if suffix not in {".ply", ".off", ".stl", ".glb", ".gltf"}:
        raise MeshFormatError(
            f"{str(path)!r}: unknown mesh format {suffix!r}; use .obj, .ply, .off, .stl or .glb"
        )
    if not path.is_file():
        raise MeshFormatError(f"mesh file {str(path)!r} does not exist")
    import trimesh

    try:
        m = trimesh.load(path, process=False, maintain_order=True, force="mesh")
    except Exception as exc:  # trimesh raises many types for broken files
        raise MeshFormatError(f"{str(path)!r}: cannot read mesh ({exc})") from exc
    faces = np.asarray(m.faces, dtype=np.int64)
    with np.errstate(over="ignore"):
        vertices = _finite(np.asarray(m.vertices, dtype=np.float32).reshape(-1, 3), path)
    return Mesh(
        vertices=vertices,
        faces=faces,
        polygon_index=np.arange(len(faces), dtype=np.int64),
    )


def save_obj(path: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray) -> Path:
    """Write a triangle mesh as OBJ (atomically).

    Args:
        vertices: (V, 3) float array, written with 6 decimals.
        faces: (F, 3) int array, 0-based (written 1-based).
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise MeshFormatError(f"vertices must have shape (V, 3), got {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise MeshFormatError(f"faces must have shape (F, 3), got {faces.shape}")
    v = "\n".join("v %.6f %.6f %.6f" % tuple(r) for r in vertices)
    f = "\n".join("f %d %d %d" % tuple(r) for r in faces + 1)
    with atomic_file(path, "w") as fh:
        fh.write(v + "\n" + f + "\n")
    return Path(path)


def save_mesh(path: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray) -> Path:
    """Write a mesh; the format follows the suffix (.obj, .ply, .glb, .off, .stl).

    OBJ is written by :func:`save_obj`; other formats by trimesh without any processing,
    so vertex order is kept. The write is atomic.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".obj":
        return save_obj(path, vertices, faces)
    if suffix not in {".ply", ".glb", ".off", ".stl"}:
        raise MeshFormatError(f"{str(path)!r}: cannot write format {suffix!r}; use .obj, .ply, .glb")
    import trimesh

    m = trimesh.Trimesh(np.asarray(vertices), np.asarray(faces), process=False)
    data = m.export(file_type=suffix[1:])
    with atomic_file(path, "wb") as fh:
        fh.write(data if isinstance(data, bytes) else data.encode())
    return path
