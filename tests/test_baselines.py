"""Baseline face models (linear, multilinear, COMA-like autoencoder) on the small ICT 4D set."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from facemodel.data.dataset import FaceDataset
from facemodel.errors import FaceModelError, OutputPathError
from facemodel.evaluation.baselines import AutoencoderModel, LinearModel, MultilinearModel, load_baseline
from facemodel.evaluation.baselines._common import find_neutrals, pca, subset_rows
from facemodel.evaluation.baselines.autoencoder import ChebConv, SparseOp, _to_torch, mesh_hierarchy
from facemodel.evaluation.metrics import mean_vertex_distance
from facemodel.evaluation.protocol import Codes, EvaluationError, ShapeModel


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args, **kwargs)


@pytest.fixture(scope="module")
def train(small_dataset):
    return FaceDataset(small_dataset, split="train")


@pytest.fixture(scope="module")
def train_meshes(train):
    """(M, V, 3) all training meshes and (M, V, 3) the neutral of each one's identity."""
    nf = find_neutrals(train)
    return torch.from_numpy(train.vertices()), torch.from_numpy(train.vertices(nf.rows[nf.index]))


@pytest.fixture(scope="module")
def lin(small_dataset):
    return LinearModel.fit(small_dataset, identity_dim=5, expression_dim=12)


@pytest.fixture(scope="module")
def mul(small_dataset):
    return MultilinearModel.fit(small_dataset, identity_dim=4, expression_dim=8, vertex_rank=80)


@pytest.fixture(scope="module")
def ae(small_dataset):
    return AutoencoderModel.fit(small_dataset, identity_dim=5, expression_dim=6, max_meshes=120, steps=150,
                                batch_size=8, lr=3e-3, filters=(8, 8), factors=(4, 4), K=3)  # fmt: skip


@pytest.fixture(params=["lin", "mul", "ae"])
def model(request) -> ShapeModel:
    return request.getfixturevalue(request.param)


def _mvd(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(mean_vertex_distance(a, b).mean())


# ---- shared helpers ------------------------------------------------------------------------
def test_neutrals_are_the_least_activated_mesh_of_each_identity(train):
    nf = find_neutrals(train)
    w = np.abs(train.meta("blendshapes")).sum(1)
    ids = train.meta("identity")
    assert list(nf.identities) == sorted(set(ids.tolist()))
    for k, i in enumerate(nf.identities):
        assert ids[nf.rows[k]] == i and w[nf.rows[k]] == w[ids == i].min()
    assert 0 < nf.num_exact <= len(nf.identities)
    assert (nf.identities[nf.index] == ids).all()


def test_streamed_randomized_pca_matches_exact():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 90)) * np.linspace(3, 1, 90) + 5.0
    X += 1e-3 * rng.standard_normal(X.shape)

    def chunks():
        for s in range(0, 400, 64):
            yield np.arange(s, min(s + 64, 400)), X[s : s + 64]

    exact = pca(chunks, 400, 90, 4, scores=True)
    approx = pca(chunks, 400, 90, 4, exact_below=0, scores=True)
    np.testing.assert_allclose(approx.mean, exact.mean, atol=1e-5)
    np.testing.assert_allclose(approx.std, exact.std, rtol=1e-4)
    np.testing.assert_allclose(np.abs(approx.components @ exact.components.T), np.eye(4), atol=1e-4)
    np.testing.assert_allclose(np.abs(approx.scores), np.abs(exact.scores), atol=1e-3)
    np.testing.assert_allclose(exact.scores.std(0, ddof=1), exact.std, rtol=1e-6)
    assert exact.rank == approx.rank == 90


# ---- interface, shared by every baseline ---------------------------------------------------
def test_models_are_shape_models_with_the_interface(model, train):
    assert isinstance(model, ShapeModel) and model.noise_dim == 0
    assert model.num_vertices == train.manifest.num_vertices
    assert model.faces.dtype == np.int64 and model.faces.shape == train.template.faces.shape
    np.testing.assert_array_equal(model.faces, train.template.faces)
    meshes = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert meshes.shape == (3, model.num_vertices, 3) and meshes.dtype == torch.float32
    assert torch.isfinite(meshes).all()


