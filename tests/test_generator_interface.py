"""The generator interface (facemodel.networks): a deliberately different generator (two hidden
layers, no exact piecewise-linear fast path) runs every consumer: sample, fit_landmarks 3D and 2D
(Gauss-Newton and L-BFGS), encode, the evaluation's vertex-subset decode and the blendshape map."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from facemodel import fitting
from facemodel.model import FaceModel, FaceModelConfig
from facemodel.networks import Factor, Generator, GeneratorConfig, GeneratorInterface

EXPRESSIONS = ["neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise"]


def _model(template, hidden_layers: int, hidden: int = 96, seed: int = 0) -> FaceModel:
    torch.manual_seed(seed)
    cfg = FaceModelConfig(
        generator=GeneratorConfig(num_vertices=template.num_vertices, hidden=hidden, hidden_layers=hidden_layers,
                                  noise_dim=3,
                                  factors=(Factor(name="identity", code_dim=12, num_labels=3),
                                           Factor(name="expression", code_dim=6, num_labels=7))),  # fmt: skip
        label_names={"identity": ["a", "b", "c"], "expression": EXPRESSIONS},
    )
    g = torch.Generator().manual_seed(seed + 1)
    m = FaceModel(cfg, template.vertices, template.faces, template.uv, template.landmarks,
                  {"identity": torch.randn(3, 12, generator=g), "expression": torch.randn(7, 6, generator=g)})  # fmt: skip
    with torch.no_grad():  # codes move vertices by millimetres
        m.generator.fc2.weight.mul_(20)
    return m.eval()


@pytest.fixture(scope="module")
def deep(template):
    return _model(template, hidden_layers=2)


def _landmarks(model, vertices):
    lmk = model.landmark_set("ibug68")
    return (vertices[:, lmk.vertex_indices] * lmk.barycentrics[..., None]).sum(2)


def test_the_deep_generator_meets_the_interface(deep):
    g = deep.generator
    assert isinstance(g, GeneratorInterface) and isinstance(Generator(g.config), GeneratorInterface)
    assert g.affine_hidden() is None  # no exact fast path: fitting takes the general one
    assert "deep.0.weight" in g.state_dict()
    z = torch.randn(4, g.config.code_dim, generator=torch.Generator().manual_seed(0))
    h, J = g.hidden_jacobian(z)
    assert h.shape == (4, 96) and J.shape == (4, 96, g.config.code_dim)
    torch.testing.assert_close(h, g.hidden(z))
    want = torch.stack([torch.func.jacrev(lambda x: g.hidden(x[None])[0])(zi) for zi in z])
    torch.testing.assert_close(J, want, rtol=1e-5, atol=1e-6)
    ids = torch.tensor([5, 0, 900, 17])
    W, b = g.output_rows(ids)
    assert W.shape == (12, 96) and b.shape == (12,)
    with torch.no_grad():
        full = g(z)
        torch.testing.assert_close(g.decode_vertices(z, ids), full[:, ids], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close((h @ W.T + b).view(4, 4, 3), full[:, ids], rtol=1e-5, atol=1e-5)


def test_weights_stamp_follows_every_layer(deep):
    g = copy.deepcopy(deep.generator)
    before = g.weights_stamp()
    with torch.no_grad():
        g.deep[0].bias.add_(0.0)  # an in-place write, even a no-op, changes the stamp
    assert g.weights_stamp() != before
    assert len(g.fingerprint().split("|")) == 3  # output, deep, first layer


def test_config_round_trip_keeps_the_depth(deep, tmp_path):
    path = deep.save_pretrained(tmp_path / "deep")
    back = FaceModel.from_pretrained(path)
    assert back.config.generator.hidden_layers == 2
    z = torch.randn(2, deep.config.generator.code_dim)
    with torch.no_grad():
        torch.testing.assert_close(back(z), deep(z))
    # the paper's architecture keeps its config.json as it was (no hidden_layers key)
    paper = GeneratorConfig(num_vertices=10, factors=deep.config.generator.factors)
    assert "hidden_layers" not in paper.model_dump_json()


def test_sample(deep):
    a, b = deep.sample(3, seed=4), deep.sample(3, seed=4)
    assert a.vertices.shape == (3, deep.num_vertices, 3) and torch.isfinite(a.vertices).all()
    torch.testing.assert_close(a.vertices, b.vertices)
    smile = deep.sample(2, seed=5, expression="happiness")
    want = deep.label_codes("expression")[EXPRESSIONS.index("happiness")]
    assert torch.allclose(smile.codes[:, deep.code_slices["expression"]], want.expand(2, -1))


@pytest.mark.parametrize("solver", ["gauss-newton", "lbfgs"])
def test_fit_landmarks_3d_recovers_a_generated_face(deep, solver):
    face = deep.sample(2, seed=7)
    pts = _landmarks(deep, face.vertices)
    R = torch.tensor([[0.96, -0.28, 0.0], [0.28, 0.96, 0.0], [0.0, 0.0, 1.0]])
    p3 = 0.001 * pts @ R.T + torch.tensor([0.05, -0.03, 0.4])  # metres, rotated and moved
    fit = deep.fit_landmarks(p3, reg=0.0, solver=solver, max_iters=40)
    mean = deep.fit_landmarks(p3, reg=0.0, solver=solver, max_iters=1, init="mean")
    assert fit.codes.shape == (2, deep.config.generator.code_dim)
    assert (fit.rmse < 0.02 * mean.rmse).all(), (fit.rmse, mean.rmse)  # metres
    assert torch.allclose(fit.scale, torch.full((2,), 0.001), rtol=1e-2)
    assert torch.allclose(fit.landmarks, pts, atol=0.05)  # mm, model space
    assert all(p.grad is None for p in deep.generator.parameters())  # the fit left the weights alone


def test_fit_landmarks_2d(deep):
    face = deep.sample(2, seed=8)
    pts = _landmarks(deep, face.vertices)
    p2 = 2.0 * pts[..., :2] + 100.0
    # the points are the fixed iBUG vertices' projections: no sliding jaw contour, plain least squares
    kw = dict(reg=0.0, contour=False, loss="l2")
    fit = deep.fit_landmarks_2d(p2, max_iters=40, **kw)
    start = deep.fit_landmarks_2d(p2, max_iters=1, **kw)
    assert fit.translation.shape == (2, 2)
    assert (fit.rmse < 0.05 * start.rmse).all(), (fit.rmse, start.rmse)
    assert (fit.rmse < 0.05).all()  # image units (2 per mm)


def test_general_gauss_newton_matches_the_fast_path_on_the_paper_generator(template):
    """The general path, forced onto a one-hidden-layer generator, reaches the fast path's fit."""
    one = _model(template, hidden_layers=1, seed=3)
    pts = _landmarks(one, one.sample(2, seed=9).vertices)
    fast = one.fit_landmarks(pts, reg=0.01, max_iters=30)
    lmk = fitting._landmarks(one, "ibug68")
    head = fitting._GeneralHead(one, lmk, np.float32)
    P, w = pts.numpy(), np.ones(pts.shape[:2], np.float32)
    pm = fitting._Pose3D("similarity")
    z0 = fitting._linear_init(head, pm, P, w)
    out = fitting._solve_gn(head, pm, P, w, z0, 0.01, 30, 1e-6, {"damping": 1e-9})
    assert isinstance(fitting._head(one, lmk, np.float32), fitting._LReLUHead)
    np.testing.assert_allclose(out["E"], fast.objective.numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(out["z"], fast.codes.numpy(), atol=2e-2)


def test_encode(deep):
    face = deep.sample(1, seed=10)
    enc = deep.encode(face.vertices, max_iters=30)
    err = (enc.vertices - face.vertices).norm(dim=-1).mean()
    with torch.no_grad():
        base = (deep(torch.zeros(1, deep.config.generator.code_dim)) - face.vertices).norm(dim=-1).mean()
    assert float(err) < 0.02 * float(base), (float(err), float(base))


def test_evaluation_decode_of_a_vertex_subset(deep):
    from facemodel.evaluation.protocol import FaceModelAdapter

    shape = FaceModelAdapter(deep)
    codes = shape.split_codes(torch.randn(2, deep.config.generator.code_dim))
    ids = torch.tensor([3, 300, 3000])
    with torch.no_grad():
        torch.testing.assert_close(shape.decode(codes, vertices=ids), shape.decode(codes)[:, ids], rtol=1e-5, atol=1e-4)


def test_blendshape_map_on_the_deep_generator(deep, small_dataset):
    from facemodel.training.blendshape_map import EncodedMeshes, learn_blendshape_map

    model = copy.deepcopy(deep)
    g = torch.Generator().manual_seed(3)
    A, b = torch.randn(6, 53, generator=g), 0.3 * torch.randn(6, generator=g)

    def synthetic(n, seed):
        gg = torch.Generator().manual_seed(seed)
        w = torch.rand(n, 53, generator=gg) * (torch.rand(n, 53, generator=gg) < 0.2)
        z = torch.randn(n, model.config.generator.code_dim, generator=gg)
        z[:, model.code_slices["expression"]] = w @ A.T + b
        with torch.no_grad():
            v = model(z)
        return EncodedMeshes(np.arange(n), v, w, z, np.zeros(n, int), 0.0)

    learn_blendshape_map(model, small_dataset, data=(synthetic(128, 0), synthetic(48, 1)), encoded_meshes=0,
                         kind="linear", epochs=3, num_vertices=500, inverse_steps=50, progress=False)  # fmt: skip
    m = model.config.expression_map.metrics
    assert m["to_code"]["linear"]["val_rmse_mm"] < 0.5 * m["val_mean_code_rmse_mm"], m["to_code"]
    driven = model.sample(expression={"jawOpen": np.array([0.0, 1.0])}, seed=2)
    assert driven.vertices.shape == (2, model.num_vertices, 3)
    assert not torch.allclose(driven.vertices[0], driven.vertices[1])


def test_default_prior_fits_run_on_a_deeper_generator(deep):
    """The fits' default model prior (whitened codes) works through the interface too."""
    pts = _landmarks(deep, deep.sample(2, seed=9).vertices)
    mean = _landmarks(deep, deep.decode(torch.zeros(1, deep.generator.config.code_dim)).vertices)
    base = (pts - mean).norm(dim=-1).pow(2).mean(-1).sqrt()  # mean face, same frame (mm)
    for fit in (deep.fit_landmarks(pts), deep.fit_landmarks(pts, solver="lbfgs")):
        assert fit.prior == "model" and torch.isfinite(fit.plausibility).all()
        assert (fit.rmse < 0.5 * base).all(), (fit.rmse, base)
    fit2 = deep.fit_landmarks_2d(2.0 * pts[..., :2] + 100.0)
    assert torch.isfinite(fit2.codes).all() and (fit2.rmse < 2.0 * base).all()
