import numpy as np
import pytest

from facemodel.errors import MeshFormatError
from facemodel.geometry.mesh_io import load_mesh, load_obj, read_obj_vertices, save_mesh, save_obj


def test_ict_objs_keep_vertex_order_bit_identical(ict_dir, ict):
    shapes = ict._shapes
    ident = read_obj_vertices(ict_dir / "samples" / "identity000.obj")
    assert ident.dtype == np.float32 and ident.shape == (26719, 3)
    assert np.array_equal(ident, shapes["identity_shapes"][0])
    jaw = read_obj_vertices(ict_dir / "samples" / "jawOpen.obj")
    assert np.array_equal(jaw, shapes["expression_shapes"][ict.expression_names.index("jawOpen")])
    neutral = load_obj(ict_dir / "generic_neutral_mesh.obj")
    assert np.array_equal(neutral.vertices, shapes["generic_neutral"])


def test_quads_are_triangulated_and_polygons_tracked(ict):
    m = ict.mesh
    # 25,836 quads and 548 triangles upstream
    assert len(m.faces) == 2 * 25836 + 548
    assert m.polygon_index.max() == 26383
    face = m.faces[m.polygon_index < 9230]
    assert face.shape == (18460, 3) and face.max() == 9408


def test_obj_fan_triangulation_and_negative_indices(tmp_path):
    p = tmp_path / "quad.obj"
    p.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0\nf 1/1 2/1 3/1 4/1\nf -4 -2 -1\n")
    m = load_obj(p)
    assert m.faces.tolist() == [[0, 1, 2], [0, 2, 3], [0, 2, 3]]
    assert m.polygon_index.tolist() == [0, 0, 1]


@pytest.mark.parametrize(
    "text,match",
    [
        ("v 0 0 0\nv 1 0 0\nf 1 2 3\n", "outside"),
        ("v 0 0 x\n", "non-numeric"),
        ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2\n", "fewer than 3"),
    ],
)
def test_malformed_obj_raises(tmp_path, text, match):
    p = tmp_path / "bad.obj"
    p.write_text(text)
    with pytest.raises(MeshFormatError, match=match):
        load_obj(p)


def test_missing_and_unknown_format(tmp_path):
    with pytest.raises(MeshFormatError, match="does not exist"):
        load_obj(tmp_path / "nope.obj")
    (tmp_path / "x.xyz").write_text("")
    with pytest.raises(MeshFormatError, match="unknown mesh format"):
        load_mesh(tmp_path / "x.xyz")


@pytest.mark.parametrize("suffix", [".obj", ".ply"])
def test_roundtrip_keeps_order(tmp_path, suffix):
    rng = np.random.default_rng(0)
    v = rng.normal(size=(50, 3)).astype(np.float32)
    f = rng.integers(0, 50, size=(30, 3))
    path = save_mesh(tmp_path / f"m{suffix}", v, f)
    m = load_mesh(path)
    np.testing.assert_allclose(m.vertices, v, atol=1e-6)
    assert np.array_equal(m.faces, f)
    assert [p.name for p in tmp_path.iterdir()] == [f"m{suffix}"]  # no temp file left


def test_save_obj_rejects_bad_shapes(tmp_path):
    with pytest.raises(MeshFormatError, match=r"\(V, 3\)"):
        save_obj(tmp_path / "a.obj", np.zeros((4, 2)), np.zeros((1, 3), int))
    assert not (tmp_path / "a.obj").exists()
