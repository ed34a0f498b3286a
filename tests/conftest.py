"""Shared fixtures. The ICT data is read in place from ../shared/data/ict-facekit.

Override its location with FACEMODEL_ICT_DIR. A missing folder fails the tests that need
it (it does not skip them): CI must see the data.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def ict_data_dir() -> Path:
    env = os.environ.get("FACEMODEL_ICT_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data" / "ict-facekit"


@pytest.fixture(scope="session")
def ict_dir() -> Path:
    path = ict_data_dir()
    if not (path / "shapes.npz").is_file():
        pytest.fail(
            f"ICT-FaceKit data not found at {path}: put the packed folder there or set "
            "FACEMODEL_ICT_DIR (tests need real data and do not skip)"
        )
    return path


@pytest.fixture(scope="session")
def ict(ict_dir):
    from facemodel.data.ict import ICTSource

    return ICTSource(ict_dir)


@pytest.fixture(scope="session")
def template(ict):
    return ict.face_template()


@pytest.fixture(scope="session")
def small_dataset(ict, tmp_path_factory):
    """A small ICT 4D dataset (1,000 meshes, 10 identities) built once per session."""
    from facemodel.data.builder import ICTDatasetConfig, build_ict_dataset

    out = tmp_path_factory.mktemp("ict4d") / "small"
    build_ict_dataset(ict, out, ICTDatasetConfig(seed=7, size=1000), progress=False)
    return out


EXPRESSION_NAMES = ["neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise"]


@pytest.fixture(scope="session")
def random_model(template):
    """A FaceModel on the ICT template with a random (untrained) generator at the paper's
    sizes, its output layer scaled so that codes move vertices by millimetres."""
    import torch

    from facemodel.model import FaceModel, FaceModelConfig
    from facemodel.networks import Factor, GeneratorConfig

    torch.manual_seed(0)
    cfg = FaceModelConfig(
        generator=GeneratorConfig(num_vertices=template.num_vertices,
                                  factors=(Factor(name="identity", code_dim=65, num_labels=5),
                                           Factor(name="expression", code_dim=15, num_labels=7))),  # fmt: skip
        label_names={"identity": [f"id{i}" for i in range(5)], "expression": EXPRESSION_NAMES},
    )
    g = torch.Generator().manual_seed(1)
    m = FaceModel(cfg, template.vertices, template.faces, template.uv, template.landmarks,
                  {"identity": torch.randn(5, 65, generator=g), "expression": torch.randn(7, 15, generator=g)})  # fmt: skip
    with torch.no_grad():
        m.generator.fc2.weight.mul_(20)
    return m.eval()


@pytest.fixture(scope="session")
def random_model_dir(random_model, tmp_path_factory):
    """``random_model`` saved with save_pretrained."""
    return random_model.save_pretrained(tmp_path_factory.mktemp("model") / "random")


@pytest.fixture(scope="session")
def released():
    """The released model (``weights/``), loaded once; tests must not modify it."""
    from facemodel import FaceModel

    return FaceModel.from_pretrained()
