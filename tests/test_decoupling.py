"""Tests of the decoupling metric: normal renders, embedding nets, thresholds, the protocol.

One set of quick nets is trained per session (about a minute on one core) on ICT renders:
identities drawn from the dataset prior N(0, I), expressions from ``small_dataset``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facemodel.evaluation import embedding as emb_mod
from facemodel.evaluation.decoupling import decoupling_scores, factor_decoupling
from facemodel.evaluation.embedding import (
    DecouplingNets,
    DecouplingNetsConfig,
    ResNet18,
    batch_hard_triplet_loss,
    choose_threshold,
    diverse_expressions,
    expression_distance_mm,
    expression_features,
    expressions_differ,
    load_or_train_decoupling_nets,
    train_decoupling_nets,
    train_embedding,
)
from facemodel.evaluation.normal_render import NormalRenderer
from facemodel.evaluation.protocol import Codes, EvaluationError, ICTGroundTruth, ShapeModel
from facemodel.geometry.raster import rasterize
from facemodel.geometry.render import vertex_normals


# ---------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def generator(ict):
    from facemodel.data.builder import ICTFaceGenerator

    return ICTFaceGenerator(ict)


@pytest.fixture(scope="session")
def split_blendshapes(small_dataset):
    with np.load(small_dataset / "meshes.npz") as z:
        b, s = z["blendshapes"], z["split"]
    return {name: b[s == k] for k, name in enumerate(("train", "val", "test"))}


@pytest.fixture(scope="session")
def quick_nets(generator, split_blendshapes):
    rng = np.random.default_rng(123)
    identities = {"train": rng.standard_normal((24, 100)), "val": rng.standard_normal((8, 100))}
    return train_decoupling_nets(generator, identities, split_blendshapes, DecouplingNetsConfig.quick(),
                                 meta={"dataset_checksum": "test"})  # fmt: skip


@pytest.fixture(scope="session")
def unseen_expressions(split_blendshapes):
    """Expressions of the val and test meshes (never training classes)."""
    return np.concatenate([split_blendshapes["val"], split_blendshapes["test"]])


@pytest.fixture(scope="session")
def ground_truth(generator, unseen_expressions):
    """The ICT generator on unseen identities, with the dataset's expression distribution."""
    ids = np.random.default_rng(456).standard_normal((24, 100))
    return ICTGroundTruth(generator, ids, unseen_expressions)


@pytest.fixture(scope="session")
def ground_truth_diverse(generator, unseen_expressions, ict):
    """The same with 30 visibly different expressions (farthest-point sample): two random
    ones are then different expressions, so a model ignoring its code can be detected."""
    ids = np.random.default_rng(456).standard_normal((24, 100))
    idx, _ = diverse_expressions(unseen_expressions, ict, 30, rng=np.random.default_rng(0))
    return ICTGroundTruth(generator, ids, unseen_expressions[idx])


class IgnoresCode(ShapeModel):
    """Wraps a model but replaces one factor's code by a random prior code at every decode."""

    def __init__(self, base: ShapeModel, factor: str, seed: int = 0) -> None:
        self.base, self.factor = base, factor
        self.name = f"ignores {factor}"
        self.identity_dim, self.expression_dim, self.noise_dim = base.identity_dim, base.expression_dim, base.noise_dim
        self.faces, self.num_vertices = base.faces, base.num_vertices
        self._rng = torch.Generator().manual_seed(seed)

    def sample_codes(self, n, *, generator=None):
        return self.base.sample_codes(n, generator=generator)

    def decode(self, codes, *, vertices=None):
        r = self.base.sample_codes(len(codes), generator=self._rng)
        if self.factor == "identity":
            codes = Codes(r.identity, codes.expression, codes.noise)
        else:
            codes = Codes(codes.identity, r.expression, codes.noise)
        return self.base.decode(codes, vertices=vertices)


