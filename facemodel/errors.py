"""Exception hierarchy of facemodel.

Every error a user can trigger derives from :class:`FaceModelError`. Each one also
subclasses the matching builtin, so ``except ValueError`` or ``except OSError`` keep
working for callers that do not know this package. :class:`FaceModelError` itself derives
from ``Exception`` only: the builtin base belongs to each concrete error (a bad shape is a
``ValueError``, a missing file a ``FileNotFoundError``), and a base deriving from one of them
would make every error that builtin too. The modules that raise an error re-export it
(``from facemodel.fitting import FittingError`` works), and :mod:`facemodel` re-exports all.
"""

from __future__ import annotations

__all__ = [
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
    "WeightsNotFoundError",
    "WeightsFormatError",
    "UnknownLabelError",
    "HubUploadError",
    "InvalidRepoIdError",
    "FittingError",
    "LandmarkError",
    "UnknownLandmarksError",
    "PointsFormatError",
    "BlendshapeError",
    "NoExpressionMapError",
    "EvaluationError",
    "ConfigError",
    "CheckpointError",
    "SelectionError",
    "ReleaseError",
]
__all__ += ["InvalidArgumentError", "ArgumentTypeError", "BatchTooLargeError", "NumericalError",
            "OutputPermissionError"]


class FaceModelError(Exception):
    """Base class of every error raised on purpose by facemodel."""


class MeshFormatError(FaceModelError, ValueError):
    """A mesh file cannot be parsed (unknown format, malformed lines, bad indices)."""


class TopologyMismatchError(FaceModelError, ValueError):
    """A mesh does not share the template's topology (vertex count or faces differ)."""


class InvalidGeometryError(FaceModelError, ValueError):
    """Vertex coordinates are not finite or have the wrong shape."""


class DataSourceError(FaceModelError, FileNotFoundError):
    """A data folder (ICT-FaceKit, a dataset) is missing or lacks a required file."""


class DownloadError(FaceModelError, OSError):
    """A download failed or was truncated."""


class ChecksumMismatchError(DownloadError):
    """A downloaded or extracted file does not have the expected sha256."""


class UnsafeArchiveError(FaceModelError, ValueError):
    """An archive entry would be written outside the extraction folder."""


class DatasetFormatError(FaceModelError, ValueError):
    """A dataset folder is corrupt, of an unknown format version, or inconsistent."""


class LabelsError(FaceModelError, ValueError):
    """A labels CSV names missing files, unknown labels, or has bad columns."""


class OutputPathError(FaceModelError, OSError):
    """An output location cannot be written (exists, not writable, not a folder)."""


# ---- model weights and labels (facemodel.model) ---------------------------------------------
class WeightsNotFoundError(FaceModelError, FileNotFoundError):
    """No ``config.json`` / ``model.safetensors`` where weights were expected."""


class WeightsFormatError(FaceModelError, ValueError):
    """Weights or config do not match the model (missing/unexpected tensors, bad config)."""


class UnknownLabelError(FaceModelError, KeyError):
    """A label name or index that the model's label codes do not have."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


# ---- the Hugging Face Hub (facemodel.hub) ---------------------------------------------------
class HubUploadError(FaceModelError, OSError):
    """Uploading a model to the Hugging Face Hub failed (authentication, permissions, network)."""


class InvalidRepoIdError(FaceModelError, ValueError):
    """A Hugging Face Hub repository id is malformed (expected ``"org/name"``)."""


# ---- fitting and its inputs (facemodel.fitting, landmarks, io_points) -----------------------
class FittingError(FaceModelError, ValueError):
    """Invalid input to a fit: shapes, non-finite values, missing landmarks, devices,
    dtypes, or an unknown solver / alignment / camera / init."""


class LandmarkError(FaceModelError, ValueError):
    """A landmark spec is malformed: wrong shapes, indices outside the mesh, barycentrics
    that are negative, not finite or do not sum to 1."""


class UnknownLandmarksError(LandmarkError):
    """A landmark set name that is not registered."""


class PointsFormatError(FaceModelError, ValueError):
    """A landmark file cannot be read."""


# ---- blendshapes and the blendshape map (facemodel.blendshapes, expression_map) -------------
class BlendshapeError(FaceModelError, ValueError):
    """Blendshape weights or names that cannot be used (unknown name, NaN, out of range...)."""


class NoExpressionMapError(FaceModelError, RuntimeError):
    """The model has no blendshape map (an export made before one was learned)."""


# ---- evaluation (facemodel.evaluation) ------------------------------------------------------
class EvaluationError(FaceModelError, ValueError):
    """An evaluation cannot run as asked (bad model, data or protocol settings)."""


# ---- training (facemodel.training) ----------------------------------------------------------
class ConfigError(FaceModelError, ValueError):
    """A training config file or override is invalid."""


class CheckpointError(FaceModelError, ValueError):
    """A checkpoint is missing or does not belong to this run."""


class SelectionError(FaceModelError, ValueError):
    """A run cannot be scored (no candidates, missing dataset...)."""


class ReleaseError(FaceModelError, ValueError):
    """The release cannot be made as asked (missing inputs, over the size budget...)."""


# ---- argument validation at the public boundary (facemodel._validate) ----------------------
class InvalidArgumentError(FaceModelError, ValueError):
    """An argument has the right type but an unusable value: wrong shape, NaN / inf, out of range."""


class ArgumentTypeError(FaceModelError, TypeError):
    """An argument of the wrong type (a string where an array is expected, a float seed...)."""


class BatchTooLargeError(FaceModelError, MemoryError):
    """A batch whose outputs would not fit in memory (see ``facemodel._validate.MAX_BATCH``)."""


class NumericalError(FaceModelError, ArithmeticError):
    """A computation gave NaN / inf or a solver failed on inputs that passed validation."""


class OutputPermissionError(OutputPathError, PermissionError):
    """An output location cannot be written for lack of permission (or a read-only file system)."""


# ---- photos (facemodel.photo) --------------------------------------------------------------
class PhotoError(FaceModelError, ValueError):
    """An image that cannot be read (missing file, not an image, wrong array shape or dtype)."""


class NoFaceError(PhotoError):
    """No face was found in the image (or fewer faces than the one asked for)."""


class PhotoExtraMissingError(FaceModelError, ImportError):
    """The ``photo`` extra (dlib, its 68-point predictor) is not installed."""


__all__ += ["PhotoError", "NoFaceError", "PhotoExtraMissingError"]
