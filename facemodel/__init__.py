"""facemodel: a decoupled 3D face model (identity x expression) after Fernandez Abrevaya et al.

The geometry toolkit (``facemodel.geometry``) and the data tools (``facemodel.data``) are
available now; the trained ``FaceModel`` lands with the release.
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

__version__ = "0.1.0.dev0"

__all__ = [
    "__version__",
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
