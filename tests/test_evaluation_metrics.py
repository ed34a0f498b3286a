"""Diversity, specificity, identity spill and sparse reconstruction (facemodel.evaluation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facemodel.data.dataset import FaceDataset
from facemodel.evaluation.metrics import (
    data_diversity,
    diversity,
    mean_vertex_distance,
    model_diversity,
    model_specificity,
    nearest_meshes,
    roughness,
    specificity,
)
from facemodel.evaluation.protocol import Codes, EvaluationError, FaceModelAdapter, ICTGroundTruth, ShapeModel
from facemodel.evaluation.reconstruction import face_region_vertices, load_test_meshes, sparse_reconstruction
from facemodel.evaluation.spill import expression_motion, identity_only_vertices, identity_spill


# ---- tiny models ------------------------------------------------------------------------------
class ConstantModel(ShapeModel):
    """Ignores its codes: always the template."""

    name = "constant"
    identity_dim, expression_dim, noise_dim = 3, 2, 1

    def __init__(self, template: torch.Tensor) -> None:
        self.template = template
        self.num_vertices = template.shape[0]
        self.faces = np.zeros((0, 3), np.int64)

    def decode(self, codes, *, vertices=None):
        t = self.template if vertices is None else self.template[vertices]
        return t.expand(len(codes), -1, -1).clone() + 0 * codes.identity.sum()


class IsotropicModel(ShapeModel):
    """Vertex v = t_v + a_v z_id[v] + b_v z_exp[v] (3 code entries per vertex): the pair
    differences are isotropic Gaussians, whose mean norm is known in closed form."""

    name = "isotropic"
    noise_dim = 0

    def __init__(self, a: torch.Tensor, b: torch.Tensor) -> None:
        self.a, self.b = a, b
        self.num_vertices = len(a)
        self.identity_dim = self.expression_dim = 3 * len(a)
        self.template = torch.randn(len(a), 3, generator=torch.Generator().manual_seed(3))
        self.faces = np.zeros((0, 3), np.int64)

    def decode(self, codes, *, vertices=None):
        n, V = len(codes), self.num_vertices
        out = (self.template + self.a[:, None] * codes.identity.view(n, V, 3)
               + self.b[:, None] * codes.expression.view(n, V, 3))  # fmt: skip
        return out if vertices is None else out[:, vertices]


class LinearModel(ShapeModel):
    """A dense linear model t + B [z_id, z_exp, z_noise] with a closed-form fast solver."""

    name = "linear"

    def __init__(self, V=40, dims=(5, 4, 2), seed=0, fast=True) -> None:
        g = torch.Generator().manual_seed(seed)
        self.identity_dim, self.expression_dim, self.noise_dim = dims
        self.num_vertices = V
        self.faces = np.zeros((0, 3), np.int64)
        self.template = 10 * torch.randn(V, 3, generator=g)
        self.B = 3 * torch.randn(V * 3, sum(dims), generator=g)
        self.fast = fast

    def _z(self, codes):
        return torch.cat([codes.identity, codes.expression, codes.noise], 1)

    def decode(self, codes, *, vertices=None):
        n = len(codes)
        B, t = self.B.view(self.num_vertices, 3, -1), self.template
        if vertices is not None:
            B, t = B[vertices], t[vertices]
        return t + torch.einsum("vcd,nd->nvc", B, self._z(codes)).reshape(n, -1, 3)

    def fit_landmarks_fast(self, points, vertices, reg):
        if not self.fast:
            return None
        Bk = self.B.view(self.num_vertices, 3, -1)[vertices].reshape(-1, self.B.shape[1]).double()
        r = (points - self.template[vertices]).reshape(len(points), -1).double()
        z = torch.linalg.solve(Bk.T @ Bk + reg * torch.eye(Bk.shape[1], dtype=torch.float64), Bk.T @ r.T).T.float()
        i, e = self.identity_dim, self.expression_dim
        return Codes(z[:, :i], z[:, i : i + e], z[:, i + e :])


class TableModel(ShapeModel):
    """Decodes the reference mesh whose row is the identity code's first entry."""

    name = "table"
    identity_dim, expression_dim, noise_dim = 1, 1, 0

    def __init__(self, meshes: torch.Tensor) -> None:
        self.meshes = meshes
        self.num_vertices = meshes.shape[1]
        self.faces = np.zeros((0, 3), np.int64)

    def sample_codes(self, n, *, generator=None):
        rows = torch.randint(len(self.meshes), (n, 1), generator=generator).float()
        return Codes(rows, torch.zeros(n, 1), torch.zeros(n, 0))

    def decode(self, codes, *, vertices=None):
        out = self.meshes[codes.identity[:, 0].long()]
        return out if vertices is None else out[:, vertices]


