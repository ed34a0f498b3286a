"""Blendshape map: learning it, storing it with the model, and the SDK methods that use it."""

import copy
import json

import numpy as np
import pytest
import torch

from facemodel.blendshapes import ICT_NAMES, BlendshapeError, to_ict_weights
from facemodel.data.dataset import FaceDataset
from facemodel.errors import FaceModelError
from facemodel.expression_map import NoExpressionMapError
from facemodel.model import FaceModel, WeightsFormatError
from facemodel.training.blendshape_map import (
    EncodedMeshes,
    anchor_rows,
    ict_fallback_deltas,
    learn_blendshape_map,
    main,
    unexercised_shapes,
)


def _synthetic(model, ds, n, A, b, seed):
    """Meshes made by the model itself with expression codes A e + b: the map to learn is known."""
    g = torch.Generator().manual_seed(seed)
    rows = np.arange(n)
    w = torch.rand(n, 53, generator=g) * (torch.rand(n, 53, generator=g) < 0.2)  # every shape is seen
    sl = model.code_slices["expression"]
    z = torch.randn(len(rows), model.config.generator.code_dim, generator=g)
    z[:, sl] = w @ A.T + b
    with torch.no_grad():
        v = model(z)
    return EncodedMeshes(rows, v, w, z, np.zeros(len(rows), int), 0.0)


@pytest.fixture(scope="module")
def known_map(random_model, small_dataset):
    g = torch.Generator().manual_seed(3)
    A, b = torch.randn(15, 53, generator=g), 0.3 * torch.randn(15, generator=g)
    model = copy.deepcopy(random_model)
    train = _synthetic(model, FaceDataset(small_dataset, "train"), 192, A, b, 0)
    val = _synthetic(model, FaceDataset(small_dataset, "val"), 64, A, b, 1)
    learn_blendshape_map(model, small_dataset, data=(train, val), encoded_meshes=0, epochs=4, num_vertices=800,
                         inverse_steps=300, progress=False)  # fmt: skip
    return model, A, b, val


def test_learned_map_recovers_a_known_map(known_map):
    model, A, b, val = known_map
    m = model.config.expression_map.metrics
    assert set(m["to_code"]) == {"linear", "mlp"} and set(m["to_weights"]) == {"linear", "mlp"}
    chosen = m["chosen"]["to_code"]
    assert m["to_code"][chosen]["val_rmse_mm"] == min(r["val_rmse_mm"] for r in m["to_code"].values())
    # the decoded meshes match the truth far better than the mean expression code does
    assert m["to_code"][chosen]["val_rmse_mm"] < 0.05 * m["val_mean_code_rmse_mm"]
    z = model.expression_from_blendshapes(val.weights)
    truth = val.weights @ A.T + b
    assert float((z - truth).abs().mean()) < 0.1 * float(truth.abs().mean()), float((z - truth).abs().mean())


def test_relative_map_learns_offsets_from_each_identitys_anchor(random_model, small_dataset):
    """Anchor mode: meshes = G(z_id_a, z_exp_a + A (e - e_a), z_noise_a); the map must learn A."""
    g = torch.Generator().manual_seed(5)
    A = torch.randn(15, 53, generator=g)
    model = copy.deepcopy(random_model)
    sl = model.code_slices["expression"]

    def make(n, ids, seed):
        gg = torch.Generator().manual_seed(seed)
        anchors = torch.randn(ids, model.config.generator.code_dim, generator=gg) * 2  # far from the mean code
        ref = torch.rand(ids, 53, generator=gg) * 0.1
        ident = torch.arange(n) % ids
        w = torch.rand(n, 53, generator=gg) * (torch.rand(n, 53, generator=gg) < 0.2)
        z = anchors[ident].clone()
        z[:, sl] += (w - ref[ident]) @ A.T
        with torch.no_grad():
            v = model(z)
        return EncodedMeshes(np.arange(n), v, w, anchors[ident], ident.numpy(), 0.0, None, ref[ident])

    train, val = make(256, 16, 0), make(64, 4, 1)
    learn_blendshape_map(model, small_dataset, data=(train, val), encoded_meshes=0, epochs=25, batch_size=16, lr=0.05,
                         num_vertices=500, inverse_steps=50, progress=False)  # fmt: skip
    m = model.config.expression_map.metrics
    r = m["to_code"][m["chosen"]["to_code"]]["val_rmse_mm"]
    assert r < 0.1 * m["val_rest_rmse_mm"], (r, m["val_rest_rmse_mm"])
    # applied relative to a face, as add_expressions does, the offsets are A (e - 0)
    w = val.weights[:4]
    offset = model.expression_from_blendshapes(w) - model.expression_from_blendshapes(torch.zeros(1, 53))
    assert float((offset - w @ A.T).abs().mean()) < 0.1 * float((w @ A.T).abs().mean())


