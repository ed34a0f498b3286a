"""Reading landmark files: .npy, .csv, .json and iBUG .pts."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from .errors import PointsFormatError

__all__ = ["load_points", "PointsFormatError"]


def _rows_to_array(rows: list, path: Path) -> np.ndarray:
    try:
        arr = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PointsFormatError(f"{str(path)!r}: landmark rows must be numbers ({exc})") from exc
    if arr.ndim != 2 or arr.shape[1] not in (2, 3):
        raise PointsFormatError(f"{str(path)!r}: expected K rows of 2 or 3 coordinates, got shape {arr.shape}")
    if np.isinf(arr).any():
        k = int(np.argwhere(np.isinf(arr))[0, 0])
        raise PointsFormatError(f"{str(path)!r}: point {k} holds inf; write missing points as empty cells / NaN / null")
    return arr


def load_points(path: str | os.PathLike) -> np.ndarray:
    """Landmarks (K, 2) or (K, 3) from a file; NaN marks a missing point.

    Formats: ``.npy`` (array (K, 2|3)); ``.csv`` (one point per row, an optional header
    row, empty cells = missing); ``.json`` (a list of points or ``{"points": [...]}``,
    ``null`` = missing); ``.pts`` (iBUG: ``version``, ``n_points``, then ``{ x y ... }``).
    """
    from ._validate import check_path

    path = Path(check_path("path", path))
    if not path.is_file():
        raise PointsFormatError(f"landmark file {str(path)!r} does not exist")
    try:
        return _load_points(path)
    except PointsFormatError:
        raise
    except (OSError, EOFError, ValueError, TypeError, RecursionError) as exc:  # unreadable, empty or pickled .npy, bad JSON
        raise PointsFormatError(f"{str(path)!r}: cannot read landmarks ({type(exc).__name__}: {exc}); expected "
                                "K rows of 2 or 3 numbers in .npy, .csv, .json or .pts") from None  # fmt: skip


def _load_points(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _rows_to_array(np.load(path, allow_pickle=False).tolist(), path)
    if suffix == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            data = data.get("points", data.get("landmarks"))
        if not isinstance(data, list):
            raise PointsFormatError(f"{str(path)!r}: expected a list of points or {{'points': [...]}}")
        return _rows_to_array([[np.nan] * 3 if p is None else p for p in data], path)
    if suffix == ".csv":
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
        if rows and not _is_number(rows[0][0]):
            rows = rows[1:]  # header
        return _rows_to_array([[float(c) if c.strip() else np.nan for c in r] for r in rows], path)
    if suffix == ".pts":
        text = path.read_text().split("{", 1)
        if len(text) != 2:
            raise PointsFormatError(f"{str(path)!r}: not an iBUG .pts file (no '{{')")
        body = text[1].split("}", 1)[0]
        return _rows_to_array([ln.split() for ln in body.strip().splitlines() if ln.strip()], path)
    raise PointsFormatError(f"{str(path)!r}: unknown landmark format {suffix!r}; use .npy, .csv, .json or .pts")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return text.strip() == ""
