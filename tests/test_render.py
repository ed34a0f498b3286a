"""Tests of the software renderer (facemodel.geometry.render)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from facemodel.errors import InvalidGeometryError, OutputPathError
from facemodel.geometry.render import (
    fit_frame,
    heatmap_colors,
    render_grid,
    render_mesh,
    save_png,
    vertex_normals,
)

WHITE = np.array([255, 255, 255])


def _pixel_map(size: int, scale: float, center=(0.0, 0.0, 0.0)):
    """Front-view world (x, y) -> pixel (x right, y down) used by the renderer."""

    def to_px(xy):
        xy = np.asarray(xy, dtype=np.float64)
        return np.stack(
            [(xy[..., 0] - center[0]) * scale + size / 2, size / 2 - (xy[..., 1] - center[1]) * scale], -1
        )

    return to_px


def _cross2(u, w) -> float:
    return float(u[0] * w[1] - u[1] * w[0])


def _inside_reference(tri_px: np.ndarray, size: int) -> np.ndarray:
    """Brute force: which pixel centres lie strictly inside the 2D triangle (either winding)."""
    mask = np.zeros((size, size), bool)
    a, b, c = tri_px
    for r in range(size):
        for col in range(size):
            p = np.array([col + 0.5, r + 0.5])
            d = [_cross2(b - a, p - a), _cross2(c - b, p - b), _cross2(a - c, p - c)]
            mask[r, col] = all(x > 0 for x in d) or all(x < 0 for x in d)
    return mask


def _quad(z_of_y=lambda y: 0.0 * y, half=1.0):
    """Two CCW triangles covering [-half, half]^2 in x/y, with z = z_of_y(y)."""
    xy = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
    v = np.c_[xy, z_of_y(xy[:, 1])]
    f = np.array([[0, 1, 2], [0, 2, 3]])
    return v, f


# ---------------------------------------------------------------------------------------
# vertex normals
# ---------------------------------------------------------------------------------------
def test_vertex_normals_flat_plane_is_plus_z():
    g = np.linspace(-1, 1, 5)
    x, y = np.meshgrid(g, g)
    v = np.c_[x.ravel(), y.ravel(), np.zeros(x.size)]
    faces = []
    for r in range(4):
        for c in range(4):
            i = r * 5 + c
            faces += [[i, i + 1, i + 6], [i, i + 6, i + 5]]  # CCW seen from +z
    n = vertex_normals(v, np.array(faces))
    np.testing.assert_allclose(n, np.tile([0.0, 0.0, 1.0], (len(v), 1)), atol=1e-12)
    # batched input keeps the batch, and reversed winding flips the normals
    nb = vertex_normals(np.stack([v, v]), np.array(faces)[:, ::-1])
    assert nb.shape == (2, len(v), 3)
    np.testing.assert_allclose(nb, np.broadcast_to([0.0, 0.0, -1.0], nb.shape), atol=1e-12)


def test_vertex_normals_are_area_weighted():
    # vertex 0 is shared by a large +z triangle and a small +x triangle
    v = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 1, 0], [0, 0, 1.0]])
    f = np.array([[0, 1, 2], [0, 3, 4]])
    n = vertex_normals(v, f)
    expected = np.array([1.0, 0.0, 100.0]) / np.linalg.norm([1.0, 0.0, 100.0])
    np.testing.assert_allclose(n[0], expected, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0)


def test_template_normals_face_forward(template):
    n = template.vertex_normals()
    assert n.shape == (template.num_vertices, 3)
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-9)
    tip = int(np.argmax(template.vertices[:, 2]))  # nose tip
    assert n[tip, 2] > 0.8


def test_unreferenced_vertex_gets_zero_normal():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [5, 5, 5.0]])
    n = vertex_normals(v, np.array([[0, 1, 2]]))
    np.testing.assert_array_equal(n[3], 0.0)


# ---------------------------------------------------------------------------------------
# rasterised coverage, depth, shading
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("winding", [(0, 1, 2), (0, 2, 1)])
def test_single_triangle_covers_exactly_the_expected_pixels(winding):
    size, scale = 24, 2.0
    v = np.array([[-4.3, -3.1, 0.0], [5.2, -4.6, 0.0], [0.7, 4.9, 1.0]])
    f = np.array([winding])
    img = render_mesh(v, f, size=size, scale=scale, center=(0, 0, 0), background=(1, 1, 1), color=(0.2, 0.3, 0.4))
    covered = np.any(img != 255, axis=-1)
    expected = _inside_reference(_pixel_map(size, scale)(v[:, :2]), size)
    assert expected.sum() > 50
    np.testing.assert_array_equal(covered, expected)


def test_front_view_orientation_is_upright_and_not_mirrored():
    # a triangle at +x (upper right in world) must land in the image's upper-right quadrant
    v = np.array([[2.0, 2.0, 0.0], [9.0, 2.0, 0.0], [2.0, 9.0, 0.0]])
    img = render_mesh(v, np.array([[0, 1, 2]]), size=20, scale=1.0, center=(0, 0, 0))
    covered = np.any(img != 255, axis=-1)
    assert covered[:10, 10:].sum() > 10
    assert covered[10:, :].sum() == 0 and covered[:, :10].sum() == 0


def test_side_view_shows_the_left_profile_nose_to_the_left(template):
    img = render_mesh(template.vertices, template.faces, view="side", size=64)
    cols = np.flatnonzero(np.any(img != 255, axis=-1).any(0))
    tip = template.vertices[np.argmax(template.vertices[:, 2])]
    # the nose tip (largest z) projects to the left half of the side view
    scale, center = fit_frame(template.vertices, ("side",), size=64)
    x_px = -(tip[2] - center[2]) * scale + 32
    assert x_px < 32 and abs(x_px - cols.min()) < 8


def test_zbuffer_keeps_the_nearer_triangle():
    # red triangle at z=0 first, blue triangle at z=+5 (nearer the front camera) second,
    # then the same with the order swapped: blue must win either way
    red = np.array([[-5, -5, 0], [5, -5, 0], [0, 5, 0.0]])
    blue = np.array([[-5, 5, 5], [0, -5, 5], [5, 5, 5.0]])
    for first, second, c1, c2 in [(red, blue, (1, 0, 0), (0, 0, 1)), (blue, red, (0, 0, 1), (1, 0, 0))]:
        v = np.r_[first, second]
        f = np.array([[0, 1, 2], [3, 4, 5]])
        colors = np.r_[np.tile(c1, (3, 1)), np.tile(c2, (3, 1))].astype(float)
        img = render_mesh(v, f, size=32, scale=2.5, center=(0, 0, 0), vertex_colors=colors, ambient=1.0)
        centre = img[15:17, 15:17].reshape(-1, 3)
        assert np.all(centre == [0, 0, 255]), centre
        # where only the far (red) triangle is, red shows
        assert np.all(img[27, 8] == [255, 0, 0])


def test_a_surface_facing_the_light_is_brighter_than_one_tilted_away():
    facing, f = _quad(lambda y: 0.0 * y)
    lit = render_mesh(facing, f, size=32, scale=12, center=(0, 0, 0), light=(0, 0, 1))
    # tilt the quad about the x axis so its normal points down, away from an overhead-front light
    tilted, _ = _quad(lambda y: 1.5 * y)
    dim = render_mesh(tilted, f, size=32, scale=12, center=(0, 0, 0), light=(0, 0, 1))
    inner = (slice(8, 24), slice(8, 24))
    assert lit[inner].mean() > dim[inner].mean() + 40
    # and a light from the upper-front makes the upward-tilted version brighter than the downward one
    up, _ = _quad(lambda y: -1.5 * y)
    light = (0, 1, 1)
    assert (
        render_mesh(up, f, size=32, scale=12, center=(0, 0, 0), light=light)[inner].mean()
        > render_mesh(tilted, f, size=32, scale=12, center=(0, 0, 0), light=light)[inner].mean() + 40
    )


def test_backfaces_are_shaded_like_front_faces():
    v, f = _quad()
    front = render_mesh(v, f, size=16, scale=5, center=(0, 0, 0))
    back = render_mesh(v, f[:, ::-1], size=16, scale=5, center=(0, 0, 0))
    np.testing.assert_array_equal(front, back)
    assert front[8, 8].min() > 100  # lit, not black


def test_default_framing_fits_with_a_margin():
    v, f = _quad(half=37.0)
    img = render_mesh(v, f, size=100)
    covered = np.any(img != 255, axis=-1)
    rows, cols = np.flatnonzero(covered.any(1)), np.flatnonzero(covered.any(0))
    assert 3 <= rows.min() <= 6 and 93 <= rows.max() <= 96
    assert 3 <= cols.min() <= 6 and 93 <= cols.max() <= 96


# ---------------------------------------------------------------------------------------
# the real ICT face
# ---------------------------------------------------------------------------------------
def test_template_front_render_is_a_plausible_symmetric_face(template):
    img = render_mesh(template.vertices, template.faces, size=128)
    assert img.shape == (128, 128, 3) and img.dtype == np.uint8
    covered = np.any(img != 255, axis=-1)
    assert 0.2 < covered.mean() < 0.8
    # silhouette symmetric; with a frontal light the shading is symmetric too
    assert np.mean(covered != covered[:, ::-1]) < 0.02
    frontal = render_mesh(template.vertices, template.faces, size=128, light=(0, 0, 1)).astype(float)
    assert np.abs(frontal - frontal[:, ::-1]).mean() < 2.0
    # ...but not trivially so: a mirrored side view is far from it
    side = render_mesh(template.vertices, template.faces, size=128, view="side", light=(0, 0, 1)).astype(float)
    assert np.abs(frontal - side).mean() > 10 * np.abs(frontal - frontal[:, ::-1]).mean()
    # the default light comes from the upper left: the left half is brighter
    gray = img.astype(float).mean(-1)
    face = covered & covered[:, ::-1]
    left, right = gray[:, :64][face[:, :64]].mean(), gray[:, 64:][face[:, 64:]].mean()
    assert left > right
    # lit: the face is not uniformly dark
    assert np.percentile(gray[covered], 90) > 150


def test_template_side_view_differs_from_front(template):
    front = render_mesh(template.vertices, template.faces, size=96)
    side = render_mesh(template.vertices, template.faces, view="side", size=96)
    three = render_mesh(template.vertices, template.faces, view=30.0, size=96)
    cf, cs = np.any(front != 255, -1), np.any(side != 255, -1)
    assert np.mean(cf != cs) > 0.1
    assert np.abs(front.astype(int) - three.astype(int)).mean() > 5
    assert 0.1 < cs.mean() < 0.8


def test_template_render_is_fast(template):
    render_mesh(template.vertices, template.faces, size=256)  # warm-up
    best = min(_timed(lambda: render_mesh(template.vertices, template.faces, size=256)) for _ in range(3))
    assert best < 0.25  # typically ~0.02 s; generous bound for slow CI machines


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------
# grids, colours, output
# ---------------------------------------------------------------------------------------
def test_render_grid_layout_size(template):
    v = np.stack([template.vertices] * 3)
    img = render_grid(v, template.faces, views=("front", "side"), size=40, ncols=2)
    assert isinstance(img, Image.Image) and img.mode == "RGB"
    assert img.size == (2 * 2 * 40, 2 * 40)  # 2 cells of 2 tiles per row, 2 rows
    a = np.asarray(img)
    # the empty fourth cell is background, the three used cells are not
    assert np.all(a[40:, 80:] == 255)
    for r, c in [(0, 0), (0, 80), (40, 0)]:
        assert np.any(a[r : r + 40, c : c + 40] != 255)
        assert np.any(a[r : r + 40, c + 40 : c + 80] != 255)
    # identical meshes with one common framing give identical tiles
    np.testing.assert_array_equal(a[:40, :80], a[:40, 80:160])
    np.testing.assert_array_equal(a[:40, :80], a[40:, :80])


def test_render_grid_common_scale_keeps_sizes_comparable(template):
    small = template.vertices * 0.5
    v = np.stack([template.vertices, small])
    shared = np.asarray(render_grid(v, template.faces, size=64, ncols=2))
    own = np.asarray(render_grid(v, template.faces, size=64, ncols=2, common_scale=False))
    cov = lambda a: np.any(a != 255, -1).mean()  # noqa: E731
    assert cov(shared[:, 64:]) < 0.4 * cov(shared[:, :64])
    assert abs(cov(own[:, 64:]) - cov(own[:, :64])) < 0.02


def test_render_grid_labels_and_vertex_colors(ict, template):
    jaw = ict.expression_shapes_mm[ict.expression_names.index("jawOpen")]
    v = np.stack([template.vertices, jaw])
    err = np.linalg.norm(v - template.vertices, axis=-1)
    colors = heatmap_colors(err)
    img = render_grid(
        v, template.faces, views=("front",), size=48, labels=["neutral", "jawOpen, a rather long label"],
        vertex_colors=colors, ncols=2,
    )
    w, h = img.size
    assert w == 96 and h > 48  # a label strip under the tiles
    strip = np.asarray(img)[48:]
    assert np.any(strip != 255)  # text was drawn
    tiles = np.asarray(img)[:48].astype(int)
    # the jaw of the second mesh is coloured by a large error (yellow-green), the first is dark
    assert tiles[:, 48:, 1].max() > tiles[:, :48, 1][np.any(tiles[:, :48] != 255, -1)].max() + 40
    with pytest.raises(ValueError, match="labels"):
        render_grid(v, template.faces, labels=["only one"])


def test_heatmap_colors():
    c = heatmap_colors(np.array([0.0, 0.5, 1.0, 2.0, np.nan]), vmax=1.0)
    assert c.shape == (5, 3)
    assert np.all((c >= 0) & (c <= 1))
    np.testing.assert_allclose(c[0], [0.267004, 0.004874, 0.329415])  # viridis ends
    np.testing.assert_allclose(c[2], [0.993248, 0.906157, 0.143936])
    np.testing.assert_allclose(c[3], c[2])  # clipped
    np.testing.assert_allclose(c[4], [0.6, 0.6, 0.6])  # NaN -> grey
    lum = heatmap_colors(np.linspace(0, 1, 50)) @ [0.2126, 0.7152, 0.0722]
    assert np.all(np.diff(lum) > 0)  # monotonically brighter
    assert heatmap_colors(np.zeros((2, 7))).shape == (2, 7, 3)


def test_save_png_writes_a_valid_png_atomically(tmp_path):
    arr = np.zeros((10, 12, 3), np.uint8)
    arr[2:5, 3:9] = [200, 30, 40]
    out = save_png(arr, tmp_path / "sub" / "x.png")
    assert out == tmp_path / "sub" / "x.png"
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (12, 10)
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), arr)
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.png"]  # no temp file left
    save_png(Image.fromarray(arr[::-1].copy()), out)  # overwrite with a PIL image
    with Image.open(out) as im:
        np.testing.assert_array_equal(np.asarray(im), arr[::-1])
    with pytest.raises(ValueError):
        save_png(arr.astype(float), tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputPathError):
        save_png(arr, tmp_path / "file" / "y.png")


# ---------------------------------------------------------------------------------------
# input validation
# ---------------------------------------------------------------------------------------
def test_nan_vertices_raise(template):
    v = template.vertices.copy()
    v[5, 1] = np.nan
    with pytest.raises(InvalidGeometryError, match="NaN"):
        render_mesh(v, template.faces)
    with pytest.raises(InvalidGeometryError, match="NaN"):
        render_grid(v[None], template.faces)
    with pytest.raises(InvalidGeometryError, match="NaN"):
        vertex_normals(v, template.faces)


def test_bad_shapes_raise_with_the_expected_shape(template):
    with pytest.raises(InvalidGeometryError, match=r"\(V, 3\)"):
        render_mesh(template.vertices[:, :2], template.faces)
    with pytest.raises(InvalidGeometryError, match=r"\(V, 3\)"):
        render_mesh(np.stack([template.vertices] * 2), template.faces)
    with pytest.raises(InvalidGeometryError, match=r"\(F, 3\)"):
        render_mesh(template.vertices, template.faces[:, :2])
    with pytest.raises(InvalidGeometryError, match="outside"):
        render_mesh(template.vertices[:100], template.faces)
    with pytest.raises(InvalidGeometryError, match=r"\(2, 9409, 3\)"):
        render_grid(np.stack([template.vertices] * 2), template.faces, vertex_colors=np.zeros((3, 9409, 3)))
    with pytest.raises(InvalidGeometryError, match=r"\(B, V, 3\)|\(V, 3\)"):
        render_grid(np.zeros((2, 3, 4, 3)), template.faces)


def test_bad_options_raise():
    v, f = _quad()
    with pytest.raises(ValueError, match="view"):
        render_mesh(v, f, view="top")
    with pytest.raises(ValueError, match="size"):
        render_mesh(v, f, size=0)
    with pytest.raises(ValueError, match="scale"):
        render_mesh(v, f, scale=-1.0)
    with pytest.raises(ValueError, match="light"):
        render_mesh(v, f, light=(0, 0, 0))
    with pytest.raises(ValueError, match="ncols"):
        render_grid(v[None], f, ncols=0)


def test_supersample_antialiases_edges():
    v = np.array([[-4.3, -3.1, 0.0], [5.2, -4.6, 0.0], [0.7, 4.9, 1.0]])
    f = np.array([[0, 1, 2]])
    hard = render_mesh(v, f, size=24, scale=2.0, center=(0, 0, 0))
    soft = render_mesh(v, f, size=24, scale=2.0, center=(0, 0, 0), supersample=3)
    assert soft.shape == hard.shape
    n_levels = lambda a: len(np.unique(a.reshape(-1, 3), axis=0))  # noqa: E731
    assert n_levels(soft) > n_levels(hard)
