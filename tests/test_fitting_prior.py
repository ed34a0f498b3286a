"""The code prior of the fits, plausibility, the robust loss, convergence, contour-aware 2D
fits (on the released weights: the prior needs the trained blendshape map)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facemodel import FaceModel
from facemodel.contour import choose_contour, contour_candidates, contour_landmarks, contour_lines
from facemodel.fitting import FittingError, fit_landmarks, fit_landmarks_2d
from facemodel.fitting_prior import DEFAULT_REG, reg_for_noise
from facemodel.landmarks import landmark_positions
from facemodel.prior import code_prior


def _posed(model, n, seed, noise=0.0):
    faces = model.sample(n, seed=seed)
    g = torch.Generator().manual_seed(seed)
    lm = faces.vertices[:, model.landmarks] + noise * torch.randn(n, 68, 3, generator=g)
    return faces, lm


def test_prior_is_gaussian_with_the_expected_blocks(released):
    p = code_prior(released)
    assert p is code_prior(released)  # cached
    sl = released.code_slices
    cov = p.chol @ p.chol.T
    n_id, n_exp, dim = sl["identity"].stop - sl["identity"].start, sl["expression"].stop - sl["expression"].start, cov.shape[0]
    assert (n_id, n_exp, dim) == (100, 53, 158)  # 0.4.0's codes
    np.testing.assert_allclose(cov[sl["identity"], sl["identity"]], np.eye(n_id), atol=1e-12)
    np.testing.assert_allclose(p.mean[sl["identity"]], 0.0)
    e = cov[sl["expression"], sl["expression"]]
    assert not np.allclose(e, np.eye(n_exp)) and np.all(np.linalg.eigvalsh(e) > 0)  # learned, full rank
    # Mahalanobis norms of the prior's own samples: about sqrt(dim)
    lo, med, hi = p.typical_range
    assert lo < med < hi and abs(med - np.sqrt(dim)) < 0.3
    z = p.sample(2000, seed=3)
    m = p.mahalanobis(z)
    assert lo - 0.5 < np.median(m) < hi and abs(np.median(m) - med) < 0.2
    np.testing.assert_allclose(p.color(p.whiten(z)), z, atol=1e-9)


def _similarity_rmse(a: np.ndarray, b: np.ndarray) -> float:
    """(V, 3), (V, 3) -> RMSE (mm) of a after the similarity taking it onto b (Umeyama)."""
    ma, mb = a.mean(0), b.mean(0)
    A, Bc = a - ma, b - mb
    U, S, Vt = np.linalg.svd(Bc.T @ A)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    R = U @ D @ Vt
    scale = (S * np.diag(D)).sum() / (A**2).sum()
    return float(np.sqrt(((scale * A @ R.T - Bc) ** 2).sum(1).mean()))


def test_prior_expression_block_is_half_tracker_like_half_realistic(released):
    from facemodel import prior as P
    from facemodel.data.random_expressions import random_expressions

    emap = released.expression_map
    names, learned = list(emap.config.names), emap.learned_mask.numpy() > 0
    W = P._expression_weights(names, learned, 400, 0.5)
    assert W.shape == (400, 53)
    tracker, realistic = W[:200], W[200:]
    # tracker-like rows: 1-6 learned shapes at 0.1-1.0 (plus their L/R partners), or at rest
    on = (tracker > 0).sum(1)
    assert on.max() <= 12 and 0.02 < (on == 0).mean() < 0.2 and tracker.max() <= 1.0
    np.testing.assert_array_equal(tracker, P._tracker_weights(names, learned, 200, np.random.default_rng(0)))
    # realistic rows: exactly what sample()'s sampler draws (seed 1), all 53 shapes learned in 0.7.0
    np.testing.assert_array_equal(realistic, random_expressions(200, np.random.default_rng(1)))
    np.testing.assert_array_equal(P._expression_weights(names, learned, 400, 0.0),
                                  P._tracker_weights(names, learned, 400, np.random.default_rng(0)))
    assert "10000 realistic" in code_prior(released).source
    # caches derived from a prior (the posterior-mean Gaussian) key on its serial, never reused
    assert P._build(released).serial != P._build(released).serial


def test_prior_follows_its_realistic_share_and_fits_realistic_faces_closer(released, ict, monkeypatch):
    """The half-realistic expression block (the default) against the tracker-like block alone
    (the prior until session 27): upstream ICT identities with expressions drawn like the training
    data's (ICT's own deltas), 1 mm of landmark noise: the default prior fits them closer."""
    from facemodel import prior as P
    from facemodel.data.random_expressions import random_expressions

    rng = np.random.default_rng(100)
    n = 40
    neutral = ict.identity_mm(rng.standard_normal((n, 100))).astype(np.float64)
    deltas = ict.expression_shapes_mm[:53].astype(np.float64) - ict.neutral_mm.astype(np.float64)
    v = neutral + np.einsum("nk,kvc->nvc", random_expressions(n, np.random.default_rng(200)), deltas)
    lm = landmark_positions(torch.as_tensor(v), released.landmark_set("ibug68")).numpy()
    pts = (lm + rng.standard_normal(lm.shape)).astype(np.float32)

    def rmse(share):
        monkeypatch.setattr(P, "REALISTIC_SHARE", share)
        fit = fit_landmarks(released, pts, noise_mm=1.0)
        return np.array([_similarity_rmse(a, b) for a, b in zip(fit.vertices.double().numpy(), v)]), code_prior(released)

    old, p_old = rmse(0.0)
    new, p_new = rmse(0.5)
    assert p_old.serial != p_new.serial and not np.allclose(p_old.mean, p_new.mean)  # the cache follows the share
    assert new.mean() < old.mean() - 0.02, (old.mean(), new.mean())
    assert (new < old).mean() >= 0.6


def test_converged_is_true_on_exact_data(released):
    _, lm = _posed(released, 4, seed=1)
    res = fit_landmarks(released, lm, decode=False)
    assert res.converged.all(), res.iterations
    # stopped by max_iters: not converged
    res1 = fit_landmarks(released, lm, decode=False, max_iters=1)
    assert not res1.converged.any()


def test_default_prior_beats_the_old_l2_default_on_noisy_points(released):
    faces, lm = _posed(released, 8, seed=2, noise=1.0)
    new = fit_landmarks(released, lm)
    old = fit_landmarks(released, lm, reg=0.01)
    assert new.prior == "model" and old.prior == "l2" and old.reg == 0.01 and old.noise_mm is None
    # the default estimates each face's noise and weighs its prior for it
    torch.testing.assert_close(new.reg, torch.as_tensor(reg_for_noise(new.noise_mm.numpy())))

    def err(r):
        return float((r.vertices - faces.vertices).norm(dim=-1).pow(2).mean().sqrt())

    assert err(new) < 0.7 * err(old)
    # plausible codes: not above the prior's 99th percentile; the old default overfits far beyond it
    assert float(new.plausibility.max()) < new.typical_range[2]
    assert float(old.plausibility.median()) > old.typical_range[2]


def test_reg_zero_is_the_unregularised_fit_under_both_priors(released):
    _, lm = _posed(released, 2, seed=4)
    # 158 unknowns from 204 coordinates: the unregularised l2 fit needs more than its default iterations
    a = fit_landmarks(released, lm, reg=0, decode=False, max_iters=100)
    b = fit_landmarks(released, lm, reg=0, prior="model", decode=False, max_iters=100)
    assert a.prior == "l2" and b.prior == "model"
    assert float(a.rmse.max()) < 1e-3 and float(b.rmse.max()) < 1e-3  # exact data, mm


def test_explicit_init_codes_are_respected_under_the_prior(released):
    faces, lm = _posed(released, 1, seed=5)
    res = fit_landmarks(released, lm, init=faces.codes, reg=0, prior="model", max_iters=1, decode=False)
    assert float(res.rmse[0]) < 1e-3  # started at the truth: stays there


def test_huber_loss_resists_outliers(released):
    faces, lm = _posed(released, 4, seed=6, noise=0.5)
    bad = lm.clone()
    bad[:, [10, 30, 48]] += 25.0  # three landmarks 43 mm off
    l2 = fit_landmarks(released, bad, posterior=False)  # MAP against MAP (the default l2 fit blends in the
    hub = fit_landmarks(released, bad, loss="huber")   # posterior mean, which the outliers move less: 8.6 mm here)
    w = hub.loss_weights
    inliers = torch.ones(68, dtype=torch.bool)
    inliers[[10, 30, 48]] = False
    # the three outliers get the lowest weights of each face, well below every inlier's
    # (0.5.0: outliers 0.27-0.31, inliers >= 0.54; 0.4.x: outliers < 0.3)
    assert w.shape == (4, 68) and float(w[:, [10, 30, 48]].max()) < 0.35
    assert bool((w[:, [10, 30, 48]].max(1).values < 0.75 * w[:, inliers].min(1).values).all())
    assert float(l2.loss_weights.min()) == 1.0

    def err(r):
        return float((r.vertices - faces.vertices).norm(dim=-1).pow(2).mean().sqrt())

    assert err(hub) < 0.8 * err(l2)


@pytest.mark.parametrize("bad", [{"prior": "gauss"}, {"loss": "cauchy"}, {"loss_scale": 0.0}, {"loss_scale": float("nan")}])
def test_bad_prior_and_loss_arguments(released, bad):
    _, lm = _posed(released, 1, seed=0)
    with pytest.raises(FittingError):
        fit_landmarks(released, lm, **bad)


def _project(v, lm, yaw, lines, normals):
    a = np.radians(yaw)
    R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    M = np.diag([1.5, -1.5]) @ R[:2]
    x = lm @ M.T
    for k, ln in enumerate(lines):  # the true jaw: the silhouette of the true mesh
        c = v[:, ln] @ M.T
        x[:, k] = c[np.arange(len(v)), np.argmax(c @ (M @ normals[k]), axis=1)]
    return x


def test_contour_lines_cover_the_jaw(released):
    lines, normals = contour_lines(released)
    assert len(lines) == 17 and all(5 <= len(ln) <= 40 for ln in lines)
    lm = landmark_positions(released.template, released.landmark_set("ibug68"))[:17].numpy()
    t = released.template.numpy()
    for k, ln in enumerate(lines):  # each line starts near its landmark and runs backwards
        assert np.linalg.norm(t[ln] - lm[k], axis=1).min() < 5.0
        assert t[ln, 2].min() < lm[k, 2] - 5.0 and np.ptp(t[ln, 2]) > 15.0
    assert np.allclose(np.linalg.norm(normals[:, :2], axis=1), 1.0)


@pytest.mark.parametrize("pinhole", [False, True])
def test_choose_contour_takes_each_lines_outermost_vertex(released, pinhole):
    """The batched choice equals the definition, line by line and face by face: the candidate
    of each jaw point's line that projects furthest along the line's normal in the image
    (through the camera centre for a pinhole)."""
    from facemodel.fitting import _so3_exp

    lines, normals = contour_lines(released)
    rng = np.random.default_rng(1)
    flat = contour_candidates(released)
    cand = released.template.double().numpy()[flat][None] + rng.normal(0, 2.0, (12, len(flat), 3))
    R = _so3_exp(rng.normal(0, 0.6, (12, 3)))
    tr = np.c_[rng.normal(0, 20, (12, 2)), rng.uniform(300, 800, 12)] if pinhole else None
    got = choose_contour(released, cand, R, tr)
    for b in range(12):
        start = 0
        for k, ln in enumerate(lines):
            seg = np.arange(start, start + ln.size)
            start += ln.size
            q = cand[b, seg] @ R[b].T + (tr[b] if pinhole else 0.0)
            proj = q[:, :2] / q[:, 2:] if pinhole else q[:, :2]
            d = R[b, :2] @ normals[k] - (proj.mean(0) * (R[b, 2] @ normals[k]) if pinhole else 0.0)
            assert got[b, k] == seg[np.argmax(proj @ d)]


def test_contour_fit_survives_60_degrees_of_yaw(released):
    faces = released.sample(3, seed=7, truncation=0.8)
    v = faces.vertices.double().numpy()
    lm = faces.vertices[:, released.landmarks].double().numpy()
    lines, normals = contour_lines(released)
    x = _project(v, lm, 60.0, lines, normals)
    on = fit_landmarks_2d(released, x.astype(np.float32))
    off = fit_landmarks_2d(released, x.astype(np.float32), contour=False)
    # with the contour the jaw points moved off their fixed vertices
    fixed = released.landmark_set("ibug68").vertex_indices[:17, 0].numpy()
    assert (on.landmark_set.vertex_indices[:17, 0].numpy() != fixed).sum() >= 8
    proj_on = on.transform_points(on.landmarks).double().numpy()
    proj_off = off.transform_points(off.landmarks).double().numpy()
    iod = np.linalg.norm(x[:, 36] - x[:, 45], axis=1)
    e_on = (np.linalg.norm(proj_on - x, axis=-1).mean(1) / iod).mean()
    e_off = (np.linalg.norm(proj_off - x, axis=-1).mean(1) / iod).mean()
    assert e_on < 0.5 * e_off and e_on < 0.05
    specs = contour_landmarks(released, on)
    assert len(specs) == 3 and specs[0][0].shape == (68, 3)


def test_contour_round_sets_are_the_contour_specs(released):
    """A contour round's landmark set is a choice of rows of the iBUG-68 + candidates union: the
    same points as :func:`contour_specs` builds (and validates) from the choice."""
    from facemodel.contour import CONTOUR_SET_NAME, contour_specs
    from facemodel.fitting import _contour_union

    union = _contour_union(released)
    n = len(contour_candidates(released))
    choice = np.random.default_rng(0).integers(-1, n, size=(4, 17))
    rows = np.concatenate([np.where(choice >= 0, 68 + choice, np.arange(17)), np.tile(np.arange(17, 68), (4, 1))], 1)
    for c, r in zip(contour_specs(released, choice), rows):
        sub = union.subset(r, name=CONTOUR_SET_NAME)
        assert np.array_equal(sub.vertex_indices.numpy(), c[0]) and np.array_equal(sub.barycentrics.numpy(), c[1])
    faces = released.sample(1, seed=3)
    x = faces.vertices[:, released.landmarks, :2].double().numpy() * 1.5
    assert fit_landmarks_2d(released, x.astype(np.float32)).landmark_set.name == CONTOUR_SET_NAME


def test_contour_flag_is_checked(released):
    with pytest.raises(FittingError, match="contour"):
        fit_landmarks_2d(released, np.zeros((68, 2)) + np.arange(68)[:, None], contour="yes")


@pytest.mark.parametrize("kwargs, match", [
    (dict(weights=[1, [2, 3]] + [1] * 66), "weights must be an array of numbers"),
    (dict(weights=np.array([])), "weights must have shape"),
    (dict(max_iters=torch.tensor([3, 4])), "max_iters must be a positive integer"),
    (dict(prior=np.array([])), "unknown prior"),
    (dict(loss=np.array([1, 2])), "unknown loss"),
    (dict(solver=np.array([])), "unknown solver"),
])  # fmt: skip
def test_contour_fit_refuses_malformed_arguments_clearly(kwargs, match):
    """The contour path reads weights and max_iters before the fit's own checks (fuzz seed 3)."""
    from facemodel.errors import FittingError

    model = FaceModel.from_pretrained()
    with pytest.raises(FittingError, match=match):
        model.fit_landmarks_2d(torch.randn(68, 2, generator=torch.Generator().manual_seed(0)) * 30, **kwargs)


