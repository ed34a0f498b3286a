import numpy as np
import pytest

from facemodel.data.builder import ICTFaceGenerator
from facemodel.geometry.deformation_transfer import DeformationTransfer, deformation_gradients


@pytest.fixture(scope="module")
def generator(ict):
    return ICTFaceGenerator(ict)


def test_transfer_onto_source_reproduces_blendshapes(ict, template):
    dt = DeformationTransfer(template.vertices, template.faces)
    shapes = ict.expression_shapes_mm
    out = dt.transfer(template.vertices, dt.gradients(shapes), dt.anchor_shift(shapes))
    assert np.abs(out - shapes).max() < 1e-3  # mm


def test_different_identities_get_different_displacements(generator, ict):
    rng = np.random.default_rng(3)
    j = ict.expression_names.index("jawOpen")
    n1, d1 = generator.expression_basis(rng.standard_normal(100))
    n2, d2 = generator.expression_basis(rng.standard_normal(100))
    diff = np.linalg.norm(d1[j] - d2[j], axis=1)
    assert diff.mean() > 0.1 and diff.max() > 1.0  # mm: not the additive model
    additive = ict.expression_shapes_mm[j] - ict.neutral_mm
    assert np.linalg.norm(d1[j] - additive, axis=1).mean() > 0.1
    # but it is the same expression: displacements stay strongly correlated
    assert np.corrcoef(d1[j].ravel(), additive.ravel())[0, 1] > 0.95


def test_gradients_of_rigid_motion_are_rotations(template):
    theta = 0.3
    R = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    moved = template.vertices @ R.T + 5.0
    Q = deformation_gradients(template.vertices, moved[None], template.faces)
    np.testing.assert_allclose(Q[0], np.broadcast_to(R, Q[0].shape), atol=1e-4)


def test_generator_meshes_linear_in_weights(generator):
    w = np.random.default_rng(0).standard_normal(100)
    e = np.zeros((2, 53))
    e[1, 26] = 1.0
    m = generator.meshes(w, e)
    np.testing.assert_allclose(m[0], generator.neutral(w), atol=1e-4)
    assert np.abs(m[1] - m[0]).max() > 10  # jawOpen moves the chin by centimetres