def test_decode_subset_equals_rows_of_full_decode(model):
    codes = model.sample_codes(4, generator=torch.Generator().manual_seed(1))
    idx = torch.tensor([5, 0, 9408, 77, 5])
    full = model.decode(codes)
    np.testing.assert_allclose(model.decode(codes, vertices=idx).numpy(), full[:, idx].numpy(), atol=1e-4)


def test_gradients_flow_to_both_codes(model):
    codes = model.sample_codes(2, generator=torch.Generator().manual_seed(2))
    idx = torch.arange(0, 9409, 7)
    R = torch.randn(2, len(idx), 3, generator=torch.Generator().manual_seed(3))
    zi = codes.identity.clone().requires_grad_(True)
    ze = codes.expression.clone().requires_grad_(True)
    (model.decode(Codes(zi, ze, codes.noise), vertices=idx) * R).sum().backward()
    assert zi.grad is not None and ze.grad is not None
    assert float(ze.grad.abs().sum()) > 0 and float(zi.grad.abs().sum()) > 0
    # the gradients are the right ones: central finite differences along random directions
    for which in ("identity", "expression"):
        d = torch.randn_like(getattr(codes, which))
        grad = zi.grad if which == "identity" else ze.grad

        def shifted(t: float) -> torch.Tensor:
            c = Codes(codes.identity.clone(), codes.expression.clone(), codes.noise)
            setattr(c, which, getattr(c, which) + t * d)
            return model.decode(c, vertices=idx)

        with torch.no_grad():
            fd = float(((shifted(1e-2) - shifted(-1e-2)) * R).sum() / 2e-2)
        assert fd == pytest.approx(float((grad * d).sum()), rel=2e-2, abs=1e-3)


def test_codes_of_wrong_shape_are_rejected(model):
    good = model.sample_codes(2)
    bad = [
        Codes(good.identity[:, :-1], good.expression, good.noise),
        Codes(good.identity, torch.zeros(2, model.expression_dim + 1), good.noise),
        Codes(good.identity, good.expression[:1], good.noise),
        Codes(good.identity, good.expression, torch.zeros(2, 3)),
    ]
    for codes in bad:
        with pytest.raises(EvaluationError, match="codes must have shape"):
            model.decode(codes)
    with pytest.raises(EvaluationError):
        model.decode(torch.zeros(2, model.identity_dim + model.expression_dim))
    with pytest.raises(EvaluationError, match="vertices"):
        model.decode(good, vertices=torch.tensor([model.num_vertices]))


def test_save_load_round_trip_is_identical(model, tmp_path):
    path = model.save(tmp_path / "m")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["kind"] == model.kind and cfg["identity_dim"] == model.identity_dim
    for loaded in (type(model).load(path), load_baseline(path)):
        assert type(loaded) is type(model)
        sizes = (loaded.identity_dim, loaded.expression_dim, loaded.name)
        assert sizes == (model.identity_dim, model.expression_dim, model.name)
        codes = model.sample_codes(3, generator=torch.Generator().manual_seed(3))
        assert torch.equal(loaded.decode(codes), model.decode(codes))
        np.testing.assert_array_equal(loaded.faces, model.faces)
    with pytest.raises(OutputPathError):
        model.save(path)  # exists
    model.save(path, overwrite=True)
    other = LinearModel if not isinstance(model, LinearModel) else MultilinearModel
    with pytest.raises(EvaluationError, match="load_baseline"):
        other.load(path)