def test_noise_mm_sets_the_prior_weight_and_helps_on_noisy_unseen_faces(released, ict):
    """The weight follows the stated noise (reg_for_noise) and, on upstream ICT faces the model
    never saw, stating the real 2 mm of noise fits them better than claiming exact points."""

    from facemodel.fitting_prior import DEFAULT_NOISE_MM, reg_for_noise

    from bench_fit_unseen import ict_faces, posed_points, procrustes_rmse

    assert reg_for_noise(0.0) < reg_for_noise(1.0) < reg_for_noise(2.0)
    assert DEFAULT_REG["3d"] == pytest.approx(reg_for_noise(DEFAULT_NOISE_MM))
    v = ict_faces(ict, 12, seed=5)
    lm = landmark_positions(torch.as_tensor(v), released.landmark_set("ibug68")).numpy()
    pts = posed_points(lm, 2.0, np.random.default_rng(5)).astype(np.float32)
    told = fit_landmarks(released, pts, noise_mm=2.0)
    exact = fit_landmarks(released, pts, noise_mm=0.0)
    assert told.reg == pytest.approx(reg_for_noise(2.0)) and told.prior == "model"
    e_told = procrustes_rmse(told.vertices.double().numpy(), v).mean()
    e_exact = procrustes_rmse(exact.vertices.double().numpy(), v).mean()
    assert e_told < 0.9 * e_exact, (e_told, e_exact)
    assert float(told.plausibility.median()) < float(exact.plausibility.median())


@pytest.mark.parametrize("bad, match", [
    (dict(noise_mm=-1.0), "noise_mm must be"), (dict(noise_mm=float("nan")), "noise_mm must be"),
    (dict(noise_mm="1"), "noise_mm must be"), (dict(noise_mm=True), "noise_mm must be"),
    (dict(noise_mm=1.0, reg=3.0), "not both"), (dict(noise_mm=1.0, prior="l2"), "not both"),
])  # fmt: skip
def test_bad_noise_mm(released, bad, match):
    _, lm = _posed(released, 1, seed=3)
    with pytest.raises(FittingError, match=match):
        fit_landmarks(released, lm[0], **bad)
