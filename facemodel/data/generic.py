"""Import user scans (meshes registered to one template) as a facemodel dataset.

Inputs:

- a **template** mesh file (OBJ, PLY, ...): the topology every scan shares;
- a **meshes** folder of scans in that topology (same vertex count and vertex order;
  faces, when a file has them, must equal the template's);
- a **labels CSV** with one row per mesh.

Labels CSV (comma-, semicolon- or tab-separated, header row required, UTF-8):

=============  ========  ==============================================================
column         required  meaning
=============  ========  ==============================================================
``file``       yes       mesh path relative to the meshes folder (e.g. ``F001/HA.obj``)
``identity``   yes       subject name, any non-blank string
``expression`` yes       label name (default: ``neutral``, ``anger``, ``disgust``,
                         ``fear``, ``happiness``, ``sadness``, ``surprise``; matched
                         case-insensitively); a blank cell = unlabelled mesh
``split``      no        ``train``, ``val`` or ``test``; all meshes of an identity must
                         share one split. Without the column, identities are split
                         disjointly and deterministically from ``seed``
``sequence``   no        integer id of a 4D sequence (unique over the whole CSV: a
                         sequence belongs to one identity); blank = -1 (not a sequence)
``frame``      no        integer frame number inside the sequence; blank = -1
=============  ========  ==============================================================

Other columns are ignored. The result is the on-disk format of :mod:`facemodel.data.store`,
so :class:`~facemodel.data.dataset.FaceDataset` and training read it like ICT 4D.

Example:
    >>> from facemodel.data.generic import import_scans
    >>> import_scans("bu3dfe/template.obj", "bu3dfe/registered", "bu3dfe/labels.csv",
    ...              "~/datasets/bu3dfe-imported", units="mm")
"""

from __future__ import annotations

import csv
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from tqdm.auto import tqdm

from .._fs import atomic_dir
from ..errors import (
    InvalidGeometryError,
    LabelsError,
    MeshFormatError,
    OutputPathError,
    TopologyMismatchError,
)
from ..geometry.mesh_io import load_mesh
from ..geometry.template import Template
from .expressions import EXPRESSION_LABELS
from .store import SPLITS, Manifest, sha256_file, write_dataset_files

__all__ = ["import_scans", "read_labels_csv", "UNITS_TO_MM", "REQUIRED_COLUMNS", "OPTIONAL_COLUMNS"]

log = logging.getLogger(__name__)

UNITS_TO_MM = {"mm": 1.0, "cm": 10.0, "m": 1000.0}
REQUIRED_COLUMNS = ("file", "identity", "expression")
OPTIONAL_COLUMNS = ("split", "sequence", "frame")
KINDS = ("scan",)
MESH_SUFFIXES = (".obj", ".ply", ".off", ".stl", ".glb", ".gltf")
_MAX_LISTED = 5


@dataclass
class _Labels:
    """The validated contents of a labels CSV (one entry per mesh, in CSV order)."""

    files: list[str]  # as written in the CSV
    paths: list[Path]  # resolved against the meshes folder
    rows: list[int]  # CSV row number (the header is row 1)
    identity_names: list[str]  # sorted unique names
    identity: np.ndarray  # (N,) int32 index into identity_names
    expression: np.ndarray  # (N,) int16, -1 = unlabelled
    sequence: np.ndarray  # (N,) int32
    frame: np.ndarray  # (N,) int32
    identity_split: np.ndarray | None  # (I,) int8 from the split column, None = automatic


def _listing(items: list[str], what: str) -> str:
    shown = "\n".join(f"  - {s}" for s in items[:_MAX_LISTED])
    more = f"\n  ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"{len(items)} {what}:\n{shown}{more}"


def _sniff_delimiter(first_line: str) -> str:
    if "," in first_line:
        return ","
    for d in (";", "\t"):
        if d in first_line:
            return d
    return ","


