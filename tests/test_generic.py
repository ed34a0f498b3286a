"""Generic import of user scans (template + registered meshes + labels CSV)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from facemodel.data.dataset import FaceDataset
from facemodel.data.expressions import EXPRESSION_LABELS
from facemodel.data.generic import automatic_split, import_scans
from facemodel.errors import (
    InvalidGeometryError,
    LabelsError,
    OutputPathError,
    TopologyMismatchError,
)
from facemodel.geometry.mesh_io import load_mesh, save_obj


def tiny_template(n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """An n x n grid in the z = 0 plane (mm), two triangles per cell."""
    y, x = np.mgrid[0:n, 0:n].astype(np.float32) * 10.0
    v = np.stack([x.ravel(), y.ravel(), np.zeros(n * n, np.float32)], 1)
    faces = []
    for r in range(n - 1):
        for c in range(n - 1):
            a, b, d = r * n + c, r * n + c + 1, (r + 1) * n + c
            faces += [(a, b, d + 1), (a, d + 1, d)]
    return v, np.asarray(faces, np.int64)


def write_inputs(root: Path, vertices, faces, rows: list[dict], *, seed: int = 0, scale: float = 1.0,
                 columns: list[str] | None = None) -> tuple[Path, Path, Path]:  # fmt: skip
    """Write template.obj, meshes/<file> (template + noise) for every row, and labels.csv."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    tpl = save_obj(root / "template.obj", np.asarray(vertices) * scale, faces)
    meshes = root / "meshes"
    for r in rows:
        v = (vertices + rng.normal(0, 2.0, vertices.shape)) * scale
        save_obj(meshes / r["file"], v, faces)
    columns = columns or list(rows[0])
    lines = [",".join(columns)] + [",".join(str(r.get(c, "")) for c in columns) for r in rows]
    labels = root / "labels.csv"
    labels.write_text("\n".join(lines) + "\n")
    return tpl, meshes, labels


def rows_for(identities: list[str], per_identity: int = 2, split: dict[str, str] | None = None) -> list[dict]:
    rows = []
    for ident in identities:
        for k in range(per_identity):
            row = {"file": f"{ident}/m{k}.obj", "identity": ident,
                   "expression": EXPRESSION_LABELS[k % len(EXPRESSION_LABELS)] if k % 2 == 0 else ""}  # fmt: skip
            if split:
                row["split"] = split[ident]
            rows.append(row)
    return rows


@pytest.fixture
def tiny(tmp_path):
    """A tiny valid input set (4 identities x 2 meshes with a split column) and an out path."""
    v, f = tiny_template()
    rows = rows_for(["ana", "bob", "cy", "dee"], split={"ana": "train", "bob": "train", "cy": "val", "dee": "test"})
    tpl, meshes, labels = write_inputs(tmp_path / "in", v, f, rows)
    outdir = tmp_path / "outdir"
    outdir.mkdir()
    return {"template": tpl, "meshes": meshes, "labels": labels, "out": outdir / "ds", "rows": rows, "faces": f}


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert list(out.parent.iterdir()) == [], f"left behind: {list(out.parent.iterdir())}"


# ---- successful imports -----------------------------------------------------------------