def test_weights_read_back_beat_the_mean(known_map, small_dataset):
    model = known_map[0]
    w = torch.from_numpy(FaceDataset(small_dataset, "val").meta("blendshapes")).clamp(0, 1)
    back = model.blendshapes_from_expression(model.expression_from_blendshapes(w))
    assert back.shape == w.shape and float(back.min()) >= 0 and float(back.max()) <= 1
    mae = float((back - w).abs().mean())
    mean_guess = float((w - torch.from_numpy(FaceDataset(small_dataset, "train").meta("blendshapes")).mean(0)).abs().mean())
    assert mae < 0.6 * mean_guess
    assert model.config.expression_map.metrics["to_weights"][model.config.expression_map.to_weights][
        "val_round_trip_mae"] < mean_guess  # fmt: skip


def test_to_weights_is_chosen_on_tracker_like_vectors_too(known_map):
    """The code->weights candidates are scored on random sparse tracker-like vectors beside the
    validation split (0.4.0's choice on the split alone round-tripped such vectors at 0.023)."""
    from facemodel.data.expressions import sparse_weights
    from facemodel.training.blendshape_map import SPARSE_STREAM

    model = known_map[0]
    m = model.config.expression_map.metrics
    score = {k: sum(v for key, v in r.items() if key.endswith("_mae")) for k, r in m["to_weights"].items()}
    assert all("val_sparse_round_trip_mae" in r for r in m["to_weights"].values())
    chosen = m["chosen"]["to_weights"]
    assert score[chosen] == min(score.values()) or (chosen == "linear" and score["linear"] <= 1.01 * score["mlp"])
    # the recorded figure is the round trip of the tool's own stream of sparse vectors (seed 0)
    w = torch.from_numpy(sparse_weights(2000, np.random.default_rng([0, SPARSE_STREAM]))).float()
    back = model.blendshapes_from_expression(model.expression_from_blendshapes(w))
    assert abs(float((back - w).abs().mean()) - m["to_weights"][chosen]["val_sparse_round_trip_mae"]) < 1e-5


def test_sparse_vectors_must_be_a_count(random_model, small_dataset):
    with pytest.raises(FaceModelError, match="sparse_vectors"):
        learn_blendshape_map(copy.deepcopy(random_model), small_dataset, sparse_vectors=-1, progress=False)


def test_map_is_saved_and_loaded_strictly(known_map, tmp_path):
    model = known_map[0]
    folder = model.save_pretrained(tmp_path / "m")
    loaded = FaceModel.from_pretrained(folder)
    w = {"jawOpen": 0.8, "mouthSmile_L": 0.4}
    assert torch.equal(loaded.expression_from_blendshapes(w), model.expression_from_blendshapes(w))
    assert loaded.config.expression_map == model.config.expression_map
    # a config that promises a map whose tensors are missing is refused
    from safetensors.torch import load_file, save_file

    state = {k: v for k, v in load_file(folder / "model.safetensors").items() if not k.startswith("expression_map.")}
    save_file(state, folder / "model.safetensors")
    with pytest.raises(WeightsFormatError, match="does not match its config"):
        FaceModel.from_pretrained(folder)


def test_exports_without_a_map_load_and_explain(random_model_dir, tmp_path):
    cfg = json.loads((random_model_dir / "config.json").read_text())
    cfg.pop("expression_map", None)  # an export made before maps existed
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "model.safetensors").write_bytes((random_model_dir / "model.safetensors").read_bytes())
    model = FaceModel.from_pretrained(folder)
    assert model.expression_map is None
    for call in (lambda: model.expression_from_blendshapes({"jawOpen": 1.0}),
                 lambda: model.blendshapes_from_expression(torch.zeros(1, 15)),
                 lambda: model.sample(expression={"jawOpen": 1.0})):  # fmt: skip
        with pytest.raises(NoExpressionMapError, match="python -m facemodel.training.blendshape_map") as info:
            call()
        assert isinstance(info.value, FaceModelError)