def _parse_int(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        try:  # spreadsheets write 3.0
            f = float(value)
        except ValueError:
            return None
        return int(f) if f.is_integer() else None


def read_labels_csv(
    labels: str | os.PathLike,
    meshes: str | os.PathLike,
    expression_labels: Sequence[str] = EXPRESSION_LABELS,
) -> _Labels:
    """Read and validate a labels CSV (see the module docstring for the columns).

    Nothing is read from the mesh files; only their existence is checked.

    Raises:
        LabelsError: the CSV is missing or empty, lacks a required column, or has bad rows
            (missing or duplicate files, blank identities, unknown labels, bad splits,
            bad integers, an identity in two splits, a sequence shared by identities).
    """
    labels = Path(labels).expanduser()
    meshes = Path(meshes).expanduser()
    name = str(labels)
    if not labels.is_file():
        raise LabelsError(f"labels CSV {name!r} does not exist; pass the path of a CSV file")
    if not meshes.is_dir():
        raise LabelsError(f"meshes folder {str(meshes)!r} does not exist or is not a folder")
    allowed = list(expression_labels)
    label_id = {lab: k for k, lab in enumerate(allowed)}
    folded: dict[str, int] = {}
    for k, lab in enumerate(allowed):
        folded.setdefault(lab.casefold(), k)
    allowed_txt = ", ".join(allowed)

    try:
        text = labels.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LabelsError(f"{name!r} is not UTF-8 text ({exc}); save the CSV as UTF-8") from exc
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise LabelsError(
            f"{name!r} is empty or its first line is blank; the first row must be the header "
            f"naming the columns {', '.join(REQUIRED_COLUMNS)} (optional: {', '.join(OPTIONAL_COLUMNS)})"
        )
    reader = csv.reader(lines, delimiter=_sniff_delimiter(lines[0]))
    header = [h.strip().lower() for h in next(reader)]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise LabelsError(
            f"{name!r} lacks the column(s) {', '.join(missing)}; its header (row 1) must name the "
            f"columns {', '.join(REQUIRED_COLUMNS)} (optional: {', '.join(OPTIONAL_COLUMNS)}). "
            f"Found: {', '.join(repr(h) for h in header)}"
        )
    dup_cols = sorted({h for h in header if h and header.count(h) > 1})
    if dup_cols:
        raise LabelsError(f"{name!r}: the header (row 1) names the column(s) {', '.join(dup_cols)} more than once")
    col = {h: i for i, h in enumerate(header)}
    has_split = "split" in col

    problems: list[str] = []
    files: list[str] = []
    paths: list[Path] = []
    rows: list[int] = []
    idents: list[str] = []
    exprs: list[int] = []
    splits: list[int] = []
    seqs: list[int] = []
    frames: list[int] = []
    seen_file: dict[str, int] = {}
    missing_files: list[str] = []

    for record in reader:
        row = reader.line_num  # line number: the header is row 1
        if not any(cell.strip() for cell in record):
            continue  # blank line or a row of empty cells
        if len(record) > len(header) and any(c.strip() for c in record[len(header) :]):
            problems.append(f"row {row}: {len(record)} cells but the header has {len(header)} columns; "
                            "quote cells that contain the delimiter")  # fmt: skip
            continue

        def cell(column: str) -> str:
            i = col.get(column)
            return record[i].strip() if i is not None and i < len(record) else ""

        file, ident, expr = cell("file"), cell("identity"), cell("expression")
        bad = False
        if not file:
            problems.append(f"row {row}: blank file; give the mesh path relative to {str(meshes)!r}")
            bad = True
        if not ident:
            problems.append(f"row {row}: blank identity; every mesh needs an identity (a subject name)")
            bad = True
        e = -1
        if expr:
            e = label_id.get(expr, folded.get(expr.casefold(), -2))
            if e == -2:
                problems.append(f"row {row}: unknown expression label {expr!r}; use one of {allowed_txt}, "
                                "or leave the cell blank for an unlabelled mesh")  # fmt: skip
                bad = True
        s = -1
        if has_split:
            value = cell("split").lower()
            if value not in SPLITS:
                problems.append(f"row {row}: split {cell('split')!r} is not one of {', '.join(SPLITS)}; fill "
                                "it in, or remove the split column to split identities automatically")  # fmt: skip
                bad = True
            else:
                s = SPLITS.index(value)
        ints = []
        for column in ("sequence", "frame"):
            value = cell(column)
            v = -1 if not value else _parse_int(value)
            if v is None or v < -1:
                problems.append(f"row {row}: {column} {value!r} is not a non-negative integer; "
                                "use an integer, or leave it blank")  # fmt: skip
                bad = True
                v = -1
            ints.append(v)
        if file:
            path = meshes / file
            key = os.path.normpath(path)
            if key in seen_file:
                problems.append(f"row {row}: file {file!r} is listed again (first in row {seen_file[key]}); "
                                "list each mesh once")  # fmt: skip
                bad = True
            else:
                seen_file[key] = row
                if not path.is_file():
                    missing_files.append(f"row {row}: {file}")
                elif path.suffix.lower() not in MESH_SUFFIXES:
                    problems.append(f"row {row}: {file!r} is not a supported mesh format; convert it to one "
                                    f"of {', '.join(MESH_SUFFIXES)}")  # fmt: skip
                    bad = True
        if bad:
            continue
        files.append(file)
        paths.append(meshes / file)
        rows.append(row)
        idents.append(ident)
        exprs.append(e)
        splits.append(s)
        seqs.append(ints[0])
        frames.append(ints[1])

    if problems:
        raise LabelsError(f"{name!r} has {_listing(problems, 'problem(s)')}\nFix these rows and run again.")
    if missing_files:
        raise LabelsError(
            f"{name!r} names {_listing(missing_files, f'mesh file(s) missing from {str(meshes)!r}')}\n"
            "Paths in the file column are relative to the meshes folder: check the folder, the "
            "spelling, or remove these rows."
        )
    if not files:
        raise LabelsError(f"{name!r} has no data rows; add one row per mesh below the header")

    names = sorted(set(idents))
    index = {n: i for i, n in enumerate(names)}
    identity = np.asarray([index[n] for n in idents], np.int32)

    identity_split = None
    if has_split:
        first: dict[int, tuple[int, int]] = {}  # identity -> (split, row)
        conflicts: list[str] = []
        reported: set[int] = set()
        for i, s, row in zip(identity, splits, rows):
            if i not in first:
                first[i] = (s, row)
            elif first[i][0] != s and i not in reported:
                reported.add(i)
                conflicts.append(f"identity {names[i]!r} is in {SPLITS[first[i][0]]} (row {first[i][1]}) "
                                 f"and in {SPLITS[s]} (row {row})")  # fmt: skip
        if conflicts:
            raise LabelsError(
                f"{name!r}: splits must be identity-disjoint, but {_listing(conflicts, 'identity(ies) are in two splits')}\n"
                "Give all rows of an identity the same split, or remove the split column to split automatically."
            )
        identity_split = np.asarray([first[i][0] for i in range(len(names))], np.int8)

    seq_owner: dict[int, tuple[int, int]] = {}
    seq_frames: dict[tuple[int, int], int] = {}
    seq_problems: list[str] = []
    for i, q, f, row in zip(identity, seqs, frames, rows):
        if q < 0:
            continue
        owner = seq_owner.setdefault(q, (i, row))
        if owner[0] != i:
            seq_problems.append(f"row {row}: sequence {q} belongs to identity {names[owner[0]]!r} (row {owner[1]}), "
                                f"not {names[i]!r}; number sequences uniquely over the whole CSV")  # fmt: skip
        elif f >= 0 and seq_frames.setdefault((q, f), row) != row:
            seq_problems.append(f"row {row}: frame {f} of sequence {q} is already in row {seq_frames[(q, f)]}")
    if seq_problems:
        raise LabelsError(f"{name!r} has {_listing(seq_problems, 'sequence problem(s)')}")

    return _Labels(
        files=files,
        paths=paths,
        rows=rows,
        identity_names=names,
        identity=identity,
        expression=np.asarray(exprs, np.int16),
        sequence=np.asarray(seqs, np.int32),
        frame=np.asarray(frames, np.int32),
        identity_split=identity_split,
    )


def _allocate(total: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder split of ``total``; every positive fraction gets one item if it can."""
    raw = np.asarray(fractions, dtype=np.float64) * total
    out = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - out), kind="stable")[: total - out.sum()]:
        out[i] += 1
    for i in np.flatnonzero((np.asarray(fractions) > 0) & (out == 0)):
        donor = int(np.argmax(out))
        if out[donor] > 1:
            out[donor] -= 1
            out[i] += 1
    return out.tolist()


def automatic_split(names: Sequence[str], seed: int, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> np.ndarray:
    """(I,) int8 identity splits (0 train, 1 val, 2 test) of ``names``, disjoint by construction.

    Depends only on the set of names, the seed and the fractions (not on their order).
    """
    order = sorted(names)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(order))
    n = _allocate(len(order), fractions)
    by_name = {}
    for k, j in enumerate(perm):
        by_name[order[j]] = 0 if k < n[0] else 1 if k < n[0] + n[1] else 2
    return np.asarray([by_name[x] for x in names], np.int8)


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path.expanduser()))


def import_scans(
    template: str | os.PathLike,
    meshes: str | os.PathLike,
    labels: str | os.PathLike,
    out: str | os.PathLike,
    *,
    expression_labels: Sequence[str] | None = None,
    units: Literal["mm", "cm", "m"] = "mm",
    seed: int = 0,
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    landmarks: Sequence[int] | None = None,
    offsets_dtype: Literal["float32", "float16"] = "float32",
    overwrite: bool = False,
    progress: bool = True,
) -> Manifest:
    """Import registered scans into a dataset folder (atomically) and return its manifest.

    The labels CSV is validated completely before anything is written; meshes are then
    checked while they are streamed into a temporary folder beside ``out``, which becomes
    ``out`` only when every mesh passed (a failure leaves nothing at ``out``).

    Args:
        template: template mesh file (OBJ/PLY/...), in ``units``; it must have faces.
        meshes: folder the ``file`` column is relative to.
        labels: labels CSV (columns: see :mod:`facemodel.data.generic`).
        out: output folder; must not exist or be empty unless ``overwrite``.
        expression_labels: allowed expression labels, index = class id (default the seven
            :data:`~facemodel.data.expressions.EXPRESSION_LABELS`). CSV labels outside it
            are an error.
        units: units of the template and the meshes; stored in millimetres.
        seed: seed of the automatic identity split (used when the CSV has no split column).
        split_fractions: train/val/test fractions of identities for the automatic split.
        landmarks: optional vertex indices of the template's landmarks (default none).
        offsets_dtype: ``"float32"`` (default, exact to ~1e-4 mm) or ``"float16"`` (half
            the disk, ~0.01 mm rounding for offsets of a few mm).
        overwrite: replace an existing dataset folder at ``out``.
        progress: show a progress bar.

    Raises:
        LabelsError: bad CSV (missing columns or files, duplicate files, blank identities,
            unknown labels, bad split values, an identity in two splits, ...).
        MeshFormatError: the template or a mesh cannot be read, or the template has no faces.
        TopologyMismatchError: a mesh has another vertex count or other faces than the template.
        InvalidGeometryError: NaN/inf coordinates, or landmarks outside the template.
        OutputPathError: ``out`` exists and is not empty (without ``overwrite``), cannot be
            written, or would overwrite the inputs.
        ValueError: bad ``units``, ``offsets_dtype``, ``split_fractions`` or
            ``expression_labels``.
    """
    t0 = time.perf_counter()
    if units not in UNITS_TO_MM:
        raise ValueError(f"units must be one of {', '.join(UNITS_TO_MM)}, got {units!r}")
    scale = UNITS_TO_MM[units]
    if offsets_dtype not in ("float32", "float16"):
        raise ValueError(f"offsets_dtype must be 'float32' or 'float16', got {offsets_dtype!r}")
    fractions = tuple(float(f) for f in split_fractions)
    if len(fractions) != 3 or min(fractions) < 0 or fractions[0] <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split_fractions must be 3 numbers >= 0 (train > 0) summing to 1, got {split_fractions!r}")
    if isinstance(expression_labels, str):
        raise ValueError("expression_labels must be a sequence of label names, not one string")
    labels_list = list(EXPRESSION_LABELS if expression_labels is None else expression_labels)
    if not labels_list or any(not isinstance(x, str) or not x.strip() for x in labels_list):
        raise ValueError(f"expression_labels must be non-blank strings, got {labels_list!r}")
    if len({x.casefold() for x in labels_list}) != len(labels_list):
        raise ValueError(f"expression_labels must be unique (case-insensitively), got {labels_list!r}")

    template_path, meshes_dir, labels_path = (Path(p).expanduser() for p in (template, meshes, labels))
    out_path = Path(out).expanduser()
    # never let an overwrite (or the rename) touch the inputs
    out_real = _resolved(out_path)
    for what, p in (("meshes folder", meshes_dir), ("template", template_path), ("labels CSV", labels_path)):
        p_real = _resolved(p)
        if p_real == out_real or out_real in p_real.parents:
            raise OutputPathError(
                f"the output folder {str(out_path)!r} contains the {what} {str(p)!r}; choose another output folder"
            )

    # 1. everything that can be checked without writing
    table = read_labels_csv(labels_path, meshes_dir, labels_list)
    tmesh = load_mesh(template_path)
    if len(tmesh.faces) == 0:
        raise MeshFormatError(f"template {str(template_path)!r} has no faces; the template must be a mesh")
    tpl_vertices = (tmesh.vertices.astype(np.float64) * scale).astype(np.float32)
    lm = np.zeros(0, np.int64) if landmarks is None else np.asarray(list(landmarks), dtype=np.int64).reshape(-1)
    tpl = Template(vertices=tpl_vertices, faces=tmesh.faces, landmarks=lm, name="imported")
    if table.identity_split is None:
        identity_split = automatic_split(table.identity_names, seed, fractions)
        split_mode = "automatic"
    else:
        identity_split = table.identity_split
        split_mode = "column"
    N, V = len(table.files), tpl.num_vertices
    dtype = np.dtype(offsets_dtype)
    tpl64 = tpl.vertices.astype(np.float64)

    # 2. stream the meshes into a temporary folder, validating each one
    with atomic_dir(out_path, overwrite=overwrite) as tmp:
        offsets = np.lib.format.open_memmap(tmp / "offsets.npy", mode="w+", dtype=dtype, shape=(N, V, 3))
        max_err = 0.0
        for k in tqdm(range(N), desc="meshes", disable=not progress, unit="mesh"):
            path, row = table.paths[k], table.rows[k]
            where = f"{str(path)!r} (labels row {row})"
            try:
                mesh = load_mesh(path)
            except InvalidGeometryError:
                raise InvalidGeometryError(f"{where} contains NaN or inf vertex coordinates; fix or drop that "
                                           "mesh (and its labels row)") from None  # fmt: skip
            tpl.check(mesh.vertices, name=where)
            if len(mesh.faces) and not (mesh.faces.shape == tpl.faces.shape and np.array_equal(mesh.faces, tpl.faces)):
                raise TopologyMismatchError(
                    f"the faces of {where} differ from the template's ({len(mesh.faces)} vs {tpl.num_faces} "
                    "triangles); the mesh must be registered to the template topology (export it with "
                    "the template's faces, or with vertices only)"
                )
            offset = mesh.vertices.astype(np.float64) * scale - tpl64
            stored = offset.astype(dtype)
            if not np.isfinite(stored).all():
                raise InvalidGeometryError(
                    f"{where}: offsets from the template overflow {offsets_dtype}; check units={units!r} "
                    "or use offsets_dtype='float32'"
                )
            max_err = max(max_err, float(np.abs(stored.astype(np.float64) - offset).max()))
            offsets[k] = stored
        offsets.flush()
        del offsets

        split = identity_split[table.identity]
        expression = table.expression
        counts = {
            "meshes": N,
            "identities": len(table.identity_names),
            "expression_labelled": int((expression >= 0).sum()),
            "expression_label_fraction": float((expression >= 0).mean()),
            "per_label": {lab: int((expression == j).sum()) for j, lab in enumerate(labels_list)},
            "per_kind": {"scan": N},
            "per_split": {
                s: {"meshes": int((split == j).sum()), "identities": int((identity_split == j).sum()),
                    "expression_labelled": int(((split == j) & (expression >= 0)).sum())}
                for j, s in enumerate(SPLITS)
            },
            "sequences": int(len(np.unique(table.sequence[table.sequence >= 0]))),
        }  # fmt: skip
        manifest = Manifest(
            name="imported",
            seed=seed,
            num_meshes=N,
            num_vertices=V,
            num_identities=len(table.identity_names),
            offsets_dtype=offsets_dtype,
            expression_labels=labels_list,
            kinds=list(KINDS),
            counts=counts,
            source={
                "template": str(_resolved(template_path)),
                "meshes": str(_resolved(meshes_dir)),
                "labels": str(_resolved(labels_path)),
            },
            build={
                "units_in": units,
                "split": split_mode,
                "split_fractions": list(fractions) if split_mode == "automatic" else None,
                "template_sha256": sha256_file(template_path),
                "labels_sha256": sha256_file(labels_path),
                "max_offset_rounding_error_mm": max_err,
                "seconds": round(time.perf_counter() - t0, 1),
            },
        )
        manifest = write_dataset_files(
            tmp,
            manifest,
            template={"vertices": tpl.vertices, "faces": tpl.faces, "landmarks": tpl.landmarks},
            meshes={
                "identity": table.identity,
                "expression": expression,
                "split": split.astype(np.int8),
                "kind": np.zeros(N, np.int8),
                "sequence": table.sequence,
                "frame": table.frame,
                "files": np.asarray(table.files, dtype=str),
            },
            identities={
                "names": np.asarray(table.identity_names, dtype=str),
                "split": identity_split.astype(np.int8),
            },
        )
    log.info("imported %s meshes of %s identities into %s", N, len(table.identity_names), out_path)
    return manifest
