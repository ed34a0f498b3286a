"""The weights shipped in weights/ (installed as facemodel.weights): load offline, within budget."""

from __future__ import annotations

import torch

from facemodel import FaceModel
from facemodel.hub import packaged_weights_dir
from facemodel.training.release import MAX_RELEASE_BYTES


def test_released_weights_load_offline_and_work(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = FaceModel.from_pretrained()
    faces = model.sample(3, seed=0, expression="happiness")
    assert faces.vertices.shape == (3, model.num_vertices, 3) and torch.isfinite(faces.vertices).all()
    # a trained model: faces are not the template, and differ from each other by millimetres
    assert (faces.vertices - model.template).norm(dim=-1).mean() > 1.0
    assert (faces.vertices[0] - faces.vertices[1]).norm(dim=-1).mean() > 1.0
    w = model.blendshapes_from_expression(model.expression_from_blendshapes({"jawOpen": 0.8}))
    assert w.shape == (1, 53) and bool(((w >= 0) & (w <= 1)).all())


def test_released_map_applies_unexercised_shapes_as_ict_deltas(monkeypatch, ict):
    """0.3.1: the 15 shapes the training data never moves act through ICT's linear deltas."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = FaceModel.from_pretrained()
    assert len(model.fallback_blendshapes) == 15
    assert {"eyeLookDown_L", "jawLeft", "cheekPuff_R"} <= set(model.fallback_blendshapes)
    assert "jawOpen" not in model.fallback_blendshapes
    rest, moved = model.sample(seed=2, expression={"jawLeft": 0.0}), model.sample(seed=2, expression={"jawLeft": 1.0})
    assert torch.equal(rest.codes, moved.codes)  # not through the code
    j = ict.expression_names.index("jawLeft")
    truth = torch.from_numpy(ict.expression_shapes_mm[j] - ict.neutral_mm).float()
    torch.testing.assert_close(moved.vertices[0] - rest.vertices[0], truth, atol=0.02, rtol=0)  # float16 storage
    assert float(truth.norm(dim=-1).max()) > 5.0  # a visible sideways jaw, mm


def test_release_folder_is_within_budget_and_has_a_model_card():
    folder = packaged_weights_dir()
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    assert size <= MAX_RELEASE_BYTES
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "license: mit" in card and "ICT-FaceKit" in card and "Table 1" in card