def test_import_real_template_reads_back(tmp_path, template):
    rows = [
        {"file": "s1/neutral.obj", "identity": "F001", "expression": "neutral", "split": "train", "sequence": "", "frame": ""},
        {"file": "s1/happy.obj", "identity": "F001", "expression": "Happiness", "split": "train", "sequence": "", "frame": ""},
        {"file": "s1/seq_000.obj", "identity": "F001", "expression": "", "split": "train", "sequence": "7", "frame": "0"},
        {"file": "s1/seq_001.obj", "identity": "F001", "expression": "", "split": "train", "sequence": "7", "frame": "1"},
        {"file": "s2/neutral.obj", "identity": "M002", "expression": "neutral", "split": "train", "sequence": "", "frame": ""},
        {"file": "s2/sad.obj", "identity": "M002", "expression": "sadness", "split": "train", "sequence": "", "frame": ""},
        {"file": "s3/a.obj", "identity": "F003", "expression": "", "split": "val", "sequence": "", "frame": ""},
        {"file": "s4/b.obj", "identity": "A004", "expression": "surprise", "split": "test", "sequence": "", "frame": ""},
    ]  # fmt: skip
    tpl, meshes, labels = write_inputs(tmp_path / "in", template.vertices, template.faces, rows)
    out = tmp_path / "ds"
    manifest = import_scans(tpl, meshes, labels, out, progress=False)

    assert manifest.name == "imported" and manifest.kinds == ["scan"] and manifest.units == "mm"
    assert manifest.num_meshes == 8 and manifest.num_identities == 4 and manifest.num_vertices == template.num_vertices
    assert manifest.expression_labels == list(EXPRESSION_LABELS)
    assert manifest.counts["expression_labelled"] == 5
    assert manifest.counts["per_label"]["neutral"] == 2 and manifest.counts["per_label"]["happiness"] == 1
    assert manifest.counts["per_split"]["train"] == {"meshes": 6, "identities": 2, "expression_labelled": 4}
    assert manifest.counts["per_split"]["test"]["identities"] == 1
    assert set(manifest.source) == {"template", "meshes", "labels"}
    assert json.loads((out / "manifest.json").read_text())["checksum"] == manifest.checksum

    with np.load(out / "meshes.npz") as z:
        assert "blendshapes" not in z.files
        assert list(z["files"]) == [r["file"] for r in rows]
        assert list(z["sequence"]) == [-1, -1, 7, 7, -1, -1, -1, -1]
        assert list(z["frame"]) == [-1, -1, 0, 1, -1, -1, -1, -1]
        assert set(z["kind"]) == {0}
    with np.load(out / "identities.npz") as z:
        assert list(z["names"]) == ["A004", "F001", "F003", "M002"]  # sorted
        assert list(z["split"]) == [2, 0, 1, 0]

    everything = FaceDataset(out, split=None)
    expected = np.stack([load_mesh(meshes / r["file"]).vertices for r in rows])
    np.testing.assert_allclose(everything.vertices(), expected, atol=1e-4)
    np.testing.assert_array_equal(everything.template.faces, template.faces)
    np.testing.assert_allclose(everything.template.vertices, template.vertices, atol=1e-5)
    assert len(everything.template.landmarks) == 0

    train = FaceDataset(out, split="train")
    assert len(train) == 6 and train.num_identity_classes == 2
    assert [int(train[i]["identity"]) for i in range(6)] == [0, 0, 0, 0, 1, 1]  # classes: F001, M002 (sorted names)
    assert [int(train[i]["expression"]) for i in range(6)] == [0, 4, -1, -1, 0, 5]
    np.testing.assert_allclose(train[1]["vertices"].numpy(), expected[1], atol=1e-4)
    val = FaceDataset(out, split="val")
    assert len(val) == 1 and val.num_identity_classes == 1 and int(val[0]["expression"]) == -1
    test = FaceDataset(out, split="test", expression_labelled_only=True)
    assert len(test) == 1 and int(test[0]["expression"]) == EXPRESSION_LABELS.index("surprise")


def test_float16_and_landmarks_and_custom_labels(tiny, tmp_path):
    labels = tiny["labels"]
    text = labels.read_text().replace("neutral", "Smile")
    labels.write_text(text)
    import_scans(tiny["template"], tiny["meshes"], labels, tiny["out"], expression_labels=["smile", "frown"],
                 landmarks=[0, 5, 15], offsets_dtype="float16", progress=False)  # fmt: skip
    ds = FaceDataset(tiny["out"], split=None)
    assert ds.expression_labels == ["smile", "frown"]
    assert ds.manifest.offsets_dtype == "float16" and np.load(tiny["out"] / "offsets.npy").dtype == np.float16
    assert list(ds.template.landmarks) == [0, 5, 15]
    assert set(ds.meta("expression")) == {0, -1}
    expected = np.stack([load_mesh(tiny["meshes"] / r["file"]).vertices for r in tiny["rows"]])
    np.testing.assert_allclose(ds.vertices(), expected, atol=0.01)  # float16 offsets of a few mm