def test_missing_or_corrupt_files_raise_evaluation_error(tmp_path, lin):
    with pytest.raises(EvaluationError, match="not a saved baseline"):
        LinearModel.load(tmp_path / "nothing")
    with pytest.raises(EvaluationError, match="not a saved baseline"):
        load_baseline(tmp_path / "nothing")
    path = lin.save(tmp_path / "lin")
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(EvaluationError, match="safetensors"):
        LinearModel.load(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(EvaluationError, match="JSON"):
        load_baseline(path)
    path = lin.save(tmp_path / "lin2")
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "kind": "quadratic"}))
    with pytest.raises(EvaluationError, match="unknown baseline kind"):
        load_baseline(path)
    (path / "config.json").write_text(json.dumps({**cfg, "identity_dim": 3}))
    with pytest.raises(EvaluationError, match="config.json"):
        LinearModel.load(path)
    assert issubclass(EvaluationError, FaceModelError)


@pytest.mark.parametrize("cls", [LinearModel, MultilinearModel, AutoencoderModel])
def test_fit_on_a_missing_folder_raises(cls, tmp_path):
    with pytest.raises(EvaluationError, match="cannot open the training data"):
        cls.fit(tmp_path / "no-such-dataset")


# ---- linear --------------------------------------------------------------------------------
def test_linear_full_rank_reproduces_its_training_meshes(small_dataset, train):
    nf = find_neutrals(train)
    rows = subset_rows(len(train), 40, 0, nf.rows)
    with pytest.warns(UserWarning, match="expression_dim=60 exceeds"):
        m = LinearModel.fit(small_dataset, identity_dim=7, expression_dim=60, max_meshes=40)
    with pytest.warns(UserWarning, match="identity_dim=8 exceeds"):
        LinearModel.fit(small_dataset, identity_dim=8, expression_dim=2, max_meshes=40)
    assert m.identity_dim == 7 and 30 <= m.expression_dim <= 39  # 8 identities; 40 meshes - 1
    X = torch.from_numpy(train.vertices(rows))
    N = torch.from_numpy(train.vertices(nf.rows[nf.index[rows]]))
    assert _mvd(m.decode(m.project(X)), X) < 2e-3  # float32 round-off only
    codes = m.project(X, neutrals=N)
    assert _mvd(m.decode(codes), X) < 2e-3
    # codes are normalised: unit variance over identities and over meshes
    _, first = np.unique(nf.index[rows], return_index=True)
    np.testing.assert_allclose(codes.identity[first].std(0).numpy(), 1.0, rtol=1e-3)
    np.testing.assert_allclose(codes.expression.mean(0).numpy(), 0.0, atol=1e-3)
    np.testing.assert_allclose(codes.expression.std(0).numpy(), 1.0, rtol=1e-3)


def test_linear_error_decreases_as_dims_grow(small_dataset, train_meshes):
    X = train_meshes[0][::4]
    errors = []
    for di, de in [(1, 1), (3, 4), (7, 12)]:
        m = LinearModel.fit(small_dataset, identity_dim=di, expression_dim=de)
        errors.append(_mvd(m.decode(m.project(X)), X))
    assert errors[0] > errors[1] > errors[2]
    assert errors[0] > 1.0 and errors[2] < 0.3  # mm


def test_linear_prior_matches_its_training_codes(lin, train_meshes):
    X, N = train_meshes
    codes = lin.project(X, neutrals=N)
    np.testing.assert_allclose(codes.expression.std(0).numpy(), 1.0, rtol=1e-3)
    np.testing.assert_allclose(codes.expression.mean(0).numpy(), 0.0, atol=1e-3)
    assert lin.info["train_identities"] == 8 and lin.info["train_meshes"] == len(X)


