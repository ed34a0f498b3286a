"""Exception hierarchy of facemodel.

Every error a user can trigger derives from :class:`FaceModelError`. Each one also
subclasses the matching builtin, so ``except ValueError`` or ``except OSError`` keep
working for callers that do not know this package.
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