# ---------------------------------------------------------------------------------------
# renderer
# ---------------------------------------------------------------------------------------
def _reference_render(renderer: NormalRenderer, v: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """The same image with the NumPy rasterizer and vertex normals of facemodel.geometry."""
    S = renderer.size
    p = renderer.project(torch.as_tensor(v, dtype=torch.float64)).numpy()
    tid, bary = rasterize(p, faces, S, S, depth=-v[:, 2].astype(np.float64))
    n = vertex_normals(v, faces)
    nn = (bary[..., None] * n[faces[np.maximum(tid, 0)]]).sum(2)
    nn /= np.linalg.norm(nn, axis=-1, keepdims=True) + 1e-12
    return np.where(tid[..., None] >= 0, (nn + 1) / 2, 0.0).transpose(2, 0, 1)


def test_renderer_shape_range_and_normals_face_the_camera(template, generator):
    r = NormalRenderer.from_template(template, size=48)
    w = np.random.default_rng(0).standard_normal(100)
    e = np.zeros((2, 53), np.float32)
    e[1, 26] = 1.0  # jawOpen-like large blendshape
    meshes = np.concatenate([template.vertices[None], generator.meshes(w, e)])
    img = r(torch.from_numpy(meshes))
    assert img.shape == (3, 3, 48, 48) and img.dtype == torch.float32
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    fg = img.sum(1) > 0  # (B, S, S) foreground
    assert 0.3 < float(fg.float().mean()) < 0.95  # a face in a fixed frame, background around it
    assert float(img[:, :, 0, 0].abs().max()) == 0.0 and float(img[:, :, -1, -1].abs().max()) == 0.0
    nz = img[:, 2] * 2 - 1  # z component of the normal
    assert float((nz[fg] > 0).float().mean()) > 0.9  # frontal view: normals point at the camera
    for b in range(3):  # exactly what the reference NumPy rasterizer draws
        ref = _reference_render(r, meshes[b], template.faces)
        assert np.abs(ref - img[b].numpy()).max() < 1e-4


def test_renderer_fixed_frame_shows_size_and_validates_input(template):
    r = NormalRenderer.from_template(template, size=32)
    v = torch.as_tensor(template.vertices)
    c = v.mean(0)
    big = c + (v - c) * 1.15
    a, b = r(torch.stack([v, big]))
    assert (b.sum(0) > 0).sum() > (a.sum(0) > 0).sum() * 1.1  # not normalised per mesh
    assert r(v).shape == (1, 3, 32, 32)
    with pytest.raises(EvaluationError, match="vertices"):
        r(v[:100][None])
    bad = v.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(EvaluationError, match="NaN"):
        r(bad[None])
    with pytest.raises(EvaluationError, match="size"):
        NormalRenderer.from_template(template, size=4)


# ---------------------------------------------------------------------------------------
# loss, threshold, expression distance
# ---------------------------------------------------------------------------------------
def test_triplet_loss_values():
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    y = torch.tensor([0, 0, 1, 1])
    # hardest positive sqrt(2), hardest negative sqrt(2) for every anchor -> loss = margin
    assert float(batch_hard_triplet_loss(e, y, 0.2)) == pytest.approx(0.2, abs=1e-4)
    tight = torch.nn.functional.normalize(torch.tensor([[1.0, 0.01], [1.0, -0.01], [-1.0, 0.01], [-1.0, -0.01]]), dim=1)
    assert float(batch_hard_triplet_loss(tight, y, 0.2)) == pytest.approx(0.0, abs=1e-6)
    assert float(batch_hard_triplet_loss(tight, y, 0.2, mining="all")) == pytest.approx(0.0, abs=1e-6)
    assert float(batch_hard_triplet_loss(e, y, 0.2, mining="all")) > 0
    # a forbidden negative pair is not used
    ok = torch.zeros(4, 4, dtype=torch.bool)
    with pytest.raises(EvaluationError):
        batch_hard_triplet_loss(e, y, 0.2, negative_ok=ok)
    with pytest.raises(EvaluationError, match="mining"):
        batch_hard_triplet_loss(e, y, 0.2, mining="semi")


def test_choose_threshold_best_accuracy_under_far():
    rng = np.random.default_rng(0)
    pos = rng.uniform(0.0, 0.5, 2000)
    neg = rng.uniform(0.4, 1.0, 2000)
    r = choose_threshold(pos, neg)
    assert r["far"] < 0.10 and 0.4 <= r["threshold"] <= 0.5
    assert r["accuracy"] == pytest.approx((np.mean(pos < r["threshold"]) + np.mean(neg >= r["threshold"])) / 2)
    assert r["accuracy"] > 0.9 and r["far"] == pytest.approx(np.mean(neg < r["threshold"]))
    strict = choose_threshold(pos, neg, max_far=0.01)
    assert strict["far"] < 0.01 and strict["threshold"] <= r["threshold"]
    # negatives closer than positives: only "accept nothing" keeps FAR < 10%
    worst = choose_threshold(np.full(10, 1.0), np.full(10, 0.5))
    assert worst["far"] == 0 and worst["tar"] == 0 and worst["accuracy"] == 0.5
    with pytest.raises(EvaluationError):
        choose_threshold([], [0.1])


def test_expression_distance_and_diverse_pool(ict, split_blendshapes):
    w = split_blendshapes["train"]
    with pytest.raises(EvaluationError):
        diverse_expressions(w[:5], ict, 10)
    zero = np.zeros(53, np.float32)
    d = expression_distance_mm(w[:50], zero[None], ict)
    assert d.shape == (50,) and (d >= 0).all()
    assert float(expression_distance_mm(w[0], w[0], ict)) == 0.0
    idx, sep = diverse_expressions(w, ict, 20, rng=np.random.default_rng(0))
    assert len(set(idx.tolist())) == 20 and sep > 2.0
    f = expression_features(w[idx], ict)
    differ = expressions_differ(f[:, None], f[None])
    assert not differ.diagonal().any() and differ.mean() > 0.8
    # the same expression at 70% intensity is not a different expression
    big = idx[np.argmax(expression_distance_mm(w[idx], zero[None], ict))]
    f2 = expression_features(np.stack([w[big], 0.7 * w[big]]), ict)
    assert not expressions_differ(f2[0], f2[1])


def test_triplet_training_reduces_loss():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(6, 3, 32, 32, generator=g)  # 6 classes = 6 base patterns + noise
    labels = np.repeat(np.arange(6), 8)
    imgs = (base[labels] * 0.7 + 0.3 * torch.rand(48, 3, 32, 32, generator=g)) * 255
    cfg = DecouplingNetsConfig(width=8, steps=40, classes_per_batch=6, samples_per_class=4, lr=3e-3)
    net, losses = train_embedding(imgs.to(torch.uint8), labels, cfg)
    assert isinstance(net, ResNet18) and not net.training
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])


