"""Reading the ICT Face Model (ICT-FaceKit, MIT licence) from a packed local folder.

The folder layout is the one of ``../shared/data/ict-facekit`` (and of what
:func:`facemodel.data.download.download_ict` produces): ``generic_neutral_mesh.obj``,
``shapes.npz``, ``vertex_indices.json``, ``LICENSE``. Upstream units are centimetres;
everything this module returns through :meth:`ICTSource.face_template` and the
``*_mm`` accessors is in millimetres.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import DataSourceError
from ..geometry.mesh_io import Mesh, load_obj
from ..geometry.template import Template

__all__ = [
    "ICTSource",
    "ICT_COMMIT",
    "ICT_REPOSITORY",
    "FACE_VERTEX_COUNT",
    "FACE_POLYGON_COUNT",
    "CM_TO_MM",
    "default_ict_dir",
    "REQUIRED_FILES",
]

ICT_REPOSITORY = "ICT-VGL/ICT-FaceKit"
ICT_COMMIT = "da5f95a607f5e6b37755b38d3385d7f2853732e5"
FACE_VERTEX_COUNT = 9409  # vertices 0..9408: the face area (upstream region table)
FACE_POLYGON_COUNT = 9230  # polygons 0..9229
CM_TO_MM = 10.0
REQUIRED_FILES = ("generic_neutral_mesh.obj", "shapes.npz", "vertex_indices.json")


def default_ict_dir() -> Path:
    """Where ICT data is looked for: ``$FACEMODEL_ICT_DIR``, else the download cache."""
    env = os.environ.get("FACEMODEL_ICT_DIR")
    if env:
        return Path(env).expanduser()
    cache = Path(os.environ.get("FACEMODEL_CACHE", Path.home() / ".cache" / "facemodel"))
    return cache / "ict-facekit" / ICT_COMMIT


class ICTSource:
    """The ICT Face Model read from a packed folder.

    Args:
        root: folder with ``generic_neutral_mesh.obj``, ``shapes.npz`` and
            ``vertex_indices.json`` (default: :func:`default_ict_dir`).

    Raises:
        DataSourceError: the folder or one of its files is missing.

    Example:
        >>> ict = ICTSource("../shared/data/ict-facekit")
        >>> tpl = ict.face_template()            # 9,409 vertices, mm
        >>> ict.identity_deltas_mm.shape         # (100, 9409, 3)
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_ict_dir()
        missing = [f for f in REQUIRED_FILES if not (self.root / f).is_file()]
        if missing:
            raise DataSourceError(
                f"ICT-FaceKit folder {str(self.root)!r} lacks {', '.join(missing)}. Point "
                "--source / FACEMODEL_ICT_DIR at a packed ict-facekit folder, or download it "
                "with `facemodel data build-ict --download ...`."
            )

    def __repr__(self) -> str:
        return f"ICTSource({str(self.root)!r})"

    # ---- raw upstream data (centimetres, full 26,719-vertex head) -------------------
    @cached_property
    def _shapes(self) -> dict[str, np.ndarray]:
        with np.load(self.root / "shapes.npz") as z:
            return {k: z[k] for k in z.files}

    @cached_property
    def indices(self) -> dict:
        """The parsed upstream ``vertex_indices.json``."""
        with open(self.root / "vertex_indices.json") as f:
            return json.load(f)

    @cached_property
    def mesh(self) -> Mesh:
        """The generic neutral OBJ (full head, cm), vertex order kept, quads triangulated."""
        return load_obj(self.root / "generic_neutral_mesh.obj")

    @property
    def expression_names(self) -> list[str]:
        """The 53 ICT blendshape names (ARKit-style, e.g. ``jawOpen``, ``mouthSmile_L``)."""
        return [str(n) for n in self._shapes["expression_names"]]

    @property
    def identity_names(self) -> list[str]:
        return [str(n) for n in self._shapes["identity_names"]]

    @property
    def upstream_commit(self) -> str:
        manifest = self.root / "manifest.json"
        if manifest.is_file():
            with open(manifest) as f:
                return json.load(f).get("upstream_commit", ICT_COMMIT)
        return ICT_COMMIT

    # ---- the face area in millimetres ------------------------------------------------
    @cached_property
    def face_faces(self) -> np.ndarray:
        """(18460, 3) int64 triangles of the face area (polygons 0..9229)."""
        m = self.mesh
        return m.faces[m.polygon_index < FACE_POLYGON_COUNT]

    @cached_property
    def neutral_mm(self) -> np.ndarray:
        """(9409, 3) float32 generic neutral face, mm."""
        return self._shapes["generic_neutral"][:FACE_VERTEX_COUNT] * np.float32(CM_TO_MM)

    @cached_property
    def identity_deltas_mm(self) -> np.ndarray:
        """(100, 9409, 3) float32 identity modes (unit-variance PCA), mm."""
        s = self._shapes
        return (s["identity_shapes"][:, :FACE_VERTEX_COUNT] - s["generic_neutral"][:FACE_VERTEX_COUNT]) * np.float32(
            CM_TO_MM
        )

    @cached_property
    def expression_shapes_mm(self) -> np.ndarray:
        """(53, 9409, 3) float32 blendshapes of the generic neutral (absolute positions), mm."""
        return self._shapes["expression_shapes"][:, :FACE_VERTEX_COUNT] * np.float32(CM_TO_MM)

    @property
    def landmark_indices(self) -> np.ndarray:
        """(68,) int64 iBUG-68 landmark vertices (Multi-PIE order), all inside the face area."""
        return np.asarray(self.indices["idx_to_landmark_verts"], dtype=np.int64)

    def face_template(self) -> Template:
        """The ICT face-area template (9,409 vertices, 18,460 triangles, mm, 68 landmarks)."""
        return Template(
            vertices=self.neutral_mm,
            faces=self.face_faces,
            landmarks=self.landmark_indices,
            name="ict-face",
        )

    def identity_mm(self, weights: np.ndarray) -> np.ndarray:
        """Neutral face(s) of identity PCA weights, the upstream linear model.

        Args:
            weights: (..., K) float, K <= 100 standard-normal weights of the first K modes.

        Returns:
            (..., 9409, 3) float32 neutral vertices in mm.
        """
        w = np.asarray(weights, dtype=np.float32)
        k = w.shape[-1]
        return self.neutral_mm + np.tensordot(w, self.identity_deltas_mm[:k], axes=(-1, 0))
