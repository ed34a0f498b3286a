"""Photo -> 3D face on scikit-image's bundled photos (astronaut, camera): detection, the fit,
the CLI's outputs, and the errors for images that are not usable (nothing written)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from facemodel import FaceModel
from facemodel.cli import main
from facemodel.errors import FaceModelError
from facemodel.photo import NoFaceError, PhotoError, detect_landmarks, fit_photo, is_image, load_image

skdata = pytest.importorskip("skimage.data")  # in the test extra: CI has it


@pytest.fixture(scope="module")
def model(released):
    return released


@pytest.fixture(scope="module")
def astronaut():
    return skdata.astronaut()


def test_detect_landmarks_on_real_photos(astronaut):
    pts = detect_landmarks(astronaut)
    assert pts.ndim == 3 and pts.shape[1:] == (68, 2) and len(pts) >= 1
    face = pts[0]  # the largest: the astronaut's face, around (225, 125)
    assert 150 < face[30, 0] < 300 and 60 < face[30, 1] < 200
    assert face[45, 0] - face[36, 0] > 40  # eyes apart, in image x
    cam = detect_landmarks(skdata.camera())  # grayscale (H, W)
    assert cam.shape == (1, 68, 2)
    # the same image as a PIL image and as a path give the same points
    assert np.array_equal(detect_landmarks(Image.fromarray(astronaut)), pts)


def test_fit_photo_is_plausible_and_close(model, astronaut):
    res = fit_photo(model, astronaut)
    assert res.n_faces >= 1 and res.face == 0
    assert res.normalised_error() < 0.05
    lo, med, hi = res.fit.typical_range
    assert float(res.fit.plausibility[0]) < 1.5 * hi  # not grotesque (old default: ~30-46)
    ov = res.overlay()
    assert ov.shape == astronaut.shape and ov.dtype == np.uint8
    assert (ov != astronaut).any(axis=-1).sum() > 5000  # the mesh covers the face


def test_cli_fit_photo_writes_mesh_codes_overlay(model, astronaut, tmp_path):
    img = tmp_path / "astro.jpg"
    Image.fromarray(astronaut).save(img)
    rc = main(["fit", str(img), "--out", str(tmp_path / "face.obj"), "--png", str(tmp_path / "ov.png")])
    assert rc == 0
    assert (tmp_path / "face.obj").is_file() and (tmp_path / "ov.png").is_file()
    data = json.loads((tmp_path / "face.json").read_text())
    assert len(data["codes"]) == 158 and len(data["codes_expression"]) == 53  # 0.4.0: 100 + 53 + 5
    assert set(data["blendshapes"]) >= {"jawOpen", "mouthSmile_L"} and data["n_faces"] >= 1
    assert Image.open(tmp_path / "ov.png").size == (astronaut.shape[1], astronaut.shape[0])
    assert main(["fit", str(img), "--codes", str(tmp_path / "c.npz")]) == 0
    with np.load(tmp_path / "c.npz") as z:
        assert z["codes"].shape == (158,) and z["blendshapes"].shape == (53,)


def test_cli_fit_photo_keeps_existing_outputs(astronaut, tmp_path, capsys, monkeypatch):
    """An existing --out / --png / codes file is kept unless --overwrite, refused before the
    detector runs (the points path has the same rule: tests/test_cli_model.py)."""
    import facemodel.photo as photo

    img = tmp_path / "astro.png"
    Image.fromarray(astronaut).save(img)
    (tmp_path / "face.obj").write_text("mine")
    calls = []
    monkeypatch.setattr(photo, "fit_photo", lambda *a, **k: calls.append(1) or pytest.fail("fitted anyway"))
    assert main(["fit", str(img), "--out", str(tmp_path / "face.obj"), "--png", str(tmp_path / "ov.png")]) == 2
    err = capsys.readouterr().err
    assert "face.obj already exists" in err and "--overwrite" in err
    assert (tmp_path / "face.obj").read_text() == "mine" and not (tmp_path / "ov.png").exists()
    assert not (tmp_path / "face.json").exists() and not calls
    (tmp_path / "face.obj").unlink()
    (tmp_path / "face.json").write_text("{}")  # the codes written beside --out count too
    assert main(["fit", str(img), "--out", str(tmp_path / "face.obj")]) == 2
    assert "face.json already exists" in capsys.readouterr().err and not (tmp_path / "face.obj").exists()


def test_bad_images_raise_and_write_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((96, 96, 3), 127, np.uint8)).save(blank)
    out = tmp_path / "out"
    out.mkdir()
    cases = ((bad, PhotoError, "not a readable image"), (blank, NoFaceError, "no face found"),
             (tmp_path / "missing.png", PhotoError, "does not exist"))  # fmt: skip
    for path, err, msg in cases:
        with pytest.raises(err, match=msg) as info:
            fit_photo(FaceModel.from_pretrained(), path)
        assert isinstance(info.value, FaceModelError) and isinstance(info.value, ValueError)
        assert main(["fit", str(path), "--out", str(out / "f.obj"), "--png", str(out / "o.png")]) == 2
        assert msg in capsys.readouterr().err
    assert list(out.iterdir()) == []
    with pytest.raises(PhotoError, match="uint8"):
        load_image(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(PhotoError, match=r"\(H, W, 3\)"):
        load_image(np.zeros((32, 32, 5), np.uint8))
    with pytest.raises(NoFaceError, match="face 3"):
        fit_photo(FaceModel.from_pretrained(), skdata.camera(), face=3)


def test_is_image_by_suffix_and_content(tmp_path):
    assert is_image("x.JPG") and not is_image("x.npy")
    png = tmp_path / "pic.dat"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png, format="PNG")
    assert is_image(png)
    pts = tmp_path / "pts.dat"
    pts.write_text("1 2\n")
    assert not is_image(pts)