def test_sample_transfer_and_add_accept_dicts(known_map):
    model = known_map[0]
    w = {"jawOpen": 0.8, "mouthSmile_L": 0.4}
    z = model.expression_from_blendshapes(w)
    faces = model.sample(3, seed=0, expression=w)
    assert torch.equal(faces.expression, z.expand(3, -1))
    assert torch.equal(faces.identity, model.sample(3, seed=0).identity)
    # several frames: n follows the dict when n is left at 1
    frames = model.sample(seed=1, expression={"JawOpen": torch.linspace(0, 1, 5)})
    assert len(frames) == 5 and torch.allclose(frames.expression, model.expression_from_blendshapes(
        {"jawOpen": torch.linspace(0, 1, 5)}))  # fmt: skip
    with pytest.raises(FaceModelError, match="5 frames but 3 faces"):
        model.sample(3, expression={"jawOpen": torch.linspace(0, 1, 5)})
    with pytest.raises(FaceModelError, match="drives the expression"):
        model.sample(identity={"jawOpen": 1.0})
    # transfer: the target keeps identity and noise
    target = model.sample(2, seed=4)
    out = model.transfer_expression({"eyeBlinkLeft": [0.2, 0.9]}, target)
    assert torch.equal(out.identity, target.identity) and torch.equal(out.noise, target.noise)
    assert torch.allclose(out.expression, model.expression_from_blendshapes({"eyeBlink_L": [0.2, 0.9]}))
    # add: a dict adds its offset from the map's neutral; all zeros adds nothing
    same = model.add_expressions(target, {"jawOpen": 0.0})
    assert torch.allclose(same.vertices, target.vertices, atol=1e-4)
    added = model.add_expressions(target, {"jawOpen": 0.5}, weights=[2.0])
    delta = model.expression_from_blendshapes({"jawOpen": 0.5}) - model.expression_from_blendshapes({"jawOpen": 0.0})
    assert torch.allclose(added.expression, target.expression + 2 * delta, atol=1e-5)


def test_blendshapes_from_expression_inputs_and_spellings(known_map):
    model = known_map[0]
    faces = model.sample(2, seed=5, expression={"jawOpen": [0.1, 0.9]})
    a = model.blendshapes_from_expression(faces)
    assert a.shape == (2, 53)
    assert torch.allclose(a, model.blendshapes_from_expression(faces.codes), atol=1e-6)
    assert torch.allclose(a, model.blendshapes_from_expression(faces.expression), atol=1e-6)
    assert torch.allclose(a[:1], model.blendshapes_from_expression(faces.expression[0]), atol=1e-6)
    arkit = model.blendshapes_from_expression(faces, spelling="arkit")
    assert len(arkit) == 51 and torch.equal(arkit["jawOpen"], a[:, ICT_NAMES.index("jawOpen")])
    assert "JawOpen" in model.blendshapes_from_expression(faces, spelling="livelink")
    assert set(model.blendshapes_from_expression(faces, spelling="ict")) == set(ICT_NAMES)
    with pytest.raises(FaceModelError, match=r"shape \(B, 15\)"):
        model.blendshapes_from_expression(torch.zeros(2, 7))
    with pytest.raises(FaceModelError, match="NaN"):
        model.blendshapes_from_expression(torch.full((1, 15), float("nan")))
    with pytest.raises(BlendshapeError, match="spelling"):
        model.blendshapes_from_expression(faces, spelling="maya")


@pytest.mark.parametrize("weights, words", [
    ({"jawOpn": 0.5}, "did you mean 'jawOpen'"),
    ({"jawOpen": float("nan")}, "NaN"),
    ({"jawOpen": -0.3}, "[0, 1]"),
    ({"jawOpen": 1.2}, "[0, 1]"),
])  # fmt: skip
def test_bad_weights_raise_through_the_model(known_map, weights, words):
    with pytest.raises(BlendshapeError) as info:
        known_map[0].expression_from_blendshapes(weights)
    assert words in str(info.value)


def test_tensor_weights_in_ict_order_and_small_overshoot(known_map):
    model = known_map[0]
    w = torch.zeros(2, 53)
    w[:, ICT_NAMES.index("jawOpen")] = torch.tensor([0.5, 1.03])  # 1.03: within the tolerance, clipped
    z = model.expression_from_blendshapes(w)
    assert torch.allclose(z, model.expression_from_blendshapes({"jawOpen": [0.5, 1.0]}))
    assert torch.allclose(to_ict_weights(w)[1].sum(), torch.tensor(1.0))


def test_anchor_rows_pick_each_identitys_most_neutral_mesh(small_dataset):
    ds = FaceDataset(small_dataset, "train")
    anchors = anchor_rows(ds)
    ident, total = ds.meta("identity"), ds.meta("blendshapes").sum(1)
    assert sorted(anchors) == sorted(set(ident.tolist()))
    for i, row in anchors.items():
        assert ident[row] == i and total[row] == total[ident == i].min()


