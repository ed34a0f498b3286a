"""The pinhole camera of 2D fits (``fit_landmarks_2d(camera="pinhole")``): close-range
perspective projections of the released model's own faces (f = 1000 px, ~400 mm away), a
known and a fitted focal length, the contour rounds under perspective, bad input, the CLI on a
real photo."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facemodel.contour import contour_lines
from facemodel.errors import FaceModelError
from facemodel.fitting import FittingError, _so3_exp, fit_landmarks_2d
from facemodel.landmarks import landmark_positions
from bench_fit_pinhole import C, F, FLIP
from bench_fit_pinhole import cameras as _cameras
from bench_fit_pinhole import project as _project


@pytest.fixture(scope="module")
def model(released):
    return released


@pytest.fixture(scope="module")
def close_faces(model):
    """6 faces of the model ~400 mm from a 1000 px camera: vertices (mm), camera, landmarks (px)."""
    faces = model.sample(6, seed=3, truncation=0.8)
    v = faces.vertices.double()
    lmk = model.landmark_set("ibug68")
    lm = torch.stack([landmark_positions(vb, lmk) for vb in v]).numpy()
    R, t = _cameras(6, seed=1)
    return v.numpy(), R, t, _project(lm, R, t).astype(np.float32)


def _dense(res, v):
    return np.sqrt(((res.vertices.double().numpy() - v) ** 2).sum(-1).mean(1))


def _angle_deg(Ra, Rb):
    c = (np.trace(np.swapaxes(Ra, -1, -2) @ Rb, axis1=-2, axis2=-1) - 1) / 2
    return np.degrees(np.arccos(np.clip(c, -1, 1)))


def test_known_focal_length_reproduces_close_range_faces(model, close_faces):
    v, R, t, x = close_faces
    # a weak prior: the points are exact projections of the model's own landmarks
    kw = dict(contour=False, loss="l2", reg=1e-3, prior="model", max_iters=40)
    pin = fit_landmarks_2d(model, x, camera="pinhole", focal_length=F, principal_point=C, **kw)
    ortho = fit_landmarks_2d(model, x, **kw)
    assert pin.align == "pinhole" and pin.translation.shape == (6, 3) and pin.rotation.shape == (6, 3, 3)
    assert pin.focal_length.shape == (6,) and torch.all(pin.focal_length == F)
    assert pin.principal_point.shape == (6, 2) and np.allclose(pin.principal_point.numpy(), C)
    assert ortho.focal_length is None and ortho.principal_point is None
    # measured on 0.5.0: rmse 0.03-0.10 px (0.6.0: 0.03-0.12) (the face spans ~400 x 460 px); dense 0.55-1.13 mm vs 7-12 mm
    # orthographic (0.7.0, other random faces: 0.51-1.67 mm, mean 0.11x the orthographic fits'). 136 coordinates fix fewer numbers than 158 code entries + the camera, so the
    # prior (however weak) picks the rest: not an exact recovery (0.3.1's 85 codes: 0.01 px, 0.09 mm)
    assert (pin.rmse < 0.2).all()
    proj = pin.transform_points()[:, model.landmarks]  # the fitted mesh, through the camera
    assert np.abs(proj.double().numpy() - x).max() < 0.5
    e_pin, e_ortho = _dense(pin, v), _dense(ortho, v)
    assert e_pin.max() < 2.0 and e_pin.mean() < 0.15 * e_ortho.mean()
    # the orthographic fit's code absorbs part of the perspective: 0.5.0 0.04-0.18x per face, 0.6.0
    # 0.04-0.55x (one face whose orthographic fit is already at 0.22 px), 0.10x on average
    assert (pin.rmse < 0.7 * ortho.rmse).all() and pin.rmse.mean() < 0.25 * ortho.rmse.mean()
    # the camera: rotation to ~1 degree, distance to ~2 %, scale = f / t_z
    assert _angle_deg(pin.rotation.double().numpy(), R).max() < 1.5
    assert np.abs(pin.translation[:, 2].double().numpy() / t[:, 2] - 1).max() < 0.03
    torch.testing.assert_close(pin.scale, pin.focal_length / pin.translation[:, 2])
    # the defaults (the model prior at its validated weight): still far better than orthographic
    pin_d = fit_landmarks_2d(model, x, camera="pinhole", focal_length=F, principal_point=C, contour=False, loss="l2")
    ortho_d = fit_landmarks_2d(model, x, contour=False, loss="l2")
    assert _dense(pin_d, v).mean() < 0.6 * _dense(ortho_d, v).mean()  # measured on 0.5.0: 2.9 vs 7.4 mm


def test_fitted_focal_length_recovers_the_camera(model, close_faces):
    v, R, t, x = close_faces
    noisy = x + 0.5 * np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
    res = fit_landmarks_2d(model, noisy, camera="pinhole", principal_point=C, contour=False, loss="l2")
    f = res.focal_length.double().numpy()
    err = np.abs(f / F - 1)
    # measured (defaults, 0.5 px noise) on 0.5.0: 1.5-32 % per face, median 15 % (0.3.1: 3-10 %): the
    # focal length trades against the 158-dim code's depth cues, which 68 points leave to the prior
    assert err.max() < 0.5 and np.median(err) < 0.2
    assert _angle_deg(res.rotation.double().numpy(), R).max() < 3.0
    assert np.abs(res.translation[:, 2].double().numpy() / t[:, 2] - 1).max() < 0.4  # 0.5.0: 5-26 %, with f
    assert _dense(res, v).mean() < 4.0  # measured 3.16 mm on 0.5.0 (0.3.1: 2.9)
    # noise-free with a weak prior: the focal length to ~10 % (0.5.0: 0.4-9.6 %; 0.4.0: 0.9-6.1 %; 0.3.1: ~1 %)
    exact = fit_landmarks_2d(model, x, camera="pinhole", principal_point=C, contour=False, loss="l2", reg=1e-3,
                             prior="model", max_iters=40)  # fmt: skip
    assert np.abs(exact.focal_length.double().numpy() / F - 1).max() < 0.15  # margin: 9.6 % on 0.5.0
    # a single face, the default principal point (the landmarks' box centre), defaults otherwise
    one = fit_landmarks_2d(model, x[0], camera="pinhole", contour=False, loss="l2")
    box = 0.5 * (x[0].min(0) + x[0].max(0))
    assert np.allclose(one.principal_point[0].numpy(), box) and one.focal_length.shape == (1,)
    assert float(one.rmse[0]) < 4.0


def test_contour_rounds_under_pinhole(model):
    """The jaw points of a turned face at close range are the silhouette under perspective:
    the contour rounds place them better than fixed vertices."""
    faces = model.sample(3, seed=11, truncation=0.8)
    v = faces.vertices.double().numpy()
    lm = faces.vertices[:, model.landmarks].double().numpy()
    g = np.random.default_rng(4)
    R = _so3_exp(np.stack([np.zeros(3), np.radians([40.0, -45.0, 50.0]), np.zeros(3)], 1)) @ FLIP
    t = np.stack([g.uniform(-20, 20, 3), g.uniform(-20, 20, 3), np.full(3, 450.0)], 1)
    x = _project(lm, R, t)
    lines, normals = contour_lines(model)
    for k, ln in enumerate(lines):  # the true jaw: the outermost projection of each contour line
        c = _project(v[:, ln], R, t)
        d = np.einsum("nij,j->ni", R[:, :2], normals[k])
        x[:, k] = c[np.arange(3), np.argmax((c * d[:, None]).sum(-1), axis=1)]
    x = x.astype(np.float32)
    on = fit_landmarks_2d(model, x, camera="pinhole", focal_length=F, principal_point=C)
    off = fit_landmarks_2d(model, x, camera="pinhole", focal_length=F, principal_point=C, contour=False)
    fixed = model.landmark_set("ibug68").vertex_indices[:17, 0].numpy()
    assert (on.landmark_set.vertex_indices[:17, 0].numpy() != fixed).sum() >= 8
    assert on.focal_length.shape == (3,) and on.translation.shape == (3, 3)
    iod = np.linalg.norm(x[:, 36] - x[:, 45], axis=1)
    err = {k: (np.linalg.norm(r.transform_points(r.landmarks).double().numpy() - x, axis=-1).mean(1) / iod).mean()
           for k, r in (("on", on), ("off", off))}  # fmt: skip
    assert err["on"] < 0.7 * err["off"] and err["on"] < 0.05
    # the fitted focal length also runs through the rounds
    fitted = fit_landmarks_2d(model, x, camera="pinhole", principal_point=C)
    assert torch.isfinite(fitted.focal_length).all() and (fitted.focal_length > 0).all()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"camera": "pinhole", "focal_length": 0.0}, "focal_length must be a finite number of pixels > 0"),
    ({"camera": "pinhole", "focal_length": -500.0}, "focal_length must be a finite number"),
    ({"camera": "pinhole", "focal_length": float("nan")}, "focal_length must be a finite number"),
    ({"camera": "pinhole", "focal_length": float("inf")}, "focal_length must be a finite number"),
    ({"camera": "pinhole", "focal_length": "800"}, "focal_length must be a finite number"),
    ({"camera": "pinhole", "focal_length": True}, "focal_length must be a finite number"),
    ({"camera": "pinhole", "principal_point": (1.0, 2.0, 3.0)}, r"principal_point must have shape \(2,\)"),
    ({"camera": "pinhole", "principal_point": np.zeros((3, 2))}, r"principal_point must have shape \(2,\) or \(1, 2\)"),
    ({"camera": "pinhole", "principal_point": (np.nan, 2.0)}, "principal_point must be finite"),
    ({"camera": "pinhole", "principal_point": "centre"}, "principal_point must"),
    ({"camera": "pinhole", "solver": "lbfgs"}, "a fitted focal length needs solver='gauss-newton'"),
    ({"focal_length": 800.0}, "focal_length is a pinhole camera's: pass camera='pinhole'"),
    ({"principal_point": (320.0, 240.0)}, "principal_point is a pinhole camera's"),
    ({"camera": "perspective"}, r"unknown camera 'perspective'.*pinhole"),
    ({"camera": "Pinhole"}, "unknown camera 'Pinhole'"),
])  # fmt: skip
def test_bad_camera_arguments(model, kwargs, match):
    x = (np.random.default_rng(0).standard_normal((68, 2)) * 50 + 300).astype(np.float32)
    with pytest.raises(FittingError, match=match) as info:
        fit_landmarks_2d(model, x, **kwargs)
    assert isinstance(info.value, FaceModelError) and isinstance(info.value, ValueError)


def test_cli_fit_photo_with_a_pinhole(model, tmp_path, capsys):
    pytest.importorskip("dlib")
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    from facemodel.cli import main

    img = tmp_path / "img.png"
    Image.fromarray(skdata.astronaut()).save(img)  # 512 x 512
    out = tmp_path / "tmp"
    out.mkdir()
    assert main(["fit", str(img), "--camera", "pinhole", "--out", str(out / "face.obj"), "--png", str(out / "o.png")]) == 0
    assert (out / "face.obj").is_file() and (out / "o.png").is_file()
    data = json.loads((out / "face.json").read_text())
    assert data["camera"] == "pinhole" and data["principal_point"] == [256.0, 256.0]  # the image centre
    assert data["focal_length"] > 0 and len(data["translation"]) == 3 and data["translation"][2] > 0
    assert data["normalised_landmark_error"] < 0.06  # measured ~0.04 (orthographic: 0.03)
    assert main(["fit", str(img), "--camera", "pinhole", "--focal-length", "800", "--codes", str(out / "c.json")]) == 0
    data = json.loads((out / "c.json").read_text())
    assert data["focal_length"] == 800.0 and data["normalised_landmark_error"] < 0.05
    capsys.readouterr()
    assert main(["fit", str(img), "--focal-length", "800", "--codes", str(out / "d.json")]) == 2
    assert "--focal-length needs --camera pinhole" in capsys.readouterr().err
    assert main(["fit", str(img), "--camera", "pinhole", "--focal-length", "-3", "--codes", str(out / "d.json")]) == 2
    assert "focal_length must be a finite number" in capsys.readouterr().err
    assert not (out / "d.json").exists()
