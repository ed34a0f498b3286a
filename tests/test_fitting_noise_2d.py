"""``fit_landmarks_2d(noise_px=...)``: the prior weight of a contour-aware 2D fit set from the image
points' noise (given in pixels, or estimated per face), checked on faces the model never saw
(upstream ICT faces with other seeds than the validation faces the rule was chosen on)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facemodel.cli import main
from facemodel.contour import contour_lines
from facemodel.errors import FaceModelError
from facemodel.fitting import FittingError, fit_landmarks_2d
from facemodel.fitting_prior import DEFAULT_REG, NOISE_CALIBRATION_2D, noise_from_level_2d, off_frontal_deg, reg_for_noise_2d
from facemodel.landmarks import landmark_positions

from bench_fit_unseen import ict_faces, procrustes_rmse, project


@pytest.fixture(scope="module")
def unseen(released, ict):
    """10 upstream ICT faces (seed 13), their 68 landmarks and the model's contour lines."""
    v = ict_faces(ict, 10, seed=13)
    lm = landmark_positions(torch.as_tensor(v), released.landmark_set("ibug68")).numpy()
    return v, lm, contour_lines(released)


def _points(unseen, yaw, px, seed):
    v, lm, (lines, normals) = unseen
    return project(v, lm, yaw, np.random.default_rng(seed), lines, normals, noise_px=px)[1].astype(np.float32)


def _dense(result, v):
    return procrustes_rmse(result.vertices.double().numpy(), v).mean()


def test_the_rule():
    s = np.linspace(0, 4, 9)
    frontal, turned = reg_for_noise_2d(s, np.zeros(9)), reg_for_noise_2d(s, np.full(9, 40.0))
    assert (np.diff(frontal) >= 0).all() and (np.diff(turned) >= 0).all() and (turned >= frontal).all()
    assert frontal[0] == 1.0 and turned[0] == 4.0  # exact points: a light prior, heavier for a turned face
    np.testing.assert_allclose(reg_for_noise_2d(np.array([4 / 3]), np.zeros(1)), 8.1, atol=0.01)  # 2 px at 1.5 px/mm
    assert reg_for_noise_2d(np.zeros(1), np.array([5.0])) == reg_for_noise_2d(np.zeros(1), np.zeros(1))
    sig, lev = NOISE_CALIBRATION_2D
    np.testing.assert_allclose(noise_from_level_2d(np.asarray(lev)), sig, atol=1e-9)
    rot = np.stack([np.eye(3), np.diag([1.0, -1.0, -1.0])])  # frontal, y up and y down
    np.testing.assert_allclose(off_frontal_deg(rot), [0.0, 0.0], atol=1e-6)
    a = np.radians(30)
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    np.testing.assert_allclose(off_frontal_deg(ry[None]), [30.0])


def test_known_noise_sets_each_faces_weight_and_helps_exact_points(released, unseen):
    v = unseen[0]
    x = _points(unseen, 0, 0.0, 1)
    default = fit_landmarks_2d(released, x)
    exact = fit_landmarks_2d(released, x, noise_px=0.0)
    assert default.noise_mm is None and default.reg == DEFAULT_REG["2d"]
    assert exact.reg.shape == (10,) and exact.noise_mm.shape == (10,)
    torch.testing.assert_close(exact.reg, torch.as_tensor(reg_for_noise_2d(
        np.zeros(10), off_frontal_deg(exact.rotation.double().numpy())), dtype=torch.float64), atol=0.5, rtol=0)  # fmt: skip
    # validation faces: 3.31 -> 2.88 mm at 0 px (frontal); the weight is lighter for exact points
    assert _dense(exact, v) < _dense(default, v) - 0.1, (_dense(exact, v), _dense(default, v))
    two = fit_landmarks_2d(released, x, noise_px=2.0)
    # the pixels over the first fit's camera scale: the final scale is within a few %
    torch.testing.assert_close(two.noise_mm * two.scale, torch.full((10,), 2.0, dtype=torch.float64), rtol=0.05, atol=0)
    assert (two.reg > exact.reg).all()


def test_auto_estimates_the_noise(released, unseen):
    est = {}
    for px in (0.0, 3.0):
        r = fit_landmarks_2d(released, _points(unseen, 15, px, 2), noise_px="auto")
        est[px] = (r.noise_mm * r.scale).numpy()
        assert r.converged.all() and r.reg.shape == (10,)
    assert est[0.0].mean() < 0.8 and abs(est[3.0].mean() - 3.0) < 0.8, est
    assert (est[3.0] > est[0.0]).mean() >= 0.9


def test_refusals(released, unseen):
    x = _points(unseen, 0, 1.0, 3)[:2]
    cases = [({"noise_px": -1.0}, "number >= 0"), ({"noise_px": float("nan")}, "finite"), ({"noise_px": True}, "number"),
             ({"noise_px": "high"}, "'auto'"), ({"noise_px": 1.0, "reg": 2.0}, "not both"),
             ({"noise_px": 1.0, "prior": "l2"}, "not both"), ({"noise_px": 1.0, "contour": False}, "contour=True"),
             ({"noise_px": 1.0, "solver": "lbfgs"}, "gauss-newton")]  # fmt: skip
    for kw, msg in cases:
        with pytest.raises(FittingError, match=msg) as info:
            fit_landmarks_2d(released, x, **kw)
        assert isinstance(info.value, FaceModelError) and isinstance(info.value, ValueError)
    with pytest.raises(FittingError, match="contour=True"):
        fit_landmarks_2d(released, x[:, 17:], landmarks="ibug51", noise_px=1.0)
    few = x.copy()
    few[1, 20:30] = np.nan  # 41 usable inner points in face 1
    with pytest.raises(FittingError, match=r"at least 45 usable inner points.*got 41 \(face 1\)"):
        fit_landmarks_2d(released, few, noise_px="auto")
    r = fit_landmarks_2d(released, few, noise_px=1.0)  # a given noise needs no estimate
    assert np.isfinite(r.codes.numpy()).all()


def test_cli_noise_px(released, unseen, tmp_path, capsys):
    np.save(tmp_path / "p2.npy", _points(unseen, 0, 1.0, 4)[0])
    assert main(["fit", str(tmp_path / "p2.npy"), "--noise-px", "auto"]) == 0
    out = capsys.readouterr().out
    assert "image noise" in out and "px (estimated)" in out
    assert main(["fit", str(tmp_path / "p2.npy"), "--noise-px", "1.5"]) == 0
    out = capsys.readouterr().out
    assert "image noise 1.50 px" in out and "estimated" not in out
    assert main(["fit", str(tmp_path / "p2.npy"), "--noise-px", "lots"]) == 2  # a usage error naming the unit
    assert "number of pixels or 'auto'" in capsys.readouterr().err
    np.save(tmp_path / "p3.npy", unseen[1][0])
    assert main(["fit", str(tmp_path / "p3.npy"), "--noise-px", "1"]) == 2
    assert "--noise-mm" in capsys.readouterr().err