# ---------------------------------------------------------------------------------------
# trained quick nets
# ---------------------------------------------------------------------------------------
def test_quick_nets_thresholds_respect_far(quick_nets):
    s = quick_nets.summary()
    for factor in ("identity", "expression"):
        m = quick_nets[factor].metrics
        assert s[factor]["far"] < 0.10  # the paper's rule: best accuracy with FAR < 10%
        assert m["positives"] == m["negatives"] > 50  # balanced validation pairs
        assert m["loss_last"] < m["loss_first"]  # triplet training reduced the loss
        assert 0 < quick_nets[factor].threshold < 2
    assert s["identity"]["accuracy"] > 0.95
    assert s["expression"]["accuracy"] > 0.75
    assert quick_nets.meta["train"]["identities"] == 24 and quick_nets.meta["val"]["identities"] == 8


def test_ground_truth_is_judged_decoupled(quick_nets, ground_truth, ground_truth_diverse):
    r = decoupling_scores(ground_truth, quick_nets, n=20, m=20, generator=torch.Generator().manual_seed(0))
    assert r["pairs"] == 400 and r["identity_same"] == round(r["identity"] * 4)
    assert len(r["identity_per_face"]) == 20 and r["identity_threshold"] == quick_nets.identity.threshold
    assert r["identity"] >= 95.0  # same identity code = same identity
    e = factor_decoupling(ground_truth_diverse, quick_nets.expression, "expression", n=20, m=20,
                          generator=torch.Generator().manual_seed(0))  # fmt: skip
    # Quick nets (24 training identities, 400 steps) score ~68-90% here (68 on an Intel Xeon with
    # one BLAS thread, where the nets train to other last bits) and the full nets ~90% on the ICT
    # 4D test split, not the >= 95% of identity: a subtle expression on two faces is not always
    # recognised as the same one (see facemodel.evaluation.embedding). A model ignoring its
    # expression code scores <= 20% (next test).
    assert e["score"] >= 60.0