def test_automatic_split_is_identity_disjoint_and_deterministic(tmp_path):
    v, f = tiny_template()
    names = [f"subject{i:02d}" for i in range(20)]
    rows = rows_for(names, per_identity=2)
    tpl, meshes, labels = write_inputs(tmp_path / "in", v, f, rows)
    a = import_scans(tpl, meshes, labels, tmp_path / "a", seed=3, progress=False)
    # the same rows in another order give the same identity splits
    lines = labels.read_text().splitlines()
    shuffled = tmp_path / "shuffled.csv"
    shuffled.write_text("\n".join([lines[0]] + lines[1:][::-1]) + "\n")
    b = import_scans(tpl, meshes, shuffled, tmp_path / "b", seed=3, progress=False)
    c = import_scans(tpl, meshes, labels, tmp_path / "c", seed=4, progress=False)

    assert a.build["split"] == "automatic"
    assert a.counts["per_split"]["train"]["identities"] == 16
    assert a.counts["per_split"]["val"]["identities"] == 2 and a.counts["per_split"]["test"]["identities"] == 2
    sa, sb, sc = (np.load(tmp_path / x / "identities.npz")["split"] for x in "abc")
    np.testing.assert_array_equal(sa, sb)
    assert not np.array_equal(sa, sc)
    with np.load(tmp_path / "a" / "meshes.npz") as z:
        for i in range(20):  # every mesh of an identity is in the identity's split
            assert set(z["split"][z["identity"] == i]) == {sa[i]}
    assert a.files == import_scans(tpl, meshes, labels, tmp_path / "a2", seed=3, progress=False).files
    # at least one identity per split as soon as there are three
    assert sorted(automatic_split(["x", "y", "z"], 0)) == [0, 1, 2]


def test_units_cm_are_converted_to_mm(tmp_path):
    v, f = tiny_template()
    rows = rows_for(["p", "q"], per_identity=2)
    tpl, meshes, labels = write_inputs(tmp_path / "in", v, f, rows, scale=0.1)  # files in cm
    manifest = import_scans(tpl, meshes, labels, tmp_path / "ds", units="cm", progress=False)
    assert manifest.units == "mm" and manifest.build["units_in"] == "cm"
    ds = FaceDataset(tmp_path / "ds", split=None)
    np.testing.assert_allclose(ds.template.vertices, v, atol=1e-4)
    expected = np.stack([load_mesh(meshes / r["file"]).vertices for r in rows]).astype(np.float64) * 10
    np.testing.assert_allclose(ds.vertices(), expected, atol=1e-4)


def test_overwrite_replaces_an_existing_dataset(tiny):
    out = tiny["out"]
    out.mkdir()
    (out / "old.txt").write_text("old")
    import_scans(tiny["template"], tiny["meshes"], tiny["labels"], out, overwrite=True, progress=False)
    assert not (out / "old.txt").exists() and (out / "manifest.json").is_file()
    assert [p.name for p in out.parent.iterdir()] == ["ds"]


# ---- bad inputs: an error naming the problem, and nothing written --------------------


def _edit_csv(tiny, fn):
    lines = tiny["labels"].read_text().splitlines()
    tiny["labels"].write_text("\n".join(fn(lines)) + "\n")


def _replace_cell(row: int, column: int, value: str):
    def fn(lines):
        cells = lines[row - 1].split(",")
        cells[column] = value
        lines[row - 1] = ",".join(cells)
        return lines

    return fn


CSV_CASES = {
    "missing column": (lambda ls: [ls[0].replace("identity", "subject")] + ls[1:],
                       r"lacks the column\(s\) identity.*header \(row 1\)"),
    "missing files": (lambda ls: ls + [f"gone/x{i}.obj,ana,,train" for i in range(7)] ,
                      r"7 mesh file\(s\) missing(.|\n)*row 10: gone/x0\.obj(.|\n)*row 14: gone/x4\.obj\n  \.\.\. and 2 more"),
    "unknown label": (_replace_cell(4, 2, "happy"),
                      r"row 4: unknown expression label 'happy'; use one of neutral, anger, disgust, fear, "
                      r"happiness, sadness, surprise, or leave the cell blank"),
    "blank identity": (_replace_cell(3, 1, " "), r"row 3: blank identity; every mesh needs an identity"),
    "identity in two splits": (_replace_cell(3, 3, "test"),
                               r"identity 'ana' is in train \(row 2\) and in test \(row 3\)(.|\n)*same split"),
    "bad split": (_replace_cell(5, 3, "training"), r"row 5: split 'training' is not one of train, val, test"),
    "duplicate file": (lambda ls: ls + [ls[1]], r"row 10: file 'ana/m0\.obj' is listed again \(first in row 2\)"),
    "bad frame": (lambda ls: [ls[0] + ",frame"] + [ln + ",x" for ln in ls[1:]], r"row 2: frame 'x' is not a non-negative integer"),
    "no rows": (lambda ls: ls[:1], r"no data rows"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CSV_CASES))
