import numpy as np
import pytest
import torch

from facemodel.errors import InvalidGeometryError
from facemodel.geometry.geometry_image import GeometryImage, geometry_image_lookup


@pytest.fixture(scope="module")
def layer(template):
    return GeometryImage(template.uv, template.faces, resolution=64)


def test_reproduces_linear_functions_exactly(layer, template):
    # a linear function of the vertex positions is interpolated exactly by barycentrics;
    # and a linear function of UV evaluates to its value at the pixel centre
    A = torch.tensor([[0.3, -1.2, 2.0], [1.0, 0.5, 0.0], [-0.7, 0.2, 0.9]], dtype=torch.float64)
    v = torch.from_numpy(template.vertices).double()
    img = layer(v[None] @ A.T)  # (1, 3, n, n)
    direct = torch.einsum("ij,bjhw->bihw", A, layer(v[None]))
    mask = layer.mask
    torch.testing.assert_close(img[..., mask], direct[..., mask], atol=1e-9, rtol=0)
    uv = torch.from_numpy(template.uv)
    f = torch.stack([2 * uv[:, 0] - uv[:, 1] + 0.5, uv[:, 0], uv[:, 1]], 1)  # (V, 3), linear in uv
    g = layer(f[None])[0]
    n = layer.resolution
    centres = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    u = centres[None, :].expand(n, n)
    vv = (1 - centres)[:, None].expand(n, n)
    torch.testing.assert_close(g[1][mask], u[mask], atol=1e-9, rtol=0)
    torch.testing.assert_close(g[2][mask], vv[mask], atol=1e-9, rtol=0)
    torch.testing.assert_close(g[0][mask], (2 * u - vv + 0.5)[mask], atol=1e-9, rtol=0)


def test_mask_and_uncovered_pixels(layer, template):
    assert layer.mask.shape == (64, 64) and layer.mask.dtype == torch.bool
    assert 0.95 < layer.coverage < 1.0  # eyes and mouth are holes
    img = layer(torch.from_numpy(template.vertices)[None] + 100.0)
    assert (img[..., ~layer.mask] == 0).all()
    assert (img[..., layer.mask] != 0).all()
    assert img.shape == (1, 3, 64, 64)


def test_gradcheck(template):
    small = GeometryImage(template.uv, template.faces, resolution=8).double()
    v = torch.from_numpy(template.vertices).double()[None].requires_grad_(True)
    assert torch.autograd.gradcheck(small, (v,), eps=1e-6, atol=1e-6, fast_mode=True)


def test_gradient_reaches_only_used_vertices(layer, template):
    v = torch.from_numpy(template.vertices)[None].repeat(2, 1, 1).requires_grad_(True)
    layer(v).sum().backward()
    used = np.unique(layer.vertex_index[layer.mask].numpy())
    g = v.grad[0].abs().sum(1)
    assert (g[used] > 0).any() and (g[np.setdiff1d(np.arange(9409), used)] == 0).all()


@pytest.mark.parametrize("n", [16, 128])
def test_configurable_resolution(template, n):
    idx, w, mask = geometry_image_lookup(template.uv, template.faces, n)
    assert idx.shape == (n, n, 3) and w.shape == (n, n, 3) and mask.shape == (n, n)
    np.testing.assert_allclose(w[mask].sum(1), 1.0, atol=1e-12)
    assert (w[mask] >= -1e-9).all()


def test_bad_input(layer):
    with pytest.raises(InvalidGeometryError, match=r"\(B, 9409, 3\)"):
        layer(torch.zeros(9409, 3))
    with pytest.raises(InvalidGeometryError, match="resolution"):
        geometry_image_lookup(np.zeros((3, 2)), np.array([[0, 1, 2]]), 0)


def test_device_move_and_dtype(layer, template):
    half = layer.to(torch.float64)
    out = half(torch.from_numpy(template.vertices).double()[None])
    assert out.dtype == torch.float64