def test_linear_landmark_fit_is_exact(lin, train):
    lm = torch.as_tensor(train.template.landmarks)
    codes = lin.sample_codes(5, generator=torch.Generator().manual_seed(4))
    points = lin.decode(codes, vertices=lm)
    fit = lin.fit_landmarks_fast(points, lm, reg=0.0)
    np.testing.assert_allclose(fit.identity.numpy(), codes.identity.numpy(), atol=2e-3)
    np.testing.assert_allclose(fit.expression.numpy(), codes.expression.numpy(), atol=2e-3)
    # with a regulariser: the gradient of Eq. 13 vanishes at the returned codes
    reg = 3.0
    fit = lin.fit_landmarks_fast(points + 2.0, lm, reg=reg)
    z = torch.cat([fit.identity, fit.expression], 1).requires_grad_(True)
    split = Codes(z[:, : lin.identity_dim], z[:, lin.identity_dim :], torch.zeros(5, 0))
    loss = (lin.decode(split, vertices=lm) - points - 2.0).square().sum() + reg * z.square().sum()
    (g,) = torch.autograd.grad(loss, z)
    assert float(g.abs().max()) < 1e-2 * float(z.detach().abs().max())
    with pytest.raises(EvaluationError, match="points"):
        lin.fit_landmarks_fast(points[:, :3], lm, reg=0.0)


# ---- multilinear ---------------------------------------------------------------------------
def test_multilinear_als_improves_on_its_linear_initialisation(mul, lin, small_dataset, train_meshes):
    hist = mul.info["als_loss_history"]
    assert all(b <= a * (1 + 1e-9) for a, b in zip(hist, hist[1:]))
    assert hist[-1] < 0.7 * hist[0]
    # same sizes: the multilinear model reconstructs the training meshes better than the linear one
    lin_same = LinearModel.fit(small_dataset, identity_dim=mul.identity_dim, expression_dim=mul.expression_dim)
    X = train_meshes[0][::3]
    e_mul = _mvd(mul.decode(mul.project(X)), X)
    e_lin = _mvd(lin_same.decode(lin_same.project(X)), X)
    assert e_mul < 0.9 * e_lin
    assert e_mul < 1.0  # mm


def test_multilinear_codes_are_normalised(mul, train):
    w = train.meta("blendshapes")
    z = mul.expression_codes(w).double()
    np.testing.assert_allclose(z.mean(0).numpy(), 0.0, atol=1e-4)
    np.testing.assert_allclose(torch.cov(z.T).numpy(), np.eye(mul.expression_dim), atol=1e-3)
    # projected training meshes have codes of about unit spread
    X = torch.from_numpy(train.vertices(np.arange(0, len(train), 5)))
    codes = mul.project(X)
    assert 0.5 < float(codes.expression.std(0).mean()) < 1.5
    assert 0.5 < float(codes.identity.std(0).mean()) < 1.5
    with pytest.raises(EvaluationError, match="blendshape weights"):
        mul.expression_codes(w[:, :10])


def test_multilinear_components_are_decorrelated_and_ordered(mul):
    """HOSVD-like: with codes ~ N(0, I), E||d mesh / d z_k||^2 is diagonal and decreasing."""
    G = mul.core.double()  # (r, Di+1, De+1); the vertex basis is orthonormal
    for S in (torch.einsum("rab,rcb->ac", G[:, 1:], G[:, 1:]), torch.einsum("rab,rac->bc", G[:, :, 1:], G[:, :, 1:])):
        d = S.diagonal()
        assert (d[:-1] >= d[1:] * (1 - 1e-5)).all() and (d > 0).all()
        off = S - torch.diag(d)
        assert float(off.abs().max()) < 1e-4 * float(d.max())
    basis = mul.basis.double().reshape(mul.vertex_rank, -1)
    np.testing.assert_allclose((basis @ basis.T).numpy(), np.eye(mul.vertex_rank), atol=1e-5)


def test_multilinear_tied_codes_reconstruct_the_training_meshes(mul, train):
    """Decoding (identity code, expression code of the mesh's blendshape weights)."""
    rows = np.arange(0, len(train), 7)
    X = torch.from_numpy(train.vertices(rows))
    ze = mul.expression_codes(train.meta("blendshapes")[rows])
    zi = mul.project(X).identity
    # identity code from the free ALS projection, expression code from the mesh's weights
    recon = mul.decode(Codes(zi, ze, torch.zeros(len(rows), 0)))
    assert _mvd(recon, X) < 1.5 * mul.info["train_rms_mm"]
    assert mul.info["train_rms_mm"] < mul.info["train_rms_mm_initial"]


