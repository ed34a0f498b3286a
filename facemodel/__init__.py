"""facemodel: a decoupled 3D face model (identity x expression) after Fernandez Abrevaya et al.

    >>> from facemodel import FaceModel
    >>> model = FaceModel.from_pretrained(path_or_repo)   # no argument: the released weights
    >>> faces = model.sample(4, seed=0, expression="happiness")

Subpackages: ``facemodel.geometry`` (mesh IO, template, Laplacian, UV, geometry image,
rendering), ``facemodel.data`` (ICT 4D dataset, imports), ``facemodel.fitting`` and
``facemodel.landmarks`` (landmark fitting), ``facemodel.training`` (not imported here).
"""

from __future__ import annotations

from . import errors as _errors
from .errors import (
    BlendshapeError,
    CheckpointError,
    ChecksumMismatchError,
    ConfigError,
    DatasetFormatError,
    DataSourceError,
    DownloadError,
    EvaluationError,
    FaceModelError,
    FittingError,
    HubUploadError,
    InvalidGeometryError,
    InvalidRepoIdError,
    LabelsError,
    LandmarkError,
    MeshFormatError,
    NoExpressionMapError,
    OutputPathError,
    PointsFormatError,
    ReleaseError,
    SelectionError,
    TopologyMismatchError,
    UnknownLabelError,
    UnknownLandmarksError,
    UnsafeArchiveError,
    WeightsFormatError,
    WeightsNotFoundError,
)
from .errors import ArgumentTypeError, BatchTooLargeError, InvalidArgumentError, NumericalError, OutputPermissionError
from .errors import NoFaceError, PhotoError, PhotoExtraMissingError

__version__ = "0.7.0"

from typing import TYPE_CHECKING  # noqa: E402

if TYPE_CHECKING:  # the names below load on first use (``import facemodel`` stays light: no torch)
    from .geometry.mesh_io import load_mesh, save_mesh
    from .model import FaceModel, FaceModelConfig
    from .outputs import Faces

_LAZY = {"FaceModel": ".model", "FaceModelConfig": ".model", "Faces": ".outputs",
         "load_mesh": ".geometry.mesh_io", "save_mesh": ".geometry.mesh_io"}  # fmt: skip


def __getattr__(name: str):
    """Load :class:`FaceModel` and friends on first access (PEP 562), so that ``import
    facemodel`` and ``facemodel --help`` do not pay for torch and pydantic."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "__version__",
    "FaceModel",
    "FaceModelConfig",
    "Faces",
    "load_mesh",
    "save_mesh",
    *_errors.__all__,  # every error class
]
__all__ += ["InvalidArgumentError", "ArgumentTypeError", "BatchTooLargeError", "NumericalError", "OutputPermissionError"]
