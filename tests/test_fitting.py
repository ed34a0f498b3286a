"""Landmark registry and sparse fitting (paper §5, Eq. 13): recovery of known codes and
transforms, missing points, batching, regularisation, the baseline solvers, 2D, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facemodel.errors import FaceModelError
from facemodel.fitting import FitResult, FittingError, _so3_exp, fit_landmarks, fit_landmarks_2d
from facemodel.landmarks import (
    LandmarkError,
    LandmarkSet,
    UnknownLandmarksError,
    available_landmarks,
    landmark_positions,
    landmark_set,
    register_landmarks,
    unregister_landmarks,
)
from facemodel.model import FaceModel, FaceModelConfig
from facemodel.networks import Factor, GeneratorConfig


@pytest.fixture(scope="module")
def model(template):
    """The ICT template with a random generator whose codes move vertices by millimetres."""
    torch.manual_seed(0)
    cfg = GeneratorConfig(
        num_vertices=template.num_vertices,
        factors=(
            Factor(name="identity", code_dim=65, num_labels=10),
            Factor(name="expression", code_dim=15, num_labels=7),
        ),
    )
    m = FaceModel(
        FaceModelConfig(generator=cfg),
        template=template.vertices,
        faces=template.faces,
        uv=np.zeros((template.num_vertices, 2), np.float32),
        landmarks=template.landmarks,
    )
    with torch.no_grad():
        m.generator.fc2.weight.mul_(10.0)
    return m.eval()


def _faces(model, n, seed, *, scale=0.01, noise_mm=0.0):
    """Codes, vertices (mm) and their iBUG landmarks under a known similarity (scale 0.01:
    'metres-like' units), plus the transform."""
    g = torch.Generator().manual_seed(seed)
    z = 0.8 * torch.randn(n, 85, generator=g)
    with torch.no_grad():
        v = model(z)
    R = _so3_exp(0.4 * torch.randn(n, 3, generator=g))
    t = torch.randn(n, 3, generator=g)
    lm = v[:, model.landmarks]
    lm = lm + noise_mm * torch.randn(lm.shape, generator=g)
    pts = scale * lm @ R.transpose(1, 2) + t[:, None]
    return z, v, pts, R, t


# ---- landmark registry --------------------------------------------------------------------------
def test_landmark_sets_and_positions(model):
    lmk = landmark_set(model, "ibug68")
    assert len(lmk) == 68 and lmk.is_vertex_set
    assert torch.equal(lmk.vertex_indices[:, 0], model.landmarks)
    assert len(landmark_set(model, "ibug51")) == 51
    v = model(torch.randn(2, 85)).detach()
    assert torch.equal(landmark_positions(v, lmk), v[:, model.landmarks])  # bit-exact for vertices
    assert torch.equal(landmark_positions(v[0], [5, 7]), v[0, [5, 7]])
    # a barycentric point: the centroid of a triangle
    tri = model.faces[:3]
    bary = LandmarkSet.from_barycentric(tri, torch.full((3, 3), 1 / 3))
    expect = v[:, tri].mean(2)
    torch.testing.assert_close(landmark_positions(v, bary), expect)
    torch.testing.assert_close(landmark_positions(v, (tri.numpy(), np.full((3, 3), 1 / 3))), expect)
    with pytest.raises(LandmarkError, match="resolve it first with landmark_set"):
        landmark_positions(v, "ibug68")


def test_register_landmarks(model):
    register_landmarks("test_nose", [100, 200, 300])
    try:
        assert "test_nose" in available_landmarks() and available_landmarks()[:2] == ["ibug68", "ibug51"]
        assert landmark_set(model, "test_nose").vertex_indices[:, 0].tolist() == [100, 200, 300]
        with pytest.raises(LandmarkError, match="already registered.*overwrite=True"):
            register_landmarks("test_nose", [1])
        register_landmarks("test_nose", lambda m: landmark_set(m, "ibug68").subset([30]), overwrite=True)
        assert len(landmark_set(model, "test_nose")) == 1
    finally:
        unregister_landmarks("test_nose")
    with pytest.raises(UnknownLandmarksError, match="unknown landmark set 'test_nose'.*register_landmarks"):
        landmark_set(model, "test_nose")
    with pytest.raises(LandmarkError, match="built in"):
        register_landmarks("ibug68", [1])


def test_landmark_subset(model):
    lmk = landmark_set(model, "ibug68")
    sub = lmk.subset([30, 8, 36], name="three")
    assert sub.name == "three" and len(sub) == 3
    assert sub.vertex_indices[:, 0].tolist() == model.landmarks[[30, 8, 36]].tolist()
    assert lmk.subset(slice(17, 68)).name == "ibug68[subset]" and len(lmk.subset(np.arange(68) >= 60)) == 8
    v = model(torch.randn(2, 85)).detach()
    assert torch.equal(landmark_positions(v, sub), v[:, model.landmarks[[30, 8, 36]]])
    with pytest.raises(LandmarkError, match="at least one landmark"):
        lmk.subset([])


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ([0, 99999], r"uses vertex 99999 but the mesh has 9409 vertices"),
        ([-1, 3], "negative vertex index"),
        ([[1, 2], [3, 4]], "1-D sequence of K vertex indices"),
        (([[1, 2, 3]], [[0.5, 0.2, 0.2]]), "sum to 0.9.*normalise"),
        (([[1, 2, 3]], [[1.5, -0.5, 0.0]]), "negative.*outside its triangle"),
        (([[1, 2, 3]], [[1.0, 0.0]]), "barycentrics must have the shape"),
        ([], "at least one landmark"),
        ([1.5, 2], "whole numbers"),
    ],
)
def test_bad_landmark_specs(model, spec, match):
    with pytest.raises(LandmarkError, match=match):
        landmark_set(model, spec)


# ---- 3D fitting ----------------------------------------------------------------------------------
def test_fast_landmark_rows_equal_full_decode(model):
    _, _, pts, _, _ = _faces(model, 2, seed=1, noise_mm=1.0)
    res = fit_landmarks(model, pts)
    torch.testing.assert_close(res.landmarks, res.vertices[:, model.landmarks], atol=2e-4, rtol=0)  # float32, mm
    m64 = FaceModel(model.config, num_faces=len(model.faces), num_landmarks=68)
    m64.load_state_dict(model.state_dict())
    m64 = m64.double()
    tri = LandmarkSet.from_barycentric(model.faces[:5], torch.tensor([[0.2, 0.3, 0.5]] * 5))
    res64 = fit_landmarks(m64, torch.randn(5, 3, dtype=torch.float64) * 30, landmarks=tri, align="none", max_iters=2)
    torch.testing.assert_close(res64.landmarks, landmark_positions(res64.vertices, tri), atol=1e-9, rtol=0)


def test_recovers_code_and_similarity(model):
    z, v, pts, R, t = _faces(model, 1, seed=2)
    res = fit_landmarks(model, pts[0], reg=0.0, max_iters=30)
    assert isinstance(res, FitResult) and res.vertices.shape == (1, 9409, 3) and res.codes.shape == (1, 85)
    assert bool(res.converged[0])
    assert float(res.rmse[0]) / 0.01 < 1e-3  # model-space mm
    assert float(res.scale[0]) == pytest.approx(0.01, rel=1e-5)
    scale, rot, trans = res.transform
    assert res.transform.scale is res.scale and rot is res.rotation and trans is res.translation
    torch.testing.assert_close(res.rotation[0], R[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(res.translation[0], t[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(res.codes, z, atol=2e-3, rtol=0)
    assert float((res.vertices - v).norm(dim=-1).max()) < 1e-2  # mm, the whole mesh
    torch.testing.assert_close(res.transform_points()[:, model.landmarks], pts, atol=1e-5, rtol=0)
    assert torch.isfinite(res.objective).all() and res.iterations.dtype == torch.int64


def test_vertices_are_decoded_once_on_access(model):
    _, v, pts, _, _ = _faces(model, 1, seed=11)
    res = fit_landmarks(model, pts, max_iters=2)
    first = res.vertices
    assert first.shape == (1, 9409, 3) and res.vertices is first
    stale = fit_landmarks(model, pts, max_iters=2)
    with torch.no_grad():
        model.generator.fc2.bias.mul_(1.0)  # a write (even a no-op) changes the model
    with pytest.raises(FittingError, match="weights changed after this fit"):
        stale.vertices
    assert fit_landmarks(model, pts, max_iters=2, decode=False).vertices is None


def test_rigid_and_no_alignment(model):
    z, v, _, R, t = _faces(model, 1, seed=3)
    lm = v[:, model.landmarks]
    rigid = fit_landmarks(model, lm @ R.transpose(1, 2) + 10 * t[:, None], align="rigid", reg=0.0, max_iters=30)
    assert float(rigid.rmse[0]) < 1e-3 and float(rigid.scale[0]) == 1.0
    none = fit_landmarks(model, lm, align="none", reg=0.0, max_iters=30)
    assert float(none.rmse[0]) < 1e-3
    torch.testing.assert_close(none.rotation[0], torch.eye(3))


def test_missing_points_nan_rows_and_zero_weights(model):
    z, v, pts, _, _ = _faces(model, 1, seed=4)
    holes = pts.clone()
    holes[0, ::7] = float("nan")  # 10 missing rows
    res = fit_landmarks(model, holes, reg=0.0, max_iters=30)
    assert torch.isnan(res.residuals[0, ::7]).all() and torch.isfinite(res.residuals[0, 1::7]).all()
    assert float(res.rmse[0]) / 0.01 < 1e-3
    w = torch.ones(68)
    w[::7] = 0
    bad = pts.clone()
    bad[0, ::7] += 5.0  # outliers with weight 0 are ignored
    res_w = fit_landmarks(model, bad, weights=w, reg=0.0, max_iters=30)
    assert float(res_w.rmse[0]) / 0.01 < 1e-3
    assert float(res_w.residuals[0, 0]) > 1.0  # but reported
    torch.testing.assert_close(res_w.codes, res.codes, atol=1e-3, rtol=0)
    # non-uniform weights still solve the weighted problem exactly on exact data
    res_nu = fit_landmarks(model, pts, weights=torch.linspace(0.5, 2.0, 68), reg=0.0, max_iters=30)
    assert float(res_nu.rmse[0]) / 0.01 < 1e-3


def test_batch_equals_single_fits(model):
    # exact data, reg > 0: a unique optimum inside a linear piece, reached by every path
    _, _, pts, _, _ = _faces(model, 3, seed=5)
    # (reg=0.01 on ||z||^2, the old default: a sharp optimum; the default prior's optimum is
    # flatter, so codes there agree only to ~3e-4, float32 rounding of the two paths)
    batch = fit_landmarks(model, pts, max_iters=30, reg=0.01)
    for i in range(3):
        single = fit_landmarks(model, pts[i], max_iters=30, reg=0.01)
        torch.testing.assert_close(batch.codes[i], single.codes[0], atol=1e-4, rtol=0)
        torch.testing.assert_close(batch.rotation[i], single.rotation[0], atol=1e-6, rtol=0)
        assert float(batch.objective[i]) == pytest.approx(float(single.objective[0]), rel=1e-4)
    # a large batch (grouped Jacobian updates) gives the same per-face answers
    _, _, many, _, _ = _faces(model, 70, seed=6)
    big = fit_landmarks(model, many, decode=False, max_iters=30, reg=0.01)
    assert big.vertices is None and big.codes.shape == (70, 85) and big.converged.all()
    small = fit_landmarks(model, many[[0, 69]], decode=False, max_iters=30, reg=0.01)
    torch.testing.assert_close(big.codes[[0, 69]], small.codes, atol=1e-4, rtol=0)


def test_batch_over_threads_equals_one_thread(model):
    # more faces than one chunk: with two threads the chunks run in parallel (BLAS held to one
    # thread); the answers are those of the serial run
    from facemodel import fitting

    _, _, pts, _, _ = _faces(model, fitting._CHUNK + 20, seed=8, noise_mm=0.5)
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    try:  # BLAS on one thread in both runs: threaded BLAS would change the rounding, not the chunks
        with threadpool_limits(limits=1, user_api="blas"):
            torch.set_num_threads(1)
            serial = fit_landmarks(model, pts, decode=False)
            torch.set_num_threads(2)
            parallel = fit_landmarks(model, pts, decode=False)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(parallel.codes, serial.codes, atol=1e-3, rtol=0)
    torch.testing.assert_close(parallel.objective, serial.objective, rtol=1e-4, atol=0)
    assert torch.equal(parallel.iterations, serial.iterations)


def test_regularisation_shrinks_codes(model):
    _, _, pts, _, _ = _faces(model, 2, seed=7, noise_mm=1.0)
    free = fit_landmarks(model, pts, reg=0.0)
    strong = fit_landmarks(model, pts, reg=10.0)
    assert (strong.codes.norm(dim=1) < free.codes.norm(dim=1)).all()
    assert (strong.rmse >= free.rmse * 0.999).all()


def test_lbfgs_and_adam_reduce_the_error(model):
    _, _, pts, _, _ = _faces(model, 2, seed=8)
    start = fit_landmarks(model, pts, solver="adam", max_iters=1, decode=False)  # ~ the random code
    adam = fit_landmarks(model, pts, solver="adam", max_iters=300, decode=False, generator=1)
    assert (adam.rmse < 0.5 * start.rmse).all() and (adam.iterations == 300).all()
    lbfgs = fit_landmarks(model, pts, solver="lbfgs", max_iters=5, decode=False)
    gn = fit_landmarks(model, pts, decode=False, tol=1e-6)  # run to convergence: the better optimiser
    assert (lbfgs.rmse < 0.5 * start.rmse).all()
    # the same objective within 0.5 %: on the LeakyReLU kinks each solver may end in its own local optimum
    assert (gn.objective <= lbfgs.objective * 1.005).all() and (gn.objective <= adam.objective).all()
    # the default stops at a 3e-2 relative decrease: within 3 % of the converged objective
    default = fit_landmarks(model, pts, decode=False)
    assert default.converged.all() and (default.objective <= gn.objective * 1.03).all()
    # the same seed gives the same random start
    again = fit_landmarks(model, pts, solver="adam", max_iters=1, decode=False)
    torch.testing.assert_close(again.codes, start.codes)


def test_init_codes_and_random_init(model):
    z, _, pts, _, _ = _faces(model, 1, seed=9)
    warm = fit_landmarks(model, pts, init=z[0], reg=0.0, max_iters=5)
    assert float(warm.rmse[0]) / 0.01 < 1e-3
    rnd = fit_landmarks(model, pts, init="random", generator=torch.Generator().manual_seed(3), reg=0.0, max_iters=40)
    assert float(rnd.rmse[0]) / 0.01 < 0.05


# ---- 2D ------------------------------------------------------------------------------------------
def test_fit_2d_scaled_orthographic(model):
    g = torch.Generator().manual_seed(10)
    z = 0.8 * torch.randn(2, 85, generator=g)
    with torch.no_grad():
        lm = model(z)[:, model.landmarks]
    R = _so3_exp(0.3 * torch.randn(2, 3, generator=g))
    x = 2.5 * (lm @ R.transpose(1, 2))[..., :2] + torch.tensor([320.0, 240.0])
    # the points are projected fixed vertices: no contour, no robust loss
    res = fit_landmarks_2d(model, x, reg=1e-4, max_iters=30, contour=False, loss="l2")
    assert res.translation.shape == (2, 2) and res.rotation.shape == (2, 3, 3) and res.align == "scaled_orthographic"
    assert (res.rmse < 1e-2).all()  # pixels, on a face ~350 px wide
    torch.testing.assert_close(res.scale, torch.full((2,), 2.5), rtol=1e-3, atol=0)
    proj = res.transform_points()[:, model.landmarks]
    torch.testing.assert_close(proj, x, atol=0.05, rtol=0)
    assert torch.allclose(torch.linalg.det(res.rotation), torch.ones(2), atol=1e-5)
    # missing points (NaN) and a single face
    holes = x[0].clone()
    holes[::5] = float("nan")
    one = fit_landmarks_2d(model, holes, reg=1e-4, max_iters=30, contour=False, loss="l2")
    assert float(one.rmse[0]) < 0.05 and torch.isnan(one.residuals[0, ::5]).all()


# ---- bad input -----------------------------------------------------------------------------------
def _pts():
    return torch.randn(68, 3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"points": torch.randn(68, 2)}, r"shape \(K, 3\).*fit_landmarks_2d"),
        ({"points": torch.randn(67, 3)}, "got 67 points per face but landmark set 'ibug68' has 68"),
        ({"points": torch.full((68, 3), float("nan"))}, "all landmarks of face 0 are missing"),
        ({"points": torch.randn(68, 3).index_fill_(0, torch.tensor([3]), math.inf)}, "inf.*landmark 3.*NaN rows"),
        ({"points": torch.randn(0, 68, 3)}, "empty batch"),
        ({"points": torch.randn(68, 3, dtype=torch.float64)}, r"float64 but the model computes in torch.float32"),
        ({"points": torch.randn(68, 3, device="meta")}, "are on meta but the model is on cpu"),
        ({"points": "abc"}, "array of numbers"),
        ({"points": torch.ones(68, 3)}, "points of face 0 all coincide"),
        ({"solver": "sgd"}, "unknown solver 'sgd'.*gauss-newton"),
        ({"align": "affine"}, "unknown align 'affine'.*similarity"),
        ({"init": "zeros"}, "unknown init 'zeros'"),
        ({"init": torch.zeros(84)}, r"init codes must have shape \(85,\)"),
        ({"reg": -1.0}, "reg must be a finite number >= 0"),
        ({"max_iters": 0}, "max_iters must be a positive integer"),
        ({"weights": -torch.ones(68)}, "weights must be finite and >= 0"),
        ({"weights": torch.ones(5)}, r"weights must have shape \(68,\)"),
        (
            {"weights": torch.ones(68).index_fill_(0, torch.arange(2, 68), 0)},
            "2 usable landmarks but 'similarity' needs at least 3",
        ),
        ({"solver_options": {"lr": 1}}, "unknown option 'lr' for solver 'gauss-newton'"),
        ({"landmarks": "nope"}, "unknown landmark set 'nope'"),
        ({"landmarks": list(range(67)) + [10**6]}, "uses vertex 1000000"),
    ],
)
def test_bad_input(model, kwargs, match):
    kwargs = dict(kwargs)
    points = kwargs.pop("points", None)
    with pytest.raises(FaceModelError, match=match) as info:
        fit_landmarks(model, _pts() if points is None else points, **kwargs)
    assert isinstance(info.value, ValueError)


def test_bad_input_2d(model):
    with pytest.raises(FittingError, match=r"shape \(K, 2\).*fit_landmarks for \(K, 3\)"):
        fit_landmarks_2d(model, torch.randn(68, 3))
    with pytest.raises(FittingError, match="unknown camera 'perspective'"):
        fit_landmarks_2d(model, torch.randn(68, 2), camera="perspective")
    with pytest.raises(FittingError, match="expected a FaceModel"):
        fit_landmarks(torch.nn.Linear(2, 2), torch.randn(68, 3))


def test_incremental_jacobian_matches_full(model):
    """The Jacobian built from the cached bases and updated with the flipped units only, over
    a walk of Gauss-Newton-like steps (few and many flips, batched and one face), equals
    ``A diag(lrelu') W1`` computed from scratch."""
    from facemodel import fitting as F

    head = F._head(model, landmark_set(model, "ibug68"), np.dtype(np.float32))
    rng = np.random.default_rng(0)
    full = lambda mk: (head.A.astype(np.float64) * np.where(mk, 1.0, head.slope)[:, None, :]) @ head.W1.astype(np.float64)  # noqa: E731
    for n in (1, 5, 130):
        z = rng.standard_normal((n, head.D)).astype(np.float32)
        mask = head.pre(z) > 0
        J = head.jacobian_init(mask)
        ref = full(mask)
        scale = np.abs(ref).max()
        assert np.abs(J - ref).max() <= 1e-5 * scale
        for step in (0.02, 0.05, 0.3, 0.01, 3.0, 0.01, 0.1, 0.02):  # 3.0: most units flip (full rebuild)
            z = z + step * rng.standard_normal(z.shape).astype(np.float32)
            new = head.pre(z) > 0
            J = head.update_jacobian(J, mask, new)
            mask = new
            assert np.abs(J - full(mask)).max() <= 1e-5 * scale
        rows = rng.uniform(0.5, 2.0, (n, 3 * head.K)).astype(np.float32)  # row-weighted updates
        Jw = J * rows[..., None]
        new = head.pre(z + 0.05 * rng.standard_normal(z.shape).astype(np.float32)) > 0
        Jw = head.update_jacobian(Jw, mask, new, rows)
        assert np.abs(Jw - full(new) * rows[..., None]).max() <= 1e-5 * scale * rows.max()


def test_row_head_jacobians_equal_a_head_built_for_its_landmarks(released):
    """A contour round's head (rows of the iBUG-68 + contour-candidate head, read lazily from its
    parent's cached Jacobians) starts one face's Jacobian from the same numbers as a head built
    for those landmarks directly, plain and whitened by the model prior (the released model's:
    a random model's prior is close to N(0, I), where whitening changes little)."""
    model = released
    from facemodel import fitting as F
    from facemodel.fitting_prior import whitened_head
    from facemodel.prior import code_prior

    union = F._contour_union(model)
    rows = np.concatenate([np.arange(68, 85), np.arange(17, 68)])  # 17 contour candidates, the 51 inner points
    tri, bar = union.vertex_indices.numpy()[rows], union.barycentrics.numpy()[rows]
    direct = F._head(model, landmark_set(model, (tri, bar)), np.dtype(np.float32))
    parent = F._head(model, union, np.dtype(np.float32))
    rng = np.random.default_rng(1)
    for wrap in (lambda h: h, lambda h: whitened_head(h, code_prior(model))):
        sub, ref = F._build_row_head(wrap(parent), rows), wrap(direct)
        assert sub._bases is None  # nothing copied until a fit needs it
        for _ in range(3):
            mask = sub.pre(rng.standard_normal((1, sub.D)).astype(np.float32)) > 0
            J, Jref = sub.jacobian_init(mask), ref.jacobian_init(mask)
            assert np.abs(J - Jref).max() <= 1e-5 * np.abs(Jref).max()
        assert np.allclose(sub.bases()[1], ref.bases()[1], rtol=0, atol=1e-5 * np.abs(ref.bases()[1]).max())
    # whitening a row head gives it its own Jacobians (its parent's are of the plain codes)
    white = whitened_head(F._build_row_head(parent, rows), code_prior(model))
    ref = whitened_head(direct, code_prior(model))
    mask = white.pre(rng.standard_normal((1, white.D)).astype(np.float32)) > 0
    assert np.abs(white.jacobian_init(mask) - ref.jacobian_init(mask)).max() <= 1e-5 * np.abs(ref.bases()[1]).max()


def test_pose3d_one_face_fast_path_matches_batched():
    """The one-face closed-form pose (plain-Python determinant) equals the batched Umeyama
    fit, reflections included, for both alignments and dtypes."""
    import numpy as np

    from facemodel.fitting import _Pose3D

    rng = np.random.default_rng(3)
    for dt in (np.float32, np.float64):
        for align in ("similarity", "rigid"):
            P = rng.standard_normal((3, 68, 3)).astype(dt)
            P[1, :, 0] *= -1.0  # a mirrored face: the fit must not reflect
            w = rng.random((3, 68)).astype(dt)
            m = rng.standard_normal((3, 204)).astype(dt)
            pm = _Pose3D(align)
            Xb = pm.solve(pm.prepare(P, w), P, w, m)
            for i in range(3):
                Xi = pm.solve(pm.prepare(P[i : i + 1], w[i : i + 1]), P[i : i + 1], w[i : i + 1], m[i : i + 1])
                assert Xi.dtype == Xb.dtype and Xi.shape == (1, 13)
                np.testing.assert_allclose(Xi[0], Xb[i], rtol=1e-4, atol=1e-5)
                R = Xi[0, 1:10].reshape(3, 3).astype(np.float64)
                assert np.linalg.det(R) > 0


def test_one_chunk_fits_hold_numpys_blas_to_one_thread(model, monkeypatch):
    """A single face (or one chunk) is solved with NumPy's BLAS at one thread: threaded BLAS on
    its small matrices cost 20-50x the fit on a busy machine (docs/benchmarks.md "Speed"); the
    caller's thread setting is restored afterwards."""
    from threadpoolctl import threadpool_info

    import facemodel.fitting as fitting

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    seen = []
    original = fitting._gn_single

    def spy(*args, **kwargs):
        seen.append(blas_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(fitting, "_gn_single", spy)
    before = blas_threads()
    _, _, pts, _, _ = _faces(model, 1, seed=3)
    fit_landmarks(model, pts[0], decode=False)
    assert seen and all(n == 1 for n in seen[0]) and seen[0]
    assert blas_threads() == before
    # a contour-aware 2D fit holds one limit around all its rounds (nested limits reuse it)
    seen.clear()
    fit_landmarks_2d(model, pts[0, :, :2] * 3.0, decode=False)
    assert len(seen) >= 3 and all(n and all(k == 1 for k in n) for n in seen)
    assert blas_threads() == before and fitting._BLAS_HELD.depth == 0
