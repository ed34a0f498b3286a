"""On-disk dataset format shared by the ICT 4D builder and the generic (user scans) importer.

A dataset folder holds:

- ``manifest.json``: format name and version, seed, counts, label names, source, units,
  per-file sha256 and one overall ``checksum`` (sha256 over the data files, in order).
- ``template.npz``: ``vertices`` (V, 3) float32 mm, ``faces`` (F, 3) int64,
  ``landmarks`` (L,) int64.
- ``offsets.npy``: (N, V, 3) vertex offsets from the template, mm (float16 by default);
  memory-mapped on load, so a Dataset reads only the rows it is asked for.
- ``meshes.npz``: one row per mesh: ``identity`` (int32, index into identities),
  ``expression`` (int16 label id, -1 = unlabelled), ``split`` (int8: 0 train, 1 val,
  2 test), ``kind`` (int8, index into the manifest's ``kinds``), ``sequence`` and
  ``frame`` (int32, -1 when not part of a sequence), optional ``blendshapes`` (N, 53)
  float32 ICT weights and ``files`` (source file names).
- ``identities.npz``: ``names`` (str), ``split`` (int8), optional ``pca_weights``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from .._fs import sha256_file
from ..errors import DatasetFormatError

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "SPLITS", "Manifest", "sha256_file", "write_dataset_files", "read_manifest"]

FORMAT_NAME = "facemodel-dataset"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
DATA_FILES = ("template.npz", "offsets.npy", "meshes.npz", "identities.npz")


class Manifest(BaseModel):
    """``manifest.json`` of a dataset folder."""

    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    name: str
    units: str = "mm"
    seed: int | None = None
    num_meshes: int
    num_vertices: int
    num_identities: int
    offsets_dtype: str
    expression_labels: list[str]
    kinds: list[str]
    counts: dict[str, Any] = Field(default_factory=dict)
    source: dict[str, Any] = Field(default_factory=dict)
    build: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict)
    checksum: str = ""


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    # uncompressed and without timestamps inside: byte-identical for identical arrays
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def write_dataset_files(
    folder: Path,
    manifest: Manifest,
    *,
    template: dict[str, np.ndarray],
    meshes: dict[str, np.ndarray],
    identities: dict[str, np.ndarray],
) -> Manifest:
    """Write the small files of a dataset whose ``offsets.npy`` is already in ``folder``.

    Computes per-file sha256 and the overall checksum and writes ``manifest.json`` last.
    """
    _save_npz(folder / "template.npz", **template)
    _save_npz(folder / "meshes.npz", **meshes)
    _save_npz(folder / "identities.npz", **identities)
    files = {name: sha256_file(folder / name) for name in DATA_FILES}
    overall = hashlib.sha256("".join(f"{k}:{v}\n" for k, v in files.items()).encode()).hexdigest()
    manifest = manifest.model_copy(update={"files": files, "checksum": overall})
    with open(folder / "manifest.json", "w") as f:
        f.write(manifest.model_dump_json(indent=2))
    return manifest


def read_manifest(root: str | os.PathLike) -> Manifest:
    """Read and validate ``manifest.json`` of a dataset folder.

    Raises:
        DatasetFormatError: missing folder/files, another format, or a newer version.
    """
    root = Path(root)
    path = root / "manifest.json"
    if not path.is_file():
        raise DatasetFormatError(
            f"{str(root)!r} is not a facemodel dataset (no manifest.json); build one with "
            "`facemodel data build-ict` or `facemodel data import`"
        )
    try:
        manifest = Manifest.model_validate(json.loads(path.read_text()))
    except Exception as exc:  # JSON or validation error
        raise DatasetFormatError(f"{str(path)!r} is not a valid dataset manifest: {exc}") from exc
    if manifest.format != FORMAT_NAME:
        raise DatasetFormatError(f"{str(path)!r} has format {manifest.format!r}, expected {FORMAT_NAME!r}")
    if manifest.format_version > FORMAT_VERSION:
        raise DatasetFormatError(
            f"{str(root)!r} uses dataset format version {manifest.format_version}; this facemodel "
            f"reads up to {FORMAT_VERSION}: upgrade facemodel"
        )
    missing = [f for f in DATA_FILES if not (root / f).is_file()]
    if missing:
        raise DatasetFormatError(f"dataset {str(root)!r} is incomplete: missing {', '.join(missing)}")
    return manifest