def test_learning_command_end_to_end(random_model_dir, small_dataset, ict_dir, tmp_path, capsys, monkeypatch):
    import facemodel.training.blendshape_map as bm

    out, cache = tmp_path / "with-map", tmp_path / "enc.pt"
    argv = ["--model", str(random_model_dir), "--data", str(small_dataset), "--out", str(out), "--train-meshes", "40",
            "--val-meshes", "10", "--encoded-meshes", "6", "--encoded-val-meshes", "3", "--epochs", "1",
            "--max-iters", "2", "--cache", str(cache), "--quiet", "--ict", str(ict_dir)]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "weights->code linear" in text and "weights->code mlp" in text and "chosen" in text
    model = FaceModel.from_pretrained(out)
    # shapes the small dataset's training split never exercises are applied as ICT's linear deltas
    expected = unexercised_shapes(FaceDataset(small_dataset, "train"))
    assert "eyeLookDown_L" in expected and "jawOpen" not in expected
    assert model.fallback_blendshapes == expected and "fallback shapes" in text
    assert model.config.expression_map.metrics["chosen"]["fallback"] == sorted(expected)
    d = model.config.expression_map.metrics["data"]
    assert (d["identity_codes"], d["train_meshes"], d["encoded_meshes"]) == ("anchor", 40, 6)
    assert model.expression_from_blendshapes({"jawOpen": 1.0}).shape == (1, 15)
    assert cache.is_file()
    assert main(argv) == 2  # the output exists: refused without --overwrite
    assert "--overwrite" in capsys.readouterr().err

    def no_encoding(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(bm, "encode_meshes", no_encoding)
    assert main(argv + ["--overwrite", "--kind", "linear", "--inverse-kind", "linear", "--identity-codes", "encoded"]) == 0
    m = FaceModel.from_pretrained(out).config.expression_map
    assert (m.to_code, m.to_weights, m.metrics["data"]["identity_codes"]) == ("linear", "linear", "encoded")
    assert main(argv + ["--overwrite", "--fallback", "none"]) == 0
    assert FaceModel.from_pretrained(out).fallback_blendshapes == []
    # auto fallback without ICT data: the error names both fixes, and nothing is written
    missing = argv[:-1] + [str(tmp_path / "no-ict")]
    missing[missing.index(str(out))] = str(tmp_path / "never")
    assert main(missing) == 2
    err = capsys.readouterr().err
    assert "--ict DIR" in err and "--fallback none" in err and not (tmp_path / "never").exists()


def test_anchor_init_with_no_epochs_keeps_the_training_runs_map(random_model, small_dataset):
    from facemodel.training.anchoring import fit_expression_anchor

    g = torch.Generator().manual_seed(4)
    A, b = torch.randn(15, 53, generator=g), torch.zeros(15)
    model = copy.deepcopy(random_model)
    train = _synthetic(model, FaceDataset(small_dataset, "train"), 64, A, b, 0)
    val = _synthetic(model, FaceDataset(small_dataset, "val"), 32, A, b, 1)
    learn_blendshape_map(model, small_dataset, data=(train, val), encoded_meshes=0, epochs=0, kind="linear",
                         anchor_init=True, inverse_steps=50, progress=False)  # fmt: skip
    assert model.config.expression_map.metrics["to_code"]["linear"]["init"] == "expression anchor"
    anchor, _ = fit_expression_anchor(FaceDataset(small_dataset, "train"), 15, seed=0)  # the run's seed (default 0)
    torch.testing.assert_close(model.expression_from_blendshapes(val.weights), anchor(val.weights), atol=1e-4, rtol=1e-4)
    # without it the same call keeps the data's start instead (here: the anchors' codes regressed on the weights)
    other = copy.deepcopy(random_model)
    learn_blendshape_map(other, small_dataset, data=(train, val), encoded_meshes=0, epochs=0, kind="linear",
                         inverse_steps=50, progress=False)  # fmt: skip
    assert not torch.allclose(other.expression_from_blendshapes(val.weights), anchor(val.weights), atol=1e-2)


def _with_fallback(model, names=("jawLeft", "cheekPuff_L"), seed=0):
    g = torch.Generator().manual_seed(seed)
    deltas = {n: torch.randn(model.num_vertices, 3, generator=g) for n in names}
    model = copy.deepcopy(model)
    model.set_expression_map(model.expression_map.with_fallback(deltas))
    return model, deltas


def test_fallback_shapes_skip_the_code_and_add_their_deltas(known_map, tmp_path):
    base = known_map[0]
    model, deltas = _with_fallback(base)
    assert model.fallback_blendshapes == ["cheekPuff_L", "jawLeft"]  # ICT order
    w = {"jawLeft": 0.5, "jawOpen": 0.3}
    # the code ignores the fallback shape (the unmodified map's code for it is not zero)
    z = model.expression_from_blendshapes(w)
    assert torch.equal(z, model.expression_from_blendshapes({"jawOpen": 0.3}))
    assert not torch.allclose(base.expression_from_blendshapes(w), z)
    d = model.blendshape_displacement(w)
    torch.testing.assert_close(d, 0.5 * deltas["jawLeft"][None])
    assert torch.equal(base.blendshape_displacement(w), torch.zeros(1, base.num_vertices, 3))  # no fallback: zeros
    # sample / transfer / add: the decoded codes plus the displacement
    faces = model.sample(2, seed=0, expression=w)
    torch.testing.assert_close(faces.vertices, model.decode(faces.codes).vertices + d, atol=1e-4, rtol=1e-4)
    target = model.sample(2, seed=4)
    out = model.transfer_expression({"jawLeft": [0.2, 1.0]}, target)
    torch.testing.assert_close(out.vertices - model.decode(out.codes).vertices,
                               torch.tensor([0.2, 1.0])[:, None, None] * deltas["jawLeft"][None], atol=1e-4, rtol=1e-4)  # fmt: skip
    added = model.add_expressions(target, {"cheekPuff_L": 0.5}, {"jawLeft": 1.0, "cheekPuff_L": 0.1}, weights=[2.0, 1.0])
    torch.testing.assert_close(added.vertices - model.decode(added.codes).vertices,
                               (1.1 * deltas["cheekPuff_L"] + deltas["jawLeft"])[None].expand(2, -1, -1), atol=1e-4, rtol=1e-4)  # fmt: skip
    torch.testing.assert_close(model.add_expressions(target, {"jawLeft": 0.0}).vertices, target.vertices)
    # saved with the model, loaded strictly
    loaded = FaceModel.from_pretrained(model.save_pretrained(tmp_path / "fb"))
    assert loaded.fallback_blendshapes == model.fallback_blendshapes
    torch.testing.assert_close(loaded.blendshape_displacement(w), d, atol=1e-3, rtol=1e-3)


def test_fallback_config_and_topology_are_checked(known_map):
    from facemodel.expression_map import ExpressionMap, ExpressionMapConfig

    with pytest.raises(ValueError, match="not blendshape names"):
        ExpressionMapConfig(code_dim=15, fallback=["jawSideways"], num_vertices=10)
    with pytest.raises(ValueError, match="needs num_vertices"):
        ExpressionMapConfig(code_dim=15, fallback=["jawLeft"])
    with pytest.raises(FaceModelError, match="unknown blendshape names"):
        ExpressionMap(ExpressionMapConfig(code_dim=15)).with_fallback({"jawSideways": torch.zeros(10, 3)})
    small = ExpressionMap(ExpressionMapConfig(code_dim=15)).with_fallback({"jawLeft": torch.ones(10, 3)})
    with pytest.raises(FaceModelError, match="2 weight vectors for 3 faces"):
        small.add_displacement_(torch.zeros(3, 10, 3), torch.zeros(2, 53))
    w = torch.zeros(1, 53)
    w[0, ICT_NAMES.index("jawLeft")] = 0.5
    torch.testing.assert_close(small.add_displacement_(torch.zeros(3, 10, 3), w), torch.full((3, 10, 3), 0.5))
    with pytest.raises(WeightsFormatError, match="10 vertices but the template has"):
        copy.deepcopy(known_map[0]).set_expression_map(small)


def test_ict_fallback_deltas_are_ict_shapes_minus_neutral(ict):
    d = ict_fallback_deltas(ict, ["jawLeft", "eyeLookUp_R"], ict.neutral_mm.shape[0])
    i = ict.expression_names.index("jawLeft")
    np.testing.assert_allclose(d["jawLeft"].numpy(), ict.expression_shapes_mm[i] - ict.neutral_mm, atol=1e-5)
    assert float(d["jawLeft"].norm(dim=-1).max()) > 1.0  # a real shape, millimetres
    from facemodel.errors import DatasetFormatError

    with pytest.raises(DatasetFormatError, match="--fallback none"):
        ict_fallback_deltas(ict, ["jawLeft"], 100)