@pytest.mark.parametrize("factor", ["identity", "expression"])
def test_model_ignoring_its_code_is_judged_entangled(quick_nets, ground_truth, ground_truth_diverse, factor):
    gt = ground_truth if factor == "identity" else ground_truth_diverse
    r = factor_decoupling(IgnoresCode(gt, factor), quick_nets[factor], factor, n=20, m=20,
                          generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert r["pairs"] == 400
    assert r["score"] <= 20.0


def test_bad_input_raises(quick_nets, ground_truth):
    with pytest.raises(EvaluationError, match="n must be"):
        decoupling_scores(ground_truth, quick_nets, n=0)
    with pytest.raises(EvaluationError, match="m must be"):
        decoupling_scores(ground_truth, quick_nets, n=2, m=1.5)
    with pytest.raises(EvaluationError, match="ShapeModel"):
        decoupling_scores("not a model", quick_nets)
    with pytest.raises(EvaluationError, match="DecouplingNets"):
        decoupling_scores(ground_truth, {"identity": None})

    class Tiny(ShapeModel):
        name, identity_dim, expression_dim, num_vertices = "tiny", 2, 2, 10
        faces = np.array([[0, 1, 2]])

        def decode(self, codes, *, vertices=None):
            return torch.zeros(len(codes), 10, 3)

    with pytest.raises(EvaluationError, match="factor"):
        factor_decoupling(ground_truth, quick_nets.identity, "viseme", n=1, m=1)
    with pytest.raises(EvaluationError, match="topology"):
        decoupling_scores(Tiny(), quick_nets, n=2, m=2)


def test_save_load_roundtrip(quick_nets, tmp_path, template):
    path = quick_nets.save(tmp_path / "nets")
    meta = json.loads((path / "meta.json").read_text())
    assert meta["dataset_checksum"] == "test"
    assert meta["nets"]["identity"]["renderer"]["size"] == quick_nets.identity.renderer.size
    assert meta["nets"]["identity"]["metrics"]["far"] < 0.1
    back = DecouplingNets.load(path)
    v = torch.as_tensor(template.vertices)[None].repeat(2, 1, 1)
    v[1] += torch.randn(1, 3)
    for f in ("identity", "expression"):
        assert back[f].threshold == quick_nets[f].threshold
        assert torch.allclose(back[f].embed(v), quick_nets[f].embed(v), atol=1e-6)
    # the fingerprint survives a round trip and changes with any threshold or weight
    assert back.fingerprint() == quick_nets.fingerprint() and len(back.fingerprint()) == 16
    back.expression.threshold += 0.01
    assert back.fingerprint() != quick_nets.fingerprint()
    back.expression.threshold = quick_nets.expression.threshold
    with torch.no_grad():
        next(back.identity.network.parameters()).view(-1)[0] += 1e-3
    assert back.fingerprint() != quick_nets.fingerprint()
    with pytest.raises(EvaluationError, match="meta.json"):
        DecouplingNets.load(tmp_path / "missing")
    (path / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(EvaluationError, match="cannot load"):
        DecouplingNets.load(path)


def test_load_or_train_caches_and_checks_the_dataset(small_dataset, ict, quick_nets, tmp_path, monkeypatch):
    # small_dataset has a single val identity: refused before any rendering
    with pytest.raises(EvaluationError, match="val split needs >= 2 identities"):
        load_or_train_decoupling_nets(small_dataset, ict, quick=True, cache_dir=tmp_path)
    calls = []

    def fake_train(generator, identities, expressions, config, *, meta=None, progress=False):
        calls.append(config)
        info = {**quick_nets.meta, "config": config.model_dump(), **meta}
        return DecouplingNets(quick_nets.identity, quick_nets.expression, info)

    monkeypatch.setattr(emb_mod, "train_decoupling_nets", fake_train)
    a = load_or_train_decoupling_nets(small_dataset, ict, quick=True, cache_dir=tmp_path)
    b = load_or_train_decoupling_nets(small_dataset, ict, quick=True, cache_dir=tmp_path)
    assert len(calls) == 1  # the second call loaded the cached nets
    assert a.meta["dataset_checksum"] == b.meta["dataset_checksum"] != "test"
    assert b.identity.threshold == quick_nets.identity.threshold
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert folder.name.endswith("-quick")
    load_or_train_decoupling_nets(small_dataset, ict, quick=True, cache_dir=tmp_path, retrain=True)
    assert len(calls) == 2


def test_adapter_expression_prior(random_model, released):
    """``FaceModelAdapter(expression_prior=...)``: the report's N(0, I) codes by default, or the
    expression codes ``FaceModel.sample`` draws by default (realistic weights through the map)."""
    from facemodel.evaluation.protocol import FaceModelAdapter

    with pytest.raises(EvaluationError, match="blendshape map"):
        FaceModelAdapter(random_model, expression_prior="blendshapes")
    with pytest.raises(EvaluationError, match="expression_prior"):
        FaceModelAdapter(released, expression_prior="auto")
    gauss = FaceModelAdapter(released).sample_codes(40, generator=torch.Generator().manual_seed(1))
    real = FaceModelAdapter(released, expression_prior="blendshapes").sample_codes(40, generator=torch.Generator().manual_seed(1))
    assert torch.equal(real.identity, gauss.identity) and torch.equal(real.noise, gauss.noise)
    active = [float((released.blendshapes_from_expression(c.expression) > 0.1).sum(1).float().mean()) for c in (real, gauss)]
    assert active[0] < 0.5 * active[1]  # a few shapes at a time, against dense mixtures
    sampled = released.sample(40, seed=1)  # the same draws in the same order as sample()
    assert torch.allclose(real.expression, sampled.expression.float(), atol=1e-6)
