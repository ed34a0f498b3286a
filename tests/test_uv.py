import numpy as np
import pytest

from facemodel.errors import InvalidGeometryError
from facemodel.geometry.uv import boundary_loops, harmonic_uv, signed_areas_2d


def test_face_boundary_loops(template):
    loops = boundary_loops(template.faces)
    assert [len(lp) for lp in loops] == [204, 74, 42, 42]  # rim, mouth, two eyes


def test_harmonic_map_is_bijective_on_the_square(template):
    m = template.uv_map
    assert m.flipped == 0
    areas = signed_areas_2d(m.uv, template.faces)
    assert (areas > 0).all()
    assert m.uv.min() >= 0 and m.uv.max() <= 1
    b = m.uv[m.outer_boundary]
    on_edge = np.isclose(b, 0, atol=1e-12) | np.isclose(b, 1, atol=1e-12)
    assert on_edge.any(1).all()  # every rim vertex lies on the square's boundary
    for corner in ([0, 0], [1, 0], [1, 1], [0, 1]):  # the corners are used
        assert np.isclose(b, corner).all(1).any()
    interior = np.setdiff1d(np.arange(template.num_vertices), m.outer_boundary)
    assert ((m.uv[interior] > 0) & (m.uv[interior] < 1)).all()
    # the face is upright: u follows x, v follows y
    assert np.corrcoef(m.uv[:, 0], template.vertices[:, 0])[0, 1] > 0.9
    assert np.corrcoef(m.uv[:, 1], template.vertices[:, 1])[0, 1] > 0.9


def test_inner_holes_are_free(template):
    m = template.uv_map
    loops = boundary_loops(template.faces)[1:]
    for lp in loops:  # not pinned to the square
        assert ((m.uv[lp] > 0.02) & (m.uv[lp] < 0.98)).all()


def test_flat_disk_maps_without_flips():
    # a fan disk whose interior angles give negative cotangent weights still embeds
    rng = np.random.default_rng(0)
    ang = np.sort(rng.uniform(0, 2 * np.pi, 30))
    rim = np.stack([np.cos(ang), np.sin(ang), np.zeros(30)], 1)
    v = np.vstack([rim, [[0.3, 0.1, 0.0]]])
    f = np.array([[i, (i + 1) % 30, 30] for i in range(30)])
    m = harmonic_uv(v, f)
    assert m.flipped == 0


def test_closed_mesh_is_rejected():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1.0]])
    f = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    with pytest.raises(InvalidGeometryError, match="no boundary"):
        harmonic_uv(v, f)


def test_stiff_outer_region_gives_the_face_more_of_the_square(template):
    from facemodel.geometry.geometry_image import geometry_image_lookup

    outer = np.arange(6706, template.num_vertices)  # beyond ICT's narrow face area: scalp, ears, neck
    plain = template.uv_map
    stiff = harmonic_uv(template.vertices, template.faces, stiff_vertices=outer, stiffness=8.0)
    assert stiff.flipped == 0
    narrow = np.isin(template.faces, np.arange(6706)).all(1)

    def face_pixels(uv):
        idx, _, mask = geometry_image_lookup(uv, template.faces, 64)
        return int((mask & (idx < 6706).all(-1)).sum())

    assert signed_areas_2d(stiff.uv, template.faces)[narrow].sum() > 1.5 * signed_areas_2d(plain.uv, template.faces)[narrow].sum()
    assert face_pixels(stiff.uv) > 1.5 * face_pixels(plain.uv)
    with pytest.raises(InvalidGeometryError, match="stiffness"):
        harmonic_uv(template.vertices, template.faces, stiff_vertices=outer, stiffness=-1.0)