def maxwell_mean(sigma):
    """E|x| for x ~ N(0, sigma^2 I_3)."""
    return sigma * math.sqrt(8 / math.pi)


def smooth_meshes(n, V, seed, scale=5.0):
    """n random meshes of V vertices with spatially smooth displacements (face-like data)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(V, 3, generator=g) * 100
    modes = torch.stack([torch.sin(base @ torch.randn(3, 1, generator=g) / 30 + torch.rand(1, generator=g) * 6)
                         .expand(V, 3) * torch.randn(1, 3, generator=g) for _ in range(12)])  # fmt: skip
    return base + scale * torch.einsum("nk,kvc->nvc", torch.randn(n, 12, generator=g), modes)


# ---- diversity ------------------------------------------------------------------------------
def test_model_diversity_zero_for_a_model_that_ignores_its_codes():
    model = ConstantModel(torch.randn(30, 3))
    out = model_diversity(model, 500, generator=torch.Generator().manual_seed(0))
    assert out == {"global": 0.0, "identity": 0.0, "expression": 0.0}


def test_model_diversity_matches_the_closed_form_of_a_linear_model():
    g = torch.Generator().manual_seed(1)
    a, b = 0.5 + torch.rand(50, generator=g) * 2, 0.2 + torch.rand(50, generator=g)
    out = model_diversity(IsotropicModel(a, b), 10_000, generator=g)
    # differences of two independent draws: sqrt(2) times the per-factor scale
    expected = {"global": maxwell_mean(torch.sqrt(2 * (a**2 + b**2))).mean().item(),
                "identity": maxwell_mean(math.sqrt(2) * b).mean().item(),   # same identity: only expression varies
                "expression": maxwell_mean(math.sqrt(2) * a).mean().item()}  # fmt: skip
    for k, v in expected.items():
        assert out[k] == pytest.approx(v, rel=0.02), k


def test_data_diversity_uses_labels_and_matches_all_pairs():
    meshes = smooth_meshes(60, 30, seed=2)
    identity = np.repeat(np.arange(6), 10)
    expression = np.tile(np.arange(10), 6) % 4
    expression[::7] = -1  # unlabelled meshes take no part in expression pairs
    out = data_diversity(meshes, 20_000, identity=identity, expression=expression,
                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    D = mean_vertex_distance(meshes[:, None], meshes[None]).double().numpy()

    def expected(labels):
        vals = []
        for i in range(len(labels)):
            same = (labels == labels[i]) & (np.arange(len(labels)) != i) & (labels[i] >= 0)
            if same.any():
                vals.append(D[i, same].mean())
        return np.mean(vals)

    assert out["global"] == pytest.approx(D[~np.eye(60, dtype=bool)].mean(), rel=0.02)
    assert out["identity"] == pytest.approx(expected(identity), rel=0.02)
    assert out["expression"] == pytest.approx(expected(expression), rel=0.02)
    assert data_diversity(meshes, 10)["identity"] is None  # no labels, no number


def test_data_diversity_of_a_dataset(small_dataset):
    ds = FaceDataset(small_dataset, split="train")
    out = data_diversity(ds, 300, generator=torch.Generator().manual_seed(0))
    assert 0 < out["expression"] and 0 < out["identity"] < out["global"]
    # the same pairs read from a tensor of the same meshes give the same numbers
    again = data_diversity(torch.from_numpy(ds.vertices()), 300, identity=ds.meta("identity"),
                           expression=ds.meta("expression"), generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert again == pytest.approx(out, rel=1e-5)


# ---- specificity ----------------------------------------------------------------------------
def brute_force(samples, reference):
    d = torch.stack([mean_vertex_distance(s[None], reference) for s in samples])
    return d.min(1)


@pytest.mark.parametrize("V", [7, 300])
def test_nearest_meshes_is_exact(V):
    ref = smooth_meshes(400, V, seed=4)
    samples = torch.cat([smooth_meshes(30, V, seed=4)[:, :] + 0.5 * torch.randn(30, V, 3), ref[:10] + 0.01])
    res = nearest_meshes(samples, ref, candidates=2, chunk=16)
    want = brute_force(samples, ref)
    torch.testing.assert_close(res.distance, want.values, rtol=1e-6, atol=1e-6)
    assert torch.equal(res.index, want.indices)
    assert res.exact_evaluations < 30 * 400  # the bounds ruled out most pairs
    torch.testing.assert_close(specificity(samples, ref), want.values, rtol=1e-6, atol=1e-6)  # legacy entry point


def test_nearest_meshes_finds_what_the_ranking_misses():
    """The nearest mesh by mean vertex distance differs from the sample by a large offset
    on a few vertices (large RMS); 40 distractors are offset uniformly (small RMS, larger
    mean distance) and win the RMS ranking: only the bounds + exact stage find it, and
    only if the bounds are true lower bounds (30% too high would discard it)."""
    V = 400
    g = torch.Generator().manual_seed(6)
    samples = smooth_meshes(5, V, seed=6)
    refs, want = [], []
    for i, s in enumerate(samples):
        shift = torch.nn.functional.normalize(torch.randn(40, 1, 3, generator=g), dim=-1)
        refs.append(s + shift * (1.0 + 0.2 * torch.rand(40, 1, 1, generator=g)))  # mean distance 1.0 .. 1.2
        spike = s.clone()
        spike[torch.randperm(V, generator=g)[:20], 0] += 18.0  # mean distance 0.9, RMS 4.0
        refs.append(spike[None])
        want.append(41 * (i + 1) - 1)
    ref = torch.cat(refs)
    res = nearest_meshes(samples, ref, candidates=3)
    assert res.index.tolist() == want
    torch.testing.assert_close(res.distance, torch.full((5,), 0.9), rtol=1e-5, atol=1e-5)
    assert res.exact_evaluations < 5 * len(ref) // 2


def test_specificity_zero_for_training_meshes(small_dataset):
    ds = FaceDataset(small_dataset, split="train")
    rows = np.arange(0, len(ds), 37)
    meshes = torch.from_numpy(ds.vertices(rows))
    table = TableModel(meshes)
    for reference in (ds, meshes):
        out = model_specificity(table, reference, 40, generator=torch.Generator().manual_seed(0))
        assert out["per_sample"].shape == (40,) and out["mean"] < 1e-4
    # and a model whose samples are off the data is at its true distance, found in the dataset
    shifted = TableModel(meshes + torch.tensor([0.0, 0.0, 2.0]))
    out = model_specificity(shifted, ds, 20, generator=torch.Generator().manual_seed(0))
    want = brute_force(shifted.decode_batched(shifted.sample_codes(20, generator=torch.Generator().manual_seed(0))),
                       torch.from_numpy(ds.vertices()))  # fmt: skip
    np.testing.assert_allclose(out["per_sample"].numpy(), want.values.numpy(), rtol=1e-5, atol=1e-5)
    assert out["mean"] <= 2.0 + 1e-4


def test_roughness_is_zero_for_smooth_motion_and_grows_with_bumps(small_dataset):
    ds = FaceDataset(small_dataset, split="train")
    template = ds.template
    rest = torch.from_numpy(np.asarray(template.vertices, dtype=np.float32))
    lap = template.laplacian()
    # rigid motion (and the rest shape itself) has no high-frequency energy
    shifted = torch.stack([rest, rest + torch.tensor([1.0, -2.0, 3.0])])
    assert roughness(shifted, rest, lap).abs().max() < 1e-6
    # the data's meshes have some; the same meshes with a bump of 0.5 mm on every 50th vertex have more
    meshes = torch.from_numpy(np.asarray(ds.vertices(np.arange(0, len(ds), 97)), dtype=np.float32))
    base = roughness(meshes, rest, lap)
    bumps = torch.zeros_like(rest)
    bumps[::50, 2] = 0.5
    bumpy = roughness(meshes + bumps, rest, lap)
    assert base.shape == (len(meshes),) and (base > 0).all() and (bumpy > base + 0.01).all()
    # the figure is mean_v |(L d)_v|^2: one bumped vertex of height h against a flat neighbourhood
    one = torch.zeros_like(rest)
    one[100, 2] = 1.0
    ld = torch.sparse.mm(lap, one)
    assert roughness(rest[None] + one, rest, lap).item() == pytest.approx(float(ld.square().sum() / len(rest)), rel=1e-5)
    with pytest.raises(EvaluationError, match="one topology"):
        roughness(meshes[:, :-1], rest, lap)


# ---- identity spill ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ict_setup(ict, small_dataset):
    from facemodel.data.builder import ICTFaceGenerator

    gen = ICTFaceGenerator(ict)
    ds = FaceDataset(small_dataset, split="train")
    weights = ds.identity_table("pca_weights")[ds.identity_ids[:2]]
    motion = expression_motion(gen, identities=weights)
    return gen, ds, weights, motion


def test_identity_only_vertices_follow_the_tolerance(ict_setup):
    gen, ds, weights, motion = ict_setup
    assert motion.shape == (gen.template.num_vertices,) and motion.min() > 0.3  # no vertex is left exactly in place
    idx = identity_only_vertices(gen, tol_mm=1.5, identities=weights)
    assert np.array_equal(idx, np.flatnonzero(motion <= 1.5)) and 300 < len(idx) < 1500
    # the tip of the chin and the lips move (far more than the tolerance)
    assert not np.isin(ds.template.landmarks[[8, 51, 57, 62, 66]], idx).any()
    with pytest.raises(EvaluationError, match="larger tol_mm"):
        identity_only_vertices(gen, tol_mm=0.01, identities=0)


class ForeheadModel(ShapeModel):
    """ICT ground truth whose expression code also moves some vertices (identity spill), or
    (``amount=0`` and ``freeze``) whose expressions leave those vertices exactly in place."""

    name = "spill"

    def __init__(self, gt: ICTGroundTruth, moved: np.ndarray, amount: float, freeze: bool = False) -> None:
        self.gt, self.amount, self.freeze = gt, amount, freeze
        self.moved = torch.as_tensor(moved)
        self.identity_dim, self.expression_dim, self.noise_dim = gt.identity_dim, gt.expression_dim, 0
        self.num_vertices, self.faces = gt.num_vertices, gt.faces

    def sample_codes(self, n, *, generator=None):
        return self.gt.sample_codes(n, generator=generator)

    def decode(self, codes, *, vertices=None):
        out = self.gt.decode(codes)
        if self.freeze:
            out[:, self.moved] = self.gt.decode(Codes(codes.identity, 0 * codes.expression, codes.noise))[:, self.moved]
        out[:, self.moved, 1] += self.amount * codes.expression.sum(1, keepdim=True)
        return out if vertices is None else out[:, vertices]


def test_identity_spill_of_the_ground_truth_and_of_spilling_models(ict_setup):
    gen, ds, weights, motion = ict_setup
    tol = 1.5
    idx = np.flatnonzero(motion <= tol)
    pool = ds.meta("blendshapes")
    gt = ICTGroundTruth(gen, weights, pool)
    out = identity_spill(gt, idx, num_faces=12, variants=4, generator=torch.Generator().manual_seed(0))
    # the ground truth (identity held fixed) moves these vertices only as far as ICT allows:
    # by at most tol * ||e - e'||_1 (blendshape weights in [0, 1]), a small floor in practice
    l1 = 2 * np.abs(pool).sum(1).max()  # >= ||e - e'||_1 for any two pool entries
    assert out["max_mm"] <= tol * l1 + 1e-4
    assert out["mean_mm"] < 0.6 and out["ratio"] < 0.4 and out["pairs"] == 48 and out["vertices"] == len(idx)
    # exactly 0 when the expressions leave those vertices in place
    frozen = identity_spill(ForeheadModel(gt, idx, 0.0, freeze=True), idx, num_faces=6, variants=3,
                            generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert frozen["mean_mm"] < 1e-5 and frozen["max_mm"] < 1e-4
    # an expression code that drags the identity-only vertices along is caught
    spill = identity_spill(ForeheadModel(gt, idx, 3.0), idx, num_faces=12, variants=4,
                           generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert spill["mean_mm"] > out["mean_mm"] + 1.0 and spill["ratio"] > 2 * out["ratio"]


# ---- sparse reconstruction --------------------------------------------------------------------
def test_sparse_reconstruction_of_a_linear_model():
    model = LinearModel()
    g = torch.Generator().manual_seed(5)
    truth = model.sample_codes(16, generator=g)
    meshes = model.decode(truth)
    lmk = np.arange(0, 40, 4)  # 10 landmarks, 30 equations for 11 unknowns
    adam = sparse_reconstruction(model, meshes, lmk, iterations=1000, lr=0.05)
    fast = sparse_reconstruction(model, meshes, lmk, solver="fast")
    start = sparse_reconstruction(model, meshes, lmk, lambdas=(0.0,), iterations=1, lr=1e-9)["lambdas"][0.0]
    a0, f0 = adam["lambdas"][0.0], fast["lambdas"][0.0]
    assert a0["landmark_rmse_mm"] < 0.02 and a0["rmse_mm"] < 0.05 and a0["rmse_mm"] < 0.01 * start["rmse_mm"]
    assert f0["rmse_mm"] < 1e-3
    assert a0["objective_decrease"] < 1e-3 and adam["settings"]["iterations"] == 1000
    # Eq. 13 with lambda: Adam reaches the closed-form (ridge) minimum; larger lambda, smaller codes
    a10, f10 = adam["lambdas"][10.0], fast["lambdas"][10.0]
    torch.testing.assert_close(a10["codes"].identity, f10["codes"].identity, atol=2e-3, rtol=0)
    assert a10["code_norm"] < a0["code_norm"] and f10["code_norm"] < f0["code_norm"]
    assert a10["rmse_mm"] > a0["rmse_mm"]
    assert a0["per_mesh_rmse_mm"].shape == (16,) and set(adam["lambdas"]) == {0.0, 0.01, 10.0}
    # a model without a fast solver is not reported
    assert sparse_reconstruction(LinearModel(fast=False), meshes, lmk, solver="fast") is None


def test_sparse_reconstruction_of_test_meshes_with_our_model(random_model, small_dataset):
    tm = load_test_meshes(small_dataset, max_per_kind=3)
    kinds = set(tm.kinds)
    assert "novel" in kinds and all((tm.kinds == k).sum() <= 3 for k in kinds)
    assert len(load_test_meshes(small_dataset, kinds=["novel"])) == 12  # 6 combinations x 2 intensities
    region = face_region_vertices(tm.template, tm.landmarks)
    assert 3000 < len(region) < 7000 and np.isin(tm.landmarks[27:], region).all()
    model = FaceModelAdapter(random_model)
    short = sparse_reconstruction(model, tm, lambdas=(0.01,), iterations=2, lr=0.05)["lambdas"][0.01]
    out = sparse_reconstruction(model, tm, lambdas=(0.01,), iterations=60, lr=0.05)
    r = out["lambdas"][0.01]
    assert r["objective"] < short["objective"] and set(r["by_group"]) == kinds
    assert all(p.requires_grad for p in random_model.parameters())  # weights unfrozen again
    fast = sparse_reconstruction(model, tm, lambdas=(0.01,), solver="fast")["lambdas"][0.01]
    assert fast["landmark_rmse_mm"] < r["landmark_rmse_mm"] + 1e-3  # Gauss-Newton: at least as good


# ---- bad input --------------------------------------------------------------------------------
def test_bad_inputs_raise_evaluation_errors(small_dataset):
    model = LinearModel()
    meshes = model.decode(model.sample_codes(4))
    with pytest.raises(EvaluationError, match="num_pairs"):
        model_diversity(model, 0)
    with pytest.raises(EvaluationError, match="num_pairs"):
        diversity(meshes, -3)
    with pytest.raises(EvaluationError, match="vertices per mesh"):
        nearest_meshes(meshes, torch.zeros(5, 41, 3))
    with pytest.raises(EvaluationError, match="NaN"):
        nearest_meshes(meshes.clone().fill_(float("nan")), meshes)
    with pytest.raises(EvaluationError, match="shape"):
        specificity(meshes[0], meshes)
    with pytest.raises(EvaluationError, match="empty"):
        nearest_meshes(meshes, meshes[:0])
    with pytest.raises(EvaluationError, match="vertices"):
        model_specificity(model, FaceDataset(small_dataset, split="train"), 3)
    with pytest.raises(EvaluationError, match="share"):
        data_diversity(meshes, 5, identity=np.arange(4))
    with pytest.raises(EvaluationError, match="one label per mesh"):
        data_diversity(meshes, 5, identity=np.arange(3))
    with pytest.raises(EvaluationError, match="unknown solver"):
        sparse_reconstruction(model, meshes, [0, 1, 2], solver="lbfgs")
    with pytest.raises(EvaluationError, match="lambdas"):
        sparse_reconstruction(model, meshes, [0, 1, 2], lambdas=(-1.0,))
    with pytest.raises(EvaluationError, match="landmarks"):
        sparse_reconstruction(model, meshes, [0, 99])
    with pytest.raises(EvaluationError, match="lr"):
        sparse_reconstruction(model, meshes, [0, 1, 2], lr=0.0)
    with pytest.raises(EvaluationError, match="unknown kinds"):
        load_test_meshes(small_dataset, kinds=["extreme"])
    with pytest.raises(EvaluationError, match="vertex indices"):
        identity_spill(model, [0, 40])
    with pytest.raises(EvaluationError, match="tol_mm"):
        identity_only_vertices(None, tol_mm=-1)

    class Broken(LinearModel):
        def decode(self, codes, *, vertices=None):
            return super().decode(codes, vertices=vertices) * float("nan")

    with pytest.raises(EvaluationError, match="NaN"):
        model_diversity(Broken(), 3)


def test_ict_ground_truth_transfers_each_identity_of_its_pool_once():
    """A pool larger than the old fixed cache (64) must not evict identities that come back: the
    0.7.0 evaluation's 100 test identities re-ran a ~0.3 s deformation transfer at every draw."""
    from types import SimpleNamespace

    calls = []

    def expression_basis(w):
        calls.append(w.copy())
        return np.full((5, 3), float(w[0])), np.ones((53, 5, 3))

    gen = SimpleNamespace(template=SimpleNamespace(faces=np.zeros((1, 3), np.int64), num_vertices=5),
                          expression_basis=expression_basis)  # fmt: skip
    pool = np.random.default_rng(0).standard_normal((100, 100))
    gt = ICTGroundTruth(gen, pool, np.zeros((4, 53)))
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        out = gt.decode(gt.sample_codes(200, generator=g))
        assert out.shape == (200, 5, 3)
    assert len(calls) == len({c.tobytes() for c in calls}) <= 100
    # an explicit smaller cache still bounds memory (and then recomputes)
    calls.clear()
    small = ICTGroundTruth(gen, pool, np.zeros((4, 53)), cache_size=10)
    small.decode(small.sample_codes(200, generator=torch.Generator().manual_seed(0)))
    small.decode(small.sample_codes(200, generator=torch.Generator().manual_seed(1)))
    assert len(calls) > 100
