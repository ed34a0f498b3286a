import numpy as np
import pytest
import torch

from facemodel.errors import InvalidGeometryError, TopologyMismatchError


def test_ict_face_template(template, ict):
    assert template.num_vertices == 9409 and template.num_faces == 18460
    assert template.landmarks.shape == (68,) and template.landmarks.max() < 9409
    # millimetres: the face is ~18 cm wide, not 18 units
    width = np.ptp(template.vertices[:, 0])
    assert 150 < width < 250
    np.testing.assert_allclose(template.vertices, ict._shapes["generic_neutral"][:9409] * 10, rtol=1e-6)
    # the identity modes have the documented magnitude (first 3.9 mm RMS, last 0.09 mm)
    rms = np.sqrt((ict.identity_deltas_mm**2).sum(-1).mean(-1))
    assert 3.5 < rms[0] < 4.3 and 0.05 < rms[-1] < 0.15


def test_faces_are_ccw_from_front(template):
    v, f = template.vertices, template.faces
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    assert (n[:, 2] > 0).mean() > 0.6  # most of the face looks towards +z


def test_check_vertices(template):
    template.check(torch.zeros(2, 9409, 3))
    with pytest.raises(TopologyMismatchError, match="9409"):
        template.check(np.zeros((9408, 3)))
    bad = np.zeros((9409, 3))
    bad[5, 1] = np.nan
    with pytest.raises(InvalidGeometryError, match="NaN"):
        template.check(bad)
    with pytest.raises(InvalidGeometryError, match="shape"):
        template.check(np.zeros((9409, 2)))
