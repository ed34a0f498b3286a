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
