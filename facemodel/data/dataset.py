"""A torch ``Dataset`` over a dataset folder (ICT 4D or imported scans)."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DatasetFormatError
from ..geometry.template import Template
from .store import SPLITS, Manifest, read_manifest

__all__ = ["FaceDataset"]


class FaceDataset(Dataset):
    """Registered face meshes with identity and expression labels.

    Offsets are memory-mapped: only the rows that are indexed are read from disk.

    Args:
        root: dataset folder (``manifest.json`` + data files).
        split: ``"train"``, ``"val"``, ``"test"`` or ``None`` for all meshes.
        expression_labelled_only: keep only meshes with an expression label.
        kinds: keep only these kinds (e.g. ``("free",)``); default all.

    Each item is a dict:
        - ``vertices``: (V, 3) float32, mm.
        - ``identity``: int64 identity class in ``0 .. num_identity_classes - 1`` (classes
          are the identities of the selected split, in index order).
        - ``expression``: int64 label id (see ``expression_labels``), -1 = unlabelled.
        - ``index``: int64 row of the mesh in the whole dataset.

    Example:
        >>> ds = FaceDataset("~/.cache/facemodel/ict4d", split="train")
        >>> loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True)
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = "train",
        *,
        expression_labelled_only: bool = False,
        kinds: Iterable[str] | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        self.manifest: Manifest = read_manifest(self.root)
        if split is not None and split not in SPLITS:
            raise DatasetFormatError(f"split must be one of {SPLITS} or None, got {split!r}")
        self.split = split
        with np.load(self.root / "meshes.npz") as z:
            self._meta = {k: z[k] for k in z.files}
        with np.load(self.root / "identities.npz") as z:
            self._identities = {k: z[k] for k in z.files}
        n = self.manifest.num_meshes
        if len(self._meta["identity"]) != n:
            raise DatasetFormatError(f"{str(self.root)!r}: meshes.npz has {len(self._meta['identity'])} rows, manifest {n}")
        keep = np.ones(n, bool)
        if split is not None:
            keep &= self._meta["split"] == SPLITS.index(split)
        if expression_labelled_only:
            keep &= self._meta["expression"] >= 0
        if kinds is not None:
            kinds = list(kinds)
            unknown = set(kinds) - set(self.manifest.kinds)
            if unknown:
                raise DatasetFormatError(f"unknown kinds {sorted(unknown)}; this dataset has {self.manifest.kinds}")
            keep &= np.isin(self._meta["kind"], [self.manifest.kinds.index(k) for k in kinds])
        self.indices = np.flatnonzero(keep)
        ids = self._meta["identity"]
        split_ids = (
            np.arange(self.manifest.num_identities)
            if split is None
            else np.flatnonzero(self._identities["split"] == SPLITS.index(split))
        )
        self.identity_ids = split_ids  # global identity index of each class
        lookup = np.full(self.manifest.num_identities, -1, np.int64)
        lookup[split_ids] = np.arange(len(split_ids))
        self._identity_class = lookup[ids]

    @cached_property
    def _offsets(self) -> np.ndarray:
        arr = np.load(self.root / "offsets.npy", mmap_mode="r")
        if arr.shape != (self.manifest.num_meshes, self.manifest.num_vertices, 3):
            raise DatasetFormatError(f"{str(self.root)!r}: offsets.npy has shape {arr.shape}, manifest disagrees")
        return arr

    @cached_property
    def template(self) -> Template:
        """The dataset's template mesh (vertices in mm)."""
        with np.load(self.root / "template.npz") as z:
            return Template(vertices=z["vertices"], faces=z["faces"], landmarks=z["landmarks"], name=self.manifest.name)

    @property
    def expression_labels(self) -> list[str]:
        return list(self.manifest.expression_labels)

    @property
    def num_identity_classes(self) -> int:
        return int(len(self.identity_ids))

    @property
    def num_expression_classes(self) -> int:
        return len(self.manifest.expression_labels)

    def __len__(self) -> int:
        return int(len(self.indices))

    def meta(self, key: str) -> np.ndarray:
        """Per-mesh metadata of the selected rows (``identity``, ``expression``, ``kind``,
        ``sequence``, ``frame``, ``split``, ``blendshapes`` (M, 53) when present)."""
        if key not in self._meta:
            raise KeyError(f"{key!r} not in this dataset's metadata: {sorted(self._meta)}")
        return self._meta[key][self.indices]

    def identity_classes(self) -> np.ndarray:
        """(M,) identity class of each selected row (see ``identity`` in items)."""
        return self._identity_class[self.indices]

    def identity_table(self, key: str) -> np.ndarray:
        """Per-identity data (``names``, ``split``, ``pca_weights`` for ICT 4D)."""
        return self._identities[key]

    def _gather(self, rows: np.ndarray | slice | None, dtype) -> np.ndarray:
        """(M, V, 3) stored offsets of selected rows, converted to ``dtype`` while reading."""
        idx = self.indices if rows is None else self.indices[rows]
        order = np.argsort(idx)  # sorted reads are faster on a memory map
        out = np.empty((len(idx), self.manifest.num_vertices, 3), dtype)
        out[order] = self._offsets[idx[order]]
        return out

    def offsets(self, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """(M, V, 3) stored offsets from the template (mm, the dataset's storage dtype, e.g.
        float16) of selected rows (positions in this dataset); all rows when ``rows`` is None."""
        return self._gather(rows, self._offsets.dtype)

    def vertices(self, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """(M, V, 3) float32 vertices (mm) of selected rows (positions in this dataset)."""
        return self._gather(rows, np.float32) + self.template.vertices[None]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = int(self.indices[i])
        v = np.asarray(self._offsets[row], dtype=np.float32) + self.template.vertices
        return {
            "vertices": torch.from_numpy(v),
            "identity": torch.tensor(int(self._identity_class[row])),
            "expression": torch.tensor(int(self._meta["expression"][row])),
            "index": torch.tensor(row),
        }

    def __repr__(self) -> str:
        return (
            f"FaceDataset({str(self.root)!r}, split={self.split!r}, meshes={len(self)}, "
            f"identities={self.num_identity_classes}, expression_labels={self.expression_labels})"
        )
