"""Atomic file and folder writes: nothing half-written is ever left at the target path."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import OutputPathError, OutputPermissionError

__all__ = ["atomic_file", "atomic_dir", "check_writable_parent", "sha256_file"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _output_error(exc: OSError, what: str) -> OutputPathError:
    """An :class:`OutputPathError` for an OS error on an output path (permission errors and
    read-only file systems as :class:`OutputPermissionError`, also a ``PermissionError``)."""
    cls = OutputPermissionError if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else OutputPathError
    return cls(f"cannot write {what}: {exc.strerror or exc}. Choose an output path in a writable location.")


def refuse_existing(paths, overwrite: bool = False) -> None:
    """The CLI's one policy for outputs (files and folders): an existing path is kept unless
    ``overwrite``; checked before any work is done, so a refusal wastes nothing.

    Raises:
        OutputPathError: naming every path that exists and the two ways on.
    """
    if overwrite:
        return
    taken = [str(p) for p in paths if p is not None and Path(p).exists()]
    if taken:
        raise OutputPathError(f"{', '.join(taken)} already exist{'s' if len(taken) == 1 else ''}; "
                              "choose another --out/--png or pass --overwrite to replace")  # fmt: skip


def check_writable_parent(path: str | os.PathLike) -> Path:
    """Return ``path`` as a Path after checking that its parent folder can be written.

    Raises:
        OutputPathError: the parent is missing and cannot be created, is not a folder,
            or is not writable.
    """
    from ._validate import check_path

    try:
        path = Path(check_path("path", path)).expanduser()
    except RuntimeError as exc:  # "~nosuchuser/..."
        raise OutputPathError(f"cannot expand {os.fspath(path)!r}: {exc}; give an absolute path") from None
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        cls = OutputPermissionError if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else OutputPathError
        raise cls(
            f"cannot create the folder {str(parent)!r} for {str(path)!r}: {exc}. "
            "Choose an output path in a writable location."
        ) from exc
    if not parent.is_dir():
        raise OutputPathError(f"{str(parent)!r} is not a folder; choose another output path.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPermissionError(
            f"the folder {str(parent)!r} is not writable; choose an output path you can write to."
        )
    return path


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a temporary file beside ``path``; rename it onto ``path`` only on success.

    Example:
        >>> with atomic_file("out.json", "w") as f:
        ...     f.write("{}")
    """
    path = check_writable_parent(path)
    try:
        if path.is_dir():
            raise OutputPathError(f"{str(path)!r} is a folder; give a file name to write to")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as exc:  # /proc, a name too long, a full disk...
        raise _output_error(exc, repr(str(path))) from exc
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        with os.fdopen(fd, mode) as f:
            yield f
            try:
                f.flush()
                os.fsync(f.fileno())
            except OSError as exc:  # a full disk shows here
                raise _output_error(exc, repr(str(path))) from exc
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise _output_error(exc, repr(str(path))) from exc
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; move it to ``path`` only on success.

    Args:
        path: the final folder. It must not exist unless ``overwrite`` is true
            (an existing empty folder is accepted).
        overwrite: replace an existing folder.

    Raises:
        OutputPathError: ``path`` exists (and is not empty) without ``overwrite``, or its
            parent cannot be written.
    """
    path = check_writable_parent(path)
    if path.exists():
        if not path.is_dir():
            raise OutputPathError(f"{str(path)!r} exists and is not a folder; choose another path.")
        if any(path.iterdir()) and not overwrite:
            raise OutputPathError(
                f"{str(path)!r} already exists and is not empty; remove it or pass overwrite=True "
                "(--overwrite on the command line)."
            )
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    except OSError as exc:
        raise _output_error(exc, f"the folder {str(path)!r}") from exc
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the usual folder mode
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