def test_multilinear_landmark_fit_recovers_samples(mul, train):
    lm = torch.as_tensor(train.template.landmarks)
    codes = mul.sample_codes(32, generator=torch.Generator().manual_seed(5))
    points = mul.decode(codes, vertices=lm)
    fit = mul.fit_landmarks_fast(points, lm, reg=0.0)
    err = mean_vertex_distance(mul.decode(fit, vertices=lm), points)
    # bilinear least squares has local minima: multi-start LM finds the exact fit almost always
    assert int((err < 1e-2).sum()) >= 29, err
    ok = err < 1e-2
    assert float(mean_vertex_distance(mul.decode(fit[ok]), mul.decode(codes[ok])).max()) < 0.05
    # regularised: never worse than zero codes under the Eq. 13 objective, as good as the truth
    reg = 5.0

    def objective(c: Codes) -> torch.Tensor:
        data = (mul.decode(c, vertices=lm) - points).square().sum((1, 2))
        return data + reg * (c.identity.square().sum(1) + c.expression.square().sum(1))

    fit = mul.fit_landmarks_fast(points, lm, reg=reg)
    zero = Codes(torch.zeros_like(codes.identity), torch.zeros_like(codes.expression), codes.noise)
    assert (objective(fit) <= objective(zero) + 1e-3).all()
    assert int((objective(fit) <= objective(codes) + 1e-2).sum()) >= 29
    assert float(torch.cat([fit.identity, fit.expression], 1).norm(dim=1).mean()) < float(
        torch.cat([codes.identity, codes.expression], 1).norm(dim=1).mean())
    with pytest.raises(EvaluationError, match="reg"):
        mul.fit_landmarks_fast(points, lm, reg=-1.0)


def test_multilinear_needs_blendshape_weights(small_dataset, tmp_path):
    import shutil

    copy = tmp_path / "noblend"
    shutil.copytree(small_dataset, copy)
    with np.load(copy / "meshes.npz") as z:
        meta = {k: z[k] for k in z.files if k != "blendshapes"}
    np.savez(copy / "meshes.npz", **meta)
    with pytest.raises(EvaluationError, match="blendshape weights"):
        MultilinearModel.fit(copy)


# ---- autoencoder ---------------------------------------------------------------------------
def test_mesh_hierarchy_matrices(train):
    tpl = train.template
    h = mesh_hierarchy(tpl.vertices, tpl.faces, (4, 4))
    assert h.sizes == [9409, 2353, 589]
    for lvl in range(2):
        down, up = h.down[lvl], h.up[lvl]
        assert down.shape == (h.sizes[lvl + 1], h.sizes[lvl]) and up.shape == (h.sizes[lvl], h.sizes[lvl + 1])
        np.testing.assert_allclose(np.asarray(down.sum(1)).ravel(), 1.0, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(up.sum(1)).ravel(), 1.0, rtol=1e-5)
    # a smooth field survives down- and up-sampling; the lips stay apart (geodesic cells)
    x = tpl.vertices.astype(np.float64)
    f = np.sin(x[:, 0] / 40.0) + x[:, 1] / 60.0
    back = h.up[0] @ (h.down[0] @ f)
    assert np.abs(back - f).mean() < 0.05 * np.abs(f).mean()
    L = h.laplacians[1].toarray()
    np.testing.assert_allclose(L, L.T, atol=1e-6)
    assert np.linalg.eigvalsh(L).min() > -1.0 - 1e-4 and np.linalg.eigvalsh(L).max() < 1.0 + 1e-4


