"""facemodel: a decoupled 3D face model (identity x expression) after Fernandez Abrevaya et al.

    >>> from facemodel import FaceModel
    >>> model = FaceModel.from_pretrained(path_or_repo)   # no argument: the released weights
    >>> faces = model.sample(4, seed=0, expression="happiness")

Subpackages: ``facemodel.geometry`` (mesh IO, template, Laplacian, UV, geometry image,
rendering), ``facemodel.data`` (ICT 4D dataset, imports), ``facemodel.fitting`` and
``facemodel.landmarks`` (landmark fitting), ``facemodel.training`` (not imported here).
"""

from __future__ import annotations

from .errors import (
    ChecksumMismatchError,
    DataSourceError,
    DatasetFormatError,
    DownloadError,
    FaceModelError,
    InvalidGeometryError,
    LabelsError,
    MeshFormatError,
    OutputPathError,
    TopologyMismatchError,
    UnsafeArchiveError,
)
from .errors import ArgumentTypeError, BatchTooLargeError, InvalidArgumentError, NumericalError, OutputPermissionError

__version__ = "0.3.1"

from .geometry.mesh_io import load_mesh, save_mesh  # noqa: E402
from .model import FaceModel, FaceModelConfig  # noqa: E402
from .outputs import Faces  # noqa: E402

__all__ = [
    "__version__",
    "FaceModel",
    "FaceModelConfig",
    "Faces",
    "load_mesh",
    "save_mesh",
    "FaceModelError",
    "MeshFormatError",
    "TopologyMismatchError",
    "InvalidGeometryError",
    "DataSourceError",
    "DownloadError",
    "ChecksumMismatchError",
    "UnsafeArchiveError",
    "DatasetFormatError",
    "LabelsError",
    "OutputPathError",
]
__all__ += ["InvalidArgumentError", "ArgumentTypeError", "BatchTooLargeError", "NumericalError", "OutputPermissionError"]