def test_bad_labels_csv(tiny, case):
    edit, pattern = CSV_CASES[case]
    _edit_csv(tiny, edit)
    with pytest.raises(LabelsError, match=pattern):
        import_scans(tiny["template"], tiny["meshes"], tiny["labels"], tiny["out"], progress=False)
    assert_nothing_written(tiny["out"])


def test_semicolon_csv_is_accepted(tiny):
    _edit_csv(tiny, lambda ls: [ln.replace(",", ";") for ln in ls])
    manifest = import_scans(tiny["template"], tiny["meshes"], tiny["labels"], tiny["out"], progress=False)
    assert manifest.num_meshes == 8


def test_mesh_with_other_vertex_count(tiny):
    v, f = tiny_template(3)
    save_obj(tiny["meshes"] / "cy" / "m1.obj", v, f)
    with pytest.raises(TopologyMismatchError, match=r"cy/m1\.obj' \(labels row 7\) has 9 vertices but the template has 16"):
        import_scans(tiny["template"], tiny["meshes"], tiny["labels"], tiny["out"], progress=False)
    assert_nothing_written(tiny["out"])


def test_mesh_with_other_faces(tiny):
    v = load_mesh(tiny["meshes"] / "bob" / "m0.obj").vertices
    save_obj(tiny["meshes"] / "bob" / "m0.obj", v, tiny["faces"][:, [0, 2, 1]])
    with pytest.raises(TopologyMismatchError, match=r"faces of .*bob/m0\.obj.* differ from the template"):
        import_scans(tiny["template"], tiny["meshes"], tiny["labels"], tiny["out"], progress=False)
    assert_nothing_written(tiny["out"])


def test_nan_in_the_last_mesh_leaves_nothing(tiny):
    last = tiny["meshes"] / tiny["rows"][-1]["file"]
    v = load_mesh(last).vertices.copy()
    v[3, 1] = np.nan
    save_obj(last, v, tiny["faces"])
    with pytest.raises(InvalidGeometryError, match=r"dee/m1\.obj' \(labels row 9\) contains NaN"):
        import_scans(tiny["template"], tiny["meshes"], tiny["labels"], tiny["out"], progress=False)
    assert_nothing_written(tiny["out"])


def test_existing_out_without_overwrite(tiny):
    out = tiny["out"]
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(OutputPathError, match=r"already exists and is not empty.*overwrite"):
        import_scans(tiny["template"], tiny["meshes"], tiny["labels"], out, progress=False)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert [p.name for p in out.parent.iterdir()] == ["ds"]  # no temp folder beside it


def test_unwritable_out_folder(tiny, monkeypatch):
    parent = tiny["out"].parent
    os.chmod(parent, 0o500)
    try:
        if os.access(parent, os.W_OK):  # root ignores modes: make the permission check see them
            real_access = os.access
            monkeypatch.setattr(os, "access", lambda p, m, **k: False if m & os.W_OK else real_access(p, m, **k))
        with pytest.raises(OutputPathError, match=r"not writable"):
            import_scans(tiny["template"], tiny["meshes"], tiny["labels"], tiny["out"], progress=False)
        assert_nothing_written(tiny["out"])
    finally:
        os.chmod(parent, 0o700)


def test_out_below_a_file(tiny):
    blocker = tiny["out"].parent / "file.txt"
    blocker.write_text("")
    with pytest.raises(OutputPathError):
        import_scans(tiny["template"], tiny["meshes"], tiny["labels"], blocker / "ds", progress=False)
    assert [p.name for p in blocker.parent.iterdir()] == ["file.txt"]


def test_out_must_not_contain_the_inputs(tiny):
    before = sorted(p.name for p in tiny["meshes"].iterdir())
    with pytest.raises(OutputPathError, match=r"contains the meshes folder"):
        import_scans(tiny["template"], tiny["meshes"], tiny["labels"], tiny["meshes"], overwrite=True, progress=False)
    with pytest.raises(OutputPathError, match=r"contains the"):
        import_scans(tiny["template"], tiny["meshes"], tiny["labels"], tiny["meshes"].parent, overwrite=True,
                     progress=False)  # fmt: skip
    assert sorted(p.name for p in tiny["meshes"].iterdir()) == before