@pytest.mark.parametrize("cin,cout", [(3, 8), (8, 8), (8, 3)])
def test_cheb_conv_matches_dense_chebyshev_and_its_gradient(cin, cout):
    rng = np.random.default_rng(0)
    n = 30
    A = (rng.random((n, n)) < 0.15).astype(np.float64)
    A = np.triu(A, 1)
    A = A + A.T
    deg = A.sum(1) + 1e-9
    Lt = -(A / np.sqrt(deg)[:, None] / np.sqrt(deg)[None])
    import scipy.sparse as sp

    op = SparseOp(_to_torch(sp.csr_matrix(Lt)))
    torch.manual_seed(0)
    conv = ChebConv(cin, cout, 4)
    x = torch.randn(n, 2, cin, requires_grad=True)
    Ld = torch.from_numpy(Lt).float()
    T = [x, torch.einsum("ij,jbc->ibc", Ld, x)]
    for _ in range(2):
        T.append(2 * torch.einsum("ij,jbc->ibc", Ld, T[-1]) - T[-2])
    W = conv.weight.view(4, cin, cout)
    ref = sum(T[k] @ W[k] for k in range(4)) + conv.bias
    out = conv(x, op)
    np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), atol=1e-5)
    g = torch.randn_like(out)
    (gx,) = torch.autograd.grad((out * g).sum(), x)
    (gref,) = torch.autograd.grad((ref * g).sum(), x)
    np.testing.assert_allclose(gx.numpy(), gref.numpy(), atol=1e-5)


def test_autoencoder_reconstructs_its_training_displacements(ae, train, small_dataset):
    nf = find_neutrals(train)
    rows = subset_rows(len(train), 120, 0, nf.rows)
    X = torch.from_numpy(train.vertices(rows))
    N = torch.from_numpy(train.vertices(nf.rows[nf.index[rows]]))
    codes = ae.project(X, neutrals=N)
    # whitened latents: the training codes have zero mean and identity covariance
    np.testing.assert_allclose(codes.expression.double().mean(0).numpy(), 0.0, atol=1e-3)
    np.testing.assert_allclose(torch.cov(codes.expression.double().T).numpy(), np.eye(ae.expression_dim), atol=1e-3)
    # expression part: the decoded displacements beat the best constant (mean) displacement
    D = X - N
    err = _mvd(ae.expression_displacements(codes.expression), D)
    base = _mvd(ae.disp_mean.expand_as(D), D)
    assert err < 0.75 * base, (err, base)
    # whole meshes: identity PCA (5 of 7 dims) + decoded displacement
    full = _mvd(ae.decode(codes), X)
    ident_only = _mvd(ae.decode(Codes(codes.identity, torch.zeros_like(codes.expression), codes.noise)), X)
    assert full < ident_only
    # without neutrals: alternating identity fit + encoder, no worse than the identity part alone
    sub = slice(0, 40)
    ident_part = ae.decode(Codes(codes.identity[sub], torch.zeros(40, ae.expression_dim), codes.noise[sub]))
    assert _mvd(ae.decode(ae.project(X[sub])), X[sub]) < _mvd(ident_part, X[sub])
    assert ae.fit_landmarks_fast(X[:2, :5], torch.arange(5), reg=0.0) is None
    assert ae.info["steps"] == 150 and ae.info["train_meshes"] == 120


def test_dims_are_clipped_with_a_warning_or_rejected(small_dataset):
    with pytest.warns(UserWarning, match="identity_dim=65 exceeds"):
        m = LinearModel.fit(small_dataset, identity_dim=65, expression_dim=3, max_meshes=50)
    assert m.identity_dim == 7
    with pytest.raises(EvaluationError, match="at least 1"):
        LinearModel.fit(small_dataset, identity_dim=0, expression_dim=3)
    with pytest.raises(EvaluationError, match="at least 1"):
        _quiet(MultilinearModel.fit, small_dataset, identity_dim=3, expression_dim=0, vertex_rank=20)
    with pytest.raises(EvaluationError, match="max_meshes"):
        LinearModel.fit(small_dataset, identity_dim=3, expression_dim=3, max_meshes=4)
